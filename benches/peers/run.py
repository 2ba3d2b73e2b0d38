#!/usr/bin/env python3
"""Peer benchmark: attribd against two batch SQL engines doing the same job on the same cores.

    benches/peers/run.sh [--clicks 5000000] [--runs 3] [--cores 2] [--engines attribd,duckdb,chdb]
    benches/peers/run.sh edge       # the cases where the engines' semantics part, side by side

run.sh makes the venv (DuckDB and chDB from PyPI) and builds attribd; this file does the rest:

1. `attribd gen --clicks N --seed S` writes the input once (target/peers/input-N-sS/, reused;
   --fresh-input writes it again);
2. both NDJSON files are read once (page cache warm for every engine, lines counted) and every
   engine's libraries are loaded once, untimed;
3. each round runs every engine once (rotating order), in a fresh process pinned to the same
   `--cores` CPUs, into a fresh output directory, after a `sync`: attribd (`attribd run`,
   checkpoints on as by default), DuckDB (benches/peers/duckdb.sql, `SET threads`) and
   ClickHouse's engine through chDB (benches/peers/chdb.sql, `max_threads`). The time is wall
   clock from starting the process to its exit, when every output file is written and closed;
4. prints the median of `--runs` rounds per engine as events/s (events = click lines +
   conversion lines, malformed ones included), attribd's ratio to the faster peer, CPU seconds
   and peak RSS, how much CPU a busy loop got on the pinned CPUs before and after (a noisy
   machine shows), a cross-check of what each engine kept (totals and row by row against
   attribd), and writes it all to target/peers/report-N.md (+ .json).

`run.py job ENGINE …` is the timed child process of a peer (it prints its own step times).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEERS = ("duckdb", "chdb")
LABEL = {
    "attribd": "attribd",
    "duckdb": "DuckDB",
    "chdb": "ClickHouse (chDB)",
}


# --------------------------------------------------------------------------------------------
# The timed child process of a peer.
# --------------------------------------------------------------------------------------------


def split_sql(text: str) -> list[str]:
    """Statements of a .sql file: split at a `;` that ends a line, comment-only chunks dropped."""
    out = []
    for chunk in re.split(r";[ \t]*$", text, flags=re.M):
        body = "\n".join(
            line for line in chunk.splitlines() if not line.strip().startswith("--")
        ).strip()
        if body:
            out.append(body)
    return out


def sql_for(engine: str, clicks: str, conversions: str, out: str, threads: int) -> list[str]:
    text = (HERE / f"{engine}.sql").read_text()
    return split_sql(
        text.format(clicks=clicks, conversions=conversions, out=out, threads=threads)
    )


def job(engine: str, clicks: str, conversions: str, out: str, threads: int) -> None:
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    statements = sql_for(engine, clicks, conversions, out, threads)
    if engine == "duckdb":
        import duckdb

        con = duckdb.connect()  # in-memory database

        def run(sql):
            return con.execute(sql).fetchall()

    elif engine == "chdb":
        from chdb import session

        sess = session.Session()  # temporary, in-memory tables only

        def run(sql):
            res = sess.query(sql, "JSONCompact")
            text = res.bytes().decode() if res is not None else ""
            return json.loads(text)["data"] if text.strip() else []

    else:
        raise SystemExit(f"unknown engine {engine}")
    loaded = time.perf_counter()
    steps = []
    for sql in statements:
        s0 = time.perf_counter()
        run(sql)
        first = " ".join(sql.split())[:70]
        steps.append([first, round(time.perf_counter() - s0, 3)])
    done = time.perf_counter()
    # Row counts of the in-memory tables (metadata / tiny scans, after the output is written).
    counts = {}
    for name, sql in (
        ("clicks_valid", "SELECT count(*) FROM clicks_in"),
        ("clicks_kept", "SELECT count(*) FROM clicks"),
        ("conversion_lines_valid", "SELECT count(*) FROM conv_in"),
        ("conversions", "SELECT count(*) FROM conv_out"),
        ("attributed", "SELECT count(*) FROM conv_out WHERE attributed"),
    ):
        counts[name] = int(run(sql)[0][0])
    print(
        json.dumps(
            {
                "engine": engine,
                "load_seconds": round(loaded - t0, 3),
                "sql_seconds": round(done - loaded, 3),
                "steps": steps,
                "counts": counts,
            }
        )
    )


# --------------------------------------------------------------------------------------------
# The driver.
# --------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def count_lines_and_warm(path: Path) -> int:
    """Reads the whole file (page cache warm) and counts its lines."""
    n = 0
    last = b"\n"
    with open(path, "rb", buffering=0) as f:
        while True:
            buf = f.read(8 << 20)
            if not buf:
                break
            n += buf.count(b"\n")
            last = buf[-1:]
    return n + (0 if last == b"\n" else 1)


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def cpu_available(cpus: list[int], seconds: float = 1.0) -> float:
    """Cores' worth of CPU that one busy process per CPU gets right now (len(cpus) = quiet)."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    before = os.times()
    procs = []
    for c in cpus:
        p = mp.Process(target=_burn, args=(seconds,))
        p.start()
        try:
            os.sched_setaffinity(p.pid, [c])
        except OSError:
            pass
        procs.append(p)
    for p in procs:
        p.join()
    after = os.times()
    wall = time.perf_counter() - t0
    used = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return used / wall


