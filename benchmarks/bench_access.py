"""Benchmark: emergency admissions by practice by month over a Kent-scale KID, DuckDB vs Spark.

Runs the same Ibis expression through ``kidresearch.connect`` (restricted views: population
semi-join, study-period filter, per-proposal re-keying of person_id on both tables) on DuckDB and
on a local Spark session, and prints the median wall time of several runs, peak memory and the
Spark/DuckDB ratio. The target is under 1 s on DuckDB.

Data: ``--kid DIR`` (a built KID, e.g. from ``kid synth --preset kent`` + ``kid build``), else a
synthetic KID of Kent size (1.9 million persons, 240 practices, about 2 million inpatient spells
over five years) written in the published layout into ``--workdir``.

Usage::

    .venv/bin/python benchmarks/bench_access.py [--kid DIR] [--runs 5] [--no-spark]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kidresearch.access import KID, Proposal, connect
from kidresearch.schema import (
    ADMISSION_METHODS_ELECTIVE,
    ADMISSION_METHODS_EMERGENCY,
    RESEARCH_TABLES,
)

PEOPLE = 1_900_000
PRACTICES = 240
SPELLS = 2_000_000
FIRST, LAST = date(2021, 11, 1), date(2026, 10, 31)


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def write_kent_sized_kid(root: Path, seed: int = 1) -> Path:
    """Persons, practices, lsoas and inpatient_spells of Kent size, in the published layout."""
    rng = np.random.default_rng(seed)
    tables = root / "versions" / "2026-10" / "tables"
    practice_codes = np.array([f"G8{i:04d}" for i in range(PRACTICES)])
    lsoa_codes = np.array([f"E01{i:06d}" for i in range(1270)])
    # KID person ids are 63-bit integers (truncated HMAC-SHA256); spread over the range.
    person_id = rng.integers(0, 2**63 - 1, PEOPLE, dtype=np.int64)
    while len(np.unique(person_id)) < PEOPLE:
        person_id = rng.integers(0, 2**63 - 1, PEOPLE, dtype=np.int64)
    persons = pd.DataFrame(
        {
            "person_id": person_id,
            "household_id": (1 << 40) + rng.integers(0, 800_000, PEOPLE),
            "sex": rng.choice(["F", "M"], PEOPLE),
            "birth_year": rng.integers(1920, 2026, PEOPLE).astype("int16"),
            "birth_month": rng.integers(1, 13, PEOPLE).astype("int8"),
            "practice_code": practice_codes[rng.integers(0, PRACTICES, PEOPLE)],
            "lsoa_code": lsoa_codes[rng.integers(0, len(lsoa_codes), PEOPLE)],
            "registration_start": date(2015, 1, 1),
            "registration_end": None,
            "date_of_death": None,
            "death_cause_icd10": None,
        }
    )
    folder = tables / "persons"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(persons, schema=RESEARCH_TABLES["persons"].arrow_schema()),
        folder / "part-0.parquet",
    )
    districts = ["Ashford", "Canterbury", "Dartford", "Dover"]
    for name, frame in {
        "practices": pd.DataFrame(
            {
                "practice_code": practice_codes,
                "practice_name": [f"Practice {i}" for i in range(PRACTICES)],
                "district": [districts[i % 4] for i in range(PRACTICES)],
                "lsoa_code": lsoa_codes[:PRACTICES],
                "latitude": 51.2,
                "longitude": 0.9,
            }
        ),
        "lsoas": pd.DataFrame(
            {
                "lsoa_code": lsoa_codes,
                "district": [districts[i % 4] for i in range(len(lsoa_codes))],
                "imd_score": 20.0,
                "imd_decile": np.int8(5),
                "imd_quintile": np.int8(3),
                "latitude": 51.2,
                "longitude": 0.9,
            }
        ),
    }.items():
        (tables / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(frame, schema=RESEARCH_TABLES[name].arrow_schema()),
            tables / name / "part-0.parquet",
        )
    days = (LAST - FIRST).days
    admission = pd.Timestamp(FIRST) + pd.to_timedelta(rng.integers(0, days, SPELLS), "D")
    methods = np.array(ADMISSION_METHODS_EMERGENCY[:3] + ADMISSION_METHODS_ELECTIVE[:2])
    method = methods[rng.integers(0, len(methods), SPELLS)]
    los = rng.integers(0, 20, SPELLS).astype("int32")
    spells = pd.DataFrame(
        {
            "person_id": person_id[rng.integers(0, PEOPLE, SPELLS)],
            "provider_code": "RVV",
            "admission_date": admission.date,
            "discharge_date": (admission + pd.to_timedelta(los, "D")).date,
            "admission_method": method,
            "primary_diagnosis_icd10": "J18",
            "los_days": los,
            "is_emergency": np.isin(method, ADMISSION_METHODS_EMERGENCY),
            "is_elective": np.isin(method, ADMISSION_METHODS_ELECTIVE),
            "extract_month": admission.strftime("%Y-%m"),
        }
    )
    schema = RESEARCH_TABLES["inpatient_spells"].arrow_schema()
    years = admission.year
    for year in np.unique(years):
        part = tables / "inpatient_spells" / f"year={year}"
        part.mkdir(parents=True, exist_ok=True)
        chunk = spells[years == year].reset_index(drop=True)
        pq.write_table(pa.Table.from_pandas(chunk, schema=schema), part / "part-0.parquet")
    (root / "CURRENT").write_text("2026-10\n")
    return root


def _children_rss_mb() -> float:
    """Resident memory of child processes (the Spark JVM), in MB; NaN without psutil."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return float("nan")
    children = psutil.Process().children(recursive=True)
    return sum(c.memory_info().rss for c in children) / 2**20


