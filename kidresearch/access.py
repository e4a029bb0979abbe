"""Research access: approved proposals, :func:`connect`, the :class:`KID` session and refusals.

A researcher sees the KID only through an approved proposal (``proposals/<id>.yaml``): the tables
and columns it lists, the people in its population (age at study start, sex, districts,
practices) and the events in its study period. :func:`connect` opens one KID version for one
proposal and returns a :class:`KID` session of *restricted views*: Ibis tables on DuckDB (the
default) or on Spark (``backend="spark"``), built from the same Ibis expressions so an analysis
runs unchanged on either engine.

Every ``person_id`` and ``household_id`` a session exposes is re-keyed for the proposal to a
BIGINT: the first 15 hex characters (60 bits) of ``sha256(proposal_key || id)`` read as an
integer, with ``proposal_key = HMAC-SHA256(secret, proposal id)`` (hex), ``id`` the KID's own
BIGINT id written in decimal, and ``secret`` in ``<KID>/restricted/proposal_secret``. The same
function on every table keeps joins working (on integers, which is what makes Kent-scale joins
and group-bys fast), DuckDB and Spark give identical ids, and two proposals never share ids.
The pseudonyms are checked for uniqueness when a session's population is materialised.

Anything beyond the proposal is refused with :class:`~kidresearch.errors.AccessRefused` (or
:class:`~kidresearch.errors.ProposalError` for an invalid, expired or not-yet-valid proposal) and
written to the audit log (:mod:`kidresearch.audit`), as are every connect, table access, query
and fetched result (with its row count).
``kid.sql`` accepts one SELECT (CTEs and set operations allowed) in DuckDB's SQL dialect over the
session's tables only; DuckDB sessions also switch off file access outside the KID version's
tables folder and lock the configuration, so a query that slipped past the parser still cannot
reach the raw feeds, the quarantine or the keys.

Examples
--------
>>> p = Proposal.model_validate({
...     "id": "frailty-65", "title": "Frailty in older people", "lead_researcher": "A. Smith",
...     "organisation": "University of Kent", "purpose": "Describe frailty.",
...     "approved": "2026-01-01", "expires": "2027-12-31",
...     "tables": {"persons": ["person_id", "sex"], "gp_events": "all"},
...     "population": {"min_age": 65}, "study_period": {"start": "2024-04-01", "end": "2026-03-31"},
... })
>>> p.approved_columns("persons")
['person_id', 'sex']
>>> p.approved_columns("gp_events")[:3]
['person_id', 'practice_code', 'event_date']
>>> check_sql("SELECT * FROM read_parquet('restricted/quarantine.parquet')", p)
Traceback (most recent call last):
...
kidresearch.errors.AccessRefused: function 'read_parquet' is not allowed in kid.sql: ...
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import ibis
import pandas as pd
import sqlglot
import yaml
from ibis.expr.types import Table as IbisTable
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlglot import exp

from kidresearch.audit import AuditLog, current_user
from kidresearch.config import proposal_dirs, resolve_data
from kidresearch.errors import AccessRefused, BuildError, ProposalError
from kidresearch.schema import KENT_DISTRICTS, PRACTICE_PATTERN, RESEARCH_TABLES, Table

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

__all__ = [
    "KID",
    "Population",
    "Proposal",
    "RestrictedTable",
    "StudyPeriod",
    "check_sql",
    "connect",
    "fingerprint",
    "load_proposal",
    "proposal_key",
    "rekey",
    "spark_session",
]

#: Hex characters kept of the re-keyed SHA-256, read as a BIGINT (60 bits, so always positive:
#: a collision among n = 2 million people has probability about n^2 / 2^61, below 2e-6, and
#: :class:`KID` refuses a population whose pseudonyms collide).
PSEUDONYM_HEX = 15
#: Hex characters of a household pseudonym (52 bits). ``household_id`` is often missing, and a
#: nullable integer column reaches pandas as float64, which holds integers exactly only up to
#: 2^53; 52 bits keep every household id exact there (collision probability for n = 800,000
#: households about n^2 / 2^53, below 1e-4, and checked like person ids).
HOUSEHOLD_PSEUDONYM_HEX = 13
#: Tables without a person and date: shared reference data, never filtered or re-keyed.
REFERENCE = ("practices", "lsoas")
SECRET_NAME = "proposal_secret"
#: Folder under ``<KID>/restricted/`` caching each proposal's re-keyed population per version.
SESSION_CACHE_DIR = "sessions"
_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,63}$"


# ------------------------------------------------------------------------------- proposals
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Population(_Strict):
    """Who a proposal covers. Every condition given must hold; ``None`` means no condition.

    Age is in completed years at the study start, from ``birth_year`` and ``birth_month`` taking
    the birthday as the first of the birth month (the KID keeps no day of birth), so someone born
    in the study start's month has had that year's birthday.
    """

    min_age: int | None = Field(None, ge=0, le=120)
    max_age: int | None = Field(None, ge=0, le=120)
    sex: tuple[Literal["F", "M"], ...] | None = None
    districts: tuple[str, ...] | None = None
    practices: tuple[str, ...] | None = None
    registered_during_study_period: bool = Field(
        True,
        description="Only people registered in Kent at some time during the study period "
        "(registration start on or before its end; registration end and death, if any, on or "
        "after its start).",
    )

    @field_validator("districts")
    @classmethod
    def _known_districts(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            unknown = [d for d in value if d not in KENT_DISTRICTS]
            if unknown:
                raise ValueError(
                    f"unknown district(s) {', '.join(map(repr, unknown))}; allowed: "
                    + ", ".join(KENT_DISTRICTS)
                )
        return value

    @field_validator("practices")
    @classmethod
    def _practice_codes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            bad = [p for p in value if not re.fullmatch(PRACTICE_PATTERN, p)]
            if bad:
                raise ValueError(
                    f"practice code(s) {', '.join(map(repr, bad))} do not match {PRACTICE_PATTERN}"
                )
        return value

    @model_validator(mode="after")
    def _age_order(self) -> Population:
        if self.min_age is not None and self.max_age is not None and self.min_age > self.max_age:
            raise ValueError(f"min_age {self.min_age} is above max_age {self.max_age}")
        return self


class StudyPeriod(_Strict):
    """The study period: events from ``lookback_start`` (default ``start``) to ``end``, inclusive.

    ``start`` is the date the population is defined on (age, registration). ``lookback_start``
    approves history before it for baseline covariates, e.g. deficits ever coded for the eFI or
    the 24 months of prior use a risk model needs; without it, events before ``start`` are not
    visible.
    """

    start: date
    end: date
    lookback_start: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> StudyPeriod:
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        if self.lookback_start is not None and self.lookback_start > self.start:
            raise ValueError(f"lookback_start {self.lookback_start} is after start {self.start}")
        return self

    @property
    def first_event_date(self) -> date:
        """The earliest event date a session shows."""
        return self.lookback_start or self.start


class _OutputPolicy(BaseModel):
    """Type checks of the disclosure settings (the sdc module owns their meaning)."""

    model_config = ConfigDict(extra="allow")
    threshold: int | None = Field(None, ge=1)
    rounding: bool | int | None = None
    dominance_n: int | None = Field(None, ge=1)
    dominance_k: float | None = Field(None, gt=0, le=1)
    p_ratio: float | None = Field(None, ge=0, lt=1)
    min_dof: int | None = Field(None, ge=0)
    preset: str | None = None


class Proposal(_Strict):
    """An approved research proposal, as read from ``proposals/<id>.yaml``.

    ``tables`` maps each approved research table to its approved columns, or to ``"all"``.
    ``output_policy`` stays a plain mapping (``threshold``, ``rounding``, ``dominance_n``,
    ``dominance_k``, ``p_ratio``, ``min_dof``, ``preset``) for ``kidresearch.sdc`` to read.
    """

    id: str = Field(pattern=_ID_PATTERN)
    title: str = Field(min_length=1)
    lead_researcher: str = Field(min_length=1)
    organisation: str = Field(min_length=1)
    purpose: str = Field(min_length=1)
    approved: date
    expires: date
    kid_version: str = Field("latest", pattern=r"^(latest|[0-9A-Za-z][0-9A-Za-z._-]*)$")
    tables: dict[str, Literal["all"] | tuple[str, ...]]
    population: Population = Population()
    study_period: StudyPeriod
    notebooks: tuple[str, ...] = ()
    output_policy: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(None, exclude=True, description="File the proposal came from.")

    @field_validator("tables")
    @classmethod
    def _tables_known(
        cls, value: dict[str, Literal["all"] | tuple[str, ...]]
    ) -> dict[str, Literal["all"] | tuple[str, ...]]:
        if not value:
            raise ValueError("at least one table must be approved")
        problems = []
        for name, columns in value.items():
            if name not in RESEARCH_TABLES:
                problems.append(
                    f"{name}: unknown table; research tables: " + ", ".join(RESEARCH_TABLES)
                )
                continue
            if columns == "all":
                continue
            allowed = RESEARCH_TABLES[name].column_names
            unknown = [c for c in columns if c not in allowed]
            if unknown:
                problems.append(
                    f"{name}: unknown column {', '.join(map(repr, unknown))}; allowed: "
                    + ", ".join(allowed)
                )
            if not columns:
                problems.append(f"{name}: empty column list (use 'all' or name the columns)")
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @field_validator("notebooks")
    @classmethod
    def _notebook_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(n if n.endswith(".ipynb") else f"{n}.ipynb" for n in value)
        bad = [n for n in names if not re.fullmatch(r"[\w.-]+\.ipynb", n)]
        if bad:
            raise ValueError(
                f"notebook name(s) {', '.join(map(repr, bad))} must be file names under "
                "notebooks/, e.g. '02_frailty.ipynb'"
            )
        return names

    @field_validator("output_policy")
    @classmethod
    def _policy_types(cls, value: dict[str, Any]) -> dict[str, Any]:
        _OutputPolicy.model_validate(value)
        return dict(value)

    @model_validator(mode="after")
    def _dates(self) -> Proposal:
        if self.expires < self.approved:
            raise ValueError(f"expires {self.expires} is before approved {self.approved}")
        return self

    def approved_columns(self, table: str) -> list[str]:
        """The approved columns of ``table`` in data-dictionary order.

        Raises
        ------
        AccessRefused
            If the table is not approved.
        """
        if table not in self.tables:
            raise AccessRefused(self._not_approved_message(table))
        columns = self.tables[table]
        names = RESEARCH_TABLES[table].column_names
        return names if columns == "all" else [c for c in names if c in columns]

    def _not_approved_message(self, table: str) -> str:
        kind = "" if table in RESEARCH_TABLES else " (not a research table of the KID)"
        return (
            f"table '{table}'{kind} is not approved for proposal {self.id}; approved tables: "
            + ", ".join(self.tables)
        )

    def check_dates(self, today: date | None = None) -> None:
        """Raise :class:`ProposalError` unless ``today`` is within [approved, expires]."""
        today = today or date.today()
        where = self.source or self.id
        if today < self.approved:
            raise ProposalError(
                f"{where}: proposal {self.id} is not valid until {self.approved} (today {today})"
            )
        if today > self.expires:
            raise ProposalError(
                f"{where}: proposal {self.id} expired on {self.expires} (today {today}); ask the "
                "data governance team for an extension"
            )


def _format_validation(where: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after", "literal['all']"))
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif loc.startswith("tables.") and err["type"] in ("literal_error", "tuple_type"):
            msg = "expected a list of column names or 'all'"
        if loc == "tables" and ": " in msg:
            # one message per table: "tables.<table>: unknown column ..."
            for part in msg.split("\n"):
                table, _, detail = part.partition(": ")
                lines.append(f"{where}: tables.{table}: {detail}")
            continue
        lines.append(f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}")
    return "\n".join(dict.fromkeys(lines))


def load_proposal(proposal: str | os.PathLike[str] | Proposal) -> Proposal:
    """Read and validate a proposal given as an id, a YAML path or a :class:`Proposal`.

    An id is looked up as ``<id>.yaml`` in ``$KID_PROPOSALS``, the ``proposals`` folder of the
    config file, or ``./proposals`` (see :mod:`kidresearch.config`).

    Raises
    ------
    ProposalError
        If the file is missing or unreadable, or a field is invalid; the message names the file
        and each bad field.
    """
    if isinstance(proposal, Proposal):
        return proposal
    text = str(proposal)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        candidates = [d / f"{text}.yaml" for d in proposal_dirs()]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise ProposalError(
                f"no proposal '{text}': looked for "
                + ", ".join(str(c) for c in candidates)
                + " (set KID_PROPOSALS to the proposals folder, or pass the YAML path)"
            )
        path = found[0]
    if not path.is_file():
        raise ProposalError(f"{path}: proposal file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProposalError(f"{path}: not readable YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ProposalError(f"{path}: expected a mapping of proposal fields, got {type(raw)}")
    try:
        return Proposal.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        raise ProposalError(_format_validation(str(path), exc)) from None


# ------------------------------------------------------------------------------- keys
def _secret(kid_dir: Path) -> bytes:
    """The build's proposal secret; created (random, mode 0600) when the KID has none."""
    path = kid_dir / "restricted" / SECRET_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another session created it first
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
            log.info("created proposal secret %s", path)
    value = path.read_bytes().strip()
    if len(value) < 16:
        raise AccessRefused(f"{path}: the proposal secret is too short ({len(value)} bytes)")
    return value


