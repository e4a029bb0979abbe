"""Tests of kidresearch.reports: the papermill batch runner, release(), verify and the register.

The runner is tested with tiny notebooks in tests/data/notebooks that need no KID:
``tiny_release`` checks with ``kidresearch.sdc`` and releases a table of people by district
(Ashford 30, Dover 25, Thanet 40, times the ``scale`` parameter) and a bar chart of it, and a
district-by-sex table with cells of 3 people (released with suppressed cells) whose chart must be
withheld; ``tiny_fails`` releases a table and then raises; ``tiny_no_parameters`` has no cell tagged
``parameters``. Expected values below are those hand-written inputs.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import yaml

from kidresearch import reports
from kidresearch.cli import main
from kidresearch.errors import (
    AccessRefused,
    DisclosureError,
    ProposalError,
    ReportError,
)

DATA = Path(__file__).parent / "data"
NOTEBOOKS = DATA / "notebooks"
PROPOSAL = DATA / "proposal_reports_test.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _proposal(folder: Path, name: str, **fields: object) -> Path:
    """A copy of the test proposal with some fields changed, written to ``folder/name``."""
    content = yaml.safe_load(PROPOSAL.read_text())
    content.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(content))
    return path


def _checked(frame: pd.DataFrame, passed: bool, reasons: list[str] | None = None):
    return SimpleNamespace(released=frame, passed=passed, record={"reasons": reasons or []})


@pytest.fixture(scope="session")
def batch(tmp_path_factory: pytest.TempPathFactory) -> reports.ReportRun:
    """One run of all three test notebooks (one fine, one failing, one without parameters),
    with the parameter scale=2 given as a CLI-style string.

    Made once per test session and shared by the xdist workers (a file lock in the folder the
    workers share, as tests/conftest.py does for the demo KID).
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / "shared" / "report_batch"
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "report_batch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            manifests = sorted(out.glob("*/*/manifest.json"))
            if manifests:
                manifest = manifests[0]
                return reports.ReportRun(manifest.parent, json.loads(manifest.read_text()))
            return reports.run(PROPOSAL, parameters={"scale": "2"}, out=out, notebook_dir=NOTEBOOKS)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------- failure isolation
def test_one_failing_notebook_is_reported_and_the_others_still_run(batch):
    summary = batch.summary().set_index("notebook")
    assert not batch.ok
    assert summary.loc["tiny_release.ipynb", "status"] == "ok"
    assert summary.loc["tiny_fails.ipynb", "status"] == "error"
    assert "deliberate failure for the runner tests" in summary.loc["tiny_fails.ipynb", "error"]
    assert summary.loc["tiny_no_parameters.ipynb", "status"] == "error"
    assert "tagged 'parameters'" in summary.loc["tiny_no_parameters.ipynb", "error"]
    assert (batch.run_dir / "executed" / "tiny_fails.ipynb").is_file()
    assert list(summary.index) == [
        "tiny_release.ipynb",
        "tiny_fails.ipynb",
        "tiny_no_parameters.ipynb",
    ]


def test_outputs_of_a_failed_notebook_are_withheld(batch):
    out = batch.to_frame().set_index("name")
    assert out.loc["before_failure", "status"] == "withheld"
    assert "notebook failed" in out.loc["before_failure", "reasons"]
    assert not (batch.run_dir / "released" / "tiny_fails").exists()


def test_cli_exit_code_is_8_when_a_notebook_fails(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    shutil.copy(NOTEBOOKS / "tiny_no_parameters.ipynb", tmp_path / "notebooks")
    monkeypatch.chdir(tmp_path)
    code = main(
        ["report", "run", str(PROPOSAL), "--notebooks", "tiny_no_parameters", "--out", "r", "-q"]
    )
    assert code == 8
    assert len(list((tmp_path / "r" / "test-reports-001").glob("*/manifest.json"))) == 1


def test_a_missing_approved_notebook_is_reported_and_the_others_still_run(tmp_path):
    (tmp_path / "notebooks").mkdir()
    shutil.copy(NOTEBOOKS / "tiny_no_parameters.ipynb", tmp_path / "notebooks")
    proposal = _proposal(
        tmp_path, "p.yaml", notebooks=["not_written_yet.ipynb", "tiny_no_parameters.ipynb"]
    )
    result = reports.run(proposal, out=tmp_path / "r", notebook_dir=tmp_path / "notebooks")
    summary = result.summary().set_index("notebook")
    assert "does not exist" in summary.loc["not_written_yet.ipynb", "error"]
    assert "tagged 'parameters'" in summary.loc["tiny_no_parameters.ipynb", "error"]
    assert not result.ok


