"""Tests of kidresearch.cohorts against MatchIt's published results, MatchIt runs and hand cases."""

from __future__ import annotations

import datetime as dt
import math
import statistics
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kidresearch.cohorts import MatchingError, fit_propensity_score, match
from kidresearch.data import load
from kidresearch.errors import DroppedRowsWarning

REFERENCE = Path(__file__).parent / "data" / "matchit_reference"
LALONDE_COVARIATES = ["age", "educ", "race", "married", "nodegree", "re74", "re75"]


@pytest.fixture(scope="module")
def lalonde() -> pd.DataFrame:
    return load("lalonde")


def _partition(ids: pd.Series, subclass: pd.Series) -> set[frozenset[str]]:
    """Subclasses as a set of member sets, so numbering conventions do not matter."""
    keep = subclass.notna() & (subclass.astype(str) != "0")
    groups = pd.Series(ids[keep].to_numpy()).groupby(subclass[keep].astype(str).to_numpy())
    return {frozenset(members) for _, members in groups}


# ---------------------------------------------------------------------------------------------
# Published reference: MatchIt 4.7 "Getting Started" vignette
# ---------------------------------------------------------------------------------------------


def test_lalonde_nearest_gives_vignette_sample_sizes(lalonde: pd.DataFrame) -> None:
    result = match(lalonde, "treat", LALONDE_COVARIATES)
    sizes = result.summary()
    assert sizes.loc["all", "treated"] == 185 and sizes.loc["all", "control"] == 429
    assert sizes.loc["matched", "treated"] == 185 and sizes.loc["matched", "control"] == 185
    assert sizes.loc["unmatched", "control"] == 244 and sizes.loc["unmatched", "treated"] == 0
    assert len(result.matched) == 370


@pytest.mark.parametrize("sample", ["all", "matched"])
def test_lalonde_balance_reproduces_vignette_table(lalonde: pd.DataFrame, sample: str) -> None:
    reference = pd.read_csv(REFERENCE / "lalonde_nearest_vignette_balance.csv")
    reference = reference[reference["sample"] == sample].set_index("covariate")
    table = match(lalonde, "treat", LALONDE_COVARIATES).balance(binary="std").table
    suffix = "before" if sample == "all" else "after"
    for ours, theirs in [
        ("mean_treated", "mean_treated"),
        ("mean_control", "mean_control"),
        ("smd", "smd"),
        ("var_ratio", "var_ratio"),
        ("ecdf_mean", "ecdf_mean"),
        ("ecdf_max", "ecdf_max"),
    ]:
        got = table.loc[reference.index, f"{ours}_{suffix}"]
        want = reference[theirs]
        both = want.notna()
        # The vignette prints 4 decimals: agreement to rounding.
        np.testing.assert_allclose(got[both], want[both], atol=5.1e-5, err_msg=ours)
        assert got[~both].isna().all(), f"{ours}: MatchIt prints '.' for binary variables"


def test_distance_smd_after_matching_is_published_09739(lalonde: pd.DataFrame) -> None:
    table = match(lalonde, "treat", LALONDE_COVARIATES).balance().table
    assert round(table.loc["distance", "smd_after"], 4) == 0.9739


def test_binary_smd_defaults_to_raw_difference_as_cobalt(lalonde: pd.DataFrame) -> None:
    result = match(lalonde, "treat", LALONDE_COVARIATES)
    table = result.balance().table
    # cobalt's bal.tab on these matches prints race_black 0.3730 (raw proportion difference).
    assert table.loc["race_black", "smd_after"] == pytest.approx(0.3730, abs=5e-5)
    assert table.loc["race_black", "type"] == "binary"
    assert table.loc["age", "smd_after"] == pytest.approx(0.0718, abs=5e-5)


# ---------------------------------------------------------------------------------------------
# Reference implementation: MatchIt 4.5.1 runs (see tests/data/matchit_reference/README.md)
# ---------------------------------------------------------------------------------------------


def _reference(name: str) -> pd.DataFrame:
    return pd.read_csv(REFERENCE / f"matchit451_lalonde_{name}.csv")


def test_propensity_score_equals_r_glm(lalonde: pd.DataFrame) -> None:
    result = match(lalonde, "treat", LALONDE_COVARIATES)
    np.testing.assert_allclose(result.distance, _reference("nn2")["distance"], atol=1e-10)


def test_two_to_one_nearest_selects_matchits_controls(lalonde: pd.DataFrame) -> None:
    # Same 370 controls and weights as MatchIt 4.5.1; the pairing differs because 4.5.1's
    # first round differs from 4.7's (see README), so only the selected set is compared.
    reference = _reference("nn2")
    result = match(lalonde, "treat", LALONDE_COVARIATES, ratio=2)
    np.testing.assert_allclose(result.weights, reference["weights"], atol=1e-12)


@pytest.mark.parametrize(
    ("reference_name", "covariates", "options"),
    [
        # CEM with Sturges' bins, as MatchIt's in-house cem
        ("cem", ["age", "educ", "race", "married", "nodegree"], {"method": "cem"}),
        ("exact", ["race", "married", "nodegree", "educ"], {"method": "exact"}),
        ("mahal", ["age", "educ", "re74", "re75"], {"distance": "mahalanobis"}),
    ],
)
def test_subclasses_and_weights_equal_matchit(
    lalonde: pd.DataFrame, reference_name: str, covariates: list[str], options: dict
) -> None:
    reference = _reference(reference_name)
    result = match(lalonde, "treat", covariates, **options)
    np.testing.assert_allclose(result.weights, reference["weights"], atol=1e-12)
    ours = pd.Series(result.subclass).where(result.subclass > 0)
    assert _partition(lalonde["id"], ours) == _partition(reference["id"], reference["subclass"])


# ---------------------------------------------------------------------------------------------
# Hand-computed small cases
# ---------------------------------------------------------------------------------------------


def _pairs(result, ids: list[str]) -> set[tuple[str, str]]:
    frame = result.matched.assign(id=[ids[i] for i in result.matched.index])
    out = set()
    for _, group in frame.groupby("subclass"):
        treated = group.loc[group["treat"] == 1, "id"].tolist()
        for control in group.loc[group["treat"] == 0, "id"]:
            out.add((treated[0], control))
    return out


