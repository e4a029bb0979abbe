"""Benchmark kidresearch.cohorts.match against R's MatchIt and Python's psmpy.

Prints (never asserts) wall times, peak memory and time ratios measured in the same run:

1. ours, 50,000 treated x 1,500,000 controls, 1:1 nearest on a logistic propensity score with a
   0.2-SD caliper, without replacement: median of 3 runs, peak traced memory (tracemalloc) and
   the process's maximum resident set size;
2. R MatchIt (Debian r-cran-matchit 4.5.1; installed with apt-get when absent and allowed) on
   the same kind of data at 20,000 x 600,000 (one run; about a minute) and at 5,000 x 150,000
   (median of 3), timing only the ``matchit()`` call inside R, against ours on the same rows;
   with a loose agreement check (propensity scores, share of identical pairs: 4.5.1 does not apply
   the caliper and breaks ties differently from 4.7, see docs/matching.md);
3. psmpy 0.3.16 (from a scratch venv, default /tmp/psmpy-venv) at 1,000 x 30,000, one run,
   timing ``logistic_ps`` + ``kdtree_matched``, against ours on the same rows;
4. with ``--kent-kid DIR --truth truth.json``: ``cohort_study`` on a built Kent-scale KID for
   both programmes (time to build the cohort and match, matched vs naive rate ratio against the
   generator's truth, largest |SMD| after matching).

Usage::

    .venv/bin/python benchmarks/bench_matching.py [--quick] [--no-install] [--skip-r]
        [--skip-psmpy] [--psmpy-python /tmp/psmpy-venv/bin/python]

The machine is shared: figures are noisy under contention; rerun when it is quiet.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from kidresearch.cohorts import match

COVARIATES = ["age", "imd_score", "gp_visits", "prior_admissions", "comorbidities", "female"]


def make_cohort(n_treated: int, n_control: int, seed: int = 20261126) -> pd.DataFrame:
    """Synthetic person-level data where treated people are older and sicker."""
    rng = np.random.default_rng(seed)
    n = n_treated + n_control
    treat = np.zeros(n, dtype=np.int8)
    treat[:n_treated] = 1
    shift = treat.astype(float)
    return pd.DataFrame(
        {
            "id": np.arange(1, n + 1),
            "treat": treat,
            "age": np.round(rng.normal(60 + 8 * shift, 15), 1),
            "imd_score": np.round(rng.gamma(2.0 + 0.5 * shift, 10.0), 2),
            "gp_visits": rng.poisson(4 + 2 * shift).astype(float),
            "prior_admissions": rng.poisson(0.3 + 0.4 * shift).astype(float),
            "comorbidities": rng.poisson(1 + shift).astype(float),
            "female": rng.integers(0, 2, n).astype(float),
        }
    )


def time_ours(
    data: pd.DataFrame, repeats: int, caliper: float | None = 0.2, cpu: list[float] | None = None
) -> list[float]:
    """Wall times of ``repeats`` runs; process CPU times appended to ``cpu`` when given."""
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            match(data, "treat", COVARIATES, caliper=caliper)
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return times


def peak_traced_mb(data: pd.DataFrame) -> float:
    tracemalloc.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        match(data, "treat", COVARIATES, caliper=0.2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


# ---------------------------------------------------------------------------------------------
# R MatchIt
# ---------------------------------------------------------------------------------------------


def matchit_available(install: bool) -> bool:
    if shutil.which("Rscript"):
        probe = subprocess.run(
            ["Rscript", "-e", "suppressMessages(library(MatchIt))"], capture_output=True
        )
        if probe.returncode == 0:
            return True
    if not install:
        return False
    print("Installing r-cran-matchit with apt-get (needs root)...", flush=True)
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "r-cran-matchit"]):
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            return False
    return matchit_available(install=False)


R_SCRIPT = textwrap.dedent(
    """
    suppressMessages(library(MatchIt))
    args <- commandArgs(trailingOnly = TRUE)
    d <- read.csv(args[1])
    repeats <- as.integer(args[3])
    f <- treat ~ age + imd_score + gp_visits + prior_admissions + comorbidities + female
    times <- numeric(repeats)
    for (i in seq_len(repeats)) {
      times[i] <- system.time(m <- matchit(f, data = d, method = "nearest", distance = "glm",
                                          caliper = 0.2))[["elapsed"]]
    }
    mm <- m$match.matrix
    out <- data.frame(treated = d$id[as.integer(rownames(mm))],
                      control = d$id[as.integer(mm[, 1])])
    write.csv(out, args[2], row.names = FALSE)
    writeLines(format(c(times, max(abs(m$distance))), digits = 10), args[4])
    write.csv(data.frame(distance = m$distance), paste0(args[2], ".ps.csv"), row.names = FALSE)
    """
)


def run_matchit(data: pd.DataFrame, repeats: int) -> tuple[list[float], pd.DataFrame, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data.to_csv(root / "data.csv", index=False)
        (root / "bench.R").write_text(R_SCRIPT)
        subprocess.run(
            [
                "Rscript",
                str(root / "bench.R"),
                str(root / "data.csv"),
                str(root / "pairs.csv"),
                str(repeats),
                str(root / "times.txt"),
            ],
            check=True,
            capture_output=True,
        )
        values = [float(v) for v in (root / "times.txt").read_text().split()]
        pairs = pd.read_csv(root / "pairs.csv")
        ps = pd.read_csv(root / "pairs.csv.ps.csv")["distance"].to_numpy()
    return values[:repeats], pairs, ps


def our_pairs(data: pd.DataFrame, caliper: float | None) -> tuple[pd.DataFrame, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = match(data, "treat", COVARIATES, caliper=caliper)
    treated_rows = np.flatnonzero(data["treat"].to_numpy() == 1)
    control = result.match_matrix[:, 0]
    ids = data["id"].to_numpy()
    frame = pd.DataFrame(
        {"treated": ids[treated_rows], "control": np.where(control >= 0, ids[control], -1)}
    )
    return frame, result.distance


def bench_matchit(n_treated: int, n_control: int, repeats: int) -> None:
    data = make_cohort(n_treated, n_control, seed=n_treated)
    r_times, r_pairs, r_ps = run_matchit(data, repeats)
    ours = time_ours(data, repeats)
    pairs, ps = our_pairs(data, caliper=0.2)
    # 4.5.1 ignores the caliper, so its pairs are compared with ours matched without one.
    uncalipered, _ = our_pairs(data, caliper=None)
    merged = uncalipered.merge(r_pairs, on="treated", suffixes=("_ours", "_matchit"))
    both = merged[(merged.control_ours >= 0) & merged.control_matchit.notna()]
    same = float((both.control_ours == both.control_matchit).mean())
    r_med, o_med = statistics.median(r_times), statistics.median(ours)
    print(
        f"  {n_treated:>6,} x {n_control:>9,}: MatchIt {r_med:7.2f} s (median of {repeats}), "
        f"ours {o_med:6.2f} s -> ours is {r_med / o_med:5.1f}x faster"
    )
    print(
        f"    agreement: max |PS ours - PS MatchIt| = {np.abs(ps - r_ps).max():.1e}; "
        f"treated matched ours {int((pairs.control >= 0).sum()):,} / MatchIt "
        f"{int(r_pairs.control.notna().sum()):,} (4.5.1 ignores the caliper); without a caliper "
        f"we pick MatchIt's control for {same:.1%} of treated"
    )


# ---------------------------------------------------------------------------------------------
# psmpy
# ---------------------------------------------------------------------------------------------

PSMPY_SCRIPT = textwrap.dedent(
    """
    import sys, time, warnings
    import pandas as pd
    warnings.simplefilter("ignore")
    from psmpy import PsmPy
    d = pd.read_csv(sys.argv[1])
    start = time.perf_counter()
    psm = PsmPy(d, treatment="treat", indx="id", exclude=[])
    psm.logistic_ps(balance=False)
    psm.kdtree_matched(matcher="propensity_logit", replacement=False, caliper=None)
    print(time.perf_counter() - start)
    """
)


def bench_psmpy(python: str, n_treated: int, n_control: int) -> None:
    data = make_cohort(n_treated, n_control, seed=n_treated + 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data.to_csv(root / "data.csv", index=False)
        (root / "bench_psmpy.py").write_text(PSMPY_SCRIPT)
        done = subprocess.run(
            [python, str(root / "bench_psmpy.py"), str(root / "data.csv")],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        print(f"  psmpy failed: {done.stderr.strip().splitlines()[-1:]}")
        return
    psmpy_s = float(done.stdout.strip().splitlines()[-1])
    ours = statistics.median(time_ours(data, 3, caliper=None))
    print(
        f"  {n_treated:>6,} x {n_control:>9,}: psmpy {psmpy_s:7.2f} s (one run), ours "
        f"{ours:6.3f} s (median of 3) -> ours is {psmpy_s / ours:6.0f}x faster"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install R")
    parser.add_argument("--skip-r", action="store_true")
    parser.add_argument("--skip-psmpy", action="store_true")
    parser.add_argument("--psmpy-python", default="/tmp/psmpy-venv/bin/python")
    parser.add_argument("--kent-kid", help="a built KID folder for the cohort_study check")
    parser.add_argument("--truth", help="the generator's truth.json for --kent-kid")
    parser.add_argument("--proposal", default="proposals/programme-evaluation.yaml")
    parser.add_argument("--only-kent", action="store_true", help="run only the cohort check")
    args = parser.parse_args(argv)
    if args.only_kent:
        bench_kent_cohorts(args.kent_kid, args.truth, args.proposal)
        return

    n1, n0 = (5_000, 150_000) if args.quick else (50_000, 1_500_000)
    print(f"kidresearch.cohorts.match, 1:1 nearest, logistic PS, caliper 0.2 SD, {n1:,} x {n0:,}")
    data = make_cohort(n1, n0)
    cpu: list[float] = []
    times = time_ours(data, 3, cpu=cpu)
    print(
        f"  median {statistics.median(times):.2f} s of 3 ({', '.join(f'{t:.2f}' for t in times)}); "
        f"process CPU median {statistics.median(cpu):.2f} s (both cores; load average "
        f"{open('/proc/loadavg').read().split()[0]} at the end)"
    )
    print(
        f"  peak traced memory {peak_traced_mb(data):,.0f} MiB; process max RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    )
    del data

    if not args.skip_r:
        print("R MatchIt (same data generator; timing the matchit() call inside R)")
        if matchit_available(install=not args.no_install):
            sizes = (
                [(2_000, 60_000, 3)] if args.quick else [(5_000, 150_000, 3), (20_000, 600_000, 1)]
            )
            for n_t, n_c, repeats in sizes:
                bench_matchit(n_t, n_c, repeats)
        else:
            print("  skipped: Rscript with MatchIt not available")

    if not args.skip_psmpy:
        print("psmpy (scratch venv)")
        if Path(args.psmpy_python).exists():
            bench_psmpy(
                args.psmpy_python, 300 if args.quick else 1_000, 9_000 if args.quick else 30_000
            )
        else:
            print(
                f"  skipped: {args.psmpy_python} not found "
                "(python3 -m venv /tmp/psmpy-venv && /tmp/psmpy-venv/bin/pip install psmpy)"
            )
    if args.kent_kid:
        bench_kent_cohorts(args.kent_kid, args.truth, args.proposal)
    sys.stdout.flush()


def bench_kent_cohorts(kid_dir: str, truth_path: str | None, proposal: str) -> None:
    """cohort_study + 3:1 matching on a Kent-scale KID against the generator's truth."""
    import json

    from kidresearch.access import connect
    from kidresearch.cohorts import cohort_study

    truth = json.loads(Path(truth_path).read_text())["programmes"] if truth_path else {}
    print(f"cohort_study on {kid_dir} ({proposal})")
    with connect(proposal, kid_dir, user="bench-matching") as kid:
        for programme, outcome, true_rr in (
            (
                "integrated_frailty_team",
                "emergency_admissions",
                truth.get("integrated_frailty_team", {}).get("realised_rate_ratio"),
            ),
            (
                "safe_and_well_visit",
                "ae_attendances",
                truth.get("safe_and_well_visit", {}).get("ae_rate_ratio"),
            ),
        ):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study = cohort_study(kid, programme=programme, outcomes=[outcome])
                built = time.perf_counter() - start
                result = study.match(ratio=3)
            matched = time.perf_counter() - start - built
            effect = result.estimate(outcome, model="poisson", time="follow_up_days")
            data = study.data
            naive = (
                data.loc[data.treated == 1, outcome].mean()
                / data.loc[data.treated == 0, outcome].mean()
            )
            # Naive rate ratio with a robust (HC1) 95% interval: every enrolee against every
            # candidate, per day of follow-up.
            import statsmodels.api as sm

            observed = data[data.follow_up_days > 0]
            naive_fit = sm.GLM(
                observed[outcome],
                sm.add_constant(observed.treated.astype(float)),
                family=sm.families.Poisson(),
                offset=np.log(observed.follow_up_days.astype(float)),
            ).fit(cov_type="HC1")
            naive_low, naive_high = np.exp(naive_fit.conf_int().iloc[1])
            naive_rate = float(np.exp(naive_fit.params.iloc[1]))
            balance = result.balance().table.drop(index="distance")
            worst = balance["smd_after"].abs().sort_values(ascending=False).head(3)
            print("    covariates: " + ", ".join(study.covariates))
            print(
                f"    naive rate ratio {naive_rate:.3f} ({naive_low:.3f}-{naive_high:.3f}); "
                "largest |SMD| after: " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items())
            )
            print(
                f"  {programme}: {int(data.treated.sum()):,} treated, "
                f"{int((data.treated == 0).sum()):,} candidates; cohort {built:.1f} s, "
                f"match {matched:.1f} s"
            )
            print(
                f"    matched RR {effect.estimate:.3f} ({effect.conf_low:.3f}-"
                f"{effect.conf_high:.3f}), p={effect.p_value:.3g}; naive RR {naive:.3f}; "
                f"truth {true_rr}; max |SMD| after {balance['smd_after'].abs().max():.3f}"
            )


if __name__ == "__main__":
    main()
