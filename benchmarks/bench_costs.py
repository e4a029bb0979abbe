"""Benchmark the cost and segmentation recipes on the Kent-size synthetic KID.

Prints (never asserts):

* ``costs.person_costs`` over the whole ``kent`` preset (about 1.7 million people at the cost
  reference date) with its figures beside ``truth.json`` (people, mean annual cost, top 5%
  share, mean cost of the 55+ by IMD quintile and the most vs least deprived ratio, and
  Jayatunga et al. 2019's published +35%);
* the distribution (Gini, top 1/5/10% shares);
* ``costs.map`` by practice (gamma and two-part) and by LSOA: the whole adjustment ladder, in
  particular the deprivation gradient at the crude step and after adjusting for deprivation;
* a peer: statsmodels' own person-level GLM for the deprivation step against our fit on
  covariate cells (same coefficients), with the time ratio;
* ``segments`` counts and the segment x IMD quintile table, and ``costs.panel``.

The kent KID is generated and built once under ``benchmarks/out/kent`` (shared with
``bench_frailty.py``; this script waits if another process is building it). Recipes run on
the Parquet files directly (``ParquetSession``) to time the recipes, not the access layer.
The machine is shared, so times are noisy (load average printed).

Usage::

    .venv/bin/python benchmarks/bench_costs.py [--preset kent] [--repeat 1]
"""

from __future__ import annotations

import os

# One BLAS thread: on the shared 2-core machine OpenBLAS's default thread pool makes each
# small least-squares solve of the GLM 40x slower (0.9 s instead of 0.02 s) under load.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime as dt
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_frailty import OUT, ParquetSession, ensure_kid, say, timed