def pinned(cpus: list[int]):
    def pin():
        os.sched_setaffinity(0, cpus)

    return pin


def engine_cmd(engine, attribd, inp, out, threads, summary):
    clicks, convs = str(inp / "clicks.ndjson"), str(inp / "conversions.ndjson")
    if engine == "attribd":
        return [
            str(attribd), "run", "-q", "--metrics-addr", "off",
            "-p", str(HERE / "attribd.toml"),
            "--clicks", clicks, "--conversions", convs,
            "--out", str(out), "--summary-json", str(summary),
        ]
    return [
        sys.executable, str(HERE / "run.py"), "job", engine,
        "--clicks", clicks, "--conversions", convs, "--out", str(out),
        "--threads", str(threads),
    ]


def run_once(engine, args, inp, out, cpus, summary):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if summary.exists():
        summary.unlink()
    subprocess.run(["sync"], check=False)
    cmd = engine_cmd(engine, args.attribd, inp, out, len(cpus), summary)
    env = dict(os.environ)
    env.setdefault("ATTRIBD_LOG", "warn")
    log_out = out.parent / f"{out.name}.stdout"
    log_err = out.parent / f"{out.name}.stderr"
    with open(log_out, "w") as fo, open(log_err, "w") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, preexec_fn=pinned(cpus), stdout=fo, stderr=fe)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    stdout = log_out.read_text()
    if code != 0:
        log(stdout[-4000:])
        log(log_err.read_text()[-4000:])
        raise SystemExit(f"{engine} failed with exit code {code}: {' '.join(cmd)}")
    if engine == "attribd":
        detail = json.loads(summary.read_text())
    else:
        detail = json.loads(stdout.strip().splitlines()[-1])
    detail["cpu_seconds"] = round(ru.ru_utime + ru.ru_stime, 3)
    detail["max_rss_mib"] = round(ru.ru_maxrss / 1024, 1)
    return wall, detail


def ensure_input(args) -> Path:
    inp = args.work / f"input-{args.clicks}-s{args.seed}"
    done = inp / ".complete"
    if done.exists() and not args.fresh_input:
        log(f"input: reusing {inp}")
        return inp
    if inp.exists():
        shutil.rmtree(inp)
    log(f"input: attribd gen --clicks {args.clicks} --seed {args.seed} --out {inp}")
    p = subprocess.run(
        [str(args.attribd), "gen", "--clicks", str(args.clicks), "--seed", str(args.seed),
         "--out", str(inp)],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    )
    done.write_text(p.stdout)
    return inp


# Cross-check queries over each engine's Parquet output (DuckDB, in this process, untimed).
PEER_CONV = "read_parquet('{d}/conversions/**/*.parquet', hive_partitioning = false)"
ATTRIBD_CUR = """(
    SELECT tenant_id, external_id,
           arg_max(status, version) AS status,
           arg_min(attributed, version) AS attributed,
           arg_min(reason, version) AS reason,
           arg_min(amount, version) AS amount
    FROM read_parquet('{d}/conversions/**/*.parquet', hive_partitioning = false)
    GROUP BY ALL)"""


def conv_source(engine: str, d: Path) -> str:
    if engine == "attribd":
        return ATTRIBD_CUR.format(d=d)
    return f"(SELECT tenant_id, external_id, status, attributed, reason, amount FROM {PEER_CONV.format(d=d)})"