# ------------------------------------------------------------------------------- refusals
def test_unapproved_notebook_is_refused_and_audited(tmp_path):
    from kidresearch import audit

    kid_dir = tmp_path / "kid"
    kid_dir.mkdir()
    out = tmp_path / "reports"
    with pytest.raises(
        AccessRefused, match=r"does not approve notebook\(s\) secret_analysis.ipynb"
    ):
        reports.run(
            PROPOSAL,
            notebooks=["secret_analysis"],
            data=kid_dir,
            out=out,
            notebook_dir=NOTEBOOKS,
        )
    assert not out.exists()
    logged = audit.show(kid_dir)
    assert list(logged["action"]) == ["refused"]
    assert list(logged["proposal"]) == ["test-reports-001"]
    assert audit.verify(kid_dir).ok


def test_cli_refusal_exit_code_is_5(tmp_path, capsys):
    code = main(
        ["report", "run", str(PROPOSAL), "--notebooks", "other.ipynb", "--out", str(tmp_path)]
    )
    assert code == 5
    assert "tiny_release.ipynb" in capsys.readouterr().err


def test_expired_proposal_is_refused(tmp_path):
    expired = _proposal(
        tmp_path, "old.yaml", id="old-1", approved="2019-01-01", expires="2020-01-31"
    )
    with pytest.raises(ProposalError, match="expired on 2020-01-31"):
        reports.run(expired, out=tmp_path, notebook_dir=NOTEBOOKS)


def test_reserved_parameter_and_missing_notebook_are_refused(tmp_path):
    with pytest.raises(ProposalError, match="output_dir"):
        reports.run(
            PROPOSAL, parameters={"output_dir": "/tmp"}, out=tmp_path, notebook_dir=NOTEBOOKS
        )
    with pytest.raises(ProposalError, match="kid_version"):
        reports.run(PROPOSAL, parameters={"kid_version": "2025-01"}, out=tmp_path)
    with pytest.raises(ProposalError, match="do not exist: .*tiny_release.ipynb"):
        reports.run(PROPOSAL, out=tmp_path, notebook_dir=tmp_path)
    with pytest.raises(ProposalError, match="no proposal 'nope-9'"):
        reports.run("nope-9", out=tmp_path)


def test_proposal_without_id_names_the_field(tmp_path):
    bad = _proposal(tmp_path, "bad.yaml", id=None)
    with pytest.raises(ProposalError, match=r"bad\.yaml: id: "):
        reports.run(bad, out=tmp_path)
    assert not (tmp_path / "test-reports-001").exists()


# ------------------------------------------------------------------------------- released outputs
def test_released_folder_holds_only_outputs_that_passed(batch):
    released = sorted(
        p.relative_to(batch.run_dir / "released").as_posix()
        for p in (batch.run_dir / "released").rglob("*")
        if p.is_file()
    )
    assert released == [
        "tiny_release/people_by_district.csv",
        "tiny_release/people_by_district.sdc.json",
        "tiny_release/people_by_district_bar.png",
        "tiny_release/people_by_district_bar.png.sdc.json",
        "tiny_release/people_by_district_bar.table.csv",
        "tiny_release/people_by_district_bar.table.sdc.json",
        "tiny_release/people_by_district_sex.csv",
        "tiny_release/people_by_district_sex.sdc.json",
    ]
    out = batch.to_frame().set_index("name")
    # The district-by-sex table has cells of 3 people: it is released with them suppressed,
    # but its chart would show them, so the chart is withheld.
    assert out.loc["people_by_district_sex", "status"] == "released"
    assert out.loc["people_by_district_sex_bar", "status"] == "withheld"
    assert "suppressed cell(s)" in out.loc["people_by_district_sex_bar", "reasons"]
    dc = batch.manifest["disclosure_control"]
    assert (dc["released"], dc["withheld"], dc["released_files"]) == (3, 2, 8)


def test_released_folder_passes_kid_outputs_check(batch, capsys):
    folder = batch.run_dir / "released" / "tiny_release"
    assert main(["outputs", "check", str(folder)]) == 0
    assert "people_by_district_bar.png" in capsys.readouterr().out


