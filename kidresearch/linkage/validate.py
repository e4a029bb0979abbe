"""Row validation rules of ``kid build``, generated from the data dictionary as DuckDB SQL.

Every rule is a :class:`Check`: a SQL condition that is true when a row fails, the field it
concerns and a reason in words. The build evaluates all checks in one ``CASE`` expression per
row, so a row is quarantined for the *first* failing check in this order:

0. NHS number missing, not 10 digits, failing the modulus 11 check, or (for feeds other than
   the register itself) not in the population register: the row is *unlinkable*. These come
   first so that the unlinkable count is exactly the rows that could not be linked, whatever
   else is wrong with them;
1. wrong type (a value that does not parse as the column's type, e.g. ``2024-13-01`` as a date);
2. missing required value;
3. ``extract_month`` different from the month in the file name;
4. end before start (discharge before admission, registration or package end before start),
   checked before the single-column rules because it is the root cause of e.g. a negative
   length of stay;
5. not an allowed value (categorical columns), not matching the pattern (codes), below the
   minimum or above the maximum (e.g. negative costs);
6. dates before 1900-01-01 or after the last day of the extract month (future dates);
7. unknown practice or LSOA code (not in the reference tables sent with the feeds).

Examples
--------
>>> from kidresearch.schema import RAW_FEEDS
>>> checks = feed_checks(RAW_FEEDS["inpatient_spells"], source_types={}, linked=True)
>>> "discharge_date before admission_date" in [c.reason for c in checks]
True
>>> duckdb_type("int8"), duckdb_type("date")
('TINYINT', 'DATE')
"""

from __future__ import annotations

from dataclasses import dataclass

from kidresearch.linkage.nhs import sql_nhs_valid
from kidresearch.schema import Column, Table

EARLIEST_DATE = "1900-01-01"
NOT_IN_REGISTER_REASON = "nhs_number not in the population register"

_DUCKDB_TYPES = {
    "string": "VARCHAR",
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "float64": "DOUBLE",
    "bool": "BOOLEAN",
    "date": "DATE",
}

# (end, start) pairs checked for order, per feed.
END_BEFORE_START: dict[str, tuple[tuple[str, str], ...]] = {
    "registrations": (("registration_end", "registration_start"),),
    "inpatient_spells": (("discharge_date", "admission_date"),),
    "social_care_packages": (("end_date", "start_date"),),
    "hospice_episodes": (("end_date", "start_date"),),
}
# Columns whose codes must exist in a reference table: column -> (reference table, its column).
REFERENCE_CODES: dict[str, tuple[str, str]] = {
    "practice_code": ("ref_practices", "practice_code"),
    "postcode_lsoa": ("ref_lsoas", "lsoa_code"),
    "lsoa_code": ("ref_lsoas", "lsoa_code"),
}


_INTEGER_TEXT = r"[+-]?[0-9]+"
_STRICT_TEXT = {
    "TINYINT": _INTEGER_TEXT,
    "SMALLINT": _INTEGER_TEXT,
    "INTEGER": _INTEGER_TEXT,
    "BIGINT": _INTEGER_TEXT,
    "DATE": r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    "DOUBLE": r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?",
    "BOOLEAN": r"(?i)(true|false)",
}


def duckdb_type(dtype: str) -> str:
    """The DuckDB type of a data-dictionary dtype."""
    return _DUCKDB_TYPES[dtype]


def quote(name: str) -> str:
    """Quote a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """Quote a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Check:
    """One validation rule: ``condition`` (SQL) is true when a row fails it.

    ``value`` is SQL for the offending value as text (kept in the identifiable quarantine only,
    never in reports).
    """

    field: str
    reason: str
    condition: str
    value: str
    guard: str = ""  # evaluated only for rows where this SQL is true (see problem_case)


