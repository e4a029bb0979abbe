"""Standard public-health statistics with confidence intervals, vectorised over groups.

These are the building blocks that the frailty, risk and practice-variation recipes call: crude
proportions and rates, directly and indirectly standardised rates and ratios, and funnel-plot
control limits with significance labels. Each function follows the methods of the Office for
Health Improvement and Disparities (formerly Public Health England) as implemented in the R
package PHEindicatormethods (v2.1, the reference implementation; see ``docs/statistics.md``):

* :func:`proportion` - Wilson score interval (Wilson 1927; Newcombe and Altman 2000).
* :func:`rate` - exact Poisson interval from the chi-squared distribution for counts below 10,
  Byar's approximation otherwise (Breslow and Day 1987; Armitage and Berry 2002).
* :func:`dsr` - directly standardised rate, Dobson et al. (1991) interval built on Byar's limits
  for the total count; not computed when the total count is below 10.
* :func:`isr` - indirectly standardised ratio (observed / expected, e.g. an SMR) or rate, exact
  interval below 10 observed events and Byar's otherwise.
* :func:`funnel_limits` and :func:`funnel_significance` - funnel-plot control limits at 95% and
  99.8% (binomial for proportions, Poisson for ratios and rates) and the label of each unit, per
  the Fingertips public health technical guidance.

Every function takes a data frame first and returns a tidy :class:`pandas.DataFrame` whose column
names mirror PHEindicatormethods: ``value``, ``lowercl``/``uppercl`` for one confidence level or
``lower95_0cl``/``upper95_0cl``/``lower99_8cl``/``upper99_8cl`` for several, then ``confidence``,
``statistic`` and ``method``. Bad input raises :class:`StatsError` naming the column and rows.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as _sps

from kidresearch.data import load
from kidresearch.errors import StatsError

__all__ = [
    "ESP2013_BANDS",
    "SIGNIFICANCE_LEVELS",
    "StatsError",
    "age_band",
    "byars_lower",
    "byars_upper",
    "dsr",
    "european_standard_population",
    "funnel_limits",
    "funnel_significance",
    "isr",
    "proportion",
    "rate",
    "wilson_lower",
    "wilson_upper",
]

logger = logging.getLogger(__name__)

#: The 19 age bands of the 2013 European Standard Population (Eurostat 2013 revision).
ESP2013_BANDS: tuple[str, ...] = (
    "0-4",
    "5-9",
    "10-14",
    "15-19",
    "20-24",
    "25-29",
    "30-34",
    "35-39",
    "40-44",
    "45-49",
    "50-54",
    "55-59",
    "60-64",
    "65-69",
    "70-74",
    "75-79",
    "80-84",
    "85-89",
    "90+",
)

#: Counts below this are too small for Byar's approximation (rates, ratios) or for a DSR at all;
#: PHEindicatormethods and the Fingertips technical guidance use 10.
SMALL_COUNT = 10

#: Labels of :func:`funnel_significance`, in PHEindicatormethods' factor order.
SIGNIFICANCE_LEVELS: tuple[str, ...] = (
    "High (0.001)",
    "High (0.025)",
    "Low (0.001)",
    "Low (0.025)",
    "Not significant",
    "Not applicable for events less than 10 for dsrs",
)

Confidence = float | Sequence[float]
By = str | Sequence[str] | None


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _as_list(by: By) -> list[str]:
    if by is None:
        return []
    if isinstance(by, str):
        return [by]
    return list(by)


def _require_columns(data: pd.DataFrame, columns: Sequence[Hashable], func: str) -> None:
    if not isinstance(data, pd.DataFrame):
        raise StatsError(
            f"The 'data' parameter of {func} must be a pandas DataFrame. "
            f"Got {type(data).__name__} instead."
        )
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise StatsError(
            f"{func}: column(s) {missing} not found in data. "
            f"Available columns: {list(map(str, data.columns))}."
        )


def _rows(index: pd.Index, limit: int = 5) -> str:
    shown = ", ".join(map(str, index[:limit]))
    more = f" and {len(index) - limit} more" if len(index) > limit else ""
    return f"row(s) {shown}{more}"


def _numeric(
    data: pd.DataFrame,
    column: str,
    func: str,
    *,
    allow_na: bool = False,
    positive: bool = False,
) -> np.ndarray:
    """Return a column as float, raising StatsError on non-numeric, missing or negative values."""
    series = data[column]
    if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
        raise StatsError(
            f"{func}: column '{column}' must be numeric. Got dtype {series.dtype} instead."
        )
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    missing = np.isnan(values)
    if missing.any() and not allow_na:
        raise StatsError(
            f"{func}: column '{column}' has {int(missing.sum())} missing value(s) at "
            f"{_rows(series.index[missing])}; expected a number in every row. Fill or remove "
            "them first (rows are never dropped silently)."
        )
    bad = (values <= 0) if positive else (values < 0)
    bad &= ~missing
    if bad.any():
        expected = "greater than zero" if positive else "greater than or equal to zero"
        raise StatsError(
            f"{func}: column '{column}' must be {expected}; {int(bad.sum())} value(s) are not, at "
            f"{_rows(series.index[bad])} (e.g. {values[bad][0]:g})."
        )
    return values


def _confidence_levels(
    confidence: Confidence | None, func: str, *, allow_none: bool = False
) -> tuple[float, ...]:
    """Scale and check confidence levels: each 0.9-1 or 90-100 (scaled), as PHEindicatormethods.

    ``None`` (PHEindicatormethods' ``NA``) asks for no limits where ``allow_none``.
    """
    if confidence is None and allow_none:
        return ()
    levels = (confidence,) if np.isscalar(confidence) else tuple(confidence)  # type: ignore[arg-type]
    if len(levels) == 0:
        raise StatsError(f"{func}: 'confidence' must hold at least one level.")
    out = []
    for level in levels:
        try:
            level = float(level)
        except (TypeError, ValueError):
            raise StatsError(
                f"{func}: 'confidence' must be numeric. Got {level!r} instead."
            ) from None
        if level < 0.9 or (1 < level < 90) or level > 100:
            raise StatsError(
                f"{func}: confidence level must be between 0.9 and 1 or between 90 and 100. "
                f"Got {level:g} instead."
            )
        out.append(level / 100 if level >= 90 else level)
    if len(set(out)) != len(out):
        raise StatsError(f"{func}: confidence levels must be distinct. Got {levels}.")
    return tuple(out)


def _ci_names(levels: tuple[float, ...]) -> list[tuple[str, str]]:
    if len(levels) == 1:
        return [("lowercl", "uppercl")]
    names = []
    for level in levels:
        tag = f"{level * 100:.1f}".replace(".", "_")
        names.append((f"lower{tag}cl", f"upper{tag}cl"))
    return names


def _confidence_column(n_rows: int, levels: tuple[float, ...]) -> pd.Categorical:
    if not levels:  # no limits asked for: a missing label
        return pd.Categorical.from_codes(np.full(n_rows, -1, dtype=np.int8), categories=["none"])
    return _labels(n_rows, _confidence_label(levels))


def _confidence_label(levels: tuple[float, ...]) -> str:
    return ", ".join(f"{round(level * 100, 10):g}%" for level in levels)


def _fmt_number(value: float) -> str:
    """Write a multiplier the way R's ``format(x, scientific = FALSE)`` does (100000, 0.5)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _labels(
    n_rows: int, label: str, other: str | None = None, use_other: np.ndarray | None = None
) -> pd.Categorical:
    """A metadata column (confidence, statistic, method) as a cheap categorical of strings."""
    if other is None or use_other is None:
        return pd.Categorical.from_codes(np.zeros(n_rows, dtype=np.int8), categories=[label])
    codes = np.asarray(use_other, dtype=np.int8)
    return pd.Categorical.from_codes(codes, categories=[label, other])


