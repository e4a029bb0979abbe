"""Benchmark: ``kid build`` on the Kent preset (1.9 million people, five years of monthly feeds).

Prints (never asserts) the wall time of each full build, the median, the peak resident memory of
each build process (``resource.getrusage`` in the child, which includes DuckDB's native memory),
the wall time of an idempotent re-run (same inputs: a no-op), the wall time and peak of adding one
month incrementally (version 2026-09 built in full, then 2026-10 added to it, the default
``kid build`` path once a KID exists) beside the full build, and the linkage rate per feed.
Targets: at most 60 s median and 6 GB peak on 2 cores; linkage rate 98-99% per feed.

Each build runs in a fresh subprocess into a fresh KID folder, so runs do not share caches other
than the operating system's page cache. Timings on a shared machine are noisy; say so when
quoting them.

Data: ``--raw DIR`` (raw feeds from ``kid synth --preset kent``), else the Kent preset is
generated once into ``--workdir`` (a few minutes).

Usage::

    .venv/bin/python benchmarks/bench_build.py [--raw DIR] [--runs 3] [--workdir DIR]
        [--skip-incremental] [--only-incremental]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
from kidresearch.linkage import build
started = time.perf_counter()
version = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
full = len(sys.argv) > 5 and sys.argv[5] == "full"
result = build(sys.argv[1], sys.argv[2], key_file=sys.argv[3], version=version, full=full,
               progress=False)
seconds = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
peak_kib = usage.ru_maxrss
print(json.dumps({"seconds": seconds, "peak_gib": peak_kib / 1024**2, "reused": result.reused,
                  "build": result.report.get("build", {}),
                  "cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "version": result.version, "feeds": result.report["feeds"],
                  "tables": result.row_counts}))
"""


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _run_build(raw: Path, out: Path, key: Path, version: str = "", mode: str = "default") -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(raw), str(out), str(key), version, mode],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=None, help="raw feeds folder (kent preset)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-incremental", action="store_true")
    parser.add_argument("--only-incremental", action="store_true")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_build_"))
    workdir.mkdir(parents=True, exist_ok=True)
    raw = args.raw
    if raw is None:
        raw = workdir / "kent" / "raw"
        if not (raw / "MANIFEST.json").is_file():
            from kidresearch.synth import generate

            _say(f"Generating the kent preset into {raw.parent} ...")
            started = time.perf_counter()
            generate("kent", out=raw.parent, progress=False)
            _say(f"  generated in {time.perf_counter() - started:.0f} s")
    from kidresearch.linkage import new_key_file

    key = workdir / "bench.key"
    if not key.exists():
        new_key_file(key)
    size_gib = sum(p.stat().st_size for p in raw.rglob("*.parquet")) / 1024**3
    _say(f"Raw feeds: {raw} ({size_gib:.2f} GiB of Parquet)")

    incremental = None
    if not args.skip_incremental:
        out = workdir / "kid_incremental"
        shutil.rmtree(out, ignore_errors=True)
        base = _run_build(raw, out, key, "2026-09", "full")
        _say(
            f"  base 2026-09 (full): {base['seconds']:.1f} s wall, peak RSS "
            f"{base['peak_gib']:.2f} GiB"
        )
        incremental = _run_build(raw, out, key, "2026-10")
        how = incremental["build"]
        _say(
            f"  add 2026-10 ({how.get('mode')}): {incremental['seconds']:.1f} s wall, "
            f"{incremental['cpu_seconds']:.1f} s CPU, peak RSS {incremental['peak_gib']:.2f} GiB; "
            f"{how.get('files_written')} files written, {how.get('files_reused')} reused"
        )
        shutil.rmtree(out, ignore_errors=True)
    if args.only_incremental:
        return 0
    runs = []
    for i in range(args.runs):
        out = workdir / f"kid_{i}"
        shutil.rmtree(out, ignore_errors=True)
        stats = _run_build(raw, out, key)
        runs.append(stats)
        _say(
            f"  run {i + 1}: {stats['seconds']:.1f} s wall, {stats['cpu_seconds']:.1f} s CPU, "
            f"peak RSS {stats['peak_gib']:.2f} GiB "
            f"(version {stats['version']})"
        )
    noop = _run_build(raw, workdir / "kid_0", key)
    seconds = [r["seconds"] for r in runs]
    peak = max(r["peak_gib"] for r in runs)
    cpu = statistics.median(r["cpu_seconds"] for r in runs)
    _say("")
    _say(
        f"kid build (kent, full): median {statistics.median(seconds):.1f} s over {len(runs)} runs "
        f"(min {min(seconds):.1f}, max {max(seconds):.1f}); target <= 60 s"
    )
    _say(
        f"median CPU time (user + sys, all threads): {cpu:.1f} s, i.e. {cpu / 2:.1f} s of "
        "wall time on 2 otherwise idle cores (a contention-free estimate)"
    )
    _say(f"peak resident memory: {peak:.2f} GiB; target <= 6 GB")
    if incremental is not None:
        _say(
            f"one month added incrementally (2026-09 -> 2026-10): {incremental['seconds']:.1f} s "
            f"wall ({incremental['seconds'] / statistics.median(seconds):.0%} of the full "
            f"build), peak {incremental['peak_gib']:.2f} GiB"
        )
    _say(
        f"idempotent re-run (same inputs, no-op: reused={noop['reused']}): {noop['seconds']:.1f} s"
    )
    total_in = sum(f["rows_in"] for f in runs[0]["feeds"])
    _say(
        f"rows in: {total_in:,}; throughput {total_in / statistics.median(seconds) / 1e6:.2f} M rows/s"
    )
    _say("")
    _say(
        f"{'feed':<26}{'rows_in':>12}{'linked':>12}{'quarantined':>13}{'unlinkable':>12}"
        f"{'linkage':>9}{'corrections':>13}"
    )
    for f in runs[0]["feeds"]:
        _say(
            f"{f['feed']:<26}{f['rows_in']:>12,}{f['rows_linked']:>12,}"
            f"{f['rows_quarantined']:>13,}{f['rows_unlinkable']:>12,}"
            f"{f['linkage_rate']:>9.2%}{f['corrections_applied']:>13,}"
        )
    _say("")
    _say(
        "research tables: " + ", ".join(f"{k} {v:,}" for k, v in sorted(runs[0]["tables"].items()))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
