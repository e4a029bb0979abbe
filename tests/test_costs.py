"""Tests of kidresearch.costs: distribution statistics by hand, person costs on hand-made
people, the ladder against a person-level statsmodels fit and a known simulated gradient, the
panel against an independent pandas computation, and the demo KID against truth.json."""

from __future__ import annotations

import datetime as dt
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
from recipes_fake_kid import by_label, pid, toy_session

from kidresearch import costs
from kidresearch.costs import CostError, PersonCosts

matplotlib.use("Agg")

START, END = dt.date(2024, 4, 1), dt.date(2025, 3, 31)


# ------------------------------------------------------------------------------------------
# Gini, Lorenz, top shares: hand computations
# ------------------------------------------------------------------------------------------
def test_gini_of_hand_computed_cases() -> None:
    # Sorted x = 0, 0, 1, 3 (n=4, total 4): sum(i*x_i) = 3*1 + 4*3 = 15;
    # G = 2*15/(4*4) - 5/4 = 1.875 - 1.25 = 0.625.
    assert costs.gini([3, 0, 1, 0]) == pytest.approx(0.625)
    # Mean absolute difference definition: G = sum_ij |xi - xj| / (2 n^2 mean).
    x = np.array([5.0, 1.0, 9.0, 0.0, 2.5])
    mad = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert costs.gini(x) == pytest.approx(mad)
    assert costs.gini([7, 7, 7]) == 0.0
    assert np.isnan(costs.gini([0, 0]))


def test_top_shares_of_hand_computed_cases() -> None:
    x = [100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10]  # total 200
    assert costs.top_share(x, 0.05) == pytest.approx(100 / 200)  # 1 person of 20
    assert costs.top_share(x, 0.10) == pytest.approx(110 / 200)  # 2 people
    assert costs.top_share(x, 0.01) == pytest.approx(100 / 200)  # at least 1 person
    assert costs.top_share(x, 1.0) == pytest.approx(1.0)


def test_lorenz_curve_of_hand_computed_case() -> None:
    curve = costs.lorenz_curve([4, 0, 1, 5], points=None)
    assert curve.population_share.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert curve.cost_share.tolist() == pytest.approx([0, 0, 0.1, 0.5, 1.0])
    # Gini = 1 - 2 * area under the Lorenz curve (trapezoids) for the same data.
    area = np.trapezoid(curve.cost_share, curve.population_share)
    assert costs.gini([4, 0, 1, 5]) == pytest.approx(1 - 2 * area)
    thin = costs.lorenz_curve(np.arange(5000.0), points=101)
    assert len(thin) == 101 and thin.cost_share.iloc[-1] == pytest.approx(1.0)


def test_distribution_rejects_negative_or_missing_costs_naming_the_position() -> None:
    with pytest.raises(CostError, match="position 2"):
        costs.gini([1.0, 2.0, -3.0])
    with pytest.raises(CostError, match="position 0"):
        costs.top_share([np.nan, 1.0], 0.1)
    with pytest.raises(CostError, match="'share'"):
        costs.top_share([1.0], 0)


# ------------------------------------------------------------------------------------------
# Person costs on hand-made people
# ------------------------------------------------------------------------------------------
def _cost(label: str, day: dt.date, line: str, gbp: float) -> dict:
    return {"person_id": pid(label), "activity_date": day, "service_line": line, "cost_gbp": gbp}


@pytest.fixture(scope="module")
def hand_made_costs() -> PersonCosts:
    persons = [
        {"person_id": pid("a"), "birth_year": 1950},
        {"person_id": pid("b"), "birth_year": 1990, "lsoa_code": "E01000005"},
        {"person_id": pid("c"), "birth_year": 1960, "date_of_death": dt.date(2024, 8, 1)},
        {"person_id": pid("late"), "birth_year": 1980, "registration_start": dt.date(2024, 6, 1)},
        {"person_id": pid("gone"), "birth_year": 1980, "registration_end": dt.date(2024, 1, 1)},
    ]
    rows = [
        _cost("a", dt.date(2024, 4, 1), "ae", 148.0),  # first day: in
        _cost("a", dt.date(2025, 3, 31), "gp", 42.0),  # last day: in
        _cost("a", dt.date(2025, 4, 1), "gp", 42.0),  # after the window
        _cost("a", dt.date(2024, 3, 31), "gp", 42.0),  # before the window
        _cost("a", dt.date(2024, 9, 1), "social_care", 2000.0),
        _cost("c", dt.date(2024, 7, 1), "acute_emergency", 1590.0),
        _cost("late", dt.date(2024, 7, 1), "outpatient", 120.0),  # not in the cohort
    ]
    kid = toy_session({"persons": persons, "costs": rows})
    return costs.person_costs(kid, START, END)


