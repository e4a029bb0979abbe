"""Tests of kidresearch.variation: ACSC admissions per practice, ISRs, funnel flags vs truth.

Expected values come from hand computations shown in the tests (person-years, reference rates,
expected counts, Byars limits), from the fake KID's excess-ACSC practices, and from the demo
KID's truth.json.
"""

from __future__ import annotations

import datetime as dt

import matplotlib
import numpy as np
import pandas as pd
import pytest
from recipes_fake_kid import TOY_ACSC, make_fake_kid, pid, session_from_frames
from scipy import stats as sps

from kidresearch import variation
from kidresearch.variation import VariationError

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def fake():
    return make_fake_kid(n_people=8000, seed=9, n_practices=10, excess_practices=(2, 7))


def test_acsc_filter_matches_icd10_prefixes_from_the_code_list():
    import ibis

    codes = pd.DataFrame(
        {"indicator": "2.3.i", "condition": "x", "icd10_code": ["J44", "N390", "I10"]}
    )
    diagnoses = ["J44", "J441", "J4", "N390", "N39", "N391", "I10X", "I110", "J45"]
    table = ibis.memtable({"d": diagnoses})
    kept = table.filter(variation.acsc_filter(table.d, codes)).to_pandas().d.tolist()
    assert kept == ["J44", "J441", "N390", "I10X"]


def test_shipped_acsc_list_is_valid_icd10_prefixes():
    codes = variation.acsc_codes()
    assert {"2.3.i", "2.3.ii"} <= set(codes.indicator)
    assert codes.icd10_code.str.fullmatch(r"[A-Z]\d{2}[0-9X]?").all()


def _two_practice_kid() -> object:
    """Two practices; women 65-69 and men 70-74; everyone registered all of 2020."""
    people = []
    # Practice A: 100 women aged 65-69, 50 men aged 70-74. Practice B: 50 women, 200 men.
    for practice, sex, band_age, n in (
        ("G80001", "F", 66, 100),
        ("G80001", "M", 71, 50),
        ("G80002", "F", 66, 50),
        ("G80002", "M", 71, 200),
    ):
        for i in range(n):
            people.append(
                {
                    "person_id": pid(f"{practice}{sex}{i:03d}"),
                    "sex": sex,
                    "birth_year": 2020 - band_age - 1,
                    "birth_month": 1,
                    "practice_code": practice,
                }
            )
    persons = pd.DataFrame(people)
    # Admissions in 2020: A women 12 ACSC + 3 non-ACSC, A men 10; B women 2, B men 24.
    admitted = (
        [("G80001F", 12, "J45")]
        + [("G80001F", 3, "I21")]
        + [("G80001M", 10, "J44")]
        + [("G80002F", 2, "N390")]
        + [("G80002M", 24, "J45")]
    )
    rows = []
    for prefix, n, diag in admitted:
        for i in range(n):
            rows.append(
                {
                    "person_id": pid(f"{prefix}{i:03d}"),
                    "admission_date": dt.date(2020, 3, 1),
                    "discharge_date": dt.date(2020, 3, 2),
                    "admission_method": "21",
                    "primary_diagnosis_icd10": diag,
                    "is_emergency": True,
                    "is_elective": False,
                }
            )
    # An elective ACSC admission and one outside the period never count.
    rows.append({**rows[0], "is_emergency": False, "is_elective": True, "admission_method": "11"})
    rows.append({**rows[0], "admission_date": dt.date(2021, 1, 1)})
    practices = pd.DataFrame(
        {
            "practice_code": ["G80001", "G80002"],
            "practice_name": ["A", "B"],
            "district": ["Dover", "Thanet"],
            "lsoa_code": "E01000001",
            "latitude": 51.1,
            "longitude": 1.3,
        }
    )
    return session_from_frames(
        {"persons": persons, "inpatient_spells": pd.DataFrame(rows), "practices": practices}
    )


def test_isr_by_hand_with_byars_limits():
    kid = _two_practice_kid()
    result = variation.practice_admissions(kid, "2020-01-01", "2020-12-31", codes=TOY_ACSC)
    frame = result.frame.set_index("practice_code")
    py = 366 / 365.25  # 2020 is a leap year; everyone is registered all year
    # Reference rates per person-year: women (12 + 2) / (150 py), men (10 + 24) / (250 py).
    rate_f, rate_m = 14 / (150 * py), 34 / (250 * py)
    expected_a = 100 * py * rate_f + 50 * py * rate_m
    expected_b = 50 * py * rate_f + 200 * py * rate_m
    assert frame.loc["G80001", "observed"] == 22
    assert frame.loc["G80002", "observed"] == 26
    assert frame.loc["G80001", "expected"] == pytest.approx(expected_a)
    assert frame.loc["G80002", "expected"] == pytest.approx(expected_b)
    assert frame.loc["G80001", "person_years"] == pytest.approx(150 * py)
    isr_a = 22 / expected_a
    assert frame.loc["G80001", "isr"] == pytest.approx(isr_a)
    # Byars' approximation to the exact Poisson limits (Breslow and Day 1987), 95%.
    z = sps.norm.ppf(0.975)
    lower = 22 * (1 - 1 / (9 * 22) - z / (3 * np.sqrt(22))) ** 3 / expected_a
    upper = 23 * (1 - 1 / (9 * 23) + z / (3 * np.sqrt(23))) ** 3 / expected_a
    assert frame.loc["G80001", "isr_lower"] == pytest.approx(lower, rel=1e-9)
    assert frame.loc["G80001", "isr_upper"] == pytest.approx(upper, rel=1e-9)
    assert frame.loc["G80001", "district"] == "Dover"


