"""A tiny research KID written in the published layout, for access tests that need no build.

The frames are deterministic and small enough that expected results are hand-checkable or
computed with plain pandas on the same frames (a reference implementation, not the code under
test). Layout: ``CURRENT``, ``versions/<v>/tables/<table>/`` with event tables hive-partitioned
by ``year=YYYY`` and the others as ``part-0.parquet``, ``versions/<v>/manifest.json``.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kidresearch.schema import RESEARCH_TABLES

VERSION = "2026-10"
PRACTICE_CODES = ("G81001", "G81002", "G82001")
LSOA_DISTRICT = {
    "E01024001": "Ashford",
    "E01024002": "Ashford",
    "E01024101": "Thanet",
    "E01024102": "Thanet",
}
#: SNOMED codes used for gp_events (two "eFI deficit" codes, one other).
FALLS_CODE, DIZZINESS_CODE, OTHER_CODE = "161898004", "404640003", "271737000"
N_PERSONS = 80
#: Raw KID ids are 63-bit integers (truncated HMAC-SHA256); the fixture's sit near the top of
#: the range so a lossy conversion (e.g. through float64) would show.
PERSON_ID_BASE = (1 << 62) + 12_345
HOUSEHOLD_ID_BASE = (1 << 61) + 678


def _write(frame: pd.DataFrame, name: str, tables_dir: Path) -> None:
    schema = RESEARCH_TABLES[name].arrow_schema()
    folder = tables_dir / name
    date_column = RESEARCH_TABLES[name].date_column
    if date_column and name != "persons" and name != "costs":
        years = pd.to_datetime(frame[date_column]).dt.year
        for year in sorted(years.unique()):
            part = folder / f"year={year}"
            part.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(
                frame[years == year].reset_index(drop=True), schema=schema, preserve_index=False
            )
            pq.write_table(table, part / "part-0.parquet")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        pq.write_table(table, folder / "part-0.parquet")


def frames(seed: int = 7) -> dict[str, pd.DataFrame]:
    """The research tables of the fixture KID as pandas frames (raw person ids)."""
    rng = np.random.default_rng(seed)
    n = N_PERSONS
    person_id = [PERSON_ID_BASE + 7919 * i for i in range(1, n + 1)]
    lsoas = list(LSOA_DISTRICT)
    # Ages at 2024-04-01 spread over 20-99; birth months all 1-12.
    birth_year = rng.integers(1925, 2004, n)
    reg_end = [None] * n
    reg_end[0] = date(2020, 5, 31)  # left Kent before any study period below
    deaths = [None] * n
    deaths[1] = date(2025, 2, 14)
    persons = pd.DataFrame(
        {
            "person_id": person_id,
            "household_id": pd.array(
                [HOUSEHOLD_ID_BASE + i // 2 if i % 5 else None for i in range(n)], dtype="Int64"
            ),
            "sex": np.where(np.arange(n) % 2 == 0, "F", "M"),
            "birth_year": birth_year.astype("int16"),
            "birth_month": (np.arange(n) % 12 + 1).astype("int8"),
            "practice_code": [PRACTICE_CODES[i % 3] for i in range(n)],
            "lsoa_code": [lsoas[i % 4] for i in range(n)],
            "registration_start": [date(2015, 1, 1)] * n,
            "registration_end": reg_end,
            "date_of_death": deaths,
            "death_cause_icd10": ["I21" if d else None for d in deaths],
        }
    )
    practices = pd.DataFrame(
        {
            "practice_code": list(PRACTICE_CODES),
            "practice_name": ["North Surgery", "South Surgery", "Harbour Practice"],
            "district": ["Ashford", "Ashford", "Thanet"],
            "lsoa_code": ["E01024001", "E01024002", "E01024101"],
            "latitude": [51.14, 51.15, 51.36],
            "longitude": [0.87, 0.88, 1.41],
        }
    )
    lsoa_frame = pd.DataFrame(
        {
            "lsoa_code": lsoas,
            "district": [LSOA_DISTRICT[c] for c in lsoas],
            "imd_score": [12.5, 30.1, 45.0, 8.2],
            "imd_decile": np.array([6, 3, 1, 8], dtype="int8"),
            "imd_quintile": np.array([3, 2, 1, 4], dtype="int8"),
            "latitude": [51.14, 51.15, 51.36, 51.37],
            "longitude": [0.87, 0.88, 1.41, 1.42],
        }
    )
    # Inpatient spells: 400 spells over 2023-01 .. 2026-09.
    m = 400
    admission = pd.to_datetime("2023-01-01") + pd.to_timedelta(rng.integers(0, 1368, m), "D")
    los = rng.integers(0, 15, m)
    method = rng.choice(["11", "21", "22", "2A", "12"], m)
    spells = pd.DataFrame(
        {
            "person_id": [person_id[i] for i in rng.integers(0, n, m)],
            "provider_code": "RVV",
            "admission_date": admission.date,
            "discharge_date": (admission + pd.to_timedelta(los, "D")).date,
            "admission_method": method,
            "primary_diagnosis_icd10": rng.choice(["J18", "I50", "N39", "S720"], m),
            "los_days": los.astype("int32"),
            "is_emergency": np.isin(method, ["21", "22", "2A"]),
            "is_elective": np.isin(method, ["11", "12"]),
            "extract_month": [f"{d.year}-{d.month:02d}" for d in admission],
        }
    )
    k = 600
    event_date = pd.to_datetime("2022-06-01") + pd.to_timedelta(rng.integers(0, 1580, k), "D")
    gp_events = pd.DataFrame(
        {
            "person_id": [person_id[i] for i in rng.integers(0, n, k)],
            "practice_code": [PRACTICE_CODES[i] for i in rng.integers(0, 3, k)],
            "event_date": event_date.date,
            "snomed_code": rng.choice([FALLS_CODE, DIZZINESS_CODE, OTHER_CODE], k),
            "extract_month": [f"{d.year}-{d.month:02d}" for d in event_date],
        }
    )
    return {
        "persons": persons,
        "practices": practices,
        "lsoas": lsoa_frame,
        "inpatient_spells": spells,
        "gp_events": gp_events,
    }


def write_fixture_kid(root: Path, version: str = VERSION) -> Path:
    """Write the fixture KID under ``root`` and return ``root``."""
    tables_dir = root / "versions" / version / "tables"
    for name, frame in frames().items():
        _write(frame, name, tables_dir)
    (root / "versions" / version / "manifest.json").write_text(
        json.dumps({"version": version, "tables": sorted(frames())})
    )
    (root / "CURRENT").write_text(version + "\n")
    (root / "restricted").mkdir(parents=True, exist_ok=True)
    (root / "restricted" / "quarantine.parquet").write_bytes(b"PAR1 not really")
    (root / "restricted" / "proposal_secret").write_text("ab" * 32)
    return root
