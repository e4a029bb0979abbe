"""Who is in the population on a date, and their attributes then: the rules in one place.

A person counts on a date ``at`` when registered with a Kent practice on it (``persons`` holds
the earliest registration start and the latest end, so ``registration_start <= at <=
registration_end``, or the registration is still open) and not dead on or before it. Age is in
whole years from birth year and month, the birthday taken as the 1st of the birth month (the
KID holds no day of birth). Area attributes (district, IMD) come from the person's LSOA in the
``lsoas`` table.

The recipes (costs, segments, cohorts) build their populations from these helpers, so that
"alive and registered on" and "age on" mean the same thing everywhere.

Examples
--------
>>> from kidresearch._examples import toy_kid
>>> kid = toy_kid({"persons": [
...     {"person_id": 1, "birth_year": 1950, "birth_month": 6},
...     {"person_id": 2, "birth_year": 1990, "date_of_death": dt.date(2023, 5, 1)}]})
>>> people_on(kid, dt.date(2024, 5, 31)).to_pandas()[["person_id", "age"]]
   person_id  age
0          1   73
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import ibis
import ibis.expr.types as ir

log = logging.getLogger(__name__)

__all__ = [
    "AREA_COLUMNS",
    "PERSON_COLUMNS",
    "age_on",
    "alive_and_registered",
    "people_on",
    "with_area",
]

#: Person attributes :func:`people_on` gives by default (``age`` is computed on the date).
PERSON_COLUMNS: tuple[str, ...] = ("person_id", "sex", "age", "practice_code", "lsoa_code")
#: Attributes of the person's LSOA that :func:`with_area` can add.
AREA_COLUMNS: tuple[str, ...] = ("district", "imd_score", "imd_decile", "imd_quintile")

DateOrColumn = dt.date | ir.DateValue


def _as_value(at: DateOrColumn) -> ir.DateValue:
    return ibis.literal(at) if isinstance(at, dt.date) else at


def _month_index(at: DateOrColumn) -> int | ir.IntegerValue:
    if isinstance(at, dt.date):
        return at.year * 12 + at.month - 1
    return at.year().cast("int32") * 12 + at.month().cast("int32") - 1


def age_on(persons: ir.Table, at: DateOrColumn) -> ir.IntegerValue:
    """Age in whole years on ``at`` from birth year and month (birthday taken as the 1st).

    Parameters
    ----------
    persons
        The ``persons`` table (or any table with ``birth_year`` and ``birth_month``).
    at
        A date, or a date column of ``persons`` (each row's own date).

    Returns
    -------
    ibis.expr.types.IntegerValue
        Completed years; a person born in June is a year older from 1 June.

    Examples
    --------
    >>> t = ibis.memtable({"birth_year": [1950, 1950], "birth_month": [6, 7]})
    >>> t.select(age=age_on(t, dt.date(2024, 6, 30))).to_pandas().age.tolist()
    [74, 73]
    """
    born = persons.birth_year.cast("int32") * 12 + persons.birth_month.cast("int32") - 1
    return ((_month_index(at) - born) // 12).cast("int32")


def alive_and_registered(persons: ir.Table, at: DateOrColumn) -> ir.BooleanValue:
    """Registered on ``at`` (start <= at <= end, or still open) and not dead on or before it.

    ``persons`` holds the earliest start and the latest end of a person's registrations in
    Kent, so a gap between two registrations counts as registered. Someone whose registration
    ends on ``at`` is registered on ``at``; someone who died on ``at`` is not alive on it.

    Parameters
    ----------
    persons
        The ``persons`` table (``registration_start``, ``registration_end``,
        ``date_of_death``), possibly joined to other columns.
    at
        A date, or a date column (each row's own date, e.g. an index date).

    Returns
    -------
    ibis.expr.types.BooleanValue

    Examples
    --------
    >>> t = ibis.memtable({
    ...     "registration_start": [dt.date(2000, 1, 1)] * 3,
    ...     "registration_end": [None, dt.date(2024, 6, 30), dt.date(2024, 6, 29)],
    ...     "date_of_death": [dt.date(2024, 6, 30), None, None]})
    >>> t.select(ok=alive_and_registered(t, dt.date(2024, 6, 30))).to_pandas().ok.tolist()
    [False, True, False]
    """
    value = _as_value(at)
    return (
        (persons.registration_start <= value)
        & (persons.registration_end.isnull() | (persons.registration_end >= value))
        & (persons.date_of_death.isnull() | (persons.date_of_death > value))
    )


def people_on(
    kid: Any,
    at: dt.date,
    *,
    columns: Sequence[str] = PERSON_COLUMNS,
) -> ir.Table:
    """Everyone alive and registered on ``at``, one row each, with their attributes then.

    Parameters
    ----------
    kid
        A KID session or anything with ``.table("persons")`` returning an Ibis table.
    at
        The date.
    columns
        ``persons`` columns to keep, plus ``"age"`` (whole years on ``at``, :func:`age_on`).

    Returns
    -------
    ibis.expr.types.Table
        Not executed; the columns in the order given.

    Examples
    --------
    >>> from kidresearch._examples import toy_kid
    >>> kid = toy_kid({"persons": [{"person_id": 1, "birth_year": 2000}]})
    >>> people_on(kid, dt.date(2024, 1, 1), columns=("person_id", "age")).to_pandas()
       person_id  age
    0          1   24
    """
    persons = kid.table("persons")
    people = persons.filter(alive_and_registered(persons, at))
    derived = {"age": age_on(people, at)} if "age" in columns else {}
    return people.select(
        *[people[c] if c != "age" else derived["age"].name("age") for c in columns]
    )


def with_area(
    kid: Any,
    people: ir.Table,
    columns: Sequence[str] = AREA_COLUMNS,
) -> ir.Table:
    """Add attributes of each person's LSOA (``lsoas`` table), keeping every person.

    A left join on ``lsoa_code``: people whose LSOA is not in ``lsoas`` keep their row with
    nulls in the added columns (callers that need the attribute say so in their error).

    Parameters
    ----------
    kid
        A KID session or anything with ``.table("lsoas")``.
    people
        A table with ``lsoa_code`` (e.g. from :func:`people_on`).
    columns
        Columns of ``lsoas`` to add (:data:`AREA_COLUMNS` or others such as ``latitude``).

    Returns
    -------
    ibis.expr.types.Table
        ``people``'s columns, then ``columns``.

    Examples
    --------
    >>> from kidresearch._examples import toy_kid
    >>> kid = toy_kid({"persons": [{"person_id": 1, "lsoa_code": "E01000001"},
    ...                            {"person_id": 2, "lsoa_code": "E01999999"}],
    ...                "lsoas": [{"lsoa_code": "E01000001", "district": "Dover", "imd_score": 40.0,
    ...                           "imd_decile": 3, "imd_quintile": 2, "latitude": 51.1,
    ...                           "longitude": 1.3}]})
    >>> out = with_area(kid, people_on(kid, dt.date(2024, 1, 1)), ["district", "imd_quintile"])
    >>> out.to_pandas().sort_values("person_id")[["person_id", "district", "imd_quintile"]]
       person_id district  imd_quintile
    0          1    Dover           2.0
    1          2      NaN           NaN
    """
    lsoas = kid.table("lsoas").select("lsoa_code", *columns)
    return people.left_join(lsoas, "lsoa_code").drop("lsoa_code_right")
