#!/usr/bin/env python3
"""Soak: the live daemon over a month of event time, then a crash and a restart.

    benches/soak/run.sh                                   # 30 min steady after a 35 M-click backlog
    benches/soak/run.sh --minutes 3 --rate 5000 --backlog-clicks 300000   # a quick run
    benches/soak/run.sh --help                            # every flag and threshold

run.sh builds attribd (cargo build --release) and runs this file (Python 3, standard library).

1. Writes OUT/soak.toml: the generator live (`rate` events/s, event time `time_scale` times
   faster than the wall clock, `unbounded`), its first `backlog_clicks` click records unpaced
   (a month of state at full speed), Parquet into OUT/data, a checkpoint every 30 s, /metrics
   on a free loopback port. The generator's `start` lies far enough back that the run's event
   time never passes the wall clock (`limits.max_future`).
2. Starts `attribd run -p OUT/soak.toml` ($ATTRIBD_BIN or target/release/attribd; log in
   OUT/attribd-1.log) and every --interval seconds scrapes /metrics and /proc/PID/status: RSS,
   state sizes, events in, p50/p99 arrival → processed and → durable of clicks over the interval
   (from the histogram's bucket deltas), the checkpoint pauses in it, snapshot size, queue
   depths, click watermark. Phase `backlog` until the backlog's click records are in, then
   `steady` for --minutes.
3. kill -9, the same command again (OUT/attribd-2.log): seconds until /ready answers 200, the
   epoch it resumed from (its log), seconds until it is back where it was killed; then
   --after-restart seconds of running, SIGTERM, and it must exit 0.
4. Judges the criteria (thresholds are flags), prints each PASS/FAIL with its figures, writes
   OUT/soak.json (config, samples, criteria) and OUT/soak.svg (RSS, p99 + checkpoint pauses,
   indexed clicks over wall time). Exit status 1 if a criterion failed, 2 if the run broke.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# The generator's knobs the figures below depend on, written into the pipeline as they are
# (GeneratorConfig's defaults).
GENERATOR = {
    "conversion_rate": 0.05,
    "duplicate_click_rate": 0.02,
    "duplicate_postback_rate": 0.05,
    "status_change_rate": 0.3,
}


class Broken(Exception):
    """The run could not be carried out (not a failed criterion)."""


# --------------------------------------------------------------------------------------------
# Figures of the configuration
# --------------------------------------------------------------------------------------------


def events_per_click(g: dict) -> float:
    """Records per click on average, as src/source/generator/pace.rs counts them."""
    postbacks = g["conversion_rate"] * (1 + g["duplicate_postback_rate"] + g["status_change_rate"])
    return 1 + g["duplicate_click_rate"] + postbacks


def plan(a: argparse.Namespace) -> dict:
    """What the settings imply: clicks per event-day, the backlog's event time, the start."""
    epc = events_per_click(GENERATOR)
    clicks_per_day = a.rate / epc * 86_400 / a.time_scale  # distinct clicks per event-day
    # backlog_clicks counts click records, the duplicates among them.
    backlog_days = a.backlog_clicks / (1 + GENERATOR["duplicate_click_rate"]) / clicks_per_day
    steady_days = (a.minutes * 60 + a.after_restart + 600) * a.time_scale / 86_400
    # Event time must stay behind the wall clock (limits.max_future): start far enough back,
    # a day to spare (the backlog may be consumed faster or slower than planned).
    start = datetime.now(timezone.utc) - timedelta(days=backlog_days + steady_days + 1)
    return {
        "events_per_click": epc,
        "clicks_per_event_day": clicks_per_day,
        "backlog_event_days": backlog_days,
        "expected_index": clicks_per_day * a.window_days,
        # What the click index is judged against (judge() lowers it for a window not yet full).
        "expected_at_end": clicks_per_day * a.window_days,
        "expected_label": f"one {a.window_days}-day window",
        "start": start.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipeline_toml(a: argparse.Namespace, p: dict, out: Path, port: int) -> str:
    knobs = "".join(f"{k} = {v}\n" for k, v in GENERATOR.items())
    # A smaller catalog (offers x affiliates) saturates the aggregates' dimension sets within
    # a short run, so its RSS can be judged flat (the short soak of .ci/run).
    if a.offers:
        knobs += f"offers = {a.offers}\n"
    if a.affiliates:
        knobs += f"affiliates = {a.affiliates}\n"
    return f"""# Written by benches/soak/run.py; the soak's pipeline.
name = "soak"

[source]
kind = "generator"

[source.generator]
seed = {a.seed}
start = "{p['start']}"
{knobs}rate = {float(a.rate)}
time_scale = {float(a.time_scale)}
unbounded = true
backlog_clicks = {a.backlog_clicks}

[semantics]
attribution_window = "{a.window_days}d"
dedup_window = "{a.dedup_days}d"

[sink.parquet]
out = {json.dumps(str(out / 'data'))}

[checkpoint]
every = "{a.checkpoint_every}"

[metrics]
addr = "127.0.0.1:{port}"
"""


# --------------------------------------------------------------------------------------------
# Scraping
# --------------------------------------------------------------------------------------------

LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict:
    """Prometheus text → {(name, ((label, value), …)): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            continue
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            pass
    return out


def value(metrics: dict, name: str, **labels) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def family(metrics: dict, name: str, label: str) -> dict:
    """{label value: sample} of a metric with one label."""
    return {dict(k[1])[label]: v for k, v in metrics.items() if k[0] == name and len(k[1]) == 1}


def buckets(metrics: dict, name: str, **labels) -> list[tuple[float, float]]:
    """[(upper bound, cumulative count)] of a histogram, +Inf last."""
    want = set(labels.items())
    out = []
    for (n, ls), v in metrics.items():
        if n != f"{name}_bucket":
            continue
        d = dict(ls)
        le = d.pop("le", None)
        if le is not None and set(d.items()) == want:
            out.append((math.inf if le == "+Inf" else float(le), v))
    return sorted(out)


def delta_buckets(now: list, before: list) -> list[tuple[float, float]]:
    prev = dict(before)
    return [(le, c - prev.get(le, 0.0)) for le, c in now]


def quantile(q: float, bs: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over (bound, cumulative) deltas; None without
    observations; the highest finite bound if the rank falls into +Inf."""
    if not bs or bs[-1][1] <= 0:
        return None
    rank = q * bs[-1][1]
    lower, below = 0.0, 0.0
    for le, cum in bs:
        if cum >= rank:
            if math.isinf(le):
                return lower
            if cum == below:
                return le
            return lower + (le - lower) * (rank - below) / (cum - below)
        lower, below = le, cum
    return lower


def highest_bucket(bs: list[tuple[float, float]]) -> float | None:
    """Upper bound of the highest bucket that got observations (inf: above every bound)."""
    if not bs or bs[-1][1] <= 0:
        return None
    for le, cum in bs:
        if cum >= bs[-1][1]:
            return le
    return math.inf


def scrape(port: int, timeout: float = 5.0) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            return parse_metrics(r.read().decode())
    except (OSError, urllib.error.URLError):
        return None


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1.0) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Scrape:
    """One look at the process: its metrics and RSS, at a wall time."""

    def __init__(self, t: float, metrics: dict, rss: int | None):
        self.t, self.m, self.rss = t, metrics, rss

    def clicks_in(self) -> float:
        return value(self.m, "attribd_events_in_total", stream="clicks") or 0.0

    def events_in(self) -> float:
        return sum(family(self.m, "attribd_events_in_total", "stream").values())


