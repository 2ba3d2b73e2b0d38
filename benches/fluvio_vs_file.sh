#!/usr/bin/env bash
# Fluvio source against file source, same input, alternating rounds (docs/capacity.md,
# "Fluvio source vs file source").
#
#   export FLUVIO_ENDPOINT=$(../shared/fluvio/start.sh)     # or any cluster
#   benches/fluvio_vs_file.sh [ROUNDS] [OTHER_ATTRIBD]
#
# Generates 940 000 clicks (1.02 M events) once into target/fluvio-bench/input, produces them
# into two topics of 2 partitions (once), then per round runs the file source and the Fluvio
# source (a fresh consumer each time, `--exit-when-idle 1s`) and prints both rates, their ratio
# and the gaps the reader had to re-read. OTHER_ATTRIBD, if given, is a second binary whose
# Fluvio run is added to each round (to compare two builds in the same spell of the machine).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds="${1:-3}"
other="${2:-}"
endpoint="${FLUVIO_ENDPOINT:?set FLUVIO_ENDPOINT (e.g. 127.0.0.1:9003)}"
bin="$root/target/release/attribd"
work="$root/target/fluvio-bench"
[ -x "$bin" ] || (cd "$root" && cargo build --release >&2)
mkdir -p "$work"
if [ ! -f "$work/input/conversions.ndjson" ]; then
    printf '[source]\nkind = "generator"\n[source.generator]\nclicks = 940000\nseed = 7\nspan_hours = 30.0\nmalformed_rate = 0.003\n' > "$work/gen.toml"
    "$bin" gen -p "$work/gen.toml" --out "$work/input" >&2
fi
if [ ! -f "$work/produced" ]; then
    "$bin" produce --fluvio-endpoint "$endpoint" --topic fb-clicks --create-partitions 2 "$work/input/clicks.ndjson" >&2
    "$bin" produce --fluvio-endpoint "$endpoint" --topic fb-conversions --create-partitions 2 "$work/input/conversions.ndjson" >&2
    touch "$work/produced"
fi
rate() { awk '/events\/second/ {print $NF}' "$1"; }
gaps() { grep -c 'skipped records' "$1" || true; }
fluvio_run() { # binary, name
    rm -rf "$work/$2"
    ATTRIBD_LOG=warn "$1" run -q --metrics-addr off --fluvio-endpoint "$endpoint" \
        --fluvio-clicks-topic fb-clicks --fluvio-conversions-topic fb-conversions \
        --fluvio-consumer "bench-$RANDOM$RANDOM" --exit-when-idle 1s --out "$work/$2" \
        > "$work/$2.txt" 2> "$work/$2.err"
}
for i in $(seq 1 "$rounds"); do
    rm -rf "$work/file"
    "$bin" run -q --metrics-addr off --clicks "$work/input/clicks.ndjson" \
        --conversions "$work/input/conversions.ndjson" --out "$work/file" > "$work/file.txt" 2>&1
    fluvio_run "$bin" fluvio
    f=$(rate "$work/file.txt")
    l=$(rate "$work/fluvio.txt")
    line="round $i: file $f events/s, Fluvio $l events/s ($(gaps "$work/fluvio.err") gaps), ratio $(awk -v a="$l" -v b="$f" 'BEGIN {printf "%.2f", a / b}')"
    if [ -n "$other" ]; then
        fluvio_run "$other" other
        o=$(rate "$work/other.txt")
        line="$line; other binary $o events/s ($(gaps "$work/other.err") gaps), ratio $(awk -v a="$o" -v b="$f" 'BEGIN {printf "%.2f", a / b}')"
    fi
    echo "$line"
done
