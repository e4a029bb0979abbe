"""Benchmark: `kid demo` end to end (synthetic KID -> build -> report batch).

Runs ``kid demo`` in a subprocess into a fresh folder, timestamps each phase from the lines the
demo prints, and prints the median wall time over ``--repeat`` runs, the phase times of the
median run, the peak resident memory of the largest child process (``getrusage``), and the
report batch's per-notebook status from the run manifests. Target (issue 9): under 5 minutes for
the ``demo`` preset on the 2-core machine. Figures are noisy on a shared machine: say so when
quoting them.

Usage::

    .venv/bin/python benchmarks/bench_demo.py                 # demo preset, one run
    .venv/bin/python benchmarks/bench_demo.py --repeat 3
    .venv/bin/python benchmarks/bench_demo.py --preset kent   # the full-scale batch
    .venv/bin/python benchmarks/bench_demo.py --kid KID_DIR    # the report batch alone on a
                                                               # built KID (e.g. a kent build)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KID = Path(sys.executable).with_name("kid")
TARGET_SECONDS = {"demo": 300}


def one_run(preset: str, seed: int, out: Path) -> dict:
    """Run `kid demo` once; return wall time, phase times, exit code and the manifests' rows."""
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    proc = subprocess.Popen(
        [str(KID), "demo", "--out", str(out), "--preset", preset, "--seed", str(seed), "-q"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("[") and "]" in line[:4]:
            marks.append((line.strip(), time.perf_counter() - started))
    code = proc.wait()
    wall = time.perf_counter() - started
    phases = {}
    for (label, t0), (_, t1) in zip(marks, [*marks[1:], ("end", wall)], strict=True):
        phases[label.split(" ...")[0]] = t1 - t0
    notebooks = _notebook_rows(out)
    return {"wall": wall, "phases": phases, "code": code, "notebooks": notebooks}


def _notebook_rows(out: Path) -> list[tuple]:
    """(proposal, notebook, status, seconds, error) of every run manifest under out/reports."""
    rows = []
    for manifest in sorted((out / "reports").glob("*/*/manifest.json")):
        m = json.loads(manifest.read_text())
        for nb in m["notebooks"]:
            rows.append(
                (m["proposal"]["id"], nb["notebook"], nb["status"], nb["seconds"], nb["error"])
            )
    return rows


def batch_run(kid: Path, out: Path) -> dict:
    """Time the report batch alone (`reports.run_all`) on an already built KID."""
    code_text = (
        "import sys; from kidresearch.reports import run_all; "
        f"sys.exit(run_all(data={str(kid)!r}, out={str(out / 'reports')!r}))"
    )
    started = time.perf_counter()
    code = subprocess.run(
        [sys.executable, "-c", code_text], cwd=ROOT, stderr=subprocess.DEVNULL
    ).returncode
    wall = time.perf_counter() - started
    notebooks = _notebook_rows(out)
    return {
        "wall": wall,
        "phases": {"report batch (run_all)": wall},
        "code": code,
        "notebooks": notebooks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="keep the last run's output here")
    parser.add_argument(
        "--kid", type=Path, default=None, help="time only the report batch on this KID"
    )
    args = parser.parse_args()

    runs = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
            out = Path(tmp) / "demo_data"
            if args.kid is not None:
                result = batch_run(args.kid.resolve(), out)
            else:
                result = one_run(args.preset, args.seed, out)
            runs.append(result)
            print(f"run {i + 1}/{args.repeat}: {result['wall']:.1f} s (exit code {result['code']})")
            if args.keep is not None and i == args.repeat - 1:
                shutil.rmtree(args.keep, ignore_errors=True)
                shutil.copytree(out, args.keep)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_mib = usage.ru_maxrss / 1024
    cpu = usage.ru_utime + usage.ru_stime  # every finished descendant (kernels included)
    walls = [r["wall"] for r in runs]
    median = statistics.median(walls)
    median_run = min(runs, key=lambda r: abs(r["wall"] - median))

    what = f"report batch on {args.kid}" if args.kid else f"kid demo --preset {args.preset}"
    print(f"\n{what}: {args.repeat} run(s) on {os.cpu_count()} CPU(s)")
    print(f"  median wall time   {median:8.1f} s   (min {min(walls):.1f}, max {max(walls):.1f})")
    target = None if args.kid else TARGET_SECONDS.get(args.preset)
    if target:
        print(f"  target             {target:8.1f} s   ratio {median / target:.2f}")
    print(f"  peak RSS (largest child process) {peak_mib:,.0f} MiB")
    print(f"  CPU time, all processes, per run {cpu / len(runs):8.1f} s (load-independent)")
    print(
        f"  load average at the end          {os.getloadavg()[0]:.1f} (a busy machine inflates wall time)"
    )
    print("  phases of the median run:")
    for label, seconds in median_run["phases"].items():
        print(f"    {label:<60} {seconds:8.1f} s")
    print("  report batch:")
    for proposal, notebook, status, seconds, error in median_run["notebooks"]:
        note = f"  {error[:70]}" if error else ""
        print(f"    {proposal:<24} {notebook:<28} {status:<6} {seconds:6.1f} s{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
