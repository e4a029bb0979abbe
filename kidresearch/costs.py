"""Person-level costs across health and social care, their distribution, and cost maps with a
transparent adjustment ladder.

Costs come from the research ``costs`` view (activity x the documented unit costs in
``kidresearch/data/unit_costs.csv``; prescriptions carry their own cost and social-care packages
are costed per week in each month they are open). Three recipes read it:

* :func:`person_costs`: everyone alive and registered on ``start`` (a fixed cohort, as in the
  synthetic generator's cost truth) with their cost in each of the 11 service lines between
  ``start`` and ``end`` (inclusive), **including people with no cost at all**, plus age, sex,
  practice, LSOA, district, IMD decile/quintile, morbidity (eFI deficit count on ``start``) and
  Bridges to Health segment (:mod:`kidresearch.segments`). People who register or are born
  after ``start`` are outside the cohort; their costs are counted in ``excluded`` and logged.
  ``.distribution()`` gives the Lorenz curve, Gini and top 1/5/10% shares; ``.table(by)``
  releases mean costs by practice, LSOA, district, segment or IMD quintile through
  :mod:`kidresearch.sdc` (magnitude rules see the person-level contributions).
* :func:`map`: each unit's (practice, LSOA or district) observed / expected cost ratio at each
  step of an adjustment ladder: ``crude`` (everyone expected to cost the KID mean), then each
  added adjustment (``age_sex``, ``morbidity``, ``deprivation``), with how ranks move, how much
  between-unit variance each step absorbs, and the deprivation gradient itself at every step,
  so what adjusting for deprivation removes is shown, not hidden.
* :func:`panel`: practice-year mean costs with linearmodels PanelOLS (practice and year
  effects) and RandomEffects for cost trends.

Models (``model=``):

``"gamma"``
    One GLM with the **gamma variance function** (variance proportional to the mean squared)
    and a **log link** fitted to everyone's cost, zeros included, as a quasi-likelihood. The
    gamma *likelihood* is not defined at zero, so statsmodels' ``Gamma`` family cannot take
    zero costs; the fit uses ``Tweedie(var_power=2)`` (the same variance function and
    estimating equations; its deviance clips zero outcomes to a tiny positive number, which
    affects the reported deviance only, never the estimates). Expected cost is the fitted mean.
``"two_part"``
    A logit GLM for any cost (Binomial, logit link) times a gamma GLM (log link) on the
    positive costs: expected cost = P(any cost) x E[cost | cost > 0].

All adjustments are categorical (5-year age band x sex, eFI deficit-count band, IMD quintile),
so the models are fitted to covariate cells (people with the same covariates) with variance
weights = people in the cell: for a categorical design the estimating equations summed over
people equal those of the cells, so the coefficients are exactly those of the person-level fit
(tested against a person-level statsmodels fit) at a fraction of the cost on 1.8 million people.

Examples
--------
>>> gini([0, 0, 0, 10])
0.75
>>> top_share([1, 2, 3, 4], 0.25)
0.4
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from kidresearch._persons import people_on
from kidresearch.errors import CostError, DroppedRowsWarning
from kidresearch.frailty import DateLike, KIDLike, as_date
from kidresearch.schema import RESEARCH_TABLES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from numpy.typing import ArrayLike

    from kidresearch.sdc.tables import CheckedTable

log = logging.getLogger(__name__)

__all__ = [
    "LADDER_STEPS",
    "SERVICE_LINES",
    "CostDistribution",
    "CostError",
    "CostMap",
    "PanelCosts",
    "PersonCosts",
    "gini",
    "lorenz_curve",
    "map",
    "panel",
    "person_costs",
    "top_share",
]

SERVICE_LINES: tuple[str, ...] = tuple(RESEARCH_TABLES["costs"].column("service_line").allowed)
#: Ladder steps and the cell variable each adds (in the order given to :func:`map`).
LADDER_STEPS: dict[str, str] = {
    "age_sex": "age_sex",
    "morbidity": "morbidity_band",
    "deprivation": "imd_quintile",
}
UNITS: dict[str, str] = {
    "practice": "practice_code",
    "lsoa": "lsoa_code",
    "district": "district",
    "segment": "segment",
    "imd_quintile": "imd_quintile",
}
MAP_UNITS = ("practice", "lsoa", "district")
TOP_SHARES = (0.01, 0.05, 0.10)
AGE_BAND_YEARS = 5
TOP_AGE_BAND = 85  # 85+ as one band: few people per sex beyond it in a practice-sized unit
#: eFI deficit-count bands for the morbidity step: counts 0-4 one by one, then the eFI
#: category boundaries (Clegg et al. 2016: mild 5-8, moderate 9-12, severe 13+) split in two.
MORBIDITY_EDGES = (0, 1, 2, 3, 4, 5, 7, 9, 13)
MORBIDITY_LABELS = ("0", "1", "2", "3", "4", "5-6", "7-8", "9-12", "13+")
GRADIENT_MIN_AGE = 55
Z_95 = 1.959963984540054
#: Jayatunga W et al., Public Health 2019 (Kent Integrated Dataset): people over 55, mean annual
#: cost GBP 1,623 in the most deprived fifth vs GBP 1,205 in the least deprived (+35%).
PUBLISHED_GRADIENT_55_PLUS = 1.35
Model = Literal["gamma", "two_part"]


# ------------------------------------------------------------------------------------------
# Distribution summaries
# ------------------------------------------------------------------------------------------
def _costs_array(costs: ArrayLike, name: str = "costs") -> np.ndarray:
    arr = np.asarray(costs, dtype=float).ravel()
    if arr.size == 0:
        raise CostError(f"The '{name}' parameter must hold at least one cost. Got none.")
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CostError(
            f"The '{name}' parameter must hold non-negative finite costs; position {i} is "
            f"{arr[i]!r} ({int(bad.sum())} such value(s))"
        )
    return arr


def gini(costs: ArrayLike) -> float:
    """Gini coefficient of costs (0 = everyone costs the same, 1 = one person costs all).

    ``G = 2 * sum(i * x_(i)) / (n * sum(x)) - (n + 1) / n`` over costs sorted ascending
    (i = 1..n), the usual sample Gini without small-sample correction.

    Parameters
    ----------
    costs
        Person costs (non-negative, finite; zeros included).

    Returns
    -------
    float
        NaN when every cost is 0.

    Raises
    ------
    CostError
        Empty input, negative or missing costs.

    Examples
    --------
    >>> gini([1, 1, 1, 1])
    0.0
    >>> round(gini([1, 2, 3, 4]), 4)  # 2*(1+4+9+16)/(4*10) - 5/4
    0.25
    """
    x = np.sort(_costs_array(costs))
    total = x.sum()
    if total == 0:
        return float("nan")
    n = len(x)
    i = np.arange(1, n + 1)
    return float(2 * (i * x).sum() / (n * total) - (n + 1) / n)


def top_share(costs: ArrayLike, share: float) -> float:
    """Share of total cost in the costliest ``share`` of people (``round(share * n)``, at
    least one person; the same count rule as the generator's truth).

    Parameters
    ----------
    costs
        Person costs (non-negative, finite; zeros included).
    share
        The costliest fraction of people, in (0, 1] (0.01 for the top 1%).

    Returns
    -------
    float
        NaN when every cost is 0.

    Raises
    ------
    CostError
        ``share`` outside (0, 1], or bad costs.

    Examples
    --------
    >>> top_share([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], 0.1)
    1.0
    """
    if not 0 < share <= 1:
        raise CostError(f"The 'share' parameter must be in (0, 1]. Got {share!r} instead.")
    x = _costs_array(costs)
    total = x.sum()
    if total == 0:
        return float("nan")
    k = max(1, int(round(share * len(x))))
    top = np.partition(x, len(x) - k)[len(x) - k :]
    return float(top.sum() / total)


def lorenz_curve(costs: ArrayLike, *, points: int | None = 1001) -> pd.DataFrame:
    """Lorenz curve: cumulative share of people (costliest last) against share of cost.

    Parameters
    ----------
    costs
        Person costs (non-negative).
    points
        Number of evenly spaced population shares to return (None: every person).

    Returns
    -------
    DataFrame
        ``population_share`` (0..1) and ``cost_share`` (0..1), starting at (0, 0).

    Examples
    --------
    >>> lorenz_curve([0, 0, 5, 5], points=None).cost_share.tolist()
    [0.0, 0.0, 0.0, 0.5, 1.0]
    """
    x = np.sort(_costs_array(costs))
    n = len(x)
    cum = np.concatenate([[0.0], np.cumsum(x)])
    total = cum[-1]
    pop = np.arange(n + 1) / n
    share = cum / total if total > 0 else pop.copy()
    if points is not None and n + 1 > points:
        grid = np.linspace(0, 1, points)
        share = np.interp(grid, pop, share)
        pop = grid
    return pd.DataFrame({"population_share": pop, "cost_share": share})


@dataclass(frozen=True, eq=False)
class CostDistribution:
    """How concentrated costs are: Gini, top shares and the Lorenz curve.

    Attributes
    ----------
    people, total_cost_gbp, mean_cost_gbp, share_with_no_cost
        Population, total and mean cost, share of people with no recorded cost.
    gini
        Gini coefficient (:func:`gini`).
    top_shares
        ``{0.01: share, 0.05: share, 0.10: share}`` of total cost in the costliest people.
    lorenz
        :func:`lorenz_curve` frame.
    """

    people: int
    total_cost_gbp: float
    mean_cost_gbp: float
    share_with_no_cost: float
    gini: float
    top_shares: dict[float, float]
    lorenz: pd.DataFrame = field(repr=False)

    @classmethod
    def from_costs(cls, costs: ArrayLike) -> CostDistribution:
        """Summarise an array of person costs.

        Parameters
        ----------
        costs
            Person costs (non-negative, finite; zeros included).

        Returns
        -------
        CostDistribution

        Examples
        --------
        >>> d = CostDistribution.from_costs([0, 0, 100, 300])
        >>> d.people, d.mean_cost_gbp, d.share_with_no_cost, round(d.gini, 3)
        (4, 100.0, 0.5, 0.625)
        """
        x = _costs_array(costs)
        return cls(
            people=len(x),
            total_cost_gbp=float(x.sum()),
            mean_cost_gbp=float(x.mean()),
            share_with_no_cost=float((x == 0).mean()),
            gini=gini(x),
            top_shares={s: top_share(x, s) for s in TOP_SHARES},
            lorenz=lorenz_curve(x),
        )

    def summary(self) -> pd.DataFrame:
        """One row per statistic (aggregates over the whole population).

        Examples
        --------
        >>> CostDistribution.from_costs([0, 0, 100, 300]).summary().statistic.tolist()[:4]
        ['people', 'mean_cost_gbp', 'share_with_no_cost', 'gini']
        """
        rows = [
            ("people", float(self.people)),
            ("mean_cost_gbp", self.mean_cost_gbp),
            ("share_with_no_cost", self.share_with_no_cost),
            ("gini", self.gini),
        ]
        rows += [(f"top_{round(s * 100)}pct_share", v) for s, v in self.top_shares.items()]
        return pd.DataFrame(rows, columns=["statistic", "value"])

    def to_frame(self) -> pd.DataFrame:
        """A copy of the Lorenz curve.

        Examples
        --------
        >>> CostDistribution.from_costs([0, 0, 100, 300]).to_frame().cost_share.tolist()
        [0.0, 0.0, 0.0, 0.25, 1.0]
        """
        return self.lorenz.copy()

    def plot(self, ax: Axes | None = None) -> Axes:
        """Draw the Lorenz curve with the line of equality; returns the Axes.

        Parameters
        ----------
        ax
            Axes to draw on; a new figure when None.

        Returns
        -------
        matplotlib.axes.Axes

        Examples
        --------
        >>> CostDistribution.from_costs([0, 0, 100, 300]).plot().get_title()
        'Lorenz curve (Gini 0.625)'
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 5))
        ax.plot(self.lorenz.population_share, self.lorenz.cost_share, label="costs")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="equality")
        ax.set_xlabel("share of people (lowest cost first)")
        ax.set_ylabel("share of total cost")
        ax.set_title(f"Lorenz curve (Gini {self.gini:.3f})")
        ax.legend(loc="upper left")
        return ax

    def _repr_html_(self) -> str:
        return "<p><b>Cost distribution</b></p>" + self.summary().to_html(index=False)