def wait_for_kid(preset: str, minutes: float) -> None:
    """Wait while another process builds the preset (never build twice into one folder)."""
    kid = OUT / preset / "kid"
    deadline = time.time() + 60 * minutes
    if kid.exists() and not (kid / ".complete").exists():
        say(f"waiting for another process to finish building {kid} ...")
        while not (kid / ".complete").exists() and time.time() < deadline:
            time.sleep(15)
        if not (kid / ".complete").exists():
            say(f"{kid} is still being built; run again later")
            sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="kent")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--wait-minutes", type=float, default=40)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--peer-people", type=int, default=200_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)

    from kidresearch import costs, segments

    wait_for_kid(args.preset, args.wait_minutes)
    kid_dir, truth_path, _ = ensure_kid(args.preset)
    truth = json.loads(truth_path.read_text())["costs"]
    kid = ParquetSession(kid_dir)
    say(f"machine load average (1, 5, 15 min): {psutil.getloadavg()}, cores: {psutil.cpu_count()}")
    start = dt.date.fromisoformat(truth["reference_date"])
    end = start + dt.timedelta(days=364)

    pc = timed(
        f"costs.person_costs {start}..{end} (eFI, segments, 11 service lines)",
        lambda: costs.person_costs(kid, start, end),
        args.repeat,
    )
    f = pc.frame
    say(f"  people {len(f):,} (truth {truth['people']:,}); excluded from cohort {pc.excluded}")
    say(
        f"  mean annual cost GBP {f.cost_gbp.mean():,.2f} (truth {truth['mean_annual_cost_gbp']:,})"
    )
    dist = timed("distribution (Gini, Lorenz, top shares)", pc.distribution, args.repeat)
    say(
        f"  Gini {dist.gini:.4f}; top 1% {dist.top_shares[0.01]:.4f}, top 5% "
        f"{dist.top_shares[0.05]:.4f} (truth {truth['top_5_percent_share']}), top 10% "
        f"{dist.top_shares[0.10]:.4f}; no cost {dist.share_with_no_cost:.3f}"
    )
    grad = pc.gradient()
    grad["truth_mean_cost_gbp"] = grad.imd_quintile.astype(str).map(
        truth["mean_annual_cost_55_plus_by_imd_quintile"]
    )
    say("  mean annual cost of the 55+ by IMD quintile (1 = most deprived):")
    say(grad.to_string(index=False))
    ratio = float(grad.set_index("imd_quintile").ratio_to_q5.loc[1])
    say(
        f"  most vs least deprived (55+): {ratio:.4f}; truth "
        f"{truth['deprivation_gradient_q1_vs_q5_55_plus']}; Jayatunga et al. 2019: "
        f"{costs.PUBLISHED_GRADIENT_55_PLUS}"
    )

    columns = [
        "step",
        "r2",
        "excess_var_log_ratio",
        "variance_absorbed",
        "spearman_vs_previous",
        "spearman_vs_crude",
        "gradient_55_plus",
        "gradient_ci_lower",
        "gradient_ci_upper",
        "adjusted_gradient_55_plus",
    ]
    for by, model in (("practice", "gamma"), ("practice", "two_part"), ("lsoa", "gamma")):
        cm = timed(
            f"costs.map by {by}, model={model} (4 steps)",
            lambda by=by, model=model: costs.map(kid, data=pc, by=by, model=model),
            args.repeat,
        )
        say(f"  {len(cm.units)} units; ladder:")
        say(cm.ladder[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        say("  O/E of the 55+ by IMD quintile at each step:")
        ratios = [c for c in cm.gradient.columns if c.startswith("ratio_")]
        say(cm.gradient[["imd_quintile", "people", *ratios]].to_string(index=False))
        say("  biggest rank movers crude -> deprivation:")
        say(cm.movers(5).to_string(index=False))

    if not args.skip_peer:
        import statsmodels.api as sm
        import statsmodels.formula.api as smf

        # statsmodels on one row per person needs ~7 GB per million people (dense dummies):
        # compare on a random subsample so the shared machine is not exhausted.
        sample = pc.frame.sample(n=min(args.peer_people, len(pc.frame)), random_state=1)
        sub = costs.PersonCosts(pc.start, pc.end, sample.reset_index(drop=True))
        people = sub.frame[["cost_gbp", "sex", "age", "deficit_count", "imd_quintile"]].copy()
        band = (np.minimum(people.age, 85) // 5).astype(str)
        people["age_sex"] = people.sex.astype(str) + ":" + band
        people["mb"] = np.searchsorted(costs.MORBIDITY_EDGES, people.deficit_count, side="right")
        old = people.age >= 55
        for q in range(1, 5):
            people[f"u{q}"] = ((people.imd_quintile == q) & ~old).astype(float)
            people[f"o{q}"] = ((people.imd_quintile == q) & old).astype(float)
        formula = "cost_gbp ~ C(age_sex) + C(mb) + u1 + u2 + u3 + u4 + o1 + o2 + o3 + o4"
        family = sm.families.Tweedie(var_power=2, link=sm.families.links.Log())
        started = time.perf_counter()
        peer = smf.glm(formula, people, family=family).fit()
        peer_s = time.perf_counter() - started
        started = time.perf_counter()
        ours = costs.map(data=sub, by="practice", model="gamma")
        ours_s = time.perf_counter() - started
        peer_mu = np.asarray(peer.predict(people))
        units = pd.Series(peer_mu).groupby(sub.frame.practice_code.astype(str).to_numpy()).sum()
        got = ours.units.set_index("unit").expected_deprivation
        diff = float(np.max(np.abs(got / units.loc[got.index] - 1)))
        say(
            f"peer on {len(people):,} people: statsmodels person-level GLM (deprivation step "
            f"only) {peer_s:.1f} s vs costs.map on cells (all 4 steps) {ours_s:.1f} s: ratio "
            f"{peer_s / ours_s:.1f}x; max relative difference of practice expected costs "
            f"{diff:.2e}"
        )

    seg = pc.frame.segment.value_counts().reindex(list(segments.SEGMENTS))
    say("Bridges to Health segments at the reference date:")
    say((seg / seg.sum()).round(4).to_string())
    frame = pc.frame[["segment", "imd_quintile"]]
    table = timed(
        "segments.crosstab_deprivation (sdc)",
        lambda: segments.crosstab_deprivation(segments.Segmentation(at=start, frame=frame)),
        args.repeat,
    )
    say(table.released.to_string())

    years = [2022, 2023, 2024, 2025]
    panel = timed(
        f"costs.panel by practice, years {years}",
        lambda: costs.panel(kid, years=years),
        args.repeat,
    )
    say(panel.year_means().to_string(index=False))
    summary = panel.summary()
    say(summary[summary.term != "Intercept"].to_string(index=False))


if __name__ == "__main__":
    main()
