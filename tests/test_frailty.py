"""Tests of kidresearch.frailty: eFI at a date, trend, outcomes.

Expected values come from hand-written records with hand-counted deficits, from an independent
pandas re-implementation run on the fake KID's frames, from the fake generator's parameters,
or from the published cut-offs and hazard ratios (Clegg et al., Age Ageing 2016).
"""

from __future__ import annotations

import datetime as dt

import matplotlib
import numpy as np
import pandas as pd
import pytest
from recipes_fake_kid import TOY_CODELIST, by_label, make_fake_kid, pid, session_from_frames

from kidresearch import frailty
from kidresearch.errors import DroppedRowsWarning
from kidresearch.frailty import FrailtyError

matplotlib.use("Agg")


AT = dt.date(2020, 6, 30)
# One code per coded deficit, in code-list order (the shipped list has 35 coded deficits).
ONE_CODE = TOY_CODELIST.groupby("deficit_id", sort=True).head(1).snomed_code.tolist()


@pytest.fixture(scope="module")
def fake():
    return make_fake_kid(n_people=4000, seed=11)


def _person(label: str, **kw) -> dict:
    row = {"person_id": pid(label), "sex": "F", "birth_year": 1945, "birth_month": 1}
    row.update(kw)
    return row


def _events(label: str, n: int, day: dt.date = dt.date(2019, 1, 1)) -> list[dict]:
    return [{"person_id": pid(label), "event_date": day, "snomed_code": c} for c in ONE_CODE[:n]]


def test_efi_categories_follow_published_count_cutoffs():
    counts = [0, 4, 5, 8, 9, 12, 13, 20]
    persons = pd.DataFrame([_person(f"p{c:02d}") for c in counts])
    gp = pd.DataFrame([e for c in counts for e in _events(f"p{c:02d}", c)])
    kid = session_from_frames({"persons": persons, "gp_events": gp})
    frame = by_label(frailty.efi(kid, AT).frame)
    # Clegg et al. 2016: fit 0-4, mild 5-8, moderate 9-12, severe 13+ deficits of 36.
    expected = ["fit", "fit", "mild", "mild", "moderate", "moderate", "severe", "severe"]
    assert frame.loc[[f"p{c:02d}" for c in counts], "category"].astype(str).tolist() == expected
    assert frame.loc["p13", "deficit_count"] == 13
    assert frame.loc["p13", "score"] == pytest.approx(13 / 36)
    assert len(frailty.efi(kid, AT).deficits) == 36


def test_polypharmacy_counts_distinct_substances_in_chapters_1_to_15_in_last_12_months():
    in_window = dt.date(2020, 3, 1)
    window_start = dt.date(2019, 6, 30)  # 12 months before 30 June 2020: issues must be after

    def rx(label, substance, day=in_window, chapter=2, strength="AA"):
        return {
            "person_id": pid(label),
            "issue_date": day,
            "bnf_code": f"{chapter:02d}01010{substance}0{strength}",  # 9 = substance
            "bnf_chapter": chapter,
        }

    rows = []
    # a: four substances, one in two strengths, plus a chapter 20 item: 4 drugs, no.
    rows += [rx("a", s) for s in "ABCD"] + [rx("a", "D", strength="BB"), rx("a", "E", chapter=20)]
    # b: five substances in the window: yes.
    rows += [rx("b", s) for s in "ABCDE"]
    # c: the fifth was issued on the day the window opens (not after it): no.
    rows += [rx("c", s) for s in "ABCD"] + [rx("c", "E", day=window_start)]
    # d: the fifth was issued on the reference date itself: yes.
    rows += [rx("d", s) for s in "ABCD"] + [rx("d", "E", day=AT)]
    # e: the fifth is issued after the reference date: no.
    rows += [rx("e", s) for s in "ABCD"] + [rx("e", "E", day=AT + dt.timedelta(days=1))]
    persons = pd.DataFrame([_person(p) for p in "abcde"])
    kid = session_from_frames({"persons": persons, "prescriptions": pd.DataFrame(rows)})
    frame = by_label(frailty.efi(kid, AT).frame)
    assert frame.drugs_12m.to_dict() == {"a": 4, "b": 5, "c": 4, "d": 5, "e": 4}
    assert frame.polypharmacy.to_dict() == {
        "a": False,
        "b": True,
        "c": False,
        "d": True,
        "e": False,
    }
    assert frame.deficit_count.to_dict() == {"a": 0, "b": 1, "c": 0, "d": 1, "e": 0}


