#!/usr/bin/env bash
# Peer benchmark: attribd against DuckDB and ClickHouse's engine (chDB) doing the same job on
# the same cores. Usage:
#
#   benches/peers/run.sh                      # 5 M generated clicks, median of 3 runs, 2 cores
#   benches/peers/run.sh --clicks 500000      # a quick run
#   benches/peers/run.sh --help               # every flag
#
# Makes its own venv (target/peers-venv, reused; PEERS_VENV overrides) with DuckDB and chdb-core
# from PyPI (benches/peers/requirements.txt), builds attribd as it is deployed (cargo build
# --profile release-lto: the release profile with fat LTO, see Cargo.toml), then runs
# benches/peers/run.py. Results: stdout and target/peers/report-<clicks>.md / .json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv="${PEERS_VENV:-$root/target/peers-venv}"
req="$root/benches/peers/requirements.txt"
if [ ! -x "$venv/bin/python" ]; then
    echo "peers: creating $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
fi
# Quick and offline when the pinned versions are already there.
if ! cmp -s "$req" "$venv/.requirements.txt"; then
    echo "peers: installing $(grep -v '^#' "$req" | tr '\n' ' ')" >&2
    "$venv/bin/python" -m pip install -q -r "$req"
    cp "$req" "$venv/.requirements.txt"
fi
if [ "${PEERS_SKIP_BUILD:-}" != 1 ]; then
    cargo build --profile release-lto >&2
fi
exec "$venv/bin/python" "$root/benches/peers/run.py" "$@"
