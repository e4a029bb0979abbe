"""kidresearch.summaries: recipe summaries made releasable, the truth file, naive vs matched."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kidresearch import reports, sdc
from kidresearch.errors import DisclosureError, KidError
from kidresearch.summaries import (
    checked_summary,
    load_truth,
    naive_vs_matched,
    round_significant,
    truth_path,
)


def _summary() -> pd.DataFrame:
    # As frailty.release leaves a table: counts through sdc with a status per count column.
    return pd.DataFrame(
        {
            "outcome": ["death", "death", "death"],
            "category": ["fit", "mild", "severe"],
            "people": [6330.0, 2270.0, 20.0],
            "people_status": ["rounded", "rounded", "rounded"],
            "events": [155.0, 190.0, np.nan],
            "events_status": ["rounded", "rounded", "primary:threshold"],
            "hr": [1.0, 1.7, 2.2],
            "significance": ["", "High", "High"],
        }
    )


def test_derived_numbers_are_blank_where_a_count_was_suppressed() -> None:
    checked = checked_summary(_summary(), "hrs", derived=["hr", "significance"])
    row = checked.released.iloc[2]
    assert np.isnan(row["hr"]) and pd.isna(row["significance"])
    assert checked.released["hr"].iloc[:2].tolist() == [1.0, 1.7]
    assert checked.released["people"].tolist() == [6330.0, 2270.0, 20.0]
    assert checked.passed and not checked.raw_passed and checked.suppressed_rows == 1


def test_default_derived_columns_are_the_numeric_non_count_columns() -> None:
    checked = checked_summary(_summary(), "hrs")
    assert np.isnan(checked.released["hr"].iloc[2])
    assert checked.released["significance"].iloc[2] == "High"  # text is not derived by default


def test_a_failed_model_check_withholds_the_summary(tmp_path: Path) -> None:
    failed = SimpleNamespace(passed=False, record={"name": "cox", "reasons": ["9 residual dof"]})
    checked = checked_summary(_summary(), "hrs", checks=[failed])
    assert not checked.passed
    record = reports.release(checked, "hrs", output_dir=tmp_path)
    assert record.status == "withheld" and record.reasons == ("9 residual dof",)
    assert not (tmp_path / "hrs.csv").exists()


def test_release_writes_the_blanked_table_and_a_figure_only_without_suppression(
    tmp_path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checked = checked_summary(_summary(), "hrs")
    assert reports.release(checked, "hrs", output_dir=tmp_path).status == "released"
    written = pd.read_csv(tmp_path / "hrs.csv")
    assert written["hr"].isna().tolist() == [False, False, True]
    fig, _ = plt.subplots()
    assert reports.release(fig, "all_rows", table=checked, output_dir=tmp_path).status == "withheld"
    plotted = checked.drop_suppressed()
    assert plotted.released["category"].tolist() == ["fit", "mild"]
    assert reports.release(fig, "shown_rows", table=plotted, output_dir=tmp_path).status == (
        "released"
    )
    plt.close(fig)


def test_a_real_sdc_model_check_is_accepted() -> None:
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    fit = sm.OLS(2 * x + rng.normal(size=200), sm.add_constant(x)).fit()
    model = sdc.check_model(fit, name="ols")
    frame = pd.DataFrame({"term": ["const", "x"], "coef": fit.params})
    checked = checked_summary(frame, "ols_coefficients", checks=[model])
    assert checked.passed == model.passed and checked.record["checks"][0]["name"] == "ols"


def test_bad_input_names_what_was_expected() -> None:
    with pytest.raises(DisclosureError, match="'<count>_status' columns"):
        checked_summary(pd.DataFrame({"unit": ["A"], "ratio": [1.0]}), "plain")
    with pytest.raises(DisclosureError, match="without their count column"):
        checked_summary(pd.DataFrame({"n_status": ["ok"]}), "orphan")
    with pytest.raises(DisclosureError, match="'derived' columns \\['rate'\\]"):
        checked_summary(_summary(), "hrs", derived=["rate"])
    with pytest.raises(DisclosureError, match="must be a checked output"):
        checked_summary(_summary(), "hrs", checks=[object()])
    with pytest.raises(DisclosureError, match="must be a pandas DataFrame"):
        checked_summary([1, 2], "list")  # type: ignore[arg-type]


def test_truth_is_found_beside_the_kid_as_kid_demo_lays_it_out(tmp_path: Path) -> None:
    (tmp_path / "kid").mkdir()
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "truth.json").write_text(json.dumps({"scenario": "demo"}))
    assert truth_path(tmp_path / "kid") == tmp_path / "synthetic" / "truth.json"
    assert load_truth(data=tmp_path / "kid") == {"scenario": "demo"}
    assert load_truth(tmp_path / "synthetic" / "truth.json")["scenario"] == "demo"


def test_missing_or_broken_truth_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "kid").mkdir()
    with pytest.raises(KidError, match="tried .*synthetic/truth.json"):
        truth_path(tmp_path / "kid")
    broken = tmp_path / "truth.json"
    broken.write_text("{not json")
    with pytest.raises(KidError, match="truth.json: not valid JSON"):
        load_truth(broken)
    broken.write_text("[1]")
    with pytest.raises(KidError, match="expected a JSON object"):
        load_truth(broken)


def test_naive_vs_matched_by_hand() -> None:
    # Treated y = 3, 5 (mean 4); controls y = 1, 1, 2, 4 (mean 2): naive difference 2.
    data = pd.DataFrame({"treated": [1, 1, 0, 0, 0, 0], "y": [3.0, 5.0, 1.0, 1.0, 2.0, 4.0]})
    study = SimpleNamespace(data=data, treatment="treated", outcomes=("y",), programme="p")
    effect = SimpleNamespace(
        estimate=1.5, conf_low=0.5, conf_high=2.5, p_value=0.01, n_treated=2, n_control=2
    )
    matched = SimpleNamespace(estimate=lambda outcome: effect)
    row = naive_vs_matched(study, matched).iloc[0]
    assert row["naive_difference"] == pytest.approx(2.0)
    # Welch SE: var(3,5) = 2 over 2, var(1,1,2,4) = 2 over 4 -> sqrt(1 + 0.5).
    half_width = 1.959964 * np.sqrt(1.5)
    assert row["naive_lower"] == pytest.approx(2.0 - half_width)
    assert row["naive_upper"] == pytest.approx(2.0 + half_width)
    assert (row["matched_difference"], row["treated"], row["controls"]) == (1.5, 2, 4)
    assert row["matched_adjusted"] == ""
    with pytest.raises(KidError, match="not columns of the cohort"):
        naive_vs_matched(study, matched, ["cost_gbp"])


def test_naive_vs_matched_passes_the_adjustment_on() -> None:
    data = pd.DataFrame({"treated": [1, 1, 0, 0], "y": [3.0, 5.0, 1.0, 2.0]})
    study = SimpleNamespace(data=data, treatment="treated", outcomes=("y",), programme="p")
    asked: list[object] = []

    def estimate(outcome: str, adjust: object = False) -> SimpleNamespace:
        asked.append(adjust)
        value = 1.0 if adjust else 2.0
        return SimpleNamespace(
            estimate=value, conf_low=0.0, conf_high=3.0, p_value=0.2, n_treated=2, n_control=2
        )

    matched = SimpleNamespace(estimate=estimate)
    rows = naive_vs_matched(study, matched, adjust=True)
    assert rows["matched_difference"].tolist() == [1.0]
    assert rows["matched_adjusted"].tolist() == ["matching covariates"]
    rows = naive_vs_matched(study, matched, adjust=["age", "efi_deficits"])
    assert rows["matched_adjusted"].tolist() == ["age, efi_deficits"]
    assert asked == [True, ["age", "efi_deficits"]]


def test_released_numbers_are_rounded_to_significant_figures() -> None:
    frame = _summary().assign(hr=[1.0, 1.7000000000000002, 2.2], rate=[3967.999668737, 1e-7, 0])
    released = checked_summary(frame, "hrs").released
    assert released["hr"].tolist()[:2] == [1.0, 1.7]
    assert released["rate"].tolist()[:2] == [3968.0, 1e-7]
    # Counts are left as disclosure control released them.
    assert released["people"].tolist() == [6330.0, 2270.0, 20.0]
    assert checked_summary(frame, "raw", digits=None).released["hr"].iloc[1] == 1.7000000000000002


def test_round_significant_by_hand() -> None:
    values = pd.Series([123456789.0, -0.000123456789, 0.5, np.nan, -np.inf])
    rounded = round_significant(values, 3).tolist()
    assert rounded[:3] == [123000000.0, -0.000123, 0.5]
    assert np.isnan(rounded[3]) and rounded[4] == -np.inf
