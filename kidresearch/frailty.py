"""The electronic frailty index (eFI): at a date, as a trend, and against outcomes.

The eFI (Clegg et al., "Development and validation of an electronic frailty index using routine
primary care electronic health record data", Age and Ageing 2016;45:353-360) counts 36 deficits
in coded primary-care records. 35 of them are SNOMED CT code lists shipped as
``kidresearch/data/efi_deficits.csv`` (``deficit_id, deficit, snomed_code, term``); the 36th,
*polypharmacy*, is five or more distinct drugs from BNF chapters 1-15 issued in the 12 months
before the date. A deficit is present at a date when any of its codes was recorded on or before
that date (deficits are never "resolved", as in the original eFI). The score is
``deficit_count / 36`` and the category is read off the integer count: fit 0-4, mild 5-8,
moderate 9-12, severe 13+ (the published cut-offs 0.12 / 0.24 / 0.36 on the score).

Three recipes:

* :func:`efi` -- one row per person alive and registered at a date, one grouped query.
* :func:`trend` -- prevalence by category at each month or year end, crude and age-sex
  standardised to the 2013 European Standard Population, from each person's deficit onset
  dates computed once (no per-date eFI runs).
* :func:`outcomes` -- Cox models of death, emergency admission and care-home admission by
  category, set beside Clegg et al.'s published one-year hazard ratios.

"Drug" for polypharmacy is the BNF *chemical substance*: the first 9 characters of the BNF code
(chapter 2, section 2, paragraph 2, sub-paragraph 1, chemical substance 2), so two strengths or
brands of one substance count once.

Examples
--------
>>> category_of_count([0, 4, 5, 8, 9, 12, 13, 36])
['fit', 'fit', 'mild', 'mild', 'moderate', 'moderate', 'severe', 'severe']
>>> round(5 / EFI_DEFICIT_TOTAL, 4)
0.1389
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from kidresearch._persons import age_on, alive_and_registered
from kidresearch.errors import DroppedRowsWarning, KidError

log = logging.getLogger(__name__)

# Clegg et al. 2016, Table 1: 36 deficits; categories on the score 0-0.12, >0.12-0.24,
# >0.24-0.36, >0.36, i.e. on the integer count 0-4, 5-8, 9-12, 13+.
EFI_DEFICIT_TOTAL = 36
EFI_CATEGORIES: tuple[str, ...] = ("fit", "mild", "moderate", "severe")
EFI_COUNT_UPPER: tuple[int, ...] = (4, 8, 12)  # inclusive upper counts of fit, mild, moderate
POLYPHARMACY = "polypharmacy"
POLYPHARMACY_MIN_DRUGS = 5
POLYPHARMACY_BNF_CHAPTERS = (1, 15)
POLYPHARMACY_MONTHS = 12
BNF_CHEMICAL_SUBSTANCE_CHARS = 9
# eFI deficits (Clegg et al. 2016) that are long-term conditions (chronic diseases, as in the
# QOF registers); the remaining deficits are symptoms, disabilities and social circumstances.
CHRONIC_DEFICITS: tuple[str, ...] = (
    "arthritis",
    "atrial_fibrillation",
    "cerebrovascular_disease",
    "chronic_kidney_disease",
    "diabetes",
    "heart_failure",
    "heart_valve_disease",
    "hypertension",
    "ischaemic_heart_disease",
    "memory_and_cognitive_problems",
    "osteoporosis",
    "parkinsonism_and_tremor",
    "peripheral_vascular_disease",
    "respiratory_disease",
    "thyroid_disease",
)
# Development cohort (931,541 people aged 65-95): fit ~50%, mild ~35%, moderate ~12%,
# severe ~3% (Clegg et al. 2016).
PUBLISHED_SHARES_65_95: dict[str, float] = {
    "fit": 0.50,
    "mild": 0.35,
    "moderate": 0.12,
    "severe": 0.03,
}
# Clegg et al. 2016, abstract and Table 3: one-year hazard ratios (vs fit) from the
# internal-validation cohort, adjusted (multivariate Cox regression). Nursing-home confidence
# intervals are not carried here.
PUBLISHED_HR_1Y: dict[str, dict[str, tuple[float, float | None, float | None]]] = {
    "death": {
        "mild": (1.92, 1.81, 2.04),
        "moderate": (3.10, 2.91, 3.31),
        "severe": (4.52, 4.16, 4.91),
    },
    "emergency_admission": {
        "mild": (1.93, 1.86, 2.01),
        "moderate": (3.04, 2.90, 3.19),
        "severe": (4.73, 4.43, 5.06),
    },
    "care_home": {
        "mild": (1.89, None, None),
        "moderate": (3.19, None, None),
        "severe": (4.76, None, None),
    },
}
# The KID's feeds arrive 1-2 months after the event (schema); months within this lag of the
# latest data are flagged incomplete when the session offers no completeness table.
REPORTING_LAG_MONTHS = 2
# 2013 European Standard Population, 19 five-year bands 0-4 ... 85-89, 90+ (Eurostat 2013).
ESP2013_BAND_COUNT = 19
OUTCOMES = ("death", "emergency_admission", "care_home")
CARE_HOME_SERVICES = ("residential", "nursing")

DateLike = str | dt.date | dt.datetime | pd.Timestamp


class KIDLike(Protocol):
    """Anything with ``.table(name)`` returning an Ibis table of the research KID."""

    def table(self, name: str) -> ir.Table: ...


class FrailtyError(KidError, ValueError):
    """Bad arguments or reference data for a frailty recipe; the message names the field."""


# ------------------------------------------------------------------------------------------
# Small shared helpers (used by risk.py and variation.py too)
# ------------------------------------------------------------------------------------------
def as_date(value: DateLike, name: str) -> dt.date:
    """Parse a date argument, naming the parameter in the error.

    Examples
    --------
    >>> as_date("2023-03-31", "at")
    datetime.date(2023, 3, 31)
    """
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise FrailtyError(
        f"The '{name}' parameter must be a date (datetime.date or 'YYYY-MM-DD'). "
        f"Got {value!r} instead."
    )


def month_index(d: dt.date) -> int:
    """Months since year 0 (``year * 12 + month - 1``), the unit of all period arithmetic."""
    return d.year * 12 + d.month - 1


def month_end(mi: int) -> dt.date:
    """Last day of the month with index ``mi``.

    Examples
    --------
    >>> month_end(2024 * 12 + 1)
    datetime.date(2024, 2, 29)
    """
    year, month = divmod(mi + 1, 12)
    return dt.date(year, month + 1, 1) - dt.timedelta(days=1)


def months_before(at: dt.date, months: int) -> dt.date:
    """``at`` minus whole months; a month-end stays a month-end (29 Feb 2024 - 12 = 28 Feb 2023).

    Examples
    --------
    >>> months_before(dt.date(2021, 2, 28), 12)
    datetime.date(2020, 2, 29)
    >>> months_before(dt.date(2021, 3, 15), 12)
    datetime.date(2020, 3, 15)
    """
    mi = month_index(at) - months
    if at == month_end(month_index(at)):
        return month_end(mi)
    year, month = divmod(mi, 12)
    last = month_end(mi).day
    return dt.date(year, month + 1, min(at.day, last))


def parse_months(value: str | int, name: str) -> int:
    """Parse a span such as ``"12m"``, ``"3y"`` or ``18`` into months.

    Examples
    --------
    >>> parse_months("3y", "lookback"), parse_months("12m", "horizon"), parse_months(6, "x")
    (36, 12, 6)
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([my])\s*", value.lower())
        if m and int(m.group(1)) > 0:
            return int(m.group(1)) * (12 if m.group(2) == "y" else 1)
    raise FrailtyError(
        f"The '{name}' parameter must be a positive span like '12m' or '3y'. Got {value!r} instead."
    )


def category_of_count(counts: Iterable[int]) -> list[str]:
    """eFI category for each deficit count (fit 0-4, mild 5-8, moderate 9-12, severe 13+)."""
    arr = np.asarray(list(counts), dtype=int)
    return [EFI_CATEGORIES[i] for i in np.searchsorted(EFI_COUNT_UPPER, arr, side="left")]


def _category_codes(counts: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(EFI_COUNT_UPPER), counts, side="left")


def _category_expr(count: ir.IntegerValue) -> ir.IntegerValue:
    return ibis.cases(
        (count <= EFI_COUNT_UPPER[0], 0),
        (count <= EFI_COUNT_UPPER[1], 1),
        (count <= EFI_COUNT_UPPER[2], 2),
        else_=3,
    )