def test_person_costs_include_zero_cost_people_and_only_the_window(
    hand_made_costs: PersonCosts,
) -> None:
    f = by_label(hand_made_costs.frame)
    assert sorted(f.index) == ["a", "b", "c"]  # registered and alive on START
    assert f.loc["a", "cost_gbp"] == pytest.approx(148 + 42 + 2000)
    assert f.loc["a", "ae"] == 148 and f.loc["a", "gp"] == 42 and f.loc["a", "social_care"] == 2000
    assert f.loc["b", "cost_gbp"] == 0.0
    assert f.loc["c", "acute_emergency"] == 1590.0  # died during the window, costs kept
    lines = list(costs.SERVICE_LINES)
    assert np.allclose(f[lines].sum(axis=1), f.cost_gbp)
    assert f.loc["a", "age"] == 74 and f.loc["b", "imd_quintile"] == 5
    assert hand_made_costs.excluded == {"people": 1, "cost_gbp": 120.0}


def test_person_costs_service_line_table_and_distribution(hand_made_costs: PersonCosts) -> None:
    lines = hand_made_costs.by_service_line().set_index("service_line")
    assert lines.loc["gp", "users"] == 1 and lines.loc["gp", "mean_cost_gbp"] == pytest.approx(14)
    assert lines.share_of_cost.sum() == pytest.approx(1.0)
    dist = hand_made_costs.distribution()
    assert dist.gini == pytest.approx(costs.gini([2190.0, 0.0, 1590.0]))
    assert dist.share_with_no_cost == pytest.approx(1 / 3)
    with pytest.raises(CostError, match="service_line"):
        hand_made_costs.distribution(service_line="dentistry")


def test_person_costs_refuse_reversed_dates() -> None:
    with pytest.raises(CostError, match="'end' parameter"):
        costs.person_costs(toy_session({}), "2024-05-01", "2024-04-01")


def test_negative_costs_are_refused_naming_the_person() -> None:
    kid = toy_session(
        {
            "persons": [{"person_id": pid("x"), "birth_year": 1970}],
            "costs": [_cost("x", dt.date(2024, 5, 1), "prescribing", -5.0)],
        }
    )
    with pytest.raises(CostError, match=f"person_id {pid('x')}"):
        costs.person_costs(kid, START, END)


# ------------------------------------------------------------------------------------------
# The ladder on simulated person costs with a known gradient
# ------------------------------------------------------------------------------------------
TRUE_LOG_GRADIENT = 0.08  # log cost per quintile step more deprived (q1 vs q5: exp(0.32))


def _simulated(n: int = 30000, seed: int = 11) -> PersonCosts:
    """People in 12 practices whose deprivation mix differs; cost depends on age, sex,
    deficits and IMD quintile only (no practice effect), with 20% zero costs."""
    rng = np.random.default_rng(seed)
    practice = rng.integers(0, 12, n)
    # Practices 0-3 serve mostly quintiles 1-2, 8-11 mostly 4-5.
    q = np.clip(np.round(1 + practice / 11 * 4 + rng.normal(0, 0.8, n)), 1, 5).astype(int)
    age = rng.integers(0, 95, n)
    sex = rng.choice(["F", "M"], n)
    deficits = np.clip(rng.poisson(np.maximum(age - 40, 0) / 10 + 0.5 * (5 - q) / 4), 0, 20)
    mu_pos = np.exp(
        6.0 + 0.02 * age + 0.1 * (sex == "M") + 0.12 * deficits + TRUE_LOG_GRADIENT * (5 - q)
    )
    positive = rng.random(n) < 0.8
    cost = np.where(positive, rng.gamma(1.2, mu_pos / 1.2), 0.0)
    frame = pd.DataFrame(
        {
            "person_id": np.arange(n, dtype=np.int64),
            "sex": sex,
            "age": age,
            "deficit_count": deficits,
            "imd_quintile": q,
            "practice_code": [f"G8{p:04d}" for p in practice],
            "lsoa_code": "E01000001",
            "district": "Dover",
            "cost_gbp": cost,
        }
    )
    return PersonCosts(START, END, frame)


