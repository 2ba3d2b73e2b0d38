#!/usr/bin/env bash
# Validates the monitoring files with promtool (Debian package `prometheus`): the alert rules
# parse and pass their unit tests, the scrape config is valid, and every query of the Grafana
# dashboard is valid PromQL. Run from anywhere; used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")"
promtool check rules prometheus/alerts.yml
promtool test rules prometheus/alerts_test.yml
promtool check config prometheus/prometheus.yml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/dashboard_rules.yml" <<'PY'
import json, sys
d = json.load(open("grafana/attribd.json"))
exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
with open(sys.argv[1], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        f.write(f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(exprs)} dashboard queries")
PY
promtool check rules "$tmp/dashboard_rules.yml"