def disclosure_policy(kid: object) -> Any:
    """The session's disclosure policy (its proposal's ``output_policy``), or None for default."""
    proposal = getattr(kid, "proposal", None)
    mapping = getattr(proposal, "output_policy", None)
    if not mapping:
        return None
    from kidresearch.sdc import DisclosurePolicy

    return DisclosurePolicy.from_mapping(mapping, source=getattr(proposal, "source", None))


def release(
    frame: pd.DataFrame,
    *,
    counts: Sequence[str],
    name: str,
    keys: Sequence[str] | None = None,
    policy: Any = None,
) -> pd.DataFrame:
    """Pass the count columns of a tidy table through disclosure control (``kidresearch.sdc``).

    Each count column is checked with :func:`kidresearch.sdc.check_table` (one cell per row,
    labelled by ``keys``, default the non-numeric columns); suppressed cells become missing
    and a ``<count>_status`` column says why. Other columns pass through unchanged, so callers
    must blank anything derived from a suppressed count. ``policy`` is a
    ``kidresearch.sdc.DisclosurePolicy`` (default: the package default; results carry their
    session's proposal policy, see :func:`disclosure_policy`).
    """
    from kidresearch import sdc

    out = frame.reset_index(drop=True).copy()
    if keys is None:
        keys = [
            c for c in out.columns if c not in counts and not pd.api.types.is_float_dtype(out[c])
        ]
    keys = list(keys)
    for column in counts:
        cells = out[[*keys, column]].copy()
        cells[column] = cells[column].fillna(0).astype("int64")
        checked = sdc.check_table(
            cells, counts=column, keys=keys, margins=False, name=f"{name}:{column}", policy=policy
        ).to_frame()
        checked = checked[[*keys, "released", "status"]].rename(
            columns={"released": f"_{column}", "status": f"{column}_status"}
        )
        merged = out[keys].merge(checked, on=keys, how="left", validate="one_to_one")
        out[column] = merged[f"_{column}"].to_numpy()
        out[f"{column}_status"] = merged[f"{column}_status"].to_numpy()
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")


def deficit_codelist(codelist: pd.DataFrame | None = None) -> pd.DataFrame:
    """The eFI SNOMED CT code list as ``snomed_code, deficit`` (deficit as a column-safe slug).

    Parameters
    ----------
    codelist
        A frame with ``deficit`` and ``snomed_code`` columns; by default
        ``kidresearch/data/efi_deficits.csv``.

    Raises
    ------
    FrailtyError
        If a column is missing, a code is blank, or the list does not make up the 35 coded
        deficits (36 with polypharmacy, which comes from prescriptions).

    Examples
    --------
    >>> toy = pd.DataFrame({"deficit": [f"Deficit {i}" for i in range(35)],
    ...                     "snomed_code": [str(100000 + i) for i in range(35)]})
    >>> deficit_codelist(toy).deficit.nunique()
    35
    """
    source = "the codelist argument"
    if codelist is None:
        from kidresearch.data import load

        codelist = load("efi_deficits", dtype={"snomed_code": str})
        source = "kidresearch/data/efi_deficits.csv"
    for col in ("deficit", "snomed_code"):
        if col not in codelist.columns:
            raise FrailtyError(
                f"{source} must have a '{col}' column; it has {', '.join(map(str, codelist.columns))}."
            )
    out = pd.DataFrame(
        {
            "snomed_code": codelist["snomed_code"].astype("string").str.strip(),
            "deficit": codelist["deficit"].map(_slug),
        }
    )
    # Polypharmacy has no code (it comes from prescriptions): its rows are documentation only.
    blank = (out.snomed_code.isna() | (out.snomed_code == "")) & (out.deficit != POLYPHARMACY)
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0])
        raise FrailtyError(
            f"{source} row {row + 2} ({codelist['deficit'].iloc[row]}): snomed_code is blank; "
            "expected a SNOMED CT concept id."
        )
    coded = out[out.deficit != POLYPHARMACY]
    n = coded.deficit.nunique()
    if n != EFI_DEFICIT_TOTAL - 1:
        raise FrailtyError(
            f"{source} must define the {EFI_DEFICIT_TOTAL - 1} coded eFI deficits "
            f"(polypharmacy comes from prescriptions); it defines {n}."
        )
    return coded.drop_duplicates().reset_index(drop=True)


def _deficit_names(codes: pd.DataFrame) -> list[str]:
    return [*pd.unique(codes.deficit), POLYPHARMACY]


def _rx_substances(prescriptions: ir.Table) -> ir.Table:
    lo, hi = POLYPHARMACY_BNF_CHAPTERS
    rx = prescriptions.filter(prescriptions.bnf_chapter.between(lo, hi))
    return rx.mutate(substance=rx.bnf_code.substr(0, BNF_CHEMICAL_SUBSTANCE_CHARS))


def efi_query(
    kid: KIDLike,
    at: dt.date,
    *,
    codelist: pd.DataFrame | None = None,
    extra_person_columns: bool = True,
) -> ir.Table:
    """The Ibis expression behind :func:`efi` (not executed), for reuse in other recipes.

    One row per person alive and registered at ``at`` with ``deficit_mask`` (bit *k* set when
    the *k*-th coded deficit of the code list is present) and ``drugs_12m``; pass the
    materialised frame to :func:`decode_deficits` for the flag columns, count and category.
    """
    codes = deficit_codelist(codelist)
    names = _deficit_names(codes)
    persons = kid.table("persons")
    people = persons.filter(alive_and_registered(persons, at))
    people = people.select(
        "person_id",
        "sex",
        "practice_code",
        "lsoa_code",
        age=age_on(people, at),
    )

    # Each coded deficit is one bit of an int64 mask, and the code list a small in-memory
    # table joined on the code: one BIT_OR per person (no DISTINCT, no 35 aggregates);
    # decode_deficits() unpacks the bits in numpy.
    bits = pd.DataFrame({"deficit": names[:-1]})
    bits["bit"] = np.left_shift(np.int64(1), np.arange(len(bits), dtype=np.int64))
    code_table = ibis.memtable(codes.merge(bits, on="deficit")[["snomed_code", "bit"]])
    gp = kid.table("gp_events")
    # The code list also as an IN filter: the engine pushes it below the session's
    # pseudonym join into the Parquet scan, so only deficit-coded rows (a third of the events)
    # are joined and re-keyed; the join alone leaves the optimiser no selectivity to go on.
    events = gp.filter(
        gp.event_date <= ibis.literal(at),
        gp.snomed_code.isin(sorted(codes.snomed_code.unique())),
    ).select("person_id", "snomed_code")
    hits = events.join(code_table, events.snomed_code == code_table.snomed_code)
    # Same nullable BIGINT types on both sides of the union (tables may mark ids NOT NULL).
    hits = hits.select(
        person_id=hits.person_id.cast("int64"),
        bit=hits.bit.cast("int64"),
        drug=ibis.literal(0, "int64"),
    )

    rx = _rx_substances(kid.table("prescriptions"))
    window_start = months_before(at, POLYPHARMACY_MONTHS)
    rx = rx.filter((rx.issue_date > ibis.literal(window_start)) & (rx.issue_date <= at))
    # Distinct pairs then a count: hash aggregates parallelise where COUNT(DISTINCT) does not.
    pairs = (
        rx.select("person_id", "substance")
        .distinct()
        .mutate(person_id=ibis._.person_id.cast("int64"))
        .select("person_id", bit=ibis.literal(0, "int64"), drug=ibis.literal(1, "int64"))
    )
    # Deficit bits and drugs in one stream and one grouping per person, then one join to the
    # people: a join and a hash table fewer than grouping each and joining both.
    stream = hits.union(pairs, distinct=False)
    per_person = stream.group_by("person_id").aggregate(
        deficit_mask=stream.bit.bit_or(), drugs_12m=stream.drug.sum()
    )
    joined = people.left_join(per_person, "person_id").drop("person_id_right")
    out = joined.select(
        "person_id",
        "sex",
        "age",
        "practice_code",
        "lsoa_code",
        deficit_mask=joined.deficit_mask.fill_null(0).cast("int64"),
        drugs_12m=joined.drugs_12m.fill_null(0).cast("int32"),
    )
    if extra_person_columns:
        try:
            lsoas = kid.table("lsoas")
        except (PermissionError, KeyError) as err:
            # A proposal without the lsoas table still gets the eFI, without deprivation.
            log.info("eFI without IMD and district: %s", err)
            return out
        lsoas = lsoas.select("lsoa_code", "imd_score", "imd_quintile", "district")
        out = out.left_join(lsoas, "lsoa_code").drop("lsoa_code_right")
    return out


