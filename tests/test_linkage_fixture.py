"""A tiny raw-feed writer with planted problems, for precise tests of ``kid build``.

Three monthly extracts (2026-08..2026-10) of every feed in ``kidresearch.schema.RAW_FEEDS``,
a few hundred rows in all, conforming to the schema except for the rows planted on purpose. The
writer records what it planted (``Planted``): the expected quarantine reasons per file and row,
the expected linked rows and corrections, so tests compare the build with what was put in, not
with the build's own arithmetic. NHS numbers are made with an independent, hand-written modulus
11 rule (``_nhs``), not with kidresearch.linkage.nhs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kidresearch.schema import RAW_FEEDS, REFERENCE_TABLES

MONTHS = ("2026-08", "2026-09", "2026-10")
PRACTICES = ("G81001", "G81002", "G82001")
LSOAS = ("E01024001", "E01024002", "E01024101", "E01024102")
GOOD_PER_MONTH = 8  # good rows per event feed and month


def _nhs(rng: random.Random, *, check_ten: bool = False) -> str:
    """A random NHS number with a correct check digit (or a prefix whose check digit is 10)."""
    while True:
        first = "".join(rng.choice("0123456789") for _ in range(9))
        total = sum(int(d) * w for d, w in zip(first, range(10, 1, -1), strict=True))
        check = 11 - total % 11
        if check == 11:
            check = 0
        if check_ten and check == 10:
            return first + "0"
        if not check_ten and check != 10:
            return first + str(check)


def _bad_check(number: str) -> str:
    return number[:9] + str((int(number[9]) + 1) % 10)


def _month_start(month: str) -> date:
    return date(int(month[:4]), int(month[5:]), 1)


def _month_end(month: str) -> date:
    start = _month_start(month)
    nxt = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    return nxt - timedelta(days=1)


@dataclass
class Planted:
    """What the fixture put in, to compare the build against."""

    root: Path
    nhs_by_person: dict[int, str] = field(default_factory=dict)
    rows_in: dict[tuple[str, str], int] = field(default_factory=dict)
    quarantine: list[dict] = field(default_factory=list)  # feed, month, row, field, reason_kind
    corrections: dict[str, int] = field(default_factory=dict)
    formatted: dict[str, str] = field(default_factory=dict)  # raw formatted NHS -> digits

    def expected_quarantined(self, feed: str, month: str) -> int:
        return sum(1 for q in self.quarantine if q["feed"] == feed and q["month"] == month)

    def expected_linked(self, feed: str, month: str) -> int:
        return self.rows_in[(feed, month)] - self.expected_quarantined(feed, month)


def _good_value(col, month: str, k: int, rng: random.Random):
    start = _month_start(month) + timedelta(days=k % 20)
    name = col.name
    if col.dtype == "date":
        if name in ("discharge_date", "end_date"):
            return start + timedelta(days=3)
        if name == "registration_end":
            return None
        if name == "date_of_birth":
            return date(1930 + k % 60, 1 + k % 12, 1 + k % 28)
        return start
    if col.allowed:
        return col.allowed[k % len(col.allowed)]
    fixed = {
        "practice_code": PRACTICES[k % len(PRACTICES)],
        "postcode_lsoa": LSOAS[k % len(LSOAS)],
        "snomed_code": "11429006" if k % 2 else "271737000",
        "bnf_code": "0212000B0",
        "bnf_chapter": 2,
        "quantity": 28,
        "cost_gbp": 4.5,
        "primary_diagnosis_icd10": "I10",
        "underlying_cause_icd10": "I219",
        "los_days": 3,
        "provider_code": "RVV",
        "provider": "Kent Fire and Rescue",
        "treatment_function_code": "300",
        "first_attendance": bool(k % 2),
        "duration_minutes": 30,
        "weekly_cost_gbp": 350.0,
        "uprn": 100060000000 + k // 2,
        "extract_month": month,
        "record_id": None,
        "nhs_number": None,
    }
    if name in fixed:
        return fixed[name]
    raise AssertionError(f"no fixture value for {name}")


def _write(frame: pd.DataFrame, feed: str, month: str, root: Path, fmt: str) -> None:
    folder = root / feed
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(folder / f"{feed}_{month}.csv", index=False)
        return
    table = pa.Table.from_pandas(frame, schema=RAW_FEEDS[feed].arrow_schema().remove_metadata())
    pq.write_table(table, folder / f"{feed}_{month}.parquet")


def _schema_loose(feed: str) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, f.type, nullable=True) for f in RAW_FEEDS[feed].arrow_schema()]
    )


def write_raw(root: Path, *, seed: int = 0, fmt: str = "parquet", months=MONTHS) -> Planted:
    """Write the tiny raw feeds under ``root`` and return what was planted."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    planted = Planted(root)
    ref = root / "reference"
    ref.mkdir(exist_ok=True)
    practices = pd.DataFrame(
        {
            "practice_code": list(PRACTICES),
            "practice_name": ["A", "B", "C"],
            "district": ["Ashford", "Ashford", "Thanet"],
            "lsoa_code": ["E01024001", "E01024002", "E01024101"],
            "latitude": [51.1, 51.2, 51.3],
            "longitude": [0.8, 0.9, 1.3],
        }
    )
    lsoas = pd.DataFrame(
        {
            "lsoa_code": list(LSOAS),
            "district": ["Ashford", "Ashford", "Thanet", "Thanet"],
            "imd_score": [10.0, 20.0, 30.0, 40.0],
            "imd_decile": [9, 7, 3, 1],
            "imd_quintile": [5, 4, 2, 1],
            "latitude": [51.1, 51.2, 51.3, 51.35],
            "longitude": [0.8, 0.9, 1.3, 1.35],
        }
    )
    for name, frame in (("practices", practices), ("lsoas", lsoas)):
        table = pa.Table.from_pandas(frame, schema=REFERENCE_TABLES[name].arrow_schema())
        pq.write_table(table, ref / f"{name}.parquet")

    # People: 40 registered in the first month, 4 more in each later month.
    people: dict[str, list[int]] = {months[0]: list(range(40))}
    for i, month in enumerate(months[1:]):
        people[month] = list(range(40 + 4 * i, 44 + 4 * i))
    n_people = 40 + 4 * (len(months) - 1)
    for p in range(n_people):
        planted.nhs_by_person[p] = _nhs(rng)
    unregistered = _nhs(rng)
    check_ten = _nhs(rng, check_ten=True)

    def fmt_nhs(p: int, style: int) -> str:
        digits = planted.nhs_by_person[p]
        text = [
            digits,
            f"{digits[:3]} {digits[3:6]} {digits[6:]}",
            f"{digits[:3]}-{digits[3:6]}-{digits[6:]}",
        ][style % 3]
        planted.formatted[text] = digits
        return text

    counter = 0
    first_rows: dict[str, dict] = {}
    for m_index, month in enumerate(months):
        for feed, table in RAW_FEEDS.items():
            rows: list[dict] = []

            def plant(
                row: dict, field_name: str, kind: str, rows=rows, feed=feed, month=month
            ) -> None:
                rows.append(row)
                planted.quarantine.append(
                    {
                        "feed": feed,
                        "month": month,
                        "row": len(rows),
                        "field": field_name,
                        "kind": kind,
                    }
                )

            def good(
                k: int, person: int, feed=feed, month=month, table=table, m_index=m_index
            ) -> dict:
                nonlocal counter
                counter += 1
                row = {c.name: _good_value(c, month, k, rng) for c in table.columns}
                row["record_id"] = f"{feed[:3]}-{counter:06d}"
                row["nhs_number"] = fmt_nhs(person, k + m_index)
                return row

            if feed == "registrations":
                for k, p in enumerate(people[month]):
                    row = good(k, p)
                    row["registration_start"] = _month_start(month) - timedelta(
                        days=400 * (m_index == 0)
                    )
                    row["uprn"] = 100060000000 + p // 2  # pairs of people share a household
                    rows.append(row)
            elif feed == "deaths":
                if m_index == len(months) - 1:
                    rows.append(good(0, 3))
                    rows.append(good(1, 5))
            else:
                for k in range(GOOD_PER_MONTH):
                    rows.append(good(k, rng.randrange(0, 40)))
            # Planted problems, in the middle month of every feed.
            if m_index == 1:
                bad = good(1, 7)
                bad["nhs_number"] = None
                plant(bad, "nhs_number", "missing")
                bad = good(2, 8)
                bad["nhs_number"] = _bad_check(planted.nhs_by_person[8])
                plant(bad, "nhs_number", "modulus")
                bad = good(3, 9)
                bad["nhs_number"] = check_ten
                plant(bad, "nhs_number", "modulus")
                bad = good(4, 9)
                bad["nhs_number"] = "94347659"
                plant(bad, "nhs_number", "length")
                if feed != "registrations":
                    bad = good(5, 10)
                    bad["nhs_number"] = unregistered
                    plant(bad, "nhs_number", "register")
                date_col = table.date_column
                bad = good(6, 11)
                bad[date_col] = _month_end(month) + timedelta(days=10)
                if feed in ("inpatient_spells", "social_care_packages", "hospice_episodes"):
                    end = {"inpatient_spells": "discharge_date"}.get(feed, "end_date")
                    bad[end] = bad[date_col] + timedelta(days=1)
                plant(bad, date_col, "future")
                bad = good(7, 12)
                bad["extract_month"] = months[0]
                plant(bad, "extract_month", "extract_month")
                specific = {
                    "prescriptions": ("cost_gbp", -1.0, "minimum"),
                    "inpatient_spells": (
                        "discharge_date",
                        _month_start(month) - timedelta(days=5),
                        "order",
                    ),
                    "gp_events": ("practice_code", "G89999", "unknown"),
                    "ae_attendances": ("department_type", "9", "allowed"),
                    "registrations": ("sex", "X", "allowed"),
                    "deaths": ("underlying_cause_icd10", "not-icd", "pattern"),
                    "community_contacts": ("duration_minutes", -5, "minimum"),
                }
                if feed in specific:
                    col, value, kind = specific[feed]
                    bad = good(8, 13)
                    bad[col] = value
                    plant(bad, col, kind)
            if m_index == 0 and rows:
                first_rows[feed] = dict(rows[0])
            if m_index == len(months) - 1 and feed in first_rows:
                # A correction: the first row of the first month sent again, changed.
                corrected = dict(first_rows[feed])
                corrected["extract_month"] = month
                if feed == "registrations":
                    corrected["practice_code"] = PRACTICES[2]
                    corrected["postcode_lsoa"] = LSOAS[3]
                rows.append(corrected)
                planted.corrections[feed] = 1
            if m_index == len(months) - 1 and feed == "gp_events":
                # The same record twice in one extract: the earlier copy is quarantined.
                dup = dict(rows[0])
                rows.insert(0, dup)
                for q in planted.quarantine:
                    if q["feed"] == feed and q["month"] == month:
                        q["row"] += 1
                planted.quarantine.append(
                    {
                        "feed": feed,
                        "month": month,
                        "row": 1,
                        "field": "record_id",
                        "kind": "duplicate",
                    }
                )
            frame = pd.DataFrame(rows, columns=table.column_names)
            planted.rows_in[(feed, month)] = len(frame)
            if fmt == "parquet":
                data = pa.Table.from_pandas(frame, schema=_schema_loose(feed), preserve_index=False)
                (root / feed).mkdir(parents=True, exist_ok=True)
                pq.write_table(data, root / feed / f"{feed}_{month}.parquet")
            else:
                _write(frame, feed, month, root, fmt)
    for feed in RAW_FEEDS:
        planted.corrections.setdefault(feed, 0)
    return planted


# ------------------------------------------------------------------- tests of the fixture itself
def test_fixture_files_follow_the_raw_schema(tmp_path: Path) -> None:
    planted = write_raw(tmp_path)
    for feed, table in RAW_FEEDS.items():
        for month in MONTHS:
            path = tmp_path / feed / f"{feed}_{month}.parquet"
            assert pq.read_schema(path).names == table.column_names
            assert pq.read_metadata(path).num_rows == planted.rows_in[(feed, month)]


def test_fixture_nhs_numbers_pass_an_independent_modulus_11_check(tmp_path: Path) -> None:
    planted = write_raw(tmp_path)
    for digits in planted.nhs_by_person.values():
        total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
        assert (11 - total % 11) % 11 == int(digits[9])
