"""Small fake KID sessions for the recipe tests: one with known truth (frailty, risk, variation)
and hand-made ones (:func:`session_from_frames`, :func:`toy_session`) over
:class:`kidresearch._examples.ToyKID`.

Every table conforms to ``kidresearch.schema.RESEARCH_TABLES``; the data are drawn with numpy
from parameters kept in ``FakeKID.truth`` so that tests compare recipe output with what the
generator put in, not with the recipe's own arithmetic.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa

from kidresearch._examples import ToyKID
from kidresearch.schema import RESEARCH_TABLES

N_DEFICITS = 35


def _codelist() -> pd.DataFrame:
    """Two codes of each of the 35 coded deficits of the shipped eFI code list."""
    from kidresearch.data import load

    codes = load("efi_deficits", dtype={"snomed_code": str})
    codes = codes[codes.snomed_code.notna()]
    return codes.groupby("deficit_id", sort=True).head(2).reset_index(drop=True)


TOY_CODELIST = _codelist()
TOY_ACSC = pd.DataFrame(
    {
        "indicator": ["2.3.i", "2.3.i", "2.3.ii"],
        "condition": ["asthma", "copd", "uti"],
        "icd10_code": ["J45", "J44", "N390"],
    }
)
NON_ACSC_CODES = ("I21", "S72", "K35")
PERSON_ID_BASE = (1 << 62) + 1
START = dt.date(2015, 1, 1)
END = dt.date(2024, 12, 31)


_LABELS: dict[int, str] = {}


def pid(label: str) -> int:
    """The integer person id of a hand-made test person named ``label`` (stable, 63-bit).

    KID person ids are BIGINTs; tests keep readable names and translate with :func:`pid` going
    in and :func:`by_label` coming out.
    """
    value = int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "big") >> 1
    _LABELS[value] = label
    return value


def by_label(frame: pd.DataFrame, column: str = "person_id") -> pd.DataFrame:
    """``frame`` indexed by the test label of each ``column`` id (ids made with :func:`pid`)."""
    labels = frame[column].map(_LABELS)
    missing = frame.loc[labels.isna(), column]
    if len(missing):
        raise KeyError(f"{column} values {missing.tolist()[:5]} were not made with pid()")
    return frame.assign(**{column: labels}).set_index(column)


def _frame(name: str, data: dict) -> pd.DataFrame:
    schema = RESEARCH_TABLES[name].arrow_schema()
    frame = pd.DataFrame({c: data.get(c) for c in schema.names})
    return frame


@dataclass
class FakeKID:
    """In-memory DuckDB tables plus the generator's truth."""

    con: object
    truth: dict = field(default_factory=dict)
    frames: dict = field(default_factory=dict)

    def table(self, name: str):
        return self.con.table(name)


def _days(rng: np.random.Generator, lo: dt.date, hi: dt.date, n: int) -> np.ndarray:
    span = (hi - lo).days
    return np.datetime64(lo) + rng.integers(0, span + 1, n).astype("timedelta64[D]")