def proposal_key(secret: bytes, proposal_id: str) -> str:
    """HMAC-SHA256 of the proposal id under the KID's proposal secret (hex).

    Examples
    --------
    >>> proposal_key(b"0" * 32, "a") != proposal_key(b"0" * 32, "b")
    True
    >>> len(proposal_key(b"0" * 32, "a"))
    64
    """
    return hmac.new(secret, proposal_id.encode("utf-8"), hashlib.sha256).hexdigest()


@ibis.udf.scalar.builtin(name="conv")
def _spark_conv(value: str, from_base: int, to_base: int) -> str:  # type: ignore[empty-body]
    """Spark's ``conv(value, from_base, to_base)`` (base conversion of a number written as text)."""


def rekey(
    column: ibis.Value,
    key: str,
    *,
    backend: Literal["duckdb", "spark"] = "duckdb",
    width: int | None = None,
) -> ibis.Value:
    """The proposal pseudonym of an integer id column, as BIGINT; null stays null.

    The first ``width`` (default :data:`PSEUDONYM_HEX`) hex characters of
    ``sha256(key || str(id))`` read as an unsigned integer. DuckDB reads the hex with a cast of
    ``'0x' || hex``; Spark, which has no hex literals in casts, with ``conv(hex, 16, 10)``:
    both give the same value, as does ``int(hashlib.sha256(...).hexdigest()[:15], 16)``.

    Examples
    --------
    >>> import hashlib
    >>> t = ibis.memtable({"id": [123, None]}, schema={"id": "int64"})
    >>> t.select(p=rekey(t.id, "abc")).to_pyarrow()["p"].to_pylist()
    [489225315821227144, None]
    >>> int(hashlib.sha256(b"abc123").hexdigest()[:15], 16)
    489225315821227144
    """
    width = PSEUDONYM_HEX if width is None else width
    if not 1 <= width <= 15:
        raise ValueError(f"The 'width' parameter of rekey must be 1-15 hex characters; got {width}")
    digest = (ibis.literal(key) + column.cast("string")).hexdigest("sha256").substr(0, width)
    if backend == "spark":
        return _spark_conv(digest, 16, 10).cast("int64")
    return (ibis.literal("0x") + digest).cast("int64")


