#!/usr/bin/env bash
# Makes sure tinyproxy (a small HTTP proxy that speaks CONNECT and Basic proxy authentication)
# is installed from the Debian packages, for the suite that puts a real proxy between
# ssm-tether and the emulator (tests/network.rs). Prints the path of the binary.
#
#   tests/tools/install-tinyproxy.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
find_tinyproxy() {
    tinyproxy="$(command -v tinyproxy || true)"
    [[ -n "$tinyproxy" ]] || { [[ -x /usr/bin/tinyproxy ]] && tinyproxy=/usr/bin/tinyproxy; }
    [[ -n "$tinyproxy" ]] || { [[ -x /usr/sbin/tinyproxy ]] && tinyproxy=/usr/sbin/tinyproxy; }
    [[ -n "$tinyproxy" ]]
}
if ! find_tinyproxy; then
    "$here/apt-install.sh" tinyproxy-bin
    find_tinyproxy || { echo "install-tinyproxy: tinyproxy still missing" >&2; exit 3; }
fi
echo "$tinyproxy"