def test_suppressed_cells_are_blank_in_the_released_table(batch):
    table = batch.run_dir / "released" / "tiny_release" / "people_by_district_sex.csv"
    frame = pd.read_csv(table)
    # 40 Thanet people (20 F, 20 M) and 3 Dover women: Dover's cells fail the threshold of 10
    # and Thanet's must go too, or they could be recovered from the column totals.
    assert frame.loc[frame["district"] != "Total", "value"].isna().all()
    totals = frame[frame["district"] == "Total"].set_index("sex")["value"]
    assert totals.to_dict() == {"F": 23.0, "M": 20.0, "Total": 43.0}


def test_released_table_has_the_notebook_values_with_the_parameter_applied(batch):
    table = batch.run_dir / "released" / "tiny_release" / "people_by_district.csv"
    # Built in the notebook as Thanet 40, Dover 25, Ashford 30 people times scale (here 2).
    assert table.read_text() == "district,value\nAshford,60.0\nDover,50.0\nThanet,80.0\n"
    assert batch.manifest["parameters"] == {"scale": 2}


def test_released_figure_is_a_png(batch):
    png = batch.run_dir / "released" / "tiny_release" / "people_by_district_bar.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    image = plt.imread(png)
    assert image.shape[:2] == (300, 400)  # figsize (4, 3) at reports.FIGURE_DPI = 100


def test_html_reports_researcher_and_commissioner(batch):
    html_dir = batch.run_dir / "html"
    researcher = (html_dir / "tiny_release.html").read_text()
    hidden = (html_dir / "tiny_release.commissioner.html").read_text()
    code_cell = 'jp-InputArea-editor" data-type="inline"'
    assert "by_district_sex" in researcher and code_cell in researcher  # code shown
    assert "by_district_sex" not in hidden
    assert code_cell not in hidden  # code hidden
    assert "data:image/png;base64" in hidden
    # A failed notebook gets the researcher version (to debug) but no commissioner version.
    assert (html_dir / "tiny_fails.html").is_file()
    assert not (html_dir / "tiny_fails.commissioner.html").exists()


# ------------------------------------------------------------------------------- manifest
def test_manifest_records_provenance(batch):
    m = json.loads((batch.run_dir / "manifest.json").read_text())
    assert m == batch.manifest
    assert m["proposal"]["id"] == "test-reports-001"
    assert m["proposal"]["sha256"] == _sha(PROPOSAL)
    assert _sha(batch.run_dir / "proposal.yaml") == _sha(PROPOSAL)
    assert m["environment"]["packages"]["pandas"] == importlib.metadata.version("pandas")
    assert m["environment"]["packages"]["papermill"] == importlib.metadata.version("papermill")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parents[1], capture_output=True, text=True
    )
    if head.returncode == 0:  # others may commit meanwhile: the recorded commit is in HEAD's past
        recorded = m["environment"]["git"]["commit"]
        ancestor = subprocess.run(
            ["git", "merge-base", "--is-ancestor", recorded, "HEAD"], cwd=Path(__file__).parents[1]
        )
        assert ancestor.returncode == 0, recorded
    for nb in m["notebooks"]:
        assert nb["sha256"] == _sha(NOTEBOOKS / nb["notebook"])
    ran = [nb for nb in m["notebooks"] if nb["executed"]]
    assert all(nb["seconds"] > 0 for nb in ran)
    for out in m["outputs"]:
        for f in out["files"]:
            assert f["sha256"] == _sha(batch.run_dir / f["path"])
    run_id = batch.run_dir.name
    assert m["run_id"] == run_id and len(run_id.split("-")[-1]) == 8


def test_kid_version_and_input_hashes_come_from_the_version_manifest(tmp_path):
    # The layout `kid build` publishes: CURRENT names the version; versions/<v>/manifest.json.
    kid = tmp_path / "kid"
    for label, digest in (("2026-09", "cd"), ("2026-10", "ab")):
        (kid / "versions" / label).mkdir(parents=True)
        inputs = [
            {"file": f"gp_events/gp_events_{label}.parquet", "sha256": digest * 32, "rows": 5}
        ]
        (kid / "versions" / label / "manifest.json").write_text(
            json.dumps({"version": label, "inputs": inputs, "content_hash": "x" + digest})
        )
    (kid / "CURRENT").write_text("2026-10\n")
    info = reports._kid_info(kid, "latest")
    assert info["version"] == "2026-10"
    assert info["input_hashes"] == {"gp_events/gp_events_2026-10.parquet": "ab" * 32}
    assert info["manifest_sha256"] == _sha(kid / "versions" / "2026-10" / "manifest.json")
    pinned = reports._kid_info(kid, "2026-09")
    assert pinned["input_hashes"] == {"gp_events/gp_events_2026-09.parquet": "cd" * 32}
    with pytest.raises(ProposalError, match="KID version '2025-01' is not published"):
        reports._kid_info(kid, "2025-01")


