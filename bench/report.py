#!/usr/bin/env python3
"""Turns scripts/bench's raw results into the terminal table, bench/results.md,
the data and script for bench/results.png (gnuplot), and the closing line.

    report.py RAW_TSV META_TSV OUT_DIR RESULTS_MD

RAW_TSV rows: case, metric, run, value, load1 (one per RESULT line).
META_TSV rows: key, value (machine, versions, settings, commands).
Everything below the PROFILE_MARK line of an existing results.md (the profile
findings, written by hand) is kept.
"""
import statistics
import subprocess
import sys
from collections import defaultdict

PROFILE_MARK = "<!-- everything below this line is kept by scripts/bench -->"

raw_path, meta_path, out_dir, results_md = sys.argv[1:5]
values = defaultdict(list)  # (case, metric) -> [value]
loads = defaultdict(list)   # case -> [load1]
for line in open(raw_path):
    case, metric, run, value, load1 = line.rstrip("\n").split("\t")
    values[(case, metric)].append(float(value))
    loads[case].append(float(load1))
meta = dict(line.rstrip("\n").split("\t", 1) for line in open(meta_path) if "\t" in line)


def stat(case, metric):
    v = values.get((case, metric))
    if not v:
        return None
    return statistics.median(v), min(v), max(v), len(v)


def fmt(s, unit="", digits=0):
    if s is None:
        return "n/a"
    med, lo, hi, n = s
    f = f"{{:,.{digits}f}}"
    return f"{f.format(med)}{unit} ({f.format(lo)}–{f.format(hi)}, n={n})"


def load_of(case):
    l = loads.get(case)
    return f"{min(l):.1f}–{max(l):.1f}" if l else ""


throughput = [
    ("dmm, 1 worker process", "dmm-1p", "materialize_per_s", "materializations/s"),
    ("dmm, 2 worker processes", "dmm-2p", "materialize_per_s", "materializations/s"),
    (f"graphile-worker {meta.get('graphile_version', '')}", "graphile", "process_per_s", "jobs/s"),
    (f"pg-boss {meta.get('pgboss_version', '')}", "pgboss", "process_per_s", "jobs/s"),
    (f"ceiling: dmm's claim + write-back as plain SQL (pgbench, 2 clients, {meta.get('batch', '?')}/batch)",
     "sql-ceiling", "rows_per_s", "rows/s"),
    ("ceiling: JetStream async publish", "nats-ceiling", "publish_per_s", "msgs/s"),
    ("ceiling: JetStream fetch 256 + async ack", "nats-ceiling", "fetch_ack_per_s", "msgs/s"),
]
bulk_add = [
    ("dmm notify_many (10k per call, 2000 per statement)", "dmm-1p", "notify_per_s"),
    ("graphile-worker addJobs (10k per call)", "graphile", "add_per_s"),
    ("pg-boss insert (10k per call)", "pgboss", "add_per_s"),
]
latency = [
    ("dmm Notify→materialize start", "dmm-lat"),
    ("graphile-worker addJob→handler start", "graphile-lat"),
    ("pg-boss send→handler start", "pgboss-lat"),
]
# (label, case, metric prefix): the urgent case's rows.
urgent = [
    ("dmm notify(…, {.priority = high})→materialize start", "dmm-urgent", ""),
    ("graphile-worker addJob(…, {priority: -1})→handler start", "graphile-urgent", ""),
    ("dmm notify() return→materialize start (same runs)", "dmm-urgent", "from_return_"),
    ("dmm notify() call, start to return (same runs)", "dmm-urgent", "notify_"),
]
memory_sizes = sorted({int(m.split("_")[2]) for (c, m) in values if c == "memory" and m.startswith("rss_kib_")})


def memory_stat(kind, size):
    v = [x for (c, m), xs in values.items() if c == "memory" and m.startswith(f"{kind}_kib_{size}_") for x in xs]
    if not v:
        return None
    return statistics.median(v) / 1024, min(v) / 1024, max(v) / 1024, len(v)


