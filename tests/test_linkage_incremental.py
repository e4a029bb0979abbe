"""Incremental monthly versions: building on the previous version equals a full rebuild.

The reference is a from-scratch full build (``full=True``) of the same raw extracts into another
KID folder: the tables (as sorted data frames), the quarantine and the linkage report counts of
the incremental version must equal it, history must stay untouched, and every unchanged
partition file must be a hard link to the previous version's file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_linkage_fixture import MONTHS, write_raw

from kidresearch.linkage import build, current_version, list_versions, new_key_file
from kidresearch.linkage.quarantine import read_quarantine
from kidresearch.schema import RESEARCH_TABLES

COUNT_KEYS = ("rows_in", "rows_linked", "rows_quarantined", "rows_unlinkable", "rows_malformed")


def _tables(kid: Path, version: str) -> dict[str, pd.DataFrame]:
    out = {}
    for name in RESEARCH_TABLES:
        folder = kid / "versions" / version / "tables" / name
        frame = pd.concat(
            [pd.read_parquet(p) for p in sorted(folder.rglob("*.parquet"))], ignore_index=True
        )
        out[name] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return out


def _report(kid: Path, version: str) -> dict:
    return json.loads((kid / "reports" / f"linkage_{version}.json").read_text())


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _assert_same_as_full(inc_kid: Path, full_kid: Path, version: str) -> None:
    inc, full = _tables(inc_kid, version), _tables(full_kid, version)
    for name in RESEARCH_TABLES:
        pd.testing.assert_frame_equal(inc[name], full[name], check_dtype=True, obj=name)
    a, b = _report(inc_kid, version), _report(full_kid, version)
    for key in ("feeds", "months", "reasons", "tables"):
        assert a[key] == b[key], key
    qa = read_quarantine(inc_kid, version)
    qb = read_quarantine(full_kid, version)
    order = ["feed", "source_file", "row_number"]
    pd.testing.assert_frame_equal(
        qa.sort_values(order).reset_index(drop=True), qb.sort_values(order).reset_index(drop=True)
    )
    for month in a["months"]:  # rows in = linked + quarantined, per feed and month
        assert month["rows_in"] == month["rows_linked"] + month["rows_quarantined"], month


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """MONTHS[0] full, then MONTHS[1] and MONTHS[2] incrementally; plus full builds of each."""
    root = tmp_path_factory.mktemp("incremental")
    planted = write_raw(root / "raw")
    key = new_key_file(root / "kid.key")
    results = {}
    hashes = {}
    for month in MONTHS:
        results[month] = build(root / "raw", root / "kid", key_file=key, version=month)
        hashes[month] = _tree_hashes(root / "kid" / "versions" / month)
    for month in MONTHS[1:]:
        build(root / "raw", root / f"full_{month}", key_file=key, version=month, full=True)
    return {"root": root, "key": key, "planted": planted, "results": results, "hashes": hashes}


def test_incremental_versions_equal_full_rebuilds(chain) -> None:
    root = chain["root"]
    for month in MONTHS[1:]:
        manifest = json.loads((root / "kid" / "versions" / month / "manifest.json").read_text())
        assert manifest["build"]["mode"] == "incremental"
        assert manifest["build"]["new_months"] == [month]
        _assert_same_as_full(root / "kid", root / f"full_{month}", month)
    # The planted correction (first month's first row, resent in the last month) is applied.
    feeds = {f["feed"]: f for f in chain["results"][MONTHS[2]].report["feeds"]}
    for feed, expected in chain["planted"].corrections.items():
        assert feeds[feed]["corrections_applied"] == expected, feed


def test_history_is_untouched_and_unchanged_files_are_hard_links(chain) -> None:
    root = chain["root"]
    kid = root / "kid"
    assert list_versions(kid) == list(MONTHS)
    assert current_version(kid) == MONTHS[2]
    for month in MONTHS:  # every version's files are as they were when it was published
        assert _tree_hashes(kid / "versions" / month) == chain["hashes"][month]
    manifest = json.loads((kid / "versions" / MONTHS[1] / "manifest.json").read_text())
    statuses = {f["status"] for t in manifest["tables"].values() for f in t["files"]}
    assert statuses <= {"written", "reused"}
    for table in manifest["tables"].values():
        for f in table["files"]:
            here = kid / "versions" / MONTHS[1] / f["path"]
            before = kid / "versions" / MONTHS[0] / f["path"]
            if f["status"] == "reused":
                assert os.path.samefile(here, before), f["path"]
            assert hashlib.sha256(here.read_bytes()).hexdigest() == f["sha256"]
    # The fixture's events are dated in their extract month (2026). MONTHS[1] corrects nothing:
    # its rows are appended to 2026 as a new file next to the hard-linked MONTHS[0] file.
    # MONTHS[2] resends a MONTHS[0] row (a correction), so 2026 is rewritten whole.
    assert manifest["build"]["partitions_rewritten"]["gp_events"] == []
    assert manifest["build"]["partitions_appended"]["gp_events"] == [2026]
    gp = {f["path"]: f["status"] for f in manifest["tables"]["gp_events"]["files"]}
    assert gp == {
        "tables/gp_events/year=2026/part-0.parquet": "reused",
        f"tables/gp_events/year=2026/part-{MONTHS[1]}-0.parquet": "written",
    }
    last = json.loads((kid / "versions" / MONTHS[2] / "manifest.json").read_text())
    assert last["build"]["partitions_rewritten"]["gp_events"] == [2026]
    # Inputs are recorded per extract month with their hashes.
    by_month = manifest["inputs_by_month"]
    assert sorted(by_month) == list(MONTHS[:2])
    raw_file = root / "raw" / "gp_events" / f"gp_events_{MONTHS[0]}.parquet"
    digest = hashlib.sha256(raw_file.read_bytes()).hexdigest()
    assert by_month[MONTHS[0]][f"gp_events/gp_events_{MONTHS[0]}.parquet"] == digest


def test_resent_old_month_falls_back_to_a_full_build(chain, tmp_path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(chain["root"] / "raw", root / "raw")
    key = chain["key"]
    build(root / "raw", root / "kid", key_file=key, version=MONTHS[1])
    victim = root / "raw" / "prescriptions" / f"prescriptions_{MONTHS[0]}.parquet"
    table = pq.read_table(victim)
    pq.write_table(table.slice(0, table.num_rows - 1), victim)  # provider re-sent it, shorter
    result = build(root / "raw", root / "kid", key_file=key, version=MONTHS[2])
    how = result.report["build"]
    assert how["mode"] == "full"
    assert "prescriptions_" + MONTHS[0] in how["reason"]
    manifest = json.loads((root / "kid" / "versions" / MONTHS[2] / "manifest.json").read_text())
    assert manifest["build"]["mode"] == "full"


def test_person_registered_later_relinks_earlier_rows(chain, tmp_path) -> None:
    """Rows quarantined as 'not in the register' become linkable when the person registers."""
    root = tmp_path / "copy"
    shutil.copytree(chain["root"] / "raw", root / "raw")
    key = chain["key"]
    build(root / "raw", root / "kid", key_file=key, version=MONTHS[1])
    quarantine = read_quarantine(root / "kid", MONTHS[1])
    unregistered = quarantine[quarantine.reason.str.contains("not in the population register")]
    number = unregistered["value"].iloc[0]
    path = root / "raw" / "registrations" / f"registrations_{MONTHS[2]}.parquet"
    table = pq.read_table(path)
    row = table.slice(0, 1).to_pylist()[0]
    row.update(record_id="reg-late-1", nhs_number=number, uprn=None)
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([row], table.schema)]), path)
    build(root / "raw", root / "kid", key_file=key)
    build(root / "raw", root / "full", key_file=key, full=True)
    report = _report(root / "kid", MONTHS[2])
    assert report["build"]["mode"] == "incremental"
    assert report["build"]["rows_relinked"]["gp_events"] == 1
    _assert_same_as_full(root / "kid", root / "full", MONTHS[2])
    feeds = {f["feed"]: f for f in report["feeds"]}
    assert feeds["gp_events"]["rows_unlinkable"] == 4  # 5 planted NHS problems, 1 now linked


def test_failure_in_incremental_build_leaves_previous_version_and_current(
    chain, tmp_path, monkeypatch
) -> None:
    from kidresearch.linkage.build import _Builder

    root = tmp_path / "copy"
    shutil.copytree(chain["root"] / "raw", root / "raw")
    key = chain["key"]
    build(root / "raw", root / "kid", key_file=key, version=MONTHS[1])
    before = _tree_hashes(root / "kid" / "versions" / MONTHS[1])

    def explode(self, *args, **kwargs) -> None:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(_Builder, "write_costs_part", explode)
    with pytest.raises(OSError, match="injected"):
        build(root / "raw", root / "kid", key_file=key, version=MONTHS[2])
    assert current_version(root / "kid") == MONTHS[1]
    assert list_versions(root / "kid") == [MONTHS[1]]
    assert _tree_hashes(root / "kid" / "versions" / MONTHS[1]) == before
    assert not [p for p in (root / "kid" / "versions").iterdir() if p.name.startswith(".")]


def test_demo_months_added_incrementally_equal_a_full_build(demo_synth, demo_key, tmp_path) -> None:
    """The brief's property on the demo KID (corrections, reporting lag, late registrations):
    2026-08 full, then 2026-09 and 2026-10 incrementally == a full build of 2026-10."""
    raw = demo_synth / "raw"
    kid = tmp_path / "kid"
    hashes = {}
    for month in ("2026-08", "2026-09", "2026-10"):
        result = build(raw, kid, key_file=demo_key, version=month)
        hashes[month] = _tree_hashes(kid / "versions" / month)
        assert result.report["build"]["mode"] == ("full" if month == "2026-08" else "incremental")
    build(raw, tmp_path / "full", key_file=demo_key, version="2026-10", full=True)
    _assert_same_as_full(kid, tmp_path / "full", "2026-10")
    how = result.report["build"]
    assert how["files_reused"] > 0
    assert any(how["partitions_appended"].values())
    assert sum(how["rows_relinked"].values()) > 0  # persons registered after their events
    for month, before in hashes.items():
        assert _tree_hashes(kid / "versions" / month) == before