# ------------------------------------------------------------------------------- SQL guard
_ALLOWED_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except)
_FORBIDDEN_NODES: tuple[type[exp.Expression], ...] = tuple(
    cls
    for cls in (
        getattr(exp, name, None)
        for name in (
            "DDL",
            "DML",
            "Command",
            "Create",
            "Insert",
            "Update",
            "Delete",
            "Merge",
            "Drop",
            "Alter",
            "Copy",
            "Set",
            "Pragma",
            "Attach",
            "Detach",
            "Install",
            "Use",
            "Describe",
            "Summarize",
            "Transaction",
            "Commit",
            "Rollback",
            "LoadData",
            "Export",
        )
    )
    if isinstance(cls, type)
)
_FORBIDDEN_FUNCTIONS = frozenset(
    {
        "glob",
        "getenv",
        "query",
        "query_table",
        "current_setting",
        "which_secret",
        "checkpoint",
        "force_checkpoint",
        "sniff_csv",
        "arrow_scan",
        "parquet_scan",
        "load_extension",
        "ipc_scan",
        "seq_scan",
        "index_scan",
        "getvariable",
        "setvariable",
    }
)
_FORBIDDEN_PREFIXES = (
    "read_",
    "duckdb_",
    "pragma_",
    "parquet_",
    "iceberg_",
    "delta_",
    "sqlite_",
    "postgres_",
    "mysql_",
    "json_execute",
    "http",
    "arrow_",
    "test_",
    "icu_",
)
#: Table functions that read nothing from outside the query.
_ALLOWED_TABLE_FUNCTIONS = (exp.GenerateSeries, exp.Unnest)


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def _refuse(message: str, reason: str) -> AccessRefused:
    err = AccessRefused(message)
    err.reason = reason  # type: ignore[attr-defined]
    return err