@pytest.fixture(scope="module")
def simulated() -> PersonCosts:
    return _simulated()


@pytest.mark.parametrize("model", ["gamma", "two_part"])
def test_cell_fit_equals_person_level_statsmodels_fit(simulated: PersonCosts, model: str) -> None:
    """Reference implementation: statsmodels GLM on one row per person, summed by practice."""
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    f = simulated.frame.copy()
    band = np.minimum(f.age, 85) // 5
    f["age_sex"] = f.sex + ":" + band.astype(str)
    f["mb"] = np.searchsorted(costs.MORBIDITY_EDGES, f.deficit_count, side="right")
    old = f.age >= 55
    for q in range(1, 5):
        f[f"u{q}"] = ((f.imd_quintile == q) & ~old).astype(float)
        f[f"o{q}"] = ((f.imd_quintile == q) & old).astype(float)
    rhs = "C(age_sex) + C(mb) + u1 + u2 + u3 + u4 + o1 + o2 + o3 + o4"
    log = sm.families.links.Log()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model == "gamma":
            fit = smf.glm(
                f"cost_gbp ~ {rhs}", f, family=sm.families.Tweedie(var_power=2, link=log)
            ).fit()
            mu = fit.predict(f)
        else:
            f["any_cost"] = (f.cost_gbp > 0).astype(float)
            p = smf.glm(f"any_cost ~ {rhs}", f, family=sm.families.Binomial()).fit().predict(f)
            pos = f[f.cost_gbp > 0]
            g = smf.glm(f"cost_gbp ~ {rhs}", pos, family=sm.families.Gamma(link=log)).fit()
            mu = p * g.predict(f)
    expected = pd.Series(np.asarray(mu)).groupby(f.practice_code.to_numpy()).sum()
    cm = costs.map(data=simulated, by="practice", model=model)
    got = cm.units.set_index("unit")["expected_deprivation"]
    assert got.to_numpy() == pytest.approx(expected.loc[got.index].to_numpy(), rel=1e-6)


def test_ladder_shows_the_simulated_gradient_then_absorbs_it(simulated: PersonCosts) -> None:
    cm = costs.map(data=simulated, by="practice", model="gamma")
    ladder = cm.ladder.set_index("step")
    assert list(ladder.index) == ["crude", "age_sex", "morbidity", "deprivation"]
    # The crude step's gradient is the observed ratio of mean costs (hand computation).
    f = simulated.frame[simulated.frame.age >= 55]
    means = f.groupby("imd_quintile").cost_gbp.mean()
    assert ladder.loc["crude", "gradient_55_plus"] == pytest.approx(means[1] / means[5])
    # After adjusting for deprivation no gradient is left in O/E ...
    assert ladder.loc["deprivation", "gradient_55_plus"] == pytest.approx(1.0, abs=0.04)
    # ... and the model's own adjusted gradient recovers the simulated one (exp(4 * 0.08)).
    assert ladder.loc["deprivation", "adjusted_gradient_55_plus"] == pytest.approx(
        np.exp(4 * TRUE_LOG_GRADIENT), rel=0.06
    )
    # Practices differ only through their people: adjustment absorbs nearly all excess variance.
    assert ladder.loc["deprivation", "variance_absorbed"] > 0.8
    assert ladder.loc["crude", "excess_var_log_ratio"] > 0
    # Ranks and ratios side by side, one row per practice.
    assert len(cm.units) == 12
    assert set(cm.to_frame().step) == set(ladder.index)
    assert (cm.units.observed_gbp.sum()) == pytest.approx(simulated.frame.cost_gbp.sum())
    assert cm.units.expected_crude.sum() == pytest.approx(simulated.frame.cost_gbp.sum())
    movers = cm.movers(3)
    assert len(movers) == 3 and movers.rank_change.abs().is_monotonic_decreasing


