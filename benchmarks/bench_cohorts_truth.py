"""Does the matched-cohort recipe recover the synthetic generator's true programme effects?

Runs the recipe of notebooks/05_cohorts.ipynb (proposal ``programme-evaluation``,
:func:`kidresearch.cohorts.cohort_study`, nearest-neighbour matching 1:1 and 3:1 exactly on the
index month) on a built KID and prints each estimate beside the truth in ``truth.json``
(``realised_rate_ratio``, ``att_emergency_admissions_12m``, ``att_cost_gbp_12m``; with
``--programme safe_and_well_visit`` the A&E rate ratio against the true 1), with whether
the 95% CI covers it, the naive (unmatched) comparison, wall time and peak memory.

Usage::

    python benchmarks/bench_cohorts_truth.py --kid KID_DIR --truth SYNTH_DIR/truth.json [--seed 0]

Scenarios with known effects: benchmarks/scenarios/demo_null_frailty_team.yaml (no effect) and
demo_strong_frailty_team.yaml (rate ratio 0.6); build them with ``kid synth --scenario``,
``kid key new`` and ``kid build``. Kent-scale runs go under ``flock /tmp/kent/bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings

from kidresearch.access import connect
from kidresearch.cohorts import cohort_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kid", required=True, help="built KID folder")
    parser.add_argument("--truth", required=True, help="the scenario's truth.json")
    parser.add_argument("--seed", type=int, default=0, help="seed for controls' index dates")
    parser.add_argument("--ratios", default="1,3", help="matching ratios, comma separated")
    parser.add_argument(
        "--programme",
        default="integrated_frailty_team",
        choices=["integrated_frailty_team", "safe_and_well_visit"],
    )
    args = parser.parse_args()
    truth = json.load(open(args.truth))["programmes"][args.programme]
    if args.programme == "integrated_frailty_team":
        outcome, cost_outcome = "emergency_admissions", "cost_gbp"
        true_rr = truth["realised_rate_ratio"]
        true_diff = -truth["att_emergency_admissions_12m"]  # truth: spells averted (y0 - y1)
        true_cost = truth["att_cost_gbp_12m"]
    else:  # no true effect on A&E and no cost truth
        outcome, cost_outcome = "ae_attendances", None
        true_rr, true_diff, true_cost = truth["ae_rate_ratio"], truth["att_ae_attendances_12m"], 0
    print(
        f"truth: enrolled {truth['enrolled']}, rate ratio {true_rr}, "
        f"{outcome} ATT {true_diff}, cost ATT {true_cost if cost_outcome else '-'}"
    )
    started = time.perf_counter()
    with connect("programme-evaluation", args.kid, user="bench") as kid, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = cohort_study(
            kid,
            programme=args.programme,
            outcomes=(outcome, "cost_gbp"),
            seed=args.seed,
        )
        built = time.perf_counter() - started
        data = study.data
        treated = data[data["treated"] == 1]
        control = data[data["treated"] == 0]
        naive_rr = (treated[outcome].sum() / treated.follow_up_days.sum()) / (
            control[outcome].sum() / control.follow_up_days.sum()
        )
        naive_cost = treated.cost_gbp.mean() - control.cost_gbp.mean()
        print(f"cohort: {len(treated)} treated, {len(control)} candidate controls ({built:.1f} s)")
        print(f"naive: rate ratio {naive_rr:.3f}, cost difference {naive_cost:+.0f}")
        for ratio in (int(r) for r in args.ratios.split(",")):
            matched = study.match(ratio=ratio)
            rr = matched.estimate(outcome, model="poisson", time="follow_up_days")
            diff = matched.estimate(outcome)
            cost = matched.estimate("cost_gbp")
            smd = matched.balance().table.drop(index="distance").smd_after.abs().max()
            print(f"{ratio}:1 matched (max |SMD| {smd:.3f}):")
            rows = [("rate ratio", rr, true_rr), (f"{outcome[:10]} diff", diff, true_diff)]
            if cost_outcome:
                rows.append(("cost diff", cost, true_cost))
            for name, effect, target in rows:
                print(
                    f"  {name:16s} {effect.estimate:9.3f} ({effect.conf_low:.3f} to "
                    f"{effect.conf_high:.3f})  truth {target:9.3f}  "
                    f"{'covers' if effect.covers(target) else 'MISSES'}"
                )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wall {time.perf_counter() - started:.1f} s, peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
