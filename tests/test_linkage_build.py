"""``kid build`` on a tiny raw fixture with planted problems (see test_linkage_fixture.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_linkage_fixture import LSOAS, MONTHS, PRACTICES, Planted, write_raw

from kidresearch.errors import BuildError, FeedError
from kidresearch.linkage import build, current_version, list_versions, new_key_file
from kidresearch.linkage.pseudonym import pseudonym_int, read_key
from kidresearch.linkage.quarantine import read_quarantine
from kidresearch.schema import RAW_FEEDS, RESEARCH_TABLES

IDENTIFIER_COLUMNS = {"nhs_number", "date_of_birth", "uprn", "postcode_lsoa", "record_id"}
REASON_WORDS = {
    "missing": "nhs_number missing",
    "modulus": "modulus 11",
    "length": "not 10 digits",
    "register": "not in the population register",
    "future": "in the future",
    "extract_month": "extract_month differs",
    "minimum": "below the minimum",
    "order": "before",
    "unknown": "not a known code",
    "allowed": "not an allowed value",
    "pattern": "does not match the pattern",
    "duplicate": "repeated within the extract",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Planted, Path, Path, object]:
    root = tmp_path_factory.mktemp("linkage")
    planted = write_raw(root / "raw")
    key = new_key_file(root / "secrets" / "kid.key")
    result = build(root / "raw", root / "kid", key_file=key)
    return planted, root / "kid", key, result


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw feeds, a key and a KID with version MONTHS[1] published (copied by each test)."""
    root = tmp_path_factory.mktemp("previous")
    write_raw(root / "raw")
    key = new_key_file(root / "kid.key")
    build(root / "raw", root / "kid", key_file=key, version=MONTHS[1])
    return root


