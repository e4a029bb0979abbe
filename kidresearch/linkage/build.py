"""``kid build``: link raw monthly feeds on NHS number, pseudonymise and publish a KID version.

Design
------
A **full** build reads every raw extract up to the version's month
(``RAW/<feed>/<feed>_<YYYY-MM>.parquet`` or ``.csv``) with DuckDB and writes one complete,
immutable version folder. When the KID folder already holds an earlier version made from the
same older extracts, the build is **incremental**: the new months are added to it and only
the event-year files that change are written, the rest hard-linked (see :mod:`.versions`; the
result equals a full build). A re-run of the same inputs is a no-op that only hashes the
inputs. Figures: ``benchmarks/bench_build.py``.

Steps, all in DuckDB SQL over Parquet (no Python loop over rows; Python hashes only the
distinct NHS numbers and UPRNs):

1. **Inputs**: list the extracts, check each file opens and has the dictionary's columns
   (otherwise :class:`~kidresearch.errors.FeedError` naming the file), hash each (sha256) and
   compare with ``RAW/MANIFEST.json`` when the provider sent one. If ``versions/<v>`` exists
   with the same inputs, key and code, the build is a no-op; with different inputs it is
   refused (versions are immutable).
2. **Register**: registration rows are validated first; the distinct NHS numbers of the valid
   ones are the population register, and ``person_id`` is the keyed HMAC of each
   (:mod:`.pseudonym`); ``household_id`` likewise from the distinct UPRNs.
3. **One feed at a time** (registrations and deaths, then the event feeds from the smallest):
   one multi-file scan of the feed's extracts is validated against :mod:`kidresearch.schema`
   (:mod:`.validate`; the first failing check of a row is its quarantine reason) and linked to
   the register on the normalised NHS number (a hash join built on the register) into an
   in-memory staging table that carries the final 64-bit ``person_id`` once the register's
   HMACs are done (a worker thread computes them while the first, small feeds are staged with
   the register's 4-byte key, and those are written when the HMACs are done); DuckDB spills it
   to ``restricted/`` beyond its memory limit, so memory is bounded by the largest feed. Then:

   * **corrections**: when a ``record_id`` comes again in a later extract the latest extract
     wins (within one extract the last row wins; earlier copies are quarantined);
   * **quarantine**: unlinkable and malformed rows go to ``restricted/quarantine/<v>/`` with
     file, row, field, reason and offending value;
   * **reconcile**: for every extract file, rows in (from the file's own metadata) = rows
     linked + rows quarantined, and rows published = rows linked - corrections; otherwise
     :class:`~kidresearch.errors.BuildError`;
   * **publish the table** (hive partitions ``year=YYYY/part-0.parquet`` by the year of the
     table's ``date_column``, one ``COPY`` per large year; the ``year`` column lives only in
     the folder name; zstd) and its **costs** (``costs/year=YYYY/<feed>-0.parquet``, see
     :mod:`.costs`, computed from the same staged rows in the same loop); free the staging.
4. **Persons** from the registrations and deaths (latest practice and LSOA, birth year and
   month, registration span, death); practices and LSOAs from the reference files
   (``part-0.parquet``).
5. **Publish atomically**: everything is written under a temporary folder inside
   ``versions/`` and renamed into place, then ``CURRENT`` is replaced with ``os.replace``. The
   linkage report goes to ``reports/linkage_<v>.{md,html,json}``.

Direct identifiers never reach ``versions/``: NHS number is replaced by ``person_id``, date of
birth by year and month, the registered address by its LSOA and the UPRN by a keyed
``household_id``. The key is read from its file and passed to DuckDB as a query parameter; only a
fingerprint (an HMAC of a fixed text) is written to the manifest.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kidresearch import schema
from kidresearch.errors import BuildError, FeedError
from kidresearch.linkage import costs as costs_module
from kidresearch.linkage import pseudonym, versions
from kidresearch.linkage.nhs import sql_nhs_normalise
from kidresearch.linkage.quarantine import DUPLICATE_REASON
from kidresearch.linkage.report import write_report
from kidresearch.linkage.validate import (
    NOT_IN_REGISTER_REASON,
    duckdb_type,
    feed_checks,
    literal,
    problem_case,
    quote,
    typed_expression,
    value_case,
)

log = logging.getLogger(__name__)

BUILDER_VERSION = "4"
_FILE_NAME = re.compile(r"^(?P<feed>[a-z_]+)_(?P<month>\d{4}-\d{2})\.(?P<ext>parquet|csv)$")
_MEMORY_LIMIT = os.environ.get("KID_BUILD_MEMORY_LIMIT", "4GB")
# zstd level 1: at Kent scale both faster to write than DuckDB's default snappy and about 2.5x
# smaller; DuckDB, Spark, pandas and R read it.
PARQUET = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1"
EVENT_TABLES = tuple(
    name
    for name, t in schema.RESEARCH_TABLES.items()
    if name in schema.RAW_FEEDS and t.date_column is not None
)

__all__ = ["BuildResult", "build"]


# ------------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class BuildResult:
    """What a build published.

    Attributes
    ----------
    version
        The version label (``YYYY-MM``).
    path
        The published version folder ``KID_DIR/versions/<version>``.
    row_counts
        Rows per research table.
    report
        The linkage report (the content of ``reports/linkage_<version>.json``).
    reused
        ``True`` when the same build was already published and nothing was rewritten.
    """

    version: str
    path: Path
    row_counts: dict[str, int]
    report: dict
    reused: bool = False
    kid_dir: Path = field(default=Path("."))

    def summary(self) -> pd.DataFrame:
        """Per feed: rows_in, rows_linked, rows_quarantined, linkage_rate."""
        frame = pd.DataFrame(self.report["feeds"])
        return frame[["feed", "rows_in", "rows_linked", "rows_quarantined", "linkage_rate"]]

    def to_frame(self) -> pd.DataFrame:
        """Per feed and extract month counts (a tidy copy of the report's month table)."""
        return pd.DataFrame(self.report["months"])

    def plot(self, ax=None):
        """Bar chart of the linkage rate per feed (the KID expects 98-99%); returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4))
        frame = self.summary().sort_values("linkage_rate")
        ax.barh(frame["feed"], 100 * frame["linkage_rate"], color="#4c72b0")
        ax.axvspan(98, 99, color="#dd8452", alpha=0.2, label="expected 98-99%")
        low = min(95.0, 100 * float(frame["linkage_rate"].min()) - 0.5)
        ax.set_xlim(low, 100)
        ax.set_xlabel("rows linked to the population register (%)")
        ax.set_title(f"KID version {self.version}: linkage rate by feed")
        ax.legend(loc="lower right")
        return ax

    def _repr_html_(self) -> str:
        return f"<p>KID version {self.version} at {self.path}</p>" + self.summary().to_html(
            index=False
        )

    def __repr__(self) -> str:
        return f"BuildResult(version={self.version!r}, path={str(self.path)!r})"


# ------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class _Extract:
    feed: str
    month: str
    path: Path
    relative: str
    fmt: str
    rows: int
    sha256: str = ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _month_end(month: str) -> date:
    year, mon = int(month[:4]), int(month[5:])
    first_next = date(year + (mon == 12), mon % 12 + 1, 1)
    return date.fromordinal(first_next.toordinal() - 1)


def _check_columns(path: Path, names: list[str], table: schema.Table) -> None:
    missing = [c for c in table.column_names if c not in names]
    if missing:
        raise FeedError(
            f"{path}: missing column(s) {', '.join(missing)}; a '{table.name}' extract must "
            f"have the columns {', '.join(table.column_names)} (see docs/data_dictionary.md)."
        )
    extra = [n for n in names if n not in table.column_names]
    if extra:
        log.warning("%s: ignoring column(s) not in the data dictionary: %s", path, extra)


def _parquet_rows(path: Path, table: schema.Table, schemas: dict | None = None) -> int:
    try:
        meta = pq.read_metadata(path)
        arrow_schema = meta.schema.to_arrow_schema()
        names = arrow_schema.names
        if schemas is not None:
            schemas[str(path)] = str(arrow_schema.remove_metadata())
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
        raise FeedError(
            f"{path}: not a readable Parquet file (truncated or corrupt?): {exc}. "
            "Ask the provider to resend the extract."
        ) from exc
    _check_columns(path, names, table)
    return meta.num_rows


def _discover(raw: Path, version: str | None) -> tuple[str, list[_Extract]]:
    if not raw.is_dir():
        raise FeedError(f"Raw feeds folder {raw} does not exist.")
    found: list[_Extract] = []
    for feed in schema.RAW_FEEDS:
        folder = raw / feed
        if not folder.is_dir():
            raise FeedError(
                f"{folder}: feed folder missing; every feed needs at least one extract."
            )
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            match = _FILE_NAME.match(path.name)
            if not match or match["feed"] != feed:
                log.warning(
                    "%s: not an extract of '%s' (<feed>_<YYYY-MM>.parquet); ignored", path, feed
                )
                continue
            if not versions.VERSION_PATTERN.match(match["month"]):
                raise FeedError(f"{path}: the month in the file name is not a valid YYYY-MM.")
            found.append(
                _Extract(feed, match["month"], path, f"{feed}/{path.name}", match["ext"], -1)
            )
    if not found:
        raise FeedError(f"{raw}: no extracts found (<feed>/<feed>_<YYYY-MM>.parquet).")
    latest = max(e.month for e in found)
    version = versions.check_version_label(version) if version is not None else latest
    later = [e for e in found if e.month > version]
    if later:
        log.info("Version %s: leaving out %d extracts of later months", version, len(later))
    chosen = [e for e in found if e.month <= version]
    for feed in schema.RAW_FEEDS:
        if not any(e.feed == feed for e in chosen):
            raise FeedError(f"{raw / feed}: no extract up to {version} for feed '{feed}'.")
    dupes = {(e.feed, e.month) for e in chosen if e.fmt == "csv"} & {
        (e.feed, e.month) for e in chosen if e.fmt == "parquet"
    }
    if dupes:
        feed, month = sorted(dupes)[0]
        raise FeedError(
            f"{raw / feed}: both a .parquet and a .csv extract for {month}; keep one of them."
        )
    return version, chosen


def _check_raw_manifest(raw: Path, version: str, extracts: list[_Extract]) -> None:
    """Compare the extracts with ``RAW/MANIFEST.json`` (when the provider sent one)."""
    path = raw / "MANIFEST.json"
    if not path.is_file():
        return
    try:
        entries = json.loads(path.read_text(encoding="utf-8")).get("files", [])
        listed = {e["path"]: e for e in entries}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FeedError(f"{path}: not a readable manifest ({exc}).") from exc
    present = {e.relative: e for e in extracts}
    for relative, entry in listed.items():
        match = _FILE_NAME.match(Path(relative).name)
        if match is None or match["month"] > version or relative.startswith("reference/"):
            continue
        extract = present.get(relative)
        if extract is None:
            raise FeedError(f"{raw / relative}: listed in {path} but missing.")
        if entry.get("sha256") and entry["sha256"] != extract.sha256:
            raise FeedError(
                f"{extract.path}: content differs from {path} (sha256 mismatch): truncated, "
                "corrupted or changed after delivery. Ask the provider to resend it."
            )
        if extract.rows >= 0 and "rows" in entry and int(entry["rows"]) != extract.rows:
            raise FeedError(
                f"{extract.path}: {extract.rows} rows but {path} lists {entry['rows']}."
            )


def _read_csv(extract: _Extract, table: schema.Table) -> pa.Table:
    try:
        with open(extract.path, encoding="utf-8") as fh:
            header = fh.readline().strip().split(",")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedError(f"{extract.path}: cannot read the CSV header: {exc}") from exc
    header = [h.strip().strip('"') for h in header]
    _check_columns(extract.path, header, table)
    try:
        data = pacsv.read_csv(
            extract.path,
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header},
                strings_can_be_null=False,
                include_columns=table.column_names,
            ),
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise FeedError(
            f"{extract.path}: not a well-formed CSV extract (truncated or corrupt?): {exc}"
        ) from exc
    return data


MONTHLY_COSTED = ("social_care_packages", "hospice_episodes")  # costed per month open


def _link_partitions(previous: Path, target: Path, skip: set[int], prefix: str) -> None:
    """Hard-link ``previous/year=Y/<prefix>-*.parquet`` into ``target`` for years not in skip."""
    if not previous.is_dir():
        return
    pattern = re.compile(rf"^{re.escape(prefix)}-[0-9-]+\.parquet$")
    for folder in sorted(previous.glob("year=*")):
        year = folder.name.removeprefix("year=")
        if not year.isdigit() or int(year) in skip:
            continue
        for f in sorted(folder.iterdir()):
            if pattern.match(f.name):
                (target / folder.name).mkdir(parents=True, exist_ok=True)
                os.link(f, target / folder.name / f.name)


@dataclass
class _Plan:
    """How an incremental build reuses the previous version (see :mod:`.versions`)."""

    previous: str
    manifest: dict
    report: dict
    new_months: list[str]
    relinked: dict[str, int] = field(default_factory=dict)
    rewritten: dict[str, list[int]] = field(default_factory=dict)
    appended: dict[str, list[int]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- build
class _Builder:
    def __init__(self, raw: Path, out: Path, key: bytes, version: str, extracts: list[_Extract]):
        self.raw, self.out, self.key, self.version = raw, out, key, version
        self.extracts = extracts
        self.work = versions.new_temp_dir(out / "restricted", f"work-{version}")
        self.con = duckdb.connect()
        self.con.execute(f"SET memory_limit = '{_MEMORY_LIMIT}'")
        self.con.execute(f"SET temp_directory = '{self.work / 'spill'}'")
        self.con.execute("SET preserve_insertion_order = false")
        self.con.execute("SET enable_progress_bar = false")
        self.checks: dict[str, list] = {}
        self.counts: dict[str, pd.DataFrame] = {}
        self.reasons: list[dict] = []
        self.corrections: dict[str, int] = {}
        self.dropped: dict[str, bool] = {}  # feed -> whether any record_id repeats
        self.table_rows: dict[str, int] = {}
        self.published_rows: dict[str, int] = {}
        self.schemas: dict[str, str] = {}
        self.staged_ids: dict[str, bool] = {}  # feed -> stage holds person_id (else person_key)
        self._register_has_ids = False
        self.previous: str | None = None
        self._hashing: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: tuple[concurrent.futures.Future, pa.ChunkedArray] | None = None

    def close(self) -> None:
        if self._hashing is not None:
            self._hashing.shutdown(cancel_futures=True)
        self.con.close()
        shutil.rmtree(self.work, ignore_errors=True)

    # ---------------------------------------------------------------- reading
    def _register_files(self) -> None:
        rows = [
            (i, str(e.path), e.relative, e.month, _month_end(e.month))
            for i, e in enumerate(self.extracts)
        ]
        frame = pd.DataFrame(rows, columns=["_file", "_path", "_relative", "_month", "_month_end"])
        # Staged rows carry the file id, not the month: within a feed, a later extract month has
        # a greater file id (the extracts are listed in file-name order), which the corrections
        # rely on ("the latest extract wins" = the greatest file id).
        for feed in schema.RAW_FEEDS:
            ids = [(e.month, i) for i, e in enumerate(self.extracts) if e.feed == feed]
            if ids != sorted(ids):
                raise BuildError(f"Extracts of '{feed}' are not listed in month order.")
        self.con.register("files_df", frame)
        self.con.execute("CREATE TABLE files AS SELECT * FROM files_df")
        self.con.unregister("files_df")

    def _reference(self, name: str) -> None:
        table = schema.REFERENCE_TABLES[name]
        path = self.raw / "reference" / f"{name}.parquet"
        if not path.is_file():
            raise FeedError(f"{path}: reference table missing (written with the raw feeds).")
        _parquet_rows(path, table)
        cols = ", ".join(
            f"TRY_CAST({quote(c.name)} AS {duckdb_type(c.dtype)}) AS {quote(c.name)}"
            for c in table.columns
        )
        try:
            self.con.execute(
                f"CREATE TABLE ref_{name} AS SELECT {cols} FROM read_parquet({literal(str(path))})"
            )
        except duckdb.Error as exc:
            raise FeedError(f"{path}: cannot read the reference table: {exc}") from exc
        for c in table.columns:
            if c.required:
                bad = self.con.execute(
                    f"SELECT count(*) FROM ref_{name} WHERE {quote(c.name)} IS NULL"
                ).fetchone()[0]
                if bad:
                    raise FeedError(
                        f"{path}: {bad} row(s) with a missing or unparseable '{c.name}' "
                        f"(expected {c.dtype}); reference tables must be complete."
                    )

    def _raw_relation(self, feed: str, only: set[int] | None = None) -> tuple[str, dict[str, str]]:
        """SQL of one feed's raw rows (all its extracts, or the file ids ``only``) and types.

        All Parquet extracts of a feed are read by one multi-file scan; DuckDB's ``file_index``
        (position in the file list) maps to the file id, so no per-row file name is carried
        (45 million rows at Kent scale).
        """
        table = schema.RAW_FEEDS[feed]
        cols = ", ".join(quote(c) for c in table.column_names)
        parts = []
        parquet = [
            (i, e)
            for i, e in enumerate(self.extracts)
            if e.feed == feed and e.fmt == "parquet" and (only is None or i in only)
        ]
        if parquet:
            ids = [i for i, _ in parquet]
            if ids == list(range(ids[0], ids[0] + len(ids))):
                file_id = f"CAST(file_index AS INTEGER) + {ids[0]}"
            else:
                file_id = (
                    f"CAST([{', '.join(map(str, ids))}][CAST(file_index AS BIGINT) + 1] AS INTEGER)"
                )
            files = "[" + ", ".join(literal(str(e.path)) for _, e in parquet) + "]"
            schemas = {self.schemas.get(str(e.path)) for _, e in parquet}
            by_name = "true" if len(schemas) > 1 else "false"
            parts.append(
                f"SELECT {cols}, file_row_number + 1 AS _row, {file_id} AS _file "
                f"FROM read_parquet({files}, file_row_number = true, union_by_name = {by_name})"
            )
        tables = []
        for file_id, e in enumerate(self.extracts):
            if e.feed == feed and e.fmt == "csv" and (only is None or file_id in only):
                data = _read_csv(e, table)
                n = data.num_rows
                data = data.append_column("_row", pa.array(range(1, n + 1), pa.int64()))
                data = data.append_column("_file", pa.array([file_id] * n, pa.int32()))
                object.__setattr__(e, "rows", n)
                tables.append(data)
        if tables:
            self.con.register(f"csv_{feed}", pa.concat_tables(tables))
            parts.append(f"SELECT {cols}, _row, _file FROM csv_{feed}")
        if not parts:  # no file selected: the feed's columns, no rows
            return self._raw_relation(feed)[0] + " LIMIT 0", self._raw_relation(feed)[1]
        sql = " UNION ALL BY NAME ".join(f"({p})" for p in parts)
        types = dict(
            self.con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {sql})").fetchall()
        )
        return sql, types

    def _failing_file(self, feed: str, exc: Exception) -> FeedError:
        """Find which extract made DuckDB fail, so the error names the file."""
        for e in self.extracts:
            if e.feed != feed or e.fmt != "parquet":
                continue
            try:
                pq.read_table(e.path)
            except Exception as inner:
                return FeedError(f"{e.path}: corrupt or truncated Parquet data: {inner}")
            if str(e.path) in str(exc):
                break
        return FeedError(f"Feed '{feed}' could not be read ({self.raw / feed}): {exc}")

    # -------------------------------------------------------------- staging
    def stage_feed(
        self,
        feed: str,
        where: str | None = None,
        only: set[int] | None = None,
        append: bool = False,
    ) -> None:
        """Validate (and for linked feeds, link) every row into the table ``stage_<feed>``.

        DuckDB keeps the table in memory and spills to the work folder beyond its memory
        limit; one feed is staged at a time (plus the register), so memory stays bounded.
        Incremental builds stage the rows matching ``where`` of the files ``only``, and may
        ``append`` to the stage.
        """
        if self._pending is not None and (self._pending[0].done() or self._large(feed)):
            self._pseudonym_tables()  # large feeds wait for the HMACs, to stage final ids
        table = schema.RAW_FEEDS[feed]
        relation, types = self._raw_relation(feed, only)
        linked = feed != "registrations"
        checks = feed_checks(
            table, source_types=types, linked=linked, nhs_integer=None if linked else "_nhs_int"
        )
        self.checks[feed] = checks
        has_csv = any(e.feed == feed and e.fmt == "csv" for e in self.extracts)
        typed = ",\n".join(
            f"{typed_expression(c, types.get(c.name), trim=has_csv)} AS t_{c.name}"
            for c in table.columns
            if c.name != "nhs_number"
        )
        nhs = sql_nhs_normalise("CAST(r.nhs_number AS VARCHAR)")
        join = "LEFT JOIN register g ON g.nhs = t._nhs" if linked else ""
        # Event feeds staged once the HMACs are done carry the final person_id (no join when
        # the table is written); the others carry the register's 4-byte key.
        with_ids = (
            self.staged_ids[feed]
            if append
            else linked and feed in EVENT_TABLES and self._register_has_ids
        )
        person = (
            "g.pk AS _person_id" + (", g.person_id AS _final_id" if with_ids else "")
            if linked
            else "NULL AS _person_id, TRY_CAST(t._nhs AS BIGINT) AS _nhs_int"
        )
        if not append:
            self.staged_ids[feed] = with_ids
        out_cols = self._stage_columns(feed)
        where_sql = f"WHERE {where}" if where else ""
        sql = f"""
        {f"INSERT INTO stage_{feed}" if append else f"CREATE TABLE stage_{feed} AS"} (
          WITH raw AS ({relation}),
          typed AS (SELECT r.*, {nhs} AS _nhs, {typed} FROM raw r),
          linked AS (SELECT t.*, {person} FROM typed t {join} {where_sql}),
          dated AS (
            SELECT l.*, f._month, f._month_end FROM linked l JOIN files f ON f._file = l._file
          ),
          checked AS (SELECT *, {problem_case(checks)} AS _problem FROM dated)
          SELECT _file, _row, t_record_id AS record_id, {out_cols},
                 _problem, {value_case(checks)} AS _value
          FROM checked
        )
        """
        # DuckDB estimates a multi-file Parquet scan from its first file (a short first month)
        # and would build the join's hash table on the feed's rows instead of the register's
        # (20 CPU-seconds more for prescriptions): keep the build side as written.
        self.con.execute("SET disabled_optimizers = 'build_side_probe_side'")
        try:
            self.con.execute(sql)
        except duckdb.Error as exc:
            raise self._failing_file(feed, exc) from exc
        finally:
            self.con.execute("RESET disabled_optimizers")

    def hashing(self) -> bool:
        """Whether the register's HMACs are still being computed on the worker thread."""
        return self._pending is not None and not self._pending[0].done()

    def _large(self, feed: str) -> bool:
        """Whether a feed holds at least a tenth of all raw rows."""
        rows = _rows_per_feed(self.extracts)
        return 10 * rows.get(feed, 0) >= sum(rows.values()) > 0

    def drop_stage(self, feed: str) -> None:
        """Free a feed's staged rows once its table, quarantine and costs are written."""
        self.con.execute(f"DROP TABLE IF EXISTS stage_{feed}")
        self.con.execute(f"DROP TABLE IF EXISTS drop_{feed}")

    def _stage_columns(self, feed: str) -> str:
        if feed == "registrations":
            return (
                "_nhs, t_sex AS sex, CAST(year(t_date_of_birth) AS SMALLINT) AS birth_year, "
                "CAST(month(t_date_of_birth) AS TINYINT) AS birth_month, t_uprn AS uprn, "
                "t_practice_code AS practice_code, t_postcode_lsoa AS lsoa_code, "
                "t_registration_start AS registration_start, "
                "t_registration_end AS registration_end"
            )
        if feed == "deaths":
            return (
                "_person_id AS person_key, t_date_of_death AS date_of_death, "
                "t_underlying_cause_icd10 AS underlying_cause_icd10"
            )
        research = schema.RESEARCH_TABLES[feed]
        cols = ["_final_id AS person_id" if self.staged_ids[feed] else "_person_id AS person_key"]
        for c in research.columns:
            # extract_month equals the file's month on every published row (a row where it
            # differs is quarantined), so it is taken from the file id when a table is written.
            if c.name in ("person_id", "is_emergency", "is_elective", "extract_month"):
                continue
            cols.append(f"t_{c.name} AS {quote(c.name)}")
        return ", ".join(cols)

    def build_register(self) -> None:
        """Population register: distinct valid NHS numbers -> integer ``pk`` -> ``person_id``.

        Feeds are linked on the NHS number text and carry the 4-byte ``pk``; the 64-bit
        ``person_id`` (keyed HMAC, computed once per person) is joined only when a table is
        written. UPRNs -> ``household_id`` likewise.

        The register (``nhs``, ``pk``) is created at once; the HMACs (about 2 million at Kent
        scale, Python's hashlib, one core) are computed on a worker thread while DuckDB stages
        the next feeds on the other cores, and the tables ``person_ids`` and ``households``
        are created when first needed (:meth:`_pseudonym_tables`).
        """
        values = (
            self.con.execute(
                "SELECT DISTINCT _nhs FROM stage_registrations WHERE _problem IS NULL ORDER BY _nhs"
            )
            .to_arrow_table()
            .column(0)
        )
        frame = pa.table({"nhs": values, "pk": pa.array(range(len(values)), pa.int32())})
        self.con.register("register_arrow", frame)
        self.con.execute("CREATE TABLE register AS SELECT nhs, pk FROM register_arrow")
        self.con.unregister("register_arrow")
        uprns = (
            self.con.execute(
                "SELECT DISTINCT uprn FROM stage_registrations "
                "WHERE _problem IS NULL AND uprn IS NOT NULL"
            )
            .to_arrow_table()
            .column(0)
        )
        nhs_texts = values.cast(pa.string()).to_pylist()
        uprn_texts = uprns.cast(pa.string()).to_pylist()
        key = self.key

        def hash_all() -> tuple[np.ndarray, np.ndarray]:
            return (
                pseudonym.pseudonym_ints(key, nhs_texts),
                pseudonym.pseudonym_ints(key, uprn_texts, prefix=pseudonym.HOUSEHOLD_PREFIX),
            )

        self._hashing = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending = (self._hashing.submit(hash_all), uprns)

    def _pseudonym_tables(self) -> None:
        """Create ``person_ids(pk, person_id)`` and ``households(value, household_id)`` once
        the worker thread of :meth:`build_register` has hashed them (waits if needed)."""
        if self._pending is None:
            return
        future, uprns = self._pending
        person_ids, household_ids = future.result()
        self._pending = None
        self._hashing.shutdown()
        # Distinct NHS numbers (UPRNs) must get distinct ids, or two people would merge.
        pseudonym.check_distinct(person_ids, "NHS numbers in the population register")
        pseudonym.check_distinct(household_ids, "UPRNs")
        persons = pa.table(
            {
                "pk": pa.array(range(len(person_ids)), pa.int32()),
                "person_id": pa.array(person_ids, pa.int64()),
            }
        )
        households = pa.table({"value": uprns, "household_id": pa.array(household_ids, pa.int64())})
        for name, frame in (("person_ids", persons), ("households", households)):
            self.con.register(f"{name}_arrow", frame)
            self.con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
            self.con.unregister(f"{name}_arrow")
        # Feeds staged from now on link straight to the final person_id.
        self.con.execute(
            "CREATE OR REPLACE TABLE register AS "
            "SELECT g.nhs, g.pk, i.person_id FROM register g JOIN person_ids i USING (pk)"
        )
        self._register_has_ids = True

    # ----------------------------------------------------------- corrections
    def resolve_duplicates(self, feed: str) -> None:
        """Latest extract wins per record_id; earlier copies in the same extract are duplicates.

        A first pass keeps the 64-bit hashes of ``record_id`` that occur more than once among
        the valid rows; when there are none (most feeds: no corrections, no duplicates) the
        search stops there, an exact result since equal ids have equal hashes. Otherwise only
        the rows with a repeated hash are ranked (the window is exact on ``record_id``).
        """
        # The hashes are sorted by numpy (about 1 CPU-second for 17 million, a fifth of a
        # DuckDB GROUP BY with as many groups); equal neighbours are the repeated ones.
        hashes = np.sort(
            np.asarray(
                self.con.execute(
                    f"SELECT hash(record_id) AS h FROM stage_{feed} WHERE _problem IS NULL"
                ).fetchnumpy()["h"],
                dtype=np.uint64,
            )
        )
        repeated_values = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        del hashes
        self.con.register("repeated_arrow", pa.table({"h": pa.array(repeated_values, pa.uint64())}))
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE repeated_hashes AS SELECT h FROM repeated_arrow"
        )
        self.con.unregister("repeated_arrow")
        repeated = len(repeated_values)
        self.dropped[feed] = repeated > 0
        which = (
            "_problem IS NULL AND hash(record_id) IN (SELECT h FROM repeated_hashes)"
            if repeated
            else "FALSE"
        )
        self.con.execute(
            f"""CREATE TABLE drop_{feed} AS
            WITH repeated AS (
              SELECT record_id, _file, _row FROM stage_{feed}
              WHERE {which}
            ),
            ranked AS (
              SELECT *,
                row_number() OVER (PARTITION BY record_id ORDER BY _file DESC, _row DESC) AS _rank,
                max(_row) OVER (PARTITION BY record_id, _file) AS _last_in_file
              FROM repeated
            )
            SELECT _file, _row, record_id,
                   CASE WHEN _row < _last_in_file THEN 'duplicate' ELSE 'superseded' END AS kind
            FROM ranked WHERE _rank > 1"""
        )
        self.corrections[feed] = self.con.execute(
            f"SELECT count(*) FROM drop_{feed} WHERE kind = 'superseded'"
        ).fetchone()[0]
        self.con.execute("DROP TABLE repeated_hashes")

    def final_rows(self, feed: str) -> str:
        """SQL of the rows of a feed that are published."""
        if not self.dropped.get(feed, True):
            return f"(SELECT * FROM stage_{feed} WHERE _problem IS NULL)"
        return (
            f"(SELECT s.* FROM stage_{feed} s ANTI JOIN drop_{feed} d "
            f"ON d._file = s._file AND d._row = s._row WHERE s._problem IS NULL)"
        )

    # ------------------------------------------------------------- quarantine
    def write_quarantine(self, feed: str, folder: Path, *, carried: bool = False) -> None:
        """Write the feed's quarantine: staged rows with a problem and within-extract duplicates.

        Incremental builds pass ``carried``: the previous version's quarantine rows of rows
        that were not re-staged are kept as they were (a row's checks depend only on the row,
        its file, the reference tables and the register, which only grows; rows that the
        grown register links now are re-staged).
        """
        checks = self.checks[feed]
        reasons = pd.DataFrame(
            {
                "_problem": range(len(checks)),
                "field": [c.field for c in checks],
                "reason": [c.reason for c in checks],
            }
        )
        self.con.register("reasons_df", reasons)
        self.con.execute(f"CREATE OR REPLACE TABLE reasons_{feed} AS SELECT * FROM reasons_df")
        self.con.unregister("reasons_df")
        path = folder / f"{feed}.parquet"
        old = ""
        if carried:
            old = f"""UNION ALL
              SELECT {literal(feed)}, f._relative, q.row_number, q.record_id, q.extract_month,
                     q.field, q.reason, q.value
              FROM read_parquet({literal(str(self._carried_path(feed)))}) q
              JOIN files f ON f._relative = q.source_file
              WHERE NOT EXISTS (SELECT 1 FROM stage_{feed} s
                                WHERE s._file = f._file AND s._row = q.row_number)"""
        self.con.execute(
            f"""COPY (
              SELECT {literal(feed)} AS feed, f._relative AS source_file, s._row AS row_number,
                     s.record_id, f._month AS extract_month, r.field, r.reason, s._value AS value
              FROM stage_{feed} s JOIN reasons_{feed} r USING (_problem)
              JOIN files f ON f._file = s._file
              UNION ALL
              SELECT {literal(feed)}, f._relative, d._row, d.record_id, f._month,
                     'record_id', {literal(DUPLICATE_REASON)}, d.record_id
              FROM drop_{feed} d JOIN files f ON f._file = d._file WHERE d.kind = 'duplicate'
              {old}
            ) TO {literal(str(path))} ({PARQUET})"""
        )
        self.con.execute(
            f"CREATE VIEW quarantine_{feed} AS SELECT * FROM read_parquet({literal(str(path))})"
        )

    def _carried_path(self, feed: str) -> Path:
        """The previous version's quarantine of ``feed`` (incremental builds)."""
        return self.out / "restricted" / "quarantine" / str(self.previous) / f"{feed}.parquet"

    # -------------------------------------------------------------- reconcile
    def reconcile(
        self, feed: str, files: list[int] | None = None, carried: pd.DataFrame | None = None
    ) -> None:
        """Check rows in = rows linked + rows quarantined for every extract of the feed.

        Incremental builds stage only some rows of the older extracts: their counts are
        ``carried`` (``_relative``, ``rows_in`` and ``rows_linked`` from the previous version's
        report, adjusted for re-staged rows); rows quarantined come from this version's
        quarantine as for every extract, so the check still compares two independent counts.
        ``files`` are the fully staged (new) extracts.
        """
        counts = self.con.execute(
            f"""
            WITH staged AS (
              SELECT _file, count(*) AS rows_staged,
                     count(*) FILTER (WHERE _problem IS NULL) AS rows_valid
              FROM stage_{feed} GROUP BY _file
            ),
            dup AS (SELECT _file, count(*) AS rows_dup FROM drop_{feed}
                    WHERE kind = 'duplicate' GROUP BY _file),
            quarantined AS (
              SELECT source_file AS _relative, count(*) AS rows_quarantined,
                     count(*) FILTER (WHERE field = 'nhs_number') AS rows_unlinkable
              FROM quarantine_{feed} GROUP BY source_file
            )
            SELECT f._file, f._path, f._relative, f._month,
                   coalesce(s.rows_staged, 0) AS rows_staged,
                   coalesce(s.rows_valid, 0) - coalesce(d.rows_dup, 0) AS rows_linked,
                   coalesce(q.rows_quarantined, 0) AS rows_quarantined,
                   coalesce(q.rows_unlinkable, 0) AS rows_unlinkable
            FROM files f
            LEFT JOIN staged s USING (_file) LEFT JOIN dup d USING (_file)
            LEFT JOIN quarantined q USING (_relative)
            WHERE f._relative LIKE {literal(feed + "/%")}
            ORDER BY f._month
            """
        ).df()
        expected = {str(e.path): e.rows for e in self.extracts if e.feed == feed}
        counts["rows_in"] = counts["_path"].map(expected).astype("int64")
        if files is not None:
            old = ~counts["_file"].isin(files)
            prior = carried.set_index("_relative") if carried is not None else pd.DataFrame()
            for column in ("rows_in", "rows_linked"):
                counts.loc[old, column] = counts.loc[old, "_relative"].map(prior[column])
                counts.loc[old, "rows_staged"] = counts.loc[old, "rows_in"]
            missing = counts[old & counts["rows_in"].isna()]
            if len(missing):
                raise BuildError(
                    f"{missing.iloc[0]['_path']}: no counts for this extract in the previous "
                    "version's linkage report; rebuild with --full."
                )
            counts = counts.astype({c: "int64" for c in _COUNT_COLUMNS + ["rows_staged"]})
        lost = counts[counts["rows_staged"] != counts["rows_in"]]
        if len(lost):
            first = lost.iloc[0]
            raise BuildError(
                f"{first['_path']}: {first['rows_in']} rows in the file but "
                f"{first['rows_staged']} were read."
            )
        broken = counts[counts["rows_in"] != counts["rows_linked"] + counts["rows_quarantined"]]
        if len(broken):
            first = broken.iloc[0]
            raise BuildError(
                f"{first['_path']}: rows in ({first['rows_in']}) != rows linked "
                f"({first['rows_linked']}) + rows quarantined ({first['rows_quarantined']})."
            )
        self.counts[feed] = counts
        if files is not None or feed in EVENT_TABLES:
            # Event tables: the rows of the written files are checked against rows linked -
            # corrections once written (_check_tables), which saves a pass over the stage.
            published = int(counts["rows_linked"].sum() - self.corrections[feed])
        else:
            published = self.con.execute(
                f"SELECT count(*) FROM {self.final_rows(feed)}"
            ).fetchone()[0]
        if published != counts["rows_linked"].sum() - self.corrections[feed]:
            raise BuildError(
                f"Feed '{feed}': {published} rows to publish, expected rows linked "
                f"({counts['rows_linked'].sum()}) - corrections ({self.corrections[feed]})."
            )
        self.published_rows[feed] = int(published)
        reasons = self.con.execute(
            f"SELECT field, reason, count(*) AS rows FROM quarantine_{feed} "
            "GROUP BY ALL ORDER BY rows DESC, field, reason"
        ).fetchall()
        self.reasons += [
            {"feed": feed, "field": f, "reason": r, "rows": int(n)} for f, r, n in reasons
        ]

    # ------------------------------------------------------------ incremental
    def incremental_feed(self, feed: str, tables: Path, quarantine: Path, plan: _Plan) -> None:
        """Add the new extracts of one event feed to the previous version's table.

        See :mod:`.versions` for the design. In short: the records *touched* by this version
        (a row in a new extract, or a row the previous version quarantined as not in the
        population register whose person is registered now) are staged with every earlier
        row of the same record, so the latest version of each is known. A touched record
        whose previously published row is replaced makes that row's event year *dirty*: dirty
        years are rewritten from all their raw rows. Rows newly published in other years are
        *appended* as a new file in the year folder. Every other file is hard-linked from the
        previous version, and the previous quarantine is carried over for rows not re-staged.
        """
        previous, version, con = plan.previous, self.version, self.con
        table = schema.RAW_FEEDS[feed]
        date_column = schema.RESEARCH_TABLES[feed].date_column
        con.execute(
            f"""CREATE TABLE prevq_{feed} AS
            SELECT f._file, q.row_number AS _row, q.reason, q.value, q.record_id
            FROM read_parquet({literal(str(self._carried_path(feed)))}) q
            JOIN files f ON f._relative = q.source_file"""
        )
        con.execute(
            f"""CREATE TABLE relinked_{feed} AS SELECT _file, _row, record_id FROM prevq_{feed}
            WHERE reason = {literal(NOT_IN_REGISTER_REASON)}
              AND {sql_nhs_normalise("value")} IN (SELECT nhs FROM register)"""
        )
        plan.relinked[feed] = int(
            con.execute(f"SELECT count(*) FROM relinked_{feed}").fetchone()[0]
        )
        new_ids = {i for i, e in enumerate(self.extracts) if e.feed == feed and e.month > previous}
        new_list = ", ".join(map(str, sorted(new_ids) or [-1]))
        relation, types = self._raw_relation(feed)
        has_csv = any(e.feed == feed and e.fmt == "csv" for e in self.extracts)
        record = typed_expression(table.column("record_id"), types.get("record_id"), trim=has_csv)
        when = typed_expression(table.column(date_column), types.get(date_column), trim=has_csv)
        # Record identity (a 64-bit hash: a collision only stages a few rows more) and event
        # year of every raw row: two columns, cheap.
        try:
            con.execute(
                f"CREATE TABLE keys_{feed} AS SELECT hash({record}) AS h, "
                f"year({when}) AS y, _file FROM ({relation})"
            )
        except duckdb.Error as exc:
            raise self._failing_file(feed, exc) from exc
        con.execute(
            f"""CREATE TABLE touched_{feed} AS
            SELECT DISTINCT h FROM keys_{feed} WHERE _file IN ({new_list})
            UNION SELECT hash(record_id) FROM relinked_{feed}"""
        )

        def files_of(hashes: str) -> set[int]:
            rows = con.execute(
                f"SELECT DISTINCT _file FROM keys_{feed} WHERE h IN (SELECT h FROM {hashes})"
            ).fetchall()
            return {r[0] for r in rows}

        self.stage_feed(
            feed,
            where=f"t._file IN ({new_list}) OR hash(t.t_record_id) IN (SELECT h FROM touched_{feed})",
            only=files_of(f"touched_{feed}") | new_ids,
        )
        # Per touched record: the row the previous version published (the latest of its rows
        # linked then) and the row published now (the latest valid row).
        order = "(CAST(_file AS BIGINT) << 32) + _row"
        con.execute(
            f"""CREATE TABLE moves_{feed} AS
            WITH before AS (
              SELECT record_id, max({order}) AS k FROM stage_{feed} s
              WHERE _file NOT IN ({new_list}) AND NOT EXISTS (
                SELECT 1 FROM prevq_{feed} q WHERE q._file = s._file AND q._row = s._row)
              GROUP BY record_id),
            after AS (SELECT record_id, max({order}) AS k FROM stage_{feed}
                      WHERE _problem IS NULL GROUP BY record_id)
            SELECT b.k AS old_k, a.k AS new_k
            FROM before b FULL JOIN after a USING (record_id) WHERE b.k IS DISTINCT FROM a.k"""
        )
        year_of = f"year(s.{quote(date_column)})"
        dirty = sorted(
            r[0]
            for r in con.execute(
                f"""SELECT DISTINCT {year_of} FROM stage_{feed} s JOIN moves_{feed} m
                ON m.old_k = (CAST(s._file AS BIGINT) << 32) + s._row"""
            ).fetchall()
        )
        con.execute(
            f"""CREATE TABLE added_{feed} AS SELECT CAST(new_k >> 32 AS INTEGER) AS _file,
            CAST(new_k & 4294967295 AS BIGINT) AS _row FROM moves_{feed} WHERE new_k IS NOT NULL"""
        )
        if dirty:
            # Rewrite the dirty years whole: stage every other record with a row in them.
            con.execute(
                f"""CREATE TABLE records_{feed} AS SELECT DISTINCT h FROM keys_{feed}
                WHERE y IN ({", ".join(map(str, dirty))})
                AND h NOT IN (SELECT h FROM touched_{feed})"""
            )
            self.stage_feed(
                feed,
                where=f"hash(t.t_record_id) IN (SELECT h FROM records_{feed})",
                only=files_of(f"records_{feed}"),
                append=True,
            )
        con.execute(f"DROP TABLE keys_{feed}")
        self.resolve_duplicates(feed)
        appended = sorted(
            r[0]
            for r in con.execute(
                f"""SELECT DISTINCT {year_of} FROM stage_{feed} s JOIN added_{feed} a
                ON a._file = s._file AND a._row = s._row"""
            ).fetchall()
            if r[0] not in dirty
        )
        # Corrections before (rows linked then) and now, over the staged records: every row of
        # every staged record is staged.
        pairs = "count(DISTINCT (record_id, _file)) - count(DISTINCT record_id)"
        now = con.execute(f"SELECT {pairs} FROM stage_{feed} WHERE _problem IS NULL").fetchone()[0]
        before = con.execute(
            f"""SELECT {pairs} FROM stage_{feed} s WHERE _file NOT IN ({new_list})
            AND NOT EXISTS (SELECT 1 FROM prevq_{feed} q WHERE q._file = s._file
                            AND q._row = s._row)"""
        ).fetchone()[0]
        if now != self.corrections[feed]:
            raise BuildError(
                f"Feed '{feed}': inconsistent correction counts ({now} != "
                f"{self.corrections[feed]}); rebuild with --full."
            )
        prior = {f["feed"]: f for f in plan.report["feeds"]}[feed]
        self.corrections[feed] = int(prior["corrections_applied"] + now - before)
        self.write_quarantine(feed, quarantine, carried=True)
        # Rows linked per older extract: the previous count, plus re-staged rows linked now,
        # minus re-staged rows linked before (those not in the previous quarantine).
        delta = con.execute(
            f"""SELECT f._relative,
              count(*) FILTER (WHERE s._problem IS NULL AND d._row IS NULL)
              - count(*) FILTER (WHERE q._row IS NULL) AS delta
            FROM stage_{feed} s JOIN files f ON f._file = s._file
            LEFT JOIN (SELECT _file, _row FROM drop_{feed} WHERE kind = 'duplicate') d
              ON d._file = s._file AND d._row = s._row
            LEFT JOIN prevq_{feed} q ON q._file = s._file AND q._row = s._row
            WHERE s._file NOT IN ({new_list}) GROUP BY f._relative"""
        ).df()
        months = pd.DataFrame(
            [m for m in plan.report["months"] if m["feed"] == feed],
            columns=["extract_month", "rows_in", "rows_linked"],
        )
        relative = {e.month: e.relative for e in self.extracts if e.feed == feed}
        months["_relative"] = months["extract_month"].map(relative)
        change = months["_relative"].map(delta.set_index("_relative")["delta"]).fillna(0)
        months["rows_linked"] = months["rows_linked"] + change.astype("int64")
        self.reconcile(feed, files=sorted(new_ids), carried=months)
        # Publish: links for every clean year, dirty years rewritten, appended rows added.
        old_tables = self.out / "versions" / previous / "tables"
        _link_partitions(old_tables / feed, tables / feed, set(dirty), "part")
        # Costs per activity are written with the table's files; per month open, whole.
        priced = feed not in MONTHLY_COSTED
        if priced:
            _link_partitions(old_tables / "costs", tables / "costs", set(dirty), feed)
        if appended:
            self.write_event_table(
                feed,
                tables,
                years=appended,
                rows=f"added_{feed}",
                name=f"{version}-",
                costs=priced,
            )
        # Dirty years rewritten whole (and the empty table's schema file if nothing is left).
        self.write_event_table(feed, tables, years=dirty, costs=priced)
        if not priced:
            self.write_costs_part(feed, tables)
        plan.rewritten[feed] = dirty
        plan.appended[feed] = appended
        for name in ("prevq", "relinked", "touched", "records", "moves", "added"):
            con.execute(f"DROP TABLE IF EXISTS {name}_{feed}")

    # ----------------------------------------------------------------- tables
    def _copy(self, select: str, target: Path) -> None:
        """``COPY`` a query to ``target/part-0.parquet`` (unpartitioned tables)."""
        target.mkdir(parents=True, exist_ok=True)
        self.con.execute(
            f"COPY ({select}) TO {literal(str(target / 'part-0.parquet'))} ({PARQUET})"
        )

    def _cast_select(self, table: schema.Table, source: str, *, year: str | None) -> str:
        cols = ", ".join(
            f"CAST({quote(c.name)} AS {duckdb_type(c.dtype)}) AS {quote(c.name)}"
            for c in table.columns
        )
        extra = f", CAST(year({quote(year)}) AS INTEGER) AS year" if year else ""
        return f"SELECT {cols}{extra} FROM {source}"

    def write_event_table(
        self,
        feed: str,
        tables: Path,
        years: list[int] | None = None,
        rows: str | None = None,
        name: str = "",
        costs: bool = False,
    ) -> None:
        """Write the feed's published rows, one file per event year, and their costs.

        Each large event year (at least 1/40 of the rows) is one ``COPY`` of the staged rows of
        that year to ``<feed>/year=YYYY/part-<name>0.parquet``, which costs about 30% less
        CPU than one ``COPY ... PARTITION_BY``; the many small years (GP events go back a
        century) share one ``PARTITION_BY (year)`` copy, since each ``COPY`` scans the stage.
        With ``costs`` (feeds costed per activity, not per month open) the same rows are costed
        in the same loop into ``costs/year=YYYY/<feed>-<name>0.parquet``, without reading the
        table back.

        Incremental builds write only ``years`` and/or only the rows in the table ``rows``
        (``_file``, ``_row``).
        """
        self._pseudonym_tables()
        table = schema.RESEARCH_TABLES[feed]
        date = f"s.{quote(table.date_column)}"
        only = []
        if rows is not None:
            only.append(
                f"EXISTS (SELECT 1 FROM {rows} a WHERE a._file = s._file AND a._row = s._row)"
            )
        if years is not None:
            only.append(f"year({date}) IN ({', '.join(map(str, years or [-1]))})")
        final = self.final_rows(feed)
        where = f" WHERE {' AND '.join(only)}" if only else ""
        counts = dict(
            self.con.execute(
                f"SELECT year({date}) AS y, count(*) FROM {final} s{where} GROUP BY y"
            ).fetchall()
        )
        total = sum(counts.values())
        large = sorted(y for y, n in counts.items() if 40 * n >= total)
        small = sorted(y for y in counts if y not in large)

        if self.staged_ids[feed]:
            person, join, staged_key = "s.person_id", "", "person_id"
        else:
            person, join = "i.person_id", " JOIN person_ids i ON i.pk = s.person_key"
            staged_key = "person_key"
        flags = ""
        if feed == "inpatient_spells":
            emergency = ", ".join(literal(v) for v in schema.ADMISSION_METHODS_EMERGENCY)
            elective = ", ".join(literal(v) for v in schema.ADMISSION_METHODS_ELECTIVE)
            flags = (
                f", s.admission_method IN ({emergency}) AS is_emergency, "
                f"s.admission_method IN ({elective}) AS is_elective"
            )

        def source(conditions: list[str]) -> str:
            return (
                f"(SELECT {person} AS person_id, s.* EXCLUDE ({staged_key}), "
                f"f._month AS extract_month{flags} "
                f"FROM {final} s JOIN files f ON f._file = s._file{join} "
                f"WHERE {' AND '.join(conditions)})"
            )

        priced = costs and feed not in MONTHLY_COSTED
        cost_table = schema.RESEARCH_TABLES["costs"]
        for year in large:
            rows_of_year = source(
                [*only, f"{date} >= DATE '{year}-01-01'", f"{date} < DATE '{year + 1}-01-01'"]
            )
            folder = tables / feed / f"year={year}"
            folder.mkdir(parents=True, exist_ok=True)
            self._copy_file(
                self._cast_select(table, rows_of_year, year=None), folder / f"part-{name}0.parquet"
            )
            body = self._costs_body(feed, rows_of_year) if priced else None
            if body is not None:
                folder = tables / "costs" / f"year={year}"
                folder.mkdir(parents=True, exist_ok=True)
                self._copy_file(
                    self._cast_select(cost_table, body, year=None),
                    folder / f"{feed}-{name}0.parquet",
                )
        if small:
            rest = source([*only, f"year({date}) IN ({', '.join(map(str, small))})"])
            self._copy_partitioned(
                self._cast_select(table, rest, year=table.date_column),
                tables / feed,
                f"part-{name}",
            )
            body = self._costs_body(feed, rest) if priced else None
            if body is not None:
                self._copy_partitioned(
                    self._cast_select(cost_table, body, year=cost_table.date_column),
                    tables / "costs",
                    f"{feed}-{name}",
                )
        if not any((tables / feed).rglob("*.parquet")):
            # No rows at all: one empty file with the schema, so the table still reads.
            self._copy(_empty_select(table), tables / feed)

    def _copy_file(self, select: str, path: Path) -> int:
        """``COPY`` a query to one Parquet file; an empty result leaves no file (nor folder)."""
        written = self.con.execute(f"COPY ({select}) TO {literal(str(path))} ({PARQUET})")
        count = int(written.fetchone()[0])
        if count == 0:
            path.unlink(missing_ok=True)
            if path.parent.is_dir() and not any(path.parent.iterdir()):
                path.parent.rmdir()
        return count

    def _copy_partitioned(self, select: str, target: Path, prefix: str) -> None:
        """``COPY`` a query with a ``year`` column to ``target/year=YYYY/<prefix>0.parquet``."""
        target.mkdir(parents=True, exist_ok=True)
        options = (
            f"{PARQUET}, PARTITION_BY (year), FILENAME_PATTERN '{prefix}{{i}}', "
            "OVERWRITE_OR_IGNORE true"
        )
        self.con.execute(f"COPY ({select}) TO {literal(str(target))} ({options})")

    def _costs_body(self, feed: str, source: str) -> str | None:
        """SQL of the costs of the research rows ``source`` of one feed (None: not costed)."""
        selects = costs_module.costs_selects(feed, source, _month_end(self.version))
        if not selects:
            return None
        return "(" + " UNION ALL ".join(f"({q})" for q in selects) + ")"

    def write_persons(self, tables: Path) -> None:
        """One row per registered person: the latest registration episode's details.

        "Latest" is the greatest (registration_start, extract, row), folded into one BIGINT
        sort key (days since 1800 << 44 | file << 32 | row; HUGEINT beyond 4096 extracts) so
        that DuckDB's ``arg_max`` compares integers, not structs. The register carries the
        final ``person_id`` by now, so no join to ``person_ids`` is needed.
        """
        self._pseudonym_tables()
        table = schema.RESEARCH_TABLES["persons"]
        registrations = self.final_rows("registrations")
        deaths = self.final_rows("deaths")
        if len(self.extracts) < 4096:
            order = (
                "(CAST(date_diff('day', DATE '1800-01-01', r.registration_start) AS BIGINT) << 44)"
                " + (CAST(r._file AS BIGINT) << 32) + r._row"
            )
        else:
            order = (
                "(CAST(date_diff('day', DATE '1800-01-01', r.registration_start) AS HUGEINT) "
                "<< 64) + (CAST(r._file AS HUGEINT) << 32) + r._row"
            )
        latest = ", ".join(
            f"arg_max({c}, _order) AS {c}"
            for c in (
                "household_id",
                "sex",
                "birth_year",
                "birth_month",
                "practice_code",
                "lsoa_code",
            )
        )
        source = f"""(
          WITH episodes AS (
            SELECT g.pk, g.person_id, h.household_id, r.* EXCLUDE (uprn), {order} AS _order
            FROM {registrations} r JOIN register g ON g.nhs = r._nhs
            LEFT JOIN households h ON h.value = r.uprn
          ),
          people AS (
            SELECT pk, any_value(person_id) AS person_id, {latest},
              min(registration_start) AS registration_start,
              CASE WHEN bool_or(registration_end IS NULL) THEN NULL
                   ELSE max(registration_end) END AS registration_end
            FROM episodes GROUP BY pk
          ),
          died AS (
            SELECT person_key AS pk,
              arg_max(date_of_death, (CAST(_file AS BIGINT) << 32) + _row) AS date_of_death,
              arg_max(underlying_cause_icd10, (CAST(_file AS BIGINT) << 32) + _row)
                AS death_cause_icd10
            FROM {deaths} GROUP BY person_key
          )
          SELECT p.* EXCLUDE (pk), d.date_of_death, d.death_cause_icd10
          FROM people p LEFT JOIN died d USING (pk)
        )"""
        # Build the joins' hash tables on the register and households as written (DuckDB
        # underestimates the registrations and would build on them).
        self.con.execute("SET disabled_optimizers = 'build_side_probe_side'")
        try:
            self._copy(self._cast_select(table, source, year=None), tables / "persons")
        finally:
            self.con.execute("RESET disabled_optimizers")

    def write_reference(self, name: str, tables: Path) -> None:
        table = schema.RESEARCH_TABLES[name]
        self._copy(self._cast_select(table, f"ref_{name}", year=None), tables / name)

    def write_costs_part(self, feed: str, tables: Path) -> None:
        """Cost a feed costed per month open (social care packages, hospice episodes).

        Its rows are read back from the feed's research table just written (small feeds), and
        the cost rows go to ``costs/year=YYYY/<feed>-0.parquet`` by the year of the month
        costed, which need not be the year the package started. Feeds costed per activity
        are costed while their table is written (:meth:`write_event_table`).
        """
        files = sorted((tables / feed).rglob("*.parquet"))
        listed = "[" + ", ".join(literal(str(f)) for f in files) + "]"
        body = self._costs_body(
            feed, f"(SELECT * FROM read_parquet({listed}, hive_partitioning = false))"
        )
        if not files or body is None:
            return
        table = schema.RESEARCH_TABLES["costs"]
        select = self._cast_select(table, body, year=table.date_column)
        self._copy_partitioned(select, tables / "costs", f"{feed}-")

    def finish_costs(self, tables: Path) -> None:
        """Make sure the costs table exists even if no feed had costed activity."""
        target = tables / "costs"
        if target.is_dir() and any(target.iterdir()):
            return
        self._copy(_empty_select(schema.RESEARCH_TABLES["costs"]), target)