def typed_expression(column: Column, source_type: str | None, *, trim: bool = True) -> str:
    """SQL turning the raw column into its dictionary type (NULL when it does not parse).

    ``source_type`` is the DuckDB type the raw column arrived as. Empty strings count as
    missing. Text is trimmed when ``trim`` (CSV extracts); typed Parquet strings are taken as
    sent (a padded code then fails its pattern check and is quarantined, not silently fixed),
    which also saves a string copy per value at Kent scale.
    """
    target = duckdb_type(column.dtype)
    name = quote(column.name)
    if source_type == target and target != "VARCHAR":
        return name
    if source_type in (None, "VARCHAR"):
        text = f"NULLIF(trim({name}), '')" if trim else f"NULLIF({name}, '')"
        if target == "VARCHAR":
            return text
        # Text is parsed strictly: DuckDB would otherwise round '12.5' into an integer and
        # accept dates such as '2026-1-5'.
        strict = _STRICT_TEXT.get(target)
        if strict:
            return (
                f"CASE WHEN regexp_full_match({text}, '{strict}') "
                f"THEN TRY_CAST({text} AS {target}) END"
            )
        return f"TRY_CAST({text} AS {target})"
    return f"TRY_CAST({name} AS {target})"


def _raw_present(column: Column, source_type: str | None) -> str:
    name = quote(column.name)
    if source_type in (None, "VARCHAR"):
        return f"NULLIF(trim({name}), '') IS NOT NULL"
    return f"{name} IS NOT NULL"


def feed_checks(
    table: Table,
    *,
    source_types: dict[str, str],
    linked: bool,
    nhs_integer: str | None = None,
) -> list[Check]:
    """The ordered checks for one raw feed.

    The SQL refers to the raw columns by name, typed columns as ``t_<name>``, the file's month
    as ``_month`` and its last day as ``_month_end``, the separator-free NHS number as
    ``_nhs`` and, when ``linked``, the register match as ``_person_id``.

    Parameters
    ----------
    table
        The raw feed's declaration in :mod:`kidresearch.schema`.
    source_types
        DuckDB type of each raw column as it arrived (missing: treated as text).
    linked
        Whether rows must match the population register (every feed but ``registrations``).
        Rows that matched the register (``_person_id`` set) have a valid NHS number, so the
        NHS checks run only on the few that did not.
    nhs_integer
        SQL of the normalised NHS number as BIGINT, when the query has it as a column.
    """
    cols = [c for c in table.columns if c.name != "nhs_number"]
    nhs_raw = "CAST(nhs_number AS VARCHAR)"
    guard = "_person_id IS NULL" if linked else ""
    checks: list[Check] = [
        Check("nhs_number", "nhs_number missing", "NULLIF(_nhs, '') IS NULL", "NULL", guard),
        Check(
            "nhs_number",
            "nhs_number not 10 digits",
            "NOT regexp_full_match(_nhs, '[0-9]{10}')",
            nhs_raw,
            guard,
        ),
        Check(
            "nhs_number",
            "nhs_number fails the modulus 11 check",
            f"NOT {sql_nhs_valid('_nhs', as_integer=nhs_integer)}",
            nhs_raw,
            guard,
        ),
    ]
    if linked:
        checks.append(
            Check(
                "nhs_number",
                NOT_IN_REGISTER_REASON,
                "TRUE",
                nhs_raw,
                guard,
            )
        )

    def typed(c: Column) -> str:
        return f"t_{c.name}"

    def value(c: Column) -> str:
        return f"CAST({quote(c.name)} AS VARCHAR)"

    for c in cols:
        src = source_types.get(c.name)
        if duckdb_type(c.dtype) == "VARCHAR" or src == duckdb_type(c.dtype):
            continue
        checks.append(
            Check(
                c.name,
                f"{c.name} is not a valid {c.dtype}",
                f"({_raw_present(c, src)} AND {typed(c)} IS NULL)",
                value(c),
            )
        )
    for c in cols:
        if c.required:
            checks.append(
                Check(c.name, f"{c.name} is missing (required)", f"{typed(c)} IS NULL", "NULL")
            )
    checks.append(
        Check(
            "extract_month",
            "extract_month differs from the month in the file name",
            "t_extract_month IS DISTINCT FROM _month",
            value(table.column("extract_month")),
        )
    )
    for end, start in END_BEFORE_START.get(table.name, ()):
        checks.append(
            Check(
                end,
                f"{end} before {start}",
                f"t_{end} < t_{start}",
                f"CAST(t_{end} AS VARCHAR) || ' < ' || CAST(t_{start} AS VARCHAR)",
            )
        )
    for c in cols:
        t = typed(c)
        if c.allowed:
            options = ", ".join(literal(v) for v in c.allowed)
            checks.append(
                Check(c.name, f"{c.name} is not an allowed value", f"{t} NOT IN ({options})", t)
            )
        if c.pattern and c.name != "extract_month":
            checks.append(
                Check(
                    c.name,
                    f"{c.name} does not match the pattern {c.pattern}",
                    f"NOT regexp_full_match({t}, {literal(c.pattern.strip('^$'))})",
                    t,
                )
            )
        if c.minimum is not None:
            checks.append(
                Check(
                    c.name,
                    f"{c.name} is below the minimum {c.minimum:g}",
                    f"{t} < {c.minimum!r}",
                    f"CAST({t} AS VARCHAR)",
                )
            )
        if c.maximum is not None:
            checks.append(
                Check(
                    c.name,
                    f"{c.name} is above the maximum {c.maximum:g}",
                    f"{t} > {c.maximum!r}",
                    f"CAST({t} AS VARCHAR)",
                )
            )
        if c.dtype == "date":
            checks.append(
                Check(
                    c.name,
                    f"{c.name} is before {EARLIEST_DATE}",
                    f"{t} < DATE '{EARLIEST_DATE}'",
                    f"CAST({t} AS VARCHAR)",
                )
            )
            checks.append(
                Check(
                    c.name,
                    f"{c.name} is in the future (after the end of the extract month)",
                    f"{t} > _month_end",
                    f"CAST({t} AS VARCHAR)",
                )
            )
    for c in cols:
        if c.name in REFERENCE_CODES:
            ref, ref_col = REFERENCE_CODES[c.name]
            checks.append(
                Check(
                    c.name,
                    f"{c.name} is not a known code (not in the {ref.removeprefix('ref_')} reference)",
                    f"{typed(c)} NOT IN (SELECT {quote(ref_col)} FROM {ref})",
                    typed(c),
                )
            )
    return checks


