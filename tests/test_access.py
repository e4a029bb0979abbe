"""Tests of kidresearch.access: proposals, connect(), restricted views, pseudonyms, refusals.

Expected values come from plain pandas on the fixture frames (tests/kid_fixture.py) and from a
hashlib/hmac reference implementation of the per-proposal pseudonym, never from the code under
test. Spark tests share one local SparkSession and are marked ``spark``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import textwrap
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from kid_fixture import DIZZINESS_CODE, FALLS_CODE, LSOA_DISTRICT, frames, write_fixture_kid

from kidresearch.access import KID, Proposal, check_sql, connect, load_proposal
from kidresearch.audit import AuditLog, verify
from kidresearch.errors import AccessRefused, BuildError, ProposalError
from kidresearch.schema import RESEARCH_TABLES

ROOT = Path(__file__).resolve().parents[1]
START, END = date(2024, 4, 1), date(2026, 9, 30)
SECRET = ("ab" * 32).encode()  # written by write_fixture_kid


def proposal_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "frailty-test",
        "title": "Frailty among older people",
        "lead_researcher": "Dr Test",
        "organisation": "University of Kent",
        "purpose": "Testing access.",
        "approved": (date.today() - timedelta(days=30)).isoformat(),
        "expires": (date.today() + timedelta(days=365)).isoformat(),
        "kid_version": "latest",
        "tables": {
            "persons": ["person_id", "household_id", "sex", "birth_year", "practice_code"],
            "inpatient_spells": "all",
            "gp_events": ["person_id", "event_date", "snomed_code"],
            "practices": "all",
        },
        "population": {"min_age": 65, "districts": ["Ashford"]},
        "study_period": {"start": START.isoformat(), "end": END.isoformat()},
        "notebooks": ["01_data_overview", "02_frailty.ipynb"],
        "output_policy": {"threshold": 10, "rounding": 5},
    }
    base.update(overrides)
    return base


def write_proposal(folder: Path, **overrides: Any) -> Path:
    content = proposal_dict(**overrides)
    path = folder / f"{content['id']}.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def kid_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture_kid(tmp_path_factory.mktemp("fixture_kid"))


@pytest.fixture(scope="module")
def proposal() -> Proposal:
    return Proposal.model_validate(proposal_dict())


@pytest.fixture(scope="module")
def kid(kid_dir: Path, proposal: Proposal) -> Any:
    with connect(proposal, kid_dir, user="tester") as session:
        yield session


def refusals(kid_dir: Path) -> list[dict[str, Any]]:
    return [e for e in AuditLog(kid_dir).read() if e["action"] == "refused"]


# ------------------------------------------------------------------ reference implementation
def pseudonym(
    raw_id: int, proposal_id: str = "frailty-test", *, secret: bytes = SECRET, hex_chars: int = 15
) -> int:
    """sha256(HMAC-SHA256(secret, proposal id) hex || decimal id), first 15 hex as an integer."""
    key = hmac.new(secret, proposal_id.encode(), hashlib.sha256).hexdigest()
    return int(hashlib.sha256((key + str(int(raw_id))).encode()).hexdigest()[:hex_chars], 16)


def household_pseudonym(raw_id: int, proposal_id: str = "frailty-test") -> int:
    """Households keep 13 hex characters (52 bits: exact in float64)."""
    return pseudonym(raw_id, proposal_id, hex_chars=13)


def expected_population(
    min_age: int = 65, districts: tuple[str, ...] = ("Ashford",)
) -> pd.DataFrame:
    persons = frames()["persons"]
    # Completed years at START, birthday taken as the 1st of the birth month.
    had_birthday = [(START.month, START.day) >= (int(m), 1) for m in persons.birth_month]
    age = START.year - persons.birth_year.astype(int) - [0 if b else 1 for b in had_birthday]
    district = persons.lsoa_code.map(LSOA_DISTRICT)
    left = persons.registration_end.combine_first(persons.date_of_death)
    registered = left.isna() | (pd.to_datetime(left) >= pd.Timestamp(START))
    keep = (age >= min_age) & district.isin(districts) & registered
    return persons[keep]


def pandas_emergency_by_practice_month() -> pd.DataFrame:
    f = frames()
    pop = expected_population()
    spells = f["inpatient_spells"]
    spells = spells[
        spells.is_emergency
        & spells.person_id.isin(pop.person_id)
        & (pd.to_datetime(spells.admission_date) >= pd.Timestamp(START))
        & (pd.to_datetime(spells.admission_date) <= pd.Timestamp(END))
    ]
    merged = spells.merge(pop[["person_id", "practice_code"]], on="person_id")
    merged["month"] = pd.to_datetime(merged.admission_date).dt.strftime("%Y-%m")
    out = merged.groupby(["practice_code", "month"]).size().rename("emergency_admissions")
    return out.reset_index().sort_values(["practice_code", "month"]).reset_index(drop=True)


# ------------------------------------------------------------------ the shared core queries
def emergency_by_practice_month(session: KID) -> pd.DataFrame:
    spells = session.table("inpatient_spells")
    persons = session.table("persons")
    emergency = spells.filter(spells.is_emergency).join(persons, "person_id")
    expr = emergency.group_by(
        practice_code=emergency.practice_code,
        month=emergency.admission_date.truncate("M"),
    ).agg(emergency_admissions=emergency.count())
    out = expr.to_pandas()
    out["month"] = pd.to_datetime(out["month"]).dt.strftime("%Y-%m")
    out["emergency_admissions"] = out["emergency_admissions"].astype("int64")
    return out.sort_values(["practice_code", "month"]).reset_index(drop=True)


def efi_first_dates(
    session: KID, codes: tuple[str, ...] = (FALLS_CODE, DIZZINESS_CODE)
) -> pd.DataFrame:
    events = session.table("gp_events")
    expr = (
        events.filter(events.snomed_code.isin(list(codes)))
        .group_by(["person_id", "snomed_code"])
        .agg(first_date=events.event_date.min())
    )
    out = expr.to_pandas()
    out["first_date"] = pd.to_datetime(out["first_date"]).dt.strftime("%Y-%m-%d")
    return out.sort_values(["person_id", "snomed_code"]).reset_index(drop=True)


def pandas_efi_first_dates() -> pd.DataFrame:
    events = frames()["gp_events"]
    pop = expected_population()
    dates = pd.to_datetime(events.event_date)
    events = events[
        events.snomed_code.isin([FALLS_CODE, DIZZINESS_CODE])
        & events.person_id.isin(pop.person_id)
        & (dates >= pd.Timestamp(START))
        & (dates <= pd.Timestamp(END))
    ]
    out = events.groupby(["person_id", "snomed_code"]).event_date.min().reset_index()
    out["person_id"] = out.person_id.map(pseudonym)
    out["first_date"] = pd.to_datetime(out.event_date).dt.strftime("%Y-%m-%d")
    out = out[["person_id", "snomed_code", "first_date"]]
    return out.sort_values(["person_id", "snomed_code"]).reset_index(drop=True)


# ------------------------------------------------------------------ proposals
def test_example_proposals_are_valid_and_their_output_policy_loads() -> None:
    paths = sorted((ROOT / "proposals").glob("*.yaml"))
    assert 2 <= len(paths) <= 4
    for path in paths:
        p = load_proposal(path)
        assert p.id == path.stem
        assert p.approved < p.expires
        assert all(n.endswith(".ipynb") for n in p.notebooks)
        assert "01_data_overview.ipynb" in p.notebooks
        try:
            from kidresearch.sdc.policy import DisclosurePolicy
        except ImportError:  # pragma: no cover - sdc lands separately
            continue
        assert DisclosurePolicy.from_mapping(p.output_policy).threshold == 10


def test_unknown_column_error_names_file_table_and_allowed_columns(tmp_path: Path) -> None:
    path = write_proposal(tmp_path, tables={"inpatient_spells": ["person_id", "nhs_number"]})
    with pytest.raises(ProposalError) as info:
        load_proposal(path)
    message = str(info.value)
    assert f"{path}: tables.inpatient_spells: unknown column 'nhs_number'; allowed: person_id" in (
        message
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"tables": {"registrations": "all"}}, "tables.registrations: unknown table"),
        (
            {"tables": {"persons": "some"}},
            "tables.persons: expected a list of column names or 'all'",
        ),
        (
            {"population": {"districts": ["Medway"]}},
            "population.districts: unknown district(s) 'Medway'",
        ),
        ({"population": {"min_age": 80, "max_age": 65}}, "min_age 80 is above max_age 65"),
        ({"population": {"sex": ["X"]}}, "population.sex.0"),
        ({"population": {"practices": ["A123"]}}, "practice code(s) 'A123' do not match"),
        ({"study_period": {"start": "2026-01-01", "end": "2025-01-01"}}, "study_period: start"),
        ({"approved": "2026-05-01", "expires": "2026-01-01"}, "expires 2026-01-01 is before"),
        (
            {
                "study_period": {
                    "start": "2025-01-01",
                    "end": "2026-01-01",
                    "lookback_start": "2025-06-01",
                }
            },
            "study_period: lookback_start 2025-06-01 is after start 2025-01-01",
        ),
        ({"id": "Bad Id!"}, "id: String should match pattern"),
        ({"colour": "blue"}, "colour: unknown field"),
        ({"notebooks": ["../../etc/passwd"]}, "notebooks: notebook name(s)"),
        (
            {"output_policy": {"threshold": 0}},
            "output_policy.threshold: Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_proposal_field_is_named_with_the_file(
    tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    path = write_proposal(tmp_path, **overrides)
    with pytest.raises(ProposalError) as info:
        load_proposal(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_field_is_named(tmp_path: Path) -> None:
    content = proposal_dict()
    del content["study_period"]
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ProposalError, match=r"x\.yaml: study_period: Field required"):
        load_proposal(path)


def test_proposal_id_resolves_through_kid_proposals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_proposal(tmp_path, id="lookup-me")
    monkeypatch.setenv("KID_PROPOSALS", str(tmp_path))
    assert load_proposal("lookup-me").id == "lookup-me"
    with pytest.raises(ProposalError, match="no proposal 'missing-one'"):
        load_proposal("missing-one")


# ------------------------------------------------------------------ connect
def test_connect_reads_kid_data_env_and_config_file(
    kid_dir: Path, proposal: Proposal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KID_DATA", str(kid_dir))
    with connect(proposal) as session:
        assert session.version == "2026-10"
        assert session.data == kid_dir.resolve()
    monkeypatch.delenv("KID_DATA")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ProposalError, match="KID_DATA"):
        connect(proposal)
    (tmp_path / "kidresearch.toml").write_text(f'[kid]\ndata = "{kid_dir}"\n')
    with connect(proposal) as session:
        assert session.tables() == ["persons", "inpatient_spells", "gp_events", "practices"]


def test_expired_and_not_yet_valid_proposals_are_refused_and_logged(kid_dir: Path) -> None:
    before = len(refusals(kid_dir))
    expired = Proposal.model_validate(proposal_dict(approved="2024-01-01", expires="2025-01-01"))
    with pytest.raises(ProposalError, match="expired on 2025-01-01"):
        connect(expired, kid_dir)
    future = Proposal.model_validate(
        proposal_dict(approved=(date.today() + timedelta(days=3)).isoformat())
    )
    with pytest.raises(ProposalError, match="is not valid until"):
        connect(future, kid_dir)
    logged = refusals(kid_dir)[before:]
    assert [e["detail"]["reason"] for e in logged] == ["proposal_not_valid"] * 2


def test_wrong_kid_version_is_refused_with_the_versions_present(kid_dir: Path) -> None:
    pinned = Proposal.model_validate(proposal_dict(kid_version="2025-01"))
    with pytest.raises(AccessRefused, match=r"approved for KID version 2025-01.*present: 2026-10"):
        connect(pinned, kid_dir)
    assert refusals(kid_dir)[-1]["detail"]["reason"] == "wrong_version"
    assert connect(
        Proposal.model_validate(proposal_dict(kid_version="2026-10")), kid_dir
    ).version == ("2026-10")


def test_unpublished_kid_is_a_build_error(tmp_path: Path, proposal: Proposal) -> None:
    (tmp_path / "versions").mkdir()
    with pytest.raises(BuildError, match="no published KID version"):
        connect(proposal, tmp_path)


def test_bad_backend_is_refused_at_the_boundary(kid_dir: Path, proposal: Proposal) -> None:
    with pytest.raises(ValueError, match="'backend' parameter of connect must be 'duckdb' or"):
        connect(proposal, kid_dir, backend="sqlite")  # type: ignore[arg-type]


def test_table_not_matching_the_dictionary_is_a_build_error(
    tmp_path: Path, proposal: Proposal
) -> None:
    root = write_fixture_kid(tmp_path)
    folder = root / "versions" / "2026-10" / "tables" / "practices"
    pd.DataFrame({"practice_code": ["G81001"]}).to_parquet(folder / "part-0.parquet")
    with pytest.raises(BuildError, match=r"tables/practices: cannot read table 'practices'"):
        connect(proposal, root)


def test_repeated_person_id_is_a_build_error_not_repeated_events(
    tmp_path: Path, proposal: Proposal
) -> None:
    root = write_fixture_kid(tmp_path)
    persons = frames()["persons"]
    doubled = pd.concat([persons, persons.iloc[[3]]], ignore_index=True)
    path = root / "versions" / "2026-10" / "tables" / "persons" / "part-0.parquet"
    schema = RESEARCH_TABLES["persons"].arrow_schema()
    pq.write_table(pa.Table.from_pandas(doubled, schema=schema, preserve_index=False), path)
    with pytest.raises(BuildError, match="person_id is not unique"):
        connect(Proposal.model_validate(proposal_dict(population={})), root)


def test_kid_with_string_ids_asks_for_a_full_rebuild(tmp_path: Path, proposal: Proposal) -> None:
    # A KID built before ids became integers holds 32-hex-character person ids.
    root = write_fixture_kid(tmp_path)
    persons = frames()["persons"]
    old = persons.assign(
        person_id=[f"{i:032x}" for i in persons.person_id],
        household_id=[None if pd.isna(h) else f"{h:032x}" for h in persons.household_id],
    )
    schema = RESEARCH_TABLES["persons"].arrow_schema()
    for i in (schema.get_field_index("person_id"), schema.get_field_index("household_id")):
        schema = schema.set(i, schema.field(i).with_type(pa.string()))
    path = root / "versions" / "2026-10" / "tables" / "persons" / "part-0.parquet"
    pq.write_table(pa.Table.from_pandas(old, schema=schema, preserve_index=False), path)
    with pytest.raises(BuildError) as err:
        connect(proposal, root)
    message = str(err.value)
    assert "tables/persons: column 'person_id' of table 'persons'" in message
    assert "expected integer (BIGINT) ids" in message and "`kid build --full`" in message


def test_colliding_pseudonyms_are_refused_naming_the_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kidresearch.access as access

    root = write_fixture_kid(tmp_path)
    prop = Proposal.model_validate(proposal_dict(population={}))
    persons = expected_population(min_age=0, districts=tuple(set(LSOA_DISTRICT.values())))
    # Narrowed to 1 hex character (16 values), 80 people must collide; the reference
    # implementation gives the expected number of distinct pseudonyms.
    monkeypatch.setattr(access, "PSEUDONYM_HEX", 1)
    distinct = persons.person_id.map(lambda i: pseudonym(i, hex_chars=1)).nunique()
    assert distinct < len(persons)
    with pytest.raises(BuildError, match="pseudonyms of proposal frailty-test collide") as err:
        connect(prop, root)
    assert f"person_id: {len(persons)} people but {distinct} distinct pseudonyms (4-bit)" in str(
        err.value
    )
    assert "proposal_secret" in str(err.value)
    # Households are checked too (person ids at full width, households narrowed to 1 hex).
    monkeypatch.setattr(access, "PSEUDONYM_HEX", 15)
    monkeypatch.setattr(access, "HOUSEHOLD_PSEUDONYM_HEX", 1)
    households = persons.household_id.dropna()
    distinct = households.map(lambda h: pseudonym(h, hex_chars=1)).nunique()
    with pytest.raises(BuildError, match="household_id") as err:
        connect(prop, root)
    assert f"{households.nunique()} households but {distinct} distinct" in str(err.value)
    assert "person_id:" not in str(err.value)
    # Nothing was cached from the refused sessions.
    assert not list((root / "restricted" / "sessions").rglob("*.parquet"))


# ------------------------------------------------------------------ restriction
def test_persons_are_the_population_with_approved_columns_and_proposal_pseudonyms(kid: KID) -> None:
    got = kid.table("persons").to_pandas()
    assert list(got.columns) == ["person_id", "household_id", "sex", "birth_year", "practice_code"]
    want = expected_population()
    assert len(want) > 5  # the fixture must exercise the filter
    assert got.person_id.dtype == "int64"
    assert sorted(got.person_id) == sorted(want.person_id.map(pseudonym))
    want_households = want.household_id.dropna().map(household_pseudonym)
    # A nullable integer column reaches pandas as float64; 52-bit pseudonyms stay exact there.
    assert sorted(got.household_id.dropna().astype("int64")) == sorted(want_households)
    assert got.household_id.isna().sum() == want.household_id.isna().sum()
    arrow = kid.table("persons").to_pyarrow()
    assert arrow.schema.field("person_id").type == pa.int64()
    assert arrow.schema.field("household_id").type == pa.int64()


def test_event_tables_hold_only_population_events_in_the_study_period(kid: KID) -> None:
    got = kid.table("gp_events").to_pandas()
    assert list(got.columns) == ["person_id", "event_date", "snomed_code"]  # no year, no practice
    events = frames()["gp_events"]
    dates = pd.to_datetime(events.event_date)
    want = events[
        events.person_id.isin(expected_population().person_id)
        & (dates >= pd.Timestamp(START))
        & (dates <= pd.Timestamp(END))
    ]
    assert len(got) == len(want) > 0
    assert sorted(got.person_id.unique()) == sorted(want.person_id.map(pseudonym).unique())
    spells = kid.table("inpatient_spells").to_pandas()
    assert list(spells.columns) == RESEARCH_TABLES["inpatient_spells"].column_names


def test_lookback_start_shows_history_before_the_study_start(kid_dir: Path) -> None:
    period = {"start": START.isoformat(), "end": END.isoformat(), "lookback_start": "2022-07-01"}
    prop = Proposal.model_validate(proposal_dict(id="with-lookback", study_period=period))
    with connect(prop, kid_dir) as session:
        got = session.table("gp_events").to_pandas()
        n_persons = len(session.table("persons").to_pandas())
    events = frames()["gp_events"]
    dates = pd.to_datetime(events.event_date)
    want = events[
        events.person_id.isin(expected_population().person_id)
        & (dates >= pd.Timestamp("2022-07-01"))
        & (dates <= pd.Timestamp(END))
    ]
    assert len(got) == len(want)
    assert pd.to_datetime(got.event_date).min() < pd.Timestamp(START)
    assert n_persons == len(expected_population())  # the population is still defined at start


def test_emergency_admissions_by_practice_month_match_pandas(kid: KID) -> None:
    got = emergency_by_practice_month(kid)
    pd.testing.assert_frame_equal(got, pandas_emergency_by_practice_month(), check_dtype=False)


def test_efi_deficit_first_dates_match_pandas(kid: KID) -> None:
    pd.testing.assert_frame_equal(efi_first_dates(kid), pandas_efi_first_dates())


def test_two_proposals_see_different_ids_and_one_proposal_the_same(kid_dir: Path, kid: KID) -> None:
    other = Proposal.model_validate(proposal_dict(id="another-study"))
    with connect(other, kid_dir) as second:
        theirs = set(second.table("persons").to_pandas().person_id)
    ours = set(kid.table("persons").to_pandas().person_id)
    assert len(ours) == len(theirs) and not ours & theirs
    with connect(Proposal.model_validate(proposal_dict()), kid_dir) as again:
        assert set(again.table("persons").to_pandas().person_id) == ours


def test_second_session_reads_the_cached_population_with_identical_pseudonyms(
    tmp_path: Path, proposal: Proposal
) -> None:
    root = write_fixture_kid(tmp_path)
    want = sorted(expected_population().person_id.map(pseudonym))
    with connect(proposal, root) as first:
        assert sorted(first.table("persons").to_pandas().person_id) == want
    caches = list((root / "restricted" / "sessions" / "2026-10").glob("frailty-test-*.parquet"))
    assert len(caches) == 1
    assert caches[0].stat().st_mode & 0o077 == 0  # readable by the data controller only
    # The second session reads the cache (poison its pseudonyms to prove it does) ...
    cached = pq.read_table(caches[0]).to_pandas()
    cached["person_id"] = -cached["person_id"]
    pq.write_table(pa.Table.from_pandas(cached, preserve_index=False), caches[0])
    with connect(proposal, root) as second:
        assert sorted(second.table("persons").to_pandas().person_id) == sorted(-p for p in want)
    # ... and a new proposal secret or a rebuilt persons table misses it and recomputes.
    (root / "restricted" / "proposal_secret").write_text("cd" * 32)
    with connect(proposal, root) as third:
        got = sorted(third.table("persons").to_pandas().person_id)
    raw = expected_population().person_id
    assert got == sorted(raw.map(lambda i: pseudonym(i, secret=("cd" * 32).encode())))
    caches = list((root / "restricted" / "sessions" / "2026-10").glob("frailty-test-*.parquet"))
    assert len(caches) == 1  # the stale cache was replaced


def test_reference_tables_are_not_filtered(kid: KID) -> None:
    assert len(kid.table("practices").to_pandas()) == len(frames()["practices"])


def test_sql_runs_over_restricted_views(kid: KID) -> None:
    query = """
        WITH emergency AS (SELECT person_id FROM inpatient_spells WHERE is_emergency)
        SELECT p.practice_code, count(*) AS emergency_admissions
        FROM emergency e JOIN persons p USING (person_id)
        GROUP BY 1 ORDER BY 1
    """
    got = kid.sql(query).to_pandas()
    want = pandas_emergency_by_practice_month().groupby("practice_code").emergency_admissions.sum()
    assert dict(zip(got.practice_code, got.emergency_admissions, strict=True)) == want.to_dict()
    entry, fetch = AuditLog(kid.data).read()[-2:]
    assert entry["action"] == "sql" and entry["detail"]["tables"] == ["inpatient_spells", "persons"]
    assert len(entry["detail"]["fingerprint"]) == 64
    assert fetch["action"] == "fetch" and fetch["rows"] == len(got)
    assert fetch["detail"]["tables"] == ["inpatient_spells", "persons"]


def test_to_pandas_logs_rows_and_log_holds_no_row_data(kid: KID) -> None:
    frame = kid.to_pandas("SELECT person_id, sex FROM persons")
    entry = AuditLog(kid.data).read()[-1]
    assert entry["action"] == "fetch" and entry["rows"] == len(frame) > 0
    text = (kid.data / "audit" / "audit.log").read_text()
    assert not any(str(pid) in text for pid in frame.person_id)
    assert not any(str(pid) in text for pid in frames()["persons"].person_id)


def test_every_materialisation_is_logged_once_with_its_rows(kid: KID) -> None:
    log = AuditLog(kid.data)
    before = len(log.read())
    spells = kid.table("inpatient_spells")
    frame = spells.filter(spells.is_emergency).to_pandas()
    n = spells.count().to_pandas()
    arrow = spells.select("person_id").to_pyarrow()
    new = log.read()[before:]
    assert [e["action"] for e in new] == ["table", "fetch", "fetch", "fetch"]
    assert [e["rows"] for e in new[1:]] == [len(frame), 1, arrow.num_rows]
    assert n == arrow.num_rows
    assert all(e["detail"]["tables"] == ["inpatient_spells"] for e in new[1:])


def test_describe_gives_the_dictionary_entry_with_approved_flags(kid: KID) -> None:
    entry = kid.describe("persons")
    assert list(entry.column) == RESEARCH_TABLES["persons"].column_names
    approved = dict(zip(entry.column, entry.approved, strict=True))
    assert approved["sex"] and not approved["lsoa_code"]
    assert "household" in entry.attrs["description"]
    with pytest.raises(KeyError, match="No research table called 'nhs'"):
        kid.describe("nhs")


def test_completeness_compares_recent_months_with_settled_months(kid: KID) -> None:
    got = kid.completeness(months=6, settle_months=3, baseline_months=12, threshold=0.9)
    spells = got[got.table == "inpatient_spells"].reset_index(drop=True)
    assert list(spells.month) == ["2026-04", "2026-05", "2026-06", "2026-07", "2026-08", "2026-09"]
    view = kid.table("inpatient_spells").to_pandas()
    months = pd.to_datetime(view.admission_date).dt.strftime("%Y-%m").value_counts()
    # Settled months: the 12 months ending 3 months before 2026-09, i.e. 2025-07 .. 2026-06.
    baseline = pd.period_range("2025-07", "2026-06", freq="M").strftime("%Y-%m")
    expected = sum(int(months.get(m, 0)) for m in baseline) / 12
    for row in spells.itertuples():
        assert row.rows == int(months.get(row.month, 0))
        assert row.expected_rows == pytest.approx(expected, abs=0.05)
        assert row.complete == (row.rows / expected >= 0.9)
    assert set(got.table) == {"inpatient_spells", "gp_events"}
    # One table only: the same rows as in the full check.
    only = kid.completeness(months=6, settle_months=3, baseline_months=12, tables=["gp_events"])
    pd.testing.assert_frame_equal(only, got[got.table == "gp_events"].reset_index(drop=True))
    with pytest.raises(AccessRefused, match="table 'lsoas' is not approved"):
        kid.completeness(tables=["lsoas"])


def test_closed_session_refuses_further_use(kid_dir: Path, proposal: Proposal) -> None:
    session = connect(proposal, kid_dir)
    session.close()
    session.close()
    with pytest.raises(ProposalError, match="is closed"):
        session.table("persons")


# ------------------------------------------------------------------ refusals
def test_unapproved_table_is_refused_with_the_approved_tables_and_logged(kid: KID) -> None:
    before = len(refusals(kid.data))
    with pytest.raises(
        AccessRefused,
        match="table 'lsoas' is not approved for proposal frailty-test; approved tables: "
        "persons, inpatient_spells, gp_events, practices",
    ):
        kid.table("lsoas")
    with pytest.raises(AccessRefused, match="'registrations' .*not a research table"):
        kid.table("registrations")
    assert len(refusals(kid.data)) == before + 2


def test_unapproved_column_is_refused(kid: KID) -> None:
    with pytest.raises(AccessRefused, match="'lsoa_code' of table 'persons' not approved"):
        kid.table("persons", columns=["person_id", "lsoa_code"])
    assert list(kid.table("persons", columns=["sex"]).to_pandas().columns) == ["sex"]
    with pytest.raises(
        AccessRefused, match="column 'lsoa_code' of table 'persons' is not approved"
    ):
        kid.sql("SELECT lsoa_code, count(*) FROM persons GROUP BY 1")
    with pytest.raises(AccessRefused, match="column 'lsoa_code' of table 'persons'"):
        kid.sql('SELECT P."LSOA_CODE" FROM Persons AS P')
    # Identifiers are case-insensitive in DuckDB, so upper-case names of approved tables work.
    assert len(kid.sql("SELECT SEX FROM PERSONS").to_pandas()) == len(expected_population())


def test_unapproved_column_of_a_table_is_refused_naming_table_column_and_proposal(
    kid: KID,
) -> None:
    persons = kid.table("persons")
    before = len(AuditLog(kid.data).read())
    # lsoa_code is a persons column of the data dictionary, not approved for frailty-test.
    message = (
        "column 'lsoa_code' of table 'persons' is not approved for proposal frailty-test; "
        "approved columns: person_id, household_id, sex, birth_year, practice_code"
    )
    for access in (
        lambda: persons["lsoa_code"],
        lambda: persons.lsoa_code,
        lambda: persons[["sex", "lsoa_code"]],
    ):
        with pytest.raises(AccessRefused) as err:
            access()
        assert str(err.value) == message
    logged = AuditLog(kid.data).read()[before:]
    assert [(e["action"], e["detail"]["reason"], e["detail"]["column"]) for e in logged] == [
        ("refused", "column_not_approved", "lsoa_code")
    ] * 3
    # Approved columns, Ibis methods and names outside the dictionary behave as in Ibis.
    assert persons["sex"].get_name() == "sex" and persons.sex.get_name() == "sex"
    assert int(persons.filter(persons.sex == "F").count().to_pandas()) == int(
        (expected_population().sex == "F").sum()
    )
    with pytest.raises(AttributeError):
        persons.not_a_column  # noqa: B018
    narrowed = kid.table("persons", columns=["sex"])
    with pytest.raises(AttributeError):
        narrowed.birth_year  # noqa: B018  (approved, left out by columns=: not a refusal)


BAD_QUERIES = {
    "read_parquet quarantine": "SELECT * FROM read_parquet('{kid}/restricted/quarantine.parquet')",
    "read_parquet raw tables": "SELECT * FROM read_parquet('{kid}/versions/2026-10/tables/persons/*.parquet')",
    "read_csv": "SELECT * FROM read_csv('{kid}/restricted/proposal_secret')",
    "read_csv_auto": "SELECT * FROM read_csv_auto('/etc/passwd')",
    "read_json": "SELECT * FROM read_json('x.json')",
    "read_text key": "SELECT * FROM read_text('{kid}/restricted/proposal_secret')",
    "replacement scan": "SELECT * FROM '{kid}/versions/2026-10/tables/persons/part-0.parquet'",
    "glob": "SELECT * FROM glob('{kid}/restricted/*')",
    "parquet_metadata": "SELECT * FROM parquet_metadata('x.parquet')",
    "attach": "ATTACH '{kid}/other.duckdb' AS other",
    "detach": "DETACH other",
    "copy": "COPY (SELECT * FROM persons) TO '/tmp/out.csv'",
    "export": "EXPORT DATABASE '/tmp/dump'",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "pragma": "PRAGMA database_list",
    "set": "SET enable_external_access = true",
    "create": "CREATE TABLE copy AS SELECT * FROM persons",
    "insert": "INSERT INTO persons SELECT * FROM persons",
    "drop": "DROP VIEW persons",
    "describe": "DESCRIBE persons",
    "two statements": "SELECT 1 FROM persons; SELECT 2 FROM persons",
    "duckdb_settings": "SELECT * FROM duckdb_settings()",
    "duckdb_views": "SELECT sql FROM duckdb_views()",
    "getenv": "SELECT getenv('HOME') AS home FROM persons",
    "current_setting": "SELECT current_setting('allowed_directories')",
    "query function": "SELECT * FROM query('SELECT * FROM kid_src.persons')",
    "source schema": "SELECT * FROM kid_src.persons",
    "information_schema": "SELECT * FROM information_schema.tables",
    "raw feed": "SELECT * FROM registrations",
    "unapproved table": "SELECT * FROM lsoas",
    "subquery on file": "SELECT count(*) FROM persons WHERE person_id IN (SELECT a FROM read_parquet('x'))",
    "not sql": "this is not sql at all (",
}


@pytest.mark.parametrize("name", sorted(BAD_QUERIES))
def test_sql_escaping_the_views_is_refused_and_logged(kid: KID, name: str) -> None:
    query = BAD_QUERIES[name].format(kid=kid.data)
    before = len(refusals(kid.data))
    with pytest.raises(AccessRefused) as info:
        kid.sql(query)
    message = str(info.value)
    assert "frailty-test" in message or "one SELECT statement" in message
    logged = refusals(kid.data)
    assert len(logged) == before + 1
    assert logged[-1]["detail"]["message"] == message
    assert "fingerprint" in logged[-1]["detail"]


def test_refusal_messages_say_what_the_proposal_allows(proposal: Proposal) -> None:
    with pytest.raises(AccessRefused) as info:
        check_sql("SELECT * FROM read_parquet('x')", proposal)
    assert "allows SELECT over: persons, inpatient_spells, gp_events, practices" in str(info.value)


def test_duckdb_connection_is_hardened_below_the_parser(kid: KID) -> None:
    import duckdb

    raw = kid._con.con  # a bypass of kid.sql: the connection itself must still refuse
    for query in (
        f"SELECT * FROM read_parquet('{kid.data}/restricted/quarantine.parquet')",
        f"SELECT * FROM read_text('{kid.data}/restricted/proposal_secret')",
        f"ATTACH '{kid.data}/x.duckdb'",
        f"COPY (SELECT 1) TO '{kid.data}/leak.csv'",
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
    ):
        with pytest.raises(duckdb.Error):
            raw.execute(query)
    assert not (kid.data / "leak.csv").exists()
    # The restricted views still read their own Parquet files.
    assert kid.sql("SELECT count(*) AS n FROM gp_events").to_pandas().n.iloc[0] > 0


# ------------------------------------------------------------------ Spark
@pytest.fixture(scope="module")
def spark_kid(kid_dir: Path, proposal: Proposal) -> Any:
    pytest.importorskip("pyspark")
    from kidresearch.access import spark_session

    session = connect(proposal, kid_dir, backend="spark", spark=spark_session(), user="tester")
    yield session
    session.close()


@pytest.mark.spark
@pytest.mark.xdist_group("spark")
def test_spark_and_duckdb_give_identical_emergency_admissions_by_practice_month(
    kid: KID, spark_kid: KID
) -> None:
    duck = emergency_by_practice_month(kid)
    spark = emergency_by_practice_month(spark_kid)
    pd.testing.assert_frame_equal(spark, duck)
    pd.testing.assert_frame_equal(duck, pandas_emergency_by_practice_month(), check_dtype=False)


@pytest.mark.spark
@pytest.mark.xdist_group("spark")
def test_spark_and_duckdb_give_identical_efi_first_dates_and_pseudonyms(
    kid: KID, spark_kid: KID
) -> None:
    spark = efi_first_dates(spark_kid)
    pd.testing.assert_frame_equal(spark, efi_first_dates(kid))
    pd.testing.assert_frame_equal(spark, pandas_efi_first_dates())
    # Person and household pseudonyms (15 and 13 hex) agree between the engines.
    columns = ["person_id", "household_id"]
    spark_ids = spark_kid.table("persons").select(columns).to_pyarrow().to_pandas()
    duck_ids = kid.table("persons").select(columns).to_pyarrow().to_pandas()
    pd.testing.assert_frame_equal(
        spark_ids.sort_values("person_id", ignore_index=True),
        duck_ids.sort_values("person_id", ignore_index=True),
        check_dtype=False,
    )
    assert duck_ids.household_id.notna().sum() > 0


@pytest.mark.spark
@pytest.mark.xdist_group("spark")
def test_spark_sql_and_refusals(spark_kid: KID) -> None:
    before = len(AuditLog(spark_kid.data).read())
    got = spark_kid.sql("SELECT count(*) AS n FROM persons").to_pandas()
    assert int(got.n.iloc[0]) == len(expected_population())
    logged = AuditLog(spark_kid.data).read()[before:]
    assert [(e["action"], e["rows"]) for e in logged] == [("sql", None), ("fetch", 1)]
    with pytest.raises(AccessRefused, match="read_parquet"):
        spark_kid.sql(f"SELECT * FROM read_parquet('{spark_kid.data}/restricted/x.parquet')")
    with pytest.raises(AccessRefused, match="'lsoas' is not approved"):
        spark_kid.table("lsoas")
    session = spark_kid._spark_session  # below the parser, Spark refuses SQL on files
    with pytest.raises(Exception, match="(?i)file|unsupported|not found|cannot be found"):
        session.sql(
            f"SELECT * FROM parquet.`{spark_kid.data}/versions/2026-10/tables/persons`"
        ).collect()


# ------------------------------------------------------------------ demo KID (linkage build)
@pytest.fixture(scope="module")
def built_demo_kid(request: pytest.FixtureRequest) -> Path:
    synth = pytest.importorskip("kidresearch.synth")
    pytest.importorskip("kidresearch.linkage.build")
    if not hasattr(synth, "generate"):
        pytest.skip("kidresearch.synth.generate is not available yet")
    return request.getfixturevalue("demo_kid")


def test_demo_kid_opens_for_every_example_proposal(
    built_demo_kid: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KID_PROPOSALS", str(ROOT / "proposals"))
    for path in sorted((ROOT / "proposals").glob("*.yaml")):
        with connect(path.stem, built_demo_kid, user="ci") as session:
            assert session.tables()
            persons = session.table("persons").to_pandas()
            assert len(persons) > 0
            assert persons.person_id.dtype == "int64"
            assert persons.person_id.between(0, 2**60 - 1).all()  # 15 hex characters
            assert persons.person_id.is_unique
    assert verify(built_demo_kid).ok


def test_demo_kid_65plus_population_and_emergency_admissions_match_pandas(
    built_demo_kid: Path,
) -> None:
    prop = load_proposal(ROOT / "proposals" / "efi-frailty-65plus.yaml")
    tables = built_demo_kid / "versions" / (built_demo_kid / "CURRENT").read_text().strip()
    persons = pd.read_parquet(tables / "tables" / "persons")
    start, end = prop.study_period.start, prop.study_period.end
    had_birthday = persons.birth_month.astype(int) <= start.month
    age = start.year - persons.birth_year.astype(int) - (~had_birthday).astype(int)
    left = pd.to_datetime(persons.registration_end.combine_first(persons.date_of_death))
    keep = (
        (age >= 65)
        & (pd.to_datetime(persons.registration_start) <= pd.Timestamp(end))
        & (left.isna() | (left >= pd.Timestamp(start)))
    )
    population = persons[keep]
    spells = pd.read_parquet(tables / "tables" / "inpatient_spells")
    when = pd.to_datetime(spells.admission_date)
    spells = spells[
        spells.is_emergency
        & spells.person_id.isin(population.person_id)
        & (when >= pd.Timestamp(prop.study_period.lookback_start or start))
        & (when <= pd.Timestamp(end))
    ]
    with connect(prop, built_demo_kid, user="ci") as session:
        assert session.sql("SELECT count(*) AS n FROM persons").to_pandas().n.iloc[0] == len(
            population
        )
        got = session.sql(
            "SELECT count(*) AS n FROM inpatient_spells WHERE is_emergency"
        ).to_pandas()
        assert got.n.iloc[0] == len(spells) > 0


def test_audit_entries_are_valid_json_lines(kid: KID) -> None:
    lines = (kid.data / "audit" / "audit.log").read_text().splitlines()
    assert all(json.loads(line)["hash"] for line in lines)
    assert verify(kid.data).ok, verify(kid.data).summary()


def test_defaults_are_latest_version_and_registered_population() -> None:
    # The proposal in the module docstring parses with textwrap-dedented YAML as well.
    text = textwrap.dedent(
        """
        id: doc-example
        title: t
        lead_researcher: r
        organisation: o
        purpose: p
        approved: 2026-01-01
        expires: 2027-01-01
        tables: {practices: all}
        study_period: {start: 2025-01-01, end: 2025-12-31}
        """
    )
    p = Proposal.model_validate(yaml.safe_load(text))
    assert p.population.registered_during_study_period and p.kid_version == "latest"
