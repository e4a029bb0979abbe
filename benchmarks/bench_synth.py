"""Benchmark the synthetic KID generator at Kent scale (prints figures; no timed asserts).

Usage::

    .venv/bin/python benchmarks/bench_synth.py                 # kent preset, 3 runs
    .venv/bin/python benchmarks/bench_synth.py --runs 1 --big  # plus one 10M-people run
    .venv/bin/python benchmarks/bench_synth.py --preset demo --runs 1 --check

Each run happens in a fresh subprocess so that its peak memory (``ru_maxrss`` of the parent and
of its worker processes, from ``resource.getrusage``) is its own. ``--check`` also recomputes,
from the raw files with DuckDB, the ACSC funnel (share of emergency spells with an ACSC
diagnosis per practice, 99.8% binomial limits) and reports precision and recall against the
practices listed in ``truth.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from kidresearch.synth import generate, load_scenario
    source, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    people = int(sys.argv[4])
    scn = load_scenario(source)
    if people:
        scn = scn.model_copy(update={"population": scn.population.model_copy(
            update={"people": people, "practices": max(scn.population.practices, people // 8000)})})
    t0 = time.perf_counter()
    result = generate(scn, out=out, workers=workers)
    wall = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall_s": wall, "rows": sum(result.row_counts.values()),
                      "rows_by_feed": result.row_counts, "parent_rss_mb": me.ru_maxrss / 1024,
                      "worker_rss_mb": kids.ru_maxrss / 1024,
                      "parent_cpu_s": me.ru_utime + me.ru_stime,
                      "worker_cpu_s": kids.ru_utime + kids.ru_stime}))
    """
)


