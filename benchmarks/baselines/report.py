"""The Markdown report of a ``run.py`` run: targets, then one table per figure."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

Row = dict[str, Any]


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:  # NaN
            return "-"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:,.{max(digits - 1, 1)}f}".rstrip("0").rstrip(".")
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return a / b


def _rx(x: float | None) -> str:
    return "-" if x is None else (f"{x:,.0f}x" if x >= 100 else f"{x:.1f}x")


def _table(head: list[str], body: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _of(rows: list[Row], bench: str, **match: Any) -> list[Row]:
    return [r for r in rows if r.get("bench") == bench and all(r.get(k) == v for k, v in match.items())]


def _largest(rows: list[Row], key: str = "n") -> Row | None:
    return max(rows, key=lambda r: r.get(key) or 0) if rows else None


def throughput_rows(rows: list[Row]) -> list[Row]:
    """One row per (system, storage, variant): the largest run."""
    best: dict[tuple[str, str, str], Row] = {}
    for r in _of(rows, "throughput"):
        k = (r["system"], r["storage"], r["variant"])
        if k not in best or r["n"] > best[k]["n"]:
            best[k] = r
    return list(best.values())


def startup_table(rows: list[Row]) -> dict[tuple[str, int], dict[int, float]]:
    """``(system/state, W) -> {N: seconds}`` for the chart."""
    out: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for r in _of(rows, "startup"):
        out[(f"{r['system']}/{r['state']}", r["writers"])][r["n"]] = r["open_s"]
    return dict(out)


# ---------------------------------------------------------------------- targets


def targets(rows: list[Row]) -> list[list[Any]]:
    out: list[list[Any]] = []

    def add(name: str, measured: str, ratio: float | None, goal: float, higher: bool = True, note: str = "") -> None:
        if ratio is None:
            out.append([name, measured, "-", "not measured" + (f" ({note})" if note else "")])
            return
        ok = ratio >= goal if higher else ratio <= goal
        out.append(
            [
                name,
                measured,
                _rx(ratio) if higher else _f(ratio),
                ("**met**" if ok else "**missed**") + (f" {note}" if note else ""),
            ]
        )

    thr = {(r["system"], r["storage"], r["variant"]): r for r in throughput_rows(rows)}
    rl = thr.get(("resumelog", "local", "buffered"))
    act = thr.get(("curator-lmdb", "local", "Ray actor"))
    if rl:
        add(
            "record throughput per writer ≥ 20x Curator's Ray actor path",
            f"{_f(rl['records_per_s'])} vs {_f(act['records_per_s']) if act else '-'} records/s",
            _ratio(rl["records_per_s"], act["records_per_s"] if act else None),
            20,
        )
        base = [r for k, r in thr.items() if k[0] != "resumelog"]
        if base:
            b = max(base, key=lambda r: r["records_per_s"])
            add(
                "... vs the fastest baseline",
                f"{_f(rl['records_per_s'])} vs {_f(b['records_per_s'])} ({b['system']}, {b['variant']})",
                _ratio(rl["records_per_s"], b["records_per_s"]),
                1,
            )
        barrier = thr.get(("resumelog", "local", "barrier"))
        if barrier and act:
            # about one fsync per source on both sides (resumelog: the fan-out call's
            # flush; Curator: the LMDB commit of the call that completes the source):
            # the disk's fsync rate bounds both, so the bar is "not slower"
            add(
                "... resumelog with a flush per positive stage call ≥ 1x Curator's Ray actor (both ~1 fsync per source)",
                f"{_f(barrier['records_per_s'])} vs {_f(act['records_per_s'])} records/s",
                _ratio(barrier["records_per_s"], act["records_per_s"]),
                1,
            )

    st = _of(rows, "startup")
    ns = sorted({r["n"] for r in st})
    n = 1_000_000 if 1_000_000 in ns else (ns[-1] if ns else 0)
    wmax = max((r["writers"] for r in st if r["n"] == n), default=0)
    cur = next((r for r in st if r["system"] == "curator-lmdb" and r["n"] == n and r["writers"] == wmax), None)
    for state in ("snapshot", "snapshot-retired", "journal"):
        cands = [r for r in st if r["system"] == "resumelog" and r["state"] == state and r["n"] == n]
        r = next((c for c in cands if c["writers"] == wmax), _largest(cands, "writers"))
        if r is None:
            continue
        add(
            f"startup, {n:,} completed, resumelog {state} (W={r['writers']}) ≥ 5x faster than Curator's {wmax}-file union",
            f"{_f(r['open_s'])} s vs {_f(cur['open_s']) if cur else '-'} s",
            _ratio(cur["open_s"] if cur else None, r["open_s"]),
            5,
        )

    s3 = _of(rows, "s3_startup")
    naive = _largest([r for r in s3 if r["system"] == "object-per-event"])
    for state in ("snapshot", "snapshot-retired", "journal"):
        r = _largest([x for x in s3 if x["system"] == "resumelog" and x["state"] == state])
        if r is None or naive is None:
            continue
        est = naive["open_s"] * r["n"] / naive["n"]
        add(
            f"startup on S3, {r['n']:,} completed, resumelog {state} ≥ 50x faster than one-object-per-event",
            f"{_f(r['open_s'])} s vs {_f(est)} s (naive measured at {naive['n']:,} sources: "
            f"{_f(naive['open_s'])} s, scaled linearly)",
            _ratio(est, r["open_s"]),
            50,
        )

    by = _of(rows, "bytes")
    cur_real = _largest([r for r in by if r["system"] == "curator-lmdb" and r["state"] == "actor-written"])
    cur_bulk = next(
        (
            r
            for r in by
            if r["system"] == "curator-lmdb" and r["state"] == "bulk-written" and r["n"] == n and r["writers"] == wmax
        ),
        None,
    )
    for state in ("snapshot", "snapshot-retired"):
        cands = [r for r in by if r["system"] == "resumelog" and r["state"] == state and r["n"] == n]
        r = next((c for c in cands if c["writers"] == wmax), _largest(cands, "writers"))
        if r is None:
            continue
        for label, c in (("written by the actor", cur_real), ("bulk-written", cur_bulk)):
            if c is None:
                continue
            add(
                f"bytes per completed source, resumelog {state} ≤ Curator LMDB ({label})",
                f"{_f(r['bytes_per_completed'])} B vs {_f(c['bytes_per_completed'])} B",
                r["bytes_per_completed"] / c["bytes_per_completed"],
                1.0,
                higher=False,
                note="(ratio)",
            )

    lat = next(iter(_of(rows, "flush_latency", storage="local")), None)
    if lat:
        ok = lat["flush_p99_ms"] <= 5
        out.append(
            [
                f"p99 flush() latency, local disk, {_f(lat['segment_bytes_avg'])} B segments ≤ 5 ms",
                f"p99 {_f(lat['flush_p99_ms'])} ms (p50 {_f(lat['flush_p50_ms'])}); disk floor p99 "
                f"{_f(lat.get('floor_p99_ms'))} ms (p50 {_f(lat.get('floor_p50_ms'))})",
                _f(lat["flush_p99_ms"]) + " ms",
                "**met**" if ok else "**missed**",
            ]
        )
        if lat.get("floor_p99_ms") is not None:
            over = lat["flush_p99_ms"] - lat["floor_p99_ms"]
            out.append(
                [
                    "... what flush() adds to the disk floor (encode + create protocol), p99",
                    f"+{_f(round(over, 2))} ms (p50 +{_f(round(lat['flush_p50_ms'] - lat['floor_p50_ms'], 2))} ms)",
                    f"+{_f(round(over, 2))} ms",
                    "(the disk sets the rest)",
                ]
            )

    for r in _of(rows, "s3_write"):
        out.append(
            [
                f"S3 PUTs per 1M records, {r['writers']} writer(s), default flush policy ≤ 100",
                f"{_f(r['puts_per_1m_records'])} (measured {r['puts']} PUTs for {_f(r['records'])} records)",
                _f(r["puts_per_1m_records"]),
                "**met**" if r["puts_per_1m_records"] <= 100 else "**missed** (one closing segment per writer)",
            ]
        )
    for r in _of(rows, "s3_vs_naive"):
        add(
            f"S3 requests, {_f(r['events'])} events, {r['system']} ≥ 100x fewer than naive",
            f"{r['write_requests'] + r['startup_requests']} vs {r['naive_write_requests'] + r['naive_startup_requests']}",
            r["requests_ratio"],
            100,
        )
        add(
            f"S3 startup, {_f(r['events'])} events, {r['system']} ≥ 20x faster than naive",
            f"{_f(r['startup_s'])} s vs {_f(r['naive_startup_s'])} s",
            r["startup_ratio"],
            20,
        )
    resumes = {r.get("variant"): r for r in _of(rows, "raydata") if r.get("bench_orig") == "resume"}
    mine = resumes.get("resumelog")
    if mine:
        native = resumes.get("native")
        add(
            f"Ray Data: resume with {mine['left_pct']} % of {mine['files']} files left ≤ 0.45 of a fresh run",
            f"{_f(mine['seconds'])} s of {_f(mine['fresh_seconds'])} s"
            + (f" (Ray's native CheckpointConfig: {_f(native['fraction_of_fresh'])})" if native else ""),
            mine["fraction_of_fresh"],
            0.45,
            higher=False,
        )
    return out


# ---------------------------------------------------------------------- render


def render(rows: list[Row], mode: str) -> str:
    env = next((r for r in rows if r.get("bench") == "env" and r.get("system") == "host"), {})
    cur = next((r for r in rows if r.get("bench") == "env" and r.get("system") == "curator-lmdb"), None)
    total = next((r for r in rows if r.get("bench") == "section" and r.get("system") == "total"), None)
    parts = [f"# resumelog benchmarks — `{mode}`\n"]
    parts.append(
        f"{env.get('date', '')} · Python {env.get('python', '')} · {env.get('cpus', '?')} CPUs · "
        f"{env.get('platform', '')} · git {env.get('git', '')} · SQLite {env.get('sqlite', '')}"
        + (f" · NeMo Curator {cur['nemo_curator']} (lmdb {cur['lmdb']}, ray {cur['ray']})" if cur else "")
        + (f" · run took {_f(total['seconds'])} s" if total else "")
        + (
            f" · load average {env['loadavg_start'][0]} at start, {total['loadavg_end'][0]} at end"
            if total and "loadavg_start" in env and "loadavg_end" in total
            else ""
        )
        + "\n"
    )
    workload = (
        "Workload: N sources, each `emit +1` (source stage, 1,000 sources per call), fan-out 1->3 `+2`, three sink "
        "`-1` (Curator's default batch size 1: one stage call each) — 5 records and ~4 stage calls per source, "
        "Curator-style task ids as keys, 16-character source ids.\n"
    )
    parts.append(workload)
    skipped = [r for r in rows if r.get("bench") in ("skipped", "error")]
    if skipped:
        parts.append("\n**Skipped / errors:**\n")
        parts += [f"- {r['bench']}: {r['system']}: {r.get('reason', '')}\n" for r in skipped]

    t = targets(rows)
    if t:
        parts.append("\n## Targets (issue 8 / issue 4)\n\n")
        parts.append(_table(["target", "measured", "ratio", "result"], t))

    thr = throughput_rows(rows)
    if thr:
        act = next((r for r in thr if r["system"] == "curator-lmdb" and r["variant"] == "Ray actor"), None)
        body = []
        for r in sorted(thr, key=lambda r: -r["records_per_s"]):
            body.append(
                [
                    r["system"],
                    r["storage"],
                    r["variant"],
                    r["n"],
                    r["records"],
                    r["records_per_s"],
                    _rx(_ratio(r["records_per_s"], act["records_per_s"] if act else None)),
                    r.get("durable", ""),
                ]
            )
        parts.append("\n## Record throughput, one writer\n\n")
        parts.append(
            _table(
                ["system", "storage", "variant", "sources", "records", "records/s", "vs Curator actor", "durable at"],
                body,
            )
        )

    lat = _of(rows, "flush_latency")
    if lat:
        parts.append("\n## `flush()` latency (encode + durable put)\n\n")
        body = [
            [
                r["storage"],
                r["segment_bytes_avg"],
                r["flushes"],
                r["flush_p50_ms"],
                r["flush_p99_ms"],
                r["flush_max_ms"],
                r["put_p50_ms"],
                r["put_p99_ms"],
                r.get("floor_p50_ms"),
                r.get("floor_p99_ms"),
            ]
            for r in lat
        ]
        parts.append(
            _table(
                [
                    "storage",
                    "segment B",
                    "flushes",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "put p50",
                    "put p99",
                    "floor p50",
                    "floor p99",
                ],
                body,
            )
        )
        parts.append(
            "\n*put*: the store write alone; *floor*: write + fsync + directory fsync of the same bytes with no "
            "encoding, same directory, one after each flush (what the disk allows at that moment).\n"
        )

    st = _of(rows, "startup")
    if st:
        ns = sorted({r["n"] for r in st})
        keys = sorted({(r["system"], r["state"], r["writers"]) for r in st})
        cell: dict[tuple[str, str, int, int], Row] = {(r["system"], r["state"], r["writers"], r["n"]): r for r in st}
        body = []
        for k in keys:
            row: list[Any] = [k[0], k[1], k[2]]
            for n in ns:
                c = cell.get((*k, n))
                row.append("-" if c is None else f"{_f(c['open_s'])} s / {_f(c.get('peak_rss_mb'))} MB")
            body.append(row)
        parts.append("\n## Startup: open + first lookup (seconds / peak RSS of the process), vs N and W\n\n")
        parts.append(_table(["system", "state", "W"] + [f"N={n:,}" for n in ns], body))
        parts.append(
            "\nStates: resumelog *journal* = W writers' journals, nothing compacted (open folds them); *snapshot* = "
            "after `compact()` + GC; *snapshot-retired* = after `compact(keep_runs=0)` (the finished run's pending "
            "state and per-key final deltas dropped). Curator *union* = a new `ResumabilityActor` over W `.mdb` "
            "files. SQLite *select* = `SELECT` completed ids into a set. object-per-event = list + read every object. "
            "Best of several fresh processes; imports excluded for every system.\n"
        )

    comp = _of(rows, "compaction")
    if comp:
        ns = sorted({r["n"] for r in comp if "round" not in r})
        ws = sorted({r["writers"] for r in comp})
        cell2 = {(r["writers"], r["n"]): r for r in comp if "round" not in r}
        body = []
        for w in ws:
            row = [w]
            for n in ns:
                c = cell2.get((w, n))
                row.append(
                    "-"
                    if c is None
                    else f"{_f(c['seconds'])} s ({_f(c['records_per_s'])} rec/s) / {_f(c['peak_rss_mb'])} MB"
                )
            body.append(row)
        parts.append(
            "\n## Compaction (fold every journal into a snapshot): time (records/s) / peak RSS, vs N and W\n\n"
        )
        if ns:
            parts.append(_table(["W"] + [f"N={n:,} ({5 * n:,} records)" for n in ns], body))
        rounds = [r for r in comp if "round" in r]
        if rounds:
            parts.append("\nCompaction in rounds (each folds the new round's journals into the previous snapshot):\n\n")
            parts.append(
                _table(
                    ["round", "completed so far", "records folded", "seconds", "peak RSS MB", "snapshot B"],
                    [
                        [r["round"], r["n"], r["records"], r["seconds"], r["peak_rss_mb"], r["snapshot_bytes"]]
                        for r in rounds
                    ],
                )
            )

    by = _of(rows, "bytes")
    if by:
        parts.append("\n## Bytes on storage per completed source\n\n")
        body = [
            [r["system"], r["state"], r["n"], r["writers"], r["bytes"], r.get("objects", "-"), r["bytes_per_completed"]]
            for r in sorted(by, key=lambda r: (r["system"], r["state"], r["n"], r["writers"]))
        ]
        parts.append(_table(["system", "state", "N", "W", "bytes", "objects", "B / completed"], body))

    s3w = _of(rows, "s3_write")
    s3s = _of(rows, "s3_startup")
    s3c = _of(rows, "s3_compact")
    s3n = _of(rows, "s3_vs_naive")
    if s3w or s3s or s3n:
        parts.append("\n## S3 (loopback server): requests and startup\n\n")
        if s3w:
            parts.append(
                _table(
                    ["writes", "W", "records", "PUTs", "PUTs / 1M records", "bytes / 1M records"],
                    [
                        [
                            "resumelog",
                            r["writers"],
                            r["records"],
                            r["puts"],
                            r["puts_per_1m_records"],
                            r["bytes_per_1m_records"],
                        ]
                        for r in s3w
                    ],
                )
            )
            parts.append("\n")
        if s3s:
            parts.append(
                _table(
                    ["startup", "state", "sources", "W", "seconds", "GETs", "LISTs", "peak RSS MB"],
                    [
                        [
                            r["system"],
                            r["state"],
                            r["n"],
                            r["writers"],
                            r["open_s"],
                            r["gets"],
                            r["lists"],
                            r["peak_rss_mb"],
                        ]
                        for r in s3s
                    ],
                )
            )
            parts.append("\n")
        if s3c:
            parts.append(
                _table(
                    ["compaction", "sources", "W", "records", "seconds", "requests", "peak RSS MB"],
                    [
                        [
                            "resumelog",
                            r["n"],
                            r["writers"],
                            r["records"],
                            r["seconds"],
                            ", ".join(f"{k} {v}" for k, v in r["requests"].items()),
                            r["peak_rss_mb"],
                        ]
                        for r in s3c
                    ],
                )
            )
            parts.append("\n")
        if s3n:
            parts.append(
                _table(
                    [
                        "same events",
                        "events",
                        "write reqs",
                        "startup reqs",
                        "startup s",
                        "naive write reqs",
                        "naive startup reqs",
                        "naive startup s",
                        "requests x",
                        "startup x",
                    ],
                    [
                        [
                            r["system"],
                            r["events"],
                            r["write_requests"],
                            r["startup_requests"],
                            r["startup_s"],
                            r["naive_write_requests"],
                            r["naive_startup_requests"],
                            r["naive_startup_s"],
                            _rx(r["requests_ratio"]),
                            _rx(r["startup_ratio"]),
                        ]
                        for r in s3n
                    ],
                )
            )

    bg = _of(rows, "background_compaction")
    if bg:
        parts.append("\n## Compacting during the run, then a crash and the next start (`bench_background.py`)\n\n")
        body = [
            [
                r["mode"],
                r.get("every_s") or "-",
                r["sources"],
                r["records_per_s"],
                r.get("snapshots_written", 0),
                r["open_s"],
                r["unfolded_segments"],
                r["completed"],
            ]
            for r in bg
        ]
        parts.append(
            _table(
                [
                    "compaction during the run",
                    "every s",
                    "sources",
                    "writer records/s",
                    "snapshots written",
                    "next start: open + first lookup s",
                    "segments left to fold",
                    "completed",
                ],
                body,
            )
        )
        parts.append(
            "\n*none*: nothing compacts; *thread*: `ckpt.compact_in_background(every)` in the writer's process; "
            "*sidecar*: `resumelog compact URL --every` in its own process. The writer dies after its last flush "
            "(no close, no final compaction).\n"
        )

    rd = _of(rows, "raydata")
    if rd:
        parts.append("\n## Ray Data (from `bench_ray_data.py`)\n\n")
        for r in rd:
            fields = {k: v for k, v in r.items() if k not in ("bench", "source")}
            parts.append(
                "- "
                + ", ".join(f"{k}={_f(v) if not isinstance(v, (dict, list)) else v}" for k, v in fields.items())
                + "\n"
            )

    cur_rows = [r for r in _of(rows, "curator") if r.get("bench_orig") == "curator_pipeline"]
    if cur_rows:
        parts.append(
            "\n## NeMo Curator 1.4 pipeline, checkpointing on resumelog vs Curator's actor (`bench_curator.py`)\n\n"
        )
        parts.append(
            "| checkpointing | files | docs | Pipeline.run median (min) s | docs/s | overhead vs none |\n|---|---|---|---|---|---|\n"
        )
        for r in cur_rows:
            parts.append(
                f"| {r['system']} | {r['files']} | {r['docs']} | {_f(r['seconds_median'])} ({_f(r['seconds_min'])}) "
                f"| {_f(r['docs_per_s'])} | {r['overhead_vs_none'] * 100:+.1f} % |\n"
            )

    secs = [r for r in rows if r.get("bench") == "section" and r.get("system") != "total"]
    if secs:
        parts.append("\nSection times: " + ", ".join(f"{r['system']} {_f(r['seconds'])} s" for r in secs) + "\n")
    return "".join(parts)