def test_greedy_order_largest_score_first_changes_the_pairs() -> None:
    # T1 (0.8) goes first and takes C1 (0.76); T2 (0.7) then gets C2 (0.6). Matching in data
    # order with T2 listed first, T2 takes C1 (|0.7-0.76| = .06 < .1) and T1 is left with C2.
    toy = pd.DataFrame({"treat": [1, 1, 0, 0], "ps": [0.7, 0.8, 0.76, 0.6]})
    ids = ["T2", "T1", "C1", "C2"]
    largest = match(toy, "treat", [], distance=toy["ps"])
    assert _pairs(largest, ids) == {("T1", "C1"), ("T2", "C2")}
    in_data_order = match(toy, "treat", [], distance=toy["ps"], m_order="data")
    assert _pairs(in_data_order, ids) == {("T2", "C1"), ("T1", "C2")}


def test_equidistant_controls_tie_to_the_lower_score() -> None:
    # MatchIt's nn_matchC_vec keeps the left (lower-distance) control when |left| <= |right|.
    toy = pd.DataFrame({"treat": [1, 0, 0], "ps": [0.5, 0.75, 0.25]})
    result = match(toy, "treat", [], distance=toy["ps"])
    assert _pairs(result, ["T", "Chigh", "Clow"]) == {("T", "Clow")}


def test_caliper_in_raw_units_excludes_treated_without_close_control() -> None:
    toy = pd.DataFrame({"treat": [1, 1, 0, 0], "ps": [0.9, 0.5, 0.88, 0.2]})
    with pytest.warns(DroppedRowsWarning, match="1 of 2 treated"):
        result = match(toy, "treat", [], distance=toy["ps"], caliper=0.05, std_caliper=False)
    assert _pairs(result, ["T1", "T2", "C1", "C2"]) == {("T1", "C1")}
    assert result.summary().loc["unmatched", "treated"] == 1
    assert result.weights.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_standardised_caliper_is_in_sds_of_the_distance() -> None:
    ps = [0.9, 0.5, 0.88, 0.2, 0.3]
    toy = pd.DataFrame({"treat": [1, 1, 0, 0, 0], "ps": ps})
    sd = statistics.stdev(ps)  # 0.3136..., over all units as MatchIt's sd(distance)
    # |0.5 - 0.3| = 0.2: inside 0.7 SD (0.2195) but outside 0.6 SD (0.1882).
    inside = match(toy, "treat", [], distance=toy["ps"], caliper=0.7)
    assert inside.caliper == pytest.approx(0.7 * sd)
    assert inside.summary().loc["matched", "treated"] == 2
    with pytest.warns(DroppedRowsWarning):
        outside = match(toy, "treat", [], distance=toy["ps"], caliper=0.6)
    assert outside.summary().loc["matched", "treated"] == 1


def test_ratio_two_matches_in_rounds_and_weights_as_matchit() -> None:
    # Round 1: T1 (0.9) takes C1 (0.85); T2 (0.5) takes C2 (0.52). Round 2: T1 takes C3 (0.1);
    # T2 finds none. (Taking both of T1's matches first would have given T1 C1 and C2.)
    toy = pd.DataFrame({"treat": [1, 1, 0, 0, 0], "ps": [0.9, 0.5, 0.85, 0.52, 0.1]})
    ids = ["T1", "T2", "C1", "C2", "C3"]
    with pytest.warns(UserWarning, match="Only 3 controls for 2 focal units"):
        result = match(toy, "treat", [], distance=toy["ps"], ratio=2)
    assert _pairs(result, ids) == {("T1", "C1"), ("T1", "C3"), ("T2", "C2")}
    # Control weights: 1/2 for each of T1's controls, 1 for T2's; scaled to sum to 3 controls.
    raw = np.array([0.5, 1.0, 0.5])
    expected_controls = raw * 3 / raw.sum()
    np.testing.assert_allclose(result.weights, [1.0, 1.0, *expected_controls])


def test_with_replacement_reuses_the_nearest_control_and_weights_by_use() -> None:
    toy = pd.DataFrame({"treat": [1, 1, 1, 0, 0, 0], "ps": [0.9, 0.8, 0.2, 0.85, 0.1, 0.5]})
    result = match(toy, "treat", [], distance=toy["ps"], replace=True)
    # T1 and T2 both take C1 (0.85); T3 takes C2 (0.1); C3 unused.
    assert result.match_matrix[:, 0].tolist() == [3, 3, 4]
    raw = np.array([2.0, 1.0])  # C1 serves two treated, C2 one
    np.testing.assert_allclose(result.weights[3:5], raw * 2 / raw.sum())
    assert result.weights[5] == 0
    assert (result.subclass == 0).all()  # no pairs with replacement, as MatchIt


def test_two_to_one_with_replacement_takes_distinct_nearest_controls() -> None:
    toy = pd.DataFrame({"treat": [1, 0, 0, 0], "ps": [0.5, 0.45, 0.6, 0.1]})
    result = match(toy, "treat", [], distance=toy["ps"], replace=True, ratio=2)
    assert sorted(result.match_matrix[0].tolist()) == [1, 2]


def test_exact_matching_weights_by_hand() -> None:
    toy = pd.DataFrame(
        {
            "treat": [1, 0, 0, 1, 1, 0, 1],
            "sex": ["f", "f", "f", "m", "m", "m", "x"],
        }
    )
    with pytest.warns(DroppedRowsWarning, match="exact: 1 of 4 treated rows share no stratum"):
        result = match(toy, "treat", ["sex"], method="exact")
    # f: 1 treated, 2 controls -> controls 1/2 each; m: 2 treated, 1 control -> control 2;
    # x: no control -> treated unmatched. Controls scaled to sum to the 3 matched controls.
    raw = np.array([0.5, 0.5, 2.0])
    np.testing.assert_allclose(result.weights[[1, 2, 5]], raw * 3 / raw.sum())
    assert result.weights[[0, 3, 4]].tolist() == [1.0, 1.0, 1.0]
    assert result.weights[6] == 0 and result.subclass[6] == 0
    assert result.summary().loc["unmatched", "treated"] == 1