# ---------------------------------------------------------------- terminal + markdown tables
lines = []
lines.append("| throughput | median (min–max, runs) | load during runs |")
lines.append("| --- | --- | --- |")
for label, case, metric, unit in throughput:
    lines.append(f"| {label} | {fmt(stat(case, metric), ' ' + unit)} | {load_of(case)} |")
lines.append("")
lines.append("| bulk add (setup of the throughput runs) | median (min–max, runs) |")
lines.append("| --- | --- |")
for label, case, metric in bulk_add:
    lines.append(f"| {label} | {fmt(stat(case, metric), '/s')} |")
lines.append("")
lines.append("| latency at a steady rate | offered/s | achieved/s | p50 ms | p99 ms | max ms | load |")
lines.append("| --- | --- | --- | --- | --- | --- | --- |")
for label, case in latency:
    cells = [fmt(stat(case, "offered_per_s")), fmt(stat(case, "achieved_per_s"))]
    cells += [fmt(stat(case, m), "", 1) for m in ("p50_ms", "p99_ms", "max_ms")]
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {load_of(case)} |")
if stat("dmm-lat", "notify_p50_ms"):
    cells = [fmt(stat("dmm-lat", "offered_per_s")), fmt(stat("dmm-lat", "achieved_per_s"))]
    cells += [fmt(stat("dmm-lat", m), "", 1) for m in ("notify_p50_ms", "notify_p99_ms")] + ["n/a"]
    lines.append("| dmm notify() call, start to return (same runs) | " + " | ".join(cells)
                 + f" | {load_of('dmm-lat')} |")
