"""Cross-check of primary disclosure decisions against ACRO 1.0.2 (SACRO project).

ACRO pins ``pandas<=2.3.3`` and we run pandas 3, so ACRO lives in its own virtual environment
(built once, cached outside the repository under ``~/.cache/kidresearch/acro-venv`` or
``$KID_ACRO_VENV``) and runs in ONE subprocess on all tables serialised as JSON
(``tests/sdc_acro/run_acro.py``). The test is skipped only when PyPI is unreachable.

Settings compared: ACRO's defaults (acro/default.yaml) and a second risk appetite; 1,000 random
tables each, for frequency (count) and magnitude (sum) tables. Intended differences are tested
explicitly below and documented in docs/disclosure_control.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kidresearch.sdc import DisclosurePolicy, crosstab, pivot_table

pytestmark = pytest.mark.slow

ACRO_VERSION = "1.0.2"
RUNNER = Path(__file__).parent / "sdc_acro" / "run_acro.py"
ROWS = ["r0", "r1", "r2"]
COLS = ["c0", "c1", "c2"]
N_TABLES = {"default": 1000, "strict": 300}


def _venv_dir() -> Path:
    env = os.environ.get("KID_ACRO_VENV")
    if env:
        return Path(env)
    return (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kidresearch" / "acro-venv"
    )


def _acro_python() -> Path:
    venv = _venv_dir()
    python = venv / "bin" / "python"
    marker = venv / f".acro-{ACRO_VERSION}-ok"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / "acro-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            pip = subprocess.run(
                [str(python), "-m", "pip", "install", "-q", f"acro=={ACRO_VERSION}"],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if pip.returncode != 0:
                pytest.skip(f"cannot install acro=={ACRO_VERSION} from PyPI: {pip.stderr[-500:]}")
            marker.touch()
    return python


def _random_tables(seed: int, n_tables: int) -> list[dict]:
    """Small 3 x 4 tables of skewed magnitudes: empty cells, tiny cells, dominant outliers,
    all-zero cells, ties."""
    rng = np.random.default_rng(seed)
    tables = []
    for tid in range(n_tables):
        n = int(rng.integers(0, 90))
        row = rng.choice(ROWS, n, p=[0.5, 0.3, 0.2])
        col = rng.choice(COLS, n, p=[0.5, 0.3, 0.2])
        style = tid % 5
        if style == 0:
            value = rng.exponential(300.0, n)
        elif style == 1:  # one dominant contributor somewhere
            value = rng.exponential(100.0, n)
            if n:
                value[rng.integers(n)] = rng.uniform(1e3, 1e5)
        elif style == 2:  # integer costs with ties and zeros
            value = rng.integers(0, 4, n).astype(float) * 50.0
        elif style == 3:  # heavy tail
            value = rng.lognormal(5.0, 2.0, n)
        else:  # two dominant contributors
            value = rng.exponential(50.0, n)
            if n >= 2:
                idx = rng.choice(n, 2, replace=False)
                value[idx] = rng.uniform(5e3, 2e4, 2)
        tables.append(
            {
                "id": tid,
                "row": row.tolist(),
                "col": col.tolist(),
                "value": np.round(value, 2).tolist(),
            }
        )
    return tables


def _frame(tables: list[dict]) -> pd.DataFrame:
    frame = pd.concat(
        [
            pd.DataFrame({"id": t["id"], "row": t["row"], "col": t["col"], "value": t["value"]})
            for t in tables
        ],
        ignore_index=True,
    )
    frame["id"] = pd.Categorical(frame["id"], categories=[t["id"] for t in tables])
    frame["row"] = pd.Categorical(frame["row"], categories=ROWS)
    frame["col"] = pd.Categorical(frame["col"], categories=COLS)
    return frame


# Our rule names -> ACRO check names. ACRO's threshold check also fires on empty cells
# (0 < threshold); we report those as the "zero" rule (count tables) / empty cells.
def _ours_as_acro(cells: pd.DataFrame, kind: str) -> dict[str, list[str]]:
    out = {}
    for tid, row, col, n, rules in zip(
        cells["id"], cells["row"], cells["col"], cells["n"], cells["rules"], strict=True
    ):
        fired = set(rules.split(";")) - {""}
        checks = set()
        if "threshold" in fired or n == 0:
            checks.add("MinimumThresholdCheck")
        if kind == "count" and "zero" in fired:
            checks.add("PresenceOfZeroCheck")
        if "dominance" in fired:
            checks.add("NKCheck")
        if "p_ratio" in fired:
            checks.add("PPercentCheck")
        out[f"{tid}|{row}|{col}"] = sorted(checks)
    return out


SETTINGS = {
    "default": ({}, DisclosurePolicy.default()),
    "strict": (
        {"safe_threshold": 5, "safe_nk_n": 3, "safe_nk_k": 0.75, "safe_pratio_p": 0.2},
        DisclosurePolicy(threshold=5, dominance_n=3, dominance_k=0.75, p_ratio=0.2),
    ),
}


@pytest.fixture(scope="module")
def acro_results() -> dict:
    python = _acro_python()
    tables = {name: _random_tables(seed, N_TABLES[name]) for seed, name in enumerate(SETTINGS)}
    runs = []
    for name, (settings, _) in SETTINGS.items():
        for agg in ("count", "sum"):
            runs.append(
                {
                    "name": f"{name}:{agg}",
                    "settings": settings,
                    "aggfunc": agg,
                    "tables": tables[name],
                }
            )
    runs.append(
        {
            "name": "default:mean",
            "settings": {},
            "aggfunc": "mean",
            "tables": tables["default"][:300],
        }
    )
    runs.append(
        {
            "name": "default:sum:margins",
            "settings": {},
            "aggfunc": "sum",
            "tables": tables["default"][:60],
            "margins": True,
        }
    )
    zeros_tables = tables["default"][:100]
    runs.append(
        {
            "name": "zeros_not_disclosive:count",
            "settings": {"zeros_are_disclosive": False},
            "aggfunc": "count",
            "tables": zeros_tables,
        }
    )
    # The min/max gap: a maximum over 12 records is still one person's value.
    pair = [{"id": 0, "row": ["r0"] * 12, "col": ["c0"] * 12, "value": [120.0] * 11 + [80_000.0]}]
    runs.append({"name": "max", "settings": {}, "aggfunc": "max", "tables": pair})
    job = json.dumps({"rows": ROWS, "cols": COLS, "runs": runs, "n_single": 3})
    # One ACRO run per job, shared by xdist workers through a cache file next to the venv.
    digest = hashlib.sha256((job + RUNNER.read_text()).encode()).hexdigest()[:16]
    cache = _venv_dir().parent / f"acro-results-{digest}.json"
    with open(_venv_dir().parent / "acro-results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cache.exists():
            proc = subprocess.run(
                [str(python), str(RUNNER)], input=job, capture_output=True, text=True, timeout=1200
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            cache.write_text(proc.stdout)
    result = json.loads(cache.read_text())
    result["tables"] = tables
    return result


def test_acro_version_is_the_one_documented(acro_results: dict) -> None:
    assert acro_results["version"] == ACRO_VERSION


def test_stacking_tables_does_not_change_acro_decisions(acro_results: dict) -> None:
    for run, single in acro_results["single"].items():
        stacked = acro_results["runs"][run]
        assert single, run
        assert {k: stacked[k] for k in single} == single, run


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("kind", ["count", "sum"])
def test_primary_decisions_match_acro_on_1000_tables(
    acro_results: dict, setting: str, kind: str
) -> None:
    tables = acro_results["tables"][setting]
    policy = SETTINGS[setting][1]
    frame = _frame(tables)
    if kind == "count":
        ours = crosstab(frame, ["id", "row"], "col", margins=False, policy=policy)
    else:
        ours = crosstab(
            frame, ["id", "row"], "col", values="value", aggfunc="sum", margins=False, policy=policy
        )
    mine = _ours_as_acro(ours.cells, kind)
    theirs = acro_results["runs"][f"{setting}:{kind}"]
    assert len(mine) == N_TABLES[setting] * len(ROWS) * len(COLS) == len(theirs)
    mismatches = {k: (mine[k], theirs.get(k)) for k in mine if mine[k] != theirs.get(k)}
    assert not mismatches, list(mismatches.items())[:10]
    # The comparison is not vacuous: every rule fires somewhere and most cells pass somewhere.
    flat = [c for checks in theirs.values() for c in checks]
    expected = {"MinimumThresholdCheck"} | (
        {"NKCheck", "PPercentCheck"} if kind == "sum" else {"PresenceOfZeroCheck"}
    )
    assert expected <= set(flat)
    assert sum(not v for v in theirs.values()) > 100


def test_mean_tables_match_acro(acro_results: dict) -> None:
    tables = acro_results["tables"]["default"][:300]
    ours = crosstab(
        _frame(tables), ["id", "row"], "col", values="value", aggfunc="mean", margins=False
    )
    mine = _ours_as_acro(ours.cells, "mean")
    theirs = acro_results["runs"]["default:mean"]
    assert mine == {k: theirs[k] for k in mine}


def test_primary_decisions_on_margins_match_acro(acro_results: dict) -> None:
    """With margins=True (labelled "All" as in pandas/ACRO), totals get the same primary checks."""
    theirs = acro_results["runs"]["default:sum:margins"]
    compared = empty_totals = 0
    for t in acro_results["tables"]["default"][:60]:
        frame = _frame([t])
        ours = crosstab(frame, "row", "col", values="value", aggfunc="sum", margins_name="All")
        cells = ours.cells.assign(id=t["id"])
        empty_total = set(
            cells.loc[
                (cells["n"] == 0) & ((cells["row"] == "All") | (cells["col"] == "All")),
                ["id", "row", "col"],
            ]
            .astype(str)
            .agg("|".join, axis=1)
        )
        for key, checks in _ours_as_acro(cells, "sum").items():
            if key in empty_total and theirs[key] != checks:
                # Intended difference: ACRO 1.0.2 passes the row total of an empty row (its
                # count is NaN there, and NaN < threshold is False); we suppress it.
                assert theirs[key] == [] and "MinimumThresholdCheck" in checks
                assert key.endswith("|All")
                empty_totals += 1
            elif key in theirs:
                assert checks == theirs[key], (key, checks, theirs[key])
                compared += 1
    assert compared + empty_totals >= 0.9 * 60 * 16
    assert empty_totals > 0
    margin_keys = [k for k in theirs if "All" in k]
    assert any(theirs[k] for k in margin_keys) and any(not theirs[k] for k in margin_keys)


def test_stacked_tables_give_the_same_decisions_as_tables_one_by_one(acro_results: dict) -> None:
    tables = acro_results["tables"]["default"][:25]
    stacked = crosstab(
        _frame(tables), ["id", "row"], "col", values="value", aggfunc="sum", margins=False
    )
    for t in tables:
        one = crosstab(
            _frame([t]), ["id", "row"], "col", values="value", aggfunc="sum", margins=False
        )
        part = stacked.cells[stacked.cells["id"] == t["id"]].reset_index(drop=True)
        assert one.cells["rules"].tolist() == part["rules"].tolist()


def test_intended_difference_zeros_not_disclosive(acro_results: dict) -> None:
    """ACRO 1.0.2 still fails empty cells through its threshold check when zeros_are_disclosive
    is False (0 < threshold); we release a zero count then (documented difference)."""
    theirs = acro_results["runs"]["zeros_not_disclosive:count"]
    tables = acro_results["tables"]["default"][:100]
    ours = crosstab(
        _frame(tables),
        ["id", "row"],
        "col",
        margins=False,
        policy=DisclosurePolicy(zeros_are_disclosive=False),
    )
    empty = ours.cells[ours.cells["n"] == 0]
    assert len(empty) > 20
    for tid, row, col in zip(empty["id"], empty["row"], empty["col"], strict=True):
        assert theirs[f"{tid}|{row}|{col}"] == ["MinimumThresholdCheck"]
    assert (empty["status"] == "ok").all()
    assert (empty["released"] == 0).all()


def test_intended_difference_max_of_two_records(acro_results: dict) -> None:
    """ACRO 1.0.2's pivot_table with aggfunc='max' checks only the number of records, so it
    passes the maximum of 12 records (one person's 80,000); we never release a bare maximum of
    person values. (In our runs ACRO 1.0.2 did flag a 2-record max cell by its threshold check.)"""
    theirs = acro_results["runs"]["max"]
    assert theirs["0|r0|c0"] == []
    data = pd.DataFrame(
        {"row": ["r0"] * 12, "col": ["c0"] * 12, "value": [120.0] * 11 + [80_000.0]}
    )
    ours = pivot_table(
        data, values="value", index="row", columns="col", aggfunc="max", margins=False
    )
    assert ours.to_frame()["status"].tolist() == ["primary:min_max"]
    assert np.isnan(ours.released.loc["r0", "c0"])


def test_intended_difference_secondary_suppression() -> None:
    """ACRO suppresses primary cells only and leaves recovery from totals to a human; we add
    secondary suppression. In this table ACRO's rule would hide only the 3, which the row total
    gives back (30 - 27 = 3)."""
    data = pd.DataFrame(
        {"row": ["a"] * 30 + ["b"] * 40, "col": ["x"] * 3 + ["y"] * 27 + ["x"] * 20 + ["y"] * 20}
    )
    checked = crosstab(data, "row", "col")
    assert checked.status.loc["a", "x"] == "primary:threshold"
    assert (checked.cells["status"] == "secondary").sum() >= 1
    released = checked.released
    assert np.isnan(released.loc["a", "y"]) or np.isnan(released.loc["a", "Total"])