# --------------------------------------------------------------------------------- helpers
def _rows_per_feed(extracts: list[_Extract]) -> dict[str, int]:
    """Raw rows of each feed (0 for a feed without extracts; unknown counts add nothing)."""
    rows = {feed: 0 for feed in schema.RAW_FEEDS}
    for e in extracts:
        rows[e.feed] += max(e.rows, 0)
    return rows


def _feed_order(extracts: list[_Extract]) -> list[str]:
    """The order feeds are built in: registrations (the register) and deaths first, then the
    event feeds from the smallest to the largest, so that the HMACs of the register (on a
    worker thread) are done before the large feeds are staged."""
    rows = _rows_per_feed(extracts)
    first = [f for f in ("registrations", "deaths") if f in rows]
    rest = sorted((f for f in schema.RAW_FEEDS if f not in first), key=lambda f: rows[f])
    return first + rest


def _empty_select(table: schema.Table) -> str:
    """SQL of no rows with the table's columns and types (an empty table's schema file)."""
    cols = ", ".join(
        f"CAST(NULL AS {duckdb_type(c.dtype)}) AS {quote(c.name)}" for c in table.columns
    )
    return f"SELECT {cols} WHERE FALSE"


def _schema_hash() -> str:
    payload = {
        layer: {
            name: [
                (c.name, c.dtype, c.required, c.allowed, c.pattern, c.minimum, c.maximum)
                for c in t.columns
            ]
            for name, t in tables.items()
        }
        for layer, tables in (("raw", schema.RAW_FEEDS), ("research", schema.RESEARCH_TABLES))
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _content_hash(
    inputs: list[dict], fingerprint: str, version: str, reference: dict[str, str]
) -> str:
    payload = {
        "reference": reference,
        "builder": BUILDER_VERSION,
        "version": version,
        "key": fingerprint,
        "schema": _schema_hash(),
        "unit_costs": costs_module.unit_costs_hash(),
        "inputs": sorted((i["file"], i["sha256"], i["rows"]) for i in inputs),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _table_listing(
    tables: Path, previous: tuple[Path, dict[str, dict]] | None = None
) -> dict[str, dict]:
    """Rows and files of every table; each file ``written`` or ``reused`` (hard link)."""
    known: dict[str, str] = {}
    if previous is not None:
        for info in previous[1].values():
            known.update({f["path"]: f["sha256"] for f in info["files"]})
    folders = sorted(p for p in tables.iterdir() if p.is_dir())
    files = {folder.name: sorted(folder.rglob("*.parquet")) for folder in folders}

    def entry(f: Path) -> dict:
        relative = str(f.relative_to(tables.parent))
        old = previous[0] / relative if previous is not None else None
        if old is not None and relative in known and old.exists() and os.path.samefile(f, old):
            return {"path": relative, "sha256": known[relative], "status": "reused"}
        return {"path": relative, "sha256": _sha256(f), "status": "written"}

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # hashlib frees the GIL
        entries = {name: list(pool.map(entry, paths)) for name, paths in files.items()}
    return {
        name: {
            "rows": sum(pq.read_metadata(f).num_rows for f in paths),
            "files": entries[name],
        }
        for name, paths in files.items()
    }


def _inputs_by_month(inputs: list[dict]) -> dict[str, dict[str, str]]:
    """``{extract_month: {file: sha256}}``: what a later incremental build compares."""
    months: dict[str, dict[str, str]] = {}
    for i in inputs:
        months.setdefault(i["extract_month"], {})[i["file"]] = i["sha256"]
    return dict(sorted(months.items()))


def _build_record(
    plan: _Plan | None, full_reason: str, extracts: list[_Extract], listing: dict
) -> dict:
    """The manifest's and report's ``build`` entry: full or incremental, and why."""
    files = [f for info in listing.values() for f in info["files"]]
    counts = {
        "files_written": sum(f["status"] == "written" for f in files),
        "files_reused": sum(f["status"] == "reused" for f in files),
    }
    if plan is None:
        return {"mode": "full", "reason": full_reason, **counts}
    return {
        "mode": "incremental",
        "previous": plan.previous,
        "new_months": plan.new_months,
        "partitions_rewritten": plan.rewritten,
        "partitions_appended": plan.appended,
        "rows_relinked": plan.relinked,
        **counts,
    }


def _previous_plan(
    out: Path, version: str, extracts: list[_Extract], fingerprint: str, reference: dict
) -> tuple[_Plan | None, str]:
    """The latest earlier version to build on, or ``None`` and why a full build is needed."""
    earlier = [v for v in versions.list_versions(out) if v < version]
    if not earlier:
        return None, "no earlier version in this KID folder"
    previous = earlier[-1]
    try:
        manifest = versions.read_manifest(out, previous)
        report_path = out / "reports" / f"linkage_{previous}.json"
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (BuildError, OSError, ValueError) as exc:
        return None, f"version {previous} cannot be read ({exc})"
    checks = {
        "builder_version": BUILDER_VERSION,
        "key_fingerprint": fingerprint,
        "schema_hash": _schema_hash(),
        "unit_costs_hash": costs_module.unit_costs_hash(),
        "reference": reference,
    }
    for name, expected in checks.items():
        if manifest.get(name) != expected:
            return None, f"version {previous} differs in {name.replace('_', ' ')}"
    if not (out / "restricted" / "quarantine" / previous).is_dir():
        return None, f"the quarantine of version {previous} is missing"
    sent = {e.relative: e.sha256 for e in extracts if e.month <= previous}
    used = {i["file"]: i["sha256"] for i in manifest.get("inputs", [])}
    if sent != used:
        changed = sorted(set(sent.items()) ^ set(used.items()))
        return None, (
            f"extracts up to {previous} changed since version {previous} was built "
            f"(e.g. {changed[0][0]}): a provider re-sent or removed an old month"
        )
    new_months = sorted({e.month for e in extracts if e.month > previous})
    return _Plan(previous, manifest, report, new_months), ""


_COUNT_COLUMNS = ["rows_in", "rows_linked", "rows_quarantined", "rows_unlinkable"]


def _count_records(frame: pd.DataFrame, by: list[str]) -> list[dict]:
    """Sum the per-file counts by ``by`` and add rows_malformed and linkage_rate."""
    sums = frame.groupby(by, sort=True)[_COUNT_COLUMNS].sum().reset_index()
    sums["rows_malformed"] = sums["rows_quarantined"] - sums["rows_unlinkable"]
    rows_in = sums["rows_in"].where(sums["rows_in"] > 0)
    sums["linkage_rate"] = ((sums["rows_in"] - sums["rows_unlinkable"]) / rows_in).fillna(1.0)
    records = sums.to_dict("records")
    return [
        {k: (int(v) if k in _COUNT_COLUMNS or k == "rows_malformed" else v) for k, v in r.items()}
        for r in records
    ]


def _report(builder: _Builder, version: str, inputs: list[dict], tables: dict) -> dict:
    frame = pd.concat(
        [counts.assign(feed=feed) for feed, counts in builder.counts.items()], ignore_index=True
    )
    months = _count_records(
        frame.rename(columns={"_month": "extract_month"}), ["feed", "extract_month"]
    )
    order = {feed: i for i, feed in enumerate(schema.RAW_FEEDS)}
    months.sort(key=lambda m: (order[m["feed"]], m["extract_month"]))
    feeds = sorted(_count_records(frame, ["feed"]), key=lambda f: order[f["feed"]])
    for f in feeds:
        f["corrections_applied"] = int(builder.corrections[f["feed"]])
        f["rows_published"] = builder.published_rows[f["feed"]]
    return {
        "version": version,
        "definitions": {
            "rows_linked": "rows matched to the population register and well formed",
            "rows_unlinkable": "rows whose NHS number is missing, invalid or not in the register",
            "rows_malformed": "linkable rows that fail a data-dictionary check",
            "linkage_rate": "(rows_in - rows_unlinkable) / rows_in",
            "corrections_applied": "linked rows replaced by a later extract (same record_id)",
            "rows_published": "rows_linked - corrections_applied (rows in the research table)",
        },
        "feeds": feeds,
        "months": months,
        "reasons": builder.reasons,
        "inputs": len(inputs),
        "tables": {name: info["rows"] for name, info in tables.items()},
    }


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import Progress

    return Progress(transient=True)


# ------------------------------------------------------------------------------------ build
def build(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    key_file: str | os.PathLike[str],
    version: str | None = None,
    progress: bool = False,
    full: bool = False,
) -> BuildResult:
    """Link, pseudonymise, validate and publish a KID version from raw monthly feeds.

    When ``out`` already holds an earlier version built from the same older extracts (same
    hashes), the new version is built incrementally from it (see :mod:`.versions`);
    ``full=True`` forces a full rebuild. Either way the result is the same tables.

    Parameters
    ----------
    raw
        Raw feeds folder: ``<feed>/<feed>_<YYYY-MM>.parquet`` (or ``.csv``) and
        ``reference/{practices,lsoas}.parquet``.
    out
        The KID folder. The version is added under ``versions/``; ``CURRENT`` points at it.
    key_file
        The secret pseudonymisation key (``kid key new``), kept outside the KID folder.
    version
        Version label ``YYYY-MM``; extracts of later months are left out. Default: the latest
        extract month found.
    progress
        Show a progress bar.
    full
        Rebuild from all extracts even when an earlier version could be reused.

    Returns
    -------
    BuildResult

    Raises
    ------
    FeedError
        A raw file is missing, unreadable, truncated or lacks columns (the message names it).
    BuildError
        The key file is invalid, reconciliation failed, or ``versions/<version>`` already holds a
        different build. The previous version and ``CURRENT`` are left as they were.

    Examples
    --------
    >>> build("no/such/raw", "kid", key_file="no.key")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    kidresearch.errors.BuildError: Key file no.key does not exist; ...
    """
    started = time.perf_counter()
    raw, out = Path(raw), Path(out)
    key = pseudonym.read_key(key_file)
    if out.resolve() in Path(key_file).resolve().parents:
        log.warning(
            "The key file %s lies inside the KID folder %s; keep it outside.", key_file, out
        )
    version, extracts = _discover(raw, version)

    bar = _progress(progress)
    task = None
    if bar is not None:
        bar.start()
        task = bar.add_task("Checking extracts", total=len(schema.RAW_FEEDS) + 5)

    def step(text: str) -> None:
        log.info("%6.1f s  %s", time.perf_counter() - started, text)
        if bar is not None and task is not None:
            bar.update(task, advance=1, description=text)

    try:
        checked = []
        schemas: dict[str, str] = {}
        for e in extracts:
            rows = (
                _parquet_rows(e.path, schema.RAW_FEEDS[e.feed], schemas)
                if e.fmt == "parquet"
                else -1
            )
            checked.append(_Extract(e.feed, e.month, e.path, e.relative, e.fmt, rows))
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            hashes = list(pool.map(_sha256, [e.path for e in checked]))
        extracts = [
            _Extract(e.feed, e.month, e.path, e.relative, e.fmt, e.rows, h)
            for e, h in zip(checked, hashes, strict=True)
        ]
        _check_raw_manifest(raw, version, extracts)
        fingerprint = pseudonym.key_fingerprint(key)
        reference = {
            f"reference/{name}.parquet": _sha256(raw / "reference" / f"{name}.parquet")
            for name in ("practices", "lsoas")
            if (raw / "reference" / f"{name}.parquet").is_file()
        }
        # CSV row counts are known only after parsing; the hash covers their bytes.
        inputs = [{"file": e.relative, "sha256": e.sha256, "rows": e.rows} for e in extracts]
        content_hash = _content_hash(inputs, fingerprint, version, reference)
        final = versions.version_dir(out, version)
        if final.exists():
            manifest = versions.read_manifest(out, version)
            if manifest.get("content_hash") != content_hash:
                raise BuildError(
                    f"KID version {version} is already published in {final} from different "
                    "inputs (or key); published versions are immutable. Build a new version "
                    "label or remove the old one deliberately."
                )
            log.info("Version %s already published from the same inputs: nothing to do", version)
            return _existing_result(out, version, manifest)
        pseudonym.ensure_secret_file(out / "restricted" / "proposal_secret")
        plan, full_reason = (None, "--full requested") if full else (None, "")
        if not full:
            plan, full_reason = _previous_plan(out, version, extracts, fingerprint, reference)
        if plan is not None:
            log.info(
                "Version %s: incremental from %s, new months %s",
                version,
                plan.previous,
                ", ".join(plan.new_months),
            )
        else:
            log.info("Version %s: full build (%s)", version, full_reason)
        return _build_new(
            raw,
            out,
            key,
            version,
            extracts,
            fingerprint,
            content_hash,
            step,
            started,
            schemas,
            reference,
            plan,
            full_reason,
        )
    finally:
        if bar is not None:
            bar.stop()


def _existing_result(out: Path, version: str, manifest: dict) -> BuildResult:
    report_path = out / "reports" / f"linkage_{version}.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    rows = {name: info["rows"] for name, info in manifest["tables"].items()}
    return BuildResult(
        version, versions.version_dir(out, version), rows, report, reused=True, kid_dir=out
    )


def _build_new(
    raw: Path,
    out: Path,
    key: bytes,
    version: str,
    extracts: list[_Extract],
    fingerprint: str,
    content_hash: str,
    step,
    started: float,
    schemas: dict[str, str],
    reference: dict[str, str],
    plan: _Plan | None,
    full_reason: str,
) -> BuildResult:
    builder = _Builder(raw, out, key, version, extracts)
    builder.schemas = schemas
    builder.previous = plan.previous if plan is not None else None
    temp_version = versions.new_temp_dir(out / "versions", version)
    temp_quarantine = versions.new_temp_dir(out / "restricted" / "quarantine", version)
    try:
        builder._register_files()
        builder._reference("practices")
        builder._reference("lsoas")
        costs_module.register_reference(builder.con)
        tables = temp_version / "tables"
        step("Validating the population register")
        builder.stage_feed("registrations")
        builder.build_register()
        # One feed at a time: stage, corrections, quarantine, reconcile, publish, free.
        # Small feeds staged while the register's HMACs are still being computed (on a worker
        # thread) are written once they are done, so that DuckDB never waits for them.
        deferred: list[str] = []

        def publish(feeds: list[str]) -> None:
            for name in feeds:
                builder.write_event_table(name, tables, costs=True)
                if name in MONTHLY_COSTED:
                    builder.write_costs_part(name, tables)
                builder.drop_stage(name)

        for feed in _feed_order(extracts):
            if plan is not None and feed in EVENT_TABLES:
                step(f"Adding {', '.join(plan.new_months)} to {feed}")
                builder.incremental_feed(feed, tables, temp_quarantine, plan)
                builder.drop_stage(feed)
                continue
            step(f"Validating and linking {feed}")
            if feed != "registrations":
                builder.stage_feed(feed)
            builder.resolve_duplicates(feed)
            builder.write_quarantine(feed, temp_quarantine)
            builder.reconcile(feed)
            if feed in EVENT_TABLES:
                deferred.append(feed)
                if not builder.hashing():
                    publish(deferred)
                    deferred = []
        publish(deferred)
        step("Writing persons")
        builder.write_persons(tables)
        builder.drop_stage("registrations")
        builder.drop_stage("deaths")
        builder.write_reference("practices", tables)
        builder.write_reference("lsoas", tables)
        builder.finish_costs(tables)
        # Extracts' rows are known now for CSV too.
        rows_in = {
            path: int(n)
            for counts in builder.counts.values()
            for path, n in zip(counts["_path"], counts["rows_in"], strict=True)
        }
        inputs = [
            {"file": e.relative, "sha256": e.sha256, "rows": rows_in[str(e.path)]} for e in extracts
        ]
        inputs = [
            {**i, "feed": e.feed, "extract_month": e.month}
            for i, e in zip(inputs, extracts, strict=True)
        ]
        previous_listing = None
        if plan is not None:
            previous_listing = (versions.version_dir(out, plan.previous), plan.manifest["tables"])
        listing = _table_listing(tables, previous_listing)
        _check_tables(builder, listing)
        how = _build_record(plan, full_reason, extracts, listing)
        report = _report(builder, version, inputs, listing)
        report["build"] = how
        manifest = {
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "content_hash": content_hash,
            "builder_version": BUILDER_VERSION,
            "key_fingerprint": fingerprint,
            "schema_hash": _schema_hash(),
            "unit_costs_hash": costs_module.unit_costs_hash(),
            "reference": reference,
            "build": how,
            "inputs": inputs,
            "inputs_by_month": _inputs_by_month(inputs),
            "tables": listing,
            "layout": {
                "partitioned_by_year": list(EVENT_TABLES) + ["costs"],
                "partition_column": "year (hive folder name only, not stored in the files)",
            },
        }
        (temp_version / "manifest.json").write_text(
            json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8"
        )
        step("Publishing")
        write_report(report, out / "reports")
        versions.replace_dir(temp_quarantine, out / "restricted" / "quarantine" / version)
        versions.publish_dir(temp_version, versions.version_dir(out, version))
        current = versions.current_version(out)
        if current is None or current <= version:
            versions.write_current(out, version)
        log.info("KID version %s built in %.1f s", version, time.perf_counter() - started)
        rows = {name: info["rows"] for name, info in listing.items()}
        return BuildResult(version, versions.version_dir(out, version), rows, report, kid_dir=out)
    finally:
        builder.close()
        shutil.rmtree(temp_version, ignore_errors=True)
        shutil.rmtree(temp_quarantine, ignore_errors=True)


def _check_tables(builder: _Builder, listing: dict[str, dict]) -> None:
    for feed in EVENT_TABLES:
        written = listing.get(feed, {"rows": 0})["rows"]
        if written != builder.published_rows[feed]:
            raise BuildError(
                f"Table '{feed}': {written} rows written, {builder.published_rows[feed]} expected."
            )
    for name in schema.RESEARCH_TABLES:
        if name not in listing:
            raise BuildError(f"Table '{name}' was not written.")