def proposal() -> Proposal:
    return Proposal.model_validate(
        {
            "id": "bench-practice-variation",
            "title": "Benchmark",
            "lead_researcher": "Bench",
            "organisation": "kidresearch",
            "purpose": "Benchmark emergency admissions by practice by month.",
            "approved": (date.today() - timedelta(days=1)).isoformat(),
            "expires": (date.today() + timedelta(days=1)).isoformat(),
            "tables": {"persons": "all", "inpatient_spells": "all", "practices": "all"},
            "population": {"registered_during_study_period": True},
            "study_period": {"start": "2022-04-01", "end": "2026-09-30"},
        }
    )


def emergency_by_practice_month(kid: KID) -> pd.DataFrame:
    spells = kid.table("inpatient_spells")
    persons = kid.table("persons")
    emergency = spells.filter(spells.is_emergency).join(persons, "person_id")
    return (
        emergency.group_by(
            practice_code=emergency.practice_code,
            month=emergency.admission_date.truncate("M"),
        )
        .agg(emergency_admissions=emergency.count())
        .to_pandas()
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_runs(kid: KID, runs: int) -> tuple[list[float], list[float], pd.DataFrame]:
    """Wall and CPU seconds (this process; the Spark JVM's CPU is not counted) of each run."""
    result = emergency_by_practice_month(kid)  # warm-up (file metadata, JIT, Spark planning)
    times, cpu = [], []
    for _ in range(runs):
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        result = emergency_by_practice_month(kid)
        times.append(time.perf_counter() - started)
        cpu.append(_cpu_seconds() - cpu_started)
    return times, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kid", type=Path, default=None, help="built KID folder")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the KID")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spark-runs", type=int, default=3)
    parser.add_argument("--no-spark", action="store_true")
    args = parser.parse_args()

    if args.kid is None:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_access_"))
        started = time.perf_counter()
        kid_dir = write_kent_sized_kid(workdir)
        _say(
            f"Wrote a Kent-sized KID ({PEOPLE:,} persons, {SPELLS:,} inpatient spells) to "
            f"{kid_dir} in {time.perf_counter() - started:.1f} s"
        )
    else:
        kid_dir = args.kid

    prop = proposal()
    _say(f"Load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    duck = connect(prop, kid_dir, user="benchmark")
    _say(
        f"DuckDB connect (re-keys the population once): {time.perf_counter() - started:.2f} s "
        f"wall, {_cpu_seconds() - cpu_started:.2f} s CPU"
    )
    duck_times, duck_cpu, duck_result = time_runs(duck, args.runs)
    duck.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    duck_median = statistics.median(duck_times)
    _say(
        f"DuckDB: emergency admissions by practice by month: median {duck_median:.3f} s over "
        f"{args.runs} runs (min {min(duck_times):.3f}, max {max(duck_times):.3f}), median CPU "
        f"{statistics.median(duck_cpu):.3f} s; "
        f"{len(duck_result):,} rows, {int(duck_result.emergency_admissions.sum()):,} admissions; "
        f"{'UNDER' if duck_median < 1 else 'OVER'} the 1 s target; peak RSS (python) {rss_mb:.0f} MB"
    )
    if args.no_spark:
        return
    from kidresearch.access import spark_session

    started = time.perf_counter()
    spark = spark_session()
    _say(f"Spark session start: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    sk = connect(prop, kid_dir, backend="spark", spark=spark, user="benchmark")
    _say(f"Spark connect: {time.perf_counter() - started:.2f} s")
    spark_times, _, spark_result = time_runs(sk, args.spark_runs)
    sk.close()
    spark_median = statistics.median(spark_times)
    key = ["practice_code", "month"]
    same = (
        duck_result.sort_values(key)
        .reset_index(drop=True)
        .astype({"emergency_admissions": "int64"})
        .assign(month=lambda f: pd.to_datetime(f.month))
        .equals(
            spark_result.sort_values(key)
            .reset_index(drop=True)
            .astype({"emergency_admissions": "int64"})
            .assign(month=lambda f: pd.to_datetime(f.month))
        )
    )
    jvm_mb = _children_rss_mb()
    _say(
        f"Spark local[2]: median {spark_median:.3f} s over {args.spark_runs} runs "
        f"(min {min(spark_times):.3f}, max {max(spark_times):.3f}); ratio Spark/DuckDB "
        f"{spark_median / duck_median:.1f}x; identical results: {same}; "
        f"RSS of the JVM now {jvm_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
