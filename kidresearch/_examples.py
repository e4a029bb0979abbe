"""A toy KID session over a few hand-written rows, for docstring examples and unit tests.

The recipes read research tables through ``kid.table(name)`` (and ``kid.to_pandas(expr)``);
:func:`toy_kid` gives an object with those methods over an in-memory DuckDB database holding
every table of :data:`kidresearch.schema.RESEARCH_TABLES`, with the given rows, so an example
shows a recipe on three people without a built KID. Tables not given are empty; columns not
given (or missing in a frame) take :data:`TOY_DEFAULTS` (or ``defaults``), else null.

Examples
--------
>>> kid = toy_kid({"persons": [{"person_id": 1, "birth_year": 1950}]})
>>> kid.to_pandas(kid.table("persons"))[["person_id", "sex", "practice_code"]]
  person_id sex practice_code
0          1   F        G80001
>>> kid.table("costs").count().execute()
0
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa

from kidresearch.schema import RESEARCH_TABLES

__all__ = [
    "TOY_DEFAULTS",
    "TOY_LSOA",
    "ToyKID",
    "toy_kid",
    "toy_panel_kid",
    "toy_person_costs",
    "toy_programme_kid",
]

#: Values taken by columns a toy row leaves out: one practice and LSOA, registered since 2000.
TOY_DEFAULTS: dict[str, object] = {
    "sex": "F",
    "birth_year": 1950,
    "birth_month": 1,
    "practice_code": "G80001",
    "lsoa_code": "E01000001",
    "registration_start": dt.date(2000, 1, 1),
    "extract_month": "2024-01",
}

#: The LSOA of :data:`TOY_DEFAULTS` (IMD quintile 2).
TOY_LSOA: dict[str, object] = {
    "lsoa_code": "E01000001",
    "district": "Dover",
    "imd_score": 40.0,
    "imd_decile": 3,
    "imd_quintile": 2,
    "latitude": 51.1,
    "longitude": 1.3,
}

Rows = Sequence[Mapping[str, Any]] | pd.DataFrame


def _check_rows(name: str, rows: Rows) -> Rows:
    if isinstance(rows, pd.DataFrame):
        return rows
    if isinstance(rows, (Mapping, str)):
        raise TypeError(
            f"The rows of toy table '{name}' must be a list of dicts or a DataFrame. "
            f"Got {type(rows).__name__} instead."
        )
    return [dict(r) for r in rows]


def _arrow(name: str, rows: Rows, fill: Mapping[str, object]) -> pa.Table:
    schema = RESEARCH_TABLES[name].arrow_schema()
    if not isinstance(rows, pd.DataFrame):
        full = [{c: r.get(c, fill.get(c)) for c in schema.names} for r in rows]
        return pa.Table.from_pylist(full, schema=schema)
    # A frame's missing values take the defaults too, as absent keys of a dict row do.
    tidy = pd.DataFrame(index=rows.index)
    for col in schema.names:
        default = fill.get(col)
        if col not in rows:
            tidy[col] = default
        elif default is None:
            tidy[col] = rows[col]
        else:
            tidy[col] = rows[col].where(rows[col].notna(), default)
    return pa.Table.from_pandas(tidy, schema=schema, preserve_index=False)


class ToyKID:
    """A KID-like session over hand-written rows in an in-memory DuckDB (see :func:`toy_kid`).

    Attributes
    ----------
    con
        The Ibis DuckDB connection holding the tables.
    """

    def __init__(
        self,
        rows: Mapping[str, Rows] | None = None,
        *,
        defaults: Mapping[str, object] | None = None,
    ) -> None:
        """Hold ``rows`` for the tables; each table is made in DuckDB on first use."""
        rows = dict(rows or {})
        unknown = sorted(set(rows) - set(RESEARCH_TABLES))
        if unknown:
            raise KeyError(
                f"Toy tables {unknown} are not research tables; expected names from "
                f"{list(RESEARCH_TABLES)}."
            )
        self._rows = {name: _check_rows(name, table_rows) for name, table_rows in rows.items()}
        self._fill = {**TOY_DEFAULTS, **(defaults or {})}
        self.con = ibis.duckdb.connect()

    def table(self, name: str) -> ir.Table:
        """The research table ``name`` as an Ibis table (made on first use).

        Parameters
        ----------
        name
            A table of :data:`kidresearch.schema.RESEARCH_TABLES`.

        Returns
        -------
        ibis.expr.types.Table

        Raises
        ------
        KeyError
            ``name`` is not a research table.

        Examples
        --------
        >>> toy_kid().table("persons").columns[:3]
        ('person_id', 'household_id', 'sex')
        """
        if name not in self.con.list_tables():
            if name not in RESEARCH_TABLES:
                raise KeyError(
                    f"'{name}' is not a research table; expected one of {list(RESEARCH_TABLES)}."
                )
            self.con.create_table(name, _arrow(name, self._rows.get(name, []), self._fill))
        return self.con.table(name)

    def to_pandas(self, expr: ir.Table | str) -> pd.DataFrame:
        """Execute an expression (or read a table by name) into a DataFrame.

        Parameters
        ----------
        expr
            An Ibis expression over this session's tables, or a table name.

        Returns
        -------
        pandas.DataFrame

        Examples
        --------
        >>> toy_kid({"persons": [{"person_id": 1}]}).to_pandas("persons").person_id.tolist()
        [1]
        """
        if isinstance(expr, str):
            expr = self.table(expr)
        return expr.to_pandas()

    def __repr__(self) -> str:
        return f"ToyKID(tables={len(RESEARCH_TABLES)})"


def toy_kid(
    rows: Mapping[str, Rows] | None = None,
    *,
    defaults: Mapping[str, object] | None = None,
) -> ToyKID:
    """A toy KID session holding ``rows`` (table name -> list of dicts or a DataFrame).

    Parameters
    ----------
    rows
        Rows of some research tables; every other table is empty.
    defaults
        Values for columns a row leaves out, on top of :data:`TOY_DEFAULTS`.

    Returns
    -------
    ToyKID

    Raises
    ------
    KeyError
        A table name is not a research table.
    TypeError
        A table's rows are neither a list of dicts nor a DataFrame.

    Examples
    --------
    >>> kid = toy_kid({"costs": [{"person_id": 1, "activity_date": dt.date(2024, 5, 1),
    ...                           "service_line": "ae", "cost_gbp": 148.0}]})
    >>> kid.table("costs").cost_gbp.sum().execute()
    148.0
    """
    return ToyKID(rows, defaults=defaults)


def toy_programme_kid() -> ToyKID:
    """Twelve people aged 70-79 in one LSOA, three enrolled in the integrated frailty team.

    Person ids are 0-11; women and men alternate (person 0 is a woman born in January 1954);
    persons 0, 1 and 2 enrol on 1 March 2024 and person 0 has an emergency admission on 2 May 2024 (cost GBP 3,000).
    For the examples of :mod:`kidresearch.cohorts`.

    Returns
    -------
    ToyKID

    Examples
    --------
    >>> kid = toy_programme_kid()
    >>> kid.table("programme_enrolments").count().execute()
    3
    """
    admitted = dt.date(2024, 5, 2)
    return toy_kid(
        {
            "persons": [
                {"person_id": i, "birth_year": 1954 - i % 10, "sex": "FM"[i % 2]} for i in range(12)
            ],
            "lsoas": [TOY_LSOA],
            "programme_enrolments": [
                {
                    "person_id": i,
                    "programme": "integrated_frailty_team",
                    "enrolment_date": dt.date(2024, 3, 1),
                    "provider": "KCHFT",
                }
                for i in range(3)
            ],
            "inpatient_spells": [
                {
                    "person_id": 0,
                    "provider_code": "RVV",
                    "admission_date": admitted,
                    "discharge_date": admitted + dt.timedelta(days=2),
                    "admission_method": "21",
                    "primary_diagnosis_icd10": "I21",
                    "los_days": 2,
                    "is_emergency": True,
                    "is_elective": False,
                }
            ],
            "costs": [
                {
                    "person_id": 0,
                    "activity_date": admitted,
                    "service_line": "acute_emergency",
                    "cost_gbp": 3000.0,
                }
            ],
        }
    )


def toy_person_costs(people: int = 200, *, seed: int = 1) -> Any:
    """A :class:`kidresearch.costs.PersonCosts` of simulated people, for the costs examples.

    Ages 50-89, two practices in two districts, IMD quintiles 1-5 in turn, eFI deficit counts
    0-14; GP costs for everyone and emergency admission costs for about one person in five,
    higher in more deprived quintiles. Costs for April 2024 to March 2025.

    Parameters
    ----------
    people
        How many people.
    seed
        Seed of the simulation.

    Returns
    -------
    kidresearch.costs.PersonCosts

    Examples
    --------
    >>> pc = toy_person_costs()
    >>> len(pc.frame), pc.start, pc.end
    (200, datetime.date(2024, 4, 1), datetime.date(2025, 3, 31))
    """
    from kidresearch.costs import SERVICE_LINES, PersonCosts

    rng = np.random.default_rng(seed)
    quintile = np.arange(people) % 5 + 1
    practice = np.where(np.arange(people) % 2 == 0, "G80001", "G80002")
    frame = pd.DataFrame(
        {
            "person_id": np.arange(people, dtype=np.int64),
            "sex": np.where(np.arange(people) % 3 == 0, "M", "F"),
            "age": rng.integers(50, 90, people),
            "practice_code": practice,
            "lsoa_code": [f"E0100000{q}" for q in quintile],
            "district": np.where(practice == "G80001", "Dover", "Thanet"),
            "imd_decile": 2 * quintile,
            "imd_quintile": quintile,
            "deficit_count": rng.integers(0, 15, people),
            "segment": "healthy",
        }
    )
    for line in SERVICE_LINES:
        frame[line] = 0.0
    frame["gp"] = rng.gamma(2.0, 60.0, people).round(2)
    admitted = rng.random(people) < 0.2
    frame["acute_emergency"] = np.where(
        admitted, rng.gamma(2.0, 1500.0 * (1 + 0.1 * (5 - quintile))), 0.0
    ).round(2)
    frame["cost_gbp"] = frame[list(SERVICE_LINES)].sum(axis=1)
    return PersonCosts(start=dt.date(2024, 4, 1), end=dt.date(2025, 3, 31), frame=frame)


def toy_panel_kid() -> ToyKID:
    """Forty people in four practices with GP costs in 2022-2024 rising by GBP 10 a year.

    Person ``i`` (born 1940 + i, practice ``G8000<i mod 4>``) costs 100 + 10 x (year -
    2022) + 5 x (i mod 4) + i pounds each year, so every practice's mean cost per person rises
    by exactly GBP 10 a year. For the examples of :func:`kidresearch.costs.panel`.

    Returns
    -------
    ToyKID

    Examples
    --------
    >>> kid = toy_panel_kid()
    >>> kid.table("costs").count().execute()
    120
    """
    years = (2022, 2023, 2024)
    return toy_kid(
        {
            "persons": [
                {"person_id": i, "birth_year": 1940 + i, "practice_code": f"G8000{i % 4}"}
                for i in range(40)
            ],
            "costs": [
                {
                    "person_id": i,
                    "activity_date": dt.date(year, 6, 1),
                    "service_line": "gp",
                    "cost_gbp": 100.0 + 10 * (year - 2022) + 5 * (i % 4) + i,
                }
                for i in range(40)
                for year in years
            ],
        }
    )
