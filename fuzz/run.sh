#!/usr/bin/env bash
# Runs every fuzz target for a fixed budget and prints, per target, the executions libFuzzer
# made and whether it found anything. Needs cargo-fuzz (`cargo install cargo-fuzz`); on a
# stable toolchain RUSTC_BOOTSTRAP=1 gives it the nightly flags it needs.
#
#   fuzz/run.sh                  # 60 s per target
#   fuzz/run.sh 600              # 10 min per target
#   fuzz/run.sh --runs 10000000  # 10^7 executions per target, however long that takes
#
# A crash leaves its input in fuzz/artifacts/TARGET/; turn it into a regression test before
# fixing it (see README, "Fuzzing"). Exit status: 0 when no target found anything.
set -uo pipefail
cd "$(dirname "$0")"

if [[ "${1:-}" == --runs ]]; then
    budget=(-runs="${2:?--runs needs a count}")
else
    budget=(-max_total_time="${1:-60}")
fi
targets=(client_message smux payloads channel)
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 3
fi
cargo fuzz build >&2 || exit 3
failed=0
printf '%-16s %14s %10s %8s  %s\n' target executions exec/s seconds result
for target in "${targets[@]}"; do
    log="$(mktemp)"
    started=$SECONDS
    mkdir -p "corpus/$target"
    if cargo fuzz run "$target" "corpus/$target" -- \
        "${budget[@]}" -print_final_stats=1 >"$log" 2>&1; then
        result="nothing found"
    else
        result="FOUND A CRASH: see $log and fuzz/artifacts/$target/"
        failed=1
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    printf '%-16s %14s %10s %8s  %s\n' "$target" "${runs:-?}" "${rate:-?}" "$((SECONDS - started))" "$result"
    [[ $failed == 1 ]] || rm -f "$log"
done
exit "$failed"