def _check_count(x: np.ndarray | float, func: str) -> np.ndarray:
    values = np.asarray(x, dtype=float)
    if (values < 0).any():
        raise StatsError(f"{func}: observed counts 'x' must be >= 0. Got {values.min():g}.")
    return values


def _check_binomial(
    x: np.ndarray | float, n: np.ndarray | float, func: str
) -> tuple[np.ndarray, np.ndarray]:
    xs = _check_count(x, func)
    ns = np.asarray(n, dtype=float)
    if (ns <= 0).any():
        raise StatsError(f"{func}: sample sizes 'n' must be > 0. Got {ns.min():g}.")
    if (xs > ns).any():
        raise StatsError(f"{func}: 'x' must be less than or equal to 'n' for a proportion.")
    return xs, ns


def _z(level: float) -> float:
    return float(_sps.norm.ppf(level + (1 - level) / 2))


# --------------------------------------------------------------------------------------------
# Interval primitives (vectorised over numpy arrays)
# --------------------------------------------------------------------------------------------


def wilson_lower(
    x: np.ndarray | float, n: np.ndarray | float, confidence: float = 0.95
) -> np.ndarray:
    """Lower Wilson score limit of the proportion ``x / n``.

    Parameters
    ----------
    x, n : array-like
        Numerators (cases) and denominators (sample sizes); ``0 <= x <= n``.
    confidence : float, default 0.95
        Two-sided confidence level (0.9-1 or 90-100).

    Returns
    -------
    numpy.ndarray
        ``(2x + z^2 - z sqrt(z^2 + 4x(1 - x/n))) / (2(n + z^2))``, z the normal quantile.

    Examples
    --------
    >>> round(float(wilson_lower(65, 100)), 6)
    0.552544
    """
    (level,) = _confidence_levels(confidence, "wilson_lower")
    x, n = _check_binomial(x, n, "wilson_lower")
    if level == 1:
        return np.zeros(np.broadcast(x, n).shape)
    z = _z(level)
    return (2 * x + z**2 - z * np.sqrt(z**2 + 4 * x * (1 - x / n))) / 2 / (n + z**2)


def wilson_upper(
    x: np.ndarray | float, n: np.ndarray | float, confidence: float = 0.95
) -> np.ndarray:
    """Upper Wilson score limit of the proportion ``x / n`` (see :func:`wilson_lower`).

    Examples
    --------
    >>> round(float(wilson_upper(65, 100)), 6)
    0.736358
    """
    (level,) = _confidence_levels(confidence, "wilson_upper")
    x, n = _check_binomial(x, n, "wilson_upper")
    if level == 1:
        return np.ones(np.broadcast(x, n).shape)
    z = _z(level)
    return (2 * x + z**2 + z * np.sqrt(z**2 + 4 * x * (1 - x / n))) / 2 / (n + z**2)


def byars_lower(x: np.ndarray | float, confidence: float = 0.95) -> np.ndarray:
    """Byar's lower limit for a Poisson count ``x`` (Breslow and Day 1987).

    ``x (1 - 1/(9x) - z/(3 sqrt(x)))^3``; negative results (tiny counts, very high confidence)
    become NaN, as in PHEindicatormethods.

    Examples
    --------
    >>> round(float(byars_lower(65)), 6)
    50.163188
    """
    (level,) = _confidence_levels(confidence, "byars_lower")
    x = _check_count(x, "byars_lower")
    z = _z(level)
    with np.errstate(divide="ignore", invalid="ignore"):
        base = 1 - 1 / (9 * x) - z / (3 * np.sqrt(x))
        out = x * (base * base * base)
    return np.where(out < 0, np.nan, out)


def byars_upper(x: np.ndarray | float, confidence: float = 0.95) -> np.ndarray:
    """Byar's upper limit for a Poisson count ``x``: ``(x+1)(1 - 1/(9(x+1)) + z/(3 sqrt(x+1)))^3``.

    Examples
    --------
    >>> round(float(byars_upper(65)), 6)
    82.849139
    """
    (level,) = _confidence_levels(confidence, "byars_upper")
    x = _check_count(x, "byars_upper") + 1
    z = _z(level)
    base = 1 - 1 / (9 * x) + z / (3 * np.sqrt(x))
    return x * (base * base * base)


def _exact_lower(x: np.ndarray, level: float) -> np.ndarray:
    """``qchisq((1 - level) / 2, 2x) / 2`` (0 when x is 0, as R's qchisq with 0 df)."""
    x = np.asarray(x, dtype=float)
    values, inverse = np.unique(x, return_inverse=True)  # few distinct small counts
    df = np.where(values > 0, 2 * values, 1.0)
    limits = np.where(values > 0, _sps.chi2.ppf((1 - level) / 2, df) / 2, 0.0)
    return limits[inverse].reshape(x.shape)


def _exact_upper(x: np.ndarray, level: float) -> np.ndarray:
    """``qchisq(level + (1 - level) / 2, 2x + 2) / 2``."""
    x = np.asarray(x, dtype=float)
    values, inverse = np.unique(x, return_inverse=True)
    limits = _sps.chi2.ppf(level + (1 - level) / 2, 2 * values + 2) / 2
    return limits[inverse].reshape(x.shape)


