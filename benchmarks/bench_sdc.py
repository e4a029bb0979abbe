"""Benchmark: secondary suppression on a Kent-scale practice x month x category table.

240 practices in 12 districts x 60 months in 5 years x 4 categories, with margins along every
dimension and the hierarchies practice-within-district and month-within-year (83,490 cells,
57,600 interior). Counts are Poisson with practice-size and category effects so that about 5% of
interior cells fall below the threshold of 10. Prints median wall time, peak memory and what was
suppressed; the target is under 2 s. Also times ACRO-style primary checks via ``crosstab`` on
microdata for comparison of scale.

Run: ``.venv/bin/python benchmarks/bench_sdc.py``
"""

from __future__ import annotations

import resource
import statistics
import time
import tracemalloc

import numpy as np
import pandas as pd

from kidresearch import sdc


def make_table(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    practices = [f"P{i:03d}" for i in range(240)]
    districts = [f"D{i // 20:02d}" for i in range(240)]
    months = [f"{2020 + m // 12}-{m % 12 + 1:02d}" for m in range(60)]
    years = [m[:4] for m in months]
    cats = ["fit", "mild", "moderate", "severe"]
    size = rng.lognormal(0, 0.6, 240)
    cat_rate = np.array([150.0, 90.0, 40.0, 18.0])
    p, m, c = np.meshgrid(np.arange(240), np.arange(60), np.arange(4), indexing="ij")
    mean = size[p] * cat_rate[c] * (1 + 0.1 * np.sin(m / 6))
    n = rng.poisson(mean)
    return pd.DataFrame(
        {
            "district": np.array(districts)[p.ravel()],
            "practice": np.array(practices)[p.ravel()],
            "year": np.array(years)[m.ravel()],
            "month": np.array(months)[m.ravel()],
            "efi_category": np.array(cats)[c.ravel()],
            "n": n.ravel(),
        }
    )


def run_once(table: pd.DataFrame) -> sdc.CheckedTable:
    return sdc.check_table(
        table,
        counts="n",
        keys=["practice", "month", "efi_category"],
        hierarchy={"practice": "district", "month": "year"},
        index=["practice", "month"],
        name="bench",
    )


def compare_methods(table: pd.DataFrame) -> None:
    """Information loss of the hypercube search against the LP audit-and-repair path alone,
    on a 40-practice x 24-month slice (the LP path is too slow for the full table)."""
    from kidresearch.sdc import secondary, tables

    part = table[
        table["practice"].isin(sorted(table["practice"].unique())[:40])
        & table["month"].isin(sorted(table["month"].unique())[:24])
    ]
    original = secondary.protect
    for method in ("hypercube", "lp"):

        def patched(*args, _m=method, **kwargs):
            return original(*args, method=_m, **kwargs)

        tables.protect = patched
        try:
            t0 = time.perf_counter()
            checked = run_once(part)
            elapsed = time.perf_counter() - t0
        finally:
            tables.protect = original
        cells = checked.cells
        hidden = cells.loc[cells["status"] == "secondary", "value"]
        print(
            f"  {method:>9}: {len(hidden):,} secondary cells holding {hidden.sum():,.0f} records, "
            f"{elapsed:.2f} s"
        )


def main() -> None:
    table = make_table()
    run_once(table)  # warm-up (imports, HiGHS load)
    times = []
    cpu = []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        checked = run_once(table)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    tracemalloc.start()
    run_once(table)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    cells = checked.cells
    n_primary = int(cells["status"].str.startswith("primary").sum())
    n_secondary = int(cells["status"].eq("secondary").sum())
    print("secondary suppression benchmark: 240 practices x 60 months x 4 categories")
    print(f"  cells (with margins/subtotals): {len(cells):,}")
    interior = int(table["n"].size)
    small = int((table["n"] < 10).sum())
    print(
        f"  interior cells below the threshold: {small:,} of {interior:,} ({small / interior:.1%})"
    )
    print(f"  primary suppressed: {n_primary:,}   secondary suppressed: {n_secondary:,}")
    print(f"  median wall time of 3 runs: {statistics.median(times):.2f} s (target < 2 s)")
    print(f"  runs: {', '.join(f'{t:.2f}' for t in times)} s")
    print(
        f"  median CPU time of the process: {statistics.median(cpu):.2f} s "
        "(wall time is inflated when the machine is shared)"
    )
    print(
        f"  peak traced memory: {peak / 2**20:.0f} MiB; process max RSS: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    print("information loss on a 40-practice x 24-month slice (same rules):")
    compare_methods(table)


if __name__ == "__main__":
    main()