def problem_case(checks: list[Check]) -> str:
    """SQL ``CASE`` giving the index of the first failing check (NULL when the row passes).

    Consecutive checks with the same ``guard`` are nested under ``WHEN guard THEN CASE ...``,
    so DuckDB evaluates them only for the rows the guard selects (e.g. the NHS number checks
    only for the 1-2% of rows that did not match the register).
    """
    lines: list[str] = []
    i = 0
    while i < len(checks):
        guard = checks[i].guard
        if not guard:
            lines.append(f"    WHEN {checks[i].condition} THEN {i}")
            i += 1
            continue
        inner = []
        while i < len(checks) and checks[i].guard == guard:
            inner.append(f"WHEN {checks[i].condition} THEN {i}")
            i += 1
        lines.append(f"    WHEN {guard} THEN CASE {' '.join(inner)} END")
    whens = "\n".join(lines)
    return f"CASE\n{whens}\nEND"


def value_case(checks: list[Check], problem: str = "_problem") -> str:
    """SQL ``CASE`` giving the offending value of the first failing check, as text."""
    whens = "\n".join(
        f"    WHEN {i} THEN {c.value}" for i, c in enumerate(checks) if c.value != "NULL"
    )
    if not whens:
        return "CAST(NULL AS VARCHAR)"
    return (
        f"CASE WHEN {problem} IS NULL THEN NULL ELSE "
        f"CAST(CASE {problem}\n{whens}\nEND AS VARCHAR) END"
    )