# ------------------------------------------------------------------------------------------
# Person costs
# ------------------------------------------------------------------------------------------
def _check_period(start: DateLike, end: DateLike) -> tuple[dt.date, dt.date]:
    s, e = as_date(start, "start"), as_date(end, "end")
    if e < s:
        raise CostError(f"The 'end' parameter ({e}) must not be before 'start' ({s}).")
    return s, e


def person_costs_query(kid: KIDLike, start: dt.date, end: dt.date) -> ir.Table:
    """The Ibis expression behind :func:`person_costs` (not executed).

    One row per person alive and registered on ``start``; a column per service line (0 when
    no activity) and ``cost_gbp`` (their sum), with the segmentation's person attributes.

    Parameters
    ----------
    kid
        A KID session, as for :func:`person_costs`.
    start, end
        First and last day of the costing window (inclusive).

    Returns
    -------
    ibis.expr.types.Table

    Examples
    --------
    >>> from kidresearch._examples import toy_kid
    >>> kid = toy_kid({"persons": [{"person_id": 1}],
    ...                "costs": [{"person_id": 1, "activity_date": dt.date(2024, 5, 1),
    ...                           "service_line": "gp", "cost_gbp": 42.0}]})
    >>> expr = person_costs_query(kid, dt.date(2024, 4, 1), dt.date(2025, 3, 31))
    >>> expr.select("person_id", "gp", "cost_gbp").to_pandas().to_dict("records")
    [{'person_id': 1, 'gp': 42.0, 'cost_gbp': 42.0}]
    """
    from kidresearch.segments import PERSON_COLUMNS, segments_query

    costs = kid.table("costs")
    window = costs.filter(costs.activity_date.between(ibis.literal(start), ibis.literal(end)))
    per_person = window.group_by("person_id").aggregate(
        **{
            line: window.cost_gbp.sum(where=window.service_line == line).fill_null(0.0)
            for line in SERVICE_LINES
        }
    )
    people = segments_query(kid, start).select(*PERSON_COLUMNS, "segment")
    joined = people.left_join(per_person, "person_id").drop("person_id_right")
    lines = {line: joined[line].fill_null(0.0) for line in SERVICE_LINES}
    total = sum(lines.values(), ibis.literal(0.0))
    return joined.select(*[c for c in people.columns], **lines, cost_gbp=total)


def _excluded_query(kid: KIDLike, start: dt.date, end: dt.date) -> ir.Table:
    costs = kid.table("costs")
    window = costs.filter(costs.activity_date.between(ibis.literal(start), ibis.literal(end)))
    per_person = window.group_by("person_id").aggregate(cost_gbp=window.cost_gbp.sum())
    cohort = people_on(kid, start, columns=("person_id",))
    outside = per_person.anti_join(cohort, "person_id")
    return outside.aggregate(people=outside.count(), cost_gbp=outside.cost_gbp.sum())


