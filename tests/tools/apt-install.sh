#!/usr/bin/env bash
# Installs Debian packages for the end-to-end suites: `apt-get update` at most once per
# build directory (a marker under target/tools/), then `apt-get install -y PACKAGE…`.
# Needs root (CI runs as root); says so and exits 3 otherwise.
#
#   tests/tools/apt-install.sh openssh-server openssh-client
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="${CARGO_TARGET_DIR:-$repo/target}/tools"
if ! command -v apt-get >/dev/null; then
    echo "apt-install: apt-get is not available; install $* by hand" >&2
    exit 3
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "apt-install: not root; install $* by hand (sudo apt-get install -y $*)" >&2
    exit 3
fi
mkdir -p "$tools"
# Concurrent callers (tests run in parallel) take turns.
exec 9>"$tools/apt.lock"
flock 9
if [[ ! -e "$tools/apt-updated" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    touch "$tools/apt-updated"
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
