"""Tests of kidresearch.stats against PHEindicatormethods' published reference tables,
independent implementations run here (statsmodels, scipy root-finding) and hand computations.

Reference tables: tests/data/phe_reference (see its README for repository, path and commit).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize
from scipy.stats import norm, poisson
from statsmodels.stats.proportion import proportion_confint

from kidresearch import stats
from kidresearch.stats import StatsError

REF = Path(__file__).parent / "data" / "phe_reference"
Z95 = norm.ppf(0.975)


def _ref(name: str) -> pd.DataFrame:
    return pd.read_csv(REF / name)


def _exact_poisson_by_root(x: int, level: float) -> tuple[float, float]:
    """Exact (Garwood) limits found by root-finding on the Poisson distribution itself."""
    alpha = (1 - level) / 2
    lower = (
        0.0
        if x == 0
        else optimize.brentq(lambda m: poisson.sf(x - 1, m) - alpha, 1e-12, 10 * x + 50)
    )
    upper = optimize.brentq(lambda m: poisson.cdf(x, m) - alpha, 1e-12, 10 * x + 50)
    return lower, upper


# ------------------------------------------------------------------------------------------
# Funnel plots: PHEindicatormethods' own test tables
# ------------------------------------------------------------------------------------------


def test_funnel_proportion_limits_match_phe_reference() -> None:
    data = _ref("funnel_prop_inputs.csv")
    expected = _ref("funnel_prop_outputs.csv")
    limits = stats.funnel_limits(
        data, "numerator", "denominator", statistic="proportion", multiplier=100
    )
    assert len(limits) == len(expected) == 100
    for column in expected.columns:
        np.testing.assert_allclose(limits[column], expected[column], rtol=0, atol=1e-6)
    assert set(limits["method"]) == {"Wilson"}


def test_funnel_proportion_significance_matches_phe_reference() -> None:
    data = _ref("funnel_prop_inputs.csv")
    labelled = stats.funnel_significance(
        data.drop(columns="significance"), "numerator", "denominator", statistic="proportion"
    )
    assert labelled["significance"].astype(str).tolist() == data["significance"].tolist()
    assert len(labelled) == len(data)


@pytest.mark.parametrize("ratio_type", ["count", "isr"])
def test_funnel_ratio_limits_match_phe_reference(ratio_type: str) -> None:
    data = _ref("funnel_ratio_inputs.csv")
    expected = _ref("funnel_ratio_outputs.csv")
    limits = stats.funnel_limits(
        data, "obs", "expected", statistic="ratio", multiplier=100, ratio_type=ratio_type
    )
    np.testing.assert_array_equal(limits["Observed_events"], expected["Observed_events"])
    for side in ("lower", "upper"):
        for tag in ("2s", "3s"):
            exp_col = f"{side}_{tag}_exp_events"
            np.testing.assert_allclose(limits[exp_col], expected[exp_col], rtol=1e-6)
            np.testing.assert_allclose(
                limits[f"{side}_{tag}_limit"], expected[f"{side}_{tag}_{ratio_type}"], rtol=1e-6
            )
    assert limits["statistic"].iloc[0] == f"ratio ({ratio_type})"


def test_funnel_ratio_significance_matches_phe_reference() -> None:
    data = _ref("funnel_ratio_inputs.csv")
    labelled = stats.funnel_significance(
        data.drop(columns="significance"), "obs", "expected", statistic="ratio"
    )
    assert labelled["significance"].astype(str).tolist() == data["significance"].tolist()


def test_funnel_rate_limits_match_phe_reference() -> None:
    data = _ref("funnel_rate_input_funnels.csv")
    expected = _ref("funnel_rate_outputs.csv")
    limits = stats.funnel_limits(
        data,
        "ev",
        rate="rate",
        statistic="rate",
        rate_type="dsr",
        multiplier=1e5,
        years_of_data=3,
    )
    for column in expected.columns:
        np.testing.assert_allclose(limits[column], expected[column], rtol=1e-6)
    assert limits["statistic"].iloc[0] == "rate (dsr per 100,000)"


@pytest.mark.parametrize(
    ("reference", "rate_col", "rate_type", "multiplier"),
    [
        ("dsr_per_100000", "rate_dsr", "dsr", 1e5),
        ("dsr_per_100", "rate_dsr", "dsr", 100),
        ("crude_per_100000", "rate_crude_per_100000", "crude", 1e5),
        ("crude_per_100", "rate_crude_per_100", "crude", 100),
    ],
)
@pytest.mark.parametrize("with_zero", [True, False])
def test_funnel_rate_significance_matches_phe_reference(
    reference: str, rate_col: str, rate_type: str, multiplier: float, with_zero: bool
) -> None:
    data = _ref("funnel_rate_dsr_inputs.csv")
    if not with_zero:
        data = data[data["count"] != 0]
    labelled = stats.funnel_significance(
        data[["count", rate_col, "pop"]],
        "count",
        "pop",
        statistic="rate",
        rate=rate_col,
        rate_type=rate_type,
        multiplier=multiplier,
    )
    column = f"{reference}_{'with' if with_zero else 'without'}_0"
    assert labelled["significance"].astype(str).tolist() == data[column].tolist()


def test_funnel_significance_by_group_uses_each_groups_average() -> None:
    # Two copies of the proportion table, the second with half the numerators: with by= each
    # copy is judged against its own average, so its labels equal those of the copy alone.
    data = _ref("funnel_prop_inputs.csv").drop(columns="significance")
    both = pd.concat([data.assign(g="a"), data.assign(g="b")], ignore_index=True)
    both.loc[both["g"] == "b", "numerator"] *= 0.5
    labelled = stats.funnel_significance(
        both, "numerator", "denominator", statistic="proportion", by="g"
    )
    alone = stats.funnel_significance(data, "numerator", "denominator", statistic="proportion")
    half = stats.funnel_significance(
        data.assign(numerator=data["numerator"] * 0.5),
        "numerator",
        "denominator",
        statistic="proportion",
    )
    got = labelled["significance"].astype(str).to_numpy()
    assert got[: len(data)].tolist() == alone["significance"].astype(str).tolist()
    assert got[len(data) :].tolist() == half["significance"].astype(str).tolist()


def test_funnel_limits_errors_name_the_problem() -> None:
    data = _ref("funnel_ratio_inputs.csv")
    with pytest.raises(StatsError, match="'statistic' must be"):
        stats.funnel_limits(data, "obs", "expected", statistic="pop", multiplier=100)  # type: ignore[arg-type]
    with pytest.raises(StatsError, match="ratio_type"):
        stats.funnel_limits(data, "obs", "expected", statistic="ratio", multiplier=100)
    with pytest.raises(StatsError, match="column 'obs' must be greater than or equal to zero"):
        stats.funnel_significance(
            data.assign(obs=-data["obs"]), "obs", "expected", statistic="ratio"
        )
    with pytest.raises(StatsError, match="column 'expected' must be greater than zero"):
        stats.funnel_significance(data.assign(expected=0.0), "obs", "expected", statistic="ratio")


# ------------------------------------------------------------------------------------------
# Proportions
# ------------------------------------------------------------------------------------------


def test_proportion_matches_statsmodels_wilson() -> None:
    rng = np.random.default_rng(7)
    n = rng.integers(1, 100_000, 500)
    x = rng.integers(0, n + 1)
    data = pd.DataFrame({"x": x, "n": n})
    out = stats.proportion(data, "x", "n", confidence=(0.95, 0.998))
    for level, tag in ((0.95, "95_0"), (0.998, "99_8")):
        lower, upper = proportion_confint(x, n, alpha=1 - level, method="wilson")
        np.testing.assert_allclose(out[f"lower{tag}cl"], lower, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out[f"upper{tag}cl"], upper, rtol=1e-9, atol=1e-12)


def test_proportion_hand_computation() -> None:
    # 65 of 100 at 95%: p = 0.65, z = 1.959964; Wilson (Newcombe & Altman 2000):
    # (2*65 + z^2 -/+ z*sqrt(z^2 + 4*65*0.35)) / (2*(100 + z^2))
    z = Z95
    root = math.sqrt(z**2 + 4 * 65 * 0.35)
    lower = (130 + z**2 - z * root) / (2 * (100 + z**2))
    upper = (130 + z**2 + z * root) / (2 * (100 + z**2))
    assert lower == pytest.approx(0.55254443, abs=1e-8)  # hand arithmetic, to 8 places
    out = stats.proportion(pd.DataFrame({"x": [65], "n": [100]}), "x", "n", multiplier=100)
    assert out.loc[0, "value"] == pytest.approx(65.0)
    assert out.loc[0, "lowercl"] == pytest.approx(lower * 100, rel=1e-12)
    assert out.loc[0, "uppercl"] == pytest.approx(upper * 100, rel=1e-12)
    assert out.loc[0, ["confidence", "statistic", "method"]].tolist() == [
        "95%",
        "percentage",
        "Wilson",
    ]


def test_proportion_by_group_sums_numerators_and_denominators() -> None:
    data = pd.DataFrame(
        {"area": ["A", "A", "B"], "year": [1, 2, 1], "x": [10, 30, 5], "n": [100, 100, 50]}
    )
    out = stats.proportion(data, "x", "n", by="area")
    assert out["area"].tolist() == ["A", "B"]
    assert out[["x", "n"]].to_numpy().tolist() == [[40, 200], [5, 50]]
    lower, _ = proportion_confint(40, 200, method="wilson")
    assert out.loc[0, "lowercl"] == pytest.approx(lower, rel=1e-12)
    assert out.loc[0, "statistic"] == "proportion of 1"


def test_proportion_keeps_every_row_and_column_without_by() -> None:
    data = pd.DataFrame({"area": list("abc"), "x": [0, 5, 10], "n": [10, 10, 10]})
    out = stats.proportion(data, "x", "n", confidence=99.8)
    assert out["area"].tolist() == list("abc")
    assert out["confidence"].iloc[0] == "99.8%"
    assert out.loc[0, "lowercl"] == 0
    assert out.loc[2, "uppercl"] == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 10_000)), min_size=1))
def test_proportion_interval_contains_value_within_zero_one(pairs: list[tuple[int, int]]) -> None:
    data = pd.DataFrame([(min(x, n), n) for x, n in pairs], columns=["x", "n"])
    out = stats.proportion(data, "x", "n")
    assert len(out) == len(data)
    assert (out["lowercl"] <= out["value"] + 1e-12).all()
    assert (out["value"] <= out["uppercl"] + 1e-12).all()
    assert (out["lowercl"] >= -1e-12).all() and (out["uppercl"] <= 1 + 1e-12).all()


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (pd.DataFrame({"x": [11], "n": [10]}), "'x' must be less than or equal to 'n'"),
        (pd.DataFrame({"x": [-1], "n": [10]}), "column 'x' must be greater than or equal"),
        (pd.DataFrame({"x": [1], "n": [0]}), "column 'n' must be greater than zero"),
        (pd.DataFrame({"x": [np.nan], "n": [10]}), "column 'x' has 1 missing value"),
        (pd.DataFrame({"x": ["1"], "n": [10]}), "column 'x' must be numeric"),
        (pd.DataFrame({"cases": [1], "n": [10]}), r"column\(s\) \['x'\] not found"),
    ],
)
def test_proportion_bad_input_names_the_column(frame: pd.DataFrame, match: str) -> None:
    with pytest.raises(StatsError, match=match):
        stats.proportion(frame, "x", "n")


@pytest.mark.parametrize("confidence", [0.5, 3, 1000, (0.95, 0.95)])
def test_confidence_levels_are_checked(confidence: object) -> None:
    with pytest.raises(StatsError, match="confidence"):
        stats.proportion(pd.DataFrame({"x": [1], "n": [2]}), "x", "n", confidence=confidence)  # type: ignore[arg-type]


def test_stats_error_is_a_value_error() -> None:
    assert issubclass(StatsError, ValueError)


# ------------------------------------------------------------------------------------------
# Crude rates
# ------------------------------------------------------------------------------------------


def test_rate_exact_limits_below_ten_match_poisson_root_finding() -> None:
    counts = np.arange(0, 10)
    data = pd.DataFrame({"x": counts, "n": 1000.0})
    out = stats.rate(data, "x", "n", confidence=(0.95, 0.998), multiplier=1000)
    assert set(out["method"]) == {"Exact"}
    for level, tag in ((0.95, "95_0"), (0.998, "99_8")):
        for i, x in enumerate(counts):
            lower, upper = _exact_poisson_by_root(int(x), level)
            assert out.loc[i, f"lower{tag}cl"] == pytest.approx(lower, rel=1e-8, abs=1e-12)
            assert out.loc[i, f"upper{tag}cl"] == pytest.approx(upper, rel=1e-8)


def test_rate_byars_from_ten_hand_computation() -> None:
    # 65 deaths in 100,000: Byar's (Breslow & Day 1987)
    # lower = 65 * (1 - 1/(9*65) - z/(3*sqrt(65)))^3, upper = 66 * (1 - 1/(9*66) + z/(3*sqrt(66)))^3
    z = Z95
    lower = 65 * (1 - 1 / 585 - z / (3 * math.sqrt(65))) ** 3
    upper = 66 * (1 - 1 / 594 + z / (3 * math.sqrt(66))) ** 3
    assert lower == pytest.approx(50.1632, abs=1e-4)
    out = stats.rate(pd.DataFrame({"x": [65], "n": [100_000]}), "x", "n")
    assert out.loc[0, "value"] == pytest.approx(65.0)
    assert out.loc[0, "lowercl"] == pytest.approx(lower, rel=1e-12)
    assert out.loc[0, "uppercl"] == pytest.approx(upper, rel=1e-12)
    assert out.loc[0, ["statistic", "method"]].tolist() == ["rate per 100000", "Byars"]


def test_byars_is_within_published_accuracy_of_exact_from_ten() -> None:
    # PHE Technical Guide "Confidence Intervals" (2018), appendix 1: for 95% intervals Byar's
    # method is within 0.2% of the exact value for numerators of 10 or more.
    counts = np.arange(10, 3000)
    for x in counts[::97]:
        lower, upper = _exact_poisson_by_root(int(x), 0.95)
        assert stats.byars_lower(x) == pytest.approx(lower, rel=2e-3)
        assert stats.byars_upper(x) == pytest.approx(upper, rel=2e-3)


def test_rate_switches_method_at_ten_and_groups() -> None:
    data = pd.DataFrame({"g": ["a", "a", "b"], "x": [4, 5, 10], "n": [500, 500, 2000]})
    out = stats.rate(data, "x", "n", by="g", multiplier=1000)
    assert out["method"].tolist() == ["Exact", "Byars"]
    assert out["value"].tolist() == pytest.approx([9.0, 5.0])
    lower, upper = _exact_poisson_by_root(9, 0.95)
    assert out.loc[0, "lowercl"] == pytest.approx(lower, rel=1e-8)


def test_rate_rejects_missing_and_zero_denominators() -> None:
    with pytest.raises(StatsError, match=r"column 'n' must be greater than zero.*row\(s\) 1"):
        stats.rate(pd.DataFrame({"x": [1, 2], "n": [10, 0]}), "x", "n")
    with pytest.raises(StatsError, match="column 'x' has 1 missing"):
        stats.rate(pd.DataFrame({"x": [1, None], "n": [10, 10]}), "x", "n")


# ------------------------------------------------------------------------------------------
# Directly standardised rates
# ------------------------------------------------------------------------------------------


def _dsr_by_hand(x: np.ndarray, n: np.ndarray, w: np.ndarray, level: float = 0.95) -> tuple:
    """Dobson et al. (1991) written out term by term in plain Python."""
    z = norm.ppf(1 - (1 - level) / 2)
    total = sum(x)
    value = sum(xi * wi / ni for xi, ni, wi in zip(x, n, w, strict=True)) / sum(w)
    var = sum(xi * (wi / ni) ** 2 for xi, ni, wi in zip(x, n, w, strict=True)) / sum(w) ** 2
    o_low = total * (1 - 1 / (9 * total) - z / (3 * math.sqrt(total))) ** 3
    o_up = (total + 1) * (1 - 1 / (9 * (total + 1)) + z / (3 * math.sqrt(total + 1))) ** 3
    spread = math.sqrt(var / total)
    return value, value + spread * (o_low - total), value + spread * (o_up - total)


def test_dsr_hand_computation_two_bands() -> None:
    # Bands 0-4 and 5-9, weights 5000 and 5500 (ESP 2013), 10/1000 and 30/2000 events:
    # DSR = (0.01*5000 + 0.015*5500) / 10500 = 132.5/10500 per person = 1261.905 per 100,000
    data = pd.DataFrame({"band": ["0-4", "5-9"], "x": [10, 30], "n": [1000, 2000]})
    esp = pd.Series({"0-4": 5000, "5-9": 5500})
    out = stats.dsr(data, "x", "n", age_band="band", standard=esp)
    value, lower, upper = _dsr_by_hand(np.array([10, 30]), np.array([1000, 2000]), [5000, 5500])
    assert value * 1e5 == pytest.approx(132.5 / 10500 * 1e5)
    assert out.loc[0, "value"] == pytest.approx(value * 1e5, rel=1e-12)
    assert out.loc[0, "lowercl"] == pytest.approx(lower * 1e5, rel=1e-12)
    assert out.loc[0, "uppercl"] == pytest.approx(upper * 1e5, rel=1e-12)
    assert out.loc[0, ["total_count", "total_pop", "method"]].tolist() == [40, 3000, "Dobson"]


def test_dsr_with_standard_age_structure_equals_crude_rate_and_byars() -> None:
    # If each band's population is proportional to its standard weight, the DSR is the crude
    # rate and Dobson's interval reduces exactly to the crude rate's Byar's interval.
    esp = stats.european_standard_population()
    rng = np.random.default_rng(3)
    data = esp.assign(n=esp["population"] * 3, x=rng.integers(5, 60, len(esp)))
    out = stats.dsr(data, "x", "n", age_band="age_band")
    crude = stats.rate(pd.DataFrame({"x": [data["x"].sum()], "n": [data["n"].sum()]}), "x", "n")
    for column in ("value", "lowercl", "uppercl"):
        assert out.loc[0, column] == pytest.approx(crude.loc[0, column], rel=1e-12)


def test_dsr_many_groups_match_hand_computation_and_positional_standard() -> None:
    esp = stats.european_standard_population()
    rng = np.random.default_rng(11)
    frames = []
    for area in ("a", "b", "c"):
        for sex in ("F", "M"):
            frames.append(
                pd.DataFrame(
                    {
                        "area": area,
                        "sex": sex,
                        "band": esp["age_band"],
                        "x": rng.integers(0, 200, 19),
                        "n": rng.integers(10_000, 20_000, 19),
                    }
                )
            )
    data = pd.concat(frames, ignore_index=True).sample(frac=1, random_state=1)  # shuffled
    by_label = stats.dsr(data, "x", "n", by=["area", "sex"], age_band="band")
    band_order = {band: i for i, band in enumerate(stats.ESP2013_BANDS)}
    ordered = (
        data.assign(order=data["band"].map(band_order))
        .sort_values(["area", "sex", "order"])
        .drop(columns="order")
    )
    by_position = stats.dsr(
        ordered, "x", "n", by=["area", "sex"], standard=esp["population"].to_numpy()
    )
    assert len(by_label) == 6
    for (area, sex), group in data.groupby(["area", "sex"]):
        group = group.set_index("band").loc[list(stats.ESP2013_BANDS)]
        value, lower, upper = _dsr_by_hand(
            group["x"].to_numpy(), group["n"].to_numpy(), esp["population"].to_numpy()
        )
        row = by_label[(by_label["area"] == area) & (by_label["sex"] == sex)].iloc[0]
        assert row["value"] == pytest.approx(value * 1e5, rel=1e-10)
        assert row["lowercl"] == pytest.approx(lower * 1e5, rel=1e-10)
        assert row["uppercl"] == pytest.approx(upper * 1e5, rel=1e-10)
    pd.testing.assert_frame_equal(by_label, by_position)


def test_dsr_suppressed_below_ten_events_as_phe() -> None:
    data = pd.DataFrame(
        {"g": ["a", "a", "b", "b"], "band": [0, 5] * 2, "x": [4, 5, 6, 4], "n": [100, 100] * 2}
    )
    out = stats.dsr(data, "x", "n", by="g", age_band="band", confidence=(0.95, 0.998))
    small = out[out["g"] == "a"].iloc[0]
    assert small["total_count"] == 9
    assert np.isnan(small["value"]) and np.isnan(small["lower99_8cl"])
    assert small["statistic"] == "dsr NA for total count < 10"
    big = out[out["g"] == "b"].iloc[0]
    assert big["value"] == pytest.approx((0.06 * 5000 + 0.04 * 5500) / 10500 * 1e5)
    assert big["statistic"] == "dsr per 100000"
    assert big["confidence"] == "95%, 99.8%"


def test_dsr_non_independent_events_hand_computation() -> None:
    # Fingertips DSR guidance: with people counted by event frequency f, the variance is
    # sum_f f^2 var_f where var_f uses the people with f events. Two bands, weights 1 and 1.
    data = pd.DataFrame(
        {
            "band": ["0-4", "0-4", "5-9", "5-9"],
            "freq": [1, 2, 1, 2],
            "people": [10, 5, 20, 10],
            "n": [1000, 1000, 2000, 2000],
        }
    )
    weights = pd.Series({"0-4": 1.0, "5-9": 1.0})
    out = stats.dsr(data, "people", "n", age_band="band", standard=weights, event_frequency="freq")
    events = np.array([10 + 2 * 5, 20 + 2 * 10])  # 20 and 40 events
    value = (20 / 1000 + 40 / 2000) / 2
    var_f1 = (10 / 1000**2 + 20 / 2000**2) / 4
    var_f2 = (5 / 1000**2 + 10 / 2000**2) / 4
    variance = var_f1 + 4 * var_f2
    total = events.sum()
    o_low = stats.byars_lower(total)
    assert out.loc[0, "total_count"] == 60
    assert out.loc[0, "total_pop"] == 3000
    assert out.loc[0, "value"] == pytest.approx(value * 1e5, rel=1e-12)
    expected_lower = (value + math.sqrt(variance / total) * (o_low - total)) * 1e5
    assert out.loc[0, "lowercl"] == pytest.approx(expected_lower, rel=1e-12)
    assert out.loc[0, "method"].startswith("Dobson, with confidence adjusted")
    # All frequencies 1 gives back the independent-events DSR.
    single = data[data["freq"] == 1]
    plain = stats.dsr(single, "people", "n", age_band="band", standard=weights)
    as_freq = stats.dsr(
        single, "people", "n", age_band="band", standard=weights, event_frequency="freq"
    )
    for column in ("value", "lowercl", "uppercl"):
        assert as_freq.loc[0, column] == pytest.approx(plain.loc[0, column], rel=1e-12)


def test_dsr_errors_name_the_problem() -> None:
    esp = stats.european_standard_population()
    data = pd.DataFrame({"band": esp["age_band"], "x": 10, "n": 1000})
    with pytest.raises(StatsError, match="'standard' has 19 values but 1 group"):
        stats.dsr(data.iloc[:18], "x", "n")
    with pytest.raises(StatsError, match=r"column 'band' have no standard weight.*'95\+'"):
        stats.dsr(data.replace({"band": {"90+": "95+"}}), "x", "n", age_band="band")
    with pytest.raises(StatsError, match="column 'x' has 1 missing"):
        stats.dsr(data.assign(x=[np.nan] + [10] * 18), "x", "n", age_band="band")
    ok = stats.dsr(
        data.assign(x=[np.nan] + [10] * 18), "x", "n", age_band="band", count_na_as_zero=True
    )
    assert ok.loc[0, "total_count"] == 180
    with pytest.raises(StatsError, match="column 'n' must be greater than zero"):
        stats.dsr(data.assign(n=0), "x", "n", age_band="band")


# ------------------------------------------------------------------------------------------
# Indirectly standardised ratios and rates
# ------------------------------------------------------------------------------------------


def test_isr_hand_computation() -> None:
    # Reference rates 50/10,000 and 200/5,000; local populations 1,000 and 500:
    # E = 0.005*1000 + 0.04*500 = 25; O = 10 + 40 = 50; ratio 2, Byar's limits / 25.
    data = pd.DataFrame({"x": [10, 40], "n": [1000, 500]})
    out = stats.isr(data, "x", "n", x_ref=[50, 200], n_ref=[10_000, 5_000], refvalue=100)
    z = Z95
    lower = 50 * (1 - 1 / 450 - z / (3 * math.sqrt(50))) ** 3 / 25 * 100
    upper = 51 * (1 - 1 / 459 + z / (3 * math.sqrt(51))) ** 3 / 25 * 100
    assert out.loc[0, ["observed", "expected"]].tolist() == pytest.approx([50, 25])
    assert out.loc[0, "value"] == pytest.approx(200.0)
    assert out.loc[0, "lowercl"] == pytest.approx(lower, rel=1e-12)
    assert out.loc[0, "uppercl"] == pytest.approx(upper, rel=1e-12)
    assert out.loc[0, "statistic"] == "indirectly standardised ratio x 100"
    assert out.loc[0, "method"] == "Byars"


def test_isr_small_counts_are_exact_and_rates_scale_by_reference_rate() -> None:
    data = pd.DataFrame({"area": ["a", "a", "b", "b"], "x": [1, 2, 20, 30], "n": [1000, 500] * 2})
    x_ref, n_ref = [50, 200], [10_000, 5_000]
    ratio = stats.isr(data, "x", "n", x_ref=x_ref, n_ref=n_ref, by="area", confidence=0.998)
    lower, upper = _exact_poisson_by_root(3, 0.998)
    assert ratio.loc[0, "method"] == "Exact"
    assert ratio.loc[0, "lowercl"] == pytest.approx(lower / 25, rel=1e-8)
    assert ratio.loc[0, "uppercl"] == pytest.approx(upper / 25, rel=1e-8)
    rate = stats.isr(data, "x", "n", x_ref=x_ref, n_ref=n_ref, by="area", kind="rate")
    ref_rate = 250 / 15_000 * 1e5
    assert rate["ref_rate"].tolist() == pytest.approx([ref_rate, ref_rate])
    assert rate.loc[1, "value"] == pytest.approx(50 / 25 * ref_rate)
    assert rate.loc[1, "statistic"] == "indirectly standardised rate per 100000"


def test_isr_equals_one_when_local_rates_equal_reference_rates() -> None:
    esp = stats.european_standard_population()
    ref = pd.DataFrame({"band": esp["age_band"], "x_ref": np.arange(1, 20) * 40.0, "n_ref": 1e5})
    local = ref.assign(n=np.linspace(500, 5000, 19), x=lambda d: d["x_ref"] / 1e5 * d["n"])
    out = stats.isr(local, "x", "n", x_ref="x_ref", n_ref="n_ref", age_band="band")
    assert out.loc[0, "value"] == pytest.approx(1.0, rel=1e-12)
    by_series = stats.isr(
        local,
        "x",
        "n",
        x_ref=ref.set_index("band")["x_ref"],
        n_ref=ref.set_index("band")["n_ref"],
        age_band="band",
    )
    pd.testing.assert_frame_equal(out, by_series)


def test_isr_observed_totals_match_age_breakdown() -> None:
    data = pd.DataFrame({"g": ["a", "a", "b", "b"], "x": [5, 9, 20, 30], "n": [1000, 500] * 2})
    kwargs = {"x_ref": [50, 200], "n_ref": [10_000, 5_000], "by": "g"}
    full = stats.isr(data, "x", "n", **kwargs)
    totals = pd.DataFrame({"g": ["b", "a"], "x": [50, 14]})
    from_totals = stats.isr(data.drop(columns="x"), "x", "n", observed_totals=totals, **kwargs)
    pd.testing.assert_frame_equal(full, from_totals)
    with pytest.raises(StatsError, match="no total for 1 group"):
        stats.isr(data, "x", "n", observed_totals=totals.iloc[:1], **kwargs)


def test_isr_errors_name_the_problem() -> None:
    data = pd.DataFrame({"x": [10, 40], "n": [1000, 500]})
    with pytest.raises(StatsError, match="'x_ref' has 3 values but 1 group"):
        stats.isr(data, "x", "n", x_ref=[1, 2, 3], n_ref=[10, 20, 30])
    with pytest.raises(StatsError, match="n_ref\\) must be greater than zero"):
        stats.isr(data, "x", "n", x_ref=[1, 2], n_ref=[10, 0])
    with pytest.raises(StatsError, match="'kind' must be"):
        stats.isr(data, "x", "n", x_ref=[1, 2], n_ref=[10, 20], kind="smr")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# ESP 2013 and age bands
# ------------------------------------------------------------------------------------------


def test_esp2013_is_the_published_vector() -> None:
    esp = stats.european_standard_population()
    published = [5000, 5500, 5500, 5500, 6000, 6000, 6500, 7000, 7000, 7000, 7000, 6500, 6000]
    published += [5500, 5000, 4000, 2500, 1500, 1000]  # Eurostat 2013, 0-4 ... 85-89, 90+
    assert esp["population"].tolist() == published
    assert esp["age_band"].tolist() == list(stats.ESP2013_BANDS)
    assert esp["population"].sum() == 100_000


def test_age_band_boundaries() -> None:
    ages = pd.Series([0, 4, 4.99, 5, 9, 10, 84.5, 85, 89, 90, 120], index=list("abcdefghijk"))
    bands = stats.age_band(ages)
    assert bands.tolist() == [
        "0-4", "0-4", "0-4", "5-9", "5-9", "10-14", "80-84", "85-89", "85-89", "90+", "90+"
    ]  # fmt: skip
    assert bands.index.tolist() == list("abcdefghijk")
    assert bands.cat.ordered
    with pytest.raises(StatsError, match=r"2 are not, at row\(s\) b, c"):
        stats.age_band(pd.Series([3, -1, None], index=list("abc")))


def test_age_band_feeds_dsr_with_esp_default() -> None:
    people = pd.DataFrame({"age": [2, 3, 7, 8, 8, 91], "died": [1, 0, 1, 1, 0, 1]})
    people["band"] = stats.age_band(people["age"])
    table = (
        people.groupby("band", observed=True)
        .agg(x=("died", "sum"), n=("died", "size"))
        .reset_index()
    )
    table["x"] = table["x"] * 10  # enough events for a DSR
    out = stats.dsr(table, "x", "n", age_band="band")
    expected = (10 / 2 * 5000 + 20 / 3 * 5500 + 10 / 1 * 1000) / (5000 + 5500 + 1000) * 1e5
    assert out.loc[0, "value"] == pytest.approx(expected, rel=1e-12)


def test_isr_missing_counts_are_errors_unless_counted_as_zero() -> None:
    data = pd.DataFrame({"x": [10, None], "n": [1000, 500]})
    with pytest.raises(StatsError, match="column 'x' has 1 missing value"):
        stats.isr(data, "x", "n", x_ref=[50, 200], n_ref=[10_000, 5_000])
    out = stats.isr(data, "x", "n", x_ref=[50, 200], n_ref=[10_000, 5_000], count_na_as_zero=True)
    assert out.loc[0, "observed"] == 10  # PHEindicatormethods' documented NA-as-zero rule
    assert out.loc[0, "expected"] == pytest.approx(25.0)


def test_dsr_standard_column_named_esp2013_is_used_as_a_column() -> None:
    # PHEindicatormethods' examples append the ESP as a column called esp2013.
    data = pd.DataFrame({"x": [10, 30], "n": [1000, 2000], "esp2013": [1.0, 3.0]})
    out = stats.dsr(data, "x", "n", standard="esp2013")
    assert out.loc[0, "value"] == pytest.approx((0.01 * 1 + 0.015 * 3) / 4 * 1e5)


def test_labelled_standard_without_age_band_is_refused() -> None:
    data = pd.DataFrame({"x": [10, 30], "n": [1000, 2000]})
    with pytest.raises(StatsError, match="pass age_band="):
        stats.dsr(data, "x", "n", standard=pd.Series({"5-9": 5500, "0-4": 5000}))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(1, 5000)), min_size=19, max_size=19),
    st.floats(0.01, 100),
    st.randoms(use_true_random=False),
)
def test_dsr_ignores_row_order_and_the_scale_of_the_standard(
    cells: list[tuple[int, int]], scale: float, random: object
) -> None:
    esp = stats.european_standard_population()
    data = pd.DataFrame(cells, columns=["x", "n"]).assign(band=esp["age_band"])
    base = stats.dsr(data, "x", "n", age_band="band")
    order = list(range(19))
    random.shuffle(order)  # type: ignore[attr-defined]
    weights = pd.Series(esp["population"].to_numpy() * scale, index=esp["age_band"])
    moved = stats.dsr(data.iloc[order], "x", "n", age_band="band", standard=weights)
    for column in ("value", "lowercl", "uppercl"):
        np.testing.assert_allclose(moved[column], base[column], rtol=1e-9)


@pytest.mark.parametrize(
    ("number", "r_nchar"),
    [(100, 3), (99999, 5), (100000, 5), (123456, 6), (1_000_000, 5), (1_200_000, 7), (1e15, 5)],
)
def test_funnel_axis_counts_digits_as_r_prints_numbers(number: float, r_nchar: int) -> None:
    # R: as.character(1e5) is "1e+05" (shorter than "100000"), as.character(1200000) is
    # "1200000" (a tie with "1.2e+06" keeps fixed notation); PHE's axis rounding uses nchar().
    assert stats._r_nchar(number) == r_nchar


# ------------------------------------------------------------------------------------------
# PHEindicatormethods' own calculation code run in R 4.2.2 (peer_*.csv, see the README)
# ------------------------------------------------------------------------------------------

PEER_LIMITS = ["value", "lower95_0cl", "upper95_0cl", "lower99_8cl", "upper99_8cl"]
BOTH = (0.95, 0.998)


def _assert_peer(ours: pd.DataFrame, peer: pd.DataFrame, keys: list[str]) -> None:
    ours = ours.sort_values(keys, ignore_index=True) if keys else ours
    peer = peer.sort_values(keys, ignore_index=True) if keys else peer
    assert len(ours) == len(peer)
    for column in PEER_LIMITS:
        np.testing.assert_allclose(
            ours[column].to_numpy(float), peer[column].to_numpy(float), rtol=1e-9, atol=1e-12
        )
    for column in ("confidence", "statistic", "method"):
        assert ours[column].astype(str).tolist() == peer[column].tolist()


def test_proportion_matches_phe_code_run_in_r() -> None:
    data = _ref("peer_crude_inputs.csv")
    rows = stats.proportion(data, "x", "n", confidence=BOTH, multiplier=100)
    _assert_peer(rows, _ref("peer_proportion_rows.csv"), [])
    by_area = stats.proportion(data, "x", "n", by="area", confidence=BOTH)
    _assert_peer(by_area, _ref("peer_proportion_by_area.csv"), ["area"])


def test_rate_matches_phe_code_run_in_r() -> None:
    data = _ref("peer_crude_inputs.csv")
    rows = stats.rate(data, "x", "n", confidence=BOTH)
    _assert_peer(rows, _ref("peer_rate_rows.csv"), [])
    by_area = stats.rate(data, "x", "n", by="area", confidence=BOTH, multiplier=1000)
    _assert_peer(by_area, _ref("peer_rate_by_area.csv"), ["area"])


@pytest.mark.parametrize(("by", "name"), [(["area", "sex"], "by_area_sex"), (["area"], "by_area")])
def test_dsr_matches_phe_code_run_in_r(by: list[str], name: str) -> None:
    data = _ref("peer_standardised_inputs.csv")
    peer = _ref(f"peer_dsr_{name}.csv")
    # ESP weights looked up from the age-band labels, not the esp2013 column the R run used.
    ours = stats.dsr(data, "obs", "pop", by=by, age_band="ageband", confidence=BOTH)
    _assert_peer(ours, peer, by)
    np.testing.assert_array_equal(ours["total_count"], peer.sort_values(by)["total_count"])
    np.testing.assert_array_equal(ours["total_pop"], peer.sort_values(by)["total_pop"])


def test_isr_matches_phe_code_run_in_r() -> None:
    data = _ref("peer_standardised_inputs.csv")
    ratio = stats.isr(
        data,
        "obs",
        "pop",
        x_ref="refcount",
        n_ref="refpop",
        by=["area", "sex"],
        confidence=BOTH,
        refvalue=100,
    )
    peer = _ref("peer_isratio_by_area_sex.csv")
    _assert_peer(ratio, peer, ["area", "sex"])
    np.testing.assert_allclose(ratio["expected"], peer["expected"], rtol=1e-12)
    rate = stats.isr(
        data, "obs", "pop", x_ref="refcount", n_ref="refpop", by="area", kind="rate",
        confidence=BOTH,
    )  # fmt: skip
    peer_rate = _ref("peer_israte_by_area.csv")
    _assert_peer(rate, peer_rate, ["area"])
    np.testing.assert_allclose(rate["ref_rate"], peer_rate["ref_rate"], rtol=1e-12)


def test_interval_primitives_reject_impossible_counts() -> None:
    with pytest.raises(StatsError, match="byars_lower: observed counts 'x' must be >= 0"):
        stats.byars_lower(np.array([3.0, -1.0]))
    with pytest.raises(StatsError, match="wilson_upper: 'x' must be less than or equal to 'n'"):
        stats.wilson_upper(5, 4)
    with pytest.raises(StatsError, match="sample sizes 'n' must be > 0"):
        stats.wilson_lower(0, 0)


def test_funnel_limits_at_each_units_denominator_agree_with_its_label() -> None:
    data = _ref("funnel_prop_inputs.csv")
    limits = stats.funnel_limits(
        data,
        "numerator",
        "denominator",
        statistic="proportion",
        multiplier=100,
        at=data["denominator"],
    )
    value = data["numerator"] / data["denominator"] * 100
    above_998 = (value > limits["upper_3s_limit"]).to_numpy()
    below_998 = (value < limits["lower_3s_limit"]).to_numpy()
    labels = data["significance"].to_numpy()
    assert (above_998 == (labels == "High (0.001)")).all()
    assert (below_998 == (labels == "Low (0.001)")).all()
    grid = _ref("funnel_prop_outputs.csv")
    again = stats.funnel_limits(
        data, "numerator", "denominator", statistic="proportion", multiplier=100,
        at=grid["Population"],
    )  # fmt: skip
    np.testing.assert_allclose(again["lower_2s_limit"], grid["lower_2s_limit"], atol=1e-6)


def test_confidence_none_gives_values_only() -> None:
    # PHEindicatormethods v2: "an NA value can be passed if no confidence intervals are required"
    data = pd.DataFrame({"g": ["a", "a"], "band": ["0-4", "5-9"], "x": [10, 30], "n": [1e3, 2e3]})
    for out in (
        stats.proportion(data, "x", "n", confidence=None),
        stats.rate(data, "x", "n", confidence=None),
        stats.dsr(data, "x", "n", by="g", age_band="band", confidence=None),
        stats.isr(data, "x", "n", x_ref=[1, 2], n_ref=[100, 100], confidence=None),
    ):
        assert not [c for c in out.columns if c.endswith("cl")]
        assert out["confidence"].isna().all()
        assert out["value"].notna().all()


def test_plain_vector_with_age_band_must_be_the_19_esp_bands() -> None:
    data = pd.DataFrame({"band": ["0-4", "5-9"], "x": [10, 30], "n": [1000, 2000]})
    with pytest.raises(StatsError, match="plain vector of 2 values"):
        stats.dsr(data, "x", "n", age_band="band", standard=[1.0, 1.0])
    esp = stats.european_standard_population()["population"].to_numpy()
    by_vector = stats.dsr(data, "x", "n", age_band="band", standard=esp)
    assert by_vector.loc[0, "value"] == pytest.approx((0.01 * 5000 + 0.015 * 5500) / 10500 * 1e5)
