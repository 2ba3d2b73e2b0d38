#!/usr/bin/env python3
"""Before/after timing on a noisy machine: alternate two (or more) commands, report medians.

    benches/ab.py ROUNDS LABEL 'COMMAND' LABEL 'COMMAND' ...

Each round runs every command once, in the order given, after `rm -rf /tmp/ab-out; sync` (so a
command writes its output to /tmp/ab-out). Per command it prints the median wall time, CPU time
(user + sys of the command and its children) and peak RSS over the rounds, with every wall time.
Alternating matters on a VM whose speed drifts by tens of percent from one minute to the next:
two binaries measured one after the other in blocks compare the drift, not the change.

Example (docs/capacity.md):

    benches/ab.py 5 before "/tmp/attribd-before run -q --metrics-addr off -p benches/peers/attribd.toml \
        --clicks /tmp/pin/clicks.ndjson --conversions /tmp/pin/conversions.ndjson --out /tmp/ab-out" \
      after "target/release/attribd run -q --metrics-addr off -p benches/peers/attribd.toml \
        --clicks /tmp/pin/clicks.ndjson --conversions /tmp/pin/conversions.ndjson --out /tmp/ab-out"
"""
import os
import statistics
import subprocess
import sys
import time


def main():
    if len(sys.argv) < 4 or len(sys.argv) % 2 != 0:
        sys.exit(__doc__)
    rounds = int(sys.argv[1])
    pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))
    runs = {label: [] for label, _ in pairs}
    for r in range(rounds):
        for label, cmd in pairs:
            subprocess.run("rm -rf /tmp/ab-out; sync", shell=True, check=False)
            t = time.perf_counter()
            p = subprocess.Popen(cmd, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"{label} failed: {cmd}\n{p.stderr.read().decode()[-2000:]}")
            cpu = ru.ru_utime + ru.ru_stime
            runs[label].append((wall, cpu, ru.ru_maxrss / 1024))
            print(f"round {r} {label}: wall {wall:.2f} s, cpu {cpu:.2f} s, "
                  f"peak rss {ru.ru_maxrss / 1024:.0f} MiB", flush=True)
    for label, v in runs.items():
        walls = ", ".join(f"{x[0]:.2f}" for x in v)
        print(f"{label}: median wall {statistics.median(x[0] for x in v):.2f} s, "
              f"cpu {statistics.median(x[1] for x in v):.2f} s, "
              f"peak rss {statistics.median(x[2] for x in v):.0f} MiB (walls {walls})")


if __name__ == "__main__":
    main()