def _copy_previous(previous: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    target = tmp_path / "copy"
    shutil.copytree(previous, target)
    return target / "raw", target / "kid", target / "kid.key"


def _table(kid: Path, version: str, name: str) -> pd.DataFrame:
    folder = kid / "versions" / version / "tables" / name
    return pd.concat(
        [pd.read_parquet(p) for p in sorted(folder.rglob("*.parquet"))], ignore_index=True
    )


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------- reconciliation
def test_rows_in_equal_linked_plus_quarantined_as_planted(built) -> None:
    planted, _, _, result = built
    months = pd.DataFrame(result.report["months"])
    for (feed, month), rows_in in planted.rows_in.items():
        row = months[(months.feed == feed) & (months.extract_month == month)].iloc[0]
        assert row.rows_in == rows_in
        assert row.rows_quarantined == planted.expected_quarantined(feed, month)
        assert row.rows_linked == planted.expected_linked(feed, month)
        assert row.rows_in == row.rows_linked + row.rows_quarantined
    summary = result.summary()
    assert list(summary.columns) == [
        "feed",
        "rows_in",
        "rows_linked",
        "rows_quarantined",
        "linkage_rate",
    ]
    assert (summary.rows_in == summary.rows_linked + summary.rows_quarantined).all()


def test_quarantine_names_file_row_field_and_reason(built) -> None:
    planted, kid, _, result = built
    quarantine = read_quarantine(kid, result.version)
    assert len(quarantine) == len(planted.quarantine)
    for q in planted.quarantine:
        match = quarantine[
            (quarantine.feed == q["feed"])
            & (quarantine.source_file == f"{q['feed']}/{q['feed']}_{q['month']}.parquet")
            & (quarantine.row_number == q["row"])
        ]
        assert len(match) == 1, q
        assert match.field.iloc[0] == q["field"], q
        assert REASON_WORDS[q["kind"]] in match.reason.iloc[0], (q, match.reason.iloc[0])
    assert not (kid / "versions" / result.version / "quarantine").exists()
    assert (kid / "restricted" / "quarantine" / result.version / "gp_events.parquet").is_file()


def test_corrections_latest_extract_wins(built) -> None:
    planted, kid, key, result = built
    feeds = {f["feed"]: f for f in result.report["feeds"]}
    for feed, expected in planted.corrections.items():
        assert feeds[feed]["corrections_applied"] == expected, feed
        assert feeds[feed]["rows_published"] == feeds[feed]["rows_linked"] - expected
    persons = _table(kid, result.version, "persons").set_index("person_id")
    person0 = persons.loc[pseudonym_int(read_key(key), planted.nhs_by_person[0])]
    # The registration of person 0 was resent in the last extract with a new practice/LSOA.
    assert (person0.practice_code, person0.lsoa_code) == (PRACTICES[2], LSOAS[3])
    for name in RESEARCH_TABLES:
        if name in RAW_FEEDS:
            assert result.row_counts[name] == feeds[name]["rows_published"]


# ------------------------------------------------------------------------- identifiers
def test_no_direct_identifier_or_key_reaches_versions_or_reports(built) -> None:
    planted, kid, key_path, result = built
    key = read_key(key_path)
    secrets = [key.hex().encode(), key.hex().upper().encode(), key]
    nhs_texts = set(planted.nhs_by_person.values()) | set(planted.formatted)
    uprns = {str(100060000000 + p // 2) for p in planted.nhs_by_person}
    searched = 0
    for folder in (kid / "versions", kid / "reports"):
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            searched += 1
            content = path.read_bytes()
            assert not any(s in content for s in secrets), path
            if path.suffix == ".parquet":
                table = pq.read_table(path)
                assert not IDENTIFIER_COLUMNS & set(table.column_names), path
                values = {str(v) for col in table.columns for v in col.to_pylist()}
                assert not values & nhs_texts, path
                assert not values & uprns, path
            else:
                text = content.decode("utf-8")
                assert not any(n in text for n in nhs_texts), path
    assert searched >= len(RESEARCH_TABLES) + 4  # tables, manifest, 3 reports
    for research in RESEARCH_TABLES.values():
        assert not IDENTIFIER_COLUMNS & set(research.column_names)


def test_same_person_same_pseudonym_across_feeds(built) -> None:
    planted, kid, key_path, result = built
    key = read_key(key_path)
    expected = {pseudonym_int(key, digits) for digits in planted.nhs_by_person.values()}
    persons = _table(kid, result.version, "persons")
    assert set(persons.person_id) == expected
    for name in ("gp_events", "prescriptions", "inpatient_spells", "costs"):
        assert set(_table(kid, result.version, name).person_id) <= expected, name
    # Persons 3 and 5 died; their deaths carried NHS numbers in another format than their
    # registrations, and still land on the same person.
    died = set(persons.loc[persons.date_of_death.notna(), "person_id"])
    assert died == {pseudonym_int(key, planted.nhs_by_person[p]) for p in (3, 5)}


def test_different_keys_give_disjoint_person_ids(built, tmp_path) -> None:
    planted, kid, _, result = built
    other_key = new_key_file(tmp_path / "other.key")
    other = build(planted.root, tmp_path / "kid", key_file=other_key)
    ids_a = set(_table(kid, result.version, "persons").person_id)
    ids_b = set(_table(tmp_path / "kid", other.version, "persons").person_id)
    assert len(ids_a) == len(ids_b) == len(planted.nhs_by_person)
    assert not ids_a & ids_b
    households_a = set(_table(kid, result.version, "persons").household_id.dropna())
    households_b = set(_table(tmp_path / "kid", other.version, "persons").household_id.dropna())
    assert not households_a & households_b


def test_two_nhs_numbers_with_one_id_stop_the_build(tmp_path, monkeypatch) -> None:
    """A pseudonym collision must never merge two people: with the ids narrowed to 4 bits
    (16 values) the planted people (more than 16) must collide, and the build must refuse."""
    from collections import Counter

    from kidresearch.linkage import pseudonym

    planted = write_raw(tmp_path / "raw")
    key_path = new_key_file(tmp_path / "kid.key")
    monkeypatch.setattr(pseudonym, "ID_BITS", 4)
    key = read_key(key_path)
    # Expected count from the plain-hmac reference: NHS numbers whose 4-bit id is shared.
    ids = Counter(pseudonym_int(key, n) for n in set(planted.nhs_by_person.values()))
    shared = sum(n for n in ids.values() if n > 1)
    assert len(planted.nhs_by_person) > 16 and shared > 0
    with pytest.raises(BuildError, match=rf"^{shared} distinct NHS numbers .*`kid key new"):
        build(tmp_path / "raw", tmp_path / "kid", key_file=key_path)
    assert list_versions(tmp_path / "kid") == [] and current_version(tmp_path / "kid") is None


def test_feeds_staged_before_the_hmacs_are_done_give_the_same_tables(
    built, tmp_path, monkeypatch
) -> None:
    """Feeds staged while the register's HMACs still run carry the register's 4-byte key and
    are joined to person_id when written; the others carry person_id. A slow HMAC forces the
    first path for the small feeds: the tables must equal those of the normal build."""
    import time

    from kidresearch.linkage import pseudonym

    planted, kid, key, result = built
    fast = pseudonym.pseudonym_ints

    def slow(*args, **kwargs):
        time.sleep(1.5)
        return fast(*args, **kwargs)

    monkeypatch.setattr(pseudonym, "pseudonym_ints", slow)
    other = build(planted.root, tmp_path / "kid", key_file=key)
    for name in RESEARCH_TABLES:
        ours = _table(kid, result.version, name)
        theirs = _table(tmp_path / "kid", other.version, name)
        columns = list(ours.columns)
        pd.testing.assert_frame_equal(
            ours.sort_values(columns, ignore_index=True),
            theirs.sort_values(columns, ignore_index=True),
            obj=name,
        )


# ------------------------------------------------------------------------- persons, layout
def test_persons_coarsen_birth_and_link_households(built) -> None:
    planted, kid, key_path, result = built
    key = read_key(key_path)
    persons = _table(kid, result.version, "persons").set_index("person_id")
    for p, digits in planted.nhs_by_person.items():
        k = p if p < 40 else (p - 40) % 4  # index within its registration extract
        born = date(1930 + k % 60, 1 + k % 12, 1 + k % 28)
        row = persons.loc[pseudonym_int(key, digits)]
        assert (row.birth_year, row.birth_month) == (born.year, born.month)
        assert row.household_id == pseudonym_int(key, f"uprn:{100060000000 + p // 2}")
        assert pd.isna(row.registration_end)
    shared = persons.groupby("household_id").size()
    assert shared.max() == 2


def test_layout_matches_the_data_dictionary(built) -> None:
    _, kid, _, result = built
    tables = kid / "versions" / result.version / "tables"
    assert sorted(p.name for p in tables.iterdir()) == sorted(RESEARCH_TABLES)
    for name, research in RESEARCH_TABLES.items():
        files = sorted((tables / name).rglob("*.parquet"))
        assert files, name
        for path in files:
            schema = pq.read_schema(path)
            assert schema.names == research.column_names, path
            for f in research.arrow_schema():
                assert schema.field(f.name).type == f.type, (path, f.name)
            if research.date_column and name != "persons":
                assert path.parent.name.startswith("year="), path
                # costs: one file per costed feed and year (<feed>-0.parquet)
                expected = "part-0.parquet" if name != "costs" else f"{path.stem[:-2]}-0.parquet"
                assert path.name == expected, path
                if name == "costs":
                    assert path.stem[:-2] in RAW_FEEDS, path
                year = int(path.parent.name.removeprefix("year="))
                dates = pq.read_table(path).column(research.date_column).to_pylist()
                assert {d.year for d in dates} == {year}
            else:
                assert path.relative_to(tables / name) == Path("part-0.parquet")
    manifest = json.loads((kid / "versions" / result.version / "manifest.json").read_text())
    assert manifest["version"] == result.version == MONTHS[-1]
    assert len(manifest["inputs"]) == len(RAW_FEEDS) * len(MONTHS)
    assert all(len(i["sha256"]) == 64 for i in manifest["inputs"])
    assert (kid / "CURRENT").read_text().strip() == result.version
    for ext in ("md", "html", "json"):
        assert (kid / "reports" / f"linkage_{result.version}.{ext}").is_file()


def test_costs_follow_the_documented_unit_costs(built) -> None:
    _, kid, _, result = built
    costs = _table(kid, result.version, "costs")
    by_line = costs.groupby("service_line").cost_gbp.sum()
    ae = _table(kid, result.version, "ae_attendances")
    assert by_line["ae"] == pytest.approx(148 * len(ae))
    outpatients = _table(kid, result.version, "outpatient_appointments")
    attended = outpatients.attendance_status.isin(["5", "6"]).sum()
    assert by_line["outpatient"] == pytest.approx(120 * attended)
    prescriptions = _table(kid, result.version, "prescriptions")
    assert by_line["prescribing"] == pytest.approx(prescriptions.cost_gbp.sum())
    # Fixture packages run 4 days (start + 3) inside one month at 350 a week: 350 x 4 / 7.
    packages = _table(kid, result.version, "social_care_packages")
    assert by_line["social_care"] == pytest.approx(200.0 * len(packages))
    gp = _table(kid, result.version, "gp_events")
    assert by_line["gp"] == pytest.approx(42 * (gp.snomed_code == "11429006").sum())


# ------------------------------------------------------------------------- versions
def test_rebuilding_the_same_inputs_is_an_idempotent_no_op(built) -> None:
    planted, kid, key, result = built
    before = _tree_hashes(kid / "versions")
    again = build(planted.root, kid, key_file=key)
    assert again.reused
    assert again.version == result.version
    assert again.summary().equals(result.summary())
    assert _tree_hashes(kid / "versions") == before


def test_new_month_adds_a_version_and_leaves_history_alone(previous, tmp_path) -> None:
    raw, kid, key = _copy_previous(previous, tmp_path)
    first = build(raw, kid, key_file=key, version=MONTHS[1])
    assert first.reused and first.version == MONTHS[1]
    before = _tree_hashes(kid / "versions" / MONTHS[1])
    second = build(raw, kid, key_file=key)
    assert second.version == MONTHS[2]
    assert list_versions(kid) == [MONTHS[1], MONTHS[2]]
    assert current_version(kid) == MONTHS[2]
    assert _tree_hashes(kid / "versions" / MONTHS[1]) == before
    assert first.row_counts["gp_events"] < second.row_counts["gp_events"]
    # Publishing different inputs under an existing label is refused.
    extra = raw / "gp_events" / f"gp_events_{MONTHS[1]}.parquet"
    table = pq.read_table(extra)
    pq.write_table(table.slice(0, table.num_rows - 1), extra)
    with pytest.raises(BuildError, match="immutable"):
        build(raw, kid, key_file=key, version=MONTHS[1])
    assert _tree_hashes(kid / "versions" / MONTHS[1]) == before


def _assert_previous_version_intact(kid: Path, version: str, before: dict[str, str]) -> None:
    assert current_version(kid) == version
    assert list_versions(kid) == [version]
    assert _tree_hashes(kid / "versions" / version) == before
    assert not [p for p in (kid / "versions").iterdir() if p.name.startswith(".")]
    assert len(_table(kid, version, "persons")) > 0


def test_truncated_file_fails_with_feed_error_and_keeps_previous_version(
    previous, tmp_path
) -> None:
    raw, kid, key = _copy_previous(previous, tmp_path)
    before = _tree_hashes(kid / "versions" / MONTHS[1])
    victim = raw / "prescriptions" / f"prescriptions_{MONTHS[2]}.parquet"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(FeedError, match=f"prescriptions_{MONTHS[2]}.parquet"):
        build(raw, kid, key_file=key)
    _assert_previous_version_intact(kid, MONTHS[1], before)


def test_corrupt_data_pages_fail_with_feed_error_naming_the_file(previous, tmp_path) -> None:
    raw, kid, key = _copy_previous(previous, tmp_path)
    before = _tree_hashes(kid / "versions" / MONTHS[1])
    victim = raw / "ae_attendances" / f"ae_attendances_{MONTHS[2]}.parquet"
    data = bytearray(victim.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    for i in range(4, len(data) - footer - 8):  # scramble every data page, keep the footer
        data[i] = (data[i] * 7 + 13) % 256
    victim.write_bytes(bytes(data))
    with pytest.raises(FeedError, match=f"ae_attendances_{MONTHS[2]}.parquet"):
        build(raw, kid, key_file=key)
    _assert_previous_version_intact(kid, MONTHS[1], before)


def test_failure_halfway_leaves_previous_version_and_current(
    previous, tmp_path, monkeypatch
) -> None:
    from kidresearch.linkage.build import _Builder

    raw, kid, key = _copy_previous(previous, tmp_path)
    before = _tree_hashes(kid / "versions" / MONTHS[1])

    def explode(self, tables: Path) -> None:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(_Builder, "write_persons", explode)
    with pytest.raises(OSError, match="injected"):
        build(raw, kid, key_file=key)
    _assert_previous_version_intact(kid, MONTHS[1], before)
    assert not any(p.name.startswith(".") for p in (kid / "restricted").iterdir())
    assert not any(p.name.startswith(".") for p in (kid / "restricted" / "quarantine").iterdir())


def test_missing_column_is_a_feed_error_naming_file_and_column(tmp_path) -> None:
    write_raw(tmp_path / "raw")
    victim = tmp_path / "raw" / "deaths" / f"deaths_{MONTHS[0]}.parquet"
    pq.write_table(pq.read_table(victim).drop_columns(["date_of_death"]), victim)
    key = new_key_file(tmp_path / "kid.key")
    with pytest.raises(
        FeedError, match=r"deaths_2026-08\.parquet: missing column\(s\) date_of_death"
    ):
        build(tmp_path / "raw", tmp_path / "kid", key_file=key)


# ------------------------------------------------------------------------- CSV
def test_csv_extracts_link_like_parquet_and_quarantine_unparseable_values(built, tmp_path) -> None:
    _, kid_parquet, key, from_parquet = built
    planted = write_raw(tmp_path / "csv", fmt="csv")
    path = tmp_path / "csv" / "prescriptions" / f"prescriptions_{MONTHS[0]}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[0, "issue_date"] = "2026-13-45"
    frame.loc[1, "cost_gbp"] = "four pounds"
    frame.loc[2, "quantity"] = "12.5"
    frame.to_csv(path, index=False)
    from_csv = build(tmp_path / "csv", tmp_path / "kid_csv", key_file=key)
    quarantine = read_quarantine(tmp_path / "kid_csv", from_csv.version, "prescriptions")
    bad = quarantine[quarantine.source_file == f"prescriptions/{path.name}"].set_index("row_number")
    assert bad.loc[1, "reason"] == "issue_date is not a valid date"
    assert bad.loc[1, "value"] == "2026-13-45"
    assert bad.loc[2, "reason"] == "cost_gbp is not a valid float64"
    assert bad.loc[3, "reason"] == "quantity is not a valid int32"
    csv_summary = from_csv.summary().set_index("feed")
    parquet_summary = from_parquet.summary().set_index("feed")
    assert (csv_summary.rows_in == parquet_summary.rows_in).all()
    diff = parquet_summary.rows_linked - csv_summary.rows_linked
    assert diff.drop("prescriptions").eq(0).all() and diff["prescriptions"] == 3
    assert set(_table(tmp_path / "kid_csv", from_csv.version, "persons").person_id) == set(
        _table(kid_parquet, from_parquet.version, "persons").person_id
    )
    assert len(planted.nhs_by_person) == len(
        _table(tmp_path / "kid_csv", from_csv.version, "persons")
    )


def test_malformed_csv_is_a_feed_error_naming_the_file(tmp_path) -> None:
    write_raw(tmp_path / "raw", fmt="csv")
    victim = tmp_path / "raw" / "gp_events" / f"gp_events_{MONTHS[2]}.csv"
    victim.write_text(victim.read_text() + "only,three,fields\n")
    key = new_key_file(tmp_path / "kid.key")
    with pytest.raises(FeedError, match=f"gp_events_{MONTHS[2]}.csv"):
        build(tmp_path / "raw", tmp_path / "kid", key_file=key)
    assert current_version(tmp_path / "kid") is None
    shutil.rmtree(tmp_path / "raw")


def test_result_plot_draws_one_bar_per_feed(built) -> None:
    import matplotlib

    matplotlib.use("Agg")
    _, _, _, result = built
    ax = result.plot()
    assert len(ax.patches) >= len(RAW_FEEDS)
    assert "linkage rate" in ax.get_title()