def check_sql(query: str, proposal: Proposal, *, views: Sequence[str] | None = None) -> exp.Query:
    """Check that ``query`` is one SELECT over the proposal's views; return the parsed query.

    Parameters
    ----------
    query
        SQL in DuckDB's dialect.
    proposal
        The session's proposal (its approved tables and columns).
    views
        The view names of the session (default: the proposal's approved tables).

    Raises
    ------
    AccessRefused
        For anything else: several statements, DDL/DML, settings, ATTACH/COPY/INSTALL/LOAD,
        file or system table functions (``read_parquet``, ``glob``, ``duckdb_*``, ``getenv``),
        a qualified or unknown table name, or an unapproved column. The message says what the
        proposal allows.

    Examples
    --------
    >>> p = Proposal.model_validate({
    ...     "id": "p1", "title": "t", "lead_researcher": "r", "organisation": "o",
    ...     "purpose": "p", "approved": "2026-01-01", "expires": "2026-12-31",
    ...     "tables": {"practices": "all"}, "study_period": {"start": "2025-01-01",
    ...     "end": "2025-12-31"}})
    >>> check_sql("SELECT district, count(*) AS n FROM practices GROUP BY 1", p).sql()
    'SELECT district, COUNT(*) AS n FROM practices GROUP BY 1'
    >>> check_sql("SELECT 1; DROP TABLE practices", p)
    Traceback (most recent call last):
    ...
    kidresearch.errors.AccessRefused: kid.sql accepts one SELECT statement; got 2 statements
    """
    allowed = list(views) if views is not None else list(proposal.tables)
    what = f"proposal {proposal.id} allows SELECT over: {', '.join(allowed)}"
    try:
        statements = [s for s in sqlglot.parse(query, read="duckdb") if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise _refuse(
            f"kid.sql could not parse the query as one SELECT ({str(exc).splitlines()[0]}); "
            + what,
            "unparseable",
        ) from None
    if len(statements) != 1:
        raise _refuse(
            f"kid.sql accepts one SELECT statement; got {len(statements)} statements",
            "multiple_statements",
        )
    tree = statements[0]
    if not isinstance(tree, _ALLOWED_ROOTS):
        raise _refuse(
            f"kid.sql accepts only SELECT queries; got {tree.key.upper()}. {what}",
            "not_select",
        )
    for node in tree.walk():
        if _FORBIDDEN_NODES and isinstance(node, _FORBIDDEN_NODES):
            raise _refuse(
                f"kid.sql accepts only SELECT queries; found {node.key.upper()}. {what}",
                "not_select",
            )
        if isinstance(node, exp.Func):
            name = _function_name(node)
            if name in _FORBIDDEN_FUNCTIONS or name.startswith(_FORBIDDEN_PREFIXES):
                raise _refuse(
                    f"function '{name}' is not allowed in kid.sql: queries may not read files, "
                    f"settings or system catalogues; {what}",
                    "forbidden_function",
                )
    # DuckDB identifiers are case-insensitive: compare names in lower case.
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    referenced: set[str] = set()
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            if isinstance(table.this, _ALLOWED_TABLE_FUNCTIONS):
                continue
            raise _refuse(
                f"table functions are not allowed in kid.sql ({table.this.sql('duckdb')}); " + what,
                "table_function",
            )
        name = table.name.lower()
        if table.args.get("db") or table.args.get("catalog"):
            raise _refuse(
                f"qualified table name '{table.sql('duckdb')}' is not allowed in kid.sql; " + what,
                "qualified_table",
            )
        if name in ctes:
            continue
        if name not in allowed:
            if "/" in name or "." in name:
                message = f"'{name}' looks like a file path; kid.sql reads no files. " + what
            else:
                message = proposal._not_approved_message(name)
            raise _refuse(message, "table_not_approved")
        referenced.add(name)
    # Names a query defines itself (column and table aliases) are not data-dictionary columns.
    defined = {a.alias.lower() for a in tree.find_all(exp.Alias)} | {
        a.name.lower() for a in tree.find_all(exp.TableAlias)
    }
    for alias in tree.find_all(exp.TableAlias):
        defined |= {c.name.lower() for c in alias.args.get("columns") or []}
    for column in tree.find_all(exp.Column):
        name = column.name.lower()
        if name in defined:
            continue
        for table_name in sorted(referenced):
            schema = RESEARCH_TABLES.get(table_name)
            if schema is None or name not in schema.column_names:
                continue
            approved = proposal.approved_columns(table_name)
            if name not in approved and not any(
                name in proposal.approved_columns(t) for t in referenced
            ):
                raise _refuse(
                    f"column '{name}' of table '{table_name}' is not approved for proposal "
                    f"{proposal.id}; approved columns: {', '.join(approved)}",
                    "column_not_approved",
                )
    return tree


def fingerprint(sql: str | exp.Expression) -> str:
    """SHA-256 (hex) of the normalised SQL: what the audit log records instead of the text.

    Examples
    --------
    >>> fingerprint("select  a from t") == fingerprint("SELECT a\\nFROM t")
    True
    """
    if isinstance(sql, str):
        try:
            parsed = sqlglot.parse_one(sql, read="duckdb")
            text = parsed.sql(dialect="duckdb", normalize=True)
        except sqlglot.errors.SqlglotError:
            text = " ".join(sql.split())
    else:
        text = sql.sql(dialect="duckdb", normalize=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------- Spark
def spark_session() -> SparkSession:
    """The shared local SparkSession: ``local[2]``, 4 shuffle partitions, no UI, quiet logs.

    The driver gets ``$KID_SPARK_DRIVER_MEMORY`` (default ``3g``) when the JVM starts here.

    In production, configure the cluster's session before calling :func:`connect` and pass it
    as ``spark=``; this helper is for a laptop or CI.
    """
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("kidresearch")
        .config("spark.driver.memory", os.environ.get("KID_SPARK_DRIVER_MEMORY", "3g"))
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# ------------------------------------------------------------------------------- session
def _tables_dir(kid_dir: Path, version: str) -> Path:
    return kid_dir / "versions" / version / "tables"


def _resolve_version(kid_dir: Path, proposal: Proposal) -> str:
    versions_dir = kid_dir / "versions"
    available = (
        sorted(p.name for p in versions_dir.iterdir() if p.is_dir())
        if versions_dir.is_dir()
        else []
    )
    if proposal.kid_version == "latest":
        current = kid_dir / "CURRENT"
        if not current.is_file():
            raise BuildError(
                f"{current}: no published KID version (run `kid build`); versions present: "
                + (", ".join(available) or "none")
            )
        version = current.read_text(encoding="utf-8").strip()
    else:
        version = proposal.kid_version
    if version not in available:
        raise _refuse(
            f"proposal {proposal.id} is approved for KID version {version}, which is not in "
            f"{versions_dir}; versions present: {', '.join(available) or 'none'}",
            "wrong_version",
        )
    return version


def _parquet_glob(folder: Path) -> tuple[str, bool]:
    partitioned = any(p.is_dir() and "=" in p.name for p in folder.iterdir())
    pattern = folder / ("**/*.parquet" if partitioned else "*.parquet")
    return str(pattern), partitioned


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class RestrictedTable(IbisTable):
    """The Ibis table :meth:`KID.table` returns: a plain Ibis table whose column access refuses
    (and logs) a data-dictionary column the proposal did not approve, instead of Ibis's
    attribute error. Expressions built from it are ordinary Ibis expressions.
    """

    __slots__ = ("_kid_session", "_kid_table")

    def _refuse_column(self, name: object) -> None:
        session: KID = object.__getattribute__(self, "_kid_session")
        table: str = object.__getattribute__(self, "_kid_table")
        if not isinstance(name, str) or name in self.columns:
            return
        if name not in RESEARCH_TABLES[table].column_names:
            return  # not a data-dictionary column: Ibis's own error says so
        approved = session.proposal.approved_columns(table)
        if name in approved:
            return  # approved but left out by columns=: Ibis's error lists the view's columns
        raise session._refused(
            _refuse(
                f"column '{name}' of table '{table}' is not approved for proposal "
                f"{session.proposal.id}; approved columns: {', '.join(approved)}",
                "column_not_approved",
            ),
            table=table,
            column=name,
        )

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            self._refuse_column(name)
            raise

    def __getitem__(self, what: Any) -> Any:
        names = [what] if isinstance(what, str) else what if isinstance(what, list) else []
        for name in names:
            self._refuse_column(name)
        return super().__getitem__(what)


def _restricted_table(view: IbisTable, session: KID, name: str) -> RestrictedTable:
    table = RestrictedTable(view.op())
    object.__setattr__(table, "_kid_session", session)
    object.__setattr__(table, "_kid_table", name)
    return table


class KID:
    """A research session on one KID version for one approved proposal (use :func:`connect`).

    Attributes
    ----------
    proposal
        The :class:`Proposal`.
    version
        The KID version label (e.g. ``"2026-10"``).
    backend
        ``"duckdb"`` or ``"spark"``.
    data
        The KID folder.
    manifest
        The version's ``manifest.json`` (empty when absent).
    """

    def __init__(
        self,
        proposal: Proposal,
        data: Path,
        version: str,
        *,
        backend: Literal["duckdb", "spark"] = "duckdb",
        user: str | None = None,
        spark: SparkSession | None = None,
    ) -> None:
        self.proposal = proposal
        self.data = data
        self.version = version
        self.backend = backend
        self.user = current_user(user)
        self._audit = AuditLog(data)
        self._closed = False
        version_dir = data / "versions" / version
        manifest = version_dir / "manifest.json"
        self.manifest: dict[str, Any] = (
            json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
        )
        tables_dir = _tables_dir(data, version)
        present = (
            {
                p.name
                for p in tables_dir.iterdir()
                if p.is_dir() and p.name in RESEARCH_TABLES and any(p.rglob("*.parquet"))
            }
            if tables_dir.is_dir()
            else set()
        )
        self._present = present
        needed = set(proposal.tables) & present
        if "persons" not in present and any(
            RESEARCH_TABLES[t].person_column for t in proposal.tables
        ):
            raise BuildError(
                f"{tables_dir}: KID version {version} has no persons table; the population "
                "filter cannot be applied"
            )
        sources = needed | ({"persons"} if needed - set(REFERENCE) else set())
        if proposal.population.districts:
            if "lsoas" not in present:
                raise BuildError(f"{tables_dir}: no lsoas table; cannot filter by district")
            sources.add("lsoas")
        self._key = proposal_key(_secret(data), proposal.id)
        self._spark_session: Any = None
        self._view_names: list[str] = []
        if backend == "duckdb":
            self._con = self._open_duckdb(tables_dir, sources)
        elif backend == "spark":
            self._con = self._open_spark(tables_dir, sources, spark)
        else:
            raise ValueError(
                f"The 'backend' parameter of connect must be 'duckdb' or 'spark'; got {backend!r}"
            )
        self._check_id_types(tables_dir)
        src = self._src
        population = self._materialise_population(self._population(src))
        for name in sorted(needed):
            expr = self._restricted(name, src[name], population)
            self._create_view(name, expr)
        if backend == "duckdb":
            self._harden_duckdb(tables_dir)
        self._log_materialisations()

    # -- backends ---------------------------------------------------------------------------
    def _open_duckdb(self, tables_dir: Path, sources: set[str]) -> Any:
        con = ibis.duckdb.connect()
        con.raw_sql("CREATE SCHEMA kid_src")
        self._src: dict[str, IbisTable] = {}
        for name in sorted(sources):
            schema = RESEARCH_TABLES[name]
            pattern, partitioned = _parquet_glob(tables_dir / name)
            cols = ", ".join(f'"{c}"' for c in schema.column_names)
            try:
                con.raw_sql(
                    f'CREATE VIEW kid_src."{name}" AS SELECT {cols} FROM read_parquet('
                    f"{_quote_literal(pattern)}, hive_partitioning={str(partitioned).lower()})"
                )
            except duckdb.Error as exc:
                raise BuildError(
                    f"{tables_dir / name}: cannot read table '{name}' with the columns of the "
                    f"data dictionary ({', '.join(schema.column_names)}): {exc}"
                ) from exc
            self._src[name] = con.table(name, database="kid_src")
        return con

    def _check_id_types(self, tables_dir: Path) -> None:
        """Refuse a KID version whose person or household ids are not integers.

        KIDs built before ids became 63-bit integers hold 32-hex-character string ids; every
        join would fail later with a type error deep inside a query, so say it here.
        """
        for name, table in sorted(self._src.items()):
            schema = RESEARCH_TABLES[name]
            id_columns = [schema.person_column] if schema.person_column else []
            if name == "persons":
                id_columns.append("household_id")
            for column in id_columns:
                dtype = table.schema()[column]
                if not dtype.is_integer():
                    raise BuildError(
                        f"{tables_dir / name}: column '{column}' of table '{name}' holds {dtype} "
                        f"values; expected integer (BIGINT) ids. KID version {self.version} was "
                        "built by an older kidresearch, before person and household ids became "
                        "63-bit integers: rebuild the KID with `kid build --full`."
                    )

    def _harden_duckdb(self, tables_dir: Path) -> None:
        # The views read Parquet at query time, so the tables folder stays readable; everything
        # else (quarantine, keys, raw feeds, other versions, extensions) is cut off, and the
        # settings are locked so a query cannot switch them back on.
        allowed = _quote_literal(str(tables_dir.resolve()) + os.sep)
        raw = self._con.con
        raw.execute(f"SET allowed_directories=[{allowed}]")
        raw.execute("SET enable_external_access=false")
        raw.execute("SET autoinstall_known_extensions=false")
        raw.execute("SET autoload_known_extensions=false")
        raw.execute("SET lock_configuration=true")

    def _open_spark(self, tables_dir: Path, sources: set[str], spark: Any) -> Any:
        base = spark if spark is not None else spark_session()
        session = base.newSession()  # own temp views, so sessions of two proposals never mix
        session.conf.set("spark.sql.runSQLOnFiles", "false")
        session.conf.set("spark.sql.session.timeZone", "UTC")
        self._spark_session = session
        con = ibis.pyspark.connect(session)
        self._src = {}
        for name in sorted(sources):
            schema = RESEARCH_TABLES[name]
            try:
                frame = session.read.parquet(str(tables_dir / name)).select(*schema.column_names)
            except Exception as exc:  # pyspark AnalysisException and friends
                raise BuildError(
                    f"{tables_dir / name}: cannot read table '{name}' with the columns of the "
                    f"data dictionary ({', '.join(schema.column_names)}): {exc}"
                ) from exc
            view = f"kid_src__{name}"
            frame.createOrReplaceTempView(view)
            self._view_names.append(view)
            self._src[name] = con.table(view)
        return con

    def _log_materialisations(self) -> None:
        """Log every result fetched through this session's backend, with its row count.

        ``expr.to_pandas()``, ``.execute()``, ``.to_pyarrow()`` and ``.to_polars()`` of any
        expression built on the session's tables all reach the backend instance, so wrapping its
        methods records them without researchers calling anything special.
        """
        con = self._con
        for method in ("execute", "to_pyarrow", "to_polars", "to_pyarrow_batches"):
            original = getattr(con, method, None)
            if original is None:
                continue
            setattr(con, method, self._logged(method, original))

    def _logged(self, method: str, original: Any) -> Any:
        def run(expr: Any, *args: Any, **kwargs: Any) -> Any:
            self._check_open()
            result = original(expr, *args, **kwargs)
            try:
                sql = ibis.to_sql(expr, dialect="duckdb")
                tables = sorted(
                    {
                        t.name.lower()
                        for t in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Table)
                    }
                    & set(self.tables())
                )
            except Exception:  # a fingerprint must never block a result
                sql, tables = repr(type(expr)), []
            rows = None
            if method != "to_pyarrow_batches":
                rows = len(result) if hasattr(result, "__len__") else 1
            self._log(
                "fetch", {"method": method, "fingerprint": fingerprint(sql), "tables": tables}, rows
            )
            return result

        return run

    def _create_view(self, name: str, expr: IbisTable) -> None:
        if self.backend == "duckdb":
            self._con.create_view(name, expr, overwrite=True)
        else:
            sql = ibis.to_sql(expr, dialect="pyspark")
            self._spark_session.sql(f"CREATE OR REPLACE TEMPORARY VIEW `{name}` AS {sql}")
            self._view_names.append(name)

    # -- restriction ------------------------------------------------------------------------
    def _population(self, src: Mapping[str, IbisTable]) -> IbisTable | None:
        if "persons" not in src:
            return None
        pop = self.proposal.population
        period = self.proposal.study_period
        persons = src["persons"]
        conditions = []
        if pop.min_age is not None or pop.max_age is not None:
            start = period.start
            age = (
                ibis.literal(start.year)
                - persons.birth_year.cast("int32")
                - ibis.ifelse(persons.birth_month > start.month, 1, 0)
            )
            if pop.min_age is not None:
                conditions.append(age >= pop.min_age)
            if pop.max_age is not None:
                conditions.append(age <= pop.max_age)
        if pop.sex is not None:
            conditions.append(persons.sex.isin(list(pop.sex)))
        if pop.practices is not None:
            conditions.append(persons.practice_code.isin(list(pop.practices)))
        if pop.districts is not None:
            lsoas = src["lsoas"]
            in_districts = lsoas.filter(lsoas.district.isin(list(pop.districts))).lsoa_code
            conditions.append(persons.lsoa_code.isin(in_districts))
        if pop.registered_during_study_period:
            left = ibis.coalesce(persons.registration_end, persons.date_of_death)
            conditions.append(persons.registration_start <= ibis.literal(period.end))
            conditions.append(left.isnull() | (left >= ibis.literal(period.start)))
        return persons.filter(*conditions) if conditions else persons

    def _materialise_population(self, population: IbisTable | None) -> IbisTable | None:
        """Store the re-keyed population once per session (``_rid`` keeps the KID's own id).

        Hashing every id at query time costs seconds on a Kent-sized KID; computing the
        proposal pseudonyms once at connect keeps queries at the speed of a plain join. On
        DuckDB the result is also cached as Parquet under
        ``<KID>/restricted/sessions/<version>/`` (see :meth:`_population_cache`), so the next
        session of the proposal reads it instead of hashing again.
        """
        if population is None:
            return None
        approved = (
            self.proposal.approved_columns("persons") if "persons" in self.proposal.tables else []
        )
        # Only what the session can show is kept (and hashed: each re-keyed column of 2 million
        # people costs seconds of CPU).
        backend = self.backend
        columns: dict[str, ibis.Value] = {
            "_rid": population.person_id,
            "person_id": rekey(population.person_id, self._key, backend=backend),
        }
        households = "household_id" in approved
        if households:
            # The KID's own household id, kept (never shown) to check the pseudonyms are unique.
            columns["_hid"] = population.household_id
        for name in approved:
            if name == "household_id":
                columns[name] = rekey(
                    population.household_id,
                    self._key,
                    backend=backend,
                    width=HOUSEHOLD_PSEUDONYM_HEX,
                )
            elif name != "person_id":
                columns[name] = population[name]
        keyed = population.select(**columns)
        counts_sql = (
            "SELECT count(*), count(DISTINCT _rid), count(DISTINCT person_id)"
            + (", count(DISTINCT _hid), count(DISTINCT household_id)" if households else "")
            + " FROM {table}"
        )
        if self.backend == "duckdb":
            sql = ibis.to_sql(keyed, dialect="duckdb")
            raw = self._con.con
            cache = self._population_cache(str(sql))
            if cache.is_file():
                try:
                    raw.execute(
                        "CREATE TABLE kid_src._population AS SELECT * FROM "
                        f"read_parquet({_quote_literal(str(cache))})"
                    )
                    return self._con.table("_population", database="kid_src")
                except duckdb.Error as exc:
                    log.warning("%s: unreadable session cache, recomputing: %s", cache, exc)
                    raw.execute("DROP TABLE IF EXISTS kid_src._population")
            raw.execute(f"CREATE TABLE kid_src._population AS {sql}")
            self._check_unique(
                raw.execute(counts_sql.format(table="kid_src._population")).fetchone()
            )
            self._write_population_cache(cache)
            return self._con.table("_population", database="kid_src")
        name = "kid_src___population"
        sql = ibis.to_sql(keyed, dialect="pyspark")
        self._spark_session.sql(f"CREATE OR REPLACE TEMPORARY VIEW `{name}` AS {sql}")
        self._spark_session.catalog.cacheTable(name)
        self._view_names.append(name)
        self._check_unique(tuple(self._spark_session.sql(counts_sql.format(table=name)).first()))
        return self._con.table(name)

    def _check_unique(self, counts: Sequence[int]) -> None:
        """Refuse a population whose ids repeat or whose proposal pseudonyms collide.

        ``counts`` is (rows, distinct KID person ids, distinct person pseudonyms[, distinct KID
        household ids, distinct household pseudonyms]).
        """
        persons = _tables_dir(self.data, self.version) / "persons"
        total, ids, pseudonyms = counts[:3]
        if total != ids:
            # A repeated person_id would repeat every event of that person in each join.
            raise BuildError(
                f"{persons}: person_id is not unique ({total - ids} repeated ids in the "
                "population); rebuild the KID"
            )
        problems = []
        if pseudonyms != ids:
            problems.append(
                f"person_id: {ids:,} people but {pseudonyms:,} distinct pseudonyms "
                f"({PSEUDONYM_HEX * 4}-bit)"
            )
        if len(counts) == 5 and counts[3] != counts[4]:
            problems.append(
                f"household_id: {counts[3]:,} households but {counts[4]:,} distinct pseudonyms "
                f"({HOUSEHOLD_PSEUDONYM_HEX * 4}-bit)"
            )
        if problems:
            # Two people (or households) would be merged into one in every join and count.
            raise BuildError(
                f"{persons}: the proposal pseudonyms of proposal {self.proposal.id} collide ("
                + "; ".join(problems)
                + "). This is a rare chance event of the proposal key: ask the data team to "
                f"replace {self.data / 'restricted' / SECRET_NAME} (a new secret re-keys every "
                "proposal) and reconnect."
            )

    def _population_cache(self, sql: str) -> Path:
        """Where this proposal's re-keyed population is cached for the KID version.

        The name digests the population query (its filters, approved columns and the
        proposal key, so a new secret or an edited proposal misses) and the persons files'
        names, sizes and modification times (a rebuilt table misses).
        """
        digest = hashlib.sha256(sql.encode("utf-8"))
        persons = _tables_dir(self.data, self.version) / "persons"
        for path in sorted(persons.rglob("*.parquet")):
            stat = path.stat()
            digest.update(f"{path.relative_to(persons)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        folder = self.data / "restricted" / SESSION_CACHE_DIR / self.version
        return folder / f"{self.proposal.id}-{digest.hexdigest()[:32]}.parquet"

    def _write_population_cache(self, cache: Path) -> None:
        """Save the re-keyed population (best effort: a read-only KID just recomputes)."""
        tmp = cache.with_name(f"tmp-{os.getpid()}-{secrets.token_hex(4)}-{cache.name}")
        try:
            cache.parent.parent.mkdir(exist_ok=True, mode=0o700)
            cache.parent.mkdir(exist_ok=True, mode=0o700)
            self._con.con.execute(
                f"COPY kid_src._population TO {_quote_literal(str(tmp))} (FORMAT parquet)"
            )
            tmp.chmod(0o600)
            os.replace(tmp, cache)
            for stale in cache.parent.glob(f"{self.proposal.id}-*.parquet"):
                if stale != cache:
                    stale.unlink(missing_ok=True)
        except (OSError, duckdb.Error) as exc:
            tmp.unlink(missing_ok=True)
            log.info("%s: session cache not written: %s", cache, exc)

    def _restricted(self, name: str, table: IbisTable, population: IbisTable | None) -> IbisTable:
        schema = RESEARCH_TABLES[name]
        period = self.proposal.study_period
        approved = self.proposal.approved_columns(name)
        if name == "persons":
            assert population is not None
            return population.select(approved)
        if schema.date_column and name not in REFERENCE:
            table = table.filter(
                table[schema.date_column].between(
                    ibis.literal(period.first_event_date), ibis.literal(period.end)
                )
            )
        if not schema.person_column:
            return table.select(approved)
        assert population is not None
        # The inner join on the KID's own id keeps the population's events (person_id is
        # unique in persons) and swaps in the proposal pseudonym in one step.
        ids = population.select(_rid=population._rid, _pseudonym=population.person_id)
        joined = table.join(ids, table[schema.person_column] == ids._rid)
        return joined.select(
            [
                joined._pseudonym.name(c) if c == schema.person_column else joined[c]
                for c in approved
            ]
        )

    # -- public API -------------------------------------------------------------------------
    def _log(self, action: str, detail: Mapping[str, Any], rows: int | None = None) -> None:
        self._audit.append(
            self.proposal.id,
            action,
            {"version": self.version, "backend": self.backend, **detail},
            rows=rows,
            user=self.user,
        )

    def _refused(self, err: AccessRefused, **detail: Any) -> AccessRefused:
        reason = getattr(err, "reason", "refused")
        self._log("refused", {"reason": reason, "message": str(err), **detail})
        log.warning("refused (proposal %s): %s", self.proposal.id, err)
        return err

    def _check_open(self) -> None:
        if self._closed:
            raise ProposalError(f"the KID session for proposal {self.proposal.id} is closed")

    def tables(self) -> list[str]:
        """The approved tables present in this KID version."""
        return [t for t in self.proposal.tables if t in self._present]

    def table(self, name: str, *, columns: Sequence[str] | None = None) -> IbisTable:
        """The restricted Ibis table ``name`` (approved columns, population and study period).

        Parameters
        ----------
        name
            A research table approved for the proposal.
        columns
            Optional subset of its approved columns.

        Returns
        -------
        RestrictedTable
            An Ibis table; ``t[col]`` or ``t.col`` on a column the proposal did not approve
            raises :class:`~kidresearch.errors.AccessRefused` naming the table, column and
            proposal (logged).

        Raises
        ------
        AccessRefused
            If the table or a requested column is not approved (logged).
        ProposalError
            If the table is approved but not in this KID version.
        """
        self._check_open()
        if name not in self.proposal.tables:
            raise self._refused(
                _refuse(self.proposal._not_approved_message(name), "table_not_approved"),
                table=name,
            )
        if name not in self._present:
            raise ProposalError(
                f"table '{name}' is approved for proposal {self.proposal.id} but not present in "
                f"KID version {self.version} ({_tables_dir(self.data, self.version)})"
            )
        approved = self.proposal.approved_columns(name)
        if columns is not None:
            bad = [c for c in columns if c not in approved]
            if bad:
                raise self._refused(
                    _refuse(
                        f"column(s) {', '.join(map(repr, bad))} of table '{name}' not approved "
                        f"for proposal {self.proposal.id}; approved columns: "
                        + ", ".join(approved),
                        "column_not_approved",
                    ),
                    table=name,
                )
        self._log("table", {"table": name, "columns": list(columns or approved)})
        view = self._con.table(name)
        view = view.select(list(columns)) if columns is not None else view
        return _restricted_table(view, self, name)

    def sql(self, query: str) -> IbisTable:
        """Run one SELECT (DuckDB dialect) over the session's restricted tables.

        Returns
        -------
        ibis.Table
            A lazy table: call ``.to_pandas()`` (or :meth:`to_pandas` to log the row count).

        Raises
        ------
        AccessRefused
            If the query is anything but one SELECT over approved tables and columns (logged).
        """
        self._check_open()
        try:
            tree = check_sql(query, self.proposal, views=self.tables())
        except AccessRefused as err:
            raise self._refused(err, fingerprint=fingerprint(query)) from None
        tables = sorted({t.name.lower() for t in tree.find_all(exp.Table)} & set(self.tables()))
        self._log("sql", {"fingerprint": fingerprint(tree), "tables": tables})
        return self._con.sql(tree.sql(dialect="duckdb"), dialect="duckdb")

    def to_pandas(self, expr: IbisTable | str) -> pd.DataFrame:
        """Run a SQL query (or materialise an Ibis expression) and return a DataFrame.

        Every materialisation of a session expression is logged with its row count, whether
        through this method or ``expr.to_pandas()``.
        """
        self._check_open()
        table = self.sql(expr) if isinstance(expr, str) else expr
        return table.to_pandas()  # logged by the backend hook (see _log_materialisations)

    def describe(self, name: str) -> pd.DataFrame:
        """The data-dictionary entry of a research table, marking the approved columns.

        The table's description (its caveats) is in ``.attrs["description"]``.
        """
        if name not in RESEARCH_TABLES:
            raise KeyError(
                f"No research table called '{name}'; research tables: " + ", ".join(RESEARCH_TABLES)
            )
        schema: Table = RESEARCH_TABLES[name]
        approved = (
            set(self.proposal.approved_columns(name)) if name in self.proposal.tables else set()
        )
        frame = pd.DataFrame(
            {
                "column": [c.name for c in schema.columns],
                "type": [c.dtype for c in schema.columns],
                "required": [c.required for c in schema.columns],
                "approved": [c.name in approved for c in schema.columns],
                "description": [c.description for c in schema.columns],
                "values": [
                    ", ".join(c.allowed) if c.allowed else (c.code_system or "")
                    for c in schema.columns
                ],
            }
        )
        frame.attrs["description"] = schema.description
        frame.attrs["date_column"] = schema.date_column
        return frame

    def completeness(
        self,
        *,
        months: int = 6,
        settle_months: int = 3,
        baseline_months: int = 12,
        threshold: float = 0.9,
        tables: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """How complete each recent month is, given the 1-2 month reporting lag.

        For every approved event table, the rows of each of the last ``months`` months (up to
        the version's month, or the study end if earlier) are compared with the mean of the
        ``baseline_months`` settled months that end ``settle_months`` before the last month.
        A month whose ratio is below ``threshold`` is flagged incomplete: do not read a trend
        off it. Only the months compared are read.

        Parameters
        ----------
        months, settle_months, baseline_months, threshold
            As above.
        tables
            The event tables to check (default: every approved event table).

        Returns
        -------
        pandas.DataFrame
            table, month (YYYY-MM), rows, expected_rows, ratio, complete.

        Raises
        ------
        AccessRefused
            If a table in ``tables`` is not approved (logged).
        """
        self._check_open()
        end = self.proposal.study_period.end
        label = re.fullmatch(r"(\d{4})-(\d{2})", self.version)
        if label:
            end = min(end, date(int(label[1]), int(label[2]), 1))
        last = end.year * 12 + end.month - 1
        first = min(last - months + 1, last - settle_months - baseline_months + 1)
        first_day = date(first // 12, first % 12 + 1, 1)
        after_last = date((last + 1) // 12, (last + 1) % 12 + 1, 1)
        if tables is None:
            names = self.tables()
        else:
            for name in tables:
                if name not in self.proposal.tables:
                    raise self._refused(
                        _refuse(self.proposal._not_approved_message(name), "table_not_approved"),
                        table=name,
                    )
            names = [t for t in self.tables() if t in tables]
        records = []
        for name in names:
            schema = RESEARCH_TABLES[name]
            if not schema.date_column or name in REFERENCE:
                continue
            view = self._con.table(name)
            when = view[schema.date_column]
            # Only the compared months: the date filter reaches the Parquet scan (and its
            # year partitions), so a Kent-sized table costs a fraction of a full pass.
            view = view.filter(when >= ibis.literal(first_day), when < ibis.literal(after_last))
            month = view[schema.date_column].truncate("M").name("month")
            counts = view.group_by(month).agg(rows=view.count()).to_pandas()
            index = pd.to_datetime(counts["month"])
            by_month = dict(
                zip(
                    index.dt.year * 12 + index.dt.month - 1, counts["rows"].astype(int), strict=True
                )
            )
            base = [
                by_month.get(m, 0)
                for m in range(last - settle_months - baseline_months + 1, last - settle_months + 1)
            ]
            expected = sum(base) / len(base) if base else 0.0
            for m in range(last - months + 1, last + 1):
                rows = by_month.get(m, 0)
                ratio = rows / expected if expected else float("nan")
                records.append(
                    {
                        "table": name,
                        "month": f"{m // 12:04d}-{m % 12 + 1:02d}",
                        "rows": rows,
                        "expected_rows": round(expected, 1),
                        "ratio": round(ratio, 3),
                        "complete": bool(ratio >= threshold),
                    }
                )
        self._log("completeness", {"tables": names})
        return pd.DataFrame.from_records(
            records, columns=["table", "month", "rows", "expected_rows", "ratio", "complete"]
        )

    def close(self) -> None:
        """Close the session (idempotent) and log it."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.backend == "spark" and self._spark_session is not None:
                for view in self._view_names:
                    self._spark_session.catalog.dropTempView(view)
            else:
                self._con.disconnect()
        finally:
            self._log("close", {})

    def __enter__(self) -> KID:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<KID {self.version} proposal={self.proposal.id} backend={self.backend} "
            f"tables={self.tables()} ({state})>"
        )


def connect(
    proposal: str | os.PathLike[str] | Proposal,
    data: str | os.PathLike[str] | None = None,
    *,
    backend: Literal["duckdb", "spark"] = "duckdb",
    user: str | None = None,
    spark: SparkSession | None = None,
    today: date | None = None,
) -> KID:
    """Open the KID for an approved proposal.

    Parameters
    ----------
    proposal
        A proposal id (looked up in ``$KID_PROPOSALS`` or ``./proposals``), a YAML path, or a
        :class:`Proposal`.
    data
        The KID folder; default ``$KID_DATA``, then the config file (:mod:`kidresearch.config`).
    backend
        ``"duckdb"`` (embedded, default) or ``"spark"`` (the same Ibis expressions on Spark).
    user
        Who to record in the audit log (default ``$KID_USER`` or the login name).
    spark
        A SparkSession to use with ``backend="spark"`` (default: :func:`spark_session`).
    today
        The date the proposal's validity is checked on (default: today).

    Returns
    -------
    KID
        The session; use it as a context manager or call ``close()``.

    Raises
    ------
    ProposalError
        If the proposal is invalid, expired or not yet valid (logged when the KID is found).
    AccessRefused
        If the proposal's KID version is not available (logged).
    """
    if backend not in ("duckdb", "spark"):
        raise ValueError(
            f"The 'backend' parameter of connect must be 'duckdb' or 'spark'; got {backend!r}"
        )
    kid_dir = resolve_data(data)
    if not kid_dir.is_dir():
        raise ProposalError(f"{kid_dir}: KID folder not found (check data= or KID_DATA)")
    audit = AuditLog(kid_dir)
    try:
        prop = load_proposal(proposal)
    except ProposalError as err:
        audit.append(
            str(proposal), "refused", {"reason": "invalid_proposal", "message": str(err)}, user=user
        )
        raise
    try:
        prop.check_dates(today)
        version = _resolve_version(kid_dir, prop)
    except (ProposalError, AccessRefused) as err:
        reason = getattr(err, "reason", "proposal_not_valid")
        audit.append(prop.id, "refused", {"reason": reason, "message": str(err)}, user=user)
        log.warning("refused (proposal %s): %s", prop.id, err)
        raise
    kid = KID(prop, kid_dir, version, backend=backend, user=user, spark=spark)
    kid._log("connect", {"tables": kid.tables(), "source": prop.source})
    return kid
