"""Benchmark the synthetic KID generator at Kent scale (prints figures; no timed asserts).

Usage::

    .venv/bin/python benchmarks/bench_synth.py                 # kent preset, 3 runs
    .venv/bin/python benchmarks/bench_synth.py --runs 1 --big  # plus one 10M-people run
    .venv/bin/python benchmarks/bench_synth.py --preset demo --runs 1 --check

Each run happens in a fresh subprocess so that its peak memory is its own: ``ru_maxrss`` of the
parent and of its largest worker process (``resource.getrusage``), and the whole process tree's
peak sampled every 0.5 s as the sum of PSS (psutil; shared pages counted once). ``--big`` adds
one run with 10M people written to ``--big-out`` (deleted afterwards) and prints its peaks next
to the preset's with their ratio: memory must not grow with population size. ``--check`` also recomputes,
from the raw files with DuckDB, the ACSC funnel (share of emergency spells with an ACSC
diagnosis per practice, 99.8% binomial limits) and reports precision and recall against the
practices listed in ``truth.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import json, resource, sys, threading, time
    from kidresearch.synth import generate, load_scenario
    source, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    people = int(sys.argv[4])
    scn = load_scenario(source)
    if people:
        scn = scn.model_copy(update={"population": scn.population.model_copy(
            update={"people": people, "practices": max(scn.population.practices, people // 8000)})})
    # Whole-tree memory, sampled: sum of PSS (shared pages counted once) over parent + workers.
    peak = {"tree_pss_mb": 0.0, "samples": 0}
    done = threading.Event()
    def sample():
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        while not done.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except (psutil.Error, AttributeError):
                    pass
            peak["tree_pss_mb"] = max(peak["tree_pss_mb"], total / 2**20)
            peak["samples"] += 1
            done.wait(0.5)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    result = generate(scn, out=out, workers=workers)
    wall = time.perf_counter() - t0
    done.set()
    thread.join()
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall_s": wall, "people": scn.population.people,
                      "rows": sum(result.row_counts.values()),
                      "rows_by_feed": result.row_counts, "parent_rss_mb": me.ru_maxrss / 1024,
                      "worker_rss_mb": kids.ru_maxrss / 1024,
                      "tree_pss_mb": peak["tree_pss_mb"], "samples": peak["samples"],
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


def describe(res: dict) -> str:
    return (
        f"{res['wall_s']:.1f} s, {res['rows']:,} rows, peak RSS parent "
        f"{res['parent_rss_mb']:.0f} MB, largest worker {res['worker_rss_mb']:.0f} MB, "
        f"whole tree (sum of PSS) {res['tree_pss_mb']:.0f} MB; CPU parent "
        f"{res['parent_cpu_s']:.0f} s + workers {res['worker_cpu_s']:.0f} s"
    )


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


def _print_preset(preset: str, results: list[dict], base: dict) -> None:
    print(
        f"\n{preset} ({results[0]['people']:,} people): median wall time "
        f"{base['median_wall_s']:.1f} s over {base['runs']} run(s); peak RSS parent "
        f"{base['parent_rss_mb']:.0f} MB, largest worker {base['worker_rss_mb']:.0f} MB, "
        f"whole tree {base['tree_pss_mb']:.0f} MB; rows written {results[0]['rows']:,}"
    )
    for feed, n in results[0]["rows_by_feed"].items():
        print(f"  {feed:<26} {n:>12,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="kent")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--big", action="store_true", help="also one run with 10M people")
    parser.add_argument("--big-people", type=int, default=10_000_000)
    parser.add_argument(
        "--big-out", default="/tmp/synth10m", help="folder of the big run (deleted afterwards)"
    )
    parser.add_argument("--check", action="store_true", help="ACSC funnel precision/recall")
    parser.add_argument(
        "--results",
        default=str(Path(__file__).parent / "out" / "bench_synth.json"),
        help="preset figures are saved here; --runs 0 --big compares with the saved ones",
    )
    args = parser.parse_args()
    saved = Path(args.results)
    base: dict = {}

    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        results = []
        for i in range(args.runs):
            res = run_once(args.preset, Path(tmp) / f"run{i}", args.workers)
            results.append(res)
            print(f"run {i + 1}/{args.runs}: {describe(res)}")
        if not results:
            base = json.loads(saved.read_text())
            print(f"{args.preset} figures from {saved}: {base}")
        else:
            walls = [r["wall_s"] for r in results]
            base = {
                key: max(r[key] for r in results)
                for key in ("parent_rss_mb", "worker_rss_mb", "tree_pss_mb")
            } | {"median_wall_s": statistics.median(walls), "runs": len(walls)}
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(base, indent=1) + "\n")
            _print_preset(args.preset, results, base)
            if args.check:
                print("\nACSC funnel (99.8% limits on the ACSC share of emergency spells):")
                print("  " + json.dumps(acsc_check(Path(tmp) / "run0")))
    if args.big:
        big_out = Path(args.big_out)
        try:
            big = run_once(args.preset, big_out, args.workers, people=args.big_people)
        finally:
            shutil.rmtree(big_out, ignore_errors=True)
        print(f"\n{big['people']:,} people: {describe(big)}")
        print(f"\n{'peak memory (MB)':<34}{args.preset:>12}{'big':>12}{'big/' + args.preset:>12}")
        for key, label in (
            ("parent_rss_mb", "parent RSS"),
            ("worker_rss_mb", "largest worker RSS"),
            ("tree_pss_mb", "whole tree (sum of PSS)"),
        ):
            print(f"  {label:<32}{base[key]:>12.0f}{big[key]:>12.0f}{big[key] / base[key]:>12.2f}")
        one = max(base["parent_rss_mb"], base["worker_rss_mb"])
        one_big = max(big["parent_rss_mb"], big["worker_rss_mb"])
        print(f"  {'max over processes':<32}{one:>12.0f}{one_big:>12.0f}{one_big / one:>12.2f}")


if __name__ == "__main__":
    main()