lines.append("")
if stat("dmm-urgent", "p99_ms") or stat("graphile-urgent", "p99_ms"):
    backlog = stat("dmm-urgent", "backlog") or stat("graphile-urgent", "backlog")
    lines.append(f"| urgent: high-priority single adds while a backlog of {backlog[0]:,.0f} drains "
                 "| backlog drained/s | urgent/s during the drain | samples | p50 ms | p99 ms | max ms | load |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, case, prefix in urgent:
        cells = [fmt(stat(case, m)) for m in ("backlog_per_s", "urgent_per_s", "samples")]
        cells += [fmt(stat(case, prefix + m), "", 1) for m in ("p50_ms", "p99_ms", "max_ms")]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {load_of(case)} |")
    lines.append("")
lines.append("| the most single notifies/s dmm sustains (20,000/s offered, 16 threads) | achieved/s | p50 ms | p99 ms |")
lines.append("| --- | --- | --- | --- |")
lines.append("| dmm Notify→materialize start, saturated | " + fmt(stat("dmm-lat-max", "achieved_per_s")) + " | "
             + " | ".join(fmt(stat("dmm-lat-max", m), "", 1) for m in ("p50_ms", "p99_ms")) + " |")
lines.append("")
if stat("dmm-burst", "drain_per_s"):
    lines.append("| a running worker, then N notified in one transaction (tokens from its sweeper) "
                 "| median (min–max, runs) |")
    lines.append("| --- | --- |")
    notified = fmt(stat("dmm-burst", "notify_in_txn_per_s"), "/s")
    lines.append(f"| dmm notify_many(txn, ...) (10k per call) | {notified} |")
    lines.append(f"| dmm drain after the commit | {fmt(stat('dmm-burst', 'drain_per_s'), ' materializations/s')} |")
    lines.append("")
lines.append("| matters stored (100 due) | worker RSS MiB | worker peak RSS (VmHWM) MiB |")
lines.append("| --- | --- | --- |")
for size in memory_sizes:
    lines.append(f"| {size:,} | {fmt(memory_stat('rss', size), '', 1)} | {fmt(memory_stat('hwm', size), '', 1)} |")
table = "\n".join(lines)

# ---------------------------------------------------------------- plot
dat = f"{out_dir}/throughput.dat"
with open(dat, "w") as f:
    for label, case, metric, _ in throughput:
        s = stat(case, metric)
        if s:
            short = {"dmm-1p": "dmm 1 proc", "dmm-2p": "dmm 2 procs", "graphile": "graphile-worker",
                     "pgboss": "pg-boss", "sql-ceiling": "SQL ceiling"}.get(case)
            short = short or ("NATS publish" if metric == "publish_per_s" else "NATS fetch+ack")
            f.write(f'"{short}" {s[0]:.0f} {s[1]:.0f} {s[2]:.0f}\n')
latdat = f"{out_dir}/latency.dat"
with open(latdat, "w") as f:
    for label, case in latency:
        p50, p99 = stat(case, "p50_ms"), stat(case, "p99_ms")
        if p50 and p99:
            name = {"dmm-lat": "dmm", "graphile-lat": "graphile-worker", "pgboss-lat": "pg-boss"}[case]
            f.write(f'"{name}" {p50[0]:.3f} {p50[1]:.3f} {p50[2]:.3f} {p99[0]:.3f} {p99[1]:.3f} {p99[2]:.3f}\n')
rate = stat("dmm-lat", "offered_per_s")
png = results_md.rsplit("/", 1)[0] + "/results.png"
gp = f"{out_dir}/results.gp"
with open(gp, "w") as f:
    f.write(f"""set terminal pngcairo size 1400,560 font ",10"
set output "{png}"
set multiplot layout 1,2 title "dmm vs graphile-worker vs pg-boss, {meta.get('machine_short', '')} (median of {meta.get('runs', '?')} runs, bars: min-max)"
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.6 border -1
set boxwidth 0.8
set xtics rotate by -30 scale 0
set grid ytics
set key off
set yrange [0:*]
set title "no-op throughput, per second (N={meta.get('n', '?')})"
set ylabel "items / s"
plot "{dat}" using 2:3:4:xtic(1) lc rgb "#3b75af"
set title "start latency at {rate[0] if rate else 0:,.0f}/s offered (log scale)"
set ylabel "ms"
set logscale y
set yrange [*:*]
set key top left
plot "{latdat}" using 2:3:4:xtic(1) title "p50" lc rgb "#3b75af", "" using 5:6:7 title "p99" lc rgb "#ef8636"
unset multiplot
""")
subprocess.run(["gnuplot", gp], check=True)

# ---------------------------------------------------------------- results.md
kept = ""
try:
    old = open(results_md).read()
    if PROFILE_MARK in old:
        kept = old.split(PROFILE_MARK, 1)[1]
except FileNotFoundError:
    pass
md = [f"# Benchmark results ({meta.get('mode', '')})", ""]
md.append(f"Written by `{meta.get('command', 'scripts/bench')}` on {meta.get('date', '')}; "
          f"each figure is the median of {meta.get('runs', '?')} runs with (min–max); a warm-up run of every "
          "system after the fresh initdb is discarded. ![results](results.png)")
md.append("")
md.append(meta.get("noise", ""))
md.append("")
md.append(table)
md.append("")
md.append("## Machine, versions, settings")
md.append("")
for key in ("machine", "kernel", "load_before", "load_after", "postgresql", "postgresql_settings", "nats_server",
            "nats_c", "libpqxx", "compiler", "node", "graphile_version", "pgboss_version", "dmm_commit", "settings"):
    if key in meta:
        md.append(f"- **{key}**: {meta[key]}")
md.append("")
md.append("## Commands")
md.append("")
md.append("```sh")
md.extend(l for l in open(f"{out_dir}/commands.txt").read().splitlines())
md.append("```")
md.append("")
md.append(PROFILE_MARK)
md.append(kept.lstrip("\n") if kept else "\n")
open(results_md, "w").write("\n".join(md))

print(table)
print()
x = stat("dmm-1p", "materialize_per_s")
y = stat("graphile", "process_per_s")
z = stat("pgboss", "process_per_s")
p = stat("dmm-lat", "p99_ms")
u = stat("dmm-urgent", "p99_ms")
gu = stat("graphile-urgent", "p99_ms")
xv, yv, zv = (s[0] if s else 0 for s in (x, y, z))
best = max(yv, zv)
ratio = xv / best if best else 0
print(f"bench: dmm {xv:.0f}/s graphile-worker {yv:.0f}/s pg-boss {zv:.0f}/s "
      f"ratio_vs_best_peer={ratio:.2f} p99_ms={p[0] if p else 0:.1f} "
      f"urgent_p99_ms={u[0] if u else 0:.1f} gw_urgent_p99_ms={gu[0] if gu else 0:.1f}")
