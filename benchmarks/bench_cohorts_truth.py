"""Does the matched-cohort recipe recover the synthetic generator's true programme effects?

Two modes.

``--kid KID --truth truth.json``: runs the recipe of notebooks/05_cohorts.ipynb (proposal
``programme-evaluation``, :func:`kidresearch.cohorts.cohort_study`, nearest-neighbour matching
1:1 and 3:1 exactly on the index month, caliper 0.2 SD) on one built KID and prints each estimate
beside the truth in ``truth.json`` (``realised_rate_ratio``, ``att_emergency_admissions_12m``,
``att_cost_gbp_12m``; with ``--programme safe_and_well_visit`` the A&E rate ratio against the true
1), with whether the 95% CI covers it, the naive (unmatched) comparison, wall time and peak memory.

``--simulate SCENARIO.yaml --seeds 1-24``: a simulation study. For every data seed the scenario
is generated (``kidresearch.synth.generate(..., seed=N)``), keyed and built into ``--work``
(kept, so reruns only re-estimate), the recipe is run, and the per-seed estimates are cached as
JSON. It then prints, per design and ratio, for the emergency rate ratio (log scale), the
emergency-admission difference and the cost difference: mean estimate vs mean truth (bias),
empirical SD vs mean reported SE, and 95% CI coverage of each seed's own truth.

Usage::

    python benchmarks/bench_cohorts_truth.py --kid KID_DIR --truth SYNTH_DIR/truth.json [--seed 0]
    python benchmarks/bench_cohorts_truth.py --simulate benchmarks/scenarios/sim_null_frailty_team.yaml \
        --seeds 1-24 --work /tmp/cohort_sim

Scenarios with known effects are in benchmarks/scenarios/. Kent-scale runs go under
``flock /tmp/kent/bench.lock``; small simulations need no lock (run one at a time).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kidresearch.access import connect
from kidresearch.cohorts import cohort_study

#: Designs compared by the simulation: name -> cohort_study keyword arguments.
DESIGNS: dict[str, dict[str, Any]] = {
    "itt": {"controls": "itt"},
    "ipcw": {"controls": "censor"},
}


def _effects(study: Any, ratio: int, outcome: str) -> dict[str, dict[str, float]]:
    matched = study.match(ratio=ratio)
    rr = matched.estimate(outcome, model="poisson", time="follow_up_days")
    out = {
        "rr": {
            "est": rr.estimate,
            "se": rr.std_error,
            "lo": rr.conf_low,
            "hi": rr.conf_high,
        },
        "diff": _row(matched.estimate(outcome)),
        "n_treated": float((matched.matched["treated"] == 1).sum()),
        # The matched enrolees' mean outcome (their y1): with a caliper some enrolees stay
        # unmatched, so the truth of a difference is that of the matched enrolees (below).
        "y1": float(matched.matched.loc[matched.matched["treated"] == 1, outcome].mean()),
        "max_smd": float(matched.balance().table.drop(index="distance").smd_after.abs().max()),
    }
    if "censored_day" in matched.matched.columns:  # share of matched controls enrolling later
        ctrl = matched.matched[matched.matched["treated"] == 0]
        out["enrol_later"] = float(ctrl["censored_day"].notna().mean())
    # Adjusted for the matching covariates by g-computation (MatchIt's recommendation).
    adj = matched.estimate(outcome, model="poisson", time="follow_up_days", adjust=True)
    out["rr_adj"] = {
        "est": adj.estimate,
        "se": adj.std_error,
        "lo": adj.conf_low,
        "hi": adj.conf_high,
    }
    out["diff_adj"] = _row(matched.estimate(outcome, adjust=True))
    if "cost_gbp" in study.data.columns:
        out["cost"] = _row(matched.estimate("cost_gbp"))
        out["cost_adj"] = _row(matched.estimate("cost_gbp", adjust=True))
    return out


def _row(effect: Any) -> dict[str, float]:
    return {
        "est": effect.estimate,
        "se": effect.std_error,
        "lo": effect.conf_low,
        "hi": effect.conf_high,
    }


def _design_kwargs(name: str) -> dict[str, Any]:
    import inspect

    kwargs = dict(DESIGNS[name])
    accepted = inspect.signature(cohort_study).parameters
    if "controls" not in accepted:  # the recipe before the 'controls' option: ITT only
        if kwargs.pop("controls") != "itt":
            raise SystemExit(f"design {name} needs cohort_study(controls=...)")
    return kwargs


def simulate(args: argparse.Namespace) -> None:
    from kidresearch.linkage import build
    from kidresearch.synth import generate

    scenario = Path(args.simulate)
    lo, _, hi = args.seeds.partition("-")
    seeds = range(int(lo), int(hi or lo) + 1)
    designs = args.designs.split(",")
    ratios = [int(r) for r in args.ratios.split(",")]
    root = Path(args.work) / scenario.stem
    records = []
    for seed in seeds:
        folder = root / f"seed{seed}"
        if not (folder / "kid.built").exists():  # (re)build with the current kidresearch
            started = time.perf_counter()
            shutil.rmtree(folder / "kid", ignore_errors=True)
            (folder / "estimates.json").unlink(missing_ok=True)
            if not (folder / "synth" / "truth.json").exists():
                generate(scenario, out=folder / "synth", seed=seed)
            key = folder / "pseudonymisation.key"
            key.write_text(f"{seed:064x}\n")
            key.chmod(0o600)
            build(folder / "synth" / "raw", folder / "kid", key_file=key, progress=False)
            (folder / "kid.built").touch()
            print(f"seed {seed}: built in {time.perf_counter() - started:.1f} s", flush=True)
        cache = folder / "estimates.json"
        done = json.loads(cache.read_text()) if cache.exists() else {}
        truth = json.loads((folder / "synth" / "truth.json").read_text())
        team = truth["programmes"]["integrated_frailty_team"]
        null = team["realised_rate_ratio"] == 1.0  # every truth is 0, whatever is matched
        todo = [
            (d, r)
            for d in designs
            for r in ratios
            if "rr_adj" not in done.get(f"{d}:{r}", {}) or not (null or "y1" in done[f"{d}:{r}"])
        ]
        if todo:
            with (
                connect("programme-evaluation", folder / "kid", user="bench") as kid,
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                for design in dict.fromkeys(d for d, _ in todo):
                    study = cohort_study(
                        kid,
                        outcomes=("emergency_admissions", "cost_gbp"),
                        seed=args.seed,
                        **_design_kwargs(design),
                    )
                    for d, ratio in todo:
                        if d == design:
                            done[f"{d}:{ratio}"] = _effects(study, ratio, "emergency_admissions")
            cache.write_text(json.dumps(done, indent=1))
        for key, value in done.items():
            design, ratio = key.split(":")
            if design in designs and int(ratio) in ratios:
                records.append(
                    {
                        "seed": seed,
                        "design": design,
                        "ratio": int(ratio),
                        **value,
                        "truth": {
                            "rr": team["realised_rate_ratio"],
                            # Of the matched enrolees: the generator removes each of their
                            # spells with probability 1 - RR, so E[y0] = y1 / RR there.
                            "diff": value.get("y1", 0.0) * (1 - 1 / team["realised_rate_ratio"]),
                            "diff_all": -team["att_emergency_admissions_12m"],
                            "cost": team["att_cost_gbp_12m"],
                        },
                    }
                )
    _report(scenario.stem, records)


def _report(name: str, records: list[dict[str, Any]]) -> None:
    print(f"\n{name}: {len({r['seed'] for r in records})} data seeds")
    header = (
        f"{'design':6s} {'ratio':>5s} {'quantity':10s} {'mean est':>10s} {'mean truth':>10s} "
        f"{'bias':>9s} {'(MC SE)':>8s} {'emp SD':>9s} {'mean SE':>9s} {'coverage':>9s}"
    )
    print(header)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["design"], r["ratio"]), []).append(r)
    for (design, ratio), rows in sorted(groups.items()):
        for label, quantity, source in (
            ("rr", "rr", "rr"),
            ("rr_adj", "rr", "rr_adj"),
            ("diff", "diff", "diff"),
            ("diff_adj", "diff", "diff_adj"),
            ("diff_all", "diff_all", "diff"),
            ("cost", "cost", "cost"),
            ("cost_adj", "cost", "cost_adj"),
        ):
            if source not in rows[0] or quantity not in rows[0]["truth"]:
                continue
            est = np.array([r[source]["est"] for r in rows])
            truth = np.array([r["truth"][quantity] for r in rows])
            se = np.array([r[source]["se"] for r in rows])
            cover = np.array(
                [r[source]["lo"] <= r["truth"][quantity] <= r[source]["hi"] for r in rows]
            )
            if quantity == "rr":  # bias and spread on the log scale, shown back as ratios
                err = np.log(est) - np.log(truth)
                shown = (
                    f"{math.exp(np.log(est).mean()):10.3f} {math.exp(np.log(truth).mean()):10.3f}"
                )
            else:
                err = est - truth
                shown = f"{est.mean():10.3f} {truth.mean():10.3f}"
            n = len(rows)
            print(
                f"{design:6s} {ratio:5d} {label:10s} {shown} {err.mean():9.3f} "
                f"{err.std(ddof=1) / math.sqrt(n):8.3f} {err.std(ddof=1):9.3f} {se.mean():9.3f} "
                f"{cover.mean():6.0%} of {n}"
            )
    print(
        "(diff: truth of the matched enrolees, y1 (1 - 1/RR); diff_all: of all enrolees, "
        "truth.json's att; cost: of all enrolees; _adj: adjusted for the matching covariates "
        "by g-computation)"
    )
    matched = np.mean([r["n_treated"] for r in records])
    later = [r["enrol_later"] for r in records if "enrol_later" in r]
    print(
        f"(mean matched enrolees {matched:.0f}"
        + (
            f"; matched controls enrolling within their window {np.mean(later):.1%}"
            if later
            else ""
        )
        + "; rr bias, SD and SE on the log scale)"
    )


def single(args: argparse.Namespace) -> None:
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
        for design in args.designs.split(","):
            study = cohort_study(
                kid,
                programme=args.programme,
                outcomes=(outcome, "cost_gbp"),
                seed=args.seed,
                **_design_kwargs(design),
            )
            built = time.perf_counter() - started
            data = study.data
            treated = data[data["treated"] == 1]
            control = data[data["treated"] == 0]
            naive_rr = (treated[outcome].sum() / treated.follow_up_days.sum()) / (
                control[outcome].sum() / control.follow_up_days.sum()
            )
            naive_cost = treated.cost_gbp.mean() - control.cost_gbp.mean()
            print(
                f"design {design}: {len(treated)} treated, {len(control)} candidate controls "
                f"({built:.1f} s since start)"
            )
            if design == "itt":  # under ipcw the controls' outcomes are reweighted totals
                print(f"naive: rate ratio {naive_rr:.3f}, cost difference {naive_cost:+.0f}")
            for ratio in (int(r) for r in args.ratios.split(",")):
                eff = _effects(study, ratio, outcome)
                later = (
                    f", matched controls enrolling within their window {eff['enrol_later']:.1%}"
                    if "enrol_later" in eff
                    else ""
                )
                print(
                    f"{ratio}:1 matched (max |SMD| {eff['max_smd']:.3f}; "
                    f"{eff['n_treated']:.0f} of {len(treated)} enrolees matched{later}):"
                )
                rows = [
                    ("rate ratio", eff["rr"], true_rr),
                    ("  adjusted", eff["rr_adj"], true_rr),
                    (f"{outcome[:10]} diff", eff["diff"], true_diff),
                    ("  adjusted", eff["diff_adj"], true_diff),
                ]
                if cost_outcome:
                    rows.append(("cost diff", eff["cost"], true_cost))
                    rows.append(("  adjusted", eff["cost_adj"], true_cost))
                for name, effect, target in rows:
                    covers = effect["lo"] <= target <= effect["hi"]
                    print(
                        f"  {name:16s} {effect['est']:9.3f} ({effect['lo']:.3f} to "
                        f"{effect['hi']:.3f})  truth {target:9.3f}  "
                        f"{'covers' if covers else 'MISSES'}"
                    )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wall {time.perf_counter() - started:.1f} s, peak RSS {peak_mib:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kid", help="built KID folder (single run)")
    parser.add_argument("--truth", help="the scenario's truth.json (single run)")
    parser.add_argument("--simulate", help="scenario YAML for a simulation study over data seeds")
    parser.add_argument("--seeds", default="1-24", help="data seeds, e.g. 1-24 (simulation)")
    parser.add_argument("--work", default="/tmp/cohort_sim", help="simulation working folder")
    parser.add_argument("--designs", default="itt", help="designs: " + ",".join(DESIGNS))
    parser.add_argument("--seed", type=int, default=0, help="seed for controls' index dates")
    parser.add_argument("--ratios", default="1,3", help="matching ratios, comma separated")
    parser.add_argument(
        "--programme",
        default="integrated_frailty_team",
        choices=["integrated_frailty_team", "safe_and_well_visit"],
    )
    args = parser.parse_args()
    if args.simulate:
        simulate(args)
    elif args.kid and args.truth:
        single(args)
    else:
        parser.error("give --kid and --truth, or --simulate")


if __name__ == "__main__":
    main()