def run_once(source: str, out: Path, workers: int, people: int = 0) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, source, str(out), str(workers), str(people)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def acsc_check(out: Path) -> dict:
    import duckdb

    from kidresearch.data import load

    truth = json.loads((out / "truth.json").read_text())
    flagged = set(truth["acsc"]["practices"])
    prefixes = load("acsc_icd10").icd10_code.tolist()
    raw = out / "raw"
    like = " OR ".join(f"primary_diagnosis_icd10 LIKE '{p}%'" for p in prefixes)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(
        f"""
        CREATE TEMP TABLE reg AS
        SELECT regexp_replace(nhs_number, '[ -]', '', 'g') AS nhs, practice_code,
               registration_start, coalesce(registration_end, DATE '2099-01-01') AS reg_end
        FROM read_parquet('{raw}/registrations/*.parquet')
        QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY extract_month DESC) = 1;
        CREATE TEMP TABLE spells AS
        SELECT regexp_replace(nhs_number, '[ -]', '', 'g') AS nhs, admission_date,
               ({like}) AS acsc
        FROM read_parquet('{raw}/inpatient_spells/*.parquet')
        WHERE admission_method NOT IN ('11', '12', '13')
          AND discharge_date >= admission_date
        QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY extract_month DESC) = 1;
        """
    )
    rows = con.execute(
        """
        SELECT r.practice_code, count(*) AS n, sum(s.acsc::INT) AS k
        FROM spells s JOIN reg r ON s.nhs = r.nhs
          AND s.admission_date BETWEEN r.registration_start AND r.reg_end
        GROUP BY 1
        """
    ).fetchall()
    total_n = sum(r[1] for r in rows)
    p0 = sum(r[2] for r in rows) / total_n
    flagged_found = set()
    for practice, n, k in rows:
        upper = p0 + 3.09 * (p0 * (1 - p0) / n) ** 0.5
        if k / n > upper:
            flagged_found.add(practice)
    tp = len(flagged_found & flagged)
    # Second measure: ACSC admissions per registered population, indirectly standardised for
    # age band and sex (population registered on the mid-period date), 99.8% Poisson limits.
    strata = con.execute(
        """
        WITH people AS (
            SELECT r.nhs, r.practice_code,
                   least(floor(date_diff('year', d.date_of_birth, DATE '2024-05-01') / 10), 9)
                       AS band, d.sex
            FROM reg r JOIN (
                SELECT regexp_replace(nhs_number, '[ -]', '', 'g') AS nhs,
                       any_value(date_of_birth) AS date_of_birth, any_value(sex) AS sex
                FROM read_parquet('{raw}/registrations/*.parquet') GROUP BY 1
            ) d ON r.nhs = d.nhs
            WHERE DATE '2024-05-01' BETWEEN r.registration_start AND r.reg_end
        ), obs AS (
            SELECT p.practice_code, p.band, p.sex, count(*) AS people,
                   coalesce(sum(a.k), 0) AS acsc
            FROM people p LEFT JOIN (
                SELECT nhs, sum(acsc::INT) AS k FROM spells GROUP BY 1
            ) a ON p.nhs = a.nhs
            GROUP BY ALL
        ), rates AS (
            SELECT band, sex, sum(acsc) / sum(people) AS rate FROM obs GROUP BY ALL
        )
        SELECT o.practice_code, sum(o.acsc) AS observed, sum(o.people * r.rate) AS expected
        FROM obs o JOIN rates r USING (band, sex) GROUP BY 1
        """.replace("{raw}", str(raw))
    ).fetchall()
    isr_found = {p for p, o, e in strata if o > e + 3.09 * e**0.5}
    tp_isr = len(isr_found & flagged)
    return {
        "practices": len(rows),
        "true_acsc_practices": len(flagged),
        "share_funnel": {
            "flagged": len(flagged_found),
            "precision": tp / len(flagged_found) if flagged_found else float("nan"),
            "recall": tp / len(flagged) if flagged else float("nan"),
        },
        "age_sex_isr_funnel": {
            "flagged": len(isr_found),
            "precision": tp_isr / len(isr_found) if isr_found else float("nan"),
            "recall": tp_isr / len(flagged) if flagged else float("nan"),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="kent")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--big", action="store_true", help="also one run with 10M people")
    parser.add_argument("--check", action="store_true", help="ACSC funnel precision/recall")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        results = []
        for i in range(args.runs):
            res = run_once(args.preset, Path(tmp) / f"run{i}", args.workers)
            results.append(res)
            print(
                f"run {i + 1}/{args.runs}: {res['wall_s']:.1f} s, {res['rows']:,} rows, "
                f"parent peak RSS {res['parent_rss_mb']:.0f} MB, "
                f"worker peak RSS {res['worker_rss_mb']:.0f} MB, CPU parent "
                f"{res['parent_cpu_s']:.0f} s + workers {res['worker_cpu_s']:.0f} s"
            )
        walls = [r["wall_s"] for r in results]
        peak = max(r["parent_rss_mb"] + args.workers * r["worker_rss_mb"] for r in results)
        print(
            f"\n{args.preset}: median wall time {statistics.median(walls):.1f} s over "
            f"{len(walls)} run(s); peak RSS (parent + {args.workers} workers, upper bound) "
            f"{peak:.0f} MB; rows written {results[0]['rows']:,}"
        )
        for feed, n in results[0]["rows_by_feed"].items():
            print(f"  {feed:<26} {n:>12,}")
        if args.check:
            print("\nACSC funnel (99.8% limits on the ACSC share of emergency spells):")
            print("  " + json.dumps(acsc_check(Path(tmp) / "run0")))
        if args.big:
            res = run_once(args.preset, Path(tmp) / "big", args.workers, people=10_000_000)
            print(
                f"\n10M people: {res['wall_s']:.1f} s, {res['rows']:,} rows, parent peak RSS "
                f"{res['parent_rss_mb']:.0f} MB, worker peak RSS {res['worker_rss_mb']:.0f} MB "
                "(compare with the kent figures: memory is bounded by the chunk size)"
            )


if __name__ == "__main__":
    main()
