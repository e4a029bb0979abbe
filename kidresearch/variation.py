"""Practice variation in emergency admissions: observed vs expected, ISRs and funnel plots.

The KID's "unnecessary admissions" are emergency admissions for ambulatory care sensitive
conditions (ACSC): NHS Outcomes Framework indicators 2.3.i (chronic ACSC) and 2.3.ii (acute
conditions that should not usually need admission), whose ICD-10 primary-diagnosis lists ship
as ``kidresearch/data/acsc_icd10.csv`` (``indicator, condition, icd10_code``; a code matches a
diagnosis that starts with it, so ``J44`` covers ``J440``-``J449``). The indicator
specifications' extra conditions (e.g. excluding some secondary diagnoses or procedures) are not
applied: the research KID holds the primary diagnosis only.

:func:`practice_admissions` compares each practice's observed admissions with those expected
from its list:

* ``expected="age_sex"``: indirect standardisation. Person-years at risk in the period by sex
  and 5-year age band (age at ``start``) times the whole KID's admission rate in that
  stratum; the indirectly standardised ratio (ISR) O/E gets exact (under 10 events) or Byars
  95% limits (:func:`kidresearch.stats.isr`).
* ``expected="risk"``: the emergency-admission risk model (:mod:`kidresearch.risk`, fitted at
  ``start`` on the whole KID with ``end - start`` as horizon); observed is people with at least
  one admission, expected the sum of their predicted probabilities.

Practices are flagged high or low at 95% and 99.8% against Poisson funnel limits around 1
(:func:`kidresearch.stats.funnel_significance`, PHE Fingertips conventions).

Examples
--------
>>> import ibis
>>> diag = ibis.memtable({"d": ["J440", "J45", "I21", "N390"]}).d
>>> codes = pd.DataFrame({"indicator": "2.3.i", "condition": "x", "icd10_code": ["J44", "N390"]})
>>> ibis.memtable({"d": ["J440", "J45", "I21", "N390"]}).filter(
...     lambda t: acsc_filter(t.d, codes)).to_pandas().d.tolist()
['J440', 'N390']
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from kidresearch.errors import VariationError
from kidresearch.frailty import (
    DateLike,
    KIDLike,
    as_date,
    disclosure_policy,
    month_index,
    release,
)

log = logging.getLogger(__name__)

Measure = Literal["acsc", "all_emergency"]
Expected = Literal["age_sex", "risk"]
AGE_BAND_YEARS = 5
TOP_AGE_BAND = 90  # 90+ is the last band, as in the 2013 European Standard Population
DAYS_PER_YEAR = 365.25


def acsc_codes(codes: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ACSC ICD-10 code list (``indicator, condition, icd10_code``), validated.

    Raises
    ------
    VariationError
        A missing column or a code that is not an ICD-10 prefix (letter + 2-3 characters).
    """
    source = "the codes argument"
    if codes is None:
        from kidresearch.data import load

        codes = load("acsc_icd10", dtype=str)
        source = "kidresearch/data/acsc_icd10.csv"
    if "icd10_code" not in codes.columns:
        raise VariationError(f"{source} must have an 'icd10_code' column.")
    out = codes.copy()
    out["icd10_code"] = out["icd10_code"].astype("string").str.strip().str.upper()
    bad = ~out["icd10_code"].fillna("").str.fullmatch(r"[A-Z]\d{2}[0-9X]?")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise VariationError(
            f"{source} row {row + 2}: icd10_code {codes['icd10_code'].iloc[row]!r} is not an "
            "ICD-10 code prefix such as 'J44' or 'J441'."
        )
    return out


def acsc_filter(diagnosis: ir.StringValue, codes: pd.DataFrame | None = None) -> ir.BooleanValue:
    """True where a primary diagnosis starts with one of the ACSC ICD-10 codes."""
    table = acsc_codes(codes)
    lengths = sorted(table["icd10_code"].str.len().unique())
    condition = ibis.literal(False)
    for length in lengths:
        prefixes = sorted(table.loc[table["icd10_code"].str.len() == length, "icd10_code"])
        condition = condition | diagnosis.substr(0, int(length)).isin(prefixes)
    return condition