def test_efi_population_dates_and_ages_follow_registration_death_and_birth_month():
    persons = pd.DataFrame(
        [
            _person("alive", birth_year=1950, birth_month=6),
            _person("birthday_next_month", birth_year=1950, birth_month=7),
            _person("died_before", date_of_death=dt.date(2020, 6, 29)),
            _person("dies_after", date_of_death=dt.date(2020, 7, 1)),
            _person("left", registration_end=dt.date(2020, 6, 1)),
            _person("joins_later", registration_start=dt.date(2020, 7, 1)),
        ]
    )
    gp = pd.DataFrame(
        _events("alive", 3, day=AT) + _events("alive", 6, day=AT + dt.timedelta(days=1))[3:]
    )
    kid = session_from_frames({"persons": persons, "gp_events": gp})
    frame = by_label(frailty.efi(kid, AT).frame)
    assert sorted(frame.index) == ["alive", "birthday_next_month", "dies_after"]
    # Born June 1950: 70 at 30 June 2020; born July 1950: still 69.
    assert frame.loc["alive", "age"] == 70
    assert frame.loc["birthday_next_month", "age"] == 69
    # Codes recorded on the reference date count; those recorded the day after do not.
    assert frame.loc["alive", "deficit_count"] == 3


def _reference_efi(frames: dict, at: dt.date) -> pd.DataFrame:
    """Independent pandas eFI on the raw frames (written for this test, not from frailty.py)."""
    p = frames["persons"].copy()
    at_ts = pd.Timestamp(at)
    alive = (
        (pd.to_datetime(p.registration_start) <= at_ts)
        & (
            pd.to_datetime(p.registration_end).isna()
            | (pd.to_datetime(p.registration_end) >= at_ts)
        )
        & (pd.to_datetime(p.date_of_death).isna() | (pd.to_datetime(p.date_of_death) > at_ts))
    )
    p = p[alive]
    gp = frames["gp_events"]
    gp = gp[pd.to_datetime(gp.event_date) <= at_ts].merge(
        TOY_CODELIST[["snomed_code", "deficit"]], on="snomed_code"
    )
    coded = gp.groupby("person_id").deficit.nunique()
    rx = frames["prescriptions"]
    lo = pd.Timestamp(at) - pd.DateOffset(years=1)
    rx = rx[
        (pd.to_datetime(rx.issue_date) > lo)
        & (pd.to_datetime(rx.issue_date) <= at_ts)
        & rx.bnf_chapter.between(1, 15)
    ]
    drugs = rx.assign(s=rx.bnf_code.str[:9]).groupby("person_id").s.nunique()
    count = p.person_id.map(coded).fillna(0) + (p.person_id.map(drugs).fillna(0) >= 5)
    return pd.DataFrame({"person_id": p.person_id, "deficit_count": count.astype(int)})


def test_efi_matches_an_independent_pandas_computation(fake):
    at = dt.date(2021, 3, 15)  # not a month end, so the 12-month window is plain
    result = frailty.efi(fake, at, codelist=TOY_CODELIST)
    reference = _reference_efi(fake.frames, at).sort_values("person_id", ignore_index=True)
    assert result.frame.person_id.tolist() == reference.person_id.tolist()
    np.testing.assert_array_equal(result.frame.deficit_count, reference.deficit_count)
    assert result.frame.deficit_count.max() >= 13  # every category is exercised