def _age_band(age: pd.Series) -> pd.Categorical:
    """5-year age bands to 85+ as an ordered categorical (vectorised)."""
    lo = np.minimum(age.to_numpy(dtype=int), TOP_AGE_BAND) // AGE_BAND_YEARS
    labels = [f"{a * AGE_BAND_YEARS}-{a * AGE_BAND_YEARS + 4}" for a in range(lo.max() + 1)]
    labels[-1] = labels[-1] if lo.max() * AGE_BAND_YEARS < TOP_AGE_BAND else f"{TOP_AGE_BAND}+"
    return pd.Categorical.from_codes(lo, categories=labels, ordered=True)


def _morbidity_band(count: pd.Series) -> pd.Categorical:
    idx = np.searchsorted(MORBIDITY_EDGES, count.to_numpy(dtype=int), side="right") - 1
    return pd.Categorical.from_codes(idx, categories=list(MORBIDITY_LABELS), ordered=True)


def _finish_person_frame(frame: pd.DataFrame) -> pd.DataFrame:
    from kidresearch.segments import _finish_segment_frame

    frame = _finish_segment_frame(frame)
    frame["age"] = frame["age"].astype("int16")
    frame["deficit_count"] = frame["deficit_count"].astype("int16")
    for col in (*SERVICE_LINES, "cost_gbp"):
        frame[col] = frame[col].astype("float64")
    return frame


@dataclass(frozen=True, eq=False)
class PersonCosts:
    """Costs of everyone alive and registered on ``start``, from ``start`` to ``end``.

    Attributes
    ----------
    start, end
        The costing window (both days included).
    frame
        One row per person: ``person_id, sex, age`` (on ``start``), ``practice_code,
        lsoa_code, district, imd_decile, imd_quintile, deficit_count`` (eFI deficits on
        ``start``), ``segment`` (Bridges to Health), one column per service line and
        ``cost_gbp`` (the total; 0 for people with no costed activity).
    excluded
        ``{"people": n, "cost_gbp": x}``: people with costs in the window who were not alive
        and registered on ``start`` (births, new registrations), kept out of the cohort.
    """

    start: dt.date
    end: dt.date
    frame: pd.DataFrame = field(repr=False)
    excluded: dict[str, float] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """A copy of the person-level frame.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> pc = toy_person_costs()
        >>> pc.to_frame().shape
        (200, 22)
        """
        return self.frame.copy()

    def distribution(self, *, service_line: str | None = None) -> CostDistribution:
        """Lorenz curve, Gini and top 1/5/10% shares of total (or one service line's) cost.

        Parameters
        ----------
        service_line
            One of :data:`SERVICE_LINES`; None for the total cost.

        Returns
        -------
        CostDistribution

        Raises
        ------
        CostError
            Unknown ``service_line``.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> pc = toy_person_costs()
        >>> round(pc.distribution().gini, 3), pc.distribution(service_line="gp").people
        (0.773, 200)
        """
        col = "cost_gbp"
        if service_line is not None:
            if service_line not in SERVICE_LINES:
                raise CostError(
                    f"The 'service_line' parameter must be one of {list(SERVICE_LINES)}. "
                    f"Got {service_line!r} instead."
                )
            col = service_line
        return CostDistribution.from_costs(self.frame[col].to_numpy())

    def table(self, by: str | Sequence[str], *, aggfunc: str = "mean") -> CheckedTable:
        """Mean (or total) cost per person by unit, released through :mod:`kidresearch.sdc`.

        Parameters
        ----------
        by
            ``"practice"``, ``"lsoa"``, ``"district"``, ``"segment"``, ``"imd_quintile"`` (or
            the column names), or a list of them for a two-way table.
        aggfunc
            ``"mean"`` (cost per person, zeros included) or ``"sum"``.

        Returns
        -------
        kidresearch.sdc.CheckedTable
            Threshold and dominance (p%, n-k) rules are applied to the person-level
            contributions behind each cell.

        Raises
        ------
        CostError
            Unknown ``by`` or ``aggfunc``, or people without the ``by`` column's value.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> pc = toy_person_costs()
        >>> pc.table("practice").released.round(2).to_dict()
        {'G80001': 733.87, 'G80002': 620.7, 'Total': 677.29}
        """
        from kidresearch import sdc

        if aggfunc not in ("mean", "sum"):
            raise CostError(f"The 'aggfunc' parameter must be 'mean' or 'sum'. Got {aggfunc!r}.")
        names = [by] if isinstance(by, str) else list(by)
        cols = [_unit_column(b, allowed=tuple(UNITS)) for b in names]
        frame = self.frame[[*cols, "cost_gbp"]].copy()
        for col in cols:
            if frame[col].isna().any():
                n_missing = int(frame[col].isna().sum())
                raise CostError(
                    f"{n_missing} people have no {col} (LSOA not in the lsoas table?); "
                    "records are never dropped silently: fill or filter them first"
                )
            frame[col] = frame[col].astype(str)
        return sdc.pivot_table(
            frame,
            values="cost_gbp",
            index=cols[0],
            columns=cols[1:] or None,
            aggfunc=aggfunc,
            name=f"costs_{aggfunc}_by_{'_'.join(cols)}_{self.start}_{self.end}",
        )

    def by_service_line(self) -> pd.DataFrame:
        """People with any cost, total and mean cost per person, and share of cost, by line.

        Not disclosure-checked (county-wide totals); use :meth:`summary` to release.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> pc = toy_person_costs()
        >>> pc.by_service_line().set_index("service_line").loc[["gp", "ae"], "users"].tolist()
        [200, 0]
        """
        f = self.frame
        total = float(f.cost_gbp.sum())
        rows = []
        for line in SERVICE_LINES:
            v = f[line].to_numpy()
            rows.append(
                (line, int((v > 0).sum()), float(v.sum()), float(v.mean()) if len(v) else np.nan)
            )
        out = pd.DataFrame(rows, columns=["service_line", "users", "cost_gbp", "mean_cost_gbp"])
        out["share_of_cost"] = out.cost_gbp / total if total else np.nan
        return out

    def summary(self) -> CheckedTable:
        """Total cost and users by service line, released through
        :func:`kidresearch.sdc.check_table` (each user's cost in the line is a contribution for
        the dominance rules). Mean cost per person is total / everyone in :attr:`frame`.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> pc = toy_person_costs()
        >>> pc.summary().released.loc[["gp", "ae"]].tolist()  # no A&E users: suppressed
        [23890.54, nan]
        """
        from kidresearch import sdc

        f = self.frame
        table = self.by_service_line()[["service_line", "users", "cost_gbp"]]
        long = f[list(SERVICE_LINES)].melt(var_name="service_line", value_name="cost_gbp")
        long = long[long.cost_gbp > 0]
        return sdc.check_table(
            table,
            counts="users",
            values="cost_gbp",
            keys=["service_line"],
            contributions=long,
            name=f"costs_by_service_line_{self.start}_{self.end}",
        )

    def gradient(self, *, min_age: int = GRADIENT_MIN_AGE) -> pd.DataFrame:
        """Mean cost per person by IMD quintile among people aged ``min_age`` and over.

        The last column ``ratio_to_q5`` divides by the least deprived fifth (quintile 5);
        Jayatunga et al. (2019) found 1.35 in Kent among the over-55s.

        Parameters
        ----------
        min_age
            Youngest age included (55, as Jayatunga et al.).

        Returns
        -------
        pandas.DataFrame
            ``imd_quintile, people, mean_cost_gbp, ratio_to_q5`` (not disclosure-checked).

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> pc = toy_person_costs()
        >>> pc.gradient().columns.tolist()
        ['imd_quintile', 'people', 'mean_cost_gbp', 'ratio_to_q5']
        """
        f = self.frame[self.frame.age >= min_age]
        g = f.groupby("imd_quintile", observed=True).cost_gbp.agg(["size", "mean"])
        g = g.rename(columns={"size": "people", "mean": "mean_cost_gbp"}).reset_index()
        q5 = g.loc[g.imd_quintile == 5, "mean_cost_gbp"]
        g["ratio_to_q5"] = g.mean_cost_gbp / (float(q5.iloc[0]) if len(q5) else np.nan)
        return g

    def plot(self, ax: Axes | None = None) -> Axes:
        """Lorenz curve of total cost (:meth:`CostDistribution.plot`).

        Parameters
        ----------
        ax
            Axes to draw on; a new figure when None.

        Returns
        -------
        matplotlib.axes.Axes

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> pc = toy_person_costs()
        >>> pc.plot().get_title()
        'Lorenz curve (Gini 0.773)'
        """
        return self.distribution().plot(ax=ax)

    def _repr_html_(self) -> str:
        return (
            f"<p><b>Person costs {self.start} to {self.end}</b>: {len(self.frame):,} people</p>"
            + self.distribution().summary().to_html(index=False)
        )

    def __repr__(self) -> str:
        return f"PersonCosts(start={self.start}, end={self.end}, people={len(self.frame)})"