def make_fake_kid(
    n_people: int = 6000,
    seed: int = 7,
    *,
    n_practices: int = 12,
    excess_practices: tuple[int, ...] = (0, 1),
    acsc_excess_ratio: float = 3.0,
    beta: dict | None = None,
) -> FakeKID:
    rng = np.random.default_rng(seed)
    n = n_people
    # KID person ids are 63-bit integers; near the top of the range, so a float64 round trip
    # anywhere in a recipe would show.
    person_id = PERSON_ID_BASE + np.arange(n, dtype=np.int64)
    age_2020 = np.clip(rng.gamma(2.2, 20, n).astype(int), 0, 100)
    # Over-sample older people so frailty and admissions have numbers behind them.
    old = rng.random(n) < 0.45
    age_2020[old] = rng.integers(60, 96, old.sum())
    birth_year = (2020 - age_2020).astype("int16")
    birth_month = rng.integers(1, 13, n).astype("int8")
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    practices = np.array([f"G8{i:04d}" for i in range(1, n_practices + 1)])
    practice_idx = rng.integers(0, n_practices, n)
    n_lsoa = 20
    lsoas = np.array([f"E01{i:06d}" for i in range(1, n_lsoa + 1)])
    lsoa_idx = rng.integers(0, n_lsoa, n)
    lsoa_quintile = (np.arange(n_lsoa) % 5 + 1).astype("int8")
    imd_quintile = lsoa_quintile[lsoa_idx]

    reg_start = np.full(n, np.datetime64("2012-01-01"))
    late = rng.random(n) < 0.1
    reg_start[late] = _days(rng, dt.date(2016, 1, 1), dt.date(2022, 1, 1), late.sum())
    reg_end = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
    left = rng.random(n) < 0.05
    reg_end[left] = _days(rng, dt.date(2017, 1, 1), dt.date(2024, 6, 1), left.sum())
    death = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")

    # Frailty: a latent propensity rising with age; deficits get onset dates 2005-2024.
    age_now = age_2020.astype(float)
    lam = np.where(age_now >= 60, 0.9 * np.exp((age_now - 60) / 17.0), 0.3)
    lam = lam * rng.gamma(3.0, 1 / 3.0, n)
    n_def = np.minimum(rng.poisson(lam), N_DEFICITS)
    owner = np.repeat(np.arange(n), n_def)
    deficit_of = np.concatenate([rng.permutation(N_DEFICITS)[:k] for k in n_def]) if n else []
    deficit_of = np.asarray(deficit_of, dtype=int)
    onset = _days(rng, dt.date(2005, 1, 1), dt.date(2024, 12, 31), len(owner))
    code_pick = rng.integers(0, 2, len(owner))
    codes = TOY_CODELIST.snomed_code.to_numpy()[2 * deficit_of + code_pick]  # 2 per deficit
    # Repeat records of the same deficit later on, and noise codes outside the code list.
    rep = rng.random(len(owner)) < 0.4
    rep_dates = onset[rep] + rng.integers(1, 900, rep.sum()).astype("timedelta64[D]")
    n_noise = n
    gp = pd.DataFrame(
        {
            "person_id": np.concatenate(
                [person_id[owner], person_id[owner[rep]], person_id[rng.integers(0, n, n_noise)]]
            ),
            "event_date": np.concatenate(
                [onset, rep_dates, _days(rng, START, END, n_noise)]
            ).astype("datetime64[D]"),
            "snomed_code": np.concatenate([codes, codes[rep], np.full(n_noise, "123456")]),
        }
    )
    gp["practice_code"] = practices[practice_idx[(gp.person_id - PERSON_ID_BASE).to_numpy()]]

    # Prescriptions: each person takes k substances, each issued monthly over a span; two
    # strengths of one substance share the first 9 characters; chapter 20 never counts.
    k_drugs = rng.poisson(np.where(age_now >= 60, 3.0 + (age_now - 60) / 8, 0.5))
    rx_owner = np.repeat(np.arange(n), k_drugs)
    substance = rng.integers(0, 60, len(rx_owner))
    chapter = np.where(substance < 55, substance % 15 + 1, 20)
    first = _days(rng, dt.date(2014, 1, 1), dt.date(2024, 6, 1), len(rx_owner))
    n_issues = rng.integers(1, 14, len(rx_owner))
    issue_owner = np.repeat(np.arange(len(rx_owner)), n_issues)
    step = np.concatenate([np.arange(k) for k in n_issues]) * 28
    issue_date = first[issue_owner] + step.astype("timedelta64[D]")
    strength = rng.choice(["AAAAAA", "ABABAB"], len(issue_owner))
    bnf = np.char.add(
        np.char.add(
            np.char.zfill(chapter[issue_owner].astype(str), 2),
            np.char.add("0101", np.char.zfill(substance[issue_owner].astype(str), 3)),
        ),
        strength,
    )
    rx = pd.DataFrame(
        {
            "person_id": person_id[rx_owner[issue_owner]],
            "practice_code": practices[practice_idx[rx_owner[issue_owner]]],
            "issue_date": issue_date.astype("datetime64[D]"),
            "bnf_code": bnf,
            "bnf_chapter": chapter[issue_owner].astype("int8"),
            "quantity": np.full(len(issue_owner), 28, dtype="int32"),
            "cost_gbp": np.full(len(issue_owner), 3.5),
        }
    )

    # Emergency admissions, one year at a time, from a known logistic model of age, sex,
    # deprivation, frailty (static deficit count) and the practice (ACSC excess practices).
    beta = beta or {
        "Intercept": -4.2,
        "age_10": 0.35,
        "male": 0.25,
        "imd_q1": 0.5,
        "deficits": 0.12,
    }
    spells = []
    years = range(2015, 2025)
    excess = np.isin(practice_idx, excess_practices)
    born_month = birth_year.astype(int) * 12 + birth_month.astype(int) - 1
    for year in years:
        # Covariates as known on 31 December of the year before: age in completed years
        # (birthday on the 1st of the birth month) and coded deficits recorded by then.
        age_y = ((12 * (year - 1) + 11 - born_month) // 12).astype(float)
        known = onset <= np.datetime64(f"{year - 1}-12-31")
        coded_y = np.bincount(owner[known], minlength=n)
        eta = (
            beta["Intercept"]
            + beta["age_10"] * age_y / 10
            + beta["male"] * (sex == "M")
            + beta["imd_q1"] * (imd_quintile == 1)
            + beta["deficits"] * coded_y
        )
        p = 1 / (1 + np.exp(-eta))
        admitted = rng.random(n) < p
        idx = np.flatnonzero(admitted)
        days = _days(rng, dt.date(year, 1, 1), dt.date(year, 12, 31), len(idx))
        acsc_p = np.where(excess[idx], min(0.25 * acsc_excess_ratio, 0.95), 0.25)
        is_acsc = rng.random(len(idx)) < acsc_p
        diag = np.where(
            is_acsc,
            rng.choice(["J45", "J441", "N390"], len(idx)),
            rng.choice(NON_ACSC_CODES, len(idx)),
        )
        spells.append(pd.DataFrame({"i": idx, "admission_date": days, "diag": diag}))
    sp = pd.concat(spells, ignore_index=True)
    # Elective admissions as a noise table (never ACSC-counted: not emergency).
    el_idx = rng.integers(0, n, n // 10)
    el = pd.DataFrame(
        {"i": el_idx, "admission_date": _days(rng, START, END, len(el_idx)), "diag": "J45"}
    )
    sp["emergency"] = True
    el["emergency"] = False
    sp = pd.concat([sp, el], ignore_index=True)
    los = rng.integers(0, 10, len(sp))
    admission = sp.admission_date.to_numpy().astype("datetime64[D]")
    inpatient = pd.DataFrame(
        {
            "person_id": person_id[sp.i],
            "provider_code": "RVV",
            "admission_date": admission,
            "discharge_date": admission + los.astype("timedelta64[D]"),
            "admission_method": np.where(sp.emergency, "21", "11"),
            "primary_diagnosis_icd10": sp.diag.to_numpy(),
            "los_days": los.astype("int32"),
            "is_emergency": sp.emergency.to_numpy(),
            "is_elective": ~sp.emergency.to_numpy(),
        }
    )

    # Deaths, more likely with frailty; after 2015 so everyone is in the early cohorts.
    p_death = 1 / (1 + np.exp(-(-7.5 + 0.06 * age_now + 0.15 * n_def)))
    dies = rng.random(n) < p_death * 6
    death[dies] = _days(rng, dt.date(2019, 1, 1), dt.date(2024, 12, 31), dies.sum())

    # Care-home placements for some frail people.
    ch = np.flatnonzero((n_def >= 9) & (rng.random(n) < 0.3))
    care = pd.DataFrame(
        {
            "person_id": person_id[ch],
            "start_date": _days(rng, dt.date(2016, 1, 1), dt.date(2024, 6, 1), len(ch)),
            "end_date": pd.NaT,
            "service_type": rng.choice(["residential", "nursing"], len(ch)),
            "weekly_cost_gbp": 900.0,
        }
    )
    ae_idx = rng.integers(0, n, n)
    ae = pd.DataFrame(
        {
            "person_id": person_id[ae_idx],
            "provider_code": "RVV",
            "arrival_date": _days(rng, START, END, n),
            "department_type": "1",
            "disposal": "discharged",
        }
    )
    op_idx = rng.integers(0, n, 2 * n)
    op = pd.DataFrame(
        {
            "person_id": person_id[op_idx],
            "provider_code": "RVV",
            "appointment_date": _days(rng, START, END, 2 * n),
            "treatment_function_code": "300",
            "first_attendance": True,
            "attendance_status": rng.choice(["5", "3"], 2 * n),
        }
    )

    persons = pd.DataFrame(
        {
            "person_id": person_id,
            "household_id": None,
            "sex": sex,
            "birth_year": birth_year,
            "birth_month": birth_month,
            "practice_code": practices[practice_idx],
            "lsoa_code": lsoas[lsoa_idx],
            "registration_start": reg_start,
            "registration_end": reg_end,
            "date_of_death": death,
            "death_cause_icd10": None,
        }
    )
    practices_df = pd.DataFrame(
        {
            "practice_code": practices,
            "practice_name": [f"Practice {i}" for i in range(n_practices)],
            "district": np.resize(["Ashford", "Canterbury", "Dover"], n_practices),
            "lsoa_code": lsoas[:n_practices],
            "latitude": 51.2,
            "longitude": 0.9,
        }
    )
    lsoas_df = pd.DataFrame(
        {
            "lsoa_code": lsoas,
            "district": np.resize(["Ashford", "Canterbury", "Dover"], n_lsoa),
            "imd_score": 50.0 - 8.0 * lsoa_quintile,
            "imd_decile": (2 * lsoa_quintile).astype("int8"),
            "imd_quintile": lsoa_quintile,
            "latitude": 51.2,
            "longitude": 0.9,
        }
    )
    frames = {
        "persons": persons,
        "practices": practices_df,
        "lsoas": lsoas_df,
        "gp_events": gp,
        "prescriptions": rx,
        "inpatient_spells": inpatient,
        "ae_attendances": ae,
        "outpatient_appointments": op,
        "social_care_packages": care,
    }
    con = ibis.duckdb.connect()
    for name, frame in frames.items():
        schema = RESEARCH_TABLES[name].arrow_schema()
        tidy = pd.DataFrame({c: frame[c] if c in frame else None for c in schema.names})
        date_column = RESEARCH_TABLES[name].date_column
        if "extract_month" in schema.names and date_column:
            tidy["extract_month"] = pd.to_datetime(tidy[date_column]).dt.strftime("%Y-%m")
        arrow = pa.Table.from_pandas(tidy, schema=schema, preserve_index=False)
        con.create_table(name, arrow)
        frames[name] = arrow.to_pandas()
    truth = {
        "beta": beta,
        "excess_acsc_practices": sorted(practices[list(excess_practices)].tolist()),
        "n_deficits": dict(zip(person_id, n_def.tolist(), strict=True)),
    }
    return FakeKID(con=con, truth=truth, frames=frames)


_DEFAULTS = {
    "practice_code": "G80001",
    "lsoa_code": "E01000001",
    "household_id": None,
    "registration_end": None,
    "date_of_death": None,
    "death_cause_icd10": None,
    "registration_start": dt.date(2000, 1, 1),
    "birth_month": 1,
    "quantity": 28,
    "cost_gbp": 1.0,
    "provider_code": "RVV",
    "los_days": 1,
    "end_date": None,
    "weekly_cost_gbp": 100.0,
}


def session_from_frames(frames: dict[str, pd.DataFrame]) -> ToyKID:
    """A session over hand-written frames; absent tables are empty, absent columns defaulted."""
    return ToyKID(frames, defaults={**_DEFAULTS, "extract_month": "2020-01"})


#: Defaults of the hand-made rows of the costs and segments tests.
_TOY_DEFAULTS = {
    "provider_code": "RVV",
    "los_days": 1,
    "admission_method": "21",
    "primary_diagnosis_icd10": "I21",
    "department_type": "1",
    "disposal": "discharged",
    "weekly_cost_gbp": 500.0,
    "setting": "inpatient",
}
#: One LSOA per IMD quintile (E01000001 is quintile 1, the most deprived), all in Dover.
_TOY_LSOAS = [
    {
        "lsoa_code": f"E0100000{q}",
        "district": "Dover",
        "imd_score": 60.0 - 10 * q,
        "imd_decile": 2 * q,
        "imd_quintile": q,
        "latitude": 51.1,
        "longitude": 1.3,
    }
    for q in range(1, 6)
]


def toy_session(rows: dict[str, list[dict]]) -> ToyKID:
    """A session over hand-written rows (costs and segments tests): absent tables empty, absent
    columns defaulted, and five LSOAs (one per IMD quintile) unless ``rows`` gives ``lsoas``."""
    return ToyKID({"lsoas": _TOY_LSOAS, **rows}, defaults=_TOY_DEFAULTS)