def _truth_practices(truth: Mapping[str, Any] | Iterable[str]) -> set[str]:
    """Practice codes set to excess ACSC admissions in a truth file (or a plain list)."""
    if isinstance(truth, Mapping):
        # kidresearch.synth's truth.json: {"acsc": {"practices": [...], ...}}.
        acsc = truth.get("acsc")
        if isinstance(acsc, Mapping) and "practices" in acsc:
            return {str(v) for v in acsc["practices"]}
        for key, value in truth.items():
            if "acsc" in str(key).lower() and "practice" in str(key).lower():
                if isinstance(value, Mapping):
                    nested = value.get("practices", value.get("practice_codes", list(value)))
                    return {str(v) for v in nested}
                return {str(v) for v in value}
        for value in truth.values():
            if isinstance(value, Mapping):
                try:
                    return _truth_practices(value)
                except VariationError:
                    continue
        raise VariationError(
            "truth has no excess-ACSC practice list ('acsc' -> 'practices', or a key naming "
            "'acsc' and 'practice'); "
            f"its keys are {', '.join(map(str, truth))}."
        )
    return {str(v) for v in truth}


@dataclass(frozen=True, eq=False)
class VariationResult:
    """Observed vs expected emergency admissions per practice, with funnel limits.

    Attributes
    ----------
    frame
        One row per practice: ``practice_code, district, person_years, observed, expected,
        isr, isr_lower, isr_upper`` (95%), ``significance`` and the flags ``high_95``,
        ``high_998``, ``low_95``, ``low_998``.
    limits
        Funnel limits (``kidresearch.stats.funnel_limits``, ratio x 100 against expected
        events).
    """

    start: dt.date
    end: dt.date
    measure: str
    expected_from: str
    frame: pd.DataFrame = field(repr=False)
    limits: pd.DataFrame = field(repr=False)
    policy: Any = field(default=None, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """A copy of the per-practice table."""
        return self.frame.copy()

    def flagged(self, level: Literal["95", "99.8"] = "95", side: str = "high") -> list[str]:
        """Practice codes flagged ``side`` ("high"/"low") at ``level`` ("95"/"99.8")."""
        column = f"{side}_{'95' if level == '95' else '998'}"
        return sorted(self.frame.loc[self.frame[column], "practice_code"])

    def against_truth(
        self, truth: Mapping[str, Any] | Iterable[str], level: Literal["95", "99.8"] = "95"
    ) -> dict[str, Any]:
        """Precision and recall of the flagged-high practices against a truth set.

        Parameters
        ----------
        truth
            The synthetic KID's ``truth.json`` (the excess-ACSC practice list is found by
            key) or an iterable of practice codes.
        """
        true_set = _truth_practices(truth)
        flagged = set(self.flagged(level, "high"))
        hits = flagged & true_set
        return {
            "level": level,
            "flagged": len(flagged),
            "true": len(true_set),
            "true_positives": len(hits),
            "precision": len(hits) / len(flagged) if flagged else float("nan"),
            "recall": len(hits) / len(true_set) if true_set else float("nan"),
            "false_positives": sorted(flagged - true_set),
            "missed": sorted(true_set - flagged),
        }

    def summary(self) -> pd.DataFrame:
        """Observed admissions per practice released through disclosure control, with ISRs."""
        counts = self.frame[["practice_code", "observed"]]
        released = release(
            counts, counts=["observed"], name="practice_admissions", policy=self.policy
        ).copy()
        cols = ["practice_code", "expected", "isr", "isr_lower", "isr_upper", "significance"]
        out = released.merge(self.frame[cols], on="practice_code", how="left")
        # An ISR reveals its observed count (isr x expected): blank it where the count is.
        hidden = out["observed"].isna()
        out.loc[hidden, ["isr", "isr_lower", "isr_upper"]] = np.nan
        return out

    def plot(self, ax: Any = None) -> Any:
        """Funnel plot: ISR against expected admissions with 95% and 99.8% limits."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 5))
        lim = self.limits
        for side, style in (("2s", "--"), ("3s", "-")):
            label = "95%" if side == "2s" else "99.8%"
            for bound in ("lower", "upper"):
                x = lim[f"{bound}_{side}_exp_events"]
                y = lim[f"{bound}_{side}_limit"] / 100
                ax.plot(
                    x, y, style, color="grey", lw=0.8, label=label if bound == "lower" else None
                )
        f = self.frame
        colour = np.where(f.high_998, "tab:red", np.where(f.high_95, "tab:orange", "tab:blue"))
        colour = np.where(f.low_95, "tab:green", colour)
        ax.scatter(f.expected, f.isr, c=colour, s=18, zorder=3)
        ax.axhline(1, color="black", lw=0.8)
        ax.set_xlim(0, float(f.expected.max()) * 1.05)
        top = float(np.nanmax(f.isr)) * 1.1 if len(f) else 2.0
        ax.set_ylim(0, max(top, 1.5))
        ax.set_xlabel("expected admissions")
        ax.set_ylabel("observed / expected (ISR)")
        what = "ACSC" if self.measure == "acsc" else "all"
        ax.set_title(f"{what} emergency admissions by practice, {self.start} to {self.end}")
        ax.legend(fontsize="small")
        return ax

    def _repr_html_(self) -> str:
        n95, n998 = int(self.frame.high_95.sum()), int(self.frame.high_998.sum())
        return (
            f"<p><b>Practice variation</b> ({self.measure}, expected from {self.expected_from}): "
            f"{len(self.frame)} practices, {n95} high at 95%, {n998} high at 99.8%</p>"
            + self.frame.head(20).to_html(index=False)
        )


def _person_years(kid: KIDLike, start: dt.date, end: dt.date) -> ir.Table:
    persons = kid.table("persons")
    far = ibis.literal(dt.date(9999, 12, 31))
    first = ibis.greatest(persons.registration_start, ibis.literal(start))
    last = ibis.least(
        persons.registration_end.fill_null(far),
        (persons.date_of_death - ibis.interval(days=1)).fill_null(far),
        ibis.literal(end),
    )
    days = (last.delta(first, unit="day") + 1).cast("float64")
    born = persons.birth_year.cast("int32") * 12 + persons.birth_month.cast("int32") - 1
    age = (month_index(start) - born) // 12
    band = ibis.least(ibis.greatest(age, 0) // AGE_BAND_YEARS, TOP_AGE_BAND // AGE_BAND_YEARS)
    out = persons.select(
        "person_id",
        "practice_code",
        "sex",
        band=(band * AGE_BAND_YEARS).cast("int32"),
        person_years=days / DAYS_PER_YEAR,
    )
    return out.filter(out.person_years > 0)


def practice_admissions(
    kid: KIDLike,
    start: DateLike,
    end: DateLike,
    *,
    measure: Measure = "acsc",
    expected: Expected = "age_sex",
    codes: pd.DataFrame | None = None,
) -> VariationResult:
    """Emergency admissions per practice, observed vs expected, with funnel-plot flags.

    Parameters
    ----------
    kid
        A KID session.
    start, end
        The period (inclusive); admission dates and person-time within it count.
    measure
        ``"acsc"`` (ambulatory care sensitive conditions) or ``"all_emergency"``.
    expected
        ``"age_sex"`` (indirect standardisation to the KID's own age-sex rates) or ``"risk"``
        (the risk model's predicted probabilities; ``end - start`` must be whole months).
    codes
        Override of the ACSC ICD-10 list.

    Returns
    -------
    VariationResult

    Raises
    ------
    VariationError
        Bad dates or options, or no admissions in the period.
    """
    from kidresearch import stats

    start_d, end_d = as_date(start, "start"), as_date(end, "end")
    if end_d <= start_d:
        raise VariationError(
            f"The 'end' date ({end_d}) must be after the 'start' date ({start_d})."
        )
    if measure not in ("acsc", "all_emergency"):
        raise VariationError(
            f"The 'measure' parameter must be 'acsc' or 'all_emergency'. Got {measure!r} instead."
        )
    if expected not in ("age_sex", "risk"):
        raise VariationError(
            f"The 'expected' parameter must be 'age_sex' or 'risk'. Got {expected!r} instead."
        )
    spells = kid.table("inpatient_spells")
    spells = spells.filter(
        spells.is_emergency & (spells.admission_date >= start_d) & (spells.admission_date <= end_d)
    )
    if measure == "acsc":
        spells = spells.filter(acsc_filter(spells.primary_diagnosis_icd10, codes))

    if expected == "age_sex":
        per_practice = _age_sex_expected(kid, spells, start_d, end_d, stats)
    else:
        per_practice = _risk_expected(kid, start_d, end_d, measure, stats)

    practices = kid.table("practices").select("practice_code", "district").to_pandas()
    per_practice = per_practice.merge(practices, on="practice_code", how="left")
    if per_practice["observed"].sum() == 0:
        raise VariationError(
            f"No {measure} emergency admissions between {start_d} and {end_d}: nothing to compare."
        )
    significance = stats.funnel_significance(
        per_practice, "observed", "expected", statistic="ratio"
    )["significance"].astype(str)
    per_practice["significance"] = significance.to_numpy()
    per_practice["high_95"] = significance.str.startswith("High").to_numpy()
    per_practice["high_998"] = (significance == "High (0.001)").to_numpy()
    per_practice["low_95"] = significance.str.startswith("Low").to_numpy()
    per_practice["low_998"] = (significance == "Low (0.001)").to_numpy()
    limits = stats.funnel_limits(
        per_practice, "observed", "expected", statistic="ratio", multiplier=1, ratio_type="isr"
    )
    order = ["practice_code", "district"] + [
        c for c in per_practice.columns if c not in ("practice_code", "district")
    ]
    return VariationResult(
        start=start_d,
        end=end_d,
        measure=measure,
        expected_from=expected,
        frame=per_practice[order].sort_values("practice_code", ignore_index=True),
        limits=limits,
        policy=disclosure_policy(kid),
    )


def _isr_columns(frame: pd.DataFrame, stats: Any, by: str) -> pd.DataFrame:
    out = stats.isr(frame, "observed", "n", x_ref="x_ref", n_ref="n_ref", by=by)
    return out.rename(columns={"value": "isr", "lowercl": "isr_lower", "uppercl": "isr_upper"})[
        [by, "observed", "expected", "isr", "isr_lower", "isr_upper"]
    ]


def _age_sex_expected(
    kid: KIDLike, spells: ir.Table, start: dt.date, end: dt.date, stats: Any
) -> pd.DataFrame:
    py = _person_years(kid, start, end)
    denominators = (
        py.group_by(["practice_code", "sex", "band"])
        .aggregate(person_years=py.person_years.sum())
        .to_pandas()
    )
    persons = kid.table("persons").select(
        "person_id", "birth_year", "birth_month", "practice_code", "sex"
    )
    born = persons.birth_year.cast("int32") * 12 + persons.birth_month.cast("int32") - 1
    age = (month_index(start) - born) // 12
    band = ibis.least(ibis.greatest(age, 0) // AGE_BAND_YEARS, TOP_AGE_BAND // AGE_BAND_YEARS)
    persons = persons.mutate(band=(band * AGE_BAND_YEARS).cast("int32"))
    joined = spells.left_join(persons, "person_id")
    counts = (
        joined.group_by(
            [
                joined.practice_code,
                joined.sex,
                joined.band,
                joined.person_id_right.isnull().name("orphan"),
            ]
        )
        .aggregate(observed=joined.count())
        .to_pandas()
    )
    orphans = int(counts.loc[counts.orphan, "observed"].sum())
    if orphans:
        import warnings

        from kidresearch.errors import DroppedRowsWarning

        warnings.warn(
            f"practice_admissions: {orphans} admissions belong to no person in 'persons' and are "
            "not attributed to a practice.",
            DroppedRowsWarning,
            stacklevel=3,
        )
    counts = counts[~counts.orphan].drop(columns="orphan")
    strata = denominators.merge(counts, on=["practice_code", "sex", "band"], how="outer")
    strata["observed"] = strata["observed"].fillna(0)
    no_time = strata["person_years"].isna() & (strata["observed"] > 0)
    if no_time.any():
        log.info(
            "%d admissions by people with no registered time in the period kept as observed",
            int(strata.loc[no_time, "observed"].sum()),
        )
    strata["person_years"] = strata["person_years"].fillna(0.0)
    reference = strata.groupby(["sex", "band"], as_index=False).agg(
        x_ref=("observed", "sum"), n_ref=("person_years", "sum")
    )
    strata = strata.merge(reference, on=["sex", "band"], how="left")
    # A stratum with admissions but no person-time anywhere has no reference rate.
    strata = strata[strata["n_ref"] > 0].rename(columns={"person_years": "n"})
    out = _isr_columns(strata, stats, "practice_code")
    py_total = strata.groupby("practice_code", as_index=False)["n"].sum()
    return out.merge(py_total.rename(columns={"n": "person_years"}), on="practice_code")


def _risk_expected(
    kid: KIDLike, start: dt.date, end: dt.date, measure: str, stats: Any
) -> pd.DataFrame:
    from kidresearch import risk

    months = month_index(end) - month_index(start)
    if months <= 0:
        raise VariationError("expected='risk' needs a period of at least one month.")
    outcome = "acsc_admission" if measure == "acsc" else "emergency_admission"
    formula = risk.DEFAULT_FORMULA.replace("emergency_admission ~", f"{outcome} ~", 1)
    model = risk.fit(
        kid,
        start,
        horizon=f"{months}m",
        validate="none",
        formula=formula,
        outcome=outcome,  # type: ignore[arg-type]
    )
    people = model.train
    grouped = people.groupby("practice_code", as_index=False).agg(
        observed=(outcome, "sum"), n=("predicted", "sum"), person_count=(outcome, "size")
    )
    grouped["x_ref"] = 1.0
    grouped["n_ref"] = 1.0
    out = _isr_columns(grouped, stats, "practice_code")
    return out.merge(
        grouped[["practice_code", "person_count"]].rename(columns={"person_count": "people"}),
        on="practice_code",
    )
