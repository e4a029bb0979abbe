"""The analysis notebooks and the teaching walkthroughs.

Static checks (one ``parameters`` cell, short code cells, the paper structure) run on every
notebook. The example proposals' batch (``kidresearch.reports.run_all``, as ``kid demo`` runs
it) is executed ONCE per session on the shared demo KID and the tests read its manifests; the
teaching notebooks run with papermill on the same KID with the generator's ``truth.json``.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ANALYSES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
TEACHING = sorted((NOTEBOOKS / "teaching").glob("*.ipynb"))
MINE = [n for n in ANALYSES if not n.name.startswith("01_")]
MAX_CODE_LINES = 15
#: Outputs a demo run may withhold, with why: none so far. A new entry needs a reason.
EXPECTED_WITHHELD: dict[str, str] = {}


def _code_lines(source: str) -> int:
    lines = [line for line in source.splitlines() if line.strip()]
    return sum(1 for line in lines if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("path", ANALYSES + TEACHING, ids=lambda p: p.name)
def test_one_parameters_cell_with_the_runner_parameters(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters', expected 1"
    assert tagged[0].cell_type == "code"
    names: dict[str, object] = {}
    exec(tagged[0].source, {}, names)  # the defaults are plain literals
    assert {"proposal", "data", "output_dir"} <= set(names), path.name
    assert names["data"] is None and names["output_dir"] is None


# 01_data_overview (the reports engineer's) is checked in its own tests.
@pytest.mark.parametrize("path", MINE + TEACHING, ids=lambda p: p.name)
def test_code_cells_are_short(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    for number, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            n = _code_lines(cell.source)
            assert n <= MAX_CODE_LINES, f"{path.name} cell {number}: {n} lines of code"


@pytest.mark.parametrize("path", MINE, ids=lambda p: p.name)
def test_analysis_notebooks_read_like_a_short_paper(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in book.cells if c.cell_type == "markdown")
    for part in ("**Question.**", "**Data.**", "**Method.**", "## Results", "## Caveats"):
        assert part in text, f"{path.name}: no {part!r}"
    for caveat in ("lag", "link", "synthetic", "isclosure"):
        assert caveat in text.split("## Caveats")[1], f"{path.name}: caveats miss {caveat!r}"
    code = "\n".join(c.source for c in book.cells if c.cell_type == "code")
    assert "release(" in code and "print(" not in code.split("kid = connect")[0]


def test_every_analysis_notebook_is_approved_by_a_proposal() -> None:
    approved = set()
    for path in (ROOT / "proposals").glob("*.yaml"):
        approved |= set(yaml.safe_load(path.read_text())["notebooks"] or [])
    assert {p.name for p in ANALYSES} <= approved


# ---------------------------------------------------------------------------- the demo batch
@pytest.fixture(scope="session")
def demo_batch(tmp_path_factory: pytest.TempPathFactory, demo_kid: Path) -> dict[str, dict]:
    """Each example proposal's notebooks run through `kidresearch.reports.run` on the demo KID,
    once per session (a file lock shared by the xdist workers). 01_data_overview is left out:
    tests/test_reports.py runs it. Returns {proposal id: manifest}, each with its ``run_dir``."""
    from kidresearch import reports

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / "shared" / "notebook_batch"
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "notebook_batch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (out / ".complete").exists():
                for path in sorted((ROOT / "proposals").glob("*.yaml")):
                    names = yaml.safe_load(path.read_text())["notebooks"]
                    mine = [n for n in names if n in {p.name for p in MINE}]
                    reports.run(path, notebooks=mine, data=demo_kid, out=out)
                (out / ".complete").write_text("done")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    manifests = {}
    for path in sorted(out.glob("*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        manifest["run_dir"] = path.parent
        manifests[manifest["proposal"]["id"]] = manifest
    return manifests


def test_every_example_proposal_ran_every_notebook(demo_batch: dict[str, dict]) -> None:
    for path in (ROOT / "proposals").glob("*.yaml"):
        proposal = yaml.safe_load(path.read_text())
        manifest = demo_batch[proposal["id"]]
        ran = {n["notebook"]: n for n in manifest["notebooks"]}
        assert set(ran) == set(proposal["notebooks"]) - {"01_data_overview.ipynb"}
        failed = {k: v.get("error") for k, v in ran.items() if v["status"] != "ok"}
        assert not failed, f"{proposal['id']}: {failed}"
        assert manifest["ok"]


def test_released_outputs_exist_and_nothing_is_withheld_unexpectedly(demo_batch) -> None:
    seen = set()
    for manifest in demo_batch.values():
        for output in manifest["outputs"]:
            key = f"{output['notebook']}:{output['name']}"
            seen.add(output["notebook"])
            if output["status"] == "withheld":
                assert key in EXPECTED_WITHHELD, f"{key} withheld: {output['reasons']}"
                continue
            assert output["status"] == "released", key
            for written in output["files"]:
                path = manifest["run_dir"] / written["path"]
                assert path.stat().st_size > 0, f"{key}: {path} missing"
    assert {p.name for p in MINE} <= seen


def _released(demo_batch, proposal: str, notebook: str, name: str) -> pd.DataFrame:
    folder = demo_batch[proposal]["run_dir"] / "released" / notebook
    return pd.read_csv(folder / f"{name}.csv")


def test_frailty_shares_are_near_the_generator_truth(demo_batch, demo_truth) -> None:
    table = _released(demo_batch, "efi-frailty-65plus", "02_frailty", "efi_overall_65_95")
    counts = table[table.iloc[:, 0] != "Total"].set_index(table.columns[0])["value"]
    shares = counts / counts.sum()
    # truth.json: shares among people aged 65-95 on 1 November each year; the notebook's date
    # is 2023-04-01, 5 months after 2022-11-01: interpolate linearly between the two.
    truth = pd.DataFrame(demo_truth["efi"]["shares_by_date"]).set_index("date")
    before, after = truth.loc["2022-11-01"], truth.loc["2023-11-01"]
    known = before + (after - before) * 5 / 12
    # Rounded counts (base 5), 1-2% unlinked records and ages from birth month: 3 points.
    for category in ("fit", "mild", "moderate", "severe"):
        assert abs(shares[category] - known[category]) < 0.03, (category, shares[category])


def test_cohort_effects_are_released_with_naive_and_matched_estimates(demo_batch) -> None:
    effects = _released(demo_batch, "programme-evaluation", "05_cohorts", "frailty_team_effects")
    row = effects.set_index("outcome").loc["emergency_admissions"]
    # The generator makes enrolees sicker (naive difference > 0) while the programme reduces
    # admissions (truth: ATT -0.13 per enrolee): matching must move the estimate down.
    assert row["naive_difference"] > 0
    assert row["matched_difference"] < row["naive_difference"]


def test_acsc_funnel_flags_a_planted_practice(demo_batch, demo_truth) -> None:
    isr = _released(
        demo_batch, "practice-variation", "03_risk_and_variation", "acsc_isr_by_practice"
    )
    high = isr[isr["significance"].astype(str).str.startswith("High")]["practice_code"]
    # Practice codes are not pseudonymised; the generator planted the excess at these practices.
    assert set(high) & set(demo_truth["acsc"]["practices"])


# ---------------------------------------------------------------------------- teaching
@pytest.mark.parametrize("path", TEACHING, ids=lambda p: p.name)
def test_teaching_notebook_runs_on_the_demo_kid(
    path: Path, demo_kid: Path, demo_synth: Path, tmp_path: Path
) -> None:
    import papermill

    executed = tmp_path / path.name
    papermill.execute_notebook(
        str(path),
        str(executed),
        parameters={"data": str(demo_kid), "truth": str(demo_synth / "truth.json")},
        cwd=str(ROOT),
        progress_bar=False,
        kernel_name="python3",
    )
    book = nbformat.read(executed, as_version=4)
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