# ------------------------------------------------------------------------------- reproducibility
def test_rerun_with_the_same_inputs_gives_identical_released_files(batch, tmp_path):
    result = reports.verify(batch.run_dir, out=tmp_path)
    # The failing notebooks fail again (same ending), and every released file is identical.
    assert result.ok, str(result)
    assert list(result.comparison["status"]) == ["same"] * 8
    rerun_dir = next((tmp_path / "test-reports-001").iterdir())
    for path in batch.released_files():
        twin = rerun_dir / path.relative_to(batch.run_dir)
        assert (
            hashlib.sha256(twin.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()
        )
    assert rerun_dir.name != batch.run_dir.name  # a new run folder, never overwritten
    assert rerun_dir.name.split("-")[-1] == batch.run_dir.name.split("-")[-1]  # same inputs


def test_verify_flags_a_released_file_changed_after_the_run(batch, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(batch.run_dir, copy)
    table = copy / "released" / "tiny_release" / "people_by_district.csv"
    table.write_text(table.read_text().replace("60.0", "61.0"))
    result = reports.verify(copy, rerun=False)
    assert not result.ok
    status = result.comparison.set_index("output")["status"]
    assert status["tiny_release/people_by_district.csv"] == "file changed"
    assert status["tiny_release/people_by_district_bar.png"] == "same"
    assert any("changed after the run" in n for n in result.notes)
    assert reports.verify(batch.run_dir, rerun=False).ok


def test_verify_without_a_manifest_names_the_file(tmp_path):
    with pytest.raises(ReportError, match="manifest.json"):
        reports.verify(tmp_path)


# ------------------------------------------------------------------------------- release()
def test_release_refuses_unchecked_tables_and_lone_figures(tmp_path):
    with pytest.raises(DisclosureError, match="expected a CheckedTable"):
        reports.release(pd.DataFrame({"n": [12]}), "raw_table", output_dir=tmp_path)
    fig, _ = plt.subplots()
    with pytest.raises(DisclosureError, match=r"table=checked"):
        reports.release(fig, "lonely", output_dir=tmp_path)
    with pytest.raises(DisclosureError, match="'name' parameter"):
        reports.release(_checked(pd.DataFrame({"n": [12]}), True), "../escape", output_dir=tmp_path)
    plt.close(fig)
    assert not any(tmp_path.iterdir())


def test_figure_is_withheld_when_its_table_failed(tmp_path):
    fig, ax = plt.subplots()
    ax.bar(["a"], [3])
    failed = _checked(pd.DataFrame({"n": [3]}), False, ["count 3 is below 10"])
    record = reports.release(fig, "bar", table=failed, output_dir=tmp_path)
    plt.close(fig)
    assert record.status == "withheld"
    assert record.reasons == ("count 3 is below 10",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bar.record.json"]


def test_same_figure_gives_the_same_png_bytes(tmp_path):
    table = _checked(pd.DataFrame({"n": [12, 30]}, index=pd.Index(["a", "b"], name="g")), True)
    digests = []
    for i in range(2):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.bar(["a", "b"], [12, 30])
        reports.release(fig, "bars", table=table, output_dir=tmp_path / str(i))
        plt.close(fig)
        digests.append(_sha(tmp_path / str(i) / "bars.png"))
    assert digests[0] == digests[1]
    assert (tmp_path / "0" / "bars.table.csv").read_text() == "g,n\na,12\nb,30\n"


def test_duplicate_output_name_is_an_error(tmp_path):
    table = _checked(pd.DataFrame({"n": [12]}), True)
    reports.release(table, "once", output_dir=tmp_path)
    with pytest.raises(ReportError, match="already released"):
        reports.release(table, "once", output_dir=tmp_path)


def test_plain_range_index_tables_are_sorted_by_their_columns(tmp_path):
    frame = pd.DataFrame({"band": ["65-74", "45-64", "75+"], "people": [20, 35, 11]})
    reports.release(_checked(frame, True), "bands", output_dir=tmp_path)
    assert (tmp_path / "bands.csv").read_text() == "band,people\n45-64,35\n65-74,20\n75+,11\n"


# ------------------------------------------------------------------------------- register, run_all
def test_register_lists_proposals_and_only_released_outputs(batch, tmp_path):
    proposals = tmp_path / "proposals"
    proposals.mkdir()
    shutil.copy(PROPOSAL, proposals)
    _proposal(
        proposals,
        "other.yaml",
        id="other-2",
        title="Another study",
        organisation="University of Kent",
        notebooks=[],
    )
    path = reports.build_register(
        proposals=proposals, reports=batch.run_dir.parents[1], out=tmp_path / "register.md"
    )
    text = path.read_text()
    register = json.loads(path.with_suffix(".json").read_text())
    assert [p["id"] for p in register["proposals"]] == ["other-2", "test-reports-001"]
    test_entry = register["proposals"][1]
    assert test_entry["organisation"] == "kidresearch test suite"
    assert test_entry["approved"] == "2026-01-01"
    (run,) = test_entry["runs"]
    assert [o["name"] for o in run["released"]] == [
        "people_by_district",
        "people_by_district_bar",
        "people_by_district_sex",
    ]
    assert run["withheld"] == 2
    assert "people_by_district_bar.png" in text and "University of Kent" in text
    # Withheld outputs are counted, never named.
    assert "people_by_district_sex_bar" not in text and "before_failure" not in text
    assert path.with_suffix(".html").read_text().startswith("<!doctype html>")


def test_run_all_returns_8_when_a_proposal_fails_and_builds_the_register(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    shutil.copy(NOTEBOOKS / "tiny_no_parameters.ipynb", tmp_path / "notebooks")
    _proposal(tmp_path / "proposals", "a.yaml", id="a-1", notebooks=["tiny_no_parameters.ipynb"])
    _proposal(tmp_path / "proposals", "b.yaml", id="b-1", notebooks=[])
    _proposal(tmp_path / "proposals", "c.yaml", id="c-1", notebooks=["tiny_no_parameters.ipynb"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KID_DATA", raising=False)
    monkeypatch.delenv("KID_PROPOSALS", raising=False)
    # Two proposals with notebooks and jobs=2: they run in two worker processes.
    code = reports.run_all(data=None, out=tmp_path / "reports", progress=False, jobs=2)
    assert code == 8
    register = json.loads((tmp_path / "reports" / "register.json").read_text())
    assert [p["id"] for p in register["proposals"]] == ["a-1", "b-1", "c-1"]
    assert [len(p["runs"]) for p in register["proposals"]] == [1, 0, 1]


# ------------------------------------------------------------------------------- on the demo KID
@pytest.mark.slow
def test_data_overview_notebook_runs_on_the_demo_kid(demo_kid, tmp_path):
    """The real first notebook, under a real example proposal, on the built demo KID."""
    from kidresearch import connect

    root = Path(__file__).resolve().parents[1]
    proposal = root / "proposals" / "efi-frailty-65plus.yaml"
    result = reports.run(
        proposal, notebooks=["01_data_overview"], data=demo_kid, out=tmp_path, progress=False
    )
    assert result.ok, result.summary().to_string()
    kid_manifest = json.loads(
        (demo_kid / "versions" / result.manifest["kid"]["version"] / "manifest.json").read_text()
    )
    assert result.manifest["kid"]["input_hashes"] == {
        i["file"]: i["sha256"] for i in kid_manifest["inputs"]
    }
    released = result.run_dir / "released" / "01_data_overview"
    assert main(["outputs", "check", str(released)]) == 0
    table = pd.read_csv(released / "people_by_age_band_sex.csv")
    with connect(proposal, demo_kid) as kid:
        people = int(kid.table("persons").count().to_pandas())
    total = table.loc[(table["age_band"] == "Total") & (table["sex"] == "Total"), "value"].item()
    # The policy rounds counts to the nearest 5 (proposal output_policy: rounding 5) and
    # recomputes totals from the rounded cells, so the total is within 2.5 per cell of the truth.
    interior = table[(table["age_band"] != "Total") & (table["sex"] != "Total")]["value"]
    assert interior.notna().all()
    assert total == interior.sum()
    assert abs(total - people) <= 2.5 * len(interior)
    assert set(table.loc[table["age_band"] != "Total", "age_band"]) <= {
        "65-69",
        "70-79",
        "80-89",
        "90+",
    }
