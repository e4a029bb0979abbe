"""The ``costs`` research table: activity x the unit costs in ``kidresearch/data/unit_costs.csv``.

Costing rules, as documented in ``unit_costs.csv`` (its ``unit`` column) by the data owners:

* ``acute_emergency`` / ``spell``: every inpatient spell with an emergency admission method
  (21-25, 2A-2D, 28); plus ``excess_bed_day`` for each day of ``los_days`` beyond the trim
  point of 5 days (one extra row per spell that has any).
* ``acute_elective`` / ``spell``: inpatient spells with admission method 11-13. Maternity
  (31-32) and other (81-83) spells carry no unit cost in the file and are not costed.
* ``ae`` / ``attendance``: every A&E attendance.
* ``outpatient`` / ``attended_appointment``: appointments with attendance status 5 or 6 (did
  not attend and cancelled appointments cost nothing and get no row).
* ``gp`` / ``consultation``: ``gp_events`` rows whose SNOMED code is in
  ``gp_consultation_codes.csv``.
* ``prescribing``: the prescription's own ``cost_gbp``.
* ``community``, ``mental_health``, ``out_of_hours``: per contact, priced by service, team type
  and contact type.
* ``social_care`` / ``package_week``: per calendar month a package is open, weekly cost x days
  open in that month / 7; ``activity_date`` is the first day of the month. Open packages are
  costed up to the last day of the version's month.
* ``hospice``: per day of the episode, priced by setting, split by month like social care.

Prices are at each row's price year in the file (2016/17 for hospital activity, 2022/23 for the
rest); the table does not inflate them.

Examples
--------
>>> float(unit_cost_lookup().loc[("ae", "attendance")])
148.0
"""

from __future__ import annotations

import hashlib
from datetime import date

import duckdb
import pandas as pd

from kidresearch import data
from kidresearch.errors import BuildError
from kidresearch.schema import ADMISSION_METHODS_ELECTIVE, ADMISSION_METHODS_EMERGENCY

EXCESS_BED_DAY_TRIM_DAYS = 5  # unit_costs.csv: "bed day beyond the trim point of 5 days"
_NEEDED = (
    ("acute_emergency", "spell"),
    ("acute_emergency", "excess_bed_day"),
    ("acute_elective", "spell"),
    ("ae", "attendance"),
    ("outpatient", "attended_appointment"),
    ("gp", "consultation"),
)


def unit_cost_lookup() -> pd.Series:
    """Unit cost (GBP) indexed by (service_line, activity), rows with a cost only."""
    frame = data.load("unit_costs", dtype={"service_line": str, "activity": str})
    costs = pd.to_numeric(frame["unit_cost_gbp"], errors="coerce")
    frame = frame.assign(unit_cost_gbp=costs)
    bad = frame["unit_cost_gbp"].lt(0)
    if bad.any():
        row = int(bad.idxmax()) + 2
        raise BuildError(f"kidresearch/data/unit_costs.csv row {row}: negative unit_cost_gbp.")
    lookup = frame.dropna(subset=["unit_cost_gbp"]).set_index(["service_line", "activity"])
    for key in _NEEDED:
        if key not in lookup.index:
            raise BuildError(
                f"kidresearch/data/unit_costs.csv: no unit_cost_gbp for service_line "
                f"'{key[0]}', activity '{key[1]}'; the costs table needs it."
            )
    return lookup["unit_cost_gbp"].astype("float64")


def unit_costs_hash() -> str:
    """sha256 of the reference files the costs depend on (part of a version's content hash)."""
    digest = hashlib.sha256()
    for name in ("unit_costs", "gp_consultation_codes"):
        digest.update(data.load(name).to_csv(index=False).encode())
    return digest.hexdigest()


def register_reference(con: duckdb.DuckDBPyConnection) -> None:
    """Load the unit costs and the GP consultation code list into DuckDB tables."""
    lookup = unit_cost_lookup().reset_index()
    codes = data.load("gp_consultation_codes", dtype={"snomed_code": str})[["snomed_code"]]
    con.register("unit_costs_df", lookup)
    con.execute("CREATE OR REPLACE TABLE unit_costs AS SELECT * FROM unit_costs_df")
    con.unregister("unit_costs_df")
    con.register("gp_codes_df", codes)
    con.execute("CREATE OR REPLACE TABLE gp_consultation_codes AS SELECT * FROM gp_codes_df")
    con.unregister("gp_codes_df")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _price(line: str, activity: str) -> str:
    return (
        f"(SELECT unit_cost_gbp FROM unit_costs WHERE service_line = '{line}' "
        f"AND activity = '{activity}')"
    )


