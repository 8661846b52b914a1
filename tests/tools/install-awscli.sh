#!/usr/bin/env bash
# Installs the AWS CLI (v1, from PyPI) into a venv under target/tools/awscli, for the suite that
# runs `aws ssm start-session` with ssm-tether as its session-manager-plugin (tests/aws_cli.rs).
# Idempotent: an installed venv of the pinned version is kept. Prints the `aws` path.
#
#   tests/tools/install-awscli.sh
set -euo pipefail

version="1.46.3"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${CARGO_TARGET_DIR:-$repo/target}/tools/awscli"
aws="$venv/bin/aws"

if [[ -x "$aws" ]] && "$aws" --version 2>&1 | grep -q "^aws-cli/$version "; then
    echo "$aws"
    exit 0
fi
if ! command -v python3 >/dev/null; then
    echo "install-awscli: python3 is not installed; cannot install the AWS CLI" >&2
    exit 3
fi
rm -rf "$venv"
if ! python3 -m venv "$venv" >&2; then
    echo "install-awscli: python3 cannot create a venv (Debian: apt-get install -y python3-venv)" >&2
    exit 3
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "awscli==$version" >&2
"$aws" --version >&2
echo "$aws"