# ------------------------------------------------------------------------------------------
# efi
# ------------------------------------------------------------------------------------------
AGE_BANDS_SUMMARY = ((0, 64, "under 65"), (65, 74, "65-74"), (75, 84, "75-84"), (85, 200, "85+"))


def _age_band_labels(age: pd.Series) -> pd.Categorical:
    edges = [b[0] for b in AGE_BANDS_SUMMARY] + [AGE_BANDS_SUMMARY[-1][1] + 1]
    labels = [b[2] for b in AGE_BANDS_SUMMARY]
    return pd.cut(age, bins=edges, right=False, labels=labels)


@dataclass(frozen=True, eq=False)
class EFIResult:
    """The eFI of everyone alive and registered at one date.

    Attributes
    ----------
    at
        The reference date.
    frame
        One row per person: ``person_id, sex, age, practice_code, lsoa_code``, the 36 deficit
        flags, ``drugs_12m`` (distinct BNF chemical substances, chapters 1-15, last 12
        months), ``deficit_count``, ``score``, ``category`` (ordered categorical) and, when the
        ``lsoas`` table is available, ``imd_score, imd_quintile, district``.
    deficits
        Names of the 36 deficit flag columns.
    """

    at: dt.date
    frame: pd.DataFrame = field(repr=False)
    deficits: tuple[str, ...]
    policy: Any = field(default=None, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """A copy of the person-level frame."""
        return self.frame.copy()

    def shares(self, ages: tuple[int, int] | None = (65, 95)) -> pd.DataFrame:
        """Category counts and shares among people aged ``ages`` (inclusive; None = all).

        Not disclosure-checked: for analysis, not release (see :meth:`summary`).
        """
        f = self.frame
        if ages is not None:
            f = f[(f.age >= ages[0]) & (f.age <= ages[1])]
        n = f.category.value_counts().reindex(list(EFI_CATEGORIES), fill_value=0)
        out = pd.DataFrame({"category": list(EFI_CATEGORIES), "people": n.to_numpy()})
        out["share"] = out.people / max(int(out.people.sum()), 1)
        if ages is not None and tuple(ages) == (65, 95):
            out["published_share"] = out.category.map(PUBLISHED_SHARES_65_95)
        return out

    def summary(self) -> pd.DataFrame:
        """Category counts and shares by age band, released through disclosure control."""
        f = self.frame
        table = (
            pd.crosstab(_age_band_labels(f.age), f.category, dropna=False)
            .reindex(columns=list(EFI_CATEGORIES), fill_value=0)
            .rename_axis(index="age_band", columns=None)
            .reset_index()
        )
        long = table.melt(id_vars="age_band", var_name="category", value_name="people")
        long["age_band"] = long.age_band.astype(str)
        # Age bands nobody falls in (e.g. under 65 in a 65+ proposal) are structural zeros.
        long = long[long.groupby("age_band")["people"].transform("sum") > 0]
        released = release(
            long, counts=["people"], name=f"efi_summary_{self.at}", policy=self.policy
        ).copy()
        totals = released.groupby("age_band", sort=False)["people"].transform("sum")
        released["share"] = released["people"] / totals.replace(0, np.nan)
        return released

    def plot(self, ax: Any = None) -> Any:
        """Stacked bars of category shares by age band; returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        s = self.summary()
        wide = s.pivot(index="age_band", columns="category", values="share")
        wide = wide.reindex(columns=list(EFI_CATEGORIES))
        wide.plot(kind="bar", stacked=True, ax=ax, color=_CATEGORY_COLOURS, rot=0)
        ax.set_ylabel("share of people")
        ax.set_xlabel("age band")
        ax.set_title(f"eFI category by age band at {self.at}")
        return ax

    def _repr_html_(self) -> str:
        return (
            f"<p><b>eFI at {self.at}</b>: {len(self.frame):,} people</p>"
            + self.shares().to_html(index=False)
        )

    def __repr__(self) -> str:
        return f"EFIResult(at={self.at}, people={len(self.frame)})"


_CATEGORY_COLOURS = ["#4c9a2a", "#f2c14e", "#f78154", "#b4436c"]


def efi(
    kid: KIDLike,
    at: DateLike,
    *,
    codelist: pd.DataFrame | None = None,
) -> EFIResult:
    """The electronic frailty index of everyone alive and registered at ``at``.

    Parameters
    ----------
    kid
        A KID session (``kidresearch.connect(...)``) or anything with ``.table(name)``
        returning the research tables as Ibis tables.
    at
        Reference date. Deficits count when coded on or before it; polypharmacy looks at
        prescriptions issued in the 12 months up to and including it.
    codelist
        Override of the shipped SNOMED CT code list (``deficit``, ``snomed_code`` columns).

    Returns
    -------
    EFIResult
        One row per person; ages from birth year and month (birthday on the 1st).

    Raises
    ------
    FrailtyError
        If ``at`` is not a date or the code list is malformed.

    Examples
    --------
    >>> import ibis, pyarrow as pa
    >>> from kidresearch.schema import RESEARCH_TABLES
    >>> con = ibis.duckdb.connect()
    >>> def put(name, rows=()):
    ...     schema = RESEARCH_TABLES[name].arrow_schema()
    ...     return con.create_table(name, pa.Table.from_pylist(list(rows), schema=schema))
    >>> class Toy:
    ...     def table(self, name):
    ...         return con.table(name)
    >>> for name in ("gp_events", "prescriptions", "lsoas"):
    ...     _ = put(name)
    >>> _ = put("persons", [{
    ...     "person_id": 1, "sex": "F", "birth_year": 1940, "birth_month": 6,
    ...     "practice_code": "G80001", "lsoa_code": "E01000001",
    ...     "registration_start": dt.date(2010, 1, 1)}])
    >>> toy_codes = pd.DataFrame({"deficit": [f"d{i}" for i in range(35)],
    ...                           "snomed_code": [str(100000 + i) for i in range(35)]})
    >>> result = efi(Toy(), "2024-03-31", codelist=toy_codes)
    >>> result.frame[["age", "deficit_count", "category"]].to_dict("records")
    [{'age': 83, 'deficit_count': 0, 'category': 'fit'}]
    """
    at_date = as_date(at, "at")
    codes = deficit_codelist(codelist)
    expr = efi_query(kid, at_date, codelist=codes)
    # Sorted in the engine (a string sort in pandas costs seconds at Kent scale).
    frame = expr.order_by("person_id").to_pandas()
    names = _deficit_names(codes)
    frame = decode_deficits(frame, names)
    return EFIResult(at=at_date, frame=frame, deficits=tuple(names), policy=disclosure_policy(kid))


def decode_deficits(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Unpack ``deficit_mask`` and ``drugs_12m`` into the 36 flags, count, score and category.

    Examples
    --------
    >>> f = pd.DataFrame({"age": [80], "deficit_mask": [0b101], "drugs_12m": [5]})
    >>> out = decode_deficits(f, ["a", "b", "c", "polypharmacy"])
    >>> out[["a", "b", "c", "polypharmacy", "deficit_count"]].values.tolist()
    [[True, False, True, True, 3]]
    """
    coded = list(names[:-1])
    masks = np.ascontiguousarray(frame.pop("deficit_mask").to_numpy(dtype="<i8"))
    # Bytes of each mask, low bit first: one unpack instead of 35 shifts of the whole column.
    bytes_ = masks.view(np.uint8).reshape(len(masks), 8)
    # Column-major, so the frame takes the array as its one bool block without a copy.
    flags = np.empty((len(masks), len(coded) + 1), dtype=bool, order="F")
    flags[:, :-1] = np.unpackbits(bytes_, axis=1, bitorder="little")[:, : len(coded)]
    polypharmacy = frame["drugs_12m"].to_numpy() >= POLYPHARMACY_MIN_DRUGS
    flags[:, -1] = polypharmacy
    decoded = pd.DataFrame(flags, columns=[*coded, POLYPHARMACY], index=frame.index, copy=False)
    count = np.bitwise_count(masks) + polypharmacy
    position = list(frame.columns).index("drugs_12m")
    frame = pd.concat([frame.iloc[:, :position], decoded, frame.iloc[:, position:]], axis=1)
    frame["drugs_12m"] = frame["drugs_12m"].astype("int32")
    frame["deficit_count"] = count.astype("int16")
    frame["age"] = frame["age"].astype("int16")
    frame["score"] = frame["deficit_count"] / EFI_DEFICIT_TOTAL
    frame["category"] = pd.Categorical.from_codes(
        _category_codes(frame["deficit_count"].to_numpy()),
        categories=list(EFI_CATEGORIES),
        ordered=True,
    )
    return frame


# ------------------------------------------------------------------------------------------
# trend
# ------------------------------------------------------------------------------------------
Freq = Literal["month", "year"]
By = Literal["district", "practice", "imd_quintile"] | None
_BY_COLUMNS = {"district": "district", "practice": "practice_code", "imd_quintile": "imd_quintile"}


@dataclass(frozen=True)
class _Periods:
    first_month: int  # month index of the first period end
    step: int  # months between period ends
    count: int

    @property
    def dates(self) -> list[dt.date]:
        return [month_end(self.first_month + k * self.step) for k in range(self.count)]

    def index_of(self, mi: ir.IntegerValue) -> ir.IntegerValue:
        """First period whose end is on or after a date in month ``mi`` (``count`` if none)."""
        offset = ibis.greatest(mi - self.first_month, 0)
        return ibis.least((offset + self.step - 1) // self.step, self.count).cast("int32")


def _periods(start: dt.date, end: dt.date, freq: str) -> _Periods:
    if freq not in ("month", "year"):
        raise FrailtyError(f"The 'freq' parameter must be 'month' or 'year'. Got {freq!r} instead.")
    if end < start:
        raise FrailtyError(f"The 'end' date ({end}) is before the 'start' date ({start}).")
    last = month_index(end) if month_end(month_index(end)) <= end else month_index(end) - 1
    if freq == "month":
        first, step = month_index(start), 1
    else:
        first = start.year * 12 + 11
        last = last - ((last - 11) % 12)
        step = 12
    count = (last - first) // step + 1 if last >= first else 0
    if count <= 0:
        raise FrailtyError(
            f"No {freq} end falls between start={start} and end={end}; widen the period."
        )
    return _Periods(first, step, count)


def _mi(d: ir.DateValue) -> ir.IntegerValue:
    return d.year().cast("int32") * 12 + d.month().cast("int32") - 1


# The tables whose recent months decide whether an eFI period end is complete.
TREND_INPUT_TABLES = ("gp_events", "prescriptions")
# Person blocks of the numpy stage: bounds memory at a few hundred MB whatever the population.
TREND_PEOPLE_PER_BLOCK = 100_000


def _trend_people(
    kid: KIDLike, periods: _Periods, by_column: str | None, min_band: int
) -> pd.DataFrame:
    """People who can count at some period end: ``person_id, sex, born, entry, exit, by_value``.

    ``entry`` is the first period they are registered at, ``exit`` the first period they are
    not (deregistered or dead on or before its end; ``periods.count`` if never), so a person
    counts at period ``k`` when ``entry <= k < exit``. Only people old enough for ``min_band``
    by the last period are kept.
    """
    n = periods.count
    far = ibis.literal(dt.date(9999, 12, 1))
    persons = kid.table("persons")
    exit_date = ibis.least(
        (persons.registration_end + ibis.interval(days=1)).fill_null(far),
        persons.date_of_death.fill_null(far),
    )
    people = persons.mutate(
        born=persons.birth_year.cast("int32") * 12 + persons.birth_month.cast("int32") - 1,
        entry=periods.index_of(_mi(persons.registration_start)),
        exit=periods.index_of(_mi(exit_date)),
    )
    if by_column in ("district", "imd_quintile"):
        lsoas = kid.table("lsoas").select("lsoa_code", by_value=by_column)
        people = people.left_join(lsoas, "lsoa_code").drop("lsoa_code_right")
    elif by_column == "practice_code":
        people = people.mutate(by_value=people.practice_code)
    else:
        people = people.mutate(by_value=ibis.literal("all"))
    last_month = periods.first_month + (n - 1) * periods.step
    people = people.filter(
        (people.entry < people.exit) & (last_month - people.born >= 12 * min_band * 5)
    ).select(
        "person_id",
        "sex",
        "born",
        "entry",
        "exit",
        by_value=people.by_value.cast("string"),
    )
    return people.to_pandas()


def _trend_events(
    kid: KIDLike,
    periods: _Periods,
    codes: pd.DataFrame,
    people: pd.DataFrame,
    first_month: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deficit onset months and distinct substance issue months, keyed by integer person.

    Returns ``onsets`` (``pid, month``: the month of the first code of each deficit, one row
    per person and deficit) and ``issues`` (``pid, sid, month``: one row per person, BNF
    chemical substance and month with an issue), months counted from ``first_month``. ``pid``
    is the row of ``people``; the proposal's person ids stay in the engine.
    """
    last_date = month_end(periods.first_month + (periods.count - 1) * periods.step)
    ids = ibis.memtable(
        pd.DataFrame(
            {"person_id": people["person_id"], "pid": np.arange(len(people), dtype="int32")}
        )
    )
    deficit_ids = ibis.memtable(
        pd.DataFrame(
            {
                "snomed_code": codes["snomed_code"],
                "deficit_id": pd.factorize(codes["deficit"])[0].astype("int16"),
            }
        )
    )
    gp = kid.table("gp_events")
    # The code list as an IN filter too, pushed below the session's pseudonym join (see
    # efi_query).
    gp = gp.filter(
        gp.event_date <= ibis.literal(last_date),
        gp.snomed_code.isin(sorted(codes["snomed_code"].unique())),
    ).select("person_id", "snomed_code", "event_date")
    hits = gp.join(deficit_ids, "snomed_code").join(ids, "person_id")
    onsets = hits.group_by(["pid", "deficit_id"]).aggregate(onset=hits.event_date.min())
    onsets = onsets.select("pid", month=(_mi(onsets.onset) - first_month).cast("int32")).to_pandas()

    rx = _rx_substances(kid.table("prescriptions"))
    window_open = month_end(first_month - 1)
    rx = rx.filter((rx.issue_date > ibis.literal(window_open)) & (rx.issue_date <= last_date))
    rx = rx.select("person_id", "substance", month=(_mi(rx.issue_date) - first_month))
    # A small dictionary of substances, numbered in code order so every run agrees.
    substances = rx.select("substance").distinct()
    substances = substances.mutate(sid=ibis.row_number().over(order_by="substance"))
    issues = rx.join(ids, "person_id").join(substances, "substance")
    # No DISTINCT here: repeat issues are monthly, so nearly every row is distinct and a hash
    # aggregate over ten million keys costs more than the sort in _substance_windows, which
    # drops the few repeats anyway.
    issues = issues.select("pid", sid=issues.sid.cast("int32"), month=issues.month.cast("int32"))
    return onsets, issues.to_pandas()


def _trend_strata(
    kid: KIDLike,
    periods: _Periods,
    codes: pd.DataFrame,
    by_column: str | None,
    min_band: int,
) -> pd.DataFrame:
    """Headcounts by group, sex, 5-year band, category and period (all periods, all strata).

    Each person's deficit onset months and polypharmacy months are found once in the engine.
    numpy then builds, for blocks of people, a people x months table of changes (+1 at a
    deficit's onset month; +1 when a substance's 12-month issue window opens and -1 when it
    closes, overlapping windows of one substance merged), whose running sum along months is
    each person's deficit count and substance count at every month end: the same counts as
    :func:`efi` at each period end, without running it per period.
    """
    n = periods.count
    people = _trend_people(kid, periods, by_column, min_band)
    # Months from the first that a polypharmacy window can reach back to, to the last period.
    first_month = periods.first_month - (POLYPHARMACY_MONTHS - 1)
    months = periods.first_month + (n - 1) * periods.step - first_month + 1
    onsets, issues = _trend_events(kid, periods, codes, people, first_month)

    groups, by_codes = _group_codes(people["by_value"])
    sex_codes = (people["sex"].to_numpy() == "M").astype(np.int64)
    born = people["born"].to_numpy(dtype=np.int64)
    entry = people["entry"].to_numpy(dtype=np.int64)
    exit_ = people["exit"].to_numpy(dtype=np.int64)
    period_months = periods.first_month + periods.step * np.arange(n)
    period_cols = period_months - first_month  # column of each period in the month grid
    bands = ESP2013_BAND_COUNT
    shape = (len(groups), 2, bands, len(EFI_CATEGORIES), n)
    counts = np.zeros(int(np.prod(shape)), dtype=np.int64)

    onset_pid = onsets["pid"].to_numpy(dtype=np.int64)
    onset_col = np.clip(onsets["month"].to_numpy(dtype=np.int64), 0, None)
    order = np.argsort(onset_pid, kind="stable")
    onset_pid, onset_col = onset_pid[order], onset_col[order]
    sub_pid, sub_start, sub_end = _substance_windows(issues)

    for lo in range(0, len(people), TREND_PEOPLE_PER_BLOCK):
        hi = min(lo + TREND_PEOPLE_PER_BLOCK, len(people))
        size = hi - lo
        deficit_count = _running_counts(onset_pid, onset_col, None, lo, hi, months)
        substance_count = _running_counts(sub_pid, sub_start, sub_end, lo, hi, months)
        deficit_count = deficit_count[:, period_cols]
        substance_count = substance_count[:, period_cols]
        total = deficit_count + (substance_count >= POLYPHARMACY_MIN_DRUGS)
        category = _category_codes(total)
        k = np.arange(n)
        age = (period_months[None, :] - born[lo:hi, None]) // 12
        band = np.clip(age // 5, 0, bands - 1)
        counted = (
            (k[None, :] >= entry[lo:hi, None])
            & (k[None, :] < exit_[lo:hi, None])
            & (age >= 0)
            & (band >= min_band)
        )
        stratum = (by_codes[lo:hi, None] * 2 + sex_codes[lo:hi, None]) * bands + band
        key = (stratum * len(EFI_CATEGORIES) + category) * n + k[None, :]
        counts += np.bincount(key[counted], minlength=counts.size)
        del deficit_count, substance_count, total, category, age, band, counted, key
        log.debug("eFI trend: people %d-%d of %d", lo, lo + size, len(people))

    cube = counts.reshape(shape)[:, :, min_band:, :, :]
    index = pd.MultiIndex.from_product(
        [groups, ["F", "M"], range(min_band, bands), range(len(EFI_CATEGORIES)), range(n)],
        names=["by_value", "sex", "band", "category", "idx"],
    )
    out = pd.DataFrame({"people": cube.reshape(-1)}, index=index).reset_index()
    out["category"] = pd.Categorical.from_codes(
        out["category"].to_numpy(), categories=list(EFI_CATEGORIES), ordered=True
    )
    return out


def _group_codes(values: pd.Series) -> tuple[list[str], np.ndarray]:
    """Sorted group labels and each person's code; a missing group is labelled "unknown"."""
    labels = values.astype("string").fillna("unknown")
    groups = sorted(labels.unique())
    codes = pd.Categorical(labels, categories=groups).codes.astype(np.int64)
    return groups, codes


def _substance_windows(issues: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge each person's issue months of a substance into month ranges ``[start, end)``.

    An issue in month ``i`` puts the substance in the 12-month window of the month ends
    ``i .. i + 11``. Issues of one substance less than 12 months apart overlap, so each issue
    only adds the months after the previous one's window: ``start = max(i, previous + 12)``,
    ``end = i + 12``; the ranges of one substance then never overlap, and a running sum of +1
    at ``start`` and -1 at ``end`` counts distinct substances.

    Examples
    --------
    >>> f = pd.DataFrame({"pid": [0, 0, 0, 1], "sid": [7, 7, 7, 7], "month": [0, 5, 30, 5]})
    >>> [a.tolist() for a in _substance_windows(f)]
    [[0, 0, 0, 1], [0, 12, 30, 5], [12, 17, 42, 17]]
    """
    pid = issues["pid"].to_numpy(dtype=np.int64)
    sid = issues["sid"].to_numpy(dtype=np.int64)
    month = issues["month"].to_numpy(dtype=np.int64)
    if len(pid) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    span = int(month.max()) + 1
    key = (pid * (int(sid.max()) + 1) + sid) * span + month
    # Sorted by person, substance, month, duplicates gone (a plain sort: np.unique hashes
    # first, which is an order of magnitude slower on ten million keys).
    key = np.sort(key)
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    month = key % span
    pair = key // span
    pid = pair // (int(sid.max()) + 1)
    same = np.zeros(len(key), dtype=bool)
    same[1:] = pair[1:] == pair[:-1]
    previous = np.empty_like(month)
    previous[1:] = month[:-1]
    start = np.where(same, np.maximum(month, previous + POLYPHARMACY_MONTHS), month)
    return pid, start, month + POLYPHARMACY_MONTHS


def _running_counts(
    pid: np.ndarray,
    start: np.ndarray,
    end: np.ndarray | None,
    lo: int,
    hi: int,
    months: int,
) -> np.ndarray:
    """People ``lo..hi`` x months: running count of ranges ``[start, end)`` (end None: open).

    ``pid`` is sorted; ``start`` below 0 counts from month 0 and anything from ``months`` on
    is beyond the grid.
    """
    a, b = np.searchsorted(pid, [lo, hi])
    rows = pid[a:b] - lo
    size = (hi - lo) * (months + 1)
    cells = rows * (months + 1) + np.clip(start[a:b], 0, months)
    change = np.bincount(cells, minlength=size)
    if end is not None:
        change -= np.bincount(rows * (months + 1) + np.clip(end[a:b], 0, months), minlength=size)
    return np.cumsum(change.reshape(hi - lo, months + 1), axis=1)[:, :months]


def _incomplete_months(kid: KIDLike, dates: Sequence[dt.date]) -> np.ndarray:
    """Flag period ends in months the reporting lag has not yet filled.

    A session with ``completeness(tables=...)`` (as :meth:`kidresearch.access.KID.completeness`)
    is asked about the eFI's inputs only; checking every approved table costs seconds at Kent
    scale.
    """
    completeness = getattr(kid, "completeness", None)
    if callable(completeness):
        table = completeness(tables=TREND_INPUT_TABLES)
        inputs = table[table["table"].isin(TREND_INPUT_TABLES)]
        bad = set(inputs.loc[~inputs["complete"].astype(bool), "month"].astype(str))
        if len(inputs):
            return np.array([d.strftime("%Y-%m") in bad for d in dates])
    gp = kid.table("gp_events")
    latest = gp.aggregate(latest=gp.event_date.max()).to_pandas()["latest"].iloc[0]
    if latest is None or pd.isna(latest):
        return np.zeros(len(dates), dtype=bool)
    cutoff = month_index(pd.Timestamp(latest).date()) - REPORTING_LAG_MONTHS
    return np.array([month_index(d) > cutoff for d in dates])


@dataclass(frozen=True, eq=False)
class TrendResult:
    """eFI prevalence by category at each period end.

    Attributes
    ----------
    frame
        One row per period end, group (``by``) and category: ``period``, the group column,
        ``category``, ``people``, ``population``, ``prevalence`` (crude share), and when
        standardised ``dsr`` with ``dsr_lower``/``dsr_upper`` (95% Dobson limits,
        proportions age-sex standardised to the 2013 European Standard Population restricted
        to the ages covered), plus ``incomplete`` (period end in a month the reporting lag has
        not yet filled).
    strata
        The underlying counts by period, group, sex, 5-year age band and category.
    """

    frame: pd.DataFrame = field(repr=False)
    strata: pd.DataFrame = field(repr=False)
    by: str | None
    freq: str
    min_age: int
    policy: Any = field(default=None, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """A copy of the tidy trend table."""
        return self.frame.copy()

    def summary(self) -> pd.DataFrame:
        """People per period, group and category released through disclosure control."""
        cols = ["period", *([self.by] if self.by else []), "category", "people", "population"]
        released = release(
            self.frame[cols], counts=["people"], name="efi_trend", policy=self.policy
        ).copy()
        released["prevalence"] = released["people"] / released["population"]
        extra = [c for c in ("dsr", "incomplete") if c in self.frame]
        if extra:
            released = released.merge(
                self.frame[[c for c in cols if c not in ("people", "population")] + extra],
                how="left",
            )
        return released

    def plot(self, ax: Any = None, *, standardised: bool = True) -> Any:
        """Lines of prevalence per category over time (dashed where incomplete); returns Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4))
        value = "dsr" if standardised and "dsr" in self.frame else "prevalence"
        f = self.frame
        if self.by:
            f = f.groupby(["period", "category"], observed=True, as_index=False).agg(
                people=("people", "sum"), population=("population", "sum")
            )
            f["prevalence"] = f.people / f.population
            value = "prevalence"
        for colour, cat in zip(_CATEGORY_COLOURS, EFI_CATEGORIES, strict=True):
            rows = f[f.category == cat]
            ax.plot(rows.period, rows[value], color=colour, label=cat)
        if "incomplete" in self.frame and self.frame.incomplete.any():
            first = self.frame.loc[self.frame.incomplete, "period"].min()
            ax.axvspan(first, self.frame.period.max(), color="grey", alpha=0.2, label="incomplete")
        ax.set_ylabel("age-sex standardised share" if value == "dsr" else "share")
        ax.set_title(f"eFI category prevalence, age {self.min_age}+")
        ax.legend(loc="upper left", fontsize="small")
        return ax

    def _repr_html_(self) -> str:
        return "<p><b>eFI trend</b></p>" + self.frame.head(20).to_html(index=False)


def trend(
    kid: KIDLike,
    start: DateLike,
    end: DateLike,
    *,
    freq: Freq = "month",
    by: By = None,
    standardise: bool = True,
    min_age: int = 65,
    codelist: pd.DataFrame | None = None,
) -> TrendResult:
    """eFI category prevalence at each month (or year) end between ``start`` and ``end``.

    Every person's deficit onset dates and polypharmacy on/off dates are computed once, then
    all period ends are evaluated in one grouped query (see :func:`_trend_deltas`); the
    count at each period end equals :func:`efi` run at that date.

    Parameters
    ----------
    kid
        A KID session.
    start, end
        The period ends are the month ends (``freq="month"``) or 31 December
        (``freq="year"``) that fall in ``[start, end]``.
    by
        ``None``, ``"district"`` (district of the LSOA of residence), ``"practice"`` or
        ``"imd_quintile"``; residence and practice are the person's latest known.
    standardise
        Add age-sex standardised prevalence (DSR per category with Dobson 95% limits, the
        2013 European Standard Population split equally by sex, bands from ``min_age``).
    min_age
        Youngest age included; a multiple of 5 (the eFI is validated from 65).

    Returns
    -------
    TrendResult

    Raises
    ------
    FrailtyError
        Bad dates, ``freq``, ``by`` or ``min_age``.
    """
    start_d, end_d = as_date(start, "start"), as_date(end, "end")
    periods = _periods(start_d, end_d, freq)
    if by is not None and by not in _BY_COLUMNS:
        raise FrailtyError(
            "The 'by' parameter must be None, 'district', 'practice' or 'imd_quintile'. "
            f"Got {by!r} instead."
        )
    if not isinstance(min_age, int) or min_age < 0 or min_age % 5 or min_age > 90:
        raise FrailtyError(
            f"The 'min_age' parameter must be a multiple of 5 from 0 to 90. Got {min_age!r}."
        )
    codes = deficit_codelist(codelist)
    by_column = _BY_COLUMNS[by] if by else None
    min_band = min_age // 5
    strata = _trend_strata(kid, periods, codes, by_column, min_band)
    dates = periods.dates
    strata["period"] = pd.to_datetime(np.asarray(dates, dtype="datetime64[D]")[strata.idx])
    group_col = by or "group"
    strata = strata.rename(columns={"by_value": group_col})
    if by == "imd_quintile":
        strata[group_col] = pd.to_numeric(strata[group_col], errors="coerce").astype("Int8")
    keys = ["period", group_col]
    # People whose residence has no IMD quintile form their own (missing) group.
    frame = strata.groupby(
        [*keys, "category"], observed=True, as_index=False, sort=True, dropna=False
    )["people"].sum()
    pop = strata.groupby(keys, observed=True, as_index=False, dropna=False)["people"].sum()
    frame = frame.merge(pop.rename(columns={"people": "population"}), on=keys)
    frame["prevalence"] = frame.people / frame.population.replace(0, np.nan)
    if standardise:
        frame = frame.merge(_standardised(strata, keys), on=[*keys, "category"], how="left")
    flags = pd.Series(_incomplete_months(kid, dates), index=pd.to_datetime(dates))
    frame["incomplete"] = frame.period.map(flags).astype(bool)
    if by is None:
        frame = frame.drop(columns=group_col)
        strata = strata.drop(columns=group_col)
    strata = strata.drop(columns="idx")
    return TrendResult(
        frame=frame,
        strata=strata,
        by=by,
        freq=freq,
        min_age=min_age,
        policy=disclosure_policy(kid),
    )


def _standardised(strata: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Age-sex standardised prevalence per category: DSR (kidresearch.stats.dsr, Dobson limits)
    with the 2013 ESP split equally between the sexes, over the bands present."""
    from kidresearch import stats

    esp = stats.european_standard_population()
    weights = esp["population"].to_numpy(float) / 2
    population = strata.groupby([*keys, "sex", "band"], observed=True)["people"].transform("sum")
    rows = strata.assign(population=population)
    rows = rows[rows["population"] > 0].copy()
    rows["standard"] = weights[rows["band"].to_numpy()]
    rows["category"] = rows["category"].astype(str)
    with warnings.catch_warnings():
        # Strata with nobody in them are left out, so groups can differ in their bands.
        warnings.simplefilter("ignore", UserWarning)
        out = stats.dsr(
            rows,
            "people",
            "population",
            by=[*keys, "category"],
            standard="standard",
            multiplier=1,
        )
    out = out.rename(columns={"value": "dsr", "lowercl": "dsr_lower", "uppercl": "dsr_upper"})
    out["category"] = pd.Categorical(out["category"], categories=list(EFI_CATEGORIES), ordered=True)
    return out[[*keys, "category", "dsr", "dsr_lower", "dsr_upper"]]


# ------------------------------------------------------------------------------------------
# outcomes
# ------------------------------------------------------------------------------------------
def months_after(at: dt.date, months: int) -> dt.date:
    """``at`` plus whole months (a month-end stays a month-end).

    Examples
    --------
    >>> months_after(dt.date(2023, 2, 28), 12)
    datetime.date(2024, 2, 29)
    """
    return months_before(at, -months)


def _first_dates(expr: ir.Table, date_col: str, name: str) -> pd.DataFrame:
    first = expr.group_by("person_id").aggregate(**{name: expr[date_col].min()})
    out = first.to_pandas()
    out[name] = pd.to_datetime(out[name])
    return out


# Cox fits: Newton-Raphson with step halving, as survival::coxph (Therneau; coxph.control
# eps = 1e-9 on the relative change of the log partial likelihood, iter.max 20, raised here).
COX_MAX_ITER = 50
COX_TOL = 1e-9
# A log hazard ratio beyond this (a ratio over 22,000) is a likelihood still rising towards
# infinity (monotone likelihood, e.g. every event in one group), not an estimate.
COX_MAX_ABS_LOG_HR = 10.0


class CoxFitError(FrailtyError):
    """A Cox model is not identifiable on the data; the message names the cause."""


def fit_cox(
    time: np.ndarray,
    status: np.ndarray,
    design: pd.DataFrame,
    *,
    label: str = "Cox model",
) -> tuple[Any, list[str]]:
    """Fit a Cox proportional hazards model (statsmodels PHReg, Efron ties) robustly.

    statsmodels' ``PHReg.fit`` takes plain Newton-Raphson steps from zero. When a rare group
    has many more events than expected under no effect (severe frailty among the old: five
    times as many deaths as expected), the first step overshoots far beyond the maximum, the
    iterates oscillate, the risk scores overflow and the Hessian turns singular. This fit takes
    the same Newton steps but halves each one until the log partial likelihood does not
    decrease (the method of R's ``survival::coxph``), which converges whenever the maximum
    exists; statsmodels then builds the results (covariance from the Hessian) at that maximum.

    Columns that are constant (no information, e.g. sex in a one-sex cohort) are dropped with a
    note; the notes are returned beside the results.

    Parameters
    ----------
    time, status
        Follow-up time and event indicator (1 event, 0 censored) per person.
    design
        Covariates, one column per coefficient (no intercept).
    label
        Names the model in messages.

    Returns
    -------
    tuple
        ``(PHRegResults, notes)``; ``results.model.exog_names`` are the columns kept.

    Raises
    ------
    CoxFitError
        No events, fewer events than coefficients, collinear covariates, or a likelihood with
        no finite maximum; the message names the columns concerned.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.repeat([0.0, 1.0], 200)
    >>> t = rng.exponential(1 / np.exp(np.log(2.0) * x))  # true hazard ratio 2
    >>> res, notes = fit_cox(t, np.ones(400), pd.DataFrame({"x": x}))
    >>> 1.5 < float(np.exp(res.params[0])) < 2.7, notes
    (True, [])
    """
    import statsmodels.api as sm

    time = np.asarray(time, dtype=float)
    status = np.asarray(status, dtype=float)
    events = int(status.sum())
    if events == 0:
        raise CoxFitError(f"{label}: no events, so no hazard ratio can be estimated.")
    notes: list[str] = []
    values = design.to_numpy(dtype=float)
    constant = [c for c, col in zip(design.columns, values.T, strict=True) if np.ptp(col) == 0]
    if constant:
        note = f"{label}: {', '.join(constant)} constant in the cohort, left out of the model"
        log.info(note)
        notes.append(note)
        design = design.drop(columns=constant)
        values = design.to_numpy(dtype=float)
    columns = list(design.columns)
    if not columns:
        raise CoxFitError(f"{label}: no covariate varies in the cohort.")
    if events < len(columns):
        raise CoxFitError(
            f"{label}: {events} events for {len(columns)} coefficients ({', '.join(columns)}); "
            "at least one event per coefficient is needed."
        )
    centred = values - values.mean(axis=0)
    rank = np.linalg.matrix_rank(centred)
    if rank < len(columns):
        # The last column whose removal restores full rank is one of the collinear ones.
        culprits = [
            c
            for j, c in enumerate(columns)
            if np.linalg.matrix_rank(np.delete(centred, j, axis=1)) == rank
        ]
        raise CoxFitError(
            f"{label}: covariates {', '.join(culprits)} are collinear in the cohort "
            f"(design rank {rank} of {len(columns)}); their effects cannot be separated."
        )

    model = sm.PHReg(time, design, status=status, ties="efron")
    beta = np.zeros(len(columns))
    loglike = model.loglike(beta)
    converged = False
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(COX_MAX_ITER):
            score, hessian = model.score(beta), model.hessian(beta)
            try:
                step = np.linalg.solve(hessian, -score)
            except np.linalg.LinAlgError as err:
                raise CoxFitError(
                    f"{label}: the information matrix is singular at "
                    + ", ".join(f"{c}={b:.3g}" for c, b in zip(columns, beta, strict=True))
                ) from err
            size = 1.0
            while True:
                candidate = beta + size * step
                new = model.loglike(candidate)
                if np.isfinite(new) and new >= loglike - 1e-12 * abs(loglike):
                    break
                size /= 2
                if size < 1e-10:
                    candidate, new = beta, loglike
                    break
            change = abs(new - loglike)
            beta, loglike = candidate, new
            if change <= COX_TOL * abs(loglike):
                converged = True
                break
    runaway = [c for c, b in zip(columns, beta, strict=True) if abs(b) > COX_MAX_ABS_LOG_HR]
    if runaway:
        raise CoxFitError(
            f"{label}: the partial likelihood has no finite maximum in {', '.join(runaway)} "
            "(monotone likelihood: events in one group only, or none, so the ratio runs to "
            "zero or infinity)."
        )
    if not converged:
        raise CoxFitError(
            f"{label}: Newton-Raphson with step halving did not converge in {COX_MAX_ITER} "
            f"iterations (last log likelihood {loglike:.6g})."
        )
    # At the maximum one Newton step changes nothing; statsmodels computes the covariance.
    results = model.fit(start_params=beta, method="newton", maxiter=5)
    if not np.allclose(results.params, beta, rtol=1e-5, atol=1e-7):
        raise AssertionError(f"{label}: statsmodels moved away from the Cox maximum")
    return results, notes


@dataclass(frozen=True, eq=False)
class OutcomesResult:
    """Hazard ratios of outcomes by eFI category (vs fit) beside the published ones.

    Attributes
    ----------
    at, follow_up_months
        Cohort date and follow-up.
    frame
        One row per outcome and category: ``people``, ``events``, ``hr`` with
        ``hr_lower``/``hr_upper`` (95%), ``p_value``, the published one-year ratio
        (``published_hr`` and limits, Clegg et al. 2016), ``note`` (why a ratio is missing,
        covariates left out) and ``truth_hr`` when given.
    models
        The fitted statsmodels ``PHRegResults`` per outcome.
    cohort
        Person-level analysis frame (time in days, event flags, covariates).
    """

    at: dt.date
    follow_up_months: int
    frame: pd.DataFrame = field(repr=False)
    models: dict[str, Any] = field(repr=False)
    cohort: pd.DataFrame = field(repr=False)
    policy: Any = field(default=None, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """A copy of the hazard-ratio table."""
        return self.frame.copy()

    def summary(self) -> pd.DataFrame:
        """People and events per outcome and category (disclosure-checked) with the ratios.

        A ratio rests on its category's events and on the fit (reference) group's, so it is
        blanked when either count is suppressed (all of an outcome's ratios when the fit
        group's events are), and ``note`` says so.
        """
        counts = self.frame[["outcome", "category", "people", "events"]]
        released = release(
            counts, counts=["people", "events"], name="efi_outcomes", policy=self.policy
        ).copy()
        cols = ["outcome", "category", "hr", "hr_lower", "hr_upper", "published_hr", "note"]
        if "truth_hr" in self.frame:
            cols.append("truth_hr")
        out = released.merge(self.frame[cols], on=["outcome", "category"], how="left")
        own = out["events"].isna()
        reference = out["outcome"].map(
            out.loc[out["category"] == "fit"].set_index("outcome")["events"]
        )
        resting = (own | reference.isna()) & out[["hr", "hr_lower", "hr_upper"]].notna().any(axis=1)
        out.loc[resting, ["hr", "hr_lower", "hr_upper"]] = np.nan
        out.loc[resting, "note"] = [
            "; ".join(filter(None, ["ratio blanked: an event count it rests on is suppressed", n]))
            for n in out.loc[resting, "note"]
        ]
        return out

    def plot(self, ax: Any = None) -> Any:
        """Forest plot of hazard ratios (points, 95% CI) with the published ratios (crosses)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        f = self.frame[self.frame.category != "fit"].reset_index(drop=True)
        y = np.arange(len(f))[::-1]
        ax.errorbar(
            f.hr,
            y,
            xerr=[f.hr - f.hr_lower, f.hr_upper - f.hr],
            fmt="o",
            color="black",
            label="this KID",
        )
        ax.scatter(f.published_hr, y, marker="x", color="tab:red", label="Clegg et al. 2016")
        ax.set_yticks(y, [f"{o}: {c}" for o, c in zip(f.outcome, f.category, strict=True)])
        ax.axvline(1, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"hazard ratio vs fit ({self.follow_up_months} months)")
        ax.legend(fontsize="small")
        return ax

    def _repr_html_(self) -> str:
        return f"<p><b>eFI and outcomes from {self.at}</b></p>" + self.frame.to_html(index=False)


def outcomes(
    kid: KIDLike,
    at: DateLike,
    *,
    outcomes: Sequence[str] = OUTCOMES,
    follow_up: str | int = "12m",
    ages: tuple[int, int] = (65, 95),
    truth: dict | None = None,
    codelist: pd.DataFrame | None = None,
) -> OutcomesResult:
    """Cox models of death, emergency admission and care-home admission by eFI category.

    The cohort is everyone aged ``ages`` (inclusive) alive and registered at ``at``, with the
    eFI at ``at``. Follow-up runs from ``at`` to the first event, the end of registration, or
    ``at + follow_up``; for emergency admission and care-home admission death also censors
    (cause-specific hazards). ``care_home`` is the first residential or nursing social care
    package starting after ``at``; people already in one at ``at`` are left out of that model
    (they are counted in ``people`` of no category for it, and the count is logged).

    Each model is ``statsmodels`` PHReg (Efron ties) of the outcome on indicators of mild,
    moderate and severe frailty (fit is the reference), adjusted for age (years, linear) and
    sex, maximised by Newton-Raphson with step halving (:func:`fit_cox`; statsmodels' own
    plain Newton overshoots and fails on typical eFI cohorts). Clegg et al. (2016) adjusted for
    age, sex and deprivation among other factors, so their ratios are a guide, not a reference
    to match.

    Parameters
    ----------
    kid
        A KID session.
    at
        Cohort entry date.
    outcomes
        Any of ``"death"``, ``"emergency_admission"``, ``"care_home"``.
    follow_up
        ``"12m"`` (published one-year ratios), ``"3y"`` ...
    ages
        Inclusive age range at ``at`` (Clegg et al.: 65-95).
    truth
        Optional true hazard ratios ``{outcome: {category: hr}}`` (e.g. from a synthetic KID's
        truth file) to set beside the estimates.

    Returns
    -------
    OutcomesResult

    Raises
    ------
    FrailtyError
        Unknown outcome or bad follow-up. An outcome without events among fit people gets
        missing ratios and a ``DroppedRowsWarning`` rather than an error; so does a category
        without events (its people leave that model). A model that is not identifiable
        (:class:`CoxFitError`: too few events, collinear covariates, no finite maximum) gets
        missing ratios and a ``UserWarning`` naming the cause, which the ``note`` column
        repeats; the other outcomes are still estimated. Covariates constant in the cohort
        (e.g. sex in a one-sex cohort) are left out with a note.
    """
    at_date = as_date(at, "at")
    months = parse_months(follow_up, "follow_up")
    unknown = [o for o in outcomes if o not in OUTCOMES]
    if unknown or not outcomes:
        raise FrailtyError(
            f"The 'outcomes' parameter must list some of {', '.join(OUTCOMES)}. "
            f"Got {list(outcomes)!r} instead."
        )
    end = months_after(at_date, months)
    base = efi(kid, at_date, codelist=codelist).frame
    cohort = base.loc[
        (base.age >= ages[0]) & (base.age <= ages[1]),
        ["person_id", "sex", "age", "category", "deficit_count"],
    ].reset_index(drop=True)

    persons = kid.table("persons").select("person_id", "registration_end", "date_of_death")
    people = persons.filter(
        persons.registration_end.isnull()
        | (persons.registration_end >= at_date)
        | persons.date_of_death.notnull()
    ).to_pandas()
    cohort = cohort.merge(people, on="person_id", how="left")
    at_ts, end_ts = pd.Timestamp(at_date), pd.Timestamp(end)
    death = pd.to_datetime(cohort.date_of_death)
    death = death.where((death > at_ts) & (death <= end_ts))
    reg_end = pd.to_datetime(cohort.registration_end).fillna(end_ts).clip(upper=end_ts)

    firsts: dict[str, pd.Series] = {"death": death}
    if "emergency_admission" in outcomes:
        spells = kid.table("inpatient_spells")
        spells = spells.filter(
            spells.is_emergency & (spells.admission_date > at_date) & (spells.admission_date <= end)
        )
        first = _first_dates(spells, "admission_date", "first")
        firsts["emergency_admission"] = cohort[["person_id"]].merge(first, how="left")["first"]
    in_care_home = pd.Series(False, index=cohort.index)
    if "care_home" in outcomes:
        packages = kid.table("social_care_packages")
        homes = packages.filter(packages.service_type.isin(CARE_HOME_SERVICES))
        starts = homes.filter((homes.start_date > at_date) & (homes.start_date <= end))
        first = _first_dates(starts, "start_date", "first")
        firsts["care_home"] = cohort[["person_id"]].merge(first, how="left")["first"]
        current = homes.filter(
            (homes.start_date <= at_date) & (homes.end_date.isnull() | (homes.end_date >= at_date))
        )
        resident = set(current.select("person_id").distinct().to_pandas()["person_id"])
        in_care_home = cohort.person_id.isin(resident)

    design = pd.DataFrame(
        {
            "mild": (cohort.category == "mild").astype(float),
            "moderate": (cohort.category == "moderate").astype(float),
            "severe": (cohort.category == "severe").astype(float),
            "age": cohort.age.astype(float) - float(cohort.age.mean()),
            "male": (cohort.sex == "M").astype(float),
        }
    )
    rows, models = [], {}
    notes: dict[str, str] = {}
    truth = truth or {}
    for outcome in outcomes:
        event_date = firsts[outcome]
        censor = (
            reg_end
            if outcome == "death"
            else reg_end.where(death.isna(), death).clip(upper=reg_end)
        )
        event = event_date.notna() & (event_date <= censor)
        stop = event_date.where(event, censor)
        time_days = (stop - at_ts).dt.days.astype(float)
        keep = ~in_care_home if outcome == "care_home" else pd.Series(True, index=cohort.index)
        if outcome == "care_home" and (~keep).any():
            log.info(
                "care_home: %d people already in a care home at %s left out", (~keep).sum(), at_date
            )
        cohort[f"{outcome}_days"] = time_days
        cohort[f"{outcome}_event"] = event
        # A category without events has no estimable ratio (the partial likelihood has no
        # maximum): its people leave that model and its ratio is reported missing. Without
        # events among fit people (the reference) no ratio can be estimated at all.
        events_by_category = cohort.category[keep & event].value_counts()
        empty = [c for c in EFI_CATEGORIES if events_by_category.get(c, 0) == 0]
        params = pd.Series(np.nan, index=design.columns)
        ci = pd.DataFrame(np.nan, index=design.columns, columns=[0, 1])
        pvalues = pd.Series(np.nan, index=design.columns)
        if "fit" in empty:
            warnings.warn(
                f"frailty.outcomes: no {outcome} events among fit people in the {months} months "
                f"after {at_date}; no hazard ratios for {outcome} (choose an earlier 'at' or a "
                "longer 'follow_up').",
                DroppedRowsWarning,
                stacklevel=2,
            )
            models[outcome] = None
            notes[outcome] = "no events among fit people (the reference category)"
        else:
            if empty:
                warnings.warn(
                    f"frailty.outcomes: no {outcome} events among {', '.join(empty)} people; "
                    f"{int((keep & cohort.category.isin(empty)).sum())} people left out of that "
                    "model and their hazard ratio is missing.",
                    DroppedRowsWarning,
                    stacklevel=2,
                )
            use = keep & ~cohort.category.isin(empty)
            columns = [c for c in design.columns if c not in empty]
            try:
                model, fit_notes = fit_cox(
                    time_days[use].to_numpy(),
                    event[use].astype(int).to_numpy(),
                    design.loc[use, columns],
                    label=f"Cox model of {outcome}",
                )
            except CoxFitError as err:
                # One unidentifiable outcome (e.g. a handful of care-home admissions in a
                # small KID) leaves the others standing; the cause goes to the table.
                warnings.warn(
                    f"frailty.outcomes: {err} Its hazard ratios are missing.",
                    UserWarning,
                    stacklevel=2,
                )
                model, fit_notes = None, [str(err)]
            notes[outcome] = "; ".join(fit_notes)
            models[outcome] = model
            if model is not None:
                kept = list(model.model.exog_names)
                params = pd.Series(model.params, index=kept).reindex(design.columns)
                ci = pd.DataFrame(model.conf_int(), index=kept).reindex(design.columns)
                pvalues = pd.Series(model.pvalues, index=kept).reindex(design.columns)
        for category in EFI_CATEGORIES:
            in_cat = keep & (cohort.category == category)
            row = {
                "outcome": outcome,
                "category": category,
                "people": int(in_cat.sum()),
                "events": int((event & in_cat).sum()),
            }
            if category == "fit":
                row.update(hr=1.0, hr_lower=np.nan, hr_upper=np.nan, p_value=np.nan)
            else:
                row.update(
                    hr=float(np.exp(params[category])),
                    hr_lower=float(np.exp(ci.loc[category, 0])),
                    hr_upper=float(np.exp(ci.loc[category, 1])),
                    p_value=float(pvalues[category]),
                )
            published = PUBLISHED_HR_1Y.get(outcome, {}).get(category, (np.nan, None, None))
            row["published_hr"] = published[0] if category != "fit" else 1.0
            row["published_lower"] = published[1] if published[1] is not None else np.nan
            row["published_upper"] = published[2] if published[2] is not None else np.nan
            own = [f"no {outcome} events in this category"] if category in empty else []
            row["note"] = "; ".join([*own, *filter(None, [notes.get(outcome, "")])])
            true_hr = truth.get(outcome, {}).get(category)
            if true_hr is not None:
                row["truth_hr"] = float(true_hr)
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame["category"] = pd.Categorical(
        frame.category, categories=list(EFI_CATEGORIES), ordered=True
    )
    return OutcomesResult(
        at=at_date,
        follow_up_months=months,
        frame=frame,
        models=models,
        cohort=cohort,
        policy=disclosure_policy(kid),
    )