def _poisson_limits(x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Limits for a Poisson count: exact below SMALL_COUNT, Byar's from SMALL_COUNT up."""
    small = x < SMALL_COUNT
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = byars_lower(x, level)
        upper = byars_upper(x, level)
    if small.any():
        lower[small] = _exact_lower(x[small], level)
        upper[small] = _exact_upper(x[small], level)
    return lower, upper


# --------------------------------------------------------------------------------------------
# Crude proportions and rates
# --------------------------------------------------------------------------------------------


def _aggregate(data: pd.DataFrame, by: list[str], x: str, n: str) -> pd.DataFrame:
    """Sum numerators and denominators per group (PHEindicatormethods' grouped behaviour)."""
    return data.groupby(by, sort=True, dropna=False, observed=True)[[x, n]].sum().reset_index()


def proportion(
    data: pd.DataFrame,
    x: str,
    n: str,
    *,
    by: By = None,
    confidence: Confidence | None = 0.95,
    multiplier: float = 1,
) -> pd.DataFrame:
    """Proportions with Wilson score confidence intervals (``phe_proportion``).

    Parameters
    ----------
    data : pandas.DataFrame
        One row per unit, or several rows per group when ``by`` is given.
    x, n : str
        Columns holding the numerator (cases) and denominator (sample size); ``0 <= x <= n``,
        ``n > 0``, no missing values.
    by : str or list of str, optional
        Group columns. Without ``by`` each row gets its own proportion and all input columns are
        kept; with ``by``, ``x`` and ``n`` are summed within each group first.
    confidence : float, sequence of float or None, default 0.95
        Confidence level(s), 0.9-1 or 90-100; ``(0.95, 0.998)`` gives both the 95% and 99.8%
        limits; ``None`` gives the value only.
    multiplier : float, default 1
        Scale of the result (100 gives percentages).

    Returns
    -------
    pandas.DataFrame
        Input (or group) columns plus ``value``, the limit columns, ``confidence``,
        ``statistic`` and ``method`` ("Wilson").

    Raises
    ------
    StatsError
        Missing columns, non-numeric or missing values, negative numerators, denominators not
        above zero, or numerators above their denominators; the message names the rows.

    Examples
    --------
    >>> df = pd.DataFrame({"area": ["A", "B"], "cases": [65, 0], "people": [100, 10]})
    >>> out = proportion(df, "cases", "people", multiplier=100)
    >>> out[["area", "value", "lowercl", "uppercl"]].round(3).to_string(index=False)
    'area  value  lowercl  uppercl\\n   A   65.0   55.254   73.636\\n   B    0.0    0.000   27.753'
    """
    func = "proportion"
    by_cols = _as_list(by)
    _require_columns(data, [x, n, *by_cols], func)
    levels = _confidence_levels(confidence, func, allow_none=True)
    xs = _numeric(data, x, func)
    ns = _numeric(data, n, func, positive=True)
    over = xs > ns
    if over.any():
        raise StatsError(
            f"{func}: column '{x}' must be less than or equal to '{n}' for a proportion; "
            f"{int(over.sum())} row(s) are not, at {_rows(data.index[over])}."
        )
    out = _aggregate(data, by_cols, x, n) if by_cols else data.copy()
    xs = out[x].to_numpy(dtype=float)
    ns = out[n].to_numpy(dtype=float)
    out["value"] = xs / ns * multiplier
    for level, (lo, hi) in zip(levels, _ci_names(levels), strict=True):
        out[lo] = wilson_lower(xs, ns, level) * multiplier
        out[hi] = wilson_upper(xs, ns, level) * multiplier
    statistic = "percentage" if multiplier == 100 else f"proportion of {_fmt_number(multiplier)}"
    out["confidence"] = _confidence_column(len(out), levels)
    out["statistic"] = _labels(len(out), statistic)
    out["method"] = _labels(len(out), "Wilson")
    return out


def rate(
    data: pd.DataFrame,
    x: str,
    n: str,
    *,
    by: By = None,
    confidence: Confidence | None = 0.95,
    multiplier: float = 100_000,
) -> pd.DataFrame:
    """Crude rates with exact (count < 10) or Byar's (count >= 10) intervals (``phe_rate``).

    Parameters
    ----------
    data : pandas.DataFrame
        One row per unit, or several rows per group when ``by`` is given.
    x, n : str
        Columns holding the event count (``>= 0``) and the population or person-time (``> 0``).
    by : str or list of str, optional
        Group columns; ``x`` and ``n`` are summed within each group first.
    confidence : float, sequence of float or None, default 0.95
        Confidence level(s), 0.9-1 or 90-100; ``None`` gives the value only.
    multiplier : float, default 100000
        Rate per this many of ``n``.

    Returns
    -------
    pandas.DataFrame
        Input (or group) columns plus ``value``, the limit columns, ``confidence``,
        ``statistic`` and ``method`` ("Exact" for counts below 10, otherwise "Byars").

    Notes
    -----
    Exact limits are ``chi2.ppf((1-c)/2, 2x) / 2`` and ``chi2.ppf((1+c)/2, 2x+2) / 2`` events;
    Byar's are :func:`byars_lower` and :func:`byars_upper`. Both are divided by ``n`` and scaled.

    Examples
    --------
    >>> df = pd.DataFrame({"area": ["A", "B"], "deaths": [5, 120], "pop": [10_000, 50_000]})
    >>> out = rate(df, "deaths", "pop")
    >>> out[["value", "lowercl", "uppercl"]].round(2).to_numpy().tolist()
    [[50.0, 16.23, 116.68], [240.0, 199.0, 287.0]]
    >>> out["method"].tolist()
    ['Exact', 'Byars']
    """
    func = "rate"
    by_cols = _as_list(by)
    _require_columns(data, [x, n, *by_cols], func)
    levels = _confidence_levels(confidence, func, allow_none=True)
    _numeric(data, x, func)
    _numeric(data, n, func, positive=True)
    out = _aggregate(data, by_cols, x, n) if by_cols else data.copy()
    xs = out[x].to_numpy(dtype=float)
    ns = out[n].to_numpy(dtype=float)
    out["value"] = xs / ns * multiplier
    for level, (lo, hi) in zip(levels, _ci_names(levels), strict=True):
        lower, upper = _poisson_limits(xs, level)
        out[lo] = lower / ns * multiplier
        out[hi] = upper / ns * multiplier
    out["confidence"] = _confidence_column(len(out), levels)
    out["statistic"] = _labels(len(out), f"rate per {_fmt_number(multiplier)}")
    out["method"] = _labels(len(out), "Byars", "Exact", xs < SMALL_COUNT)
    return out


# --------------------------------------------------------------------------------------------
# Standard populations and age bands
# --------------------------------------------------------------------------------------------


def european_standard_population() -> pd.DataFrame:
    """The 2013 European Standard Population (ESP 2013), 19 five-year bands 0-4 ... 85-89, 90+.

    Source: Eurostat, *Revision of the European Standard Population*, 2013 edition (see
    ``kidresearch/data/SOURCES.md``). The weights sum to 100,000.

    Returns
    -------
    pandas.DataFrame
        Columns ``age_band`` (label), ``age_from``, ``age_to`` (inclusive; missing for 90+)
        and ``population``.

    Examples
    --------
    >>> esp = european_standard_population()
    >>> len(esp), int(esp["population"].sum()), esp["age_band"].iloc[-1]
    (19, 100000, '90+')
    """
    esp = load("esp2013", dtype={"age_band": str})
    esp["age_to"] = esp["age_to"].astype("Int64")
    return esp


def age_band(
    age: pd.Series | np.ndarray | Sequence[float], bands: Literal["esp2013"] = "esp2013"
) -> pd.Series:
    """Assign ages (in completed years) to the ESP 2013 five-year bands, vectorised.

    Parameters
    ----------
    age : array-like or pandas.Series
        Ages in years; fractional ages are floored (a person aged 4.9 is in 0-4).
    bands : {"esp2013"}
        Banding scheme; only the ESP 2013 bands (0-4, 5-9, ..., 85-89, 90+) are available.

    Returns
    -------
    pandas.Series
        Ordered categorical of band labels, on the input's index when a Series was passed.

    Raises
    ------
    StatsError
        If an age is missing or negative (the message names the positions).

    Examples
    --------
    >>> age_band([0, 4.9, 5, 89, 90, 104]).tolist()
    ['0-4', '0-4', '5-9', '85-89', '90+', '90+']
    """
    if bands != "esp2013":
        raise StatsError(f"age_band: 'bands' must be 'esp2013'. Got {bands!r} instead.")
    index = age.index if isinstance(age, pd.Series) else None
    values = pd.to_numeric(pd.Series(age, index=index), errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values) | (values < 0)
    if bad.any():
        where = index[bad] if index is not None else pd.Index(np.flatnonzero(bad))
        raise StatsError(
            f"age_band: ages must be non-missing numbers >= 0; {int(bad.sum())} are not, at "
            f"{_rows(where)}."
        )
    codes = np.minimum(np.floor(values) // 5, len(ESP2013_BANDS) - 1).astype(int)
    dtype = pd.CategoricalDtype(list(ESP2013_BANDS), ordered=True)
    return pd.Series(pd.Categorical.from_codes(codes, dtype=dtype), index=index, name="age_band")


def _band_key(values: pd.Series) -> pd.Series:
    """Normalise age-band keys: ESP labels stay, numeric lower bounds (0, 5, ..., 90) map."""
    lookup: dict[object, str] = {}
    for i, label in enumerate(ESP2013_BANDS):
        lookup[label] = label
        lookup[5 * i] = label
        lookup[float(5 * i)] = label
        lookup[str(5 * i)] = label
    return values.map(lambda v: lookup.get(v, lookup.get(str(v).strip(), None)))


def _standard_weights(
    data: pd.DataFrame,
    standard: str | pd.Series | Sequence[float] | np.ndarray,
    age_band_col: str | None,
    group_sizes: np.ndarray,
    row_group: np.ndarray,
    func: str,
    role: str,
    allow_na: bool = False,
) -> np.ndarray:
    """Per-row standard (or reference) values for ``standard`` given as name, Series or vector.

    A string names a column of ``data`` (a column called "esp2013" wins over the built-in
    ESP 2013, as in PHEindicatormethods' examples); "esp2013" otherwise means the built-in.
    """
    if isinstance(standard, str) and (standard != "esp2013" or standard in data.columns):
        if standard not in data.columns:
            raise StatsError(
                f"{func}: '{role}' must be 'esp2013', a column of data, a Series indexed by age "
                f"band or a vector in age-band order. Column '{standard}' not found."
            )
        return _numeric(data, standard, func, allow_na=allow_na)
    if isinstance(standard, str):  # "esp2013" and no column of that name
        esp = european_standard_population()
        weights = esp["population"].to_numpy(float)
        standard = weights if age_band_col is None else pd.Series(weights, index=esp["age_band"])
    if age_band_col is not None:
        if not isinstance(standard, pd.Series):
            vector = np.asarray(standard, dtype=float)
            if len(vector) != len(ESP2013_BANDS):
                raise StatsError(
                    f"{func}: '{role}' is a plain vector of {len(vector)} values, so it cannot "
                    f"be matched to column '{age_band_col}' by label; pass a Series indexed by "
                    f"age band (a vector must hold the {len(ESP2013_BANDS)} ESP 2013 bands in "
                    "order)."
                )
            standard = pd.Series(vector, index=list(ESP2013_BANDS))
        keys = data[age_band_col]
        # Map the few distinct bands, not every row.
        key_codes, key_values = pd.factorize(keys)
        distinct = pd.Series(np.asarray(key_values, dtype=object))
        lookup = standard.copy()
        mapped = distinct.map(lookup)
        if mapped.isna().any():
            lookup.index = (
                _band_key(pd.Series(lookup.index)).fillna(pd.Series(lookup.index)).to_numpy()
            )
            mapped = _band_key(distinct).map(lookup)
        values = np.append(mapped.to_numpy(dtype=float, na_value=np.nan), np.nan)
        direct = pd.Series(values[key_codes], index=data.index)
        missing = direct.isna().to_numpy()
        if missing.any():
            raise StatsError(
                f"{func}: {int(missing.sum())} value(s) of column '{age_band_col}' have no "
                f"{role} weight, at {_rows(data.index[missing])} (e.g. "
                f"{keys[missing].iloc[0]!r}); expected one of {list(map(str, standard.index))}."
            )
        return direct.to_numpy(dtype=float)
    # Match by position within each group, as PHEindicatormethods' vector inputs do.
    if isinstance(standard, pd.Series) and not isinstance(standard.index, pd.RangeIndex):
        raise StatsError(
            f"{func}: '{role}' is a Series indexed by label ({list(standard.index[:3])}...) but "
            "no age_band= column was given to match it by; pass age_band= (or a plain vector "
            "to match by position)."
        )
    vector = np.asarray(standard, dtype=float)
    wrong = group_sizes != len(vector)
    if wrong.any():
        raise StatsError(
            f"{func}: '{role}' has {len(vector)} values but {int(wrong.sum())} group(s) have "
            f"a different number of rows (e.g. {int(group_sizes[wrong][0])}); each group must "
            f"have one row per age band in the same order, or pass age_band= to match by label."
        )
    position = np.arange(len(row_group)) - np.r_[0, np.cumsum(group_sizes)][row_group]
    return vector[position]


def _group_codes(data: pd.DataFrame, by_cols: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Integer group code per row and the group keys, one row per code, sorted by key.

    Missing key values form their own group (never dropped), as ``groupby(dropna=False)``.
    """
    if not by_cols:
        return np.zeros(len(data), dtype=np.intp), pd.DataFrame(index=[0])
    # Factorise each column, combine the codes arithmetically and keep the combinations seen:
    # far faster than factorising a MultiIndex of tuples at Kent scale.
    per_column = [pd.factorize(data[c], sort=True, use_na_sentinel=False) for c in by_cols]
    shape = tuple(max(len(uniques), 1) for _, uniques in per_column)
    combined = np.ravel_multi_index(tuple(codes for codes, _ in per_column), shape)
    present, codes = np.unique(combined, return_inverse=True)
    positions = np.unravel_index(present, shape)
    keys = pd.DataFrame(index=pd.RangeIndex(len(present)))
    for column, (_, uniques), pos in zip(by_cols, per_column, positions, strict=True):
        values = uniques.take(pos)
        if isinstance(data[column].dtype, pd.CategoricalDtype):
            values = pd.Categorical(values, dtype=data[column].dtype)
        keys[column] = values
    return codes.astype(np.intp).reshape(-1), keys


def _sorted_by_group(data: pd.DataFrame, codes: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    order = np.argsort(codes, kind="stable")
    return data.iloc[order], codes[order]


def _groupsum(codes: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    return np.bincount(codes, weights=values, minlength=n_groups)


# --------------------------------------------------------------------------------------------
# Directly standardised rates
# --------------------------------------------------------------------------------------------


def dsr(
    data: pd.DataFrame,
    x: str,
    n: str,
    *,
    by: By = None,
    age_band: str | None = None,
    standard: str | pd.Series | Sequence[float] | np.ndarray = "esp2013",
    confidence: Confidence | None = 0.95,
    multiplier: float = 100_000,
    count_na_as_zero: bool = False,
    event_frequency: str | None = None,
) -> pd.DataFrame:
    """Directly standardised rates with Dobson confidence intervals (``calculate_dsr``).

    Parameters
    ----------
    data : pandas.DataFrame
        One row per standardisation category (age band, or age band x sex) per group.
    x, n : str
        Columns with the event count (``>= 0``) and population (``> 0``) of each category.
    by : str or list of str, optional
        Group columns; one DSR per group (one overall DSR when omitted).
    age_band : str, optional
        Column naming each row's age band (ESP labels such as "0-4", "90+" or the lower bound
        0, 5, ..., 90). Needed to look standard weights up by label; without it the weights are
        matched by position and each group must have exactly one row per weight, in order.
    standard : "esp2013", str, pandas.Series or array-like, default "esp2013"
        The standard population: the ESP 2013, the name of a column of ``data``, a Series
        indexed by age band, or a vector in age-band order.
    confidence : float, sequence of float or None, default 0.95
        Confidence level(s), 0.9-1 or 90-100; ``None`` gives the value only.
    multiplier : float, default 100000
        Rate per this many people.
    count_na_as_zero : bool, default False
        PHEindicatormethods counts missing event counts as zero; by default a missing count is
        an error here, so that a gap in the data is never mistaken for no events.
    event_frequency : str, optional
        For non-independent events (one person can have several): a column giving how many
        events each person counted in ``x`` had, so ``x`` is the number of *people* with that
        frequency. The DSR uses ``sum(frequency * x)`` events and the Dobson variance is
        ``sum_f f^2 var_f`` (Fingertips technical guidance, DSR chapter).

    Returns
    -------
    pandas.DataFrame
        Group columns plus ``total_count``, ``total_pop``, ``value``, the limit columns,
        ``confidence``, ``statistic`` and ``method`` ("Dobson"). Groups with a total count below
        10 keep their counts but get missing ``value`` and limits, and the statistic
        "dsr NA for total count < 10", as in PHEindicatormethods.

    Raises
    ------
    StatsError
        Missing columns or values, negative counts, populations not above zero, negative
        standard weights, unknown age bands, or a standard vector whose length differs from the
        number of rows of a group.

    Notes
    -----
    ``DSR = sum(w_i x_i / n_i) / sum(w_i)``, ``var = sum(x_i (w_i / n_i)^2) / sum(w_i)^2`` and
    the limits are ``DSR + sqrt(var / O) (O_lim - O)`` where ``O`` is the total count and
    ``O_lim`` its Byar's limit (Dobson et al. 1991).

    Examples
    --------
    >>> df = pd.DataFrame({"band": ["0-4", "5-9"], "deaths": [10, 30], "pop": [1000, 2000]})
    >>> out = dsr(df, "deaths", "pop", age_band="band", standard=pd.Series({"0-4": 1, "5-9": 1}))
    >>> out[["total_count", "value", "lowercl", "uppercl"]].round(2).to_numpy().tolist()
    [[40.0, 1250.0, 872.1, 1728.55]]
    """
    func = "dsr"
    by_cols = _as_list(by)
    cols = [x, n, *by_cols] + ([age_band] if age_band else [])
    if event_frequency is not None:
        cols.append(event_frequency)
    _require_columns(data, cols, func)
    levels = _confidence_levels(confidence, func, allow_none=True)
    if multiplier <= 0:
        raise StatsError(f"{func}: 'multiplier' must be greater than 0. Got {multiplier}.")
    codes, keys = _group_codes(data, by_cols)
    data, codes = _sorted_by_group(data, codes)
    n_groups = len(keys)
    sizes = np.bincount(codes, minlength=n_groups)
    xs = _numeric(data, x, func, allow_na=count_na_as_zero)
    ns = _numeric(data, n, func, positive=True)
    weights = _standard_weights(data, standard, age_band, sizes, codes, func, "standard")
    if np.isnan(weights).any() or (weights < 0).any():
        bad = np.isnan(weights) | (weights < 0)
        raise StatsError(
            f"{func}: standard population weights must be non-missing and >= 0; "
            f"{int(bad.sum())} are not, at {_rows(data.index[bad])}."
        )
    if age_band is not None and len(set(sizes.tolist())) > 1:
        warnings.warn(
            f"{func}: groups have different numbers of rows ({sizes.min()} to {sizes.max()}); "
            "each DSR is standardised over the age bands present in its group only.",
            UserWarning,
            stacklevel=2,
        )
    xs0 = np.nan_to_num(xs, nan=0.0)
    if event_frequency is not None:
        freq = _numeric(data, event_frequency, func)
        # Variance per (group, frequency) over its age bands, weighted by frequency squared.
        fcodes, fvalues = pd.factorize(freq, sort=True)
        combo = codes * len(fvalues) + fcodes
        n_combo = n_groups * len(fvalues)
        std_sum_combo = _groupsum(combo, weights, n_combo)
        var_combo = _groupsum(combo, xs0 * (weights / ns) ** 2, n_combo)
        with np.errstate(divide="ignore", invalid="ignore"):
            var_combo = var_combo / std_sum_combo**2
        var_combo = np.nan_to_num(var_combo) * np.tile(fvalues.astype(float) ** 2, n_groups)
        variance = var_combo.reshape(n_groups, len(fvalues)).sum(axis=1)
        events = xs0 * freq
        # The events of a category are summed over frequencies, so count each category's
        # population and standard weight once (the rows of one age band repeat them).
        band_key = data[age_band].to_numpy() if age_band else np.zeros(len(data))
        first = ~pd.DataFrame({"g": codes, "b": band_key}).duplicated().to_numpy()
        wt_rate = np.bincount(codes, weights=events * weights / ns, minlength=n_groups)
        std_sum = _groupsum(codes[first], weights[first], n_groups)
        total_pop = _groupsum(codes[first], ns[first], n_groups)
        total_count = _groupsum(codes, events, n_groups)
        method = "Dobson, with confidence adjusted for non-independent events"
    else:
        wt_rate = _groupsum(codes, xs0 * weights / ns, n_groups)
        std_sum = _groupsum(codes, weights, n_groups)
        total_pop = _groupsum(codes, ns, n_groups)
        total_count = _groupsum(codes, xs0, n_groups)
        variance = _groupsum(codes, xs0 * (weights / ns) ** 2, n_groups) / std_sum**2
        method = "Dobson"
    out = keys.copy()
    out["total_count"] = total_count
    out["total_pop"] = total_pop
    value = wt_rate / std_sum * multiplier
    small = total_count < SMALL_COUNT
    out["value"] = np.where(small, np.nan, value)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.sqrt(variance / total_count)
        for level, (lo, hi) in zip(levels, _ci_names(levels), strict=True):
            lower = value + spread * (byars_lower(total_count, level) - total_count) * multiplier
            upper = value + spread * (byars_upper(total_count, level) - total_count) * multiplier
            out[lo] = np.where(small, np.nan, lower)
            out[hi] = np.where(small, np.nan, upper)
    out["confidence"] = _confidence_column(len(out), levels)
    out["statistic"] = _labels(
        len(out), f"dsr per {_fmt_number(multiplier)}", "dsr NA for total count < 10", small
    )
    out["method"] = _labels(len(out), method)
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Indirectly standardised ratios and rates
# --------------------------------------------------------------------------------------------


def isr(
    data: pd.DataFrame,
    x: str,
    n: str,
    *,
    x_ref: str | pd.Series | Sequence[float] | np.ndarray,
    n_ref: str | pd.Series | Sequence[float] | np.ndarray,
    by: By = None,
    age_band: str | None = None,
    confidence: Confidence | None = 0.95,
    refvalue: float = 1,
    kind: Literal["ratio", "rate"] = "ratio",
    multiplier: float = 100_000,
    observed_totals: pd.DataFrame | None = None,
    count_na_as_zero: bool = False,
) -> pd.DataFrame:
    """Indirectly standardised ratios (SMR-like) or rates (``calculate_ISRatio``/``ISRate``).

    Expected events are the reference rates applied to the group's population,
    ``E = sum(x_ref_i / n_ref_i * n_i)``; the ratio is ``O / E``, with exact limits for fewer than
    10 observed events and Byar's otherwise, divided by ``E``.

    Parameters
    ----------
    data : pandas.DataFrame
        One row per standardisation category (age band) per group.
    x : str
        Column with observed events per category (or, with ``observed_totals``, the column of
        that frame holding each group's total).
    n : str
        Column with the group's population per category (``>= 0``).
    x_ref, n_ref : str, pandas.Series or array-like
        Reference events and population per category: column names of ``data``, Series indexed
        by age band (needs ``age_band``), or vectors in category order (matched by position,
        each group needing exactly that many rows).
    by : str or list of str, optional
        Group columns; one ratio per group (one overall when omitted).
    age_band : str, optional
        Column naming each row's age band, to match Series-valued references by label.
    confidence : float, sequence of float or None, default 0.95
        Confidence level(s), 0.9-1 or 90-100; ``None`` gives the value only.
    refvalue : float, default 1
        Scale of a ratio (100 for an SMR expressed per 100).
    kind : {"ratio", "rate"}, default "ratio"
        "rate" returns the indirectly standardised rate ``O / E * reference rate`` per
        ``multiplier`` (``calculate_ISRate``), with a ``ref_rate`` column.
    multiplier : float, default 100000
        For ``kind="rate"``: rate per this many people.
    observed_totals : pandas.DataFrame, optional
        Observed totals per group when ``data`` has no age breakdown of events: the ``by``
        columns plus column ``x``.
    count_na_as_zero : bool, default False
        PHEindicatormethods counts missing observed events, populations and reference events as
        zero; by default they are an error here, so a gap is never mistaken for a zero.

    Returns
    -------
    pandas.DataFrame
        Group columns plus ``observed``, ``expected`` (and ``ref_rate`` for rates), ``value``,
        the limit columns, ``confidence``, ``statistic`` and ``method`` ("Exact" or "Byars").

    Raises
    ------
    StatsError
        Missing columns or values, negative counts or populations, reference populations not
        above zero, references of the wrong length, groups without an observed total.

    Examples
    --------
    >>> df = pd.DataFrame({"band": ["0-64", "65+"], "deaths": [10, 40], "pop": [1000, 500]})
    >>> out = isr(df, "deaths", "pop", x_ref=[50, 200], n_ref=[10_000, 5_000])
    >>> out[["observed", "expected", "value", "lowercl", "uppercl"]].round(4).to_numpy().tolist()
    [[50.0, 25.0, 2.0, 1.4844, 2.6368]]
    """
    func = "isr"
    if kind not in ("ratio", "rate"):
        raise StatsError(f"{func}: 'kind' must be 'ratio' or 'rate'. Got {kind!r} instead.")
    by_cols = _as_list(by)
    cols = [n, *by_cols] + ([age_band] if age_band else [])
    if observed_totals is None:
        cols.append(x)
    _require_columns(data, cols, func)
    levels = _confidence_levels(confidence, func, allow_none=True)
    codes, keys = _group_codes(data, by_cols)
    data, codes = _sorted_by_group(data, codes)
    n_groups = len(keys)
    sizes = np.bincount(codes, minlength=n_groups)
    ns = np.nan_to_num(_numeric(data, n, func, allow_na=count_na_as_zero), nan=0.0)
    xr = _standard_weights(
        data, x_ref, age_band, sizes, codes, func, "x_ref", allow_na=count_na_as_zero
    )
    if count_na_as_zero:
        xr = np.nan_to_num(xr, nan=0.0)
    nr = _standard_weights(data, n_ref, age_band, sizes, codes, func, "n_ref")
    if np.isnan(nr).any() or (nr <= 0).any():
        bad = np.isnan(nr) | (nr <= 0)
        raise StatsError(
            f"{func}: reference populations (n_ref) must be greater than zero; {int(bad.sum())} "
            f"are not, at {_rows(data.index[bad])}."
        )
    if np.isnan(xr).any() or (xr < 0).any():
        bad = np.isnan(xr) | (xr < 0)
        raise StatsError(
            f"{func}: reference events (x_ref) must be non-missing and >= 0; {int(bad.sum())} "
            f"are not, at {_rows(data.index[bad])}."
        )
    expected = _groupsum(codes, xr / nr * ns, n_groups)
    out = keys.copy()
    if observed_totals is None:
        xs = _numeric(data, x, func, allow_na=count_na_as_zero)
        observed = _groupsum(codes, np.nan_to_num(xs, nan=0.0), n_groups)
    else:
        _require_columns(observed_totals, [x, *by_cols], f"{func} (observed_totals)")
        obs = _numeric(observed_totals, x, f"{func} (observed_totals)")
        totals = observed_totals[by_cols].assign(_observed=obs) if by_cols else None
        if by_cols:
            if totals.duplicated(by_cols).any():
                raise StatsError(f"{func}: observed_totals has duplicate rows for a group.")
            merged = keys.merge(totals, on=by_cols, how="left")
            missing = merged["_observed"].isna().to_numpy()
            if missing.any():
                raise StatsError(
                    f"{func}: observed_totals has no total for {int(missing.sum())} group(s), "
                    f"e.g. {keys[missing].iloc[0].to_dict()}."
                )
            observed = merged["_observed"].to_numpy(dtype=float)
        else:
            if len(obs) != 1:
                raise StatsError(f"{func}: without 'by', observed_totals must have one row.")
            observed = obs.astype(float)
    out["observed"] = observed
    out["expected"] = expected
    if kind == "rate":
        ref_rate = _groupsum(codes, xr, n_groups) / _groupsum(codes, nr, n_groups) * multiplier
        out["ref_rate"] = ref_rate
        scale = ref_rate
        statistic = f"indirectly standardised rate per {_fmt_number(multiplier)}"
    else:
        scale = np.full(n_groups, float(refvalue))
        statistic = f"indirectly standardised ratio x {_fmt_number(refvalue)}"
    with np.errstate(divide="ignore", invalid="ignore"):
        out["value"] = observed / expected * scale
        for level, (lo, hi) in zip(levels, _ci_names(levels), strict=True):
            lower, upper = _poisson_limits(observed, level)
            out[lo] = lower / expected * scale
            out[hi] = upper / expected * scale
    out["confidence"] = _confidence_column(len(out), levels)
    out["statistic"] = _labels(len(out), statistic)
    out["method"] = _labels(len(out), "Byars", "Exact", observed < SMALL_COUNT)
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Funnel plots
# --------------------------------------------------------------------------------------------


def _sigma_adjustment(
    p: float, population: np.ndarray, average: float, side: str, multiplier: float
) -> np.ndarray:
    """The proportion whose Wilson limit at probability ``p`` equals ``average``, times multiplier.

    Solves the Wilson score quadratic for the funnel line (Fingertips funnel-plot guidance).
    """
    z2 = _sps.norm.ppf(p) ** 2
    population = np.asarray(population, dtype=float)
    first = average * (population / z2 + 1)
    with np.errstate(invalid="ignore"):
        adj = np.sqrt(
            (-8 * average * (population / z2 + 1)) ** 2
            - 64
            * (1 / z2 + 1 / population)
            * average
            * (population * (average * (population / z2 + 2) - 1) + z2 * (average - 1))
        )
    last = 1 / z2 + 1 / population
    sign = -1 if side == "low" else 1
    return (first + sign * adj / 8) / last / population * multiplier


def _series_tail_mass(mean: np.ndarray) -> np.ndarray:
    """Poisson mass the funnel tool's series leaves out: ``P(X >= K)``.

    The Fingertips tool (and PHEindicatormethods' ``poisson_cis``) sums ``mean^k / k!`` from
    ``k = 0`` and stops at the first ``K > mean`` whose term is at most ``1e-10`` of the running
    total; probabilities are then ratios of partial sums. Reproducing the cut-off keeps the
    bisection below on exactly the same side as the reference at every step.
    """
    mean = np.asarray(mean, dtype=float)
    # Beyond the mean the stopping rule is monotone in k, so bisect on the integer cut-off.
    low = np.floor(mean) + 1
    high = low + np.ceil(12 * np.sqrt(np.maximum(mean, 1.0)) + 60)
    while (high > low).any():
        mid = np.floor((low + high) / 2)
        # The running total is P(X <= k-1) in units of exp(mean); beyond the mean it is within
        # 1e-9 of 1 wherever the term could be as small as 1e-10 of it, so 1 stands in for it.
        stop = _sps.poisson.pmf(mid, mean) <= 1e-10
        high = np.where(stop, mid, high)
        low = np.where(stop, low, mid + 1)
    return _sps.poisson.sf(low - 1, mean)


def _poisson_funnel(obs: np.ndarray, specs: Sequence[tuple[float, str]]) -> list[np.ndarray]:
    """Poisson means at which ``obs`` sits at tail probability ``p`` (the funnel's x-position).

    Replicates the Fingertips funnel-plot tool's bisection on ``v`` with mean
    ``(1 + obs) v / (1 - v)`` (23 halvings from 0.5 down to ``dv <= 1e-7``) and its truncated
    Poisson series, vectorised over all points and all ``(p, side)`` in ``specs`` at once, so
    that limits agree with PHEindicatormethods to its own precision. Side "low" finds the mean
    with ``P(X >= obs) = p``, "high" the mean with ``P(X <= obs) = p``.
    """
    obs = np.asarray(obs, dtype=float).reshape(-1)
    k = len(obs)
    x = np.tile(obs, len(specs))
    p = np.repeat([float(prob) for prob, _ in specs], k)
    low_side = np.repeat([side == "low" for _, side in specs], k)
    v = np.full(x.shape, 0.5)
    dv = 0.5
    while dv > 1e-7:
        dv /= 2
        mean = (1 + x) * v / (1 - v)
        left_out = _series_tail_mass(mean)
        upper_tail = (_sps.poisson.sf(x - 1, mean) - left_out) / (1 - left_out)
        lower_tail = _sps.poisson.cdf(x, mean) / (1 - left_out)
        too_big = np.where(low_side, upper_tail > p, lower_tail < p)
        v = np.where(too_big, v - dv, v + dv)
    means = (1 + x) * v / (1 - v)
    return [means[i * k : (i + 1) * k] for i in range(len(specs))]


def _ratio_test_statistic(
    obs: np.ndarray, expected: np.ndarray, level: float, side: str
) -> np.ndarray:
    """Limit of ``obs / expected`` at ``level``: exact below 10 events, Byar's from 10 up."""
    obs = np.asarray(obs, dtype=float)
    small = obs < SMALL_COUNT
    z = _sps.norm.ppf(0.5 + level / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        if side == "low":
            exact = _exact_lower(obs, level)
            byars = obs * (1 - 1 / (9 * obs) - z / 3 / np.sqrt(obs)) ** 3
        else:
            exact = _exact_upper(obs, level)
            adjusted = obs + 1
            byars = adjusted * (1 - 1 / (9 * adjusted) + z / 3 / np.sqrt(adjusted)) ** 3
        return np.where(small, exact, byars) / expected


def _r_nchar(value: float) -> int:
    """``nchar(value)`` for a whole number as R prints it (fixed or scientific, the shorter)."""
    value = float(value)
    fixed = len(str(int(value)))
    if value == 0:
        return 1
    mantissa, exponent = f"{value:.14e}".split("e")
    digits = mantissa.replace(".", "").rstrip("0").lstrip("-")
    exp_digits = max(2, len(str(abs(int(exponent)))))
    sci = len(digits) + (1 if len(digits) > 1 else 0) + 2 + exp_digits
    return sci if fixed > sci else fixed


def _signif_floor(value: float, fraction: float = 0.95) -> float:
    if value == 0:
        return 0.0
    power = 10.0 ** (_r_nchar(math.floor(value * fraction)) - 1)
    return math.floor(value * fraction / power) * power


def _signif_ceiling(value: float, fraction: float = 1.05) -> float:
    if value == 0:
        return 0.0
    power = 10.0 ** (_r_nchar(math.ceil(value * fraction)) - 2)
    return math.ceil(value * fraction / power) * power


def _funnel_axis(lo: float, hi: float, n_points: int, offset: int) -> np.ndarray:
    """The x-axis points of PHEindicatormethods' funnel table, denser at small denominators."""
    points = [max(1.0, lo)]
    for j in range(2, n_points + 1):
        prev = points[-1]
        step = (hi / prev) ** (1 / (n_points + 1 - (j - offset))) * prev
        points.append(max(float(np.round(step)), prev + 1))
    return np.asarray(points)


def _derived_denominator(
    num: np.ndarray,
    rates: np.ndarray,
    den: np.ndarray | None,
    rate_type: str,
    multiplier: float,
) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        derived = multiplier * num / rates
    zero = num == 0
    if rate_type == "dsr":
        return np.where(zero, np.nan, derived)
    if den is None:
        return derived
    return np.where(zero, den, derived)


def funnel_limits(
    data: pd.DataFrame,
    numerator: str,
    denominator: str | None = None,
    *,
    statistic: Literal["proportion", "ratio", "rate"],
    multiplier: float,
    ratio_type: Literal["count", "isr"] | None = None,
    rate: str | None = None,
    rate_type: Literal["dsr", "crude"] | None = None,
    years_of_data: float | None = None,
    n_points: int = 100,
    at: Sequence[float] | np.ndarray | pd.Series | None = None,
) -> pd.DataFrame:
    """Funnel-plot control limits at 95% (2s) and 99.8% (3s) (``calculate_funnel_limits``).

    Builds PHEindicatormethods' table of ``n_points`` x-axis points spanning the data (denser
    at small denominators) with the lower and upper 95% and 99.8% limits around the overall
    average at each point.

    Parameters
    ----------
    data : pandas.DataFrame
        One row per unit (e.g. GP practice).
    numerator : str
        Column with events or cases (observed events for ratios).
    denominator : str, optional
        Column with populations (proportions, crude rates) or expected events (ratios).
        Required for proportions and ratios; for rates only needed where a unit has 0 events.
    statistic : {"proportion", "ratio", "rate"}
        Binomial limits (Wilson-based) for proportions; Poisson for ratios and rates.
    multiplier : float
        Scale of the plotted statistic (100 for percentages; 100000 for rates per 100,000).
    ratio_type : {"count", "isr"}, optional
        Ratios only: "count" gives limits of ``O/E - 1``, "isr" of ``O/E * 100``.
    rate : str, optional
        Rates only: column with each unit's rate (per ``multiplier``).
    rate_type : {"dsr", "crude"}, optional
        Rates only.
    years_of_data : float, optional
        Rates only: years the data cover (the population axis is per year).
    n_points : int, default 100
        Number of x-axis points.
    at : array-like, optional
        Evaluate the limits at these x-axis values (populations for proportions, observed
        events for ratios and rates) instead of PHEindicatormethods' axis, e.g. at each unit's
        own denominator to draw or check it against its limits.

    Returns
    -------
    pandas.DataFrame
        Proportions: ``Population``, ``lower_2s_limit``, ``upper_2s_limit``,
        ``lower_3s_limit``, ``upper_3s_limit``, ``baseline``. Ratios: ``Observed_events`` and,
        for each limit, the expected events at which it applies (``*_exp_events``). Rates:
        ``Events``, the yearly populations (``*_population_1_year``) and limits, ``baseline``.
        Then ``statistic`` and ``method``.

    Notes
    -----
    The upper proportion limits are capped at ``multiplier`` (100%); PHEindicatormethods caps
    at 100 whatever the multiplier, which only differs when ``multiplier`` is not 100.

    Examples
    --------
    >>> df = pd.DataFrame({"obs": [30, 45, 60], "pop": [100, 120, 150]})
    >>> lim = funnel_limits(df, "obs", "pop", statistic="proportion", multiplier=100)
    >>> len(lim), round(float(lim["baseline"].iloc[0]), 4)
    (100, 36.4865)
    """
    func = "funnel_limits"
    if statistic not in ("proportion", "ratio", "rate"):
        raise StatsError(
            f"{func}: 'statistic' must be 'proportion', 'ratio' or 'rate'. Got {statistic!r}."
        )
    if statistic in ("proportion", "ratio") and denominator is None:
        raise StatsError(f"{func}: 'denominator' is required for statistic '{statistic}'.")
    if statistic == "ratio" and ratio_type not in ("count", "isr"):
        raise StatsError(f"{func}: 'ratio_type' must be 'count' or 'isr'. Got {ratio_type!r}.")
    if statistic == "rate":
        if rate is None or rate_type not in ("dsr", "crude") or years_of_data is None:
            raise StatsError(
                f"{func}: rates need 'rate' (a column), 'rate_type' ('dsr' or 'crude') and "
                "'years_of_data'."
            )
    cols = [numerator] + ([denominator] if denominator else []) + ([rate] if rate else [])
    _require_columns(data, cols, func)
    num = _numeric(data, numerator, func)
    den = _numeric(data, denominator, func) if denominator else None
    if statistic == "rate":
        rates = _numeric(data, rate, func, allow_na=True)  # type: ignore[arg-type]
        if den is None and (num == 0).any():
            raise StatsError(
                f"{func}: for rates, units with 0 events need the 'denominator' column."
            )
        derived = _derived_denominator(num, rates, den, rate_type, multiplier)  # type: ignore[arg-type]
    else:
        derived = den  # type: ignore[assignment]
    if statistic == "proportion" and (num > den).any():  # type: ignore[operator]
        raise StatsError(f"{func}: '{numerator}' must not exceed '{denominator}'.")
    average = num.sum() / np.nansum(derived)
    lo_den = float(np.nanmin(derived))
    hi_den = float(np.nanmax(derived))
    per_year = years_of_data if statistic == "rate" else 1
    if hi_den > 2 * lo_den:
        axis_min = 0.0
    else:
        axis_min = _signif_floor(lo_den / per_year) * per_year
    axis_max = _signif_ceiling(hi_den / per_year) * per_year
    if statistic == "rate":
        axis_min = math.floor(axis_min * average)
        axis_max = math.ceil(axis_max * average)
    offset = 1 if statistic == "ratio" else 0
    if at is None:
        x_axis = _funnel_axis(axis_min, axis_max, n_points, offset)
    else:
        x_axis = np.asarray(at, dtype=float).reshape(-1)
        smallest = 1 if statistic == "proportion" else 0
        if np.isnan(x_axis).any() or (x_axis < smallest).any():
            raise StatsError(
                f"{func}: 'at' values must be non-missing and >= {smallest}. "
                f"Got {np.nanmin(x_axis) if len(x_axis) else 'nothing'}."
            )

    if statistic == "proportion":
        table = pd.DataFrame({"Population": x_axis})
        for tag, p in (("2s", 0.975), ("3s", 0.999)):
            low = _sigma_adjustment(p, x_axis, average, "low", multiplier)
            high = _sigma_adjustment(p, x_axis, average, "high", multiplier)
            table[f"lower_{tag}_limit"] = np.maximum(0, low)
            table[f"upper_{tag}_limit"] = np.minimum(multiplier, high)
        table = table[
            ["Population", "lower_2s_limit", "upper_2s_limit", "lower_3s_limit", "upper_3s_limit"]
        ]
        table["baseline"] = average * multiplier
        label, method = "proportion", "Wilson"
    elif statistic == "ratio":
        table = pd.DataFrame({"Observed_events": x_axis})
        specs = [(0.025, "high"), (0.025, "low"), (0.001, "high"), (0.001, "low")]
        means = iter(_poisson_funnel(x_axis, specs))
        for tag in ("2s", "3s"):
            table[f"lower_{tag}_exp_events"] = next(means)
            table[f"lower_{tag}_limit"] = x_axis / table[f"lower_{tag}_exp_events"]
            table[f"upper_{tag}_exp_events"] = next(means)
            table[f"upper_{tag}_limit"] = x_axis / table[f"upper_{tag}_exp_events"]
        limits = [c for c in table.columns if c.endswith("limit")]
        if ratio_type == "count":
            table[limits] = table[limits] - 1
        else:
            table[limits] = table[limits] * 100
        label, method = f"ratio ({ratio_type})", "Poisson"
    else:
        table = pd.DataFrame({"Events": x_axis})
        specs = [(0.025, "high"), (0.025, "low"), (0.001, "high"), (0.001, "low")]
        means = iter(_poisson_funnel(x_axis, specs))
        for tag in ("2s", "3s"):
            for side in ("lower", "upper"):
                population = next(means) / average
                table[f"{side}_{tag}_population_1_year"] = population / years_of_data
                table[f"{side}_{tag}_limit"] = x_axis / population * multiplier
        table["baseline"] = average * multiplier
        label = f"rate ({rate_type} per {multiplier:,.0f})"
        method = "Poisson"
    table["statistic"] = label
    table["method"] = method
    return table


def funnel_significance(
    data: pd.DataFrame,
    numerator: str,
    denominator: str | None = None,
    *,
    statistic: Literal["proportion", "ratio", "rate"],
    rate: str | None = None,
    rate_type: Literal["dsr", "crude"] | None = None,
    multiplier: float | None = None,
    by: By = None,
) -> pd.DataFrame:
    """Label each unit by where it falls against the funnel limits (``assign_funnel_significance``).

    Parameters
    ----------
    data : pandas.DataFrame
        One row per unit.
    numerator, denominator : str
        As :func:`funnel_limits`: for ratios the denominator is the expected count.
    statistic : {"proportion", "ratio", "rate"}
        Proportions are compared with the overall average through the Wilson-based limits;
        ratios with 1 and rates with the overall (approximately weighted) average through exact
        (below 10 events) or Byar's limits.
    rate, rate_type, multiplier
        Rates only, as :func:`funnel_limits`.
    by : str or list of str, optional
        Compare each unit with the average of its own group rather than of all rows.

    Returns
    -------
    pandas.DataFrame
        A copy of ``data`` with a categorical ``significance`` column: "High (0.001)",
        "High (0.025)", "Low (0.001)", "Low (0.025)" or "Not significant" (and, for DSRs with
        fewer than 10 events, "Not applicable for events less than 10 for dsrs"). "High (0.001)"
        means above the 99.8% limit, "High (0.025)" above the 95% limit only.

    Examples
    --------
    >>> df = pd.DataFrame({"obs": [8, 151, 159, 0], "expected": [6.24, 106.44, 232.93, 240.6]})
    >>> funnel_significance(df, "obs", "expected", statistic="ratio")["significance"].tolist()
    ['Not significant', 'High (0.001)', 'Low (0.001)', 'Low (0.001)']
    """
    func = "funnel_significance"
    if statistic not in ("proportion", "ratio", "rate"):
        raise StatsError(
            f"{func}: 'statistic' must be 'proportion', 'ratio' or 'rate'. Got {statistic!r}."
        )
    by_cols = _as_list(by)
    if statistic in ("proportion", "ratio") and denominator is None:
        raise StatsError(f"{func}: 'denominator' is required for statistic '{statistic}'.")
    if statistic == "rate" and (
        rate is None or rate_type not in ("dsr", "crude") or multiplier is None
    ):
        raise StatsError(
            f"{func}: rates need 'rate' (a column), 'rate_type' ('dsr' or 'crude') and "
            "'multiplier'."
        )
    cols = [numerator, *by_cols] + ([denominator] if denominator else []) + ([rate] if rate else [])
    _require_columns(data, cols, func)
    num = _numeric(data, numerator, func)
    den = _numeric(data, denominator, func, positive=True) if denominator else None
    codes, _ = _group_codes(data, by_cols)
    n_groups = int(codes.max()) + 1 if len(codes) else 0

    def group_mean(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        bottom = np.nan_to_num(bottom, nan=0.0)
        return (_groupsum(codes, top, n_groups) / _groupsum(codes, bottom, n_groups))[codes]

    labels = np.full(len(data), "Not significant", dtype=object)
    if statistic == "proportion":
        if (num > den).any():  # type: ignore[operator]
            over = num > den  # type: ignore[operator]
            raise StatsError(
                f"{func}: '{numerator}' must be less than or equal to '{denominator}' for a "
                f"proportion; {int(over.sum())} row(s) are not, at {_rows(data.index[over])}."
            )
        average = group_mean(num, den)  # type: ignore[arg-type]
        prop = num / den  # type: ignore[operator]
        checks = [
            ("Low (0.001)", prop < _sigma_adjustment(0.999, den, average, "low", 1)),
            ("Low (0.025)", prop < _sigma_adjustment(0.975, den, average, "low", 1)),
            ("High (0.001)", prop > _sigma_adjustment(0.999, den, average, "high", 1)),
            ("High (0.025)", prop > _sigma_adjustment(0.975, den, average, "high", 1)),
        ]
    else:
        if statistic == "ratio":
            reference = np.ones(len(data))
            expected = den
        else:
            rates = _numeric(data, rate, func, allow_na=True)  # type: ignore[arg-type]
            if den is None and (num == 0).any():
                raise StatsError(
                    f"{func}: for rates, units with 0 events need the 'denominator' column."
                )
            expected = _derived_denominator(num, rates, den, rate_type, multiplier)  # type: ignore[arg-type]
            reference = group_mean(num, expected)
        with np.errstate(invalid="ignore"):
            low_998 = np.where(num == 0, 0.0, _ratio_test_statistic(num, expected, 0.998, "low"))
            low_95 = np.where(num == 0, 0.0, _ratio_test_statistic(num, expected, 0.95, "low"))
            checks = [
                ("High (0.001)", reference < low_998),
                ("High (0.025)", reference < low_95),
                ("Low (0.001)", reference > _ratio_test_statistic(num, expected, 0.998, "high")),
                ("Low (0.025)", reference > _ratio_test_statistic(num, expected, 0.95, "high")),
            ]
    assigned = np.zeros(len(data), dtype=bool)
    for label, condition in checks:
        hit = np.asarray(condition, dtype=bool) & ~assigned
        labels[hit] = label
        assigned |= hit
    if statistic == "rate" and rate_type == "dsr":
        labels[num < SMALL_COUNT] = SIGNIFICANCE_LEVELS[-1]
    levels = SIGNIFICANCE_LEVELS if statistic == "rate" else SIGNIFICANCE_LEVELS[:-1]
    out = data.copy()
    out["significance"] = pd.Categorical(labels, categories=list(levels))
    return out
