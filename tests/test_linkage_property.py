"""Property test: for random rows, rows in = rows linked + rows quarantined, as a reference says."""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_linkage_fixture import MONTHS, write_raw

from kidresearch.cli import main
from kidresearch.errors import FeedError
from kidresearch.linkage import build, new_key_file
from kidresearch.schema import COMMUNITY_SERVICES, RAW_FEEDS

FEED = "community_contacts"
MONTH = MONTHS[-1]
NHS_KINDS = ("plain", "spaced", "dashed", "bad_check", "missing", "unregistered", "short")
LINKABLE = {"plain", "spaced", "dashed"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str], str]:
    root = tmp_path_factory.mktemp("property")
    planted = write_raw(root / "raw")
    new_key_file(root / "kid.key")
    unregistered = "4010232137"  # NHS Data Dictionary example number, not in the fixture
    assert unregistered not in planted.nhs_by_person.values()
    return root, planted.nhs_by_person, unregistered


row_strategy = st.fixed_dictionaries(
    {
        "nhs": st.sampled_from(NHS_KINDS),
        "person": st.integers(0, 39),
        "future": st.booleans(),
        "service_ok": st.integers(0, 5),  # 0 -> a service not in the dictionary
        "duration": st.integers(-3, 60),
        "record": st.integers(0, 15),  # small range so that record_ids repeat
    }
)


def _nhs_text(kind: str, digits: str, unregistered: str) -> str | None:
    return {
        "plain": digits,
        "spaced": f"{digits[:3]} {digits[3:6]} {digits[6:]}",
        "dashed": f"{digits[:3]}-{digits[3:6]}-{digits[6:]}",
        "bad_check": digits[:9] + str((int(digits[9]) + 1) % 10),
        "missing": None,
        "unregistered": unregistered,
        "short": digits[:9],
    }[kind]


def _expected(rows: list[dict]) -> tuple[int, int]:
    """Reference classification: (rows linked, rows unlinkable)."""
    unlinkable = sum(r["nhs"] not in LINKABLE for r in rows)
    valid = [
        r
        for r in rows
        if r["nhs"] in LINKABLE and not r["future"] and r["service_ok"] and r["duration"] >= 0
    ]
    # Within one extract a repeated record_id keeps its last valid row only.
    linked = len({r["record"] for r in valid})
    return linked, unlinkable


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(row_strategy, min_size=0, max_size=40))
def test_reconciliation_holds_for_random_rows(template, rows: list[dict]) -> None:
    root, nhs_by_person, unregistered = template
    work = Path(tempfile.mkdtemp(dir=root))
    try:
        shutil.copytree(root / "raw", work / "raw")
        month_end = date(2026, 10, 31)
        data = {
            "record_id": [f"PROP-{r['record']}" for r in rows],
            "nhs_number": [
                _nhs_text(r["nhs"], nhs_by_person[r["person"]], unregistered) for r in rows
            ],
            "contact_date": [
                month_end + timedelta(days=5) if r["future"] else month_end for r in rows
            ],
            "service": [
                COMMUNITY_SERVICES[r["service_ok"]] if r["service_ok"] else "chiropody"
                for r in rows
            ],
            "duration_minutes": [r["duration"] for r in rows],
            "extract_month": [MONTH] * len(rows),
        }
        schema = pa.schema([pa.field(f.name, f.type) for f in RAW_FEEDS[FEED].arrow_schema()])
        pq.write_table(
            pa.table(data, schema=schema), work / "raw" / FEED / f"{FEED}_{MONTH}.parquet"
        )
        result = build(work / "raw", work / "kid", key_file=root / "kid.key")
        month = next(
            m for m in result.report["months"] if m["feed"] == FEED and m["extract_month"] == MONTH
        )
        linked, unlinkable = _expected(rows)
        assert month["rows_in"] == len(rows)
        assert month["rows_in"] == month["rows_linked"] + month["rows_quarantined"]
        assert month["rows_linked"] == linked
        assert month["rows_unlinkable"] == unlinkable
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_manifest_mismatch_is_a_feed_error_naming_the_file(template, tmp_path) -> None:
    root, _, _ = template
    shutil.copytree(root / "raw", tmp_path / "raw")
    victim = tmp_path / "raw" / "deaths" / f"deaths_{MONTHS[0]}.parquet"
    manifest = {"files": [{"path": f"deaths/{victim.name}", "rows": 2, "sha256": "0" * 64}]}
    (tmp_path / "raw" / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(FeedError, match=rf"deaths_{MONTHS[0]}\.parquet: content differs"):
        build(tmp_path / "raw", tmp_path / "kid", key_file=root / "kid.key")


def test_cli_build_maps_feed_errors_to_exit_code_3(template, tmp_path, capsys) -> None:
    root, _, _ = template
    shutil.copytree(root / "raw", tmp_path / "raw")
    victim = tmp_path / "raw" / "gp_events" / f"gp_events_{MONTHS[0]}.parquet"
    victim.write_bytes(b"PAR1 this is not parquet")
    argv = ["build", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "kid")]
    code = main([*argv, "--key-file", str(root / "kid.key"), "-q"])
    assert code == 3
    assert victim.name in capsys.readouterr().err
    assert not (tmp_path / "kid" / "CURRENT").exists()
