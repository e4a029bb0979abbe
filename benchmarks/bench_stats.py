"""Benchmark: kidresearch.stats at Kent scale.

Workloads (synthetic, seeded):

* ``dsr``: age-sex standardised rates for 240 practices x 60 months x 2 sexes (19 ESP bands
  each: 547,200 rows, 28,800 DSRs), by age-band label against the ESP 2013.
* ``isr``: indirectly standardised ratios for the same frame (one ratio per practice-month).
* ``proportion`` / ``rate``: 1.9 million rows (one per person-sized unit), row-wise Wilson and
  exact/Byar's intervals; Wilson is compared with statsmodels' ``proportion_confint`` as a peer.
* ``funnel``: limits table and significance labels for 240 practices (ratio funnel) and for
  28,800 practice-months.

Prints the median wall time of ``--runs`` runs, peak traced memory (tracemalloc) and the
process's peak RSS. Timed on a shared 2-core machine: figures are noisy.

Run: ``.venv/bin/python benchmarks/bench_stats.py [--runs 5]``
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from kidresearch import stats

PRACTICES = 240
MONTHS = 60
PEOPLE = 1_900_000


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _measure(label: str, func: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    func()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    median = statistics.median(times)
    _say(f"{label:<58} median {median:8.3f} s   peak traced {peak / 2**20:8.1f} MiB")
    return median


def practice_frame(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    esp = stats.european_standard_population()
    bands = esp["age_band"].to_numpy()
    n_rows = PRACTICES * MONTHS * 2 * len(bands)
    practice = np.repeat(np.arange(PRACTICES), MONTHS * 2 * len(bands))
    month = np.tile(np.repeat(np.arange(MONTHS), 2 * len(bands)), PRACTICES)
    sex = np.tile(np.repeat(np.array(["F", "M"]), len(bands)), PRACTICES * MONTHS)
    band = np.tile(bands, PRACTICES * MONTHS * 2)
    size = rng.gamma(4, 2000, PRACTICES)[practice] / 19 / 2
    pop = np.maximum(1, rng.poisson(size)).astype(float)
    age_rate = np.geomspace(0.002, 0.08, len(bands))
    band_idx = np.tile(np.arange(len(bands)), PRACTICES * MONTHS * 2)
    events = rng.poisson(pop * age_rate[band_idx] / 12)
    ref = pd.DataFrame({"band": bands, "x_ref": age_rate * 1e5 / 12, "n_ref": 1e5})
    frame = pd.DataFrame(
        {
            "practice": practice,
            "month": month,
            "sex": sex,
            "band": band,
            "x": events,
            "n": pop,
        }
    )
    assert len(frame) == n_rows
    return frame.merge(ref, on="band", how="left")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = args.runs

    frame = practice_frame()
    _say(f"practice x month x sex x band frame: {len(frame):,} rows")
    by = ["practice", "month", "sex"]
    _measure(
        "dsr: 28,800 DSRs (ESP 2013 by band label)",
        lambda: stats.dsr(frame, "x", "n", by=by, age_band="band"),
        runs,
    )
    _measure(
        "dsr: same, 95% and 99.8% limits",
        lambda: stats.dsr(frame, "x", "n", by=by, age_band="band", confidence=(0.95, 0.998)),
        runs,
    )
    _measure(
        "isr: 14,400 practice-month ratios (reference columns)",
        lambda: stats.isr(frame, "x", "n", x_ref="x_ref", n_ref="n_ref", by=["practice", "month"]),
        runs,
    )

    rng = np.random.default_rng(2)
    n = rng.integers(1, 5000, PEOPLE)
    people = pd.DataFrame({"x": rng.binomial(n, 0.1), "n": n})
    ours = _measure(
        "proportion: 1.9M rows, Wilson 95%",
        lambda: stats.proportion(people, "x", "n"),
        runs,
    )
    peer = _measure(
        "peer: statsmodels proportion_confint(wilson), 1.9M",
        lambda: proportion_confint(people["x"], people["n"], method="wilson"),
        runs,
    )
    _say(f"{'  ratio ours / statsmodels':<58} {ours / peer:8.2f}")
    _measure("rate: 1.9M rows, exact/Byar's 95%", lambda: stats.rate(people, "x", "n"), runs)

    per_practice = frame.groupby("practice").agg(x=("x", "sum"), n=("n", "sum")).reset_index()
    expected = (frame["x_ref"] / frame["n_ref"] * frame["n"]).groupby(frame["practice"]).sum()
    per_practice["expected"] = expected.to_numpy()
    _measure(
        "funnel_limits: ratio funnel, 240 practices (100 points)",
        lambda: stats.funnel_limits(
            per_practice, "x", "expected", statistic="ratio", multiplier=1, ratio_type="isr"
        ),
        runs,
    )
    _measure(
        "funnel_significance: ratio, 240 practices",
        lambda: stats.funnel_significance(per_practice, "x", "expected", statistic="ratio"),
        runs,
    )
    monthly = frame.groupby(["practice", "month"]).agg(x=("x", "sum"), n=("n", "sum"))
    monthly = monthly.reset_index()
    _measure(
        "funnel_significance: proportion, 14,400 practice-months",
        lambda: stats.funnel_significance(monthly, "x", "n", statistic="proportion"),
        runs,
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _say(f"peak RSS of the process: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