def person_costs(kid: KIDLike, start: DateLike, end: DateLike) -> PersonCosts:
    """Costs by service line of everyone alive and registered on ``start``, zeros included.

    Parameters
    ----------
    kid
        A KID session (``kidresearch.connect``) or anything with ``.table(name)`` returning
        the research tables (``persons, lsoas, costs, gp_events, prescriptions,
        inpatient_spells, ae_attendances, social_care_packages, hospice_episodes``) as Ibis.
    start, end
        First and last day of the costing window (inclusive). The cohort is fixed on
        ``start``; people who die or leave keep their costs up to then.

    Returns
    -------
    PersonCosts

    Raises
    ------
    CostError
        ``end`` before ``start``, or negative costs in the data (naming the person).
    FrailtyError
        ``start`` or ``end`` is not a date.

    Examples
    --------
    >>> from kidresearch._examples import toy_kid
    >>> kid = toy_kid({
    ...     "persons": [{"person_id": 1, "birth_year": 1950}, {"person_id": 2}],
    ...     "costs": [{"person_id": 1, "activity_date": dt.date(2024, 5, 1),
    ...                "service_line": "ae", "cost_gbp": 148.0}]})
    >>> pc = person_costs(kid, "2024-04-01", "2025-03-31")
    >>> pc.frame.set_index("person_id").cost_gbp.sort_index().tolist()
    [148.0, 0.0]
    """
    s, e = _check_period(start, end)
    frame = person_costs_query(kid, s, e).to_pandas()
    frame = _finish_person_frame(frame)
    negative = frame.cost_gbp < 0
    if negative.any():
        i = int(np.flatnonzero(negative.to_numpy())[0])
        raise CostError(
            f"costs table: {int(negative.sum())} people have a negative total cost_gbp between "
            f"{s} and {e}; first is person_id {frame.person_id.iloc[i]} "
            f"({frame.cost_gbp.iloc[i]:.2f}); expected costs >= 0"
        )
    outside = _excluded_query(kid, s, e).to_pandas().iloc[0]
    excluded = {
        "people": int(outside.people or 0),
        "cost_gbp": float(outside.cost_gbp) if pd.notna(outside.cost_gbp) else 0.0,
    }
    if excluded["people"]:
        log.info(
            "person_costs: %d people with GBP %.0f of costs in %s..%s were not alive and "
            "registered on %s and are outside the cohort",
            excluded["people"],
            excluded["cost_gbp"],
            s,
            e,
            s,
        )
    return PersonCosts(start=s, end=e, frame=frame, excluded=excluded)


# ------------------------------------------------------------------------------------------
# Adjustment ladder
# ------------------------------------------------------------------------------------------
def _unit_column(by: str, *, allowed: tuple[str, ...]) -> str:
    if by in allowed:
        return UNITS[by]
    columns = {UNITS[a]: a for a in allowed}
    if by in columns:
        return by
    raise CostError(f"The 'by' parameter must be one of {list(allowed)}. Got {by!r} instead.")


def _check_ladder(ladder: Sequence[str]) -> tuple[str, ...]:
    if isinstance(ladder, str):
        ladder = [ladder]
    steps = tuple(ladder)
    unknown = [s for s in steps if s not in LADDER_STEPS]
    if unknown or len(set(steps)) != len(steps):
        raise CostError(
            f"The 'ladder' parameter must list distinct steps from {list(LADDER_STEPS)}. "
            f"Got {list(steps)} instead."
        )
    return steps


def _model_frame(frame: pd.DataFrame, steps: tuple[str, ...]) -> pd.DataFrame:
    """Cell variables of the ladder, as small codes (people with equal codes share a cell)."""
    out = pd.DataFrame(index=frame.index)
    if "age_sex" in steps:
        band = _age_band(frame.age)
        sex = pd.Categorical(frame.sex.astype(str))
        codes = sex.codes.astype(np.int64) * len(band.categories) + band.codes
        labels = [f"{x}:{b}" for x in sex.categories for b in band.categories]
        out["age_sex"] = pd.Categorical.from_codes(codes, categories=labels)
    if "morbidity" in steps:
        out["morbidity_band"] = _morbidity_band(frame.deficit_count)
    if "deprivation" in steps:
        out["imd_quintile"] = frame.imd_quintile.astype(int).to_numpy()
        out["age_55_plus"] = (frame.age.to_numpy() >= GRADIENT_MIN_AGE).astype(int)
    return out


def _deprivation_terms(covariates: Sequence[str]) -> list[str]:
    """Deprivation as IMD quintile 1-4 vs 5, separately under 55 and 55+ (0/1 columns)."""
    terms = [f"dep_{age}_q{q}" for age in ("under_55", "55_plus") for q in range(1, 5)]
    if "age_sex" not in covariates:
        terms.append("age_55_plus")  # otherwise spanned by the age bands
    return terms


def _add_deprivation_columns(cells: pd.DataFrame) -> pd.DataFrame:
    cells = cells.copy()
    q = cells.imd_quintile.to_numpy()
    older = cells.age_55_plus.to_numpy() == 1
    for q_level in range(1, 5):
        cells[f"dep_under_55_q{q_level}"] = ((q == q_level) & ~older).astype(float)
        cells[f"dep_55_plus_q{q_level}"] = ((q == q_level) & older).astype(float)
    return cells


def _design(cells: pd.DataFrame, covariates: Sequence[str]) -> pd.DataFrame:
    """Design matrix of a ladder step: intercept, then treatment-coded dummies (first level
    of each categorical is the reference; deprivation as :func:`_deprivation_terms`)."""
    parts = [pd.DataFrame({"Intercept": np.ones(len(cells))}, index=cells.index)]
    for c in covariates:
        if c == "imd_quintile":
            parts.append(cells[_deprivation_terms(covariates)].astype(float))
            continue
        values = cells[c]
        levels = list(values.cat.categories) if hasattr(values, "cat") else sorted(set(values))
        codes = pd.Categorical(values, categories=levels).codes
        dummies = (codes[:, None] == np.arange(1, len(levels))[None, :]).astype(float)
        names = [f"{c}[{level}]" for level in levels[1:]]
        parts.append(pd.DataFrame(dummies, columns=names, index=cells.index))
    return pd.concat(parts, axis=1)