def sample(cur: Scrape, prev: Scrape, t0: float, phase: str) -> dict:
    """The figures of the interval prev → cur."""
    m, pm = cur.m, prev.m
    dt = cur.t - prev.t
    lat = {}
    for stage in ("processed", "durable"):
        name = "attribd_event_latency_seconds"
        d = delta_buckets(
            buckets(m, name, stage=stage, stream="clicks"),
            buckets(pm, name, stage=stage, stream="clicks"),
        )
        for q in (0.5, 0.99):
            v = quantile(q, d)
            lat[f"{stage}_p{int(q * 100)}_ms"] = None if v is None else v * 1000
        # The slowest batch's bucket bound: the few batches queued behind a checkpoint pause
        # show here even when p99 does not (see docs/capacity.md, "Soak").
        v = highest_bucket(d)
        lat[f"{stage}_max_bucket_ms"] = None if v is None else v * 1000
    pause = "attribd_checkpoint_pause_seconds"
    pd = delta_buckets(buckets(m, pause), buckets(pm, pause))
    count = (value(m, f"{pause}_count") or 0) - (value(pm, f"{pause}_count") or 0)
    total = (value(m, f"{pause}_sum") or 0) - (value(pm, f"{pause}_sum") or 0)
    bound = highest_bucket(pd) if count > 0 else None
    # The longest pause is at most its bucket's bound and at most the sum of the interval's
    # pauses: exact when the interval holds one checkpoint (every 30 s, sampled every 10 s).
    longest = min(bound, total) if count > 0 else None
    lag = value(m, "attribd_watermark_lag_seconds", stream="clicks")
    watermark = None if lag is None or lag > 1e11 else cur.t - lag
    return {
        "t": round(cur.t - t0, 2),
        "wall": datetime.fromtimestamp(cur.t, timezone.utc).isoformat(timespec="seconds"),
        "phase": phase,
        "rss_bytes": cur.rss,
        "state_keys": family(m, "attribd_state_keys", "map"),
        "events_in": cur.events_in(),
        "clicks_in": cur.clicks_in(),
        "events_per_s": (cur.events_in() - prev.events_in()) / dt if dt > 0 else None,
        **lat,
        "checkpoints": int(count),
        "pause_bucket_ms": None if bound is None else bound * 1000,
        "pause_mean_ms": total / count * 1000 if count > 0 else None,
        "pause_max_ms": None if longest is None else longest * 1000,
        "checkpoint_size_bytes": value(m, "attribd_checkpoint_size_bytes"),
        "queue_depth": family(m, "attribd_queue_depth_events", "queue"),
        "click_watermark": None
        if watermark is None
        else datetime.fromtimestamp(watermark, timezone.utc).isoformat(timespec="seconds"),
    }