def test_trend_counts_equal_efi_at_each_month_end(fake):
    trend = frailty.trend(fake, "2018-01-01", "2024-12-31", standardise=False)
    frame = trend.to_frame()
    assert frame.period.nunique() == 84
    for day in ("2018-01-31", "2020-02-29", "2022-12-31", "2024-12-31"):
        efi = frailty.efi(fake, day).frame
        expected = efi[efi.age >= 65].category.value_counts().reindex(frailty.EFI_CATEGORIES)
        got = frame[frame.period == day].set_index("category").people
        assert got.tolist() == expected.tolist(), day


def test_yearly_trend_by_practice_equals_efi_by_practice(fake):
    trend = frailty.trend(fake, "2017-06-01", "2023-12-31", freq="year", by="practice")
    frame = trend.frame
    assert sorted(frame.period.dt.strftime("%Y-%m-%d").unique()) == [
        f"{y}-12-31" for y in range(2017, 2024)
    ]
    efi = frailty.efi(fake, "2019-12-31").frame
    efi = efi[efi.age >= 65]
    expected = efi.groupby(["practice_code", "category"], observed=False).size()
    got = frame[frame.period == "2019-12-31"].set_index(["practice", "category"]).people
    assert got.to_numpy().tolist() == expected.to_numpy().tolist()