def _fit_cells(cells: pd.DataFrame, covariates: Sequence[str], model: str) -> dict[str, Any]:
    """Fit one ladder step on covariate cells; returns fitted results and cell means."""
    from statsmodels.genmod import families
    from statsmodels.genmod.generalized_linear_model import GLM

    log_link = families.links.Log()
    design = _design(cells, covariates)
    n = cells.n.to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        if model == "gamma":
            fit = GLM(
                cells.sum_cost.to_numpy() / n,
                design,
                family=families.Tweedie(var_power=2, link=log_link),
                var_weights=n,
            ).fit()
            return {"fits": {"gamma": fit}, "mean": np.asarray(fit.predict(design))}
        anyc = GLM(
            cells.n_pos.to_numpy() / n, design, family=families.Binomial(), var_weights=n
        ).fit()
        pos = (cells.n_pos > 0).to_numpy()
        n_pos = cells.n_pos.to_numpy()[pos]
        gamma = GLM(
            cells.sum_cost.to_numpy()[pos] / n_pos,
            design[pos],
            family=families.Gamma(link=log_link),
            var_weights=n_pos,
        ).fit()
    mean = np.asarray(anyc.predict(design)) * np.asarray(gamma.predict(design))
    return {"fits": {"any_cost": anyc, "positive_cost": gamma}, "mean": mean}


def _predict(
    fitted: dict[str, Any], data: pd.DataFrame, covariates: Sequence[str], model: str
) -> np.ndarray:
    fits = fitted["fits"]
    design = _design(data, covariates)
    if model == "gamma":
        return np.asarray(fits["gamma"].predict(design))
    return np.asarray(fits["any_cost"].predict(design)) * np.asarray(
        fits["positive_cost"].predict(design)
    )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