def cross_check(results: dict, outs: dict) -> dict:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    check = {}
    for engine, d in outs.items():
        c = {}
        c["clicks kept"] = con.execute(
            f"SELECT count(*) FROM read_parquet('{d}/clicks/**/*.parquet', hive_partitioning = false)"
        ).fetchone()[0]
        row = con.execute(
            f"""SELECT count(*), count_if(attributed::BOOLEAN), count_if(reason = 'unknown_click'),
                       count_if(reason = 'outside_window'), count_if(status = 'approved'),
                       count_if(status = 'pending'), count_if(status = 'rejected'),
                       coalesce(sum(amount) FILTER (WHERE status = 'approved'), 0)
                FROM {conv_source(engine, d)}"""
        ).fetchone()
        for k, v in zip(
            ["conversions", "attributed", "unknown_click", "outside_window",
             "approved (current)", "pending (current)", "rejected (current)",
             "approved revenue"],
            row,
        ):
            c[k] = float(v) if k == "approved revenue" else int(v)
        srow = con.execute(
            f"""SELECT sum(clicks), sum(conversions), sum(approved), sum(revenue)
                FROM read_parquet('{d}/stats_minute/**/*.parquet', hive_partitioning = false)"""
        ).fetchone()
        c["stats: clicks"] = int(srow[0] or 0)
        c["stats: conversions"] = int(srow[1] or 0)
        c["stats: approved"] = int(srow[2] or 0)
        c["stats: revenue"] = float(srow[3] or 0)
        check[engine] = c
    # Differences against attribd, row by row.
    diffs = {}
    if "attribd" in outs:
        a = outs["attribd"]
        for engine, d in outs.items():
            if engine == "attribd":
                continue
            row = con.execute(
                f"""WITH a AS {conv_source('attribd', a)}, p AS {conv_source(engine, d)}
                SELECT count_if(a.external_id IS NULL), count_if(p.external_id IS NULL),
                       count_if(a.status <> p.status),
                       count_if(a.attributed::BOOLEAN <> p.attributed::BOOLEAN),
                       count_if(a.amount <> p.amount)
                FROM a FULL OUTER JOIN p USING (tenant_id, external_id)"""
            ).fetchone()
            crow = con.execute(
                f"""WITH a AS (SELECT click_id FROM read_parquet('{a}/clicks/**/*.parquet', hive_partitioning = false)),
                         p AS (SELECT click_id FROM read_parquet('{d}/clicks/**/*.parquet', hive_partitioning = false))
                SELECT (SELECT count(*) FROM p ANTI JOIN a USING (click_id)),
                       (SELECT count(*) FROM a ANTI JOIN p USING (click_id))"""
            ).fetchone()
            diffs[engine] = {
                "conversions only in the peer": row[0],
                "conversions only in attribd": row[1],
                "current status differs": row[2],
                "attribution differs": row[3],
                "amount differs": row[4],
                "click_ids only in the peer": crow[0],
                "click_ids only in attribd": crow[1],
            }
    return {"totals": check, "diffs": diffs}


def fmt_int(n) -> str:
    return f"{int(round(n)):,}".replace(",", " ")


