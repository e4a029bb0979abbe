"""Benchmark the frailty, risk and variation recipes on the Kent-size synthetic KID.

Prints (never asserts) median wall times and peak memory of

* ``frailty.efi`` at one date over the whole ``kent`` preset (about 1.9 million people; the
  issue's target is under 5 s),
* a 60-month ``frailty.trend`` (target under 30 s),
* ``variation.practice_admissions`` (ACSC, age-sex expected) with the precision and recall of
  the practices flagged high against ``truth.json``'s excess-ACSC practices (target: both at
  least 0.8 at the 99.8% level), and
* ``risk.fit`` with the generator's formula, its coefficients beside the truth.

The kent KID is generated (``kidresearch.synth.generate``) and built
(``kidresearch.linkage.build``) once and cached under ``benchmarks/out/kent`` (gitignored).
The machine is shared, so times are noisy; each timing is the median of ``--repeat`` runs.

Usage::

    .venv/bin/python benchmarks/bench_frailty.py [--repeat 3] [--preset kent] [--kid DIR] [--skip-risk]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
SEED = 20261126
T = TypeVar("T")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def ensure_kid(preset: str, kid_dir: Path | None = None) -> tuple[Path, Path, Path]:
    """Generate and build the preset once; return (kid folder, truth.json, proposal yaml).

    With ``kid_dir`` (an already built KID, e.g. ``/tmp/kent/kid``) nothing is generated; its
    truth is ``kid_dir/../synth/truth.json``.
    """
    from kidresearch.linkage import build, new_key_file
    from kidresearch.synth import generate

    base = OUT / preset
    base.mkdir(parents=True, exist_ok=True)
    synth, kid, key = base / "synth", base / "kid", base / "secrets" / "pseudonymisation.key"
    if kid_dir is not None:
        synth, kid = kid_dir.parent / "synth", kid_dir
        if not (kid / "CURRENT").exists():
            sys.exit(f"--kid {kid}: no CURRENT file; not a built KID folder")
    elif not (synth / "truth.json").exists():
        say(f"generating the {preset} preset into {synth} (once) ...")
        started = time.perf_counter()
        generate(preset, out=synth, seed=SEED, progress=False)
        say(f"  generated in {time.perf_counter() - started:.0f} s")
    if kid_dir is None and not (kid / ".complete").exists():
        say(f"building the research KID into {kid} (once) ...")
        started = time.perf_counter()
        if not key.exists():
            new_key_file(key)
        build(synth / "raw", kid, key_file=key, progress=False)
        (kid / ".complete").write_text("ok")
        say(f"  built in {time.perf_counter() - started:.0f} s")
    proposal = base / "recipes-bench.yaml"
    proposal.write_text(
        "id: recipes-bench\n"
        "title: Recipes benchmark\n"
        "lead_researcher: Benchmark\n"
        "organisation: kidresearch\n"
        "purpose: Time the frailty, risk and variation recipes on a Kent-size KID.\n"
        "approved: 2026-01-01\n"
        "expires: 2099-01-01\n"
        "kid_version: latest\n"
        "tables:\n"
        + "".join(
            f"  {t}: all\n"
            for t in (
                "persons",
                "practices",
                "lsoas",
                "gp_events",
                "prescriptions",
                "inpatient_spells",
                "ae_attendances",
                "outpatient_appointments",
                "social_care_packages",
                "programme_enrolments",
            )
        )
        + "study_period:\n  start: 1900-01-01\n  end: 2026-12-31\n"
    )
    return kid, synth / "truth.json", proposal


class ParquetSession:
    """Ibis tables straight over a built KID version's Parquet files (no access layer).

    Used beside ``kidresearch.connect`` to separate the recipes' own cost from the access
    layer's (its views join every event row to the population to swap in the proposal's
    BIGINT pseudonym).
    """

    def __init__(self, kid_dir: Path) -> None:
        import ibis

        version = (kid_dir / "CURRENT").read_text().strip()
        self._root = kid_dir / "versions" / version / "tables"
        self._con = ibis.duckdb.connect()

    def table(self, name: str) -> Any:
        folder = self._root / name
        pattern = str(folder / "**" / "*.parquet")
        return self._con.read_parquet(pattern, table_name=name, hive_partitioning=False)


class PeakRSS:
    """Peak resident memory of this process (incl. DuckDB's native memory) while running."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def __enter__(self) -> PeakRSS:
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(label: str, fn: Callable[[], T], repeat: int) -> T:
    """Run ``fn`` ``repeat`` times; print median wall and CPU time, load and peak RSS.

    CPU seconds (this process, all threads) are printed beside wall time because the machine
    is shared: on a busy machine wall time mostly measures the other jobs.
    """
    times, cpus, peaks, result = [], [], [], None
    load = psutil.getloadavg()[0]
    for _ in range(repeat):
        with PeakRSS() as mem:
            cpu = _cpu_seconds()
            started = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - started)
            cpus.append(_cpu_seconds() - cpu)
        peaks.append(mem.peak)
    say(
        f"{label}: median {statistics.median(times):.2f} s over {repeat} runs "
        f"(min {min(times):.2f}, max {max(times):.2f}); CPU median "
        f"{statistics.median(cpus):.2f} s; load {load:.1f}; peak RSS {max(peaks) / 2**30:.2f} GiB"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="kent")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--kid", type=Path, default=None, help="an already built KID folder (default: cached build)"
    )
    parser.add_argument("--skip-risk", action="store_true")
    parser.add_argument("--full", action="store_true", help="also the trend through connect()")
    args = parser.parse_args()

    import kidresearch
    from kidresearch import frailty, risk, variation

    kid_dir, truth_path, proposal = ensure_kid(args.preset, args.kid)
    truth = json.loads(truth_path.read_text())
    connect_times = []
    for _ in range(max(args.repeat, 2)):
        started = time.perf_counter()
        kid = kidresearch.connect(proposal, data=kid_dir, user="benchmark")
        connect_times.append(time.perf_counter() - started)
        kid.close()
    say(
        f"kidresearch.connect: first {connect_times[0]:.2f} s (builds the session cache if "
        f"absent), then median {statistics.median(connect_times[1:]):.2f} s (cached)"
    )
    kid = kidresearch.connect(proposal, data=kid_dir, user="benchmark")
    persons = kid.table("persons")
    say(f"{args.preset}: {persons.count().to_pandas():,} persons in the research KID")
    say(f"machine load average (1, 5, 15 min): {psutil.getloadavg()}, cores: {psutil.cpu_count()}")
    period = truth["period"]
    at = "2024-11-01"
    bare = ParquetSession(kid_dir)
    timed(
        f"frailty.efi at {at}, directly on the Parquet files (no access layer)",
        lambda: frailty.efi(bare, at),
        args.repeat,
    )
    result = timed(
        f"frailty.efi at {at} through connect()", lambda: frailty.efi(kid, at), args.repeat
    )
    say(f"  people alive and registered: {len(result.frame):,}")
    shares = result.shares()
    truth_row = next(r for r in truth["efi"]["shares_by_date"] if r["date"] == at)
    for row in shares.itertuples():
        say(
            f"  {row.category:9s} share 65-95 {row.share:.4f}  truth {truth_row[row.category]:.4f}"
            f"  published {row.published_share:.2f}"
        )
    del result

    var = timed(
        "variation.practice_admissions ACSC 2022-11-01..2026-08-31 (age-sex), connect()",
        lambda: variation.practice_admissions(kid, "2022-11-01", "2026-08-31"),
        args.repeat,
    )
    for level in ("95", "99.8"):
        check = var.against_truth(truth, level=level)
        say(
            f"  flagged high at {level}%: {check['flagged']} of {len(var.frame)} practices; "
            f"truth {check['true']}; precision {check['precision']:.3f}, "
            f"recall {check['recall']:.3f}"
        )

    start, end = period["start"], period["end"]
    trend = timed(
        f"frailty.trend monthly {start} to {end} (age-sex standardised), Parquet",
        lambda: frailty.trend(bare, start, end),
        args.repeat,
    )
    say(f"  periods: {trend.frame.period.nunique()}")
    if args.full:
        timed(
            f"frailty.trend monthly {start} to {end} through connect()",
            lambda: frailty.trend(kid, start, end),
            args.repeat,
        )

    if not args.skip_risk:
        model = timed(
            "risk.fit at 2024-10-31 (fit 2023-10-31, validate 2024-10-31), generator formula",
            lambda: risk.fit(kid, "2024-10-31", formula=risk.GENERATOR_FORMULA),
            1,
        )
        say(model.against_truth(truth).round(3).to_string(index=False))
        perf = model.performance().set_index("metric")["value"]
        say(
            f"  validation AUC {perf['auc']:.3f}, Brier {perf['brier']:.4f}, calibration slope "
            f"{perf['calibration_slope']:.3f}, PPV top 1% {perf['top_1pct_ppv']:.3f}"
        )
    kid.close()
    say(
        f"process peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    )


if __name__ == "__main__":
    main()