def test_trend_standardised_prevalence_is_esp2013_weighted_by_hand(fake):
    trend = frailty.trend(fake, "2020-01-01", "2020-03-31")
    strata = trend.strata
    esp = pd.read_csv(
        __import__("importlib.resources").resources.files("kidresearch.data") / "esp2013.csv"
    )
    weight = dict(zip(esp.age_from // 5, esp.population / 2, strict=True))
    day = pd.Timestamp("2020-02-29")
    s = strata[strata.period == day]
    pop = s.groupby(["sex", "band"]).people.sum()
    mild = s[s.category == "mild"].set_index(["sex", "band"]).people
    present = pop[pop > 0].index
    num = sum(weight[b] * mild[(sx, b)] / pop[(sx, b)] for sx, b in present)
    den = sum(weight[b] for _, b in present)
    row = trend.frame[(trend.frame.period == day) & (trend.frame.category == "mild")].iloc[0]
    assert row.dsr == pytest.approx(num / den, rel=1e-12)
    assert row.dsr_lower < row.dsr < row.dsr_upper
    assert row.prevalence == pytest.approx(mild.sum() / pop.sum())


def test_trend_flags_months_the_session_reports_incomplete(fake):
    asked = []

    class WithCompleteness:
        def table(self, name):
            return fake.table(name)

        def completeness(self, *, tables=None):
            asked.append(tuple(tables))
            return pd.DataFrame(
                {
                    "table": ["gp_events", "gp_events", "prescriptions"],
                    "month": ["2024-10", "2024-11", "2024-12"],
                    "complete": [True, False, False],
                }
            )

    trend = frailty.trend(WithCompleteness(), "2024-09-01", "2024-12-31", standardise=False)
    flags = trend.frame.groupby("period").incomplete.first()
    assert flags.tolist() == [False, False, True, True]
    # The session is asked for the eFI's inputs only (as KID.completeness(tables=...) allows).
    assert asked == [("gp_events", "prescriptions")]


def test_trend_without_completeness_flags_the_reporting_lag(fake):
    latest = pd.Timestamp(fake.frames["gp_events"].event_date.max())
    start = latest - pd.DateOffset(months=6)
    trend = frailty.trend(fake, start.date(), latest.date(), standardise=False)
    flags = trend.frame.groupby("period").incomplete.first()
    cutoff = latest.year * 12 + latest.month - 1 - frailty.REPORTING_LAG_MONTHS
    expected = [p.year * 12 + p.month - 1 > cutoff for p in flags.index]
    assert flags.tolist() == expected and any(expected)


def test_outcomes_recover_simulated_hazard_ratios():
    # 4,000 people aged 70-84, 1,000 per category; exponential death times with a yearly
    # hazard of 0.08 x HR (1, 2, 3, 4.5) and no age or sex effect; 12 months follow-up.
    rng = np.random.default_rng(3)
    n = 4000
    true_hr = {"fit": 1.0, "mild": 2.0, "moderate": 3.0, "severe": 4.5}
    deficits = np.repeat([0, 6, 10, 14], n // 4)
    hr = np.repeat(list(true_hr.values()), n // 4)
    years_to_death = rng.exponential(1 / (0.08 * hr))
    death = pd.Timestamp(AT) + pd.to_timedelta(np.ceil(years_to_death * 365.25), unit="D")
    persons = pd.DataFrame(
        {
            "person_id": np.arange(n, dtype=np.int64) + 10**15,
            "sex": rng.choice(["F", "M"], n),
            "birth_year": rng.integers(1936, 1950, n),
            "birth_month": 1,
            "date_of_death": [d.date() if d <= pd.Timestamp("2021-12-31") else None for d in death],
        }
    )
    gp = pd.DataFrame(
        [
            {"person_id": person, "event_date": dt.date(2019, 1, 1), "snomed_code": code}
            for person, k in zip(persons.person_id, deficits, strict=True)
            for code in ONE_CODE[:k]
        ]
    )
    kid = session_from_frames({"persons": persons, "gp_events": gp})
    result = frailty.outcomes(kid, AT, outcomes=("death",), ages=(65, 95), truth={"death": true_hr})
    frame = result.frame.set_index("category")
    assert frame.loc[["fit", "mild", "moderate", "severe"], "people"].tolist() == [1000] * 4
    for category in ("mild", "moderate", "severe"):
        row = frame.loc[category]
        assert row.hr_lower < true_hr[category] < row.hr_upper, category
        assert row.truth_hr == true_hr[category]
    # Published one-year mortality ratios sit beside the estimates.
    assert frame.loc[["mild", "moderate", "severe"], "published_hr"].tolist() == [1.92, 3.10, 4.52]
    assert (result.cohort.death_days <= 366).all()


def test_outcomes_on_fake_kid_report_every_outcome(fake):
    with pytest.warns(DroppedRowsWarning, match="no care_home events among fit"):
        result = frailty.outcomes(fake, "2019-12-31", follow_up="3y")
    frame = result.frame
    assert set(frame.outcome) == set(frailty.OUTCOMES)
    em = frame[(frame.outcome == "emergency_admission") & (frame.category == "moderate")].iloc[0]
    # The fake's admissions rise with deficit count (0.12 log-odds per deficit): frail > fit.
    assert em.hr > 1.5 and em.hr_lower > 1
    summary = result.summary()
    assert {"people", "events", "hr", "published_hr"} <= set(summary.columns)
    assert result.plot() is not None


def test_outcome_ratios_resting_on_a_suppressed_count_are_blanked():
    # care_home: 4 events among fit people (below the default threshold of 10), so every
    # care_home ratio vs fit rests on a suppressed count; death: only severe's 3 events are.
    rows = []
    for outcome, events in (("death", [40, 60, 50, 3]), ("care_home", [4, 20, 30, 25])):
        for category, n in zip(frailty.EFI_CATEGORIES, events, strict=True):
            hr = 1.0 if category == "fit" else 2.0
            rows.append(
                {
                    "outcome": outcome,
                    "category": category,
                    "people": 1000,
                    "events": n,
                    "hr": hr,
                    "hr_lower": 1.5,
                    "hr_upper": 2.5,
                    "published_hr": 2.0,
                    "note": "",
                }
            )
    result = frailty.OutcomesResult(
        at=AT, follow_up_months=12, frame=pd.DataFrame(rows), models={}, cohort=pd.DataFrame()
    )
    summary = result.summary().set_index(["outcome", "category"])
    assert summary.loc["care_home", "hr"].isna().all()
    assert summary.loc[("death", "severe"), ["hr", "hr_lower", "hr_upper"]].isna().all()
    assert summary.loc[("death", "mild"), "hr"] == 2.0
    assert "suppressed" in summary.loc[("care_home", "mild"), "note"]


def test_efi_summary_goes_through_disclosure_control(fake):
    result = frailty.efi(fake, AT)
    summary = result.summary()
    raw = pd.crosstab(
        pd.cut(result.frame.age, [0, 65, 75, 85, 201], right=False), result.frame.category
    )
    smallest = int(raw.to_numpy().min())
    assert smallest < 10  # the fake has small cells (severe among the young)
    assert summary.people.isna().any()
    assert (summary.people.dropna() >= 10).all()
    assert "people_status" in summary
    ax = result.plot()
    assert ax.get_title().startswith("eFI category")
    assert "eFI at" in result._repr_html_()
    shares = result.shares()
    assert shares.share.sum() == pytest.approx(1.0)
    assert shares.published_share.tolist() == [0.50, 0.35, 0.12, 0.03]


def test_bad_arguments_name_the_parameter(fake):
    with pytest.raises(FrailtyError, match="'at' parameter must be a date"):
        frailty.efi(fake, "30/06/2020")
    with pytest.raises(FrailtyError, match="'freq' parameter must be 'month' or 'year'"):
        frailty.trend(fake, "2020-01-01", "2020-12-31", freq="week")
    with pytest.raises(FrailtyError, match="'by' parameter"):
        frailty.trend(fake, "2020-01-01", "2020-12-31", by="ward")
    with pytest.raises(FrailtyError, match="before the 'start'"):
        frailty.trend(fake, "2020-12-31", "2020-01-01")
    with pytest.raises(FrailtyError, match="'outcomes' parameter"):
        frailty.outcomes(fake, AT, outcomes=("falls",))
    with pytest.raises(FrailtyError, match="'follow_up' parameter"):
        frailty.outcomes(fake, AT, follow_up="a year")


def test_bad_code_lists_are_refused_with_the_row_or_column():
    codes = TOY_CODELIST.copy()
    with pytest.raises(FrailtyError, match="'snomed_code' column"):
        frailty.deficit_codelist(codes.drop(columns="snomed_code"))
    short = codes[codes.deficit != codes.deficit.iloc[0]]
    with pytest.raises(FrailtyError, match="35 coded eFI deficits.*defines 34"):
        frailty.deficit_codelist(short)
    blank = codes.copy()
    blank.loc[3, "snomed_code"] = None
    with pytest.raises(FrailtyError, match=r"row 5 \(.*\): snomed_code is blank"):
        frailty.deficit_codelist(blank)


def test_shipped_code_list_has_35_coded_deficits_plus_polypharmacy():
    codes = frailty.deficit_codelist()
    assert codes.deficit.nunique() == 35
    assert frailty.POLYPHARMACY not in set(codes.deficit)
    assert codes.snomed_code.str.fullmatch(r"\d{6,18}").all()


# ------------------------------------------------------------------------------------------
# Demo KID: the synthetic generator's truth and the published shares
# ------------------------------------------------------------------------------------------
def test_efi_shares_on_the_demo_kid_match_truth_and_published_shares(demo_session, demo_truth):
    by_date = {row["date"]: row for row in demo_truth["efi"]["shares_by_date"]}
    # The generator's shares come from its raw feeds (exact dates of birth, every record);
    # the research KID loses 1-2% of records to non-linkage and ages people from birth month,
    # so agreement within 2 percentage points per category. Dates a year or more after the
    # period start only (polypharmacy needs 12 months of prescriptions).
    for day in ("2022-11-01", "2024-11-01"):
        shares = frailty.efi(demo_session, day).shares().set_index("category").share
        for category in frailty.EFI_CATEGORIES:
            assert shares[category] == pytest.approx(by_date[day][category], abs=0.02), (
                day,
                category,
            )
    # Clegg et al. 2016 (65-95): fit 50%, mild 35%, moderate 12%, severe 3%. The demo (about
    # 9,500 people aged 65-95) should land within 5, 5, 3 and 1.5 points of them.
    published = frailty.PUBLISHED_SHARES_65_95
    tolerance = {"fit": 0.05, "mild": 0.05, "moderate": 0.03, "severe": 0.015}
    for category, share in shares.items():
        assert share == pytest.approx(published[category], abs=tolerance[category]), category


def test_mortality_hazard_ratios_on_the_demo_kid_cover_the_truth(demo_session, demo_truth):
    true_hr = demo_truth["mortality"]["efi_hazard_ratios"]
    result = frailty.outcomes(
        demo_session, "2022-11-01", outcomes=("death",), truth={"death": true_hr}
    )
    frame = result.frame.set_index("category")
    # About 400 deaths among 9,250 people: the 95% intervals should cover the generator's
    # ratios (1.92 / 3.10 / 4.52), and the estimates rise with frailty.
    for category in ("mild", "moderate", "severe"):
        row = frame.loc[category]
        assert row.hr_lower < true_hr[category] < row.hr_upper, (category, row.hr)
    assert frame.loc["mild", "hr"] < frame.loc["moderate", "hr"] < frame.loc["severe", "hr"]


def test_trend_on_the_demo_kid_equals_efi_at_month_ends_by_district(demo_session):
    # The trend's onset/window bookkeeping against efi() run at each date on real-sized data:
    # a leap-year February end (the 12-month window opens on 28 Feb 2023), a year end and the
    # last month; counts per district and category among people aged 65+.
    trend = frailty.trend(demo_session, "2022-11-01", "2024-12-31", by="district")
    frame = trend.frame
    assert frame.period.nunique() == 26
    for day in ("2023-02-28", "2024-02-29", "2024-12-31"):
        efi = frailty.efi(demo_session, day).frame
        efi = efi[efi.age >= 65]
        expected = efi.groupby(["district", "category"], observed=False).size()
        got = frame[frame.period == day].set_index(["district", "category"]).people
        got = got.reindex(expected.index, fill_value=0)
        assert got.tolist() == expected.tolist(), day
        assert int(got.sum()) == len(efi) > 8000


def test_trend_result_summary_plot_and_html(fake):
    trend = frailty.trend(fake, "2020-01-01", "2020-12-31", freq="month", by="imd_quintile")
    summary = trend.summary()
    assert {"period", "imd_quintile", "category", "people", "people_status"} <= set(summary.columns)
    assert (summary.people.dropna() >= 10).all() and summary.people.isna().any()
    assert len(summary) == len(trend.frame)
    assert trend.plot().get_title() == "eFI category prevalence, age 65+"
    assert "eFI trend" in trend._repr_html_()


# ------------------------------------------------------------------------------------------
# Cox fits: step-halving Newton against statsmodels' BFGS (a reference run in the test)
# ------------------------------------------------------------------------------------------
def _frail_cohort(seed: int, n: int = 6000) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    # Like the demo cohort: frailty rises with age, 53/33/11/3% fit/mild/moderate/severe,
    # yearly hazard exp(-3.85 + 0.095 (age - 80) + 0.33 male) x (1, 1.92, 3.10, 4.52), one
    # year of follow-up in whole days (many ties at 366).
    rng = np.random.default_rng(seed)
    age = rng.integers(65, 96, n).astype(float)
    frailty_score = (age - 75) * 0.12 + rng.normal(0, 1, n)
    category = np.digitize(frailty_score, np.quantile(frailty_score, [0.53, 0.86, 0.97]))
    male = rng.integers(0, 2, n).astype(float)
    log_hazard = np.log([1.0, 1.92, 3.10, 4.52])[category] + 0.095 * (age - 80) + 0.33 * male - 3.85
    days = np.ceil(rng.exponential(1 / np.exp(log_hazard)) * 365.25)
    status = (days <= 365).astype(int)
    design = pd.DataFrame(
        {
            "mild": (category == 1).astype(float),
            "moderate": (category == 2).astype(float),
            "severe": (category == 3).astype(float),
            "age": age - age.mean(),
            "male": male,
        }
    )
    return np.minimum(days, 366), status, design


def test_fit_cox_converges_where_plain_newton_breaks_and_matches_bfgs():
    import statsmodels.api as sm

    days, status, design = _frail_cohort(seed=3)
    model = sm.PHReg(days, design, status=status, ties="efron")
    # statsmodels' own fit (plain Newton from zero) overshoots on this cohort and fails: the
    # failure that blanked the hazard ratios of notebooks/02_frailty.
    with pytest.raises(np.linalg.LinAlgError), np.errstate(all="ignore"):
        model.fit()
    reference = model.fit(method="bfgs", maxiter=1000, gtol=1e-8)
    result, notes = frailty.fit_cox(days, status, design)
    assert notes == []
    np.testing.assert_allclose(result.params, reference.params, atol=1e-5)
    np.testing.assert_allclose(result.bse, reference.bse, rtol=1e-4)
    assert np.abs(model.score(result.params)).max() < 1e-6
    hr = np.exp(result.params[:3])
    assert hr[0] < hr[1] < hr[2]


def test_fit_cox_drops_constant_covariates_and_names_unidentifiable_ones():
    days, status, design = _frail_cohort(seed=5, n=2000)
    one_sex = design.assign(male=0.0)
    result, notes = frailty.fit_cox(days, status, one_sex, label="Cox model of death")
    assert list(result.model.exog_names) == ["mild", "moderate", "severe", "age"]
    assert notes == ["Cox model of death: male constant in the cohort, left out of the model"]
    # A second column that is a linear function of age: the two cannot be separated.
    collinear = design.assign(copy_of_age=2 * design.age + 1)
    with pytest.raises(frailty.CoxFitError, match="age, copy_of_age are collinear"):
        frailty.fit_cox(days, status, collinear)
    # Every event among the severe: the ratio runs to infinity (monotone likelihood).
    only_severe = np.where(design.severe == 1, status, 0)
    with pytest.raises(frailty.CoxFitError, match="no finite maximum in severe"):
        frailty.fit_cox(days, only_severe, design[["severe", "age"]])
    with pytest.raises(frailty.CoxFitError, match="no events"):
        frailty.fit_cox(days, np.zeros_like(status), design)


def test_death_hazard_ratios_on_the_frailty_proposal_are_estimated(demo_kid, demo_truth):
    # The efi-frailty-65plus proposal's own cohort on its study start (the notebook's default)
    # broke statsmodels' plain Newton; the ratios must be present, ordered and cover the truth.
    import kidresearch

    kid = kidresearch.connect("efi-frailty-65plus", data=demo_kid, user="tests")
    try:
        result = frailty.outcomes(kid, "2023-04-01", outcomes=("death",))
    finally:
        kid.close()
    true_hr = demo_truth["mortality"]["efi_hazard_ratios"]
    frame = result.frame.set_index("category")
    assert result.models["death"] is not None
    for category in ("mild", "moderate", "severe"):
        row = frame.loc[category]
        assert np.isfinite([row.hr, row.hr_lower, row.hr_upper]).all(), category
        assert row.hr_lower < true_hr[category] < row.hr_upper, (category, row.hr)
    assert 1 < frame.loc["mild", "hr"] < frame.loc["moderate", "hr"] < frame.loc["severe", "hr"]
