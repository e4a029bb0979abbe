"""Tests of the synthetic KID generator (``kidresearch.synth``).

Expected values come from outside the generator's internals: the schema (data dictionary), the
published eFI shares (Clegg et al. 2016), the cost gradient in Jayatunga et al. (2019), the
generator's truth.json, and quantities recomputed here from the raw feed files with an
independent reference implementation (NHS number normalisation, "later extract wins",
quarantine rules, eFI from the shipped code list, costs from unit_costs.csv).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from kidresearch.data import load
from kidresearch.errors import ScenarioError
from kidresearch.schema import RAW_FEEDS, REFERENCE_TABLES
from kidresearch.synth import generate, load_scenario

REF_DATE = pd.Timestamp("2024-11-01")  # the truth's risk/cost reference date (model year 3)


# ------------------------------------------------------------------ reference implementation
def _read(raw: Path, feed: str) -> pd.DataFrame:
    files = sorted((raw / feed).glob(f"{feed}_*.parquet"))
    return pq.ParquetDataset(files).read().to_pandas()


def _check_digit_ok(digits: pd.Series) -> pd.Series:
    """Modulus 11 check of 10-digit strings (hand-written, independent of the generator)."""
    arr = np.array([[int(c) for c in s] for s in digits], dtype=np.int64).reshape(-1, 10)
    total = (arr[:, :9] * np.arange(10, 1, -1)).sum(axis=1)
    check = 11 - total % 11
    check = np.where(check == 11, 0, check)
    return pd.Series((check != 10) & (check == arr[:, 9]), index=digits.index)


def _normalise(nhs: pd.Series) -> pd.Series:
    """NHS number with spaces/dashes removed, or NA when missing or malformed."""
    text = nhs.astype("string").str.replace(r"[ -]", "", regex=True)
    ok = text.str.fullmatch(r"\d{10}").fillna(False).astype(bool)
    good = pd.Series(False, index=nhs.index)
    if ok.any():
        good[ok] = _check_digit_ok(text[ok])
    return text.where(good)


def _latest(df: pd.DataFrame) -> pd.DataFrame:
    """Apply corrections: for a repeated record_id the row of the later extract wins."""
    return df.sort_values(["record_id", "extract_month"], kind="stable").drop_duplicates(
        "record_id", keep="last"
    )


# Episode feeds: (end, start) column pairs; an end before its start is impossible.
END_BEFORE_START = {
    "registrations": [("registration_end", "registration_start")],
    "inpatient_spells": [("discharge_date", "admission_date")],
    "social_care_packages": [("end_date", "start_date")],
    "hospice_episodes": [("end_date", "start_date")],
}


def _violations(feed: str, df: pd.DataFrame) -> pd.Series:
    """Rows a loader must quarantine (schema rules + date logic), by an independent check."""
    table = RAW_FEEDS[feed]
    bad = pd.Series(False, index=df.index)
    for col in table.columns:
        values = df[col.name]
        present = values.notna()
        if col.required and col.name != "nhs_number":
            bad |= ~present
        if col.allowed:
            bad |= present & ~values.isin(col.allowed)
        if col.pattern:
            matches = values[present].astype(str).str.fullmatch(col.pattern)
            bad[present] |= ~matches
        if col.minimum is not None:
            bad |= present & (pd.to_numeric(values, errors="coerce") < col.minimum)
    for end, start in END_BEFORE_START.get(feed, ()):
        bad |= df[end].notna() & (df[end] < df[start])
    date_col = table.date_column
    month_end = pd.to_datetime(df.extract_month + "-01") + pd.offsets.MonthEnd(0)
    bad |= pd.to_datetime(df[date_col]) > month_end
    return bad


@pytest.fixture(scope="module")
def register(demo_synth: Path) -> pd.DataFrame:
    """One row per person: NHS number, date of birth, sex, LSOA, first start, last end."""
    reg = _latest(_read(demo_synth / "raw", "registrations"))
    reg["registration_end"] = pd.to_datetime(reg.registration_end)
    reg["registration_start"] = pd.to_datetime(reg.registration_start)
    return reg


@pytest.fixture(scope="module")
def population_at_ref(demo_synth: Path, register: pd.DataFrame) -> pd.DataFrame:
    """People registered and alive at REF_DATE, with age, sex, IMD quintile and practice."""
    on = register[
        (register.registration_start <= REF_DATE)
        & (register.registration_end.isna() | (register.registration_end >= REF_DATE))
    ]
    on = on.sort_values("registration_start").drop_duplicates("nhs_number", keep="last")
    deaths = _read(demo_synth / "raw", "deaths")
    deaths["nhs"] = _normalise(deaths.nhs_number)
    died_before = set(deaths.loc[pd.to_datetime(deaths.date_of_death) < REF_DATE, "nhs"])
    on = on[~on.nhs_number.isin(died_before)].copy()
    lsoas = pq.read_table(demo_synth / "raw" / "reference" / "lsoas.parquet").to_pandas()
    on = on.merge(
        lsoas[["lsoa_code", "imd_quintile"]], left_on="postcode_lsoa", right_on="lsoa_code"
    )
    on["age"] = (REF_DATE - pd.to_datetime(on.date_of_birth)).dt.days / 365.25
    return on.set_index("nhs_number")


def _linked_clean(raw: Path, feed: str, register: pd.DataFrame) -> pd.DataFrame:
    df = _read(raw, feed)
    df = _latest(df[~_violations(feed, df)])
    df["nhs"] = _normalise(df.nhs_number)
    return df[df.nhs.isin(set(register.nhs_number))]


@pytest.fixture(scope="module")
def efi_at_ref(demo_synth: Path, register: pd.DataFrame, population_at_ref: pd.DataFrame):
    """eFI deficit count and category at REF_DATE from raw GP events and prescriptions."""
    raw = demo_synth / "raw"
    codes = load("efi_deficits", dtype={"snomed_code": str}).dropna(subset=["snomed_code"])
    gp = _linked_clean(raw, "gp_events", register)
    gp = gp[pd.to_datetime(gp.event_date) <= REF_DATE].merge(codes, on="snomed_code")
    deficits = gp.groupby("nhs").deficit.nunique()
    rx = _linked_clean(raw, "prescriptions", register)
    issue = pd.to_datetime(rx.issue_date)
    rx = rx[(issue > REF_DATE - pd.Timedelta(days=365)) & (issue <= REF_DATE)]
    rx = rx[rx.bnf_chapter.between(1, 15)]
    drugs = rx.assign(substance=rx.bnf_code.str[:9]).groupby("nhs").substance.nunique()
    out = pd.DataFrame(index=population_at_ref.index)
    out["polypharmacy"] = (drugs.reindex(out.index).fillna(0) >= 5).astype(int)
    out["count"] = deficits.reindex(out.index).fillna(0).astype(int) + out.polypharmacy
    out["category"] = pd.cut(out["count"], [-1, 4, 8, 12, 99], labels=False)
    return out


# ------------------------------------------------------------------ scenario validation
def test_presets_load_and_kent_is_kent_scale():
    kent = load_scenario("kent")
    assert 1_800_000 <= kent.population.people <= 2_000_000
    assert 210 <= kent.population.practices <= 260
    assert kent.period.start == "2021-11" and kent.period.months == 60


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("population:\n  peeple: 10\n", "population.peeple"),
        ("colour: blue\n", "colour"),
        ("population:\n  people: -5\n", "population.people"),
        ("population:\n  practices: 0\n", "population.practices"),
        ("period:\n  start: '2024-01'\n  end: '2023-06'\n", "period"),
        ("data_quality:\n  lag_months: {1: 0.5, 2: 0.2}\n", "data_quality.lag_months"),
    ],
)
def test_bad_scenario_files_name_the_key(tmp_path, content, key):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ScenarioError, match=re.escape(key)) as err:
        load_scenario(path)
    assert str(path) in str(err.value)


def test_negative_size_message_names_value():
    with pytest.raises(ScenarioError, match=r"population\.people: must be > 0, got -5"):
        load_scenario({"population": {"people": -5}})


def test_end_before_start_is_refused():
    with pytest.raises(ScenarioError, match=r"period: end must be .* after start"):
        load_scenario({"period": {"start": "2025-01", "end": "2024-01"}})


def test_missing_and_non_yaml_files(tmp_path):
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("population: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)


def test_cli_exit_code_for_bad_scenario(tmp_path):
    from kidresearch.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("population:\n  people: -1\n")
    assert main(["synth", "--scenario", str(bad), "--out", str(tmp_path / "o"), "-q"]) == 2


# ------------------------------------------------------------------ determinism
SMALL = {"population": {"people": 1500, "practices": 3, "chunk_size": 500}}


def _hashes(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "raw" / "MANIFEST.json").read_text())
    return {f["path"]: f["sha256"] for f in manifest["files"]}


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory) -> dict:
    """Three small runs: seed 11 with 1 and 2 workers, and seed 12."""
    root = tmp_path_factory.mktemp("synth_small")
    return {
        "a": generate(SMALL, out=root / "a", seed=11, workers=1),
        "b": generate(SMALL, out=root / "b", seed=11, workers=2),
        "c": generate(SMALL, out=root / "c", seed=12, workers=1),
    }


def test_same_seed_identical_files_whatever_the_workers(small_runs):
    a, b, c = small_runs["a"], small_runs["b"], small_runs["c"]
    ha, hb, hc = _hashes(a.out), _hashes(b.out), _hashes(c.out)
    assert len(ha) == 13 * 60 + 2
    assert ha == hb
    assert (a.out / "truth.json").read_bytes() == (b.out / "truth.json").read_bytes()
    # A different seed changes the person-level feeds.
    changed = [p for p in ha if ha[p] != hc[p]]
    assert len(changed) > 300
    assert a.row_counts == b.row_counts and a.row_counts != c.row_counts
    # The manifest hashes are those of the files on disk.
    import hashlib

    some = sorted(ha)[5]
    assert hashlib.sha256((a.out / "raw" / some).read_bytes()).hexdigest() == ha[some]


def test_resolved_scenario_is_written_and_reloads(small_runs):
    again = load_scenario(small_runs["a"].out / "scenario.yaml")
    assert again.seed == 11 and again.population.people == 1500
    assert again == small_runs["a"].scenario


# ------------------------------------------------------------------ layout and schema
def test_every_file_has_the_raw_schema_and_month(demo_synth: Path, demo_truth: dict):
    raw = demo_synth / "raw"
    months = pd.period_range("2021-11", "2026-10", freq="M").strftime("%Y-%m")
    for feed, table in RAW_FEEDS.items():
        for month in months:
            path = raw / feed / f"{feed}_{month}.parquet"
            assert path.exists(), path
            schema = pq.read_schema(path)
            assert schema.equals(table.arrow_schema()), (path, schema)
            extract = pq.read_table(path, columns=["extract_month"]).column(0).to_pylist()
            assert set(extract) <= {month}, path
    for name, table in REFERENCE_TABLES.items():
        ref = pq.read_table(raw / "reference" / f"{name}.parquet")
        assert ref.schema.equals(table.arrow_schema())
    manifest = json.loads((raw / "MANIFEST.json").read_text())
    assert (
        sum(f["rows"] for f in manifest["files"] if f["path"].startswith("gp_events/"))
        == (demo_truth["data_quality"]["feeds"]["gp_events"]["rows"])
    )


def test_reference_geography_is_kent(demo_synth: Path):
    raw = demo_synth / "raw" / "reference"
    lsoas = pq.read_table(raw / "lsoas.parquet").to_pandas()
    practices = pq.read_table(raw / "practices.parquet").to_pandas()
    assert set(lsoas.district) == set(RAW_FEEDS["registrations"].column("sex").allowed) or True
    from kidresearch.schema import KENT_DISTRICTS

    assert set(lsoas.district) == set(KENT_DISTRICTS)
    assert lsoas.latitude.between(50.9, 51.5).all() and lsoas.longitude.between(0.0, 1.45).all()
    assert (lsoas.imd_quintile == (lsoas.imd_decile + 1) // 2).all()
    assert len(lsoas) == pytest.approx(50_000 / 1500, abs=2)
    assert practices.practice_code.is_unique and len(practices) == 20
    assert practices.lsoa_code.isin(lsoas.lsoa_code).all()


def test_injected_errors_are_what_a_validator_finds(demo_synth: Path, demo_truth: dict):
    raw = demo_synth / "raw"
    quality = demo_truth["data_quality"]["feeds"]
    total_injected = 0
    for feed in RAW_FEEDS:
        df = _read(raw, feed)
        found = int(_violations(feed, df).sum())
        injected = sum(quality[feed]["injected_errors"].values())
        total_injected += injected
        assert found == injected, feed
        share = injected / max(1, len(df))
        assert share < 0.003, feed
    assert total_injected > 100


def test_corrections_reuse_record_ids_and_later_extract_wins(demo_synth: Path, demo_truth: dict):
    raw = demo_synth / "raw"
    spells = _read(raw, "inpatient_spells")
    repeated = spells[spells.record_id.duplicated(keep=False)]
    n_corr = demo_truth["data_quality"]["feeds"]["inpatient_spells"]["corrections"]
    assert 0 < n_corr == repeated.record_id.nunique()
    assert (repeated.groupby("record_id").extract_month.nunique() == 2).all()
    first = repeated.sort_values("extract_month").drop_duplicates("record_id", keep="first")
    last = _latest(repeated).set_index("record_id").loc[first.record_id]
    changed = (first.primary_diagnosis_icd10.to_numpy() != last.primary_diagnosis_icd10) | (
        first.discharge_date.to_numpy() != last.discharge_date
    )
    assert changed.all()
    assert (first.primary_diagnosis_icd10 == "R69X").sum() > 0
    # Outside corrections and episode updates, record ids are unique per feed.
    for feed in ("gp_events", "prescriptions", "ae_attendances", "deaths"):
        assert _read(raw, feed).record_id.is_unique, feed


def test_reporting_lag_is_one_or_two_months(demo_synth: Path, demo_truth: dict):
    ae = _read(demo_synth / "raw", "ae_attendances")
    ae = ae[~_violations("ae_attendances", ae)]
    event = pd.to_datetime(ae.arrival_date).dt.to_period("M")
    lag = (pd.PeriodIndex(ae.extract_month, freq="M") - pd.PeriodIndex(event)).map(lambda d: d.n)
    shares = pd.Series(lag).value_counts(normalize=True)
    assert set(shares.index) == {1, 2}
    assert shares[1] == pytest.approx(
        demo_truth["data_quality"]["reporting_lag_months"]["1"], abs=0.02
    )
    assert demo_truth["data_quality"]["feeds"]["ae_attendances"]["not_yet_delivered"] > 0


# ------------------------------------------------------------------ NHS numbers and linkage
def test_register_nhs_numbers_are_valid_and_unique(register: pd.DataFrame, demo_truth: dict):
    assert register.nhs_number.str.fullmatch(r"\d{10}").all()
    assert _check_digit_ok(register.nhs_number).all()
    people = register.drop_duplicates("nhs_number")
    # Everyone simulated, less those who joined in the last month(s) (registration not yet sent).
    assert len(people) == demo_truth["population"]["people_in_register_extracts"]
    assert len(people) >= 0.995 * demo_truth["population"]["people"]
    assert (register.groupby("nhs_number").date_of_birth.nunique() == 1).all()
    # Households: people share a UPRN, 1-5 at an address at the start.
    sizes = people.groupby("uprn").size()
    assert sizes.max() <= 5 and (sizes == 1).mean() > 0.2


def test_non_linkage_rate_in_range_and_matches_truth(demo_synth: Path, register, demo_truth):
    raw = demo_synth / "raw"
    known = set(register.nhs_number)
    quality = demo_truth["data_quality"]["feeds"]
    for feed in ("gp_events", "prescriptions", "inpatient_spells", "ae_attendances"):
        df = _read(raw, feed)
        text = df.nhs_number.astype("string")
        norm = _normalise(df.nhs_number)
        unlinkable = int((norm.isna() | ~norm.isin(known)).sum())
        q = quality[feed]["nhs_number"]
        # The truth counts deliberately broken numbers; a few more rows belong to people whose
        # registration arrives after the last extract (joined in the final months).
        assert q["unlinkable"] <= unlinkable <= q["unlinkable"] + 0.001 * len(df), feed
        assert 0.98 <= 1 - unlinkable / len(df) <= 0.995, feed
        assert int(text.isna().sum()) == q["missing"]
        assert int(text.str.fullmatch(r"\d{9}").fillna(False).sum()) == q["nine_digits"]
        assert (
            int(text.str.fullmatch(r"\d{3} \d{3} \d{4}").fillna(False).sum())
            == (q["formatted_with_spaces"])
        )
        assert (
            int(text.str.fullmatch(r"\d{3}-\d{3}-\d{4}").fillna(False).sum())
            == (q["formatted_with_dashes"])
        )


def test_deaths_end_registrations(demo_synth: Path, register: pd.DataFrame):
    deaths = _read(demo_synth / "raw", "deaths")
    deaths["nhs"] = _normalise(deaths.nhs_number)
    deaths = deaths[deaths.nhs.isin(set(register.nhs_number))]
    last_episode = register.sort_values("registration_start").drop_duplicates(
        "nhs_number", keep="last"
    )
    ends = last_episode.set_index("nhs_number").registration_end.reindex(deaths.nhs)
    date = pd.to_datetime(deaths.date_of_death).to_numpy()
    delivered = ends.notna().to_numpy()
    assert delivered.mean() > 0.9  # the rest die in the last extract months (lag)
    assert (ends.to_numpy()[delivered] == date[delivered]).all()


# ------------------------------------------------------------------ impossible records
def _month_index(values: pd.Series) -> np.ndarray:
    """Months since 1970-01 of dates or 'YYYY-MM' strings (NaN where missing)."""
    stamp = pd.to_datetime(values.astype("string").str.slice(0, 7) + "-01", errors="coerce")
    return (stamp.dt.year * 12 + stamp.dt.month - 1).to_numpy(dtype=float)


def test_spells_are_sent_after_discharge(demo_synth: Path, demo_truth: dict):
    """SUS sends a spell after discharge: extract month >= discharge month + the minimum lag
    (the period's first extract carries the history from before the period)."""
    spells = _read(demo_synth / "raw", "inpatient_spells")
    spells = spells[~_violations("inpatient_spells", spells)]
    first_lag = min(int(k) for k in demo_truth["data_quality"]["reporting_lag_months"])
    extract = _month_index(spells.extract_month)
    discharge = _month_index(spells.discharge_date)
    first = _month_index(pd.Series([demo_truth["period"]["start"]]))[0]
    assert (extract >= discharge).all()
    final = _latest(spells)
    extract, discharge = _month_index(final.extract_month), _month_index(final.discharge_date)
    history = discharge < first
    assert (extract[history] == first).all()
    assert (extract[~history] >= discharge[~history] + first_lag).all()
    # Long stays exist, so the rule has cases where admission and discharge months differ.
    assert (discharge > _month_index(final.admission_date)).sum() > 100


def test_registration_episodes_end_after_they_start(tmp_path):
    """Many moves in and out and changes over a short period: people who leave on the first
    day a change was possible used to get a second episode ending the day before it started."""
    scn = {
        "period": {"start": "2021-11", "end": "2024-10"},
        "population": {
            "people": 6000,
            "practices": 3,
            "chunk_size": 3000,
            "move_in_share": 0.5,
            "move_out_share": 0.5,
            "practice_change_share": 0.5,
            "address_change_share": 0.5,
        },
    }
    result = generate(scn, out=tmp_path, seed=3, workers=1)
    reg = _read(tmp_path / "raw", "registrations")
    ended = reg.registration_end.notna()
    assert ended.sum() > 1000
    assert (reg.registration_end[ended] >= reg.registration_start[ended]).all()
    # Episodes of one person follow each other without overlap.
    last = _latest(reg).sort_values(["nhs_number", "registration_start"])
    prev_end = pd.to_datetime(last.registration_end.shift())
    # (an episode's end may still be on its way when the next one has arrived: reporting lag)
    same = last.nhs_number.eq(last.nhs_number.shift()) & prev_end.notna()
    assert same.sum() > 1000
    assert (pd.to_datetime(last.registration_start[same]) > prev_end[same]).all()
    # Nothing malformed here is counted as an injected error, and none was found.
    assert (
        sum(result.truth["data_quality"]["feeds"]["registrations"]["injected_errors"].values()) == 0
    )


def test_no_impossible_records(demo_synth: Path, register: pd.DataFrame):
    """Outside the injected errors (which a validator finds, see above): no event before birth
    or after death, no end before start, length of stay = discharge - admission, and no row
    sent before the month of any of its dates."""
    raw = demo_synth / "raw"
    people = register.groupby("nhs_number").date_of_birth.first()
    deaths = _read(raw, "deaths")
    deaths["nhs"] = _normalise(deaths.nhs_number)
    death = _latest(deaths).groupby("nhs").date_of_death.first()
    dob = pd.to_datetime(people)
    died = pd.to_datetime(death.reindex(dob.index))
    assert died.notna().sum() > 100
    assert (died.dropna() >= dob[died.notna()]).all()
    problems = {}
    for feed, table in RAW_FEEDS.items():
        df = _read(raw, feed)
        df = df[~_violations(feed, df)]
        # Linked = formatting stripped, equal to a register number (which all pass modulus 11).
        nhs = df.nhs_number.astype("string").str.replace(r"[ -]", "", regex=True)
        person = dob.index.get_indexer(nhs.to_numpy(dtype=object))
        linked = person >= 0
        assert linked.mean() > 0.95, feed  # the checks below cover nearly every row
        born = np.where(linked, dob.to_numpy()[person], np.datetime64("NaT"))
        dead = np.where(linked, died.to_numpy()[person], np.datetime64("NaT"))
        extract = _month_index(df.extract_month)
        for col in table.columns:
            if col.dtype != "date" or col.name == "date_of_birth":
                continue
            when = pd.to_datetime(df[col.name]).to_numpy()
            has = ~pd.isna(when)
            problems[(feed, col.name, "before birth")] = int((has & linked & (when < born)).sum())
            problems[(feed, col.name, "after death")] = int((has & linked & (when > dead)).sum())
            month = _month_index(df[col.name])
            problems[(feed, col.name, "sent before it")] = int((has & (month > extract)).sum())
        for end, start in END_BEFORE_START.get(feed, ()):
            problems[(feed, end, "before start")] = int((df[end] < df[start]).sum())
        if feed == "inpatient_spells":
            los = (pd.to_datetime(df.discharge_date) - pd.to_datetime(df.admission_date)).dt.days
            problems[(feed, "los_days", "not discharge - admission")] = int(
                (los != df.los_days).sum()
            )
    found = {k: v for k, v in problems.items() if v}
    assert not found, found
    assert len(problems) > 40


# ------------------------------------------------------------------ realism against truth
def test_efi_categories_match_published_shares(efi_at_ref, population_at_ref, demo_truth):
    older = population_at_ref.age.between(65, 95, inclusive="left")
    shares = efi_at_ref.category[older].value_counts(normalize=True).sort_index()
    published = [0.50, 0.35, 0.12, 0.03]
    tolerance = [0.05, 0.05, 0.04, 0.02]  # demo: ~9,500 people aged 65-95
    for got, want, tol in zip(shares, published, tolerance, strict=True):
        assert got == pytest.approx(want, abs=tol)
    truth = next(s for s in demo_truth["efi"]["shares_by_date"] if s["date"] == "2024-11-01")
    for i, name in enumerate(("fit", "mild", "moderate", "severe")):
        assert shares.iloc[i] == pytest.approx(truth[name], abs=0.015), name


def test_frailty_trend_rises(demo_truth):
    shares = [s["moderate_or_severe"] for s in demo_truth["efi"]["shares_by_date"]]
    assert shares[-1] > shares[0]
    assert demo_truth["frailty_trend"]["moderate_or_severe_change_per_year"] > 0


def _annual_costs(raw: Path, register: pd.DataFrame, present: pd.DataFrame) -> pd.Series:
    """Cost per person over 365 days from REF_DATE, from raw feeds and unit_costs.csv."""
    uc = load("unit_costs")
    unit = {(r.service_line, r.activity): r.unit_cost_gbp for r in uc.itertuples()}
    consult = set(load("gp_consultation_codes", dtype={"snomed_code": str}).snomed_code)
    lo, hi = REF_DATE, REF_DATE + pd.Timedelta(days=365)
    parts = []

    def window(df, col):
        d = pd.to_datetime(df[col])
        return df[(d >= lo) & (d < hi)]

    gp = window(_linked_clean(raw, "gp_events", register), "event_date")
    parts.append(gp[gp.snomed_code.isin(consult)].assign(cost=unit[("gp", "consultation")]))
    parts.append(
        window(_linked_clean(raw, "prescriptions", register), "issue_date").assign(
            cost=lambda d: d.cost_gbp
        )
    )
    ip = window(_linked_clean(raw, "inpatient_spells", register), "admission_date")
    emergency = ~ip.admission_method.isin(["11", "12", "13"])
    ip = ip.assign(
        cost=np.where(
            emergency,
            unit[("acute_emergency", "spell")]
            + unit[("acute_emergency", "excess_bed_day")] * np.maximum(ip.los_days - 5, 0),
            unit[("acute_elective", "spell")],
        )
    )
    parts.append(ip)
    parts.append(
        window(_linked_clean(raw, "ae_attendances", register), "arrival_date").assign(
            cost=unit[("ae", "attendance")]
        )
    )
    op = window(_linked_clean(raw, "outpatient_appointments", register), "appointment_date")
    parts.append(
        op[op.attendance_status.isin(["5", "6"])].assign(
            cost=unit[("outpatient", "attended_appointment")]
        )
    )
    for feed, col in (
        ("community_contacts", "service"),
        ("mental_health_contacts", "team_type"),
        ("out_of_hours_contacts", "contact_type"),
    ):
        line = {"community_contacts": "community", "mental_health_contacts": "mental_health"}.get(
            feed, "out_of_hours"
        )
        df = window(_linked_clean(raw, feed, register), "contact_date")
        parts.append(df.assign(cost=[unit[(line, v)] for v in df[col]]))
    end_of_data = pd.Timestamp("2026-10-31")
    for feed, rate in (("social_care_packages", None), ("hospice_episodes", "hospice")):
        df = _linked_clean(raw, feed, register)
        start = pd.to_datetime(df.start_date)
        end = pd.to_datetime(df.end_date).fillna(end_of_data)
        days = (np.minimum(end + pd.Timedelta(days=1), hi) - np.maximum(start, lo)).dt.days
        days = days.clip(lower=0)
        per_day = (
            df.weekly_cost_gbp / 7.0
            if rate is None
            else pd.Series([unit[("hospice", s)] for s in df.setting], index=df.index)
        )
        parts.append(df.assign(cost=per_day * days))
    allcost = pd.concat([p[["nhs", "cost"]] for p in parts])
    return allcost.groupby("nhs").cost.sum().reindex(present.index).fillna(0.0)


def test_cost_skew_and_deprivation_gradient(demo_synth, register, population_at_ref, demo_truth):
    cost = _annual_costs(demo_synth / "raw", register, population_at_ref)
    top = cost.sort_values(ascending=False)
    top5 = top.iloc[: round(0.05 * len(top))].sum() / top.sum()
    assert 0.40 <= top5 <= 0.65  # a few percent of people carry a large share
    truth = demo_truth["costs"]
    assert top5 == pytest.approx(truth["top_5_percent_share"], abs=0.02)
    older = population_at_ref.age >= 55
    by_q = cost[older].groupby(population_at_ref.imd_quintile[older]).mean()
    gradient = by_q.loc[1] / by_q.loc[5]
    # Jayatunga et al. 2019: +35% in the most vs least deprived fifth among people over 55.
    # The demo has only a few LSOAs per quintile, so the tolerance is wide.
    assert 1.1 <= gradient <= 1.9
    assert gradient == pytest.approx(truth["deprivation_gradient_q1_vs_q5_55_plus"], rel=0.05)
    assert cost.mean() == pytest.approx(truth["mean_annual_cost_gbp"], rel=0.04)


def test_acsc_practices_have_excess_acsc_admissions(demo_synth, register, demo_truth):
    raw = demo_synth / "raw"
    acsc = load("acsc_icd10").icd10_code.tolist()
    ip = _linked_clean(raw, "inpatient_spells", register)
    ip = ip[~ip.admission_method.isin(["11", "12", "13"])]
    ip["is_acsc"] = ip.primary_diagnosis_icd10.str.startswith(tuple(acsc))
    practice = (
        register.sort_values("registration_start")
        .drop_duplicates("nhs_number", keep="first")
        .set_index("nhs_number")
        .practice_code
    )
    ip["practice"] = practice.reindex(ip.nhs).to_numpy()
    flagged = set(demo_truth["acsc"]["practices"])
    practices = pq.read_table(raw / "reference" / "practices.parquet").to_pandas()
    assert flagged and flagged <= set(practices.practice_code)
    share = ip.groupby(ip.practice.isin(flagged)).is_acsc.mean()
    ratio = share[True] / share[False]
    assert ratio == pytest.approx(demo_truth["acsc"]["rate_ratio"], rel=0.2)
    assert share[False] == pytest.approx(
        demo_truth["acsc"]["base_share_of_emergency_spells"], abs=0.02
    )


def test_programmes_match_truth_and_naive_comparison_is_biased(demo_synth, register, demo_truth):
    raw = demo_synth / "raw"
    enrol = _read(raw, "programme_enrolments")
    progs = demo_truth["programmes"]
    ft = progs["integrated_frailty_team"]
    sw = progs["safe_and_well_visit"]
    counts = enrol.programme.value_counts()
    assert counts["integrated_frailty_team"] == ft["enrolled"] > 50
    assert counts["safe_and_well_visit"] == sw["enrolled"] > 50
    # Naive comparisons are visibly biased: frailer people are enrolled.
    assert ft["naive"]["rate_ratio"] > 1.3 > ft["emergency_rate_ratio"]
    assert sw["naive"]["rate_ratio"] > 1.15 and sw["ae_rate_ratio"] == 1.0
    assert ft["realised_rate_ratio"] == pytest.approx(ft["emergency_rate_ratio"], abs=0.12)
    # The treated mean recomputed from the raw feeds agrees with the truth.
    ip = _linked_clean(raw, "inpatient_spells", register)
    ip = ip[~ip.admission_method.isin(["11", "12", "13"])]
    team = enrol[enrol.programme == "integrated_frailty_team"].assign(
        nhs=lambda d: _normalise(d.nhs_number)
    )
    merged = ip.merge(team[["nhs", "enrolment_date"]], on="nhs")
    days = (pd.to_datetime(merged.admission_date) - pd.to_datetime(merged.enrolment_date)).dt.days
    after = int(((days >= 0) & (days < 366)).sum())
    assert after / len(team) == pytest.approx(ft["treated_mean_y1_12m"], rel=0.08)
    # Enrolees are older and frailer than the 65+ population (non-random assignment).
    dob = register.drop_duplicates("nhs_number").set_index("nhs_number").date_of_birth
    age = (
        pd.to_datetime(team.enrolment_date) - pd.to_datetime(dob.reindex(team.nhs).to_numpy())
    ).dt.days
    assert (age / 365.25).mean() > 78


def test_emergency_risk_model_is_recoverable(
    demo_synth, register, population_at_ref, efi_at_ref, demo_truth
):
    """Refit the truth's logistic model from raw-feed features at the reference date."""
    import statsmodels.api as sm

    raw = demo_synth / "raw"
    ip = _linked_clean(raw, "inpatient_spells", register)
    ip = ip[~ip.admission_method.isin(["11", "12", "13"])]
    adm = pd.to_datetime(ip.admission_date)
    prior = ip[(adm >= REF_DATE - pd.DateOffset(months=12)) & (adm < REF_DATE)].nhs.unique()
    after = ip[(adm >= REF_DATE) & (adm < REF_DATE + pd.DateOffset(months=12))].nhs.unique()
    enrolled = _normalise(_read(raw, "programme_enrolments").nhs_number)
    people = population_at_ref[~population_at_ref.index.isin(set(enrolled))]
    people = people[people.age >= 18]
    X = pd.DataFrame(
        {
            "age_per_decade": (people.age - 65) / 10,
            "male": (people.sex == "M").astype(float),
            "efi_mild": (efi_at_ref.category.reindex(people.index) == 1).astype(float),
            "efi_moderate": (efi_at_ref.category.reindex(people.index) == 2).astype(float),
            "efi_severe": (efi_at_ref.category.reindex(people.index) == 3).astype(float),
            "polypharmacy": efi_at_ref.polypharmacy.reindex(people.index).astype(float),
            "prior_emergency_12m": people.index.isin(set(prior)).astype(float),
            "deprivation_per_quintile": (5 - people.imd_quintile).astype(float),
        },
        index=people.index,
    )
    y = people.index.isin(set(after)).astype(float)
    fit = sm.Logit(y, sm.add_constant(X)).fit(disp=0)
    truth = demo_truth["emergency_admission_model"]["coefficients"]
    for name in ("age_per_decade", "efi_moderate", "prior_emergency_12m"):
        est, se = fit.params[name], fit.bse[name]
        assert abs(est - truth[name]) < 3.5 * se + 0.05, (name, est, se, truth[name])
    assert abs(fit.params["const"] - truth["intercept"]) < 3.5 * fit.bse["const"] + 0.1


def test_summary_and_repr(small_runs):
    result = small_runs["a"]
    frame = result.summary()
    assert list(frame.feed) == list(RAW_FEEDS)
    assert (frame.rows > 0).all()
    assert "people" in result._repr_html_() and "SynthResult(" in repr(result)
    assert result.truth["population"]["people"] == 1500
    assert dt.date.fromisoformat(result.truth["period"]["end"]) == dt.date(2026, 10, 31)
    json.dumps(result.truth, allow_nan=False)  # strict JSON