def test_ladder_rank_statistics_match_scipy(simulated: PersonCosts) -> None:
    from scipy.stats import spearmanr

    cm = costs.map(data=simulated, by="practice", ladder=["age_sex", "deprivation"])
    u = cm.units
    rho = spearmanr(u.ratio_crude, u.ratio_deprivation).statistic
    assert cm.ladder.spearman_vs_crude.iloc[-1] == pytest.approx(rho)
    assert u.rank_crude.min() == 1
    assert u.loc[u.ratio_crude.idxmax(), "rank_crude"] == 1
    # Variance of log O/E weighted by people, by hand.
    w = u.people / u.people.sum()
    lr = np.log(u.ratio_age_sex)
    var = (w * (lr - (w * lr).sum()) ** 2).sum()
    assert cm.ladder.var_log_ratio.iloc[1] == pytest.approx(var)


def test_map_rejects_bad_arguments(simulated: PersonCosts) -> None:
    with pytest.raises(CostError, match="'by' parameter"):
        costs.map(data=simulated, by="ward")
    with pytest.raises(CostError, match="'ladder' parameter"):
        costs.map(data=simulated, ladder=["age_sex", "income"])
    with pytest.raises(CostError, match="'model' parameter"):
        costs.map(data=simulated, model="tobit")
    with pytest.raises(CostError, match="start"):
        costs.map(by="practice")


def test_map_plots_and_releases_units(simulated: PersonCosts) -> None:
    cm = costs.map(data=simulated, by="practice", ladder=["age_sex"])
    assert cm.plot().get_ylabel() == "observed / expected cost"
    assert "rank" in cm.plot(kind="ranks").get_xlabel()
    released = cm.released_units()
    assert released.people.notna().all()  # 2,500 people a practice: nothing to suppress
    assert released.ratio_age_sex.tolist() == pytest.approx(cm.units.ratio_age_sex.tolist())


def test_table_releases_mean_costs_through_sdc(simulated: PersonCosts) -> None:
    table = simulated.table("imd_quintile")
    reference = simulated.frame.groupby("imd_quintile").cost_gbp.mean()
    released = table.released
    for q in range(1, 6):
        if not np.isnan(released.loc[str(q)]):
            assert released.loc[str(q)] == pytest.approx(reference[q])
    with pytest.raises(CostError, match="'by' parameter"):
        simulated.table("postcode")


# ------------------------------------------------------------------------------------------
# The demo KID against the generator's truth
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_costs(demo_session, demo_truth) -> PersonCosts:
    start = dt.date.fromisoformat(demo_truth["costs"]["reference_date"])
    end = start + dt.timedelta(days=364)  # the truth's window: 365 days from the date
    return costs.person_costs(demo_session, start, end)


def test_demo_person_costs_match_truth(demo_costs: PersonCosts, demo_truth: dict) -> None:
    truth = demo_truth["costs"]
    f = demo_costs.frame
    # About 1-2% of activity cannot be linked, so totals sit a little under the truth.
    assert len(f) == pytest.approx(truth["people"], rel=0.005)
    assert f.cost_gbp.mean() == pytest.approx(truth["mean_annual_cost_gbp"], rel=0.03)
    assert demo_costs.distribution().top_shares[0.05] == pytest.approx(
        truth["top_5_percent_share"], abs=0.02
    )
    gradient = demo_costs.gradient().set_index("imd_quintile")
    for q, mean in truth["mean_annual_cost_55_plus_by_imd_quintile"].items():
        assert gradient.loc[int(q), "mean_cost_gbp"] == pytest.approx(mean, rel=0.05)


