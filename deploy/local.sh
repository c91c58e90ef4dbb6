#!/usr/bin/env bash
# Run the Stockholm, Göteborg and Malmö nodes as plain processes on this machine (loopback, mTLS).
#
#   deploy/local.sh up [DIR]      provision DIR the first time (the operator procedure, run through
#                                 the real `citynode` commands), then start the three nodes and
#                                 print, per city, the federation URL, the case API URL and the
#                                 data directory
#   deploy/local.sh status [DIR]  is each node running and healthy? (exit 3 if not all are)
#   deploy/local.sh down [DIR]    stop the three nodes; their data stays in DIR
#
# `--json` before the command prints the same as one JSON object (for scripts and tests).
# DIR defaults to var/localnet in the repository. Everything is done by `python -m
# node.localnet_cli` (src/node/localnet_cli.py, on node.localnet.LocalFederation); this script only
# finds the Python that has citynode installed: the repository's .venv, else python3 when the
# `citynode` command is on PATH. New keystores use the fast `interactive` Argon2id profile
# (CITYNODE_KDF=moderate for production strength).
#
# The operator secret is never printed. If CITYNODE_SECRET or CITYNODE_SECRET_FILE is set at the
# first `up`, that secret is used and not stored; otherwise a random one is generated and kept in
# DIR/operator-secret (mode 0600, DIR is 0700).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

usage() {
    echo "usage: $0 [--json] up|status|down [DIR]" >&2
    exit 2
}

json=()
if [ "${1:-}" = --json ]; then
    json=(--json)
    shift
fi
[ $# -ge 1 ] && [ $# -le 2 ] || usage
command="$1"
case "$command" in
    up | status | down) ;;
    *) usage ;;
esac
root="${2:-$repo/var/localnet}"

if [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
elif command -v citynode >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
    python="python3"
else
    echo "$0: no .venv in $repo and no citynode installed: run \`make test\` or" \
        "\`pip install .\` first" >&2
    exit 1
fi

args=("$command" --root "$root" "${json[@]}")
if [ "$command" = up ]; then
    args+=(--kdf "${CITYNODE_KDF:-interactive}" --draft "$repo/config/agreement.toml")
fi
exec "$python" -m node.localnet_cli "${args[@]}"