def finite(v):
    """JSON has no infinity: a pause above every bucket bound is written as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [finite(x) for x in v]
    return v


def fmt(v, unit="", digits=1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:,.{digits}f}{unit}"


def show(s: dict) -> None:
    keys = s["state_keys"]
    print(
        f"  {s['t']:7.0f}s {s['phase']:8} rss {fmt((s['rss_bytes'] or 0) / 2**20, ' MiB', 0):>10}"
        f"  in {fmt(s['events_per_s'], '/s', 0):>10}"
        f"  clicks p50/p99 {fmt(s['processed_p50_ms'])}/{fmt(s['processed_p99_ms'])} ms"
        f" max<={fmt(s['processed_max_bucket_ms'], '', 0)}"
        f" (durable p99 {fmt(s['durable_p99_ms'], '', 0)})"
        f"  pause {fmt(s['pause_max_ms'])} ms"
        f"  indexed {fmt(keys.get('click_index'), '', 0)} dedup {fmt(keys.get('dedup'), '', 0)}"
        f"  snapshot {fmt((s['checkpoint_size_bytes'] or 0) / 2**20, ' MiB', 0)}",
        flush=True,
    )


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class Daemon:
    def __init__(self, cmd: list[str], log: Path):
        self.log = log
        self.f = open(log, "wb")
        self.started = time.time()
        self.p = subprocess.Popen(cmd, stdout=self.f, stderr=subprocess.STDOUT, cwd=ROOT)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, sig: int, timeout: float) -> int | None:
        if self.alive():
            self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        self.f.close()
        return rc

    def tail(self, n: int = 15) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def wait_ready(d: Daemon, port: int, limit: float) -> float:
    while time.time() - d.started < limit:
        if not d.alive():
            raise Broken(f"attribd exited ({d.p.returncode}) before /ready:\n{d.tail()}")
        if ready(port):
            return time.time() - d.started
        time.sleep(0.05)
    raise Broken(f"/ready did not answer 200 within {limit:.0f} s:\n{d.tail()}")


def look(d: Daemon, port: int) -> Scrape:
    for _ in range(3):
        m = scrape(port)
        if m is not None:
            return Scrape(time.time(), m, rss_bytes(d.p.pid))
        if not d.alive():
            break
        time.sleep(1)
    raise Broken(f"no /metrics from attribd (exit {d.p.poll()}):\n{d.tail()}")


def run(a: argparse.Namespace, p: dict, out: Path, cmd: list[str], port: int) -> dict:
    samples: list[dict] = []
    d = Daemon(cmd, out / "attribd-1.log")
    try:
        first_ready = wait_ready(d, port, 120)
        print(f"attribd ready after {first_ready:.1f} s (pid {d.p.pid}); sampling every {a.interval} s")
        t0 = d.started
        prev = look(d, port)
        steady_from = prev.t if a.backlog_clicks == 0 else None
        next_at = prev.t + a.interval
        while True:
            time.sleep(max(0.0, next_at - time.time()))
            next_at += a.interval
            if not d.alive():
                raise Broken(f"attribd exited ({d.p.returncode}) during the soak:\n{d.tail()}")
            cur = look(d, port)
            phase = "steady" if steady_from is not None else "backlog"
            s = sample(cur, prev, t0, phase)
            samples.append(s)
            show(s)
            if steady_from is None:
                if cur.clicks_in() >= a.backlog_clicks:
                    # The next interval is the first wholly after the backlog.
                    steady_from = cur.t
                    print(
                        f"backlog consumed after {cur.t - t0:.0f} s "
                        f"({cur.clicks_in():,.0f} click records); steady for {a.minutes} min",
                        flush=True,
                    )
                elif cur.t - t0 > a.backlog_timeout * 60:
                    raise Broken(
                        f"the backlog was not consumed within {a.backlog_timeout} min "
                        f"({cur.clicks_in():,.0f} of {a.backlog_clicks:,} click records)"
                    )
            prev = cur
            if steady_from is not None and cur.t - steady_from >= a.minutes * 60 - 0.5:
                break
        before_kill = prev
        # The crash.
        d.p.send_signal(signal.SIGKILL)
        d.p.wait()
        d.f.close()
        killed_at = time.time()
        print(f"kill -9 after {killed_at - t0:.0f} s; starting the same command again", flush=True)
    except BaseException:
        if d.alive():
            d.stop(signal.SIGTERM, 60)
        raise

    d2 = Daemon(cmd, out / "attribd-2.log")
    try:
        ready_s = wait_ready(d2, port, 600)
        log = (out / "attribd-2.log").read_text(errors="replace")
        m = re.search(r"resuming from checkpoint.*?epoch=(\d+)|epoch=(\d+).*?resuming from checkpoint", log)
        epoch = int(m.group(1) or m.group(2)) if m else None
        print(
            f"restart: /ready 200 after {ready_s:.2f} s, resumed from checkpoint "
            f"{epoch if epoch is not None else '(none found in the log)'}",
            flush=True,
        )
        # Sample on; note when it is back where it was killed.
        caught_up = None
        prev = look(d2, port)
        end_at = d2.started + ready_s + a.after_restart
        step = min(a.interval, 2.0)
        while time.time() < end_at or caught_up is None and time.time() < end_at + a.catch_up_timeout:
            time.sleep(step)
            if not d2.alive():
                raise Broken(f"attribd exited ({d2.p.returncode}) after the restart:\n{d2.tail()}")
            cur = look(d2, port)
            if caught_up is None and cur.events_in() >= before_kill.events_in():
                caught_up = cur.t - d2.started
                print(f"restart: back at the killed run's {before_kill.events_in():,.0f} events after {caught_up:.1f} s", flush=True)
            if prev.events_in() == 0:
                # The restored counters show after the first batch: start the intervals there.
                prev = cur
            elif cur.t - prev.t >= a.interval - 0.5:
                s = sample(cur, prev, t0, "restart")
                samples.append(s)
                show(s)
                prev = cur
        rc = d2.stop(signal.SIGTERM, 300)
        print(f"SIGTERM: exit status {rc}", flush=True)
    except BaseException:
        if d2.alive():
            d2.stop(signal.SIGTERM, 60)
        raise
    return {
        "samples": samples,
        "first_ready_s": first_ready,
        "steady_from_s": steady_from - t0,
        "killed_at_s": killed_at - t0,
        "restart": {
            "ready_s": ready_s,
            "resumed_epoch": epoch,
            "caught_up_s": caught_up,
            "events_at_kill": before_kill.events_in(),
            "exit_status": rc,
        },
    }


# --------------------------------------------------------------------------------------------
# Criteria
# --------------------------------------------------------------------------------------------


def judge(a: argparse.Namespace, p: dict, r: dict) -> list[dict]:
    steady = [s for s in r["samples"] if s["phase"] == "steady"]
    out = []

    def crit(name, ok, figures):
        out.append({"criterion": name, "pass": bool(ok), "figures": figures})

    if not steady:
        crit("steady phase sampled", False, "no steady samples")
        return out
    # Event-days the run covered by the end of the steady phase (from the click watermark).
    covered = None
    if steady[-1]["click_watermark"]:
        wm = datetime.fromisoformat(steady[-1]["click_watermark"])
        covered = (wm - datetime.fromisoformat(p["start"].replace("Z", "+00:00"))).total_seconds() / 86_400
    growing = covered is not None and covered < a.window_days
    # RSS flat: no growth trend of the baseline. The checkpoint compaction rebuilds a copy of
    # the state every few minutes, so RSS has periodic peaks (reported, they size the host);
    # the trend is read from the lowest RSS of each window of --rss-window-s, first steady
    # window against the last.
    # --rss-warmup-s: the first seconds of the steady phase are not judged (a short run's
    # allocator and writers are still growing into their working set).
    t0 = r["steady_from_s"] + a.rss_warmup_s
    rss = [(s["t"], s["rss_bytes"]) for s in steady if s["rss_bytes"] and s["t"] >= t0]
    windows: dict[int, int] = {}
    for t, b in rss:
        w = int((t - t0) // a.rss_window_s)
        windows[w] = min(windows.get(w, b), b)
    keys = sorted(windows)
    full = [w for w in keys if (w + 1) * a.rss_window_s <= a.minutes * 60 - a.rss_warmup_s + a.interval]
    first, last = (windows[full[0]], windows[full[-1]]) if len(full) >= 2 else (None, None)
    peak = max((b for _, b in rss), default=0)
    crit(
        f"RSS flat (baseline: lowest RSS per {a.rss_window_s:g} s window, last <= {1 + a.rss_growth:.2f} x first)",
        first is not None and last <= (1 + a.rss_growth) * first,
        (
            f"baseline first {first / 2**20:,.0f} MiB, last {last / 2**20:,.0f} MiB ({(last / first - 1) * 100:+.1f} %), "
            if first is not None
            else "fewer than two full windows, "
        )
        + "per window "
        + " ".join(f"{windows[w] / 2**20:,.0f}" for w in keys)
        + f" MiB; peak {peak / 2**20:,.0f} MiB (compaction's copy)"
        + (" (the window is not full yet: the state still grows, and RSS with it)" if growing else ""),
    )
    # p99 processed of clicks in every steady interval.
    p99 = [(s["t"], s["processed_p99_ms"]) for s in steady if s["processed_p99_ms"] is not None]
    worst = max(p99, key=lambda x: x[1], default=(None, None))
    over = [x for x in p99 if x[1] > a.max_p99_ms]
    crit(
        f"p99 arrival -> processed of clicks <= {a.max_p99_ms:g} ms in every steady interval",
        p99 and not over and len(p99) == len(steady),
        f"worst {fmt(worst[1])} ms at {fmt(worst[0], ' s', 0)}; {len(over)} of {len(steady)} intervals over"
        + ("" if len(p99) == len(steady) else f"; {len(steady) - len(p99)} intervals without a click"),
    )
    # Checkpoint pauses.
    pauses = [(s["t"], s["pause_max_ms"]) for s in steady if s["pause_max_ms"] is not None]
    worst = max(pauses, key=lambda x: x[1], default=(None, None))
    over = [x for x in pauses if x[1] > a.max_pause_ms]
    n = sum(s["checkpoints"] for s in steady)
    means = [s["pause_mean_ms"] for s in steady if s["pause_mean_ms"] is not None]
    crit(
        f"every checkpoint pause <= {a.max_pause_ms:g} ms (steady phase)",
        n > 0 and not over,
        f"{n} checkpoints, longest {fmt(worst[1])} ms at {fmt(worst[0], ' s', 0)} "
        f"(an upper bound: its bucket's bound or the interval's sum), mean {fmt(sum(means) / len(means) if means else None)} ms; "
        f"{len(over)} intervals over",
    )
    # Click index at one window.
    idx = steady[-1]["state_keys"].get("click_index")
    expected = p["expected_index"]
    note = ""
    p["expected_at_end"], p["expected_label"] = expected, f"one {a.window_days}-day window"
    if growing:
        # The window is not full yet: everything generated is still held.
        expected = p["clicks_per_event_day"] * covered
        note = f" (only {covered:.1f} event-days covered, less than the {a.window_days}-day window: expected = all of them)"
        p["expected_at_end"], p["expected_label"] = expected, f"all {covered:.1f} event-days"
    ok = idx is not None and abs(idx - expected) <= a.index_tolerance * expected
    crit(
        f"click index at the end of the steady phase within +-{a.index_tolerance * 100:.0f} % of one window's clicks",
        ok,
        f"{fmt(idx, '', 0)} indexed, expected {expected:,.0f}{note}"
        + ("" if idx is None else f" ({(idx / expected - 1) * 100:+.1f} %)"),
    )
    rs = r["restart"]
    crit(
        f"resume after kill -9: /ready within {a.max_resume_s:g} s",
        rs["ready_s"] <= a.max_resume_s,
        f"{rs['ready_s']:.2f} s, from checkpoint {rs['resumed_epoch']}; "
        f"back at the killed run's events after {fmt(rs['caught_up_s'], ' s')}",
    )
    crit("SIGTERM after the restart exits 0", rs["exit_status"] == 0, f"exit status {rs['exit_status']}")
    return out


# --------------------------------------------------------------------------------------------
# The plot (hand-written SVG)
# --------------------------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def svg(a: argparse.Namespace, p: dict, r: dict) -> str:
    samples = r["samples"]
    W, left, right, top, ph, gap = 960, 80, 170, 40, 170, 50
    width = W - left - right
    tmax = max([s["t"] for s in samples] + [1]) / 60
    x = lambda t: left + width * (t / 60) / tmax  # noqa: E731
    parts = []
    H = top + 3 * ph + 2 * gap + 50
    parts.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="11">'
    )
    parts.append(f'<rect width="{W}" height="{H}" fill="white"/>')
    title = (
        f"attribd soak: {a.rate:g} events/s, time scale {a.time_scale:g}, backlog {a.backlog_clicks:,} clicks, "
        f"{a.minutes:g} min steady, checkpoint every {a.checkpoint_every}"
    )
    parts.append(f'<text x="{left}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>')

    def panel(i, label, series, log=False, hlines=()):
        """series: [(name, colour, [(t, v)], style)] with style 'line' or 'dot'."""
        y0 = top + i * (ph + gap)
        vals = [v for _, _, pts, _ in series for _, v in pts if v is not None and math.isfinite(v)]
        vals += [h for h, _, _ in hlines]
        if log:
            vals = [v for v in vals if v > 0]
            lo = 10 ** math.floor(math.log10(min(vals))) if vals else 0.1
            hi = 10 ** math.ceil(math.log10(max(vals))) if vals else 10
            if hi <= lo:
                hi = lo * 10
            f = lambda v: y0 + ph - ph * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))  # noqa: E731
            ticks = [10**e for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
        else:
            hi = max(vals) * 1.1 if vals else 1
            ticks = nice_ticks(0, hi)
            hi = max(hi, ticks[-1])
            f = lambda v: y0 + ph - ph * v / hi  # noqa: E731
        parts.append(f'<rect x="{left}" y="{y0}" width="{width}" height="{ph}" fill="none" stroke="#999"/>')
        for tv in ticks:
            y = f(tv)
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tv:g}</text>')
        ym = y0 + ph / 2
        parts.append(
            f'<text x="18" y="{ym}" transform="rotate(-90 18 {ym})" text-anchor="middle">{escape(label)}</text>'
        )
        legend_y = y0 + 12
        for h, colour, name in hlines:
            y = f(h)
            parts.append(
                f'<line x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}" stroke="{colour}" stroke-dasharray="5,4"/>'
            )
            parts.append(f'<text x="{left + width + 8}" y="{legend_y}" fill="{colour}">- - {escape(name)}</text>')
            legend_y += 15
        for name, colour, pts, style in series:
            pts = [(t, v) for t, v in pts if v is not None and math.isfinite(v)]
            if style == "line":
                # Broken where the run was restarted (a gap in time).
                path, last = [], None
                for t, v in pts:
                    crossed = last is not None and last < r["killed_at_s"] <= t
                    cmd = "M" if last is None or crossed or t - last > 3 * a.interval else "L"
                    path.append(f"{cmd}{x(t):.1f},{f(v):.1f}")
                    last = t
                if path:
                    parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            else:
                for t, v in pts:
                    parts.append(f'<circle cx="{x(t):.1f}" cy="{f(v):.1f}" r="2.5" fill="{colour}"/>')
            parts.append(f'<text x="{left + width + 8}" y="{legend_y}" fill="{colour}">{escape(name)}</text>')
            legend_y += 15
        # Phase marks.
        for t, name in ((r["steady_from_s"], "steady"), (r["killed_at_s"], "kill -9, restart")):
            xx = x(t)
            parts.append(
                f'<line x1="{xx:.1f}" y1="{y0}" x2="{xx:.1f}" y2="{y0 + ph}" stroke="#555" stroke-dasharray="2,3"/>'
            )
            if i == 0:
                parts.append(f'<text x="{xx + 3:.1f}" y="{y0 - 4}" fill="#555">{escape(name)} →</text>')
        if i == 0 and x(r["steady_from_s"]) - left > 60:
            parts.append(f'<text x="{left + 3}" y="{y0 - 4}" fill="#555">backlog →</text>')
        elif i == 0 and r["steady_from_s"] > 0:
            xx = x(r["steady_from_s"])
            parts.append(f'<text x="{xx - 3:.1f}" y="{y0 - 4}" text-anchor="end" fill="#555">backlog</text>')
        # Time axis.
        for tv in nice_ticks(0, tmax, 8):
            xx = left + width * tv / tmax
            parts.append(f'<line x1="{xx:.1f}" y1="{y0 + ph}" x2="{xx:.1f}" y2="{y0 + ph + 4}" stroke="#999"/>')
            parts.append(f'<text x="{xx:.1f}" y="{y0 + ph + 16}" text-anchor="middle">{tv:g}</text>')

    t = [s["t"] for s in samples]
    panel(0, "RSS (MiB)", [("RSS", "#1f77b4", [(ti, (s["rss_bytes"] or 0) / 2**20) for ti, s in zip(t, samples)], "line")])
    panel(
        1,
        "ms (log scale)",
        [
            ("p99 processed, clicks", "#d62728", [(ti, s["processed_p99_ms"]) for ti, s in zip(t, samples)], "line"),
            ("checkpoint pause (longest)", "#2ca02c", [(ti, s["pause_max_ms"]) for ti, s in zip(t, samples)], "dot"),
        ],
        log=True,
        hlines=[(a.max_p99_ms, "#d62728", f"p99 limit {a.max_p99_ms:g}"), (a.max_pause_ms, "#2ca02c", f"pause limit {a.max_pause_ms:g}")],
    )
    panel(
        2,
        "indexed clicks (M)",
        [("click index", "#9467bd", [(ti, (s["state_keys"].get("click_index") or 0) / 1e6) for ti, s in zip(t, samples)], "line")],
        hlines=[(p["expected_at_end"] / 1e6, "#9467bd", p["expected_label"])],
    )
    parts.append(
        f'<text x="{left + width / 2}" y="{H - 12}" text-anchor="middle">wall time since start (min)</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "soak", help="output directory (default target/soak; its data/ is deleted first)")
    ap.add_argument("--minutes", type=float, default=30, help="steady phase, wall minutes (default 30)")
    ap.add_argument("--rate", type=float, default=20_000, help="events per second (default 20000)")
    ap.add_argument("--time-scale", type=float, default=1440, help="event time per wall time (default 1440: a day per minute)")
    ap.add_argument("--backlog-clicks", type=int, default=35_000_000, help="click records sent unpaced first (default 35000000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--window-days", type=int, default=30, help="semantics.attribution_window in days (default 30)")
    ap.add_argument("--offers", type=int, help="generator offers (default: the generator's, 200)")
    ap.add_argument("--affiliates", type=int, help="generator affiliates (default: the generator's, 1000)")
    ap.add_argument("--dedup-days", type=int, default=90, help="semantics.dedup_window in days (default 90, the pipeline's default; at least --window-days)")
    ap.add_argument("--checkpoint-every", default="30s", help="checkpoint.every (default 30s)")
    ap.add_argument("--interval", type=float, default=10, help="seconds between samples (default 10)")
    ap.add_argument("--after-restart", type=float, default=20, help="seconds to run after the restart is ready (default 20)")
    ap.add_argument("--catch-up-timeout", type=float, default=600, help="seconds more to wait after --after-restart for the restarted run to be back where it was killed (default 600)")
    ap.add_argument("--backlog-timeout", type=float, default=60, help="minutes the backlog may take (default 60)")
    ap.add_argument("--rss-growth", type=float, default=0.05, help="allowed growth of the RSS baseline in the steady phase (default 0.05)")
    ap.add_argument("--rss-window-s", type=float, default=120, help="window whose lowest RSS is the baseline (default 120)")
    ap.add_argument("--rss-warmup-s", type=float, default=0, help="seconds at the start of the steady phase left out of the RSS criterion (default 0)")
    ap.add_argument("--judge", type=Path, help="only judge an existing soak.json again (its config, these thresholds) and redraw its svg")
    ap.add_argument("--max-p99-ms", type=float, default=100, help="p99 arrival -> processed of clicks (default 100)")
    ap.add_argument("--max-pause-ms", type=float, default=20, help="longest checkpoint pause (default 20)")
    ap.add_argument("--index-tolerance", type=float, default=0.15, help="click index vs one window's clicks (default 0.15)")
    ap.add_argument("--max-resume-s", type=float, default=5, help="seconds from restart to /ready (default 5)")
    a = ap.parse_args()

    if a.judge:
        doc = json.loads(a.judge.read_text())
        for k, v in doc["config"].items():
            if k not in ("judge", "rss_growth", "rss_window_s", "rss_warmup_s", "max_p99_ms", "max_pause_ms", "index_tolerance", "max_resume_s"):
                setattr(a, k, Path(v) if k == "out" else v)
        criteria = judge(a, doc["plan"], doc)
        for c in criteria:
            print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['criterion']}: {c['figures']}")
        doc["criteria"], doc["passed"] = criteria, all(c["pass"] for c in criteria)
        a.judge.write_text(json.dumps(finite(doc), indent=1, allow_nan=False) + "\n")
        a.judge.with_suffix(".svg").write_text(svg(a, doc["plan"], doc))
        return 0 if doc["passed"] else 1

    binary = Path(os.environ.get("ATTRIBD_BIN", ROOT / "target" / "release" / "attribd"))
    if not binary.is_file():
        print(f"soak: no attribd binary at {binary} (cargo build --release, or set ATTRIBD_BIN)", file=sys.stderr)
        return 2
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "data", ignore_errors=True)
    p = plan(a)
    port = free_port()
    toml = pipeline_toml(a, p, out, port)
    (out / "soak.toml").write_text(toml)
    cmd = [str(binary), "run", "-p", str(out / "soak.toml")]

    print(f"soak: {' '.join(cmd)}")
    print(
        f"  {a.rate:,.0f} events/s, {p['events_per_click']:.4f} events per click -> "
        f"{p['clicks_per_event_day']:,.0f} clicks per event-day (rate / events per click x 86400 / {a.time_scale:g})"
    )
    print(
        f"  backlog {a.backlog_clicks:,} click records ~ {p['backlog_event_days']:.1f} event-days; "
        f"one {a.window_days}-day window = {p['expected_index']:,.0f} clicks (the expected click index); "
        f"steady {a.minutes:g} min = {a.minutes * 60 * a.time_scale / 86_400:.1f} event-days"
    )
    print(f"  generator start {p['start']}; output {out}")
    try:
        r = run(a, p, out, cmd, port)
    except Broken as e:
        print(f"soak: BROKEN: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 2

    criteria = judge(a, p, r)
    steady = [s for s in r["samples"] if s["phase"] == "steady"]
    rates = [s["events_per_s"] for s in steady if s["events_per_s"] is not None]
    held = sum(rates) / len(rates) if rates else None
    print()
    print(f"steady phase: {len(steady)} samples, events in {fmt(held, '/s', 0)} on average (target {a.rate:,.0f}/s)")
    if held is not None and held < 0.95 * a.rate:
        print(f"  note: the rate was not held ({held / a.rate * 100:.0f} % of it)")
    for c in criteria:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['criterion']}: {c['figures']}")
    passed = all(c["pass"] for c in criteria)
    doc = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "plan": p,
        "command": cmd,
        "pipeline": toml,
        "steady_events_per_s": held,
        **r,
        "criteria": criteria,
        "passed": passed,
    }
    (out / "soak.json").write_text(json.dumps(finite(doc), indent=1, allow_nan=False) + "\n")
    (out / "soak.svg").write_text(svg(a, p, r))
    print(f"wrote {out / 'soak.json'} and {out / 'soak.svg'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