_COLUMNS = "person_id, activity_date, service_line, cost_gbp"


def _monthly(source: str, line: str, rate: str, per_day: str, end: str) -> str:
    """Split [start_date, end_date or the version's end] into calendar months, cost each."""
    return f"""
      SELECT person_id, CAST(m AS DATE) AS activity_date, '{line}' AS service_line,
        {rate} * (date_diff('day', greatest(start_date, CAST(m AS DATE)),
                  least(coalesce(end_date, {end}), CAST(last_day(m) AS DATE))) + 1){per_day}
          AS cost_gbp
      FROM (
        SELECT *, unnest(generate_series(date_trunc('month', start_date),
                  date_trunc('month', least(coalesce(end_date, {end}), {end})),
                  INTERVAL 1 MONTH)) AS m
        FROM {source} WHERE start_date <= {end}
      )
    """


def costs_selects(feed: str, source: str, version_end: date) -> list[str]:
    """SQL SELECTs (person_id, activity_date, service_line, cost_gbp) costing one feed.

    ``source`` is a SQL relation of the feed's published rows (research columns); the tables
    ``unit_costs`` and ``gp_consultation_codes`` must be registered
    (:func:`register_reference`). Feeds without a cost (programme enrolments) give ``[]``.

    Examples
    --------
    >>> costs_selects("programme_enrolments", "t", date(2026, 10, 31))
    []
    >>> len(costs_selects("inpatient_spells", "t", date(2026, 10, 31)))
    3
    """
    end = f"DATE '{version_end.isoformat()}'"
    trim = EXCESS_BED_DAY_TRIM_DAYS
    emergency, elective = _in(ADMISSION_METHODS_EMERGENCY), _in(ADMISSION_METHODS_ELECTIVE)

    def by_type(line: str, column: str, date_column: str) -> str:
        return f"""SELECT s.person_id, s.{date_column} AS activity_date, '{line}' AS service_line,
                   u.unit_cost_gbp AS cost_gbp
            FROM {source} s JOIN unit_costs u
              ON u.service_line = '{line}' AND u.activity = s.{column}"""

    selects = {
        "inpatient_spells": [
            f"""SELECT person_id, admission_date, 'acute_emergency',
                  {_price("acute_emergency", "spell")}
                FROM {source} WHERE admission_method IN ({emergency})""",
            f"""SELECT person_id, admission_date, 'acute_emergency',
                  (los_days - {trim}) * {_price("acute_emergency", "excess_bed_day")}
                FROM {source} WHERE admission_method IN ({emergency}) AND los_days > {trim}""",
            f"""SELECT person_id, admission_date, 'acute_elective',
                  {_price("acute_elective", "spell")}
                FROM {source} WHERE admission_method IN ({elective})""",
        ],
        "ae_attendances": [
            f"SELECT person_id, arrival_date, 'ae', {_price('ae', 'attendance')} FROM {source}"
        ],
        "outpatient_appointments": [
            f"""SELECT person_id, appointment_date, 'outpatient',
                  {_price("outpatient", "attended_appointment")}
                FROM {source} WHERE attendance_status IN ('5', '6')"""
        ],
        "gp_events": [
            f"""SELECT person_id, event_date, 'gp', {_price("gp", "consultation")}
                FROM {source}
                WHERE snomed_code IN (SELECT snomed_code FROM gp_consultation_codes)"""
        ],
        "prescriptions": [f"SELECT person_id, issue_date, 'prescribing', cost_gbp FROM {source}"],
        "community_contacts": [by_type("community", "service", "contact_date")],
        "mental_health_contacts": [by_type("mental_health", "team_type", "contact_date")],
        "out_of_hours_contacts": [by_type("out_of_hours", "contact_type", "contact_date")],
        "social_care_packages": [_monthly(source, "social_care", "weekly_cost_gbp", " / 7.0", end)],
        "hospice_episodes": [
            _monthly(
                f"""(SELECT h.*, u.unit_cost_gbp FROM {source} h JOIN unit_costs u
                     ON u.service_line = 'hospice' AND u.activity = h.setting)""",
                "hospice",
                "unit_cost_gbp",
                "",
                end,
            )
        ],
    }.get(feed, [])
    return [f"SELECT * FROM ({q}) AS t({_COLUMNS})" for q in selects]