def test_demo_ladder_shows_the_true_gradient_at_crude_and_absorbs_it(
    demo_costs: PersonCosts,
    demo_truth: dict,
    demo_session,
) -> None:
    truth = demo_truth["costs"]["deprivation_gradient_q1_vs_q5_55_plus"]
    cm = costs.map(demo_session, data=demo_costs, by="practice", model="two_part")
    ladder = cm.ladder.set_index("step")
    crude = ladder.loc["crude", "gradient_55_plus"]
    final = ladder.loc["deprivation", "gradient_55_plus"]
    assert crude == pytest.approx(truth, rel=0.04)
    # A real gradient at the crude step; none left beyond chance at the deprivation step.
    assert ladder.loc["crude", "gradient_ci_lower"] > 1.0
    assert ladder.loc["deprivation", "gradient_ci_lower"] < 1.0
    assert ladder.loc["deprivation", "gradient_ci_upper"] > 1.0
    assert abs(np.log(final)) < 0.5 * np.log(crude)
    # The model's own gradient net of age, sex and morbidity is the scenario's direct effect
    # of deprivation on activity rates (log rate ratio per quintile, on most lines), diluted
    # by the lines without one: between 1 and exp(4 * per-quintile) for q1 vs q5.
    from kidresearch.synth import load_scenario

    direct = np.exp(4 * load_scenario("demo").activity.deprivation_per_quintile)
    assert 1.0 < ladder.loc["deprivation", "adjusted_gradient_55_plus"] < direct
    assert cm.units.latitude.notna().all()  # practices have coordinates for the map
    assert cm.map().get_xlabel() == "longitude"


def test_demo_panel_matches_pandas_and_fits_both_models(demo_session) -> None:
    result = costs.panel(demo_session, by="practice", years=[2022, 2023, 2024])
    frame = result.frame
    assert set(frame.year) == {2022, 2023, 2024}
    # Independent pandas computation for one practice-year.
    persons = demo_session.table("persons").to_pandas()
    spend = demo_session.table("costs").to_pandas()
    day = pd.Timestamp("2023-01-01")
    start = pd.to_datetime(persons.registration_start)
    end = pd.to_datetime(persons.registration_end)
    death = pd.to_datetime(persons.date_of_death)
    alive = (start <= day) & (end.isna() | (end >= day)) & (death.isna() | (death > day))
    practice = frame.practice_code.iloc[0]
    cohort = persons[alive & (persons.practice_code == practice)].person_id
    when = pd.to_datetime(spend.activity_date)
    in_year = spend[(when >= day) & (when <= pd.Timestamp("2023-12-31"))]
    total = in_year[in_year.person_id.isin(cohort)].cost_gbp.sum()
    row = frame[(frame.practice_code == practice) & (frame.year == 2023)].iloc[0]
    assert row.people == len(cohort)
    assert row.cost_gbp == pytest.approx(total)
    summary = result.summary()
    assert {"year_trend", "share_65_plus"} <= set(summary.term)
    assert np.isfinite(summary.std_error).all()
    assert result.plot().get_xlabel() == "year"
    with pytest.raises(CostError, match="at least two"):
        costs.panel(demo_session, years=[2023])


def test_released_units_blank_small_and_dominated_units() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    idx = np.arange(n)
    frame = pd.DataFrame(
        {
            "person_id": idx,
            "sex": rng.choice(["F", "M"], n),
            "age": rng.integers(0, 90, n),
            "deficit_count": rng.integers(0, 5, n),
            "imd_quintile": rng.integers(1, 6, n),
            "practice_code": np.where(idx < 5, "tiny", np.where(idx < 1000, "A", "B")),
            "cost_gbp": rng.gamma(1, 500, n),
        }
    )
    frame.loc[6, "cost_gbp"] = 1e7  # one person is nearly all of practice A's cost
    cm = costs.map(data=PersonCosts(START, END, frame), ladder=["age_sex"])
    released = cm.released_units().set_index("unit")
    assert np.isnan(released.loc["tiny", "ratio_age_sex"])  # 5 people: below the threshold
    assert np.isnan(released.loc["A", "ratio_crude"])  # dominance
    assert cm.units.set_index("unit").loc["A", "ratio_crude"] > 1.5  # kept for analysis


def test_person_costs_plot_draws_the_lorenz_curve(hand_made_costs: PersonCosts) -> None:
    ax = hand_made_costs.plot()
    x, y = ax.lines[0].get_data()
    assert x[0] == 0 and y[-1] == pytest.approx(1.0)
    assert "Gini" in ax.get_title()
