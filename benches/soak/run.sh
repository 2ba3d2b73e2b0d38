#!/usr/bin/env bash
# Soak: attribd live over a month of event time, a kill -9 and a restart; criteria, soak.json
# and soak.svg (docs/capacity.md, "Soak"). Usage:
#
#   benches/soak/run.sh                      # 35 M clicks of backlog, then 30 min at 20 000 events/s
#   benches/soak/run.sh --minutes 3 --rate 5000 --backlog-clicks 300000   # a quick run
#   benches/soak/run.sh --help               # every flag and threshold
#
# Builds attribd (cargo build --release; SOAK_SKIP_BUILD=1 skips it), then runs
# benches/soak/run.py (Python 3, standard library only). Results in target/soak/ (--out).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if [ "${SOAK_SKIP_BUILD:-}" != 1 ]; then
    cargo build --release >&2
fi
exec python3 "$root/benches/soak/run.py" "$@"
