"""Tests of kidresearch.risk: features, fit with time-split validation, performance, equity.

Expected values come from hand-written records, brute-force reference computations run in the
test (pairwise AUC), simulated data with known calibration, the fake KID generator's true
logistic model, and (on the demo KID) the synthetic generator's truth.json.
"""

from __future__ import annotations

import datetime as dt

import matplotlib
import numpy as np
import pandas as pd
import pytest
from recipes_fake_kid import by_label, make_fake_kid, pid, session_from_frames

from kidresearch import risk
from kidresearch.risk import RiskError

matplotlib.use("Agg")


AT = dt.date(2020, 6, 30)
FAKE_FORMULA = (
    "emergency_admission ~ age_10 + C(sex) + C(imd_quintile == 1) + coded_deficits"
    " + emergency_admissions + ae_attendances"
)
FAKE_TERMS = {
    "Intercept": "Intercept",
    "age_10": "age_10",
    "male": "C(sex)[T.M]",
    "imd_q1": "C(imd_quintile == 1)[T.True]",
    "deficits": "coded_deficits",
}


@pytest.fixture(scope="module")
def fake():
    return make_fake_kid(n_people=8000, seed=5)


@pytest.fixture(scope="module")
def fake_model(fake):
    return risk.fit(fake, "2022-12-31", formula=FAKE_FORMULA)


def test_auc_equals_pairwise_concordance_with_ties_as_half():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    score = np.round(rng.random(300) + 0.3 * y, 1)  # rounded: many ties
    pos, neg = score[y], score[~y]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert risk.auc(y, score) == pytest.approx(pairwise, abs=1e-12)


def test_calibration_slope_is_one_for_true_risks_and_half_for_doubled_log_odds():
    rng = np.random.default_rng(2)
    logit = rng.normal(-1.5, 1, 60_000)
    p = 1 / (1 + np.exp(-logit))
    y = rng.random(len(p)) < p
    true = risk.calibration(y, p)
    assert true["calibration_slope"] == pytest.approx(1.0, abs=0.05)
    assert true["calibration_intercept"] == pytest.approx(0.0, abs=0.03)
    # Predictions whose log-odds are twice the truth: observed log-odds = 0.5 x predicted.
    doubled = 1 / (1 + np.exp(-2 * logit))
    assert risk.calibration(y, doubled)["calibration_slope"] == pytest.approx(0.5, abs=0.03)


def test_top_share_sensitivity_and_ppv_by_hand():
    # 200 people, 20 admitted; the two highest risks are one admitted, one not.
    y = np.zeros(200, dtype=int)
    y[:20] = 1
    p = np.linspace(0.01, 0.2, 200)[::-1].copy()
    p[[0, 1]] = p[[1, 0]]
    y[1] = 0
    y[25] = 1
    table = risk.performance_table(y, p).set_index("metric")["value"]
    # Top 1% = 2 people (indices 0 and 1): 1 admitted of 20 -> sensitivity 1/20, PPV 1/2.
    assert table["top_1pct_flagged"] == 2
    assert table["top_1pct_sensitivity"] == pytest.approx(1 / 20)
    assert table["top_1pct_ppv"] == pytest.approx(1 / 2)
    # Top 5% = 10 people (indices 0-9): 9 admitted.
    assert table["top_5pct_ppv"] == pytest.approx(9 / 10)
    assert table["brier"] == pytest.approx(np.mean((p - y) ** 2))


def test_features_count_use_inside_the_lookback_and_outcome_inside_the_horizon():
    lookback_start = dt.date(2017, 6, 30)  # 3 years before AT: events must be after it

    def spell(day, emergency=True):
        return {
            "person_id": pid("a"),
            "admission_date": day,
            "discharge_date": day,
            "admission_method": "21" if emergency else "11",
            "primary_diagnosis_icd10": "I21",
            "is_emergency": emergency,
            "is_elective": not emergency,
        }

    spells = pd.DataFrame(
        [
            spell(lookback_start),  # on the boundary: not counted
            spell(lookback_start + dt.timedelta(days=1)),
            spell(dt.date(2019, 12, 1)),  # within the last 12 months too
            spell(AT),  # on the index date: counted as prior use
            spell(dt.date(2019, 1, 5), emergency=False),
            spell(AT + dt.timedelta(days=1)),  # outcome
        ]
    )
    ae = pd.DataFrame(
        {
            "person_id": [pid("a"), pid("a"), pid("b")],
            "arrival_date": [dt.date(2018, 1, 1), dt.date(2016, 1, 1), dt.date(2019, 1, 1)],
            "department_type": "1",
            "disposal": "discharged",
        }
    )
    op = pd.DataFrame(
        {
            "person_id": [pid("a")] * 3,
            "appointment_date": [dt.date(2018, 1, 1)] * 3,
            "treatment_function_code": "300",
            "first_attendance": True,
            "attendance_status": ["5", "6", "3"],  # attended, attended late, did not attend
        }
    )
    persons = pd.DataFrame(
        [
            {"person_id": pid("a"), "sex": "M", "birth_year": 1940},
            {"person_id": pid("b"), "sex": "F", "birth_year": 1980},
        ]
    )
    lsoas = pd.DataFrame(
        {
            "lsoa_code": ["E01000001"],
            "district": ["Dover"],
            "imd_score": [30.0],
            "imd_decile": [2],
            "imd_quintile": [1],
            "latitude": 51.1,
            "longitude": 1.3,
        }
    )
    kid = session_from_frames(
        {
            "persons": persons,
            "inpatient_spells": spells,
            "ae_attendances": ae,
            "outpatient_appointments": op,
            "lsoas": lsoas,
        }
    )
    frame = by_label(risk.features(kid, AT))
    a, b = frame.loc["a"], frame.loc["b"]
    assert a.emergency_admissions == 3
    assert a.emergency_admissions_12m == 2 and a.any_emergency_12m == 1
    assert a.elective_admissions == 1
    assert a.ae_attendances == 1 and b.ae_attendances == 1
    assert a.outpatient_attendances == 2
    assert a.emergency_admission == 1 and b.emergency_admission == 0
    assert a.age == 80 and a.age_10 == 8.0
    assert a.deprivation == 4  # quintile 1 = most deprived
    assert a.efi_category == "fit"