def test_all_emergency_measure_counts_every_emergency_spell():
    kid = _two_practice_kid()
    result = variation.practice_admissions(kid, "2020-01-01", "2020-12-31", measure="all_emergency")
    observed = result.frame.set_index("practice_code").observed
    assert observed.to_dict() == {"G80001": 25.0, "G80002": 26.0}


def test_person_years_follow_registration_and_death():
    persons = pd.DataFrame(
        [
            {"person_id": pid("whole"), "sex": "F", "birth_year": 1950},
            {"person_id": pid("joins"), "sex": "F", "birth_year": 1950,
             "registration_start": dt.date(2020, 7, 1)},
            {"person_id": pid("dies"), "sex": "F", "birth_year": 1950,
             "date_of_death": dt.date(2020, 1, 11)},
            {"person_id": pid("left"), "sex": "F", "birth_year": 1950,
             "registration_end": dt.date(2019, 12, 31)},
        ]
    )  # fmt: skip
    spells = pd.DataFrame(
        [
            {
                "person_id": pid("whole"),
                "admission_date": dt.date(2020, 5, 1),
                "discharge_date": dt.date(2020, 5, 1),
                "admission_method": "21",
                "primary_diagnosis_icd10": "J45",
                "is_emergency": True,
                "is_elective": False,
            }
        ]
    )
    kid = session_from_frames({"persons": persons, "inpatient_spells": spells})
    result = variation.practice_admissions(kid, "2020-01-01", "2020-12-31", codes=TOY_ACSC)
    # 366 + 184 (1 July - 31 December) + 10 (1-10 January; the day of death is not at risk).
    assert result.frame.person_years.iloc[0] == pytest.approx((366 + 184 + 10) / 365.25)


def test_excess_practices_of_the_fake_kid_are_flagged_high(fake):
    result = variation.practice_admissions(fake, "2019-01-01", "2023-12-31", codes=TOY_ACSC)
    truth = fake.truth["excess_acsc_practices"]
    check = result.against_truth(truth, level="99.8")
    assert check["recall"] == 1.0 and check["precision"] == 1.0, check
    assert result.flagged("99.8", "high") == sorted(truth)
    # Through the truth-file form too.
    assert result.against_truth({"acsc": {"practices": truth}})["true_positives"] == 2


def test_risk_expected_flags_the_same_practices(fake):
    result = variation.practice_admissions(
        fake, "2022-01-01", "2022-12-31", expected="risk", codes=TOY_ACSC
    )
    frame = result.frame
    # Expected is a sum of probabilities: it matches observed in total (logit score equations).
    assert frame.expected.sum() == pytest.approx(frame.observed.sum(), rel=1e-4)
    assert set(result.flagged("95", "high")) == set(fake.truth["excess_acsc_practices"])


def test_summary_suppresses_small_counts_and_their_ratios(fake):
    kid = _two_practice_kid()
    result = variation.practice_admissions(kid, "2020-01-01", "2020-06-30", codes=TOY_ACSC)
    summary = result.summary().set_index("practice_code")
    # Both practices have at least 10 admissions here, so nothing is hidden...
    assert summary.observed.notna().all()
    small = variation.practice_admissions(kid, "2020-01-01", "2020-12-31", measure="all_emergency")
    frame = small.frame.copy()
    frame.loc[0, "observed"] = 4  # ...and a practice with 4 admissions is suppressed.
    hidden = variation.VariationResult(
        small.start, small.end, small.measure, small.expected_from, frame, small.limits
    ).summary()
    assert hidden.observed.isna().sum() == 1
    assert hidden.loc[hidden.observed.isna(), "isr"].isna().all()


def test_funnel_plot_and_html(fake):
    result = variation.practice_admissions(fake, "2019-01-01", "2023-12-31", codes=TOY_ACSC)
    ax = result.plot()
    assert ax.get_ylabel() == "observed / expected (ISR)"
    assert len(ax.lines) >= 5  # four limit lines and the line at 1
    assert "Practice variation" in result._repr_html_()
    assert {"lower_2s_limit", "upper_3s_limit"} <= set(result.limits.columns)


def test_bad_arguments_are_refused(fake):
    with pytest.raises(VariationError, match="'measure' parameter"):
        variation.practice_admissions(fake, "2020-01-01", "2020-12-31", measure="acs")
    with pytest.raises(VariationError, match="'expected' parameter"):
        variation.practice_admissions(fake, "2020-01-01", "2020-12-31", expected="crude")
    with pytest.raises(VariationError, match="must be after the 'start'"):
        variation.practice_admissions(fake, "2020-12-31", "2020-01-01")
    bad = pd.DataFrame({"indicator": ["x"], "condition": ["y"], "icd10_code": ["J4"]})
    with pytest.raises(VariationError, match="row 2: icd10_code 'J4'"):
        variation.acsc_codes(bad)
    with pytest.raises(VariationError, match="no excess-ACSC practice list"):
        variation._truth_practices({"seed": 1})


def test_demo_kid_flags_the_excess_acsc_practices(demo_session, demo_truth):
    # The demo has 20 practices, 2 of them with a true ACSC rate ratio of 1.7. At this scale
    # recall and precision are coarse (steps of 0.5), so the criterion is: every true practice
    # is flagged high at 95%, and at most one other practice is.
    period = demo_truth["period"]
    result = variation.practice_admissions(demo_session, period["start"], "2026-08-31")
    check = result.against_truth(demo_truth, level="95")
    assert check["recall"] == 1.0, check
    assert len(check["false_positives"]) <= 1, check
    true_isr = result.frame.set_index("practice_code").loc[demo_truth["acsc"]["practices"], "isr"]
    assert true_isr.between(1.2, 2.3).all()  # true rate ratio 1.7
