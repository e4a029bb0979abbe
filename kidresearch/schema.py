"""The data dictionary: every table and column of the raw feeds and of the research KID.

This module is the one source of truth for the shape of the data. The synthetic generator writes
raw feeds to these schemas, ``kid build`` validates incoming rows against them and writes research
tables to them, ``KID.describe()`` reads them and ``docs/data_dictionary.md`` is generated from
them (``kid docs``).

Two layers:

* **raw** feeds, as data providers send them each month. They are *identifiable* (NHS number,
  date of birth, LSOA of residence, UPRN) and never reach a researcher.
* **research** tables, the pseudonymised KID that approved proposals query. A research table never
  holds a column marked ``identifier=True``.

Reference tables (practices, LSOAs) are shared by both layers and hold no personal data.

Examples
--------
>>> from kidresearch.schema import RESEARCH_TABLES, RAW_FEEDS
>>> RESEARCH_TABLES["inpatient_spells"].column("is_emergency").dtype
'bool'
>>> "nhs_number" in RAW_FEEDS["gp_events"].column_names
True
>>> any(c.identifier for t in RESEARCH_TABLES.values() for c in t.columns)
False
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

Dtype = Literal["string", "int8", "int16", "int32", "int64", "float64", "bool", "date"]
Layer = Literal["raw", "research", "reference"]

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
}

# NHS Data Dictionary, "Admission Method" (Hospital Provider Spell). Elective: 11-13; emergency:
# 21-25, 2A, 2B, 2C, 2D, 28; maternity: 31-32; other: 81-83.
ADMISSION_METHODS_ELECTIVE = ("11", "12", "13")
ADMISSION_METHODS_EMERGENCY = ("21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28")
ADMISSION_METHODS_MATERNITY = ("31", "32")
ADMISSION_METHODS_OTHER = ("81", "82", "83")
ADMISSION_METHODS = (
    ADMISSION_METHODS_ELECTIVE
    + ADMISSION_METHODS_EMERGENCY
    + ADMISSION_METHODS_MATERNITY
    + ADMISSION_METHODS_OTHER
)

# NHS Data Dictionary, "Attended or Did Not Attend": 5 attended on time, 6 arrived late but seen,
# 7 arrived late and not seen, 2 patient cancelled, 3 did not attend, 4 provider cancelled.
ATTENDANCE_CODES = ("2", "3", "4", "5", "6", "7")
ATTENDED_CODES = ("5", "6")

SEXES = ("F", "M")
KENT_DISTRICTS = (
    "Ashford",
    "Canterbury",
    "Dartford",
    "Dover",
    "Folkestone and Hythe",
    "Gravesham",
    "Maidstone",
    "Sevenoaks",
    "Swale",
    "Thanet",
    "Tonbridge and Malling",
    "Tunbridge Wells",
)
PROGRAMMES = ("integrated_frailty_team", "safe_and_well_visit")
SOCIAL_CARE_SERVICES = ("home_care", "residential", "nursing", "day_care", "direct_payment")
HOSPICE_SETTINGS = ("inpatient", "community", "day")
OOH_CONTACT_TYPES = ("telephone", "base_visit", "home_visit")
AE_DEPARTMENT_TYPES = ("1", "2", "3", "4")
AE_DISPOSALS = ("admitted", "discharged", "referred", "transferred", "left", "died")
COMMUNITY_SERVICES = (
    "district_nursing",
    "physiotherapy",
    "occupational_therapy",
    "podiatry",
    "speech_and_language",
    "rapid_response",
)
MH_TEAM_TYPES = ("community_mh", "crisis", "older_adults", "iapt", "inpatient_liaison")

LSOA_PATTERN = r"^E01\d{6}$"
PRACTICE_PATTERN = r"^G8\d{4}$"
ICD10_PATTERN = r"^[A-Z]\d{2}(\d{1,2}|X)?$"
SNOMED_PATTERN = r"^\d{6,18}$"
BNF_PATTERN = r"^\d{2}[0-9A-Z]{0,13}$"
MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Parameters
    ----------
    name
        Column name, in the field's words with units (``cost_gbp``, ``los_days``).
    dtype
        Logical type; see ``arrow_type`` for the Parquet type.
    description
        What a researcher needs to know, including its traps.
    required
        Whether a value must be present (``kid build`` quarantines rows where it is missing).
    allowed
        The complete set of allowed values, when the column is categorical.
    code_system
        The coding scheme (``"SNOMED CT"``, ``"ICD-10"``, ``"BNF"``, ``"ODS"``, ...).
    identifier
        ``True`` for a direct identifier (NHS number, date of birth, UPRN); never in the
        research layer.
    minimum, maximum
        Inclusive numeric bounds (e.g. costs are never negative).
    pattern
        A regular expression a string value must match in full.
    """

    name: str
    dtype: Dtype
    description: str
    required: bool = True
    allowed: tuple[str, ...] | None = None
    code_system: str | None = None
    identifier: bool = False
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES[self.dtype]


