"""Tests of kidresearch.segments: each Bridges to Health rule on hand-made people, the order of
precedence, window edges, and the demo KID against the generator's truth."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from recipes_fake_kid import by_label, pid, toy_session

from kidresearch import segments
from kidresearch.data import load
from kidresearch.segments import Segmentation, SegmentError, bridges_to_health

AT = dt.date(2024, 6, 30)
EFI = load("efi_deficits", dtype={"snomed_code": str})
EFI = EFI[EFI.snomed_code.notna()]
DIABETES = EFI[EFI.deficit == "diabetes"].snomed_code.iloc[0]
HEART_FAILURE = EFI[EFI.deficit == "heart_failure"].snomed_code.iloc[0]
FALLS = EFI[EFI.deficit == "falls"].snomed_code.iloc[0]  # a deficit, not a long-term condition
NINE_DEFICITS = EFI.groupby("deficit").snomed_code.first().iloc[:9].tolist()


def person(label: str, birth_year: int = 1950, **kw) -> dict:
    return {"person_id": pid(label), "birth_year": birth_year, **kw}


def gp(label: str, code: str, date: dt.date) -> dict:
    return {"person_id": pid(label), "event_date": date, "snomed_code": code}


def emergency(label: str, date: dt.date) -> dict:
    return {
        "person_id": pid(label),
        "admission_date": date,
        "discharge_date": date,
        "is_emergency": True,
        "is_elective": False,
    }


def ae(label: str, date: dt.date) -> dict:
    return {"person_id": pid(label), "arrival_date": date}


def days_before(n: int) -> dt.date:
    return AT - dt.timedelta(days=n)


@pytest.fixture(scope="module")
def hand_made() -> Segmentation:
    """One or more hand-made people per rule; the comment says which rule must win."""
    rows = {
        "persons": [
            person("healthy"),
            person("healthy_falls"),  # a non-LTC deficit code: still healthy
            person("infant", birth_year=2024),  # under 1 on AT
            person("toddler", birth_year=2022),  # 2: not infant
            person("pregnant", birth_year=1995),
            person("pregnant_long_ago", birth_year=1995),
            person("acute_ae"),
            person("acute_ae_91_days"),  # outside the 90-day window
            person("acute_admission"),
            person("infant_in_ae", birth_year=2024),  # acutely ill outranks maternal & infant
            person("chronic"),
            person("chronic_and_ae"),  # chronic outranks acutely ill
            person("future_code"),  # code after AT is ignored
            person("disability_care_home"),
            person("disability_ld"),
            person("care_home_ended"),
            person("failing"),  # organ failure + 2 emergencies in 12 months
            person("failing_one_admission"),  # only 1: chronic (HF is an LTC)
            person("frail"),  # 9 deficits
            person("frail_and_failing"),  # frailty outranks failing health
            person("eol_hospice"),
            person("eol_hospice_ended_long_ago"),  # hospice ended 13 months before: not EoL
            person("eol_palliative_code"),
            person("eol_and_frail"),  # end of life outranks frailty
            person("dead", date_of_death=days_before(10)),  # not in the population
        ],
        "gp_events": [
            gp("healthy_falls", FALLS, days_before(100)),
            gp("pregnant", "77386006", days_before(60)),
            gp("pregnant_long_ago", "77386006", days_before(400)),
            gp("chronic", DIABETES, dt.date(2010, 1, 1)),
            gp("chronic_and_ae", DIABETES, dt.date(2010, 1, 1)),
            gp("future_code", DIABETES, AT + dt.timedelta(days=1)),
            gp("disability_ld", "110359009", dt.date(2000, 5, 1)),
            gp("failing", HEART_FAILURE, dt.date(2020, 1, 1)),
            gp("failing_one_admission", HEART_FAILURE, dt.date(2020, 1, 1)),
            *[gp("frail", c, dt.date(2015, 1, 1)) for c in NINE_DEFICITS],
            *[gp("frail_and_failing", c, dt.date(2015, 1, 1)) for c in NINE_DEFICITS],
            gp("frail_and_failing", "363346000", dt.date(2023, 1, 1)),
            gp("eol_palliative_code", "103735009", days_before(30)),
            *[gp("eol_and_frail", c, dt.date(2015, 1, 1)) for c in NINE_DEFICITS],
        ],
        "ae_attendances": [
            ae("acute_ae", days_before(90)),
            ae("acute_ae_91_days", days_before(91)),
            ae("infant_in_ae", days_before(5)),
            ae("chronic_and_ae", days_before(5)),
        ],
        "inpatient_spells": [
            emergency("acute_admission", days_before(10)),
            emergency("failing", days_before(200)),
            emergency("failing", days_before(20)),
            emergency("failing_one_admission", days_before(20)),
            emergency("frail_and_failing", days_before(40)),
            emergency("frail_and_failing", days_before(50)),
        ],
        "social_care_packages": [
            {
                "person_id": pid("disability_care_home"),
                "start_date": dt.date(2022, 1, 1),
                "end_date": None,
                "service_type": "nursing",
            },
            {
                "person_id": pid("care_home_ended"),
                "start_date": dt.date(2022, 1, 1),
                "end_date": days_before(1),
                "service_type": "residential",
            },
        ],
        "hospice_episodes": [
            {"person_id": pid("eol_hospice"), "start_date": days_before(100), "end_date": None},
            {
                "person_id": pid("eol_hospice_ended_long_ago"),
                "start_date": days_before(500),
                "end_date": days_before(400),
            },
            {"person_id": pid("eol_and_frail"), "start_date": days_before(3), "end_date": None},
        ],
    }
    return bridges_to_health(toy_session(rows), AT)


EXPECTED = {
    "healthy": "healthy",
    "healthy_falls": "healthy",
    "infant": "maternal_and_infant",
    "toddler": "healthy",
    "pregnant": "maternal_and_infant",
    "pregnant_long_ago": "healthy",
    "acute_ae": "acutely_ill",
    "acute_ae_91_days": "healthy",
    "acute_admission": "acutely_ill",
    "infant_in_ae": "acutely_ill",
    "chronic": "chronic_conditions",
    "chronic_and_ae": "chronic_conditions",
    "future_code": "healthy",
    "disability_care_home": "disability",
    "disability_ld": "disability",
    "care_home_ended": "healthy",
    "failing": "failing_health",
    "failing_one_admission": "chronic_conditions",
    "frail": "frailty",
    "frail_and_failing": "frailty",
    "eol_hospice": "end_of_life",
    "eol_hospice_ended_long_ago": "healthy",
    "eol_palliative_code": "end_of_life",
    "eol_and_frail": "end_of_life",
}


@pytest.mark.parametrize("person_id", sorted(EXPECTED))
def test_hand_made_people_get_the_segment_of_the_first_rule_that_applies(
    hand_made: Segmentation, person_id: str
) -> None:
    row = by_label(hand_made.frame).loc[person_id]
    assert str(row.segment) == EXPECTED[person_id]


def test_dead_people_are_not_segmented_and_everyone_alive_gets_exactly_one(
    hand_made: Segmentation,
) -> None:
    assert set(by_label(hand_made.frame).index) == set(EXPECTED)
    assert hand_made.frame.segment.notna().all()
    assert list(hand_made.frame.segment.cat.categories) == list(segments.SEGMENTS)


def test_rule_flags_are_kept_when_a_higher_rule_wins(hand_made: Segmentation) -> None:
    f = by_label(hand_made.frame)
    assert f.loc["eol_and_frail", "is_frailty"] and f.loc["eol_and_frail", "is_end_of_life"]
    assert f.loc["frail_and_failing", "is_failing_health"]
    assert f.loc["chronic_and_ae", "is_acutely_ill"]
    assert f.loc["frail", "deficit_count"] == 9


def test_imd_deciles_and_quintiles_come_from_the_lsoa(hand_made: Segmentation) -> None:
    # Every toy person lives in E01000001, quintile 1 and decile 2 in the toy lsoas table.
    assert set(hand_made.frame.imd_quintile) == {1}
    assert set(hand_made.frame.imd_decile) == {2}


def test_counts_add_up_to_the_population(hand_made: Segmentation) -> None:
    counts = hand_made.counts()
    expected = pd.Series(EXPECTED).value_counts()
    got = counts.set_index("segment").people
    assert got[got > 0].sort_index().to_dict() == expected.sort_index().to_dict()
    assert counts.share.sum() == pytest.approx(1.0)


def test_crosstab_deprivation_matches_pandas_for_released_cells() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "segment": rng.choice(["healthy", "chronic_conditions", "frailty"], 600),
            "imd_quintile": rng.integers(1, 6, 600),
        }
    )
    table = segments.crosstab_deprivation(Segmentation(at=AT, frame=frame))
    released = table.released
    reference = pd.crosstab(frame.segment, frame.imd_quintile)
    for seg in reference.index:
        for q in reference.columns:
            if not np.isnan(released.loc[seg, q]):
                assert released.loc[seg, q] == pytest.approx(reference.loc[seg, q], abs=2.5)
    assert released.loc["Total", "Total"] == pytest.approx(600, abs=2.5)


def test_crosstab_deprivation_rejects_bad_arguments() -> None:
    seg = Segmentation(at=AT, frame=pd.DataFrame({"segment": ["healthy"], "imd_quintile": [1]}))
    with pytest.raises(SegmentError, match="'by' parameter"):
        segments.crosstab_deprivation(seg, by="mosaic_group")
    with pytest.raises(SegmentError, match="Segmentation"):
        segments.crosstab_deprivation(pd.DataFrame())
    missing = Segmentation(
        at=AT, frame=pd.DataFrame({"segment": ["healthy"], "imd_quintile": [pd.NA]})
    )
    with pytest.raises(SegmentError, match="no imd_quintile"):
        segments.crosstab_deprivation(missing)


def test_malformed_code_list_is_refused_naming_the_row() -> None:
    bad = pd.DataFrame({"rule": ["end_of_life", "mosaic"], "snomed_code": ["1", "2"]})
    with pytest.raises(SegmentError, match="row 1: rule 'mosaic'"):
        segments.segment_codes(bad)
    with pytest.raises(SegmentError, match="missing"):
        segments.segment_codes(pd.DataFrame({"rule": ["end_of_life"]}))


def test_shipped_code_list_has_provenance() -> None:
    from importlib import resources

    sources = (resources.files("kidresearch.data") / "SOURCES.md").read_text()
    assert "## segment_codes.csv" in sources
    codes = segments.segment_codes()
    assert codes.snomed_code.str.fullmatch(r"\d{6,18}").all()


def test_demo_frailty_segment_flag_matches_true_efi_share(demo_session, demo_truth) -> None:
    at = "2024-11-01"
    seg = bridges_to_health(demo_session, at)
    f = seg.frame
    older = f[(f.age >= 65) & (f.age <= 95)]
    truth = next(e for e in demo_truth["efi"]["shares_by_date"] if e["date"] == at)
    assert older.is_frailty.mean() == pytest.approx(truth["moderate_or_severe"], abs=0.02)
    assert len(f) == pytest.approx(demo_truth["costs"]["people"], rel=0.01)  # alive and registered
    assert f.segment.notna().all()
    # The hierarchy: every frail person is in frailty or end of life.
    assert set(f.loc[f.is_frailty, "segment"].astype(str)) <= {"frailty", "end_of_life"}
    table = segments.crosstab_deprivation(seg)
    assert table.released.loc["Total", "Total"] == pytest.approx(len(f), abs=5)


def test_segment_plot_shows_released_counts(hand_made: Segmentation) -> None:
    import matplotlib

    matplotlib.use("Agg")
    ax = hand_made.plot()
    assert "segments" in ax.get_title()