@dataclass(frozen=True, eq=False)
class CostMap:
    """Observed / expected costs of each unit at every step of an adjustment ladder.

    Attributes
    ----------
    by
        ``"practice"``, ``"lsoa"`` or ``"district"``.
    steps
        ``("crude", *ladder)``; each step adds its adjustment to those before it.
    model
        ``"gamma"`` or ``"two_part"`` (see the module docstring).
    units
        One row per unit: ``unit, people, observed_gbp, observed_mean_gbp`` and, for every
        step ``s``: ``expected_<s>`` (GBP), ``ratio_<s>`` (O/E), ``rank_<s>`` (1 = highest
        ratio); ``rank_change`` (crude rank minus final rank: positive = moved up);
        ``latitude, longitude`` for maps.
    ladder
        One row per step: covariates, ``r2`` (share of person-level cost variance explained),
        ``var_log_ratio`` (variance of log O/E across units, weighted by people),
        ``noise_var_log_ratio`` (its expected size from chance alone), ``excess_var_log_ratio``
        (the difference: real between-unit variation), ``variance_absorbed`` (share of the
        crude excess variance removed by this and earlier steps), ``spearman_vs_previous``,
        ``spearman_vs_crude``, ``gradient_55_plus`` (O/E of the most vs the least deprived
        fifth among people 55+: the deprivation gradient left unexplained at this step; at the
        crude step it is the observed ratio of mean costs) with its 95% interval
        ``gradient_ci_lower``/``gradient_ci_upper`` (delta method from person residuals: an
        interval containing 1 means no gradient is left beyond chance) and
        ``adjusted_gradient_55_plus`` (the model's own most vs least deprived ratio for the
        55+, holding the step's other adjustments fixed; only from the deprivation step).
    gradient
        One row per IMD quintile among people 55+: people, observed mean cost, and at every
        step the O/E (``ratio_<step>``) and its standard error on the log scale.
    fits
        ``{step: {"gamma": result}}`` or ``{step: {"any_cost": ..., "positive_cost": ...}}``
        (statsmodels GLM results on covariate cells).
    contributions
        Person-level positive costs by unit (for the dominance rules of
        :meth:`released_units`; never shown).
    """

    by: str
    steps: tuple[str, ...]
    model: str
    start: dt.date
    end: dt.date
    units: pd.DataFrame = field(repr=False)
    ladder: pd.DataFrame = field(repr=False)
    gradient: pd.DataFrame = field(repr=False)
    fits: dict[str, dict[str, Any]] = field(repr=False, default_factory=dict)
    contributions: pd.DataFrame | None = field(repr=False, default=None)

    def summary(self) -> pd.DataFrame:
        """The ladder: what each step explains, how ranks move and the deprivation gradient.

        Aggregates over all units and people (no unit-level figures), so it can be released.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> cm = map(data=toy_person_costs(), by="practice", ladder=["age_sex"])
        >>> cm.summary().step.tolist()
        ['crude', 'age_sex']
        """
        return self.ladder.copy()

    def to_frame(self) -> pd.DataFrame:
        """Tidy copy: one row per unit and step with ``expected_gbp``, ``ratio``, ``rank``.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> cm = map(data=toy_person_costs(), by="practice", ladder=["age_sex"])
        >>> cm.to_frame()[["unit", "step", "rank"]].head(2).to_dict("records")
        [{'unit': 'G80001', 'step': 'crude', 'rank': 1}, {'unit': 'G80002', 'step': 'crude', 'rank': 2}]
        """
        parts = []
        for step in self.steps:
            part = self.units[["unit", "people", "observed_gbp"]].copy()
            part["step"] = step
            part["expected_gbp"] = self.units[f"expected_{step}"]
            part["ratio"] = self.units[f"ratio_{step}"]
            part["rank"] = self.units[f"rank_{step}"]
            parts.append(part)
        out = pd.concat(parts, ignore_index=True)
        out["step"] = pd.Categorical(out.step, categories=list(self.steps), ordered=True)
        return out

    def movers(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` units whose rank moved most between the crude and the final step.

        Parameters
        ----------
        n
            How many units.

        Returns
        -------
        pandas.DataFrame
            ``unit, people``, the first and last step's rank and ratio, ``rank_change``.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> cm = map(data=toy_person_costs(), by="practice", ladder=["age_sex"])
        >>> cm.movers(1).rank_change.tolist()
        [0.0]
        """
        cols = ["unit", "people", f"rank_{self.steps[0]}", f"rank_{self.steps[-1]}"]
        cols += ["rank_change", f"ratio_{self.steps[0]}", f"ratio_{self.steps[-1]}"]
        order = self.units.rank_change.abs().sort_values(ascending=False, kind="stable").index
        return self.units.loc[order, cols].head(n).reset_index(drop=True)

    def released_units(self) -> pd.DataFrame:
        """The units table with units failing disclosure control (threshold or dominance on
        their observed cost, via :func:`kidresearch.sdc.check_table`) blanked.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> cm = map(data=toy_person_costs(), by="practice", ladder=["age_sex"])
        >>> cm.released_units().people.tolist()
        [100.0, 100.0]
        """
        from kidresearch import sdc

        contributions = self.contributions
        table = self.units[["unit", "people", "observed_gbp"]]
        checked = sdc.check_table(
            table,
            counts="people",
            values="observed_gbp",
            keys=["unit"],
            contributions=contributions,
            margins=False,
            name=f"cost_map_{self.by}_{self.start}_{self.end}",
        )
        status = checked.to_frame().set_index("unit")["status"]
        ok = self.units.unit.astype(str).map(status.astype(str)).eq("ok").to_numpy()
        out = self.units.copy()
        value_cols = [c for c in out.columns if c not in ("unit", "latitude", "longitude")]
        out.loc[~ok, value_cols] = np.nan
        return out

    def plot(self, ax: Axes | None = None, *, kind: str = "ratios") -> Axes:
        """``kind="ratios"``: each unit's O/E across the steps (one line per unit);
        ``kind="ranks"``: crude rank against final rank. Returns the Axes.

        Parameters
        ----------
        ax
            Axes to draw on; a new figure when None.
        kind
            ``"ratios"`` or ``"ranks"``.

        Returns
        -------
        matplotlib.axes.Axes

        Raises
        ------
        CostError
            Unknown ``kind``.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> cm = map(data=toy_person_costs(), by="practice", ladder=["age_sex"])
        >>> cm.plot(kind="ranks").get_xlabel()
        'rank at crude (1 = highest O/E)'
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4.5))
        if kind == "ratios":
            ratios = self.units[[f"ratio_{s}" for s in self.steps]].to_numpy().T
            x = np.arange(len(self.steps))
            ax.plot(x, ratios, color="#3a6ea5", alpha=0.35, linewidth=0.8)
            ax.axhline(1.0, color="grey", linestyle="--")
            ax.set_xticks(x, list(self.steps))
            ax.set_ylabel("observed / expected cost")
            ax.set_title(f"{self.by}: O/E at each adjustment step ({self.model})")
        elif kind == "ranks":
            first, last = self.steps[0], self.steps[-1]
            ax.scatter(self.units[f"rank_{first}"], self.units[f"rank_{last}"], s=12)
            n = len(self.units)
            ax.plot([1, n], [1, n], color="grey", linestyle="--")
            ax.set_xlabel(f"rank at {first} (1 = highest O/E)")
            ax.set_ylabel(f"rank at {last}")
            rho = self.ladder.spearman_vs_crude.iloc[-1]
            ax.set_title(f"{self.by}: rank movement (Spearman {rho:.2f})")
        else:
            raise CostError(f"The 'kind' parameter must be 'ratios' or 'ranks'. Got {kind!r}.")
        return ax

    def map(self, ax: Axes | None = None, *, step: str | None = None) -> Axes:
        """Units on their synthetic coordinates coloured by O/E at ``step`` (default: last).

        Parameters
        ----------
        ax
            Axes to draw on; a new figure when None.
        step
            A step of :attr:`steps`; None for the last.

        Returns
        -------
        matplotlib.axes.Axes

        Raises
        ------
        CostError
            Unknown ``step``.

        Examples
        --------
        >>> from kidresearch._examples import toy_person_costs
        >>> cm = map(data=toy_person_costs(), by="practice", ladder=["age_sex"])
        >>> cm.map(step="crude").get_title()
        'practice cost O/E after crude'
        """
        import matplotlib.pyplot as plt

        step = step or self.steps[-1]
        if step not in self.steps:
            raise CostError(
                f"The 'step' parameter must be one of {list(self.steps)}. Got {step!r}."
            )
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 5))
        u = self.units
        points = ax.scatter(
            u.longitude,
            u.latitude,
            c=u[f"ratio_{step}"],
            cmap="RdBu_r",
            vmin=min(0.5, float(np.nanmin(u[f"ratio_{step}"]))),
            vmax=max(1.5, float(np.nanmax(u[f"ratio_{step}"]))),
            s=np.clip(u.people / max(u.people.max(), 1) * 120, 8, 120),
            edgecolors="black",
            linewidths=0.3,
        )
        ax.figure.colorbar(points, ax=ax, label="observed / expected cost")
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
        ax.set_title(f"{self.by} cost O/E after {step}")
        return ax

    def _repr_html_(self) -> str:
        return (
            f"<p><b>Cost map by {self.by}</b> ({self.model}, {len(self.units)} units, "
            f"{self.start} to {self.end})</p>" + self.ladder.to_html(index=False)
        )

    def __repr__(self) -> str:
        return f"CostMap(by={self.by!r}, steps={self.steps}, model={self.model!r})"


def _coordinates(kid: KIDLike | None, by: str, units: pd.DataFrame) -> pd.DataFrame:
    lat = pd.Series(np.nan, index=units.index)
    lon = pd.Series(np.nan, index=units.index)
    if kid is None:
        return units.assign(latitude=lat, longitude=lon)
    try:
        if by == "practice":
            ref = kid.table("practices").select("practice_code", "latitude", "longitude")
            ref = ref.to_pandas().rename(columns={"practice_code": "unit"})
        else:
            ref = kid.table("lsoas").select("lsoa_code", "district", "latitude", "longitude")
            ref = ref.to_pandas()
            if by == "lsoa":
                ref = ref.rename(columns={"lsoa_code": "unit"})
            else:
                ref = (
                    ref.groupby("district")[["latitude", "longitude"]]
                    .mean()
                    .reset_index()
                    .rename(columns={"district": "unit"})
                )
    except Exception as exc:  # coordinates are for maps only; the analysis stands without them
        log.warning("cost map: no coordinates for %s (%s)", by, exc)
        return units.assign(latitude=lat, longitude=lon)
    ref = ref[["unit", "latitude", "longitude"]].drop_duplicates("unit")
    ref["unit"] = ref["unit"].astype(str)
    return units.merge(ref, on="unit", how="left")


def map(
    kid: KIDLike | None = None,
    *,
    by: str = "practice",
    ladder: Sequence[str] = ("age_sex", "morbidity", "deprivation"),
    start: DateLike | None = None,
    end: DateLike | None = None,
    model: Model = "gamma",
    data: PersonCosts | None = None,
) -> CostMap:
    """Each unit's observed / expected cost at every step of an adjustment ladder.

    Step ``crude`` expects everyone to cost the KID mean; each later step adds its
    adjustment to the model (``age_sex``: 5-year age band x sex; ``morbidity``: eFI deficit
    count band; ``deprivation``: IMD quintile of the LSOA). A unit's expected cost is the sum
    of its people's fitted costs; O/E above 1 means it costs more than its people's
    characteristics predict. Adjusting for deprivation removes the deprivation gradient from
    the ratios: the ladder table shows that gradient (O/E of the most vs the least deprived
    fifth among the 55+) at every step, so a reader sees what the adjustment takes away.

    Parameters
    ----------
    kid
        KID session (not needed when ``data`` is given, except for map coordinates).
    by
        ``"practice"``, ``"lsoa"`` or ``"district"`` (of residence).
    ladder
        Ordered adjustments from ``"age_sex"``, ``"morbidity"``, ``"deprivation"``.
    start, end
        Costing window (inclusive), as in :func:`person_costs`.
    model
        ``"gamma"`` (gamma-variance log-link quasi-likelihood on all costs, zeros included)
        or ``"two_part"`` (logit for any cost x gamma GLM for positive costs).
    data
        Person costs already computed with :func:`person_costs` (then ``start``/``end``
        are taken from it).

    Returns
    -------
    CostMap

    Raises
    ------
    CostError
        Unknown ``by``, ``ladder`` step or ``model``; no data or dates.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> n = 4000
    >>> q = rng.integers(1, 6, n)
    >>> frame = pd.DataFrame({
    ...     "person_id": np.arange(n), "sex": rng.choice(["F", "M"], n),
    ...     "age": rng.integers(55, 90, n), "deficit_count": rng.integers(0, 15, n),
    ...     "imd_quintile": q, "practice_code": np.where(q <= 2, "deprived", "affluent"),
    ...     "cost_gbp": rng.gamma(1.0, 1000 * np.exp(0.1 * (5 - q)))})
    >>> data = PersonCosts(dt.date(2024, 1, 1), dt.date(2024, 12, 31), frame)
    >>> cm = map(data=data, by="practice", ladder=["deprivation"])
    >>> bool(cm.ladder.gradient_55_plus.iloc[0] > 1.2), float(round(cm.ladder.gradient_55_plus.iloc[-1], 2))
    (True, 1.0)
    """
    if model not in ("gamma", "two_part"):
        raise CostError(
            f"The 'model' parameter must be 'gamma' or 'two_part'. Got {model!r} instead."
        )
    steps = _check_ladder(ladder)
    unit_col = _unit_column(by, allowed=MAP_UNITS)
    by_name = {v: k for k, v in UNITS.items()}[unit_col]
    if data is None:
        if kid is None or start is None or end is None:
            raise CostError("costs.map needs a KID session with 'start' and 'end', or 'data'.")
        data = person_costs(kid, start, end)
    elif not isinstance(data, PersonCosts):
        raise CostError(
            f"The 'data' parameter must be PersonCosts (from person_costs). "
            f"Got {type(data).__name__} instead."
        )
    frame = data.frame
    needed = ["cost_gbp", unit_col, "age"]
    if "age_sex" in steps:
        needed += ["sex"]
    if "morbidity" in steps:
        needed += ["deficit_count"]
    needed += ["imd_quintile"]
    missing = frame[needed].isna().any(axis=1)
    if missing.any():
        warnings.warn(
            f"costs.map: {int(missing.sum())} people left out: missing "
            f"{[c for c in needed if frame[c].isna().any()]} (e.g. LSOA not in lsoas)",
            DroppedRowsWarning,
            stacklevel=2,
        )
        frame = frame[~missing]
    cost = frame.cost_gbp.to_numpy(dtype=float)
    unit = frame[unit_col].astype(str).to_numpy()
    quintile = frame.imd_quintile.astype(int).to_numpy()
    older = frame.age.to_numpy() >= GRADIENT_MIN_AGE

    covars = _model_frame(frame, steps)
    keys = list(covars.columns)
    if keys:
        grouped = covars.groupby(keys, sort=True, observed=True)
        cell = grouped.ngroup().to_numpy()
        cells = grouped.size().rename("n").reset_index()
    else:
        cell = np.zeros(len(frame), dtype=int)
        cells = pd.DataFrame({"n": [len(frame)]})
    n_cells = len(cells)
    cells["n"] = cells["n"].astype(float)
    if "imd_quintile" in keys:
        cells = _add_deprivation_columns(cells)
    cells["sum_cost"] = np.bincount(cell, weights=cost, minlength=n_cells)
    cells["n_pos"] = np.bincount(cell, weights=(cost > 0).astype(float), minlength=n_cells)
    cells["sum_sq"] = np.bincount(cell, weights=cost**2, minlength=n_cells)
    cells["n_older"] = np.bincount(cell, weights=older.astype(float), minlength=n_cells)

    unit_index, unit_codes = pd.factorize(unit, sort=True)  # hashing: fast on 1.8M strings
    unit_codes = np.asarray(unit_codes, dtype=object)
    n_units = len(unit_codes)
    people = np.bincount(unit_index, minlength=n_units).astype(float)
    observed = np.bincount(unit_index, weights=cost, minlength=n_units)
    units = pd.DataFrame(
        {"unit": unit_codes, "people": people.astype(int), "observed_gbp": observed}
    )
    units["observed_mean_gbp"] = observed / people
    q_older = quintile[older]
    cost_older = cost[older]
    grad = pd.DataFrame({"imd_quintile": np.arange(1, 6)})
    grad["people"] = np.bincount(q_older, minlength=6)[1:]
    obs_q = np.bincount(q_older, weights=cost_older, minlength=6)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        grad["observed_mean_gbp"] = obs_q / grad.people

    sst = float(((cost - cost.mean()) ** 2).sum())
    rows, fits = [], {}
    covariates: list[str] = []
    previous_ratio: np.ndarray | None = None
    crude_ratio: np.ndarray | None = None
    crude_excess = np.nan
    for step in ("crude", *steps):
        if step != "crude":
            covariates.append(LADDER_STEPS[step])
        fitted = _fit_cells(cells, covariates, model)
        fits[step] = fitted["fits"]
        mu_cell = fitted["mean"]
        mu = mu_cell[cell]
        expected = np.bincount(unit_index, weights=mu, minlength=n_units)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = observed / expected
            resid_sq = np.bincount(unit_index, weights=(cost - mu) ** 2, minlength=n_units)
            # Delta method: var(log O/E) from chance ~ sum of squared residuals / E^2.
            noise = resid_sq / expected**2
        units[f"expected_{step}"] = expected
        units[f"ratio_{step}"] = ratio
        units[f"rank_{step}"] = (
            pd.Series(ratio).rank(ascending=False, method="min").astype("Int64").to_numpy()
        )
        ok = (ratio > 0) & np.isfinite(ratio)
        w = people[ok] / people[ok].sum()
        log_ratio = np.log(ratio[ok])
        centre = (w * log_ratio).sum()
        var_log = float((w * (log_ratio - centre) ** 2).sum())
        noise_var = float((w * noise[ok]).sum())
        excess = var_log - noise_var
        if step == "crude":
            crude_excess = excess
            crude_ratio = ratio
        sse = float((cells.sum_sq - 2 * mu_cell * cells.sum_cost + cells.n * mu_cell**2).sum())
        exp_q = np.bincount(q_older, weights=mu[older], minlength=6)[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            oe_q = obs_q / exp_q
            # Delta method: var(log O/E) ~ sum of squared residuals / O^2 (chance alone).
            resid_q = np.bincount(q_older, weights=(cost_older - mu[older]) ** 2, minlength=6)
            se_q = np.sqrt(resid_q[1:]) / obs_q
        grad[f"ratio_{step}"] = oe_q
        grad[f"se_log_ratio_{step}"] = se_q
        se_gradient = float(np.hypot(se_q[0], se_q[4]))
        gradient = float(oe_q[0] / oe_q[4])
        adjusted = np.nan
        if "imd_quintile" in covariates:
            older_cells = cells[cells.n_older > 0]
            weights = older_cells.n_older.to_numpy()
            most = _predict(
                fitted,
                _add_deprivation_columns(older_cells.assign(imd_quintile=1)),
                covariates,
                model,
            )
            least = _predict(
                fitted,
                _add_deprivation_columns(older_cells.assign(imd_quintile=5)),
                covariates,
                model,
            )
            adjusted = float((weights * most).sum() / (weights * least).sum())
        rows.append(
            {
                "step": step,
                "covariates": " + ".join(covariates) or "(none)",
                "r2": 1 - sse / sst if sst > 0 else np.nan,
                "var_log_ratio": var_log,
                "noise_var_log_ratio": noise_var,
                "excess_var_log_ratio": excess,
                "variance_absorbed": (
                    1 - excess / crude_excess if crude_excess and crude_excess > 0 else np.nan
                ),
                "spearman_vs_previous": (
                    _spearman(previous_ratio, ratio) if previous_ratio is not None else np.nan
                ),
                "spearman_vs_crude": _spearman(crude_ratio, ratio),
                "gradient_55_plus": gradient,
                "gradient_ci_lower": gradient * float(np.exp(-Z_95 * se_gradient)),
                "gradient_ci_upper": gradient * float(np.exp(Z_95 * se_gradient)),
                "adjusted_gradient_55_plus": adjusted,
            }
        )
        previous_ratio = ratio
    all_steps = ("crude", *steps)
    units["rank_change"] = units[f"rank_{all_steps[0]}"].astype(float) - units[
        f"rank_{all_steps[-1]}"
    ].astype(float)
    units = _coordinates(kid, by_name, units)
    ladder_frame = pd.DataFrame(rows)
    ladder_frame["published_gradient_55_plus"] = PUBLISHED_GRADIENT_55_PLUS
    result = CostMap(
        by=by_name,
        steps=all_steps,
        model=model,
        start=data.start,
        end=data.end,
        units=units,
        ladder=ladder_frame,
        gradient=grad,
        fits=fits,
        contributions=pd.DataFrame({"unit": unit, "observed_gbp": cost}),
    )
    return result


# ------------------------------------------------------------------------------------------
# Panel view
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PanelCosts:
    """Practice-year mean costs and panel models of their trend.

    Attributes
    ----------
    frame
        One row per practice and year: ``practice_code, year, people, cost_gbp,
        mean_cost_gbp, share_65_plus, mean_age``.
    fixed_effects
        linearmodels PanelOLS: ``mean_cost_gbp ~ 1 + year_trend + share_65_plus +
        EntityEffects`` (weights = people; SEs clustered by practice). ``year_trend`` is the
        county-wide change in GBP per person per year within practices.
    two_way
        PanelOLS with practice and year effects (``EntityEffects + TimeEffects``).
    random_effects
        linearmodels RandomEffects with the same terms as ``fixed_effects``.
    """

    by: str
    years: tuple[int, ...]
    frame: pd.DataFrame = field(repr=False)
    fixed_effects: Any = field(repr=False)
    two_way: Any = field(repr=False)
    random_effects: Any = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """A copy of the practice-year frame.

        Examples
        --------
        >>> from kidresearch._examples import toy_panel_kid
        >>> result = panel(toy_panel_kid(), years=[2022, 2023, 2024])
        >>> result.to_frame().groupby("year").people.sum().tolist()
        [40, 40, 40]
        """
        return self.frame.copy()

    def year_means(self) -> pd.DataFrame:
        """Mean cost per person by year over all practices (people-weighted).

        Examples
        --------
        >>> from kidresearch._examples import toy_panel_kid
        >>> result = panel(toy_panel_kid(), years=[2022, 2023, 2024])
        >>> result.year_means().mean_cost_gbp.tolist()
        [127.0, 137.0, 147.0]
        """
        g = self.frame.groupby("year")[["people", "cost_gbp"]].sum()
        g["mean_cost_gbp"] = g.cost_gbp / g.people
        return g.reset_index()

    def summary(self) -> pd.DataFrame:
        """Coefficients of the three models with standard errors and 95% intervals.

        Examples
        --------
        >>> from kidresearch._examples import toy_panel_kid
        >>> result = panel(toy_panel_kid(), years=[2022, 2023, 2024])
        >>> trend = result.summary().query("term == 'year_trend'")
        >>> trend.estimate.round(6).tolist()  # the toy's costs rise by GBP 10 a year
        [10.0, 10.0]
        """
        rows = []
        for name, res in (
            ("PanelOLS (practice effects)", self.fixed_effects),
            ("PanelOLS (practice + year effects)", self.two_way),
            ("RandomEffects", self.random_effects),
        ):
            ci = res.conf_int()
            for term in res.params.index:
                rows.append(
                    {
                        "model": name,
                        "term": term,
                        "estimate": float(res.params[term]),
                        "std_error": float(res.std_errors[term]),
                        "ci_lower": float(ci.loc[term, "lower"]),
                        "ci_upper": float(ci.loc[term, "upper"]),
                        "p_value": float(res.pvalues[term]),
                    }
                )
        return pd.DataFrame(rows)

    def plot(self, ax: Axes | None = None) -> Axes:
        """Each practice's mean cost per person by year (thin lines) and the KID mean.

        Parameters
        ----------
        ax
            Axes to draw on; a new figure when None.

        Returns
        -------
        matplotlib.axes.Axes

        Examples
        --------
        >>> from kidresearch._examples import toy_panel_kid
        >>> result = panel(toy_panel_kid(), years=[2022, 2023, 2024])
        >>> result.plot().get_title()
        'Practice mean costs by year'
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4.5))
        wide = self.frame.pivot(index="year", columns="practice_code", values="mean_cost_gbp")
        ax.plot(wide.index, wide.to_numpy(), color="#9bb7d4", linewidth=0.7, alpha=0.6)
        means = self.year_means()
        ax.plot(means.year, means.mean_cost_gbp, color="black", linewidth=2, label="all")
        ax.set_xlabel("year")
        ax.set_ylabel("mean cost per person (GBP)")
        ax.set_title("Practice mean costs by year")
        ax.legend()
        return ax

    def _repr_html_(self) -> str:
        return "<p><b>Practice cost panel</b></p>" + self.summary().to_html(index=False)


def panel(
    kid: KIDLike,
    *,
    by: str = "practice",
    years: Sequence[int],
) -> PanelCosts:
    """Practice-year mean costs with practice and year effects (linearmodels).

    Each year's population is everyone alive and registered on 1 January (practice of
    registration as held in ``persons``); their costs are those of the calendar year.

    Parameters
    ----------
    kid
        KID session.
    by
        ``"practice"`` (the only panel unit for now).
    years
        Calendar years to include (at least two, complete in the data).

    Returns
    -------
    PanelCosts

    Raises
    ------
    CostError
        ``by`` is not ``"practice"`` or fewer than two years.

    Examples
    --------
    >>> from kidresearch._examples import toy_panel_kid
    >>> result = panel(toy_panel_kid(), years=[2022, 2023, 2024])
    >>> result.year_means()[["year", "people", "mean_cost_gbp"]]
       year  people  mean_cost_gbp
    0  2022      40          127.0
    1  2023      40          137.0
    2  2024      40          147.0
    """
    from linearmodels.panel import PanelOLS, RandomEffects

    if by not in ("practice", "practice_code"):
        raise CostError(f"The 'by' parameter must be 'practice'. Got {by!r} instead.")
    years_t = tuple(sorted({int(y) for y in years}))
    if len(years_t) < 2:
        raise CostError(f"The 'years' parameter must hold at least two years. Got {years!r}.")
    costs = kid.table("costs")
    frames = []
    for year in years_t:
        start, end = dt.date(year, 1, 1), dt.date(year, 12, 31)
        cohort = people_on(kid, start, columns=("person_id", "practice_code", "age"))
        window = costs.filter(costs.activity_date.between(ibis.literal(start), ibis.literal(end)))
        spend = window.group_by("person_id").aggregate(cost_gbp=window.cost_gbp.sum())
        joined = cohort.left_join(spend, "person_id").drop("person_id_right")
        joined = joined.mutate(cost_gbp=joined.cost_gbp.fill_null(0.0))
        agg = joined.group_by("practice_code").aggregate(
            people=joined.count(),
            cost_gbp=joined.cost_gbp.sum(),
            share_65_plus=(joined.age >= 65).cast("float64").mean(),
            mean_age=joined.age.mean(),
        )
        frames.append(agg.mutate(year=ibis.literal(year)).to_pandas())
    frame = pd.concat(frames, ignore_index=True)
    frame["mean_cost_gbp"] = frame.cost_gbp / frame.people
    frame["year_trend"] = (frame.year - years_t[0]).astype(float)
    frame = frame.sort_values(["practice_code", "year"]).reset_index(drop=True)
    indexed = frame.set_index(["practice_code", "year"])
    weights = indexed.people.astype(float)
    fe = PanelOLS.from_formula(
        "mean_cost_gbp ~ 1 + year_trend + share_65_plus + EntityEffects",
        data=indexed,
        weights=weights,
    ).fit(cov_type="clustered", cluster_entity=True)
    tw = PanelOLS.from_formula(
        "mean_cost_gbp ~ 1 + share_65_plus + EntityEffects + TimeEffects",
        data=indexed,
        weights=weights,
    ).fit(cov_type="clustered", cluster_entity=True)
    re = RandomEffects.from_formula(
        "mean_cost_gbp ~ 1 + year_trend + share_65_plus", data=indexed, weights=weights
    ).fit(cov_type="clustered", cluster_entity=True)
    return PanelCosts(
        by="practice",
        years=years_t,
        frame=frame.drop(columns="year_trend"),
        fixed_effects=fe,
        two_way=tw,
        random_effects=re,
    )