@dataclass(frozen=True)
class Table:
    """One table of the data dictionary.

    Parameters
    ----------
    name
        Table name (also the folder name of its Parquet files).
    layer
        ``"raw"`` (identifiable provider feed), ``"research"`` (pseudonymised KID) or
        ``"reference"`` (no personal data).
    description
        What the table holds and its traps: reporting lag, non-linkage, what a date means.
    columns
        The columns, in file order.
    source
        The provider or system the data come from.
    date_column
        The event date used for the study-period filter, monthly completeness and year partitions.
    key
        Column(s) that identify a row (for raw feeds, the provider's record id, used to apply
        corrections sent in later extracts).
    """

    name: str
    layer: Layer
    description: str
    columns: tuple[Column, ...]
    source: str = ""
    date_column: str | None = None
    key: tuple[str, ...] = ()
    person_column: str | None = field(default=None)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        """Return the column called ``name``.

        Raises
        ------
        KeyError
            If the table has no such column; the message lists the columns it has.
        """
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(
            f"Table '{self.name}' has no column '{name}'. Its columns are: "
            + ", ".join(self.column_names)
        )

    def arrow_schema(self) -> pa.Schema:
        """The Parquet (Arrow) schema of the table."""
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=not c.required) for c in self.columns]
        )


def _c(name: str, dtype: Dtype, description: str, **kw: object) -> Column:
    return Column(name, dtype, description, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Columns shared by the raw feeds
# --------------------------------------------------------------------------------------------
NHS_NUMBER = _c(
    "nhs_number",
    "string",
    "NHS number as sent by the provider: 10 digits with a modulus 11 check digit, possibly with "
    "spaces or dashes, sometimes missing or invalid (about 1-2% of records). Rows that cannot be "
    "linked to the population register are quarantined by `kid build`.",
    required=False,
    identifier=True,
    code_system="NHS number",
)
RECORD_ID = _c(
    "record_id",
    "string",
    "The provider's identifier for the record. A later extract that repeats a record_id "
    "corrects the earlier row (the later extract wins).",
)
EXTRACT_MONTH = _c(
    "extract_month",
    "string",
    "The monthly extract (YYYY-MM) the row arrived in; usually 1-2 months after the event "
    "(reporting lag).",
    pattern=MONTH_PATTERN,
)
PRACTICE_CODE = _c(
    "practice_code",
    "string",
    "ODS code of the GP practice.",
    code_system="ODS",
    pattern=PRACTICE_PATTERN,
)
LSOA_CODE = _c(
    "lsoa_code",
    "string",
    "Lower layer super output area (2011) of residence.",
    code_system="ONS LSOA 2011",
    pattern=LSOA_PATTERN,
)
COST = _c(
    "cost_gbp", "float64", "Cost in pounds sterling at the unit cost's price year.", minimum=0.0
)

_RAW_COMMON = (RECORD_ID, NHS_NUMBER)
_RAW_TAIL = (EXTRACT_MONTH,)

# --------------------------------------------------------------------------------------------
# Reference tables (no personal data)
# --------------------------------------------------------------------------------------------
PRACTICES = Table(
    "practices",
    "reference",
    "GP practices in Kent with the district they sit in and coordinates for maps. Synthetic "
    "practices carry synthetic codes in the G8xxxx range.",
    (
        PRACTICE_CODE,
        _c("practice_name", "string", "Practice name."),
        _c("district", "string", "Kent district of the practice.", allowed=KENT_DISTRICTS),
        _c("lsoa_code", "string", "LSOA the practice premises sit in.", pattern=LSOA_PATTERN),
        _c("latitude", "float64", "Latitude (WGS84) of the premises.", minimum=50.0, maximum=52.0),
        _c("longitude", "float64", "Longitude (WGS84) of the premises.", minimum=-1.0, maximum=2.0),
    ),
    source="ODS / synthetic",
    key=("practice_code",),
)
LSOAS = Table(
    "lsoas",
    "reference",
    "Lower layer super output areas of Kent (about 1,500 residents each) with the English "
    "Index of Multiple Deprivation (IMD). IMD decile 1 is the most deprived tenth of England, "
    "10 the least deprived; quintile 1 is deciles 1-2.",
    (
        LSOA_CODE,
        _c("district", "string", "Kent district.", allowed=KENT_DISTRICTS),
        _c("imd_score", "float64", "IMD score (higher is more deprived).", minimum=0.0),
        _c("imd_decile", "int8", "IMD decile, 1 = most deprived.", minimum=1, maximum=10),
        _c("imd_quintile", "int8", "IMD quintile, 1 = most deprived.", minimum=1, maximum=5),
        _c(
            "latitude",
            "float64",
            "Population-weighted centroid latitude.",
            minimum=50.0,
            maximum=52.0,
        ),
        _c(
            "longitude",
            "float64",
            "Population-weighted centroid longitude.",
            minimum=-1.0,
            maximum=2.0,
        ),
    ),
    source="ONS / MHCLG English Indices of Deprivation (synthetic values)",
    key=("lsoa_code",),
)

# --------------------------------------------------------------------------------------------
# Raw feeds (identifiable; never seen by researchers)
# --------------------------------------------------------------------------------------------
_RAW: list[Table] = [
    Table(
        "registrations",
        "raw",
        "GP registrations: one row per registration episode, with the person's demographics and "
        "address as held by the practice. Together these rows form the population register that "
        "every other feed is linked to. A change of practice or address ends one episode and "
        "starts another; births start an episode, deaths and moves out of Kent end one.",
        (
            *_RAW_COMMON,
            _c("date_of_birth", "date", "Date of birth.", identifier=True),
            _c("sex", "string", "Sex as recorded by the practice.", allowed=SEXES),
            _c(
                "postcode_lsoa",
                "string",
                "LSOA of the registered address (derived from the postcode).",
                pattern=LSOA_PATTERN,
                code_system="ONS LSOA 2011",
            ),
            _c(
                "uprn",
                "int64",
                "Unique Property Reference Number of the address.",
                identifier=True,
                required=False,
            ),
            PRACTICE_CODE,
            _c("registration_start", "date", "First day of the registration episode."),
            _c(
                "registration_end",
                "date",
                "Last day of the episode; missing while it is open.",
                required=False,
            ),
            *_RAW_TAIL,
        ),
        source="GP practice systems (registrations)",
        date_column="registration_start",
        key=("record_id",),
    ),
    Table(
        "deaths",
        "raw",
        "Deaths registered for Kent residents (ONS civil registration).",
        (
            *_RAW_COMMON,
            _c("date_of_death", "date", "Date of death."),
            _c(
                "underlying_cause_icd10",
                "string",
                "Underlying cause of death.",
                code_system="ICD-10",
                pattern=ICD10_PATTERN,
                required=False,
            ),
            *_RAW_TAIL,
        ),
        source="ONS civil registration deaths",
        date_column="date_of_death",
        key=("record_id",),
    ),
    Table(
        "gp_events",
        "raw",
        "Coded clinical events from GP records (diagnoses, symptoms, social circumstances, "
        "functional status). Only the code and date are sent, not free text.",
        (
            *_RAW_COMMON,
            PRACTICE_CODE,
            _c("event_date", "date", "Date the code was recorded."),
            _c(
                "snomed_code",
                "string",
                "SNOMED CT concept id.",
                code_system="SNOMED CT",
                pattern=SNOMED_PATTERN,
            ),
            *_RAW_TAIL,
        ),
        source="GP practice systems (coded events)",
        date_column="event_date",
        key=("record_id",),
    ),
    Table(
        "prescriptions",
        "raw",
        "Primary-care prescription issues, one row per issued item.",
        (
            *_RAW_COMMON,
            PRACTICE_CODE,
            _c("issue_date", "date", "Date the prescription was issued."),
            _c(
                "bnf_code",
                "string",
                "BNF code of the drug (chapter, section, paragraph, chemical substance).",
                code_system="BNF",
                pattern=BNF_PATTERN,
            ),
            _c(
                "bnf_chapter",
                "int8",
                "BNF chapter (1-15 are the chapters the eFI counts for polypharmacy).",
                minimum=1,
                maximum=23,
            ),
            _c("quantity", "int32", "Quantity issued.", minimum=0),
            COST,
            *_RAW_TAIL,
        ),
        source="GP practice systems (prescribing)",
        date_column="issue_date",
        key=("record_id",),
    ),
    Table(
        "inpatient_spells",
        "raw",
        "Acute hospital provider spells (admitted patient care).",
        (
            *_RAW_COMMON,
            _c("provider_code", "string", "ODS code of the acute trust."),
            _c("admission_date", "date", "Date of admission."),
            _c("discharge_date", "date", "Date of discharge."),
            _c(
                "admission_method",
                "string",
                "Admission method (NHS Data Dictionary).",
                allowed=ADMISSION_METHODS,
                code_system="NHS DD admission method",
            ),
            _c(
                "primary_diagnosis_icd10",
                "string",
                "Primary diagnosis of the first episode.",
                code_system="ICD-10",
                pattern=ICD10_PATTERN,
            ),
            _c(
                "los_days",
                "int32",
                "Length of stay in days (discharge minus admission).",
                minimum=0,
            ),
            *_RAW_TAIL,
        ),
        source="Acute trusts (SUS admitted patient care)",
        date_column="admission_date",
        key=("record_id",),
    ),
    Table(
        "ae_attendances",
        "raw",
        "Accident and emergency attendances.",
        (
            *_RAW_COMMON,
            _c("provider_code", "string", "ODS code of the trust."),
            _c("arrival_date", "date", "Date of arrival."),
            _c(
                "department_type",
                "string",
                "A&E department type (1 = major A&E, 2 = single specialty, 3 = urgent treatment / minor injuries, 4 = walk-in).",
                allowed=AE_DEPARTMENT_TYPES,
            ),
            _c("disposal", "string", "How the attendance ended.", allowed=AE_DISPOSALS),
            *_RAW_TAIL,
        ),
        source="Acute trusts (ECDS)",
        date_column="arrival_date",
        key=("record_id",),
    ),
    Table(
        "outpatient_appointments",
        "raw",
        "Outpatient appointments, attended and not.",
        (
            *_RAW_COMMON,
            _c("provider_code", "string", "ODS code of the trust."),
            _c("appointment_date", "date", "Date of the appointment."),
            _c(
                "treatment_function_code",
                "string",
                "Treatment function (specialty) code.",
                pattern=r"^\d{3}$",
            ),
            _c("first_attendance", "bool", "True for a first appointment, False for a follow-up."),
            _c(
                "attendance_status",
                "string",
                "Attended or did not attend (NHS Data Dictionary): 5/6 attended, 3 did not attend, 2/4 cancelled, 7 late and not seen.",
                allowed=ATTENDANCE_CODES,
            ),
            *_RAW_TAIL,
        ),
        source="Acute trusts (SUS outpatients)",
        date_column="appointment_date",
        key=("record_id",),
    ),
    Table(
        "community_contacts",
        "raw",
        "Community health service contacts.",
        (
            *_RAW_COMMON,
            _c("contact_date", "date", "Date of contact."),
            _c("service", "string", "Community service.", allowed=COMMUNITY_SERVICES),
            _c("duration_minutes", "int32", "Contact duration.", minimum=0),
            *_RAW_TAIL,
        ),
        source="Community health trust (CSDS)",
        date_column="contact_date",
        key=("record_id",),
    ),
    Table(
        "mental_health_contacts",
        "raw",
        "Secondary mental health service contacts.",
        (
            *_RAW_COMMON,
            _c("contact_date", "date", "Date of contact."),
            _c("team_type", "string", "Mental health team.", allowed=MH_TEAM_TYPES),
            *_RAW_TAIL,
        ),
        source="Mental health trust (MHSDS)",
        date_column="contact_date",
        key=("record_id",),
    ),
    Table(
        "out_of_hours_contacts",
        "raw",
        "GP out-of-hours service contacts.",
        (
            *_RAW_COMMON,
            _c("contact_date", "date", "Date of contact."),
            _c("contact_type", "string", "Type of contact.", allowed=OOH_CONTACT_TYPES),
            *_RAW_TAIL,
        ),
        source="Out-of-hours provider",
        date_column="contact_date",
        key=("record_id",),
    ),
    Table(
        "social_care_packages",
        "raw",
        "Adult social care packages commissioned by the county council. A package is open "
        "while end_date is missing.",
        (
            *_RAW_COMMON,
            _c("start_date", "date", "First day of the package."),
            _c("end_date", "date", "Last day; missing while open.", required=False),
            _c(
                "service_type",
                "string",
                "Kind of care (residential and nursing are care-home placements).",
                allowed=SOCIAL_CARE_SERVICES,
            ),
            _c("weekly_cost_gbp", "float64", "Gross weekly cost of the package.", minimum=0.0),
            *_RAW_TAIL,
        ),
        source="Kent County Council adult social care",
        date_column="start_date",
        key=("record_id",),
    ),
    Table(
        "hospice_episodes",
        "raw",
        "Hospice care episodes.",
        (
            *_RAW_COMMON,
            _c("start_date", "date", "First day of the episode."),
            _c("end_date", "date", "Last day of the episode; missing while open.", required=False),
            _c("setting", "string", "Setting of care.", allowed=HOSPICE_SETTINGS),
            *_RAW_TAIL,
        ),
        source="Kent hospices",
        date_column="start_date",
        key=("record_id",),
    ),
    Table(
        "programme_enrolments",
        "raw",
        "Enrolments in the two (synthetic) programmes evaluated with the KID: the integrated "
        "frailty team and Kent Fire and Rescue 'safe and well' home visits. Assignment is not "
        "random: older, frailer and more deprived people are more likely to be enrolled.",
        (
            *_RAW_COMMON,
            _c("programme", "string", "Programme.", allowed=PROGRAMMES),
            _c("enrolment_date", "date", "Date of enrolment (the index date of a cohort study)."),
            _c("provider", "string", "Organisation delivering the programme."),
            *_RAW_TAIL,
        ),
        source="Community trust / Kent Fire and Rescue Service",
        date_column="enrolment_date",
        key=("record_id",),
    ),
]
RAW_FEEDS: dict[str, Table] = {t.name: t for t in _RAW}

# --------------------------------------------------------------------------------------------
# Research KID (pseudonymised)
# --------------------------------------------------------------------------------------------
PERSON_ID = _c(
    "person_id",
    "int64",
    "Pseudonymous person id: a 63-bit integer from a keyed HMAC-SHA256 of the NHS number. "
    "Within a proposal it is re-keyed with the proposal's own key, so two proposals never see "
    "the same ids.",
)
_RESEARCH_LAG = (
    " Rows arrive with a 1-2 month reporting lag, so the most recent months are incomplete "
    "(see `KID.completeness()`); about 1-2% of provider records could not be linked and are not "
    "here."
)


def _event_table(raw: Table, description: str, extra: tuple[Column, ...] = ()) -> Table:
    """Research table made from a raw feed: NHS number -> person_id, record id kept for audit."""
    cols = [c for c in raw.columns if c.name not in {"nhs_number", "record_id"}]
    tail = [c for c in cols if c.name == "extract_month"]
    body = [c for c in cols if c.name != "extract_month"]
    return Table(
        raw.name,
        "research",
        description + _RESEARCH_LAG,
        (PERSON_ID, *body, *extra, *tail),
        source=raw.source,
        date_column=raw.date_column,
        key=("person_id",),
        person_column="person_id",
    )


_RESEARCH: list[Table] = [
    Table(
        "persons",
        "research",
        "One row per person ever registered in Kent in the data period, from the population "
        "register (GP registrations) and deaths. Date of birth is coarsened to year and month "
        "and the address to LSOA; `household_id` links people at the same address without "
        "revealing it. `practice_code` and `lsoa_code` are the latest known. People move in and "
        "out: use registration_start/registration_end for denominators, not a row count.",
        (
            PERSON_ID,
            _c(
                "household_id",
                "int64",
                "Pseudonymous household id (63-bit integer from a keyed HMAC of the UPRN); missing "
                "when no UPRN was sent.",
                required=False,
            ),
            _c("sex", "string", "Sex.", allowed=SEXES),
            _c("birth_year", "int16", "Year of birth.", minimum=1900, maximum=2100),
            _c("birth_month", "int8", "Month of birth.", minimum=1, maximum=12),
            PRACTICE_CODE,
            LSOA_CODE,
            _c(
                "registration_start",
                "date",
                "Start of the earliest registration episode in Kent in the data period.",
            ),
            _c(
                "registration_end",
                "date",
                "End of the latest episode; missing while registered.",
                required=False,
            ),
            _c(
                "date_of_death",
                "date",
                "Date of death; missing if alive at the last extract.",
                required=False,
            ),
            _c(
                "death_cause_icd10",
                "string",
                "Underlying cause of death.",
                required=False,
                code_system="ICD-10",
            ),
        ),
        source="GP registrations, ONS deaths",
        key=("person_id",),
        person_column="person_id",
    ),
    PRACTICES,
    LSOAS,
    _event_table(RAW_FEEDS["gp_events"], "Coded primary-care events (SNOMED CT)."),
    _event_table(RAW_FEEDS["prescriptions"], "Primary-care prescription issues."),
    _event_table(
        RAW_FEEDS["inpatient_spells"],
        "Acute hospital inpatient spells. `is_emergency` is admission method 21-2D/28.",
        (
            _c("is_emergency", "bool", "Emergency admission (admission method 21-25, 2A-2D, 28)."),
            _c("is_elective", "bool", "Elective admission (admission method 11-13)."),
        ),
    ),
    _event_table(RAW_FEEDS["ae_attendances"], "A&E attendances."),
    _event_table(
        RAW_FEEDS["outpatient_appointments"], "Outpatient appointments, attended and not."
    ),
    _event_table(RAW_FEEDS["community_contacts"], "Community health contacts."),
    _event_table(RAW_FEEDS["mental_health_contacts"], "Mental health contacts."),
    _event_table(RAW_FEEDS["out_of_hours_contacts"], "GP out-of-hours contacts."),
    _event_table(RAW_FEEDS["social_care_packages"], "Adult social care packages."),
    _event_table(RAW_FEEDS["hospice_episodes"], "Hospice episodes."),
    _event_table(
        RAW_FEEDS["programme_enrolments"], "Programme enrolments (synthetic interventions)."
    ),
    Table(
        "costs",
        "research",
        "A view: one row per costed activity, from activity x the documented unit costs in "
        "`kidresearch/data/unit_costs.csv` (price year in that file). Prescriptions carry their "
        "own cost; social care packages are costed per week in each month they are open."
        + _RESEARCH_LAG,
        (
            PERSON_ID,
            _c(
                "activity_date",
                "date",
                "Date of the activity (for packages, the first day of the month costed).",
            ),
            _c(
                "service_line",
                "string",
                "Service line.",
                allowed=(
                    "acute_elective",
                    "acute_emergency",
                    "ae",
                    "outpatient",
                    "gp",
                    "prescribing",
                    "community",
                    "mental_health",
                    "out_of_hours",
                    "social_care",
                    "hospice",
                ),
            ),
            COST,
        ),
        source="derived",
        date_column="activity_date",
        key=("person_id",),
        person_column="person_id",
    ),
]
RESEARCH_TABLES: dict[str, Table] = {t.name: t for t in _RESEARCH}
REFERENCE_TABLES: dict[str, Table] = {"practices": PRACTICES, "lsoas": LSOAS}


def table(name: str, layer: Layer = "research") -> Table:
    """Look up a table of the data dictionary by name.

    Examples
    --------
    >>> table("persons").column("birth_year").dtype
    'int16'
    """
    tables = {"raw": RAW_FEEDS, "research": RESEARCH_TABLES, "reference": REFERENCE_TABLES}[layer]
    if name not in tables:
        raise KeyError(
            f"No {layer} table called '{name}'. The {layer} tables are: "
            + ", ".join(sorted(tables))
        )
    return tables[name]


def _table_markdown(t: Table) -> list[str]:
    lines = [f"### `{t.name}`", "", t.description, ""]
    if t.source:
        lines += [f"*Source:* {t.source}.", ""]
    if t.date_column:
        lines += [f"*Event date:* `{t.date_column}`.", ""]
    lines += [
        "| column | type | required | description | values / code system |",
        "|---|---|---|---|---|",
    ]
    for c in t.columns:
        values = []
        if c.allowed:
            values.append(", ".join(f"`{v}`" for v in c.allowed))
        if c.code_system:
            values.append(c.code_system)
        if c.pattern:
            values.append(f"pattern `{c.pattern}`")
        if c.minimum is not None or c.maximum is not None:
            values.append(
                f"range [{c.minimum if c.minimum is not None else ''}, {c.maximum if c.maximum is not None else ''}]"
            )
        flag = " **(identifier)**" if c.identifier else ""
        desc = c.description.replace("|", "\\|")
        vals = "; ".join(values).replace("|", "\\|")
        lines.append(
            f"| `{c.name}`{flag} | {c.dtype} | {'yes' if c.required else 'no'} | {desc} | {vals} |"
        )
    lines.append("")
    return lines


def data_dictionary_markdown() -> str:
    """Render the whole data dictionary as Markdown (the content of ``docs/data_dictionary.md``)."""
    lines = [
        "# kidresearch data dictionary",
        "",
        "Generated from `kidresearch/schema.py` by `kid docs`; do not edit by hand "
        "(a test fails when this file is out of date).",
        "",
        "## Research KID (pseudonymised; what approved proposals query)",
        "",
    ]
    for t in RESEARCH_TABLES.values():
        lines += _table_markdown(t)
    lines += [
        "## Raw feeds (identifiable; data managers only, never researchers)",
        "",
        "Each feed arrives as monthly extracts `raw/<feed>/<feed>_<YYYY-MM>.parquet`; reference "
        "tables as `raw/reference/<table>.parquet`.",
        "",
    ]
    for t in RAW_FEEDS.values():
        lines += _table_markdown(t)
    return "\n".join(lines)