def main_bench(args) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in LABEL:
            raise SystemExit(f"unknown engine {e}; choose from {', '.join(LABEL)}")
    allowed = sorted(os.sched_getaffinity(0))
    cpus = allowed[: args.cores]
    if len(cpus) < args.cores:
        log(f"warning: only {len(cpus)} CPUs available, asked for {args.cores}")
    inp = ensure_input(args)
    click_lines = count_lines_and_warm(inp / "clicks.ndjson")
    conv_lines = count_lines_and_warm(inp / "conversions.ndjson")
    events = click_lines + conv_lines
    log(f"input: {click_lines} click lines + {conv_lines} conversion lines = {events} events "
        f"({(inp / 'clicks.ndjson').stat().st_size + (inp / 'conversions.ndjson').stat().st_size} bytes), page cache warm")
    # Load every engine's code once, untimed (the chDB library is ~0.5 GB).
    for e in engines:
        if e == "attribd":
            subprocess.run([str(args.attribd), "--version"], stdout=subprocess.DEVNULL, check=False)
        else:
            subprocess.run([sys.executable, "-c", f"import {e}"], check=True)

    avail_before = cpu_available(cpus)
    log(f"CPU: a busy loop on each of CPUs {cpus} got {avail_before:.2f} cores' worth "
        f"({len(cpus)} = a quiet machine)")
    outs = {e: args.work / "out" / e for e in engines}
    walls = {e: [] for e in engines}
    details = {e: [] for e in engines}
    for r in range(args.runs):
        order = engines[r % len(engines):] + engines[: r % len(engines)]
        for e in order:
            wall, detail = run_once(e, args, inp, outs[e], cpus, args.work / f"summary-{e}.json")
            walls[e].append(wall)
            details[e].append(detail)
            log(f"round {r + 1}/{args.runs}: {LABEL[e]:<18} {wall:7.2f} s  {events / wall:>12,.0f} events/s")

    med = {e: statistics.median(walls[e]) for e in engines}
    eps = {e: events / med[e] for e in engines}
    peers = [e for e in engines if e in PEERS]
    best_peer = max(peers, key=lambda e: eps[e]) if peers else None

    avail_after = cpu_available(cpus)
    log(f"CPU after the runs: {avail_after:.2f} cores' worth")
    log("cross-check: reading every engine's Parquet output …")
    check = cross_check(details, outs)

    machine = {
        "cores_online": os.cpu_count(),
        "cores_used": len(cpus),
        "cpus": cpus,
        "cpu_available_before": round(avail_before, 2),
        "cpu_available_after": round(avail_after, 2),
        "cpu": cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "duckdb": pkg_version("duckdb"),
        "chdb-core": pkg_version("chdb-core"),
        "attribd": subprocess.run([str(args.attribd), "--version"], stdout=subprocess.PIPE,
                                  text=True).stdout.strip(),
    }
    report = {
        "command": " ".join(["benches/peers/run.sh"] + args.argv),
        "machine": machine,
        "input": {"clicks_generated": args.clicks, "seed": args.seed, "click_lines": click_lines,
                  "conversion_lines": conv_lines, "events": events},
        "runs": args.runs,
        "wall_seconds": walls,
        "median_seconds": med,
        "events_per_second": eps,
        "faster_peer": best_peer,
        "attribd_ratio_to_faster_peer": (eps["attribd"] / eps[best_peer])
        if best_peer and "attribd" in eps else None,
        "details": details,
        "cross_check": check,
    }
    md = markdown(report, engines)
    print(md)
    stem = args.work / f"report-{args.clicks}"
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    log(f"written: {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def pkg_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"


def median_index(rep: dict, e: str) -> int:
    walls = rep["wall_seconds"][e]
    return sorted(range(len(walls)), key=lambda i: walls[i])[len(walls) // 2]


def markdown(rep: dict, engines: list[str]) -> str:
    m = rep["machine"]
    inp = rep["input"]
    lines = []
    lines.append(f"Command: `{rep['command']}`  ")
    lines.append(
        f"Machine: {m['cores_online']} cores online, {m['cores_used']} used (CPUs {m['cpus']}, every "
        f"engine pinned to them), {m['cpu']}, {m['memory_gib']} GiB; DuckDB {m['duckdb']}, "
        f"chdb-core {m['chdb-core']}, {m['attribd']}. A busy loop on each of those CPUs got "
        f"{m['cpu_available_before']:.2f} cores' worth before the runs and "
        f"{m['cpu_available_after']:.2f} after ({m['cores_used']} = quiet).  "
    )
    lines.append(
        f"Input: `attribd gen --clicks {inp['clicks_generated']} --seed {inp['seed']}`: "
        f"{fmt_int(inp['click_lines'])} click lines + {fmt_int(inp['conversion_lines'])} conversion "
        f"lines = **{fmt_int(inp['events'])} events**. Wall time from process start to exit "
        f"(all output written), median of {rep['runs']}, page cache warm."
    )
    lines.append("")
    lines.append("| engine | runs (s) | median (s) | events/s | attribd ÷ this | CPU s (median run) | peak RSS |")
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    eps = rep["events_per_second"]
    for e in engines:
        runs = ", ".join(f"{w:.2f}" for w in rep["wall_seconds"][e])
        ratio = f"{eps['attribd'] / eps[e]:.2f}" if "attribd" in eps else "—"
        name = f"**{LABEL[e]}**" if e == "attribd" else LABEL[e]
        d = rep["details"][e][median_index(rep, e)]
        lines.append(
            f"| {name} | {runs} | {rep['median_seconds'][e]:.2f} | **{fmt_int(eps[e])}** | {ratio} "
            f"| {d['cpu_seconds']:.2f} | {d['max_rss_mib']:,.0f} MiB |"
        )
    if rep["attribd_ratio_to_faster_peer"] is not None:
        lines.append("")
        lines.append(
            f"attribd ÷ the faster peer ({LABEL[rep['faster_peer']]}): "
            f"**{rep['attribd_ratio_to_faster_peer']:.2f}×**."
        )
    if "attribd" in engines:
        d = rep["details"]["attribd"][median_index(rep, "attribd")]
        lines.append("")
        lines.append(
            f"attribd, median run: {d['seconds']:.2f} s by its own clock (`--summary-json`), "
            f"{d['report']['checkpoints']} checkpoints written."
        )
    # Peer step times (median run), to show where a peer spends its time.
    for e in engines:
        if e not in PEERS:
            continue
        d = rep["details"][e][median_index(rep, e)]
        lines.append("")
        lines.append(
            f"{LABEL[e]}, median run: {d['load_seconds']:.2f} s to start and load the engine, "
            f"{d['sql_seconds']:.2f} s of SQL:"
        )
        lines.append("")
        lines.append("| s | statement |")
        lines.append("|---:|---|")
        for stmt, secs in d["steps"]:
            if secs >= 0.01:
                lines.append(f"| {secs:.2f} | `{stmt.replace('|', '/')}…` |")
    # Cross-check.
    tot = rep["cross_check"]["totals"]
    if tot:
        keys = list(next(iter(tot.values())).keys())
        lines.append("")
        lines.append("Cross-check (counted from each engine's Parquet output):")
        lines.append("")
        lines.append("| | " + " | ".join(LABEL[e] for e in engines) + " |")
        lines.append("|---|" + "---:|" * len(engines))
        if "attribd" in engines:
            a = rep["details"]["attribd"][-1]["report"]["counters"]
            dl = sum(a["dead_letters"].values())
            row = [f"{fmt_int(dl)} dead letters"]
            for e in engines:
                if e == "attribd":
                    continue
                c = rep["details"][e][-1]["counts"]
                row.append(
                    fmt_int(inp["click_lines"] - c["clicks_valid"]
                            + inp["conversion_lines"] - c["conversion_lines_valid"])
                )
            lines.append("| lines dropped as invalid | " + " | ".join(row) + " |")
        for k in keys:
            vals = []
            for e in engines:
                v = tot[e][k]
                vals.append(f"{v:,.2f}".replace(",", " ") if isinstance(v, float) else fmt_int(v))
            lines.append(f"| {k} | " + " | ".join(vals) + " |")
        diffs = rep["cross_check"]["diffs"]
        if diffs:
            lines.append("")
            lines.append("Row by row against attribd (conversions by `(tenant_id, external_id)`, "
                         "attribd's current version):")
            lines.append("")
            peers = list(diffs)
            lines.append("| | " + " | ".join(LABEL[e] for e in peers) + " |")
            lines.append("|---|" + "---:|" * len(peers))
            for k in next(iter(diffs.values())):
                lines.append(f"| {k} | " + " | ".join(fmt_int(diffs[e][k]) for e in peers) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# `run.py edge`: a small input made of the cases where the engines' semantics part ways.
# --------------------------------------------------------------------------------------------

EDGE_CASES = [
    ("c1 (line 2) / c1 again (line 4)", "click", "c1",
     "same click_id twice: the first is kept"),
    ("c2", "click", "c2", "same visitor (tenant, offer, ip) and day as c1: not unique"),
    ("late", "click", "late",
     "10:20, after 5 000 clicks of 11:00–11:58"),
    ("old (Sep 1) / old (Nov 1)", "click", "old",
     "same click_id 61 days apart, more than the 30-day window"),
    ("c4", "click", "c4", "`ts` \"2026-11-01 12:10\" is not RFC 3339"),
    ("c5", "click", "c5", "duplicate key `country`"),
    ("e1", "conv", "e1", "pending → approved → pending"),
    ("e2", "conv", "e2", "10:30, its click `late` (10:20) comes only after clicks up to 11:58 "
     "and after the run of postbacks e0… that starts at 10:05"),
    ("e3", "conv", "e3", "`ts` \"2026-11-01 10:40\" is not RFC 3339"),
    ("e4", "conv", "e4", "12:30, click_id old (Sep 1 and Nov 1 12:00)"),
    ("e5", "conv", "e5", "duplicate key `status` (approved, then rejected)"),
    ("e6", "conv", "e6", "approved → rejected → approved"),
]


def write_edge_input(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)

    def click(cid, ts, **kw):
        rec = {"click_id": cid, "ts": ts, "tenant_id": "t1", "offer_id": "o1",
               "affiliate_id": "a1"}
        rec.update(kw)
        return json.dumps(rec, separators=(",", ":"))

    base = 1_793_527_200_000  # 2026-11-01T10:00:00Z
    minute = 60_000
    filler = [
        click(f"f{i:05d}", base + 60 * minute + i * 700, tenant_id="t9", offer_id="o9",
              affiliate_id="a9", country="IT")
        for i in range(10_000)
    ]
    clicks = [
        click("old", "2026-09-01T12:00:00Z", country="de", ip="10.0.0.1"),
        click("c1", "2026-11-01T10:00:00Z", country="de", ip="10.0.0.2"),
        click("c2", "2026-11-01T10:01:00Z", affiliate_id="a2", country="DE", ip="10.0.0.2"),
        click("c1", "2026-11-01T10:02:00Z", country="de", ip="10.0.0.2"),
        click("c3", base + 60 * minute, offer_id="o2", country="FR"),
        *filler[:5000],
        click("late", "2026-11-01T10:20:00Z", offer_id="o2", affiliate_id="a3", country="FR"),
        *filler[5000:],
        click("old", "2026-11-01T12:00:00Z", offer_id="o3", affiliate_id="a4", country="US"),
        click("c4", "2026-11-01 12:10"),
        '{"click_id":"c5","ts":"2026-11-01T12:20:00Z","offer_id":"o1","affiliate_id":"a1",'
        '"country":"de","country":"US"}',
        '{"click_id":"c6","ts":"2026-11-01T12:30:00Z","offer_id":"o1"',
        click("c7", "2026-11-01T13:00:00Z", country="GB"),
    ]

    def conv(ext, cid, status, ts, amount):
        return json.dumps({"click_id": cid, "external_id": ext, "tenant_id": "t1",
                           "amount": amount, "status": status, "ts": ts},
                          separators=(",", ":"))

    convs = [
        conv("e0", "c2", "approved", "2026-11-01T10:05:00Z", 5),
        conv("e1", "c1", "pending", "2026-11-01T10:30:00Z", "10.00"),
        conv("e1", "c1", "approved", "2026-11-01T10:30:00Z", "10.00"),
        conv("e1", "c1", "pending", "2026-11-01T10:30:00Z", "10.00"),
        conv("e2", "late", "approved", "2026-11-01T10:30:00Z", 20),
        conv("e3", "c2", "APPROVED", "2026-11-01 10:40", 30),
        conv("e4", "old", "approved", "2026-11-01T12:30:00Z", 40),
        '{"click_id":"c3","external_id":"e5","tenant_id":"t1","amount":50,"status":"approved",'
        '"status":"rejected","ts":"2026-11-01T12:40:00Z"}',
        conv("e6", "c7", "approved", "2026-11-01T13:05:00Z", 60),
        conv("e6", "c7", "rejected", "2026-11-01T13:05:00Z", 60),
        conv("e6", "c7", "approved", "2026-11-01T13:05:00Z", 60),
    ]
    (d / "clicks.ndjson").write_text("\n".join(clicks) + "\n")
    (d / "conversions.ndjson").write_text("\n".join(convs) + "\n")


def main_edge(args) -> None:
    import duckdb

    inp = args.work / "edge" / "input"
    write_edge_input(inp)
    engines = ["attribd", "duckdb", "chdb"]
    outs = {e: args.work / "edge" / e for e in engines}
    cpus = sorted(os.sched_getaffinity(0))[: args.cores]
    for e in engines:
        run_once(e, args, inp, outs[e], cpus, args.work / "edge" / f"summary-{e}.json")
    con = duckdb.connect()
    cell = {}
    for e, d in outs.items():
        for name, kind, key, _ in EDGE_CASES:
            if kind == "click":
                rows = con.execute(
                    f"""SELECT strftime(ts, '%b %-d %H:%M') FROM read_parquet('{d}/clicks/**/*.parquet',
                        hive_partitioning = false) WHERE click_id = ? ORDER BY ts""", [key]
                ).fetchall()
                uniq = ""
                if e == "attribd" and rows:
                    u = con.execute(
                        f"""SELECT list(is_unique ORDER BY ts) FROM read_parquet('{d}/clicks/**/*.parquet',
                            hive_partitioning = false) WHERE click_id = ?""", [key]).fetchone()[0]
                    uniq = " (" + ", ".join("unique" if x else "not unique" for x in u) + ")"
                cell[(name, e)] = ("kept " + ", ".join(r[0] for r in rows) + uniq) if rows else "dropped"
            else:
                src = conv_source(e, d)
                r = con.execute(
                    f"SELECT status, attributed::BOOLEAN, reason FROM {src} WHERE external_id = ?", [key]
                ).fetchone()
                if r is None:
                    cell[(name, e)] = "dropped"
                else:
                    cell[(name, e)] = f"{r[0]}, " + ("attributed" if r[1] else (r[2] or "unattributed"))
    dead = con.execute(
        f"SELECT reason, count(*) FROM read_json('{outs['attribd']}/dead_letters/*.ndjson') GROUP BY ALL ORDER BY 1"
    ).fetchall()
    lines = [
        "Edge cases (`benches/peers/run.sh edge`; 10 000 filler clicks push `late` and the second "
        "`old` into later batches):",
        "",
        "| case | input | attribd | DuckDB | ClickHouse (chDB) |",
        "|---|---|---|---|---|",
    ]
    for name, _, _, what in EDGE_CASES:
        lines.append(f"| {name} | {what} | " + " | ".join(cell[(name, e)] for e in engines) + " |")
    lines.append("")
    lines.append("attribd's dead letters: " + ", ".join(f"{r} {n}" for r, n in dead)
                 + "; the peers drop bad lines without a trace.")
    md = "\n".join(lines) + "\n"
    print(md)
    (args.work / "edge-report.md").write_text(md)
    log(f"written: {args.work / 'edge-report.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("bench", help="the benchmark (default)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--clicks", type=int, default=5_000_000, help="clicks to generate (default 5000000)")
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--runs", type=int, default=3, help="rounds; the median is reported (default 3)")
    b.add_argument("--cores", type=int, default=2, help="CPUs every engine is pinned to (default 2)")
    b.add_argument("--engines", default="attribd,duckdb,chdb")
    b.add_argument("--fresh-input", action="store_true",
                   help="generate the input again even if target/peers/input-N-sS exists")
    b.add_argument("--work", type=Path, default=ROOT / "target" / "peers",
                   help="inputs, outputs and reports (default target/peers)")
    b.add_argument("--attribd", type=Path, default=ROOT / "target" / "release-lto" / "attribd")
    e = sub.add_parser("edge", help="the semantic differences on a small crafted input")
    e.add_argument("--cores", type=int, default=2)
    e.add_argument("--work", type=Path, default=ROOT / "target" / "peers")
    e.add_argument("--attribd", type=Path, default=ROOT / "target" / "release-lto" / "attribd")
    j = sub.add_parser("job", help="one peer run (the timed child process)")
    j.add_argument("engine", choices=PEERS)
    j.add_argument("--clicks", required=True)
    j.add_argument("--conversions", required=True)
    j.add_argument("--out", required=True)
    j.add_argument("--threads", type=int, default=2)
    argv = sys.argv[1:]
    if not argv or argv[0] not in ("bench", "job", "edge"):
        argv = ["bench"] + argv
    args = ap.parse_args(argv)
    args.argv = argv[1:]
    if args.cmd == "job":
        job(args.engine, os.path.abspath(args.clicks), os.path.abspath(args.conversions),
            os.path.abspath(args.out), args.threads)
    else:
        args.work = args.work.resolve()
        args.attribd = args.attribd.resolve()
        main_edge(args) if args.cmd == "edge" else main_bench(args)


if __name__ == "__main__":
    main()