def test_exact_matching_ate_weights_by_hand() -> None:
    toy = pd.DataFrame({"treat": [1, 0, 0, 1, 1, 0], "g": list("aaabbb")})
    result = match(toy, "treat", ["g"], method="exact", estimand="ATE")
    # a: 1 T, 2 C (total 3): T weight 3, C weight 3/2; b: 2 T, 1 C: T 3/2, C 3.
    treated_raw = np.array([3.0, 1.5, 1.5])
    control_raw = np.array([1.5, 1.5, 3.0])
    np.testing.assert_allclose(result.weights[[0, 3, 4]], treated_raw * 3 / treated_raw.sum())
    np.testing.assert_allclose(result.weights[[1, 2, 5]], control_raw * 3 / control_raw.sum())


def test_cem_sturges_bins_by_hand() -> None:
    # n = 8 rows -> ceiling(log2(8) + 1) = 4 equal bins on [0, 8]: cut points 2, 4, 6, a value
    # on a cut point going to the upper bin (R's findInterval).
    toy = pd.DataFrame({"treat": [1, 0, 1, 0, 1, 0, 1, 0], "x": [0, 1.9, 2, 3.9, 4, 6, 7.5, 8]})
    result = match(toy, "treat", ["x"], method="cem")
    # bins: {0 T, 1.9 C}, {2 T, 3.9 C}, {4 T} (no control), {6 C, 7.5 T, 8 C}. Control weights
    # n_t/n_c per bin: 1, 1, 1/2, 1/2, scaled to sum to the 4 matched controls.
    raw = np.array([1.0, 1.0, 0.5, 0.5])
    np.testing.assert_allclose(result.weights[[1, 3, 5, 7]], raw * 4 / raw.sum())
    assert result.weights[[0, 2, 4, 6]].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert result.subclass[0] == result.subclass[1] != result.subclass[2]
    assert result.subclass[6] == result.subclass[7] == result.subclass[5]


def test_cem_user_cutpoints() -> None:
    toy = pd.DataFrame({"treat": [1, 0, 1, 0], "x": [1.0, 2.0, 3.0, 9.0]})
    result = match(toy, "treat", ["x"], method="cem", cutpoints={"x": [2.5]})
    assert result.subclass[0] == result.subclass[1]
    assert result.subclass[2] == result.subclass[3]


def test_nearest_within_exact_strata() -> None:
    toy = pd.DataFrame(
        {"treat": [1, 1, 0, 0, 0], "ps": [0.5, 0.5, 0.51, 0.2, 0.9], "sex": list("fmmfm")}
    )
    result = match(toy, "treat", [], distance=toy["ps"], exact=["sex"])
    # f: T0 can only take C3 (0.2); m: T1 takes C2 (0.51), not C4.
    assert _pairs(result, ["T0", "T1", "C2", "C3", "C4"]) == {("T0", "C3"), ("T1", "C2")}


def test_atc_matches_each_control_to_a_treated_unit() -> None:
    toy = pd.DataFrame({"treat": [0, 0, 1, 1, 1], "ps": [0.1, 0.4, 0.12, 0.9, 0.45]})
    result = match(toy, "treat", [], distance=toy["ps"], estimand="ATC")
    # Smallest first: C0 (0.1) takes T2 (0.12); C1 (0.4) takes T4 (0.45).
    assert result.weights.tolist() == [1, 1, 1, 0, 1]
    assert result.subclass[0] == result.subclass[2]


# ---------------------------------------------------------------------------------------------
# Against a transliteration of MatchIt's nn_matchC_vec (scan left and right in the joint sort)
# ---------------------------------------------------------------------------------------------


def _matchit_scan(
    ps: np.ndarray, treat: np.ndarray, ratio: int, caliper: float | None
) -> list[list[int]]:
    order_all = sorted(range(len(ps)), key=lambda i: (ps[i], i))
    pos = {unit: p for p, unit in enumerate(order_all)}
    treated = [i for i in range(len(ps)) if treat[i] == 1]
    sequence = sorted(range(len(treated)), key=lambda j: (-ps[treated[j]], j))
    free = [treat[u] == 0 for u in order_all]
    out: list[list[int]] = [[] for _ in treated]
    for _ in range(ratio):
        for j in sequence:
            ii = pos[treated[j]]
            d = ps[treated[j]]
            left = next((k for k in range(ii - 1, -1, -1) if free[k]), None)
            right = next((k for k in range(ii + 1, len(ps)) if free[k]), None)
            if caliper is not None:
                if left is not None and abs(d - ps[order_all[left]]) > caliper:
                    left = None
                if right is not None and abs(ps[order_all[right]] - d) > caliper:
                    right = None
            if left is not None and right is not None:
                k = left if abs(ps[order_all[left]] - d) <= abs(ps[order_all[right]] - d) else right
            else:
                k = left if left is not None else right
            if k is None:
                continue
            free[k] = False
            out[j].append(order_all[k])
    return out


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 12)), min_size=2, max_size=40).filter(
        lambda rows: 0 < sum(t for t, _ in rows) < len(rows)
    ),
    ratio=st.integers(1, 3),
    caliper=st.one_of(st.none(), st.sampled_from([0.05, 0.1, 0.3])),
)
def test_nearest_equals_matchit_scan_including_ties(data, ratio, caliper) -> None:
    treat = np.array([t for t, _ in data])
    ps = np.array([v / 12 for _, v in data])  # a coarse grid: many exact ties
    expected = _matchit_scan(ps, treat, ratio, caliper)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = match(
            pd.DataFrame({"treat": treat}),
            "treat",
            [],
            distance=ps,
            ratio=ratio,
            caliper=caliper,
            std_caliper=False,
        )
    got = [[int(c) for c in row if c >= 0] for row in result.match_matrix]
    assert got == expected


