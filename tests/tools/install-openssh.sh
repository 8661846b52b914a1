#!/usr/bin/env bash
# Makes sure OpenSSH's client and server are installed (Debian packages), for the suite that
# runs `ssh` with ssm-tether as its ProxyCommand against an `sshd` on loopback
# (tests/stream_session.rs). Prints the two paths: sshd, then ssh.
#
#   tests/tools/install-openssh.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
find_tools() {
    sshd="$(command -v sshd || true)"
    [[ -n "$sshd" ]] || { [[ -x /usr/sbin/sshd ]] && sshd=/usr/sbin/sshd; }
    ssh="$(command -v ssh || true)"
    [[ -n "$sshd" && -n "$ssh" && -x "$(command -v ssh-keygen || echo /nonexistent)" ]]
}
if ! find_tools; then
    "$here/apt-install.sh" openssh-server openssh-client
    find_tools || { echo "install-openssh: sshd or ssh still missing" >&2; exit 3; }
fi
echo "$sshd"
echo "$ssh"
