"""Open population segmentation: the Bridges to Health segments and IMD deprivation groups.

Kent, like many health systems, has used proprietary marketing classifications (Experian
Mosaic, CACI Acorn) to describe its population. They are closed (the rules and inputs cannot be
published or checked) and describe consumers, not health need, so kidresearch never uses them.
This module implements the open **Bridges to Health** model (Lynn J, Straube BM, Bell KM,
Jencks SF, Kambic RT. *Using population segmentation to provide better health care for all:
the "Bridges to Health" model*. Milbank Quarterly 2007;85(2):185-208), with each rule and
code list written down here and in ``kidresearch/data/segment_codes.csv``.

Every person alive and registered on ``at`` gets exactly one segment, by the first rule that
applies in this order (most to least need; records dated on or before ``at`` only; a window
of "the 90 days up to ``at``" runs from ``at`` minus 90 days to ``at``, both included, and
month windows likewise from the same day ``k`` months earlier):

=====================  ====================================================================
segment                rule
=====================  ====================================================================
end_of_life            a hospice episode open in the 12 months up to ``at``, or a palliative
                       care code (``segment_codes.csv``, rule ``end_of_life``) in that window
frailty                eFI moderate or severe on ``at`` (9+ of the 36 deficits; Clegg et al.
                       2016), from :func:`kidresearch.frailty.efi_query`
failing_health         a cancer or organ-failure code ever (``segment_codes.csv`` rule
                       ``failing_health``, plus the eFI heart-failure codes) **and** 2+
                       emergency admissions in the 12 months up to ``at``
disability             a residential or nursing care placement open on ``at``, or a learning
                       disability code ever (rule ``disability``)
chronic_conditions     any long-term condition code ever: the eFI disease deficits in
                       :data:`CHRONIC_EFI_DEFICITS` or any ``failing_health``/``disability``
                       code (with normal function, since the rules above did not apply)
acutely_ill            an emergency admission or A&E attendance in the 90 days up to ``at``
maternal_and_infant    aged under 1 on ``at``, or a pregnancy code (rule ``maternal_infant``)
                       in the 9 months up to ``at``
healthy                none of the above
=====================  ====================================================================

Lynn et al. place each person in the segment that best describes their main need; the order
above makes that choice reproducible. Lynn's "short period of decline before dying" (cancer) and
"limited reserve and serious exacerbations" (organ failure) are combined here as
``failing_health``, and ``end_of_life`` is added (as in NHS adaptations of the model) for people
receiving palliative or hospice care. The synthetic KID codes only the eFI deficits and GP
consultations, so on it ``failing_health`` comes from heart failure and ``disability`` from care
placements; on real data the shipped codes are an **indicative** subset (see
``kidresearch/data/SOURCES.md``) to be replaced by complete reviewed code lists.

Examples
--------
>>> SEGMENTS[0], SEGMENTS[-1]
('healthy', 'end_of_life')
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from kidresearch._persons import with_area
from kidresearch.errors import SegmentError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from kidresearch.sdc.tables import CheckedTable
from kidresearch.frailty import (
    CHRONIC_DEFICITS,
    POLYPHARMACY_MIN_DRUGS,
    DateLike,
    KIDLike,
    as_date,
    deficit_codelist,
    efi_query,
    months_before,
)

log = logging.getLogger(__name__)

__all__ = [
    "CHRONIC_EFI_DEFICITS",
    "PERSON_COLUMNS",
    "PRECEDENCE",
    "SEGMENTS",
    "SegmentError",
    "Segmentation",
    "bridges_to_health",
    "crosstab_deprivation",
    "segment_codes",
    "segments_query",
]

#: Segments from least to most need (Lynn et al. 2007, with end of life added).
SEGMENTS: tuple[str, ...] = (
    "healthy",
    "maternal_and_infant",
    "acutely_ill",
    "chronic_conditions",
    "disability",
    "failing_health",
    "frailty",
    "end_of_life",
)
#: The order in which the rules are tried: the first that applies gives the segment.
PRECEDENCE: tuple[str, ...] = (
    "end_of_life",
    "frailty",
    "failing_health",
    "disability",
    "chronic_conditions",
    "acutely_ill",
    "maternal_and_infant",
)
#: eFI deficits (Clegg et al. 2016) that are long-term conditions; their codes count as LTCs.
CHRONIC_EFI_DEFICITS: tuple[str, ...] = CHRONIC_DEFICITS
#: eFI deficits whose codes count as organ failure for ``failing_health``.
FAILING_HEALTH_EFI_DEFICITS: tuple[str, ...] = ("heart_failure",)
EFI_FRAILTY_MIN_DEFICITS = 9  # moderate = 9-12 deficits, severe = 13+ (Clegg et al. 2016)
END_OF_LIFE_MONTHS = 12
FAILING_HEALTH_MONTHS = 12
FAILING_HEALTH_MIN_EMERGENCY = 2
ACUTE_DAYS = 90
PREGNANCY_MONTHS = 9
CARE_PLACEMENTS = ("residential", "nursing")
_RULES = ("end_of_life", "failing_health", "disability", "maternal_infant")
#: Person attributes on ``at`` that :func:`segments_query` gives before the rule flags.
PERSON_COLUMNS: tuple[str, ...] = (
    "person_id",
    "sex",
    "age",
    "practice_code",
    "lsoa_code",
    "district",
    "imd_decile",
    "imd_quintile",
    "deficit_count",
)


def segment_codes(codes: pd.DataFrame | None = None) -> pd.DataFrame:
    """The code list behind the rules: ``rule, snomed_code, term`` (one row per code and rule).

    The shipped ``segment_codes.csv`` is extended with the eFI codes of
    :data:`CHRONIC_EFI_DEFICITS` (rule ``chronic``) and :data:`FAILING_HEALTH_EFI_DEFICITS`
    (rule ``failing_health``).

    Parameters
    ----------
    codes
        Override of ``segment_codes.csv`` (columns ``rule``, ``snomed_code``; rules
        ``end_of_life``, ``failing_health``, ``disability``, ``maternal_infant``).

    Raises
    ------
    SegmentError
        A column is missing or a rule is unknown (the message names the row).

    Examples
    --------
    >>> codes = segment_codes()
    >>> sorted(codes.rule.unique())
    ['chronic', 'disability', 'end_of_life', 'failing_health', 'maternal_infant']
    >>> "84114007" in set(codes[codes.rule == "failing_health"].snomed_code)  # heart failure
    True
    """
    from kidresearch.data import load

    if codes is None:
        codes = load("segment_codes", dtype={"snomed_code": str})
        where = "kidresearch/data/segment_codes.csv"
    else:
        where = "the 'codes' argument"
    missing = {"rule", "snomed_code"} - set(codes.columns)
    if missing:
        raise SegmentError(
            f"{where} must have columns rule, snomed_code; missing {sorted(missing)}"
        )
    bad = ~codes["rule"].isin(_RULES)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise SegmentError(
            f"{where} row {row}: rule {codes['rule'].iloc[row]!r} is not one of {list(_RULES)}"
        )
    if codes["snomed_code"].isna().any():
        row = int(np.flatnonzero(codes["snomed_code"].isna().to_numpy())[0])
        raise SegmentError(f"{where} row {row}: snomed_code is missing")
    efi = deficit_codelist()
    efi = efi[efi.snomed_code.notna() & (efi.snomed_code != "")]
    chronic = efi[efi.deficit.isin(CHRONIC_EFI_DEFICITS)].assign(rule="chronic")
    organ = efi[efi.deficit.isin(FAILING_HEALTH_EFI_DEFICITS)].assign(rule="failing_health")
    out = pd.concat(
        [
            codes.assign(snomed_code=codes.snomed_code.astype(str)),
            chronic.rename(columns={"deficit": "term"}),
            organ.rename(columns={"deficit": "term"}),
        ],
        ignore_index=True,
    )
    return out[["rule", "snomed_code", "term"]].drop_duplicates(["rule", "snomed_code"])


def _ever(events: ir.Table, codes: pd.DataFrame, rules: tuple[str, ...], name: str) -> ir.Table:
    wanted = codes[codes.rule.isin(rules)][["snomed_code"]].drop_duplicates()
    code_table = ibis.memtable(wanted.rename(columns={"snomed_code": "code_"}))
    hits = events.join(code_table, events.snomed_code == code_table.code_)
    return hits.group_by("person_id").aggregate(**{name: hits.event_date.max()})


def _efi_counts(kid: KIDLike, at: dt.date) -> ir.Table:
    """People alive and registered on ``at`` with their eFI deficit count (0-36)."""
    efi = efi_query(kid, at, extra_person_columns=False)
    keep = ["person_id", "sex", "age", "practice_code", "lsoa_code"]
    if "deficit_count" in efi.columns:
        return efi.select(*keep, "deficit_count")
    # The eFI expression may carry the coded deficits as a bit mask (one bit per deficit).
    n_coded = deficit_codelist().query("snomed_code.notna() and snomed_code != ''").deficit
    mask = efi.deficit_mask.cast("int64")
    count = sum(
        (((mask >> k) & 1) for k in range(n_coded.nunique())),
        (efi.drugs_12m >= POLYPHARMACY_MIN_DRUGS).cast("int64"),
    )
    return efi.select(*keep, deficit_count=count.cast("int32"))


def segments_query(kid: KIDLike, at: dt.date, *, codes: pd.DataFrame | None = None) -> ir.Table:
    """The Ibis expression behind :func:`bridges_to_health` (not executed), for other recipes.

    Columns: ``person_id, sex, age, practice_code, lsoa_code, district, imd_decile,
    imd_quintile, deficit_count``, the rule flags ``is_<segment>`` and ``segment`` (string).

    Parameters
    ----------
    kid
        A KID session or anything with ``.table(name)`` returning research tables as Ibis.
    at
        Reference date; only records dated on or before it are used.
    codes
        Override of ``kidresearch/data/segment_codes.csv`` (see :func:`segment_codes`).

    Returns
    -------
    ibis.expr.types.Table

    Raises
    ------
    SegmentError
        Malformed code list.

    Examples
    --------
    >>> from kidresearch._examples import TOY_LSOA, toy_kid
    >>> kid = toy_kid({"persons": [{"person_id": 1, "birth_year": 2024}],
    ...                "lsoas": [TOY_LSOA]})
    >>> expr = segments_query(kid, dt.date(2024, 6, 30))
    >>> expr.select("person_id", "age", "imd_quintile", "segment").to_pandas()
      person_id  age  imd_quintile              segment
    0          1    0             2  maternal_and_infant
    """
    code_list = segment_codes(codes)
    lit = ibis.literal(at)
    base = _efi_counts(kid, at)
    gp = kid.table("gp_events")
    gp = gp.filter(gp.event_date <= lit).select("person_id", "event_date", "snomed_code")
    eol_from = months_before(at, END_OF_LIFE_MONTHS)
    preg_from = months_before(at, PREGNANCY_MONTHS)
    fh_from = months_before(at, FAILING_HEALTH_MONTHS)
    acute_from = at - dt.timedelta(days=ACUTE_DAYS)

    palliative = _ever(gp, code_list, ("end_of_life",), "last_palliative")
    organ = _ever(gp, code_list, ("failing_health",), "last_organ")
    ld = _ever(gp, code_list, ("disability",), "last_ld")
    ltc = _ever(gp, code_list, ("chronic", "failing_health", "disability"), "last_ltc")
    preg = _ever(gp, code_list, ("maternal_infant",), "last_pregnancy")

    hs = kid.table("hospice_episodes")
    hospice = (
        hs.filter(
            (hs.start_date <= lit)
            & (hs.end_date.isnull() | (hs.end_date >= ibis.literal(eol_from)))
        )
        .group_by("person_id")
        .aggregate(hospice_episodes=ibis._.count())
    )
    ip = kid.table("inpatient_spells")
    em = ip.filter(ip.is_emergency & (ip.admission_date <= lit))
    emergency = em.group_by("person_id").aggregate(
        emergency_12m=(em.admission_date >= ibis.literal(fh_from)).sum(),
        last_emergency=em.admission_date.max(),
    )
    ae = kid.table("ae_attendances")
    ae = ae.filter(ae.arrival_date <= lit)
    last_ae = ae.group_by("person_id").aggregate(last_ae=ae.arrival_date.max())
    sc = kid.table("social_care_packages")
    placements = (
        sc.filter(
            sc.service_type.isin(CARE_PLACEMENTS)
            & (sc.start_date <= lit)
            & (sc.end_date.isnull() | (sc.end_date >= lit))
        )
        .group_by("person_id")
        .aggregate(placements=ibis._.count())
    )

    joined = base
    for extra in (palliative, organ, ld, ltc, preg, hospice, emergency, last_ae, placements):
        joined = joined.left_join(extra, "person_id").drop("person_id_right")
    joined = with_area(kid, joined, ("district", "imd_decile", "imd_quintile"))

    def recent(col: ir.DateValue, since: dt.date) -> ir.BooleanValue:
        return (col >= ibis.literal(since)).fill_null(False)

    is_eol = (joined.hospice_episodes.fill_null(0) > 0) | recent(joined.last_palliative, eol_from)
    is_frail = joined.deficit_count >= EFI_FRAILTY_MIN_DEFICITS
    is_failing = joined.last_organ.notnull() & (
        joined.emergency_12m.fill_null(0) >= FAILING_HEALTH_MIN_EMERGENCY
    )
    is_disabled = (joined.placements.fill_null(0) > 0) | joined.last_ld.notnull()
    is_chronic = joined.last_ltc.notnull()
    is_acute = recent(joined.last_emergency, acute_from) | recent(joined.last_ae, acute_from)
    is_maternal = (joined.age < 1) | recent(joined.last_pregnancy, preg_from)
    flags = {
        "is_end_of_life": is_eol,
        "is_frailty": is_frail,
        "is_failing_health": is_failing,
        "is_disability": is_disabled,
        "is_chronic_conditions": is_chronic,
        "is_acutely_ill": is_acute,
        "is_maternal_and_infant": is_maternal,
    }
    segment = ibis.cases(*((flags[f"is_{s}"], s) for s in PRECEDENCE), else_="healthy")
    return joined.select(
        *PERSON_COLUMNS,
        **flags,
        segment=segment,
    )


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Bridges to Health segment of everyone alive and registered on one date.

    Attributes
    ----------
    at
        The reference date.
    frame
        One row per person: ``person_id, sex, age, practice_code, lsoa_code, district,
        imd_decile, imd_quintile, deficit_count``, the flag of every rule (``is_<segment>``;
        several may be true) and ``segment`` (ordered categorical, :data:`SEGMENTS`).
    """

    at: dt.date
    frame: pd.DataFrame = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """A copy of the person-level frame.

        Examples
        --------
        >>> frame = pd.DataFrame({"segment": ["healthy"] * 40 + ["frailty"] * 20})
        >>> seg = Segmentation(at=dt.date(2024, 6, 30), frame=frame)
        >>> seg.to_frame().shape
        (60, 1)
        """
        return self.frame.copy()

    def counts(self) -> pd.DataFrame:
        """People and share in each segment (not disclosure-checked: see :meth:`summary`).

        Examples
        --------
        >>> frame = pd.DataFrame({"segment": ["healthy"] * 40 + ["frailty"] * 20})
        >>> seg = Segmentation(at=dt.date(2024, 6, 30), frame=frame)
        >>> seg.counts().set_index("segment").loc[["healthy", "frailty", "end_of_life"]]
                     people     share
        segment
        healthy          40  0.666667
        frailty          20  0.333333
        end_of_life       0  0.000000
        """
        n = self.frame.segment.value_counts().reindex(list(SEGMENTS), fill_value=0)
        out = pd.DataFrame({"segment": list(SEGMENTS), "people": n.to_numpy()})
        out["share"] = out.people / max(int(out.people.sum()), 1)
        return out

    def summary(self) -> CheckedTable:
        """People per segment, released through :func:`kidresearch.sdc.crosstab`.

        Examples
        --------
        >>> frame = pd.DataFrame({"segment": ["healthy"] * 40 + ["frailty"] * 20})
        >>> seg = Segmentation(at=dt.date(2024, 6, 30), frame=frame)
        >>> seg.summary().released.loc[["healthy", "frailty", "Total"]].tolist()
        [40.0, 20.0, 60.0]
        """
        from kidresearch import sdc

        return sdc.crosstab(self.frame, "segment", name=f"segments_{self.at}")

    def plot(self, ax: Axes | None = None) -> Axes:
        """Bar chart of the released segment counts; returns the Axes.

        Parameters
        ----------
        ax
            Axes to draw on; a new figure when None.

        Returns
        -------
        matplotlib.axes.Axes

        Examples
        --------
        >>> frame = pd.DataFrame({"segment": ["healthy"] * 40 + ["frailty"] * 20})
        >>> seg = Segmentation(at=dt.date(2024, 6, 30), frame=frame)
        >>> seg.plot().get_title()
        'Bridges to Health segments on 2024-06-30'
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4))
        released = self.summary().released
        released = released.drop(index="Total", errors="ignore")
        released.index = released.index.astype(str)
        released.plot(kind="barh", ax=ax, color="#3a6ea5")
        ax.set_xlabel("people (suppressed cells blank)")
        ax.set_ylabel("")
        ax.set_title(f"Bridges to Health segments on {self.at}")
        return ax

    def _repr_html_(self) -> str:
        return f"<p><b>Segmentation on {self.at}</b></p>" + self.counts().to_html(index=False)

    def __repr__(self) -> str:
        return f"Segmentation(at={self.at}, people={len(self.frame)})"


def _finish_segment_frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame["segment"] = pd.Categorical(frame["segment"], categories=list(SEGMENTS), ordered=True)
    for col in [c for c in frame.columns if c.startswith("is_")]:
        frame[col] = frame[col].astype(bool)
    for col in ("imd_decile", "imd_quintile"):
        frame[col] = frame[col].astype("Int8")
    return frame


def bridges_to_health(
    kid: KIDLike, at: DateLike, *, codes: pd.DataFrame | None = None
) -> Segmentation:
    """Assign everyone alive and registered on ``at`` to one Bridges to Health segment.

    Parameters
    ----------
    kid
        A KID session or anything with ``.table(name)`` returning research tables as Ibis.
    at
        Reference date; only records dated on or before it are used.
    codes
        Override of ``kidresearch/data/segment_codes.csv`` (see :func:`segment_codes`).

    Returns
    -------
    Segmentation

    Raises
    ------
    SegmentError
        Malformed code list.
    FrailtyError
        ``at`` is not a date.

    Examples
    --------
    >>> from kidresearch._examples import toy_kid
    >>> kid = toy_kid({"persons": [{"person_id": 1, "birth_year": 2024},
    ...                            {"person_id": 2, "birth_year": 1980}]})
    >>> seg = bridges_to_health(kid, "2024-06-30")
    >>> seg.frame.set_index("person_id").segment.astype(str).sort_index().to_dict()
    {1: 'maternal_and_infant', 2: 'healthy'}
    """
    at_date = as_date(at, "at")
    frame = segments_query(kid, at_date, codes=codes).to_pandas()
    frame = _finish_segment_frame(frame)
    log.info("segmented %d people on %s", len(frame), at_date)
    return Segmentation(at=at_date, frame=frame)


def crosstab_deprivation(seg: Segmentation, *, by: str = "imd_quintile") -> CheckedTable:
    """Segment x IMD quintile (or decile) counts, released through :func:`kidresearch.sdc.crosstab`.

    Parameters
    ----------
    seg
        A :class:`Segmentation`.
    by
        ``"imd_quintile"`` (1 = most deprived fifth of England) or ``"imd_decile"``.

    Raises
    ------
    SegmentError
        ``by`` is not a deprivation column, or people have no IMD (LSOA not in ``lsoas``).

    Examples
    --------
    >>> frame = pd.DataFrame({"segment": ["healthy"] * 30 + ["frailty"] * 30,
    ...                       "imd_quintile": [1, 5] * 30})
    >>> seg = Segmentation(at=dt.date(2024, 1, 1), frame=frame)
    >>> crosstab_deprivation(seg).released.loc["frailty"].tolist()
    [15.0, 15.0, 30.0]
    """
    if not isinstance(seg, Segmentation):
        raise SegmentError(
            f"The 'seg' parameter must be a Segmentation (from bridges_to_health). "
            f"Got {type(seg).__name__} instead."
        )
    if by not in ("imd_quintile", "imd_decile"):
        raise SegmentError(
            f"The 'by' parameter must be 'imd_quintile' or 'imd_decile'. Got {by!r} instead."
        )
    frame = seg.frame[["segment", by]]
    missing = frame[by].isna()
    if missing.any():
        raise SegmentError(
            f"{int(missing.sum())} people have no {by} (LSOA not in the lsoas table), first at "
            f"row {int(np.flatnonzero(missing.to_numpy())[0])}; fix the LSOA lookup first"
        )
    frame = frame.assign(segment=frame.segment.astype(str), **{by: frame[by].astype(int)})
    return _sdc_crosstab(frame, by, seg.at)


def _sdc_crosstab(frame: pd.DataFrame, by: str, at: dt.date) -> CheckedTable:
    from kidresearch import sdc

    return sdc.crosstab(frame, "segment", by, name=f"segments_by_{by}_{at}")