def test_large_random_problem_equals_matchit_scan() -> None:
    rng = np.random.default_rng(3)
    treat = (rng.random(3000) < 0.2).astype(int)
    ps = np.round(rng.beta(2, 5, 3000) + 0.2 * treat, 3)
    expected = _matchit_scan(ps, treat, 1, 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = match(
            pd.DataFrame({"treat": treat}),
            "treat",
            [],
            distance=ps,
            caliper=0.01,
            std_caliper=False,
        )
    assert [[int(c) for c in row if c >= 0] for row in result.match_matrix] == expected


# ---------------------------------------------------------------------------------------------
# Balance statistics against their definitions
# ---------------------------------------------------------------------------------------------


def test_balance_statistics_by_definition_with_weights() -> None:
    toy = pd.DataFrame(
        {
            "treat": [1, 1, 1, 0, 0, 0, 0],
            "ps": [0.9, 0.8, 0.2, 0.85, 0.1, 0.5, 0.35],
            "age": [70.0, 80.0, 60.0, 75.0, 58.0, 50.0, 40.0],
            "female": [1, 0, 1, 1, 0, 0, 1],
        }
    )
    result = match(toy, "treat", ["age", "female"], distance=toy["ps"], replace=True)
    table = result.balance().table
    w = result.weights
    # Controls used: row 3 twice (raw 2), row 4 once (raw 1) -> weights 4/3 and 2/3.
    np.testing.assert_allclose(w, [1, 1, 1, 4 / 3, 2 / 3, 0, 0])
    age_t = np.array([70.0, 80.0, 60.0])
    sd_t = statistics.stdev(age_t)  # treated SD in the unmatched sample (ATT)
    mean_c_after = (75 * 4 / 3 + 58 * 2 / 3) / 2
    assert table.loc["age", "smd_after"] == pytest.approx((age_t.mean() - mean_c_after) / sd_t)
    assert table.loc["age", "smd_before"] == pytest.approx(
        (age_t.mean() - np.mean([75, 58, 50, 40])) / sd_t
    )
    # Weighted control variance, reliability weights: sum w (x - m)^2 * W / (W^2 - sum w^2).
    wc = np.array([4 / 3, 2 / 3])
    xc = np.array([75.0, 58.0])
    var_c = (wc * (xc - mean_c_after) ** 2).sum() * wc.sum() / (wc.sum() ** 2 - (wc**2).sum())
    assert table.loc["age", "var_ratio_after"] == pytest.approx(age_t.var(ddof=1) / var_c)
    # Binary: raw difference in proportions by default (cobalt), 2/3 vs (4/3)/2.
    assert table.loc["female", "smd_after"] == pytest.approx(2 / 3 - (4 / 3) / 2)
    # eCDF: treated 60, 70, 80 (1/3 each); controls 58 (1/3), 75 (2/3), 50 and 40 weight 0.
    # Differences at the sample's distinct values 40, 50, 58, 60, 70, 75, 80:
    diffs = [0, 0, 1 / 3, 0, 1 / 3, 1 / 3, 0]
    assert table.loc["age", "ecdf_max_after"] == pytest.approx(max(diffs))
    assert table.loc["age", "ecdf_mean_after"] == pytest.approx(np.mean(diffs))


def test_ate_smd_uses_pooled_sd() -> None:
    toy = pd.DataFrame({"treat": [1, 1, 0, 0, 0], "x": [1.0, 3.0, 2.0, 4.0, 9.0], "g": [1] * 5})
    # One CEM bin for x: everyone matched, so only the "before" statistics matter here.
    result = match(toy, "treat", ["x"], method="cem", cutpoints={"x": 1}, estimand="ATE")
    table = result.balance().table
    pooled = math.sqrt((statistics.variance([1, 3]) + statistics.variance([2, 4, 9])) / 2)
    assert table.loc["x", "smd_before"] == pytest.approx((2 - 5) / pooled)


def test_love_plot_draws_before_and_after(lalonde: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    ax = match(lalonde, "treat", LALONDE_COVARIATES).love_plot()
    assert len(ax.collections) == 2
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "distance"


# ---------------------------------------------------------------------------------------------
# Effect estimation
# ---------------------------------------------------------------------------------------------


def test_difference_estimate_and_pair_clustered_se_by_hand(lalonde: pd.DataFrame) -> None:
    result = match(lalonde, "treat", LALONDE_COVARIATES)
    effect = result.estimate("re78")
    m = result.matched
    y, t, g = m["re78"].to_numpy(), m["treat"].to_numpy(), m["subclass"].to_numpy()
    assert effect.estimate == pytest.approx(y[t == 1].mean() - y[t == 0].mean())
    # CR1 sandwich (sandwich::vcovCL default): (X'X)^-1 sum_g X_g'u_g u_g'X_g (X'X)^-1
    # * G/(G-1) * (N-1)/(N-K).
    x = np.column_stack([np.ones_like(t), t]).astype(float)
    beta = np.linalg.solve(x.T @ x, x.T @ y)
    u = y - x @ beta
    meat = np.zeros((2, 2))
    for cluster in np.unique(g):
        s = x[g == cluster].T @ u[g == cluster]
        meat += np.outer(s, s)
    bread = np.linalg.inv(x.T @ x)
    n, k, n_g = len(y), 2, len(np.unique(g))
    vcov = bread @ meat @ bread * n_g / (n_g - 1) * (n - 1) / (n - k)
    assert effect.std_error == pytest.approx(math.sqrt(vcov[1, 1]), rel=1e-9)
    assert effect.n_clusters == 185
    assert effect.conf_low < effect.estimate < effect.conf_high


def test_poisson_rate_ratio_is_ratio_of_weighted_means() -> None:
    rng = np.random.default_rng(0)
    n = 400
    data = pd.DataFrame({"treat": np.repeat([1, 0], n // 2), "ps": rng.random(n)})
    data["visits"] = rng.poisson(np.where(data["treat"] == 1, 3.0, 2.0))
    result = match(data, "treat", [], distance=data["ps"], ratio=1)
    effect = result.estimate("visits", model="poisson")
    m = result.matched
    expected = m.loc[m.treat == 1, "visits"].mean() / m.loc[m.treat == 0, "visits"].mean()
    assert effect.estimate == pytest.approx(expected, rel=1e-8)
    assert effect.scale == "rate ratio"
    assert effect.covers(1.5)


def test_cox_recovers_a_known_hazard_ratio() -> None:
    rng = np.random.default_rng(11)
    n = 3000
    data = pd.DataFrame({"treat": np.repeat([1, 0], n // 2), "ps": rng.random(n)})
    hazard = np.where(data["treat"] == 1, 0.2, 0.1)  # true HR 2
    event_time = rng.exponential(1 / hazard)
    data["time"] = np.minimum(event_time, 5.0)
    data["died"] = (event_time <= 5.0).astype(int)
    effect = match(data, "treat", [], distance=data["ps"]).estimate(
        "died", model="cox", time="time"
    )
    assert effect.scale == "hazard ratio"
    assert effect.covers(2.0)
    assert 1.6 < effect.estimate < 2.5


def test_cox_refuses_unequal_weights() -> None:
    toy = pd.DataFrame(
        {
            "treat": [1, 1, 1, 0, 0],
            "ps": [0.9, 0.8, 0.15, 0.85, 0.1],
            "t": [1, 2, 3, 4, 5],
            "e": [1, 0, 1, 1, 0],
        }
    )
    result = match(toy, "treat", [], distance=toy["ps"], replace=True)
    with pytest.raises(MatchingError, match="equal matching weights"):
        result.estimate("e", model="cox", time="t")


def test_effect_to_frame_and_summary(lalonde: pd.DataFrame) -> None:
    effect = match(lalonde, "treat", LALONDE_COVARIATES).estimate("re78")
    frame = effect.to_frame()
    assert frame.loc[0, "estimate"] == effect.estimate
    assert list(effect.summary().columns)[:3] == ["outcome", "scale", "estimate"]


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_missing_treatment_values_are_named() -> None:
    toy = pd.DataFrame({"treat": [1, None, 0], "x": [1, 2, 3]})
    with pytest.raises(
        MatchingError, match=r"'treat' has 1 missing values \(first row labels \[1\]\)"
    ):
        match(toy, "treat", ["x"])


def test_non_binary_treatment_is_refused() -> None:
    toy = pd.DataFrame({"treat": [1, 2, 0], "x": [1, 2, 3]})
    with pytest.raises(MatchingError, match="must hold 0/1"):
        match(toy, "treat", ["x"])


def test_missing_covariate_values_are_named() -> None:
    toy = pd.DataFrame({"treat": [1, 0, 0], "x": [1.0, np.nan, 3.0]})
    with pytest.raises(MatchingError, match="Covariate 'x' has 1 missing"):
        match(toy, "treat", ["x"])


def test_unknown_column_and_method_are_named() -> None:
    toy = pd.DataFrame({"treat": [1, 0, 0], "x": [1.0, 2.0, 3.0]})
    with pytest.raises(MatchingError, match=r"Covariates \['age'\] are not in the data"):
        match(toy, "treat", ["age"])
    with pytest.raises(MatchingError, match="'method' parameter of match must be one of"):
        match(toy, "treat", ["x"], method="optimal")
    with pytest.raises(MatchingError, match="ATT or ATC"):
        match(toy, "treat", ["x"], estimand="ATE")


def test_propensity_model_rejects_collinear_covariates() -> None:
    x = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0], [4.0, 8.0]])
    with pytest.raises(MatchingError, match="rank deficient"):
        fit_propensity_score(x, np.array([0, 1, 0, 1]))


def test_match_accepts_a_cohort_study_like_object(lalonde: pd.DataFrame) -> None:
    class Study:
        data = lalonde
        treatment = "treat"
        covariates = ("age", "educ", "race", "married", "nodegree", "re74", "re75")

    result = match(Study())
    assert result.summary().loc["matched", "control"] == 185


# ---------------------------------------------------------------------------------------------
# cohort_study on the demo KID (about 50,000 people; ~130 frailty-team and ~240 safe-and-well
# enrolees), against the generator's truth.json
# ---------------------------------------------------------------------------------------------

PROPOSAL = Path(__file__).parents[1] / "proposals" / "programme-evaluation.yaml"


@pytest.fixture(scope="module")
def programme_kid(demo_kid: Path):
    from kidresearch.access import connect

    with connect(PROPOSAL, demo_kid, user="cohort-tests") as session:
        yield session


@pytest.fixture(scope="module")
def frailty_study(programme_kid):
    from kidresearch.cohorts import cohort_study

    return cohort_study(
        programme_kid,
        programme="integrated_frailty_team",
        outcomes=["emergency_admissions", "ae_attendances", "death"],
    )


def test_cohort_study_counts_match_a_pandas_reference(programme_kid) -> None:
    from kidresearch.cohorts import cohort_study

    # controls="itt": raw counts for everyone (the default reweights controls' outcomes).
    data = cohort_study(
        programme_kid, outcomes=["emergency_admissions", "ae_attendances"], controls="itt"
    ).data
    sample = pd.concat([data[data.treated == 1].head(40), data[data.treated == 0].head(40)])
    spells = programme_kid.to_pandas(programme_kid.table("inpatient_spells"))
    spells = spells[spells.is_emergency & spells.person_id.isin(sample.person_id)]
    spells["admission_date"] = pd.to_datetime(spells["admission_date"])
    for _, row in sample.iterrows():
        mine = spells[spells.person_id == row.person_id].admission_date
        index = pd.Timestamp(row.index_date)
        before = ((mine >= index - pd.Timedelta(days=365)) & (mine < index)).sum()
        after = ((mine >= index) & (mine < index + pd.Timedelta(days=365))).sum()
        assert row.emergency_admissions_prior_12m == before
        assert row.emergency_admissions == after
    assert (data.age >= 65).all()
    assert set(data.treated) == {0, 1}
    treated_dates = set(data.loc[data.treated == 1, "index_date"])
    assert set(data.loc[data.treated == 0, "index_date"]) <= treated_dates


def test_cohort_study_frailty_covariates_match_a_pandas_reference(
    programme_kid, frailty_study
) -> None:
    """Full eFI (deficits ever coded before the index date, Clegg et al. 2016), polypharmacy
    (5+ distinct BNF chapter 1-15 substances in the 365 days before) and living alone,
    recomputed here in pandas for a sample of rows."""
    data = frailty_study.data
    assert {"polypharmacy", "efi_mild", "efi_moderate", "efi_severe", "lives_alone"} <= set(
        frailty_study.covariates
    )
    sample = pd.concat([data[data.treated == 1].head(30), data[data.treated == 0].head(30)])
    ids = set(sample.person_id)
    codes = load("efi_deficits", dtype={"snomed_code": str}).dropna(subset=["snomed_code"])
    gp = programme_kid.to_pandas(programme_kid.table("gp_events"))
    gp = gp[gp.person_id.isin(ids)].merge(codes[["snomed_code", "deficit"]], on="snomed_code")
    gp["event_date"] = pd.to_datetime(gp["event_date"])
    rx = programme_kid.to_pandas(programme_kid.table("prescriptions"))
    rx = rx[rx.person_id.isin(ids) & rx.bnf_chapter.between(1, 15)].copy()
    rx["issue_date"] = pd.to_datetime(rx["issue_date"])
    persons = programme_kid.to_pandas(programme_kid.table("persons"))
    for col in ("registration_start", "registration_end", "date_of_death"):
        persons[col] = pd.to_datetime(persons[col])
    for _, row in sample.iterrows():
        index = pd.Timestamp(row.index_date)
        mine = gp[(gp.person_id == row.person_id) & (gp.event_date < index)]
        deficits = mine.deficit.nunique()  # no lower date bound: ever coded before the index
        drugs = rx[
            (rx.person_id == row.person_id)
            & (rx.issue_date >= index - pd.Timedelta(days=365))
            & (rx.issue_date < index)
        ].bnf_code.str[:9]
        poly = int(drugs.nunique() >= 5)
        count = deficits + poly
        assert row.efi_deficits == deficits
        assert row.polypharmacy == poly
        assert row.efi_count == count
        # Clegg et al. 2016 cut-offs on the count: fit 0-4, mild 5-8, moderate 9-12, severe 13+.
        expected = "fit" if count <= 4 else "mild" if count <= 8 else "moderate"
        expected = expected if count <= 12 else "severe"
        assert row.efi_category == expected
        assert row.efi_mild == (expected == "mild")
        home = persons.loc[persons.person_id == row.person_id, "household_id"].iloc[0]
        if pd.isna(home):
            assert row.lives_alone == 0
            continue
        members = persons[
            (persons.household_id == home)
            & (persons.registration_start <= index)
            & (persons.registration_end.isna() | (persons.registration_end >= index))
            & (persons.date_of_death.isna() | (persons.date_of_death > index))
        ]
        assert row.lives_alone == (len(members) == 1)
    assert data.lives_alone.between(0, 1).all() and 0 < data.lives_alone.mean() < 1


def test_frailty_team_effect_recovered_and_naive_comparison_is_not(
    frailty_study, demo_truth: dict
) -> None:
    import statsmodels.api as sm

    truth = demo_truth["programmes"]["integrated_frailty_team"]["realised_rate_ratio"]
    result = frailty_study.match(ratio=3, exact=[])
    effect = result.estimate("emergency_admissions", model="poisson")
    assert effect.covers(truth), (effect.estimate, effect.conf_low, effect.conf_high, truth)
    # Naive: all enrolees against all candidates, Poisson with robust errors.
    data = frailty_study.data
    naive = sm.GLM(
        data.emergency_admissions,
        sm.add_constant(data.treated.astype(float)),
        family=sm.families.Poisson(),
    ).fit(cov_type="HC1")
    low, high = np.exp(naive.conf_int().iloc[1])
    assert not (low <= truth <= high), (low, high, truth)
    # With ~130 treated, chance imbalance alone has an SD of about 0.1 SMD: the strict 0.1 check
    # belongs to the Kent-scale run (benchmarks); here every covariate must be within 0.15.
    balance = result.balance().table
    assert (balance["smd_before"].abs().max()) > 0.5
    assert (balance.drop(index="distance")["smd_after"].abs() < 0.15).all()


def test_safe_and_well_visits_show_no_significant_ae_effect(programme_kid, demo_truth) -> None:
    from kidresearch.cohorts import cohort_study

    assert demo_truth["programmes"]["safe_and_well_visit"]["ae_rate_ratio"] == 1.0
    study = cohort_study(
        programme_kid, programme="safe_and_well_visit", outcomes=["ae_attendances"]
    )
    result = study.match(ratio=3, exact=[])
    # With ~130 treated chance imbalance is about 0.1 SMD, so the matched ratio on the demo KID
    # can sit near the 5% boundary in some draws of the controls' index dates; at 1% it is
    # never significant (docs/matching.md; the 5% check is the Kent-scale benchmark's).
    effect = result.estimate("ae_attendances", model="poisson", level=0.99)
    assert effect.covers(1.0), (effect.estimate, effect.conf_low, effect.conf_high)
    data = study.data
    crude = (
        data[data.treated == 1].ae_attendances.mean()
        / data[data.treated == 0].ae_attendances.mean()
    )
    assert crude > 1.3  # the naive comparison suggests harm
    assert effect.estimate < crude - 0.2


def test_cohort_study_match_defaults_to_same_index_month(frailty_study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = frailty_study.match()
    matched = result.matched
    months = matched.groupby("subclass")["index_month"].nunique()
    assert (months == 1).all()


def test_cohort_study_rejects_unknown_outcomes(programme_kid) -> None:
    from kidresearch.cohorts import cohort_study

    with pytest.raises(MatchingError, match=r"Unknown outcomes \['falls'\]"):
        cohort_study(programme_kid, outcomes=["falls"])


# ---------------------------------------------------------------------------------------------
# A scenario with a known NULL frailty-team effect (tests/data/null_frailty_team.yaml): the
# matched estimates must cover no effect, where the naive comparison must not.
# ---------------------------------------------------------------------------------------------


def _scenario_kid(tmp_path_factory: pytest.TempPathFactory, scenario: str, key_text: str) -> Path:
    """Generate ``tests/data/<scenario>.yaml``, key and build it once per test run.

    A fixed linkage key and a fixed proposal secret (:func:`_fix_proposal_secret`) make the
    run reproducible: matching breaks ties between controls with equal propensity scores in
    pseudonym order, so each key gives a slightly different matched set (on the null scenario
    the cost estimate moved by about one standard error across eight random keys).
    """
    from conftest import _once

    from kidresearch.linkage import build
    from kidresearch.synth import generate

    def make(out: Path) -> None:
        generate(Path(__file__).parent / "data" / f"{scenario}.yaml", out=out / "synth")
        key = out / "pseudonymisation.key"
        key.write_text(key_text * 4 + "\n")
        key.chmod(0o600)
        build(out / "synth" / "raw", out / "kid", key_file=key, progress=False)
        _fix_proposal_secret(out / "kid")

    return _once(tmp_path_factory, scenario, make)


@pytest.fixture(scope="session")
def null_programme_kid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The null scenario generated, keyed and built once per test run (about 30 s)."""
    return _scenario_kid(tmp_path_factory, "null_frailty_team", "0123456789abcdef")


def _fix_proposal_secret(kid_dir: Path) -> None:
    """Write a fixed proposal secret before the first session would make a random one.

    The pseudonyms a proposal sees are keyed by this secret, and the controls' index dates are
    drawn in pseudonym order, so a random secret gives a different draw (and matched set) on
    every build: on the null scenario the cost interval missed 0 for 1 of 6 random secrets.
    """
    from kidresearch.access import SECRET_NAME

    path = kid_dir / "restricted" / SECRET_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("0123456789abcdef" * 4)
    path.chmod(0o600)


def test_null_programme_matched_estimates_cover_no_effect(null_programme_kid: Path) -> None:
    import json

    from kidresearch.access import connect
    from kidresearch.cohorts import cohort_study

    truth = json.loads((null_programme_kid / "synth" / "truth.json").read_text())
    team = truth["programmes"]["integrated_frailty_team"]
    assert team["realised_rate_ratio"] == 1.0 and team["att_cost_gbp_12m"] == 0.0
    with connect(PROPOSAL, null_programme_kid / "kid", user="cohort-tests") as session:
        study = cohort_study(
            session,
            programme="integrated_frailty_team",
            outcomes=["emergency_admissions", "cost_gbp"],
        )
    data = study.data
    treated, control = data[data.treated == 1], data[data.treated == 0]
    assert len(treated) > 500
    # Naive: Poisson rate ratio of the unmatched groups with a Wald interval on the log scale.
    events = treated.emergency_admissions.sum(), control.emergency_admissions.sum()
    days = treated.follow_up_days.sum(), control.follow_up_days.sum()
    naive = (events[0] / days[0]) / (events[1] / days[1])
    naive_low = naive * math.exp(-1.96 * math.sqrt(1 / events[0] + 1 / events[1]))
    assert naive_low > 1.5  # enrolees are frailer: a spurious doubling or so
    matched = study.match()
    rate_ratio = matched.estimate("emergency_admissions", model="poisson", time="follow_up_days")
    assert rate_ratio.covers(team["realised_rate_ratio"]), rate_ratio.to_frame()
    # Cost is heavy-tailed and noisy at this size (standard error about £550 per enrolee), so
    # besides coverage at this key the test asks that matching remove most of the naive
    # difference (about £4,200 here; the old censored design kept about half of it).
    cost = matched.estimate("cost_gbp")
    naive_cost = treated.cost_gbp.mean() - control.cost_gbp.mean()
    assert naive_cost > 2000
    assert abs(cost.estimate - team["att_cost_gbp_12m"]) < 0.4 * naive_cost, cost.to_frame()
    assert cost.covers(team["att_cost_gbp_12m"]), cost.to_frame()
    admissions = matched.estimate("emergency_admissions")
    assert admissions.covers(-team["att_emergency_admissions_12m"]), admissions.to_frame()


# ---------------------------------------------------------------------------------------------
# Controls who enrol later: censoring at enrolment with inverse probability of censoring weights
# ---------------------------------------------------------------------------------------------


def _spell(person: int, day: dt.date) -> dict[str, object]:
    return {
        "person_id": person,
        "provider_code": "RVV",
        "admission_date": day,
        "discharge_date": day,
        "admission_method": "21",
        "primary_diagnosis_icd10": "I21",
        "los_days": 0,
        "is_emergency": True,
        "is_elective": False,
    }


def test_censoring_weights_by_hand_with_interval_hazards() -> None:
    """Four controls, index 1 March 2024, 360 days in 12 intervals of 30 days. Control 13
    enrols on day 100 (interval 3: days 90-119), the only censoring, so the model falls back
    to interval hazards: 1 of 4 at risk in interval 3, so the others' weight is 4/3 from
    interval 3 on. Hand totals (sum over intervals of weight x outcome, censored intervals 0):
    control 10 admissions on days 10 and 200 -> 1 + 4/3; control 13 admissions on days 20 and 95
    (censored) -> 1; control 11 costs 600 on day 300 -> 800; control 12 dies on day 150 ->
    death 4/3, follow-up 90 + 60 * 4/3 = 170 days; the others 90 + 270 * 4/3 = 450, control 13
    90. The treated row is left as it is."""
    from kidresearch._examples import toy_kid
    from kidresearch.cohorts import _censoring_weights

    index = dt.date(2024, 3, 1)
    on = lambda days: index + dt.timedelta(days=days)  # noqa: E731
    kid = toy_kid(
        {
            "inpatient_spells": [_spell(10, on(10)), _spell(10, on(200)), _spell(13, on(20))]
            + [_spell(13, on(95)), _spell(1, on(5))],
            "costs": [
                {"person_id": 11, "activity_date": on(300), "service_line": "x", "cost_gbp": 600.0}
            ],
        }
    )
    cohort = pd.DataFrame(
        {
            "row_id": np.arange(5),
            "person_id": [1, 10, 11, 12, 13],
            "index_date": pd.Timestamp(index),
            "treated": [1, 0, 0, 0, 0],
            "later_enrolment": [pd.NaT, pd.NaT, pd.NaT, pd.NaT, pd.Timestamp(on(100))],
            "date_of_death": [pd.NaT, pd.NaT, pd.NaT, pd.Timestamp(on(150)), pd.NaT],
            "age": [80.0, 70.0, 75.0, 85.0, 90.0],
            "efi_deficits": 0,
            "emergency_admissions": [1, 2, 0, 0, 2],
            "cost_gbp": [0.0, 0.0, 600.0, 0.0, 0.0],
            "death": [0, 0, 0, 1, 0],
            "follow_up_days": [360, 360, 360, 150, 360],
        }
    )
    end = pd.Series(pd.Timestamp(on(360)), index=cohort.index)
    end[3] = pd.Timestamp(on(150))
    out = _censoring_weights(
        kid,
        cohort,
        ["age"],
        ["emergency_admissions", "cost_gbp", "death"],
        follow_up_days=360,
        n_intervals=12,
        observed_end=end,
        seed=0,
    )
    assert out.emergency_admissions.tolist() == pytest.approx([1, 1 + 4 / 3, 0, 0, 1])
    assert out.cost_gbp.tolist() == pytest.approx([0, 0, 800, 0, 0])
    assert out.death.tolist() == pytest.approx([0, 0, 0, 4 / 3, 0])
    assert out.follow_up_days.tolist() == pytest.approx([360, 450, 450, 170, 90])
    assert out.ipcw.tolist() == pytest.approx([1, 4 / 3, 4 / 3, 4 / 3, 0])
    assert out.censored_day.isna().tolist() == [True, True, True, True, False]


def test_poisson_rate_ignores_rows_without_person_time_and_refuses_events_without() -> None:
    # Rates by hand: treated (2 + 4) / (10 + 20) = 0.2; controls (3 + 0) / (10 + 0) = 0.3; the
    # control without person-time (e.g. censored at once) adds nothing: ratio 2/3.
    data = pd.DataFrame(
        {
            "treat": [1, 1, 0, 0],
            "ps": [0.5, 0.6, 0.5, 0.6],
            "y": [2.0, 4.0, 3.0, 0.0],
            "t": [10.0, 20.0, 10.0, 0.0],
        }
    )
    result = match(data, "treat", [], distance=data["ps"])
    assert result.estimate("y", model="poisson", time="t").estimate == pytest.approx(2 / 3)
    data.loc[3, "y"] = 1.0
    with pytest.raises(MatchingError, match="Person-time column 't' must be >= 0"):
        match(data, "treat", [], distance=data["ps"]).estimate("y", model="poisson", time="t")


def test_cohort_study_rejects_an_unknown_controls_design(programme_kid) -> None:
    from kidresearch.cohorts import cohort_study

    with pytest.raises(MatchingError, match="controls must be 'censor'"):
        cohort_study(programme_kid, controls="per-protocol")


@pytest.fixture(scope="session")
def strong_programme_kid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A strong-effect scenario (rate ratio 0.6, common enrolment), built once per run."""
    return _scenario_kid(tmp_path_factory, "strong_frailty_team", "fedcba9876543210")


def test_censoring_controls_at_later_enrolment_removes_the_dilution(
    strong_programme_kid: Path,
) -> None:
    """truth.json's realised rate ratio compares enrolees with their own never-enrolled
    counterfactual. Controls followed whatever they do (controls="itt") include some who enrol
    and get the team's benefit, which pulls the matched ratio towards 1; censoring them at
    enrolment with inverse probability of censoring weights (the default) undoes that on the
    same matched pairs. On this scenario (true ratio 0.4, about a quarter of matched controls
    enrol within their year) the ITT ratio is 0.462 (0.372-0.574), missing the realised 0.359,
    and the censored one 0.410 (0.326-0.515); over 6 random proposal secrets (which reorder
    the controls' index-date draw) the censored ratio was 0.85-0.94 of the ITT one and always
    covered the truth. Over 30 data seeds of the milder
    benchmarks/scenarios/sim_strong_frailty_team.yaml the log-scale bias went from +0.087 (ITT,
    87% coverage) to +0.039 (97%; docs/matching.md)."""
    import json

    from kidresearch.access import connect
    from kidresearch.cohorts import cohort_study

    truth = json.loads((strong_programme_kid / "synth" / "truth.json").read_text())
    team = truth["programmes"]["integrated_frailty_team"]
    assert team["emergency_rate_ratio"] == 0.4
    effects, pairs = {}, {}
    with (
        connect(PROPOSAL, strong_programme_kid / "kid", user="cohort-tests") as session,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", DroppedRowsWarning)
        for design in ("itt", "censor"):
            study = cohort_study(session, outcomes=["emergency_admissions"], controls=design)
            matched = study.match()
            pairs[design] = matched.matched[["person_id", "subclass"]]
            effects[design] = matched.estimate(
                "emergency_admissions", model="poisson", time="follow_up_days"
            )
            if design == "censor":
                controls = matched.matched[matched.matched.treated == 0]
                enrol_later = controls.censored_day.notna().mean()
    # The design changes only the controls' outcomes, not who is matched to whom.
    pd.testing.assert_frame_equal(pairs["itt"], pairs["censor"])
    assert enrol_later > 0.15
    itt, censor = effects["itt"], effects["censor"]
    assert censor.estimate < 0.97 * itt.estimate, (itt.to_frame(), censor.to_frame())
    assert censor.covers(team["realised_rate_ratio"]), censor.to_frame()


def _confounded_counts(n: int = 600, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = (rng.random(n) < 1 / (1 + np.exp(-x))).astype(int)
    pt = rng.uniform(100, 365, n)
    y = rng.poisson(pt / 365 * np.exp(0.5 * x + math.log(0.7) * t))
    return pd.DataFrame({"treat": t, "x": x, "y": y, "pt": pt})


def test_adjusted_poisson_is_gcomputation_from_a_control_model() -> None:
    """Reference: statsmodels' Poisson GLM with a log person-time offset fitted to the matched
    controls predicts the treated's untreated events; the ratio is observed over predicted.
    With no covariates the influence-function SE must equal the unadjusted pair-clustered
    sandwich (which also has the (N - 1) / (N - K) factor)."""
    import statsmodels.api as sm

    data = _confounded_counts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DroppedRowsWarning)
        result = match(data, "treat", ["x"], caliper=0.5)
    m = result.matched
    ctrl, trt = m[m.treat == 0], m[m.treat == 1]
    fit = sm.GLM(
        ctrl.y, sm.add_constant(ctrl[["x"]]), family=sm.families.Poisson(), offset=np.log(ctrl.pt)
    ).fit()
    predicted = trt.pt * np.exp(fit.params["const"] + fit.params["x"] * trt.x)
    adjusted = result.estimate("y", "poisson", time="pt", adjust=True)
    assert adjusted.estimate == pytest.approx(trt.y.sum() / predicted.sum(), rel=1e-8)
    assert "g-computation" in adjusted.se_method
    assert adjusted.covers(0.7)
    plain = result.estimate("y", "poisson", time="pt")
    none = result.estimate("y", "poisson", time="pt", adjust=[])
    n = len(m)
    assert none.estimate == pytest.approx(plain.estimate, rel=1e-10)
    assert none.std_error * math.sqrt((n - 1) / (n - 2)) == pytest.approx(plain.std_error, rel=1e-8)


def test_adjusted_difference_is_gcomputation_from_a_control_regression() -> None:
    import statsmodels.api as sm

    data = _confounded_counts(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DroppedRowsWarning)
        result = match(data, "treat", ["x"], caliper=0.5)
    m = result.matched
    ctrl, trt = m[m.treat == 0], m[m.treat == 1]
    ols = sm.OLS(ctrl.y, sm.add_constant(ctrl[["x"]])).fit()
    expected = (trt.y - ols.predict(sm.add_constant(trt[["x"]]))).mean()
    assert result.estimate("y", adjust=True).estimate == pytest.approx(expected, rel=1e-8)
    with pytest.raises(MatchingError, match="adjust= is for"):
        result.estimate("y", "cox", time="pt", adjust=True)