def test_fit_recovers_the_fake_generators_coefficients(fake_model):
    compared = fake_model.compare(
        {
            "Intercept": -4.2,
            "age_10": 0.35,
            "male": 0.25,
            "imd_q1": 0.5,
            "deficits": 0.12,
        },
        FAKE_TERMS,
    )
    assert len(compared) == 5
    # Each estimate within 3.5 standard errors of the generator's value.
    assert (compared.z_from_truth.abs() < 3.5).all(), compared
    coefs = fake_model.coefficients().set_index("term")
    # Prior use has no effect in the fake's model once its covariates are in.
    assert (
        coefs.loc["emergency_admissions", "lower"] < 0 < coefs.loc["emergency_admissions", "upper"]
    )


def test_time_split_fits_a_year_earlier_and_validates_out_of_time(fake, fake_model):
    assert fake_model.fitted_at == dt.date(2021, 12, 31)
    assert fake_model.validated_at == dt.date(2022, 12, 31)
    validation = fake_model.validation
    # The validation outcome is the 2023 admissions of people alive and registered at 2022-12-31.
    spells = fake.frames["inpatient_spells"]
    in_2023 = spells[
        spells.is_emergency
        & (pd.to_datetime(spells.admission_date) > "2022-12-31")
        & (pd.to_datetime(spells.admission_date) <= "2023-12-31")
    ].person_id.unique()
    expected = validation.person_id.isin(in_2023).astype(int)
    assert (validation.emergency_admission.to_numpy() == expected.to_numpy()).all()
    perf = fake_model.performance().set_index("metric")["value"]
    assert perf["people"] == len(validation)
    assert perf["auc"] == pytest.approx(
        risk.auc(validation.emergency_admission, validation.predicted)
    )
    assert 0.6 < perf["auc"] < 0.95
    assert perf["calibration_slope"] == pytest.approx(1, abs=0.2)


def test_equity_reports_calibration_and_flag_rates_by_deprivation_and_sex(fake_model):
    equity = fake_model.equity(share=0.05)
    assert set(equity.dimension) == {"imd_quintile", "sex"}
    assert sorted(equity[equity.dimension == "sex"].group) == ["F", "M"]
    by_sex = equity[equity.dimension == "sex"]
    overall_flag_rate = (by_sex.flag_rate * by_sex.people).sum() / by_sex.people.sum()
    assert overall_flag_rate == pytest.approx(0.05, abs=1 / by_sex.people.sum())
    # People in quintile 1 carry the fake's +0.5 log-odds and are flagged more often.
    q = equity[equity.dimension == "imd_quintile"].set_index("group")
    assert q.loc["1", "flag_rate"] > q.loc["5", "flag_rate"]
    assert q.observed_to_expected.between(0.7, 1.3).all()


def test_predict_scores_everyone_at_a_date_without_outcomes(fake, fake_model):
    scores = fake_model.predict(fake, "2024-12-31")
    assert scores.predicted.between(0, 1).all()
    assert scores.person_id.is_unique
    assert {"practice_code", "imd_quintile"} <= set(scores.columns)


def test_result_object_summary_plot_and_html(fake_model):
    summary = fake_model.summary()
    assert {"coefficient", "performance"} == set(summary.section)
    assert fake_model.plot().get_xlabel() == "mean predicted risk"
    assert "risk model" in fake_model._repr_html_()
    calibration = fake_model.calibration_table()
    assert calibration.people.sum() == len(fake_model.validation)


def test_bad_arguments_are_refused_with_the_parameter_named(fake):
    with pytest.raises(RiskError, match="outcome window runs to 2031"):
        risk.fit(fake, "2030-12-31")
    with pytest.raises(RiskError, match="'validate' parameter"):
        risk.fit(fake, "2020-12-31", validate="random")
    with pytest.raises(RiskError, match="'outcome' parameter"):
        risk.features(fake, "2020-12-31", outcome="death")
    with pytest.raises(ValueError, match="'lookback' parameter"):
        risk.features(fake, "2020-12-31", lookback="three years")


# ------------------------------------------------------------------------------------------
# Demo KID: the synthetic generator's truth
# ------------------------------------------------------------------------------------------
def test_generator_coefficients_are_recovered_on_the_demo_kid(demo_session, demo_truth):
    # Fit at 2023-10-31 (model year 2023-11..2024-10) and validate at 2024-10-31: both model
    # years are fully observed and the prior-year admissions are in the data.
    model = risk.fit(demo_session, "2024-10-31", formula=risk.GENERATOR_FORMULA)
    compared = model.against_truth(demo_truth).set_index("term")
    assert len(compared) == 9
    # About 44,000 people and 3,500 admitted a year: standard errors 0.01 (age) to 0.15
    # (severe frailty). Every estimate lies within 3 standard errors of the truth, and the
    # well-determined ones within 0.1 on the log-odds scale.
    assert (compared.z_from_truth.abs() < 3).all(), compared
    precise = compared[compared.std_err < 0.06]
    assert ((precise.coef - precise.truth).abs() < 0.1).all(), precise
    perf = model.performance().set_index("metric")["value"]
    assert 0.65 < perf["auc"] < 0.8
    assert perf["calibration_slope"] == pytest.approx(1, abs=0.15)
