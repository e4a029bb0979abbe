"""Output log, saving checked tables, re-checking a folder, and `kid outputs check`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kidresearch.cli import main as kid
from kidresearch.errors import DisclosureError
from kidresearch.sdc import OutputLog, OutputRecord, check_folder, check_table


def _table() -> pd.DataFrame:
    # One small cell (3): with margins it needs secondary suppression.
    return pd.DataFrame(
        {"yes": [3, 26, 31], "no": [12, 40, 17]},
        index=pd.Index(["Dover", "Swale", "Thanet"], name="district"),
    )


def test_output_log_collects_records_and_writes_json(tmp_path) -> None:
    log = OutputLog()
    checked = check_table(_table(), name="admissions")
    log.add(checked)
    log.add(checked.request_exception("margins are published by KCC already"))
    path = tmp_path / "log.json"
    text = log.to_json(path)
    data = json.loads(path.read_text())
    assert text == path.read_text()
    assert [o["status"] for o in data["outputs"]] == ["pass", "review"]
    assert (
        data["outputs"][1]["exception"]["justification"] == "margins are published by KCC already"
    )
    assert data["outputs"][0]["policy"]["threshold"] == 10
    assert not log.ok
    with pytest.raises(DisclosureError, match="justification"):
        checked.request_exception("  ")
    with pytest.raises(DisclosureError, match="status"):
        OutputRecord("x", "table", "maybe")


def test_saved_table_rechecks_clean(tmp_path) -> None:
    check_table(_table(), name="admissions").save(tmp_path)
    result = check_folder(tmp_path)
    assert result.ok, result.summary()
    assert result.summary()["file"].tolist() == ["admissions.csv"]


def test_tampered_small_count_fails(tmp_path) -> None:
    check_table(_table(), name="admissions").save(tmp_path)
    csv = tmp_path / "admissions.csv"
    frame = pd.read_csv(csv)
    hit = (frame["district"] == "Dover") & (frame["column"] == "yes")
    frame.loc[hit, "value"] = 3
    frame.to_csv(csv, index=False)
    result = check_folder(tmp_path)
    assert not result.ok
    assert "below the threshold of 10" in result.summary()["reasons"].iloc[0]


def test_suppression_without_secondary_cells_fails_the_lp_audit(tmp_path) -> None:
    check_table(_table(), name="admissions").save(tmp_path)
    csv = tmp_path / "admissions.csv"
    frame = pd.read_csv(csv)
    # Put the secondary cells back: only the 3 stays hidden, and its row total gives it away.
    truth = {
        ("Dover", "no"): 12,
        ("Swale", "yes"): 26,
        ("Swale", "no"): 40,
        ("Thanet", "yes"): 31,
        ("Thanet", "no"): 17,
    }
    for (d, c), v in truth.items():
        frame.loc[(frame["district"] == d) & (frame["column"] == c), "value"] = v
    frame.to_csv(csv, index=False)
    assert frame["value"].isna().sum() == 1
    result = check_folder(tmp_path)
    assert result.summary()["status"].tolist() == ["fail"]
    assert "can be recovered" in result.summary()["reasons"].iloc[0]


def test_bare_csv_checked_by_column_names(tmp_path) -> None:
    pd.DataFrame({"district": ["Dover", "Swale"], "n": [40, 12]}).to_csv(
        tmp_path / "a_ok.csv", index=False
    )
    pd.DataFrame({"district": ["Dover", "Swale"], "admissions_n": [40, 4]}).to_csv(
        tmp_path / "b_small.csv", index=False
    )
    pd.DataFrame({"district": ["Dover"], "mean_cost": [1200.5]}).to_csv(
        tmp_path / "c_unknown.csv", index=False
    )
    pd.DataFrame({"district": ["Dover"], "n": [40], "max": [99.0]}).to_csv(
        tmp_path / "d_max.csv", index=False
    )
    (tmp_path / "e_plot.png").write_bytes(b"\x89PNG")
    summary = check_folder(tmp_path).summary().set_index("file")["status"]
    assert summary.to_dict() == {
        "a_ok.csv": "pass",
        "b_small.csv": "fail",
        "c_unknown.csv": "review",
        "d_max.csv": "fail",
        "e_plot.png": "review",
    }


def test_check_folder_takes_the_policy_from_a_proposal(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pd.DataFrame({"district": ["Dover"], "n": [12]}).to_csv(out / "t.csv", index=False)
    proposal = tmp_path / "proposal.yaml"
    proposal.write_text("output_policy:\n  threshold: 15\n")
    assert not check_folder(out, proposal=proposal).ok
    assert check_folder(out).ok
    with pytest.raises(DisclosureError, match="does not exist"):
        check_folder(tmp_path / "missing")


def test_kid_outputs_check_exit_codes(tmp_path, capsys) -> None:
    check_table(_table(), name="admissions").save(tmp_path)
    assert kid(["outputs", "check", str(tmp_path)]) == 0
    pd.DataFrame({"district": ["Dover"], "n": [3]}).to_csv(tmp_path / "small.csv", index=False)
    assert kid(["outputs", "check", str(tmp_path)]) == 7
    assert "small.csv" in capsys.readouterr().out
    bad_policy = tmp_path / "policy.yaml"
    bad_policy.write_text("threshhold: 5\n")
    assert kid(["outputs", "check", str(tmp_path), "--policy", str(bad_policy)]) == 7
    assert "threshhold" in capsys.readouterr().err


def test_saved_hierarchical_table_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {
            "district": np.repeat(["Dover", "Dover", "Thanet", "Thanet"], 3),
            "practice": np.repeat(["P1", "P2", "P3", "P4"], 3),
            "efi_category": np.tile(["fit", "mild", "severe"], 4),
            "n": rng.choice([2, 25, 40], 12),
        }
    )
    checked = check_table(
        frame,
        counts="n",
        keys=["practice", "efi_category"],
        hierarchy={"practice": "district"},
        name="h",
    )
    checked.save(tmp_path)
    assert check_folder(tmp_path).ok
