"""Matched cohort comparisons with the conventions of R's MatchIt (4.7) and cobalt.

One call makes a result object, and everything else reads it, as in MatchIt: :func:`match`
returns a :class:`MatchResult` whose ``.matched`` is MatchIt's ``match_data()``, whose
``.balance()`` is ``summary()`` / cobalt's ``bal.tab()``, whose ``.summary()`` gives the sample
sizes, whose ``.love_plot()`` draws the balance, and whose ``.estimate()`` fits the outcome model
on the matched sample with pair-clustered standard errors.

Methods
-------
``"nearest"``
    Greedy nearest-neighbour matching on a one-dimensional distance (by default the propensity
    score from a logistic regression, on the probability scale as MatchIt's ``distance = "glm"``),
    treated units taken in decreasing order of the score (``m_order="largest"``), each paired with
    the closest control still available, ties going to the control with the lower score, as
    MatchIt's ``nn_matchC_vec``. The search is O(n log n): controls sorted once, availability
    kept in two union-find "next free to the left / right" structures, so 50,000 treated against
    1.5 million controls take seconds. ``ratio=k`` does k rounds (every treated unit gets its
    first match before any gets its second), as MatchIt. With ``replace=True`` every treated unit
    takes its k nearest controls regardless of reuse (vectorised). ``distance="mahalanobis"``
    matches on the Mahalanobis distance (pooled within-group covariance), greedy in data order:
    O(n_treated x n_control), for samples of thousands, not millions.
``"exact"``
    Subclasses of identical covariate values holding both groups.
``"cem"``
    Coarsened exact matching: numeric covariates cut into equal-width bins (Sturges' rule by
    default, as MatchIt's in-house ``cem``: ``ceiling(log2(n) + 1)`` bins between the minimum and
    maximum, values on a cut point going to the upper bin), other covariates kept as they are.

Weights follow MatchIt: for the ATT treated units weigh 1 and a control weighs the sum over its
matched treated units of 1 / (that unit's number of matches), or n_treated / n_control in its
subclass for exact and CEM; control weights are then scaled to sum to the number of matched
controls.

Examples
--------
>>> import pandas as pd
>>> toy = pd.DataFrame({"treat": [1, 1, 0, 0, 0], "score": [0.9, 0.5, 0.85, 0.55, 0.1]})
>>> result = match(toy, "treat", [], distance=toy["score"])
>>> result.matched[["treat", "weights", "subclass"]]
   treat  weights  subclass
0      1      1.0         1
1      1      1.0         2
2      0      1.0         1
3      0      1.0         2
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from kidresearch._persons import alive_and_registered
from kidresearch.errors import DroppedRowsWarning, MatchingError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "BASELINE_COVARIATES",
    "OUTCOMES",
    "SMD_THRESHOLD",
    "Balance",
    "CohortStudy",
    "MatchResult",
    "MatchedEffect",
    "MatchingError",
    "cohort_study",
    "fit_propensity_score",
    "match",
]

logger = logging.getLogger(__name__)

#: |SMD| below which a covariate is usually called balanced (Austin, Stat Med 2009;28:3083-3107;
#: cobalt's ``thresholds = c(m = .1)`` convention).
SMD_THRESHOLD = 0.1

#: Above this many rows the propensity model is warm-started from a subsample fit.
_WARM_START_ROWS = 100_000

Method = Literal["nearest", "exact", "cem"]
Estimand = Literal["ATT", "ATC", "ATE"]


# --------------------------------------------------------------------------------------------
# Input checks and design matrices
# --------------------------------------------------------------------------------------------


def _check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise MatchingError(
            f"The '{name}' parameter of match must be one of {list(allowed)}. Got {value!r} instead."
        )


def _treatment_vector(data: pd.DataFrame, treatment: str) -> np.ndarray:
    if treatment not in data.columns:
        raise MatchingError(
            f"Treatment column '{treatment}' is not in the data; columns are {list(data.columns)}."
        )
    raw = data[treatment]
    missing = int(raw.isna().sum())
    if missing:
        rows = raw.index[raw.isna()][:5].tolist()
        raise MatchingError(
            f"Treatment column '{treatment}' has {missing} missing values (first row labels {rows}); "
            "expected 0/1 for every row. Remove or impute them before matching."
        )
    values = pd.unique(raw)
    if not set(values.tolist()) <= {0, 1}:  # bools compare equal to 0/1
        raise MatchingError(
            f"Treatment column '{treatment}' must hold 0/1 (or False/True); "
            f"found values {sorted(map(str, values))[:6]}."
        )
    t = raw.to_numpy().astype(np.int8)
    if t.sum() == 0 or t.sum() == len(t):
        raise MatchingError(
            f"Treatment column '{treatment}' must have both treated (1) and control (0) rows; "
            f"found {int(t.sum())} treated of {len(t)}."
        )
    return t


def _is_categorical(series: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series))


def _covariate_frames(
    data: pd.DataFrame, covariates: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Balance columns (every level of a categorical) and model columns (first level dropped)."""
    missing_cols = [c for c in covariates if c not in data.columns]
    if missing_cols:
        raise MatchingError(
            f"Covariates {missing_cols} are not in the data; columns are {list(data.columns)}."
        )
    balance_parts: list[pd.DataFrame] = []
    model_parts: list[pd.DataFrame] = []
    for name in covariates:
        col = data[name]
        n_missing = int(col.isna().sum())
        if n_missing:
            rows = col.index[col.isna()][:5].tolist()
            raise MatchingError(
                f"Covariate '{name}' has {n_missing} missing values (first row labels {rows}); matching "
                "needs complete covariates. Impute them or add a missingness indicator."
            )
        if _is_categorical(col):
            levels = sorted(pd.unique(col).tolist(), key=str)
            cat = pd.Categorical(col, categories=levels)
            dummies = pd.get_dummies(cat, prefix=name, prefix_sep="_", dtype=float)
            dummies.index = data.index
            balance_parts.append(dummies)
            model_parts.append(dummies.iloc[:, 1:])
        else:
            as_float = col.astype(float).rename(name).to_frame()
            balance_parts.append(as_float)
            model_parts.append(as_float)
    empty = pd.DataFrame(index=data.index)
    balance = pd.concat(balance_parts, axis=1) if balance_parts else empty
    model = pd.concat(model_parts, axis=1) if model_parts else empty
    return balance, model


def fit_propensity_score(
    covariates: pd.DataFrame | np.ndarray,
    treatment: np.ndarray,
    *,
    max_iter: int = 25,
    tol: float = 1e-8,
) -> np.ndarray:
    """Fit a logistic regression of treatment on covariates by IRLS; return fitted probabilities.

    The same algorithm and stopping rule as R's ``glm(family = binomial)`` (start at
    ``mu = (y + 0.5) / 2``; stop when the relative change in deviance is below ``tol``), so the
    scores agree with MatchIt's ``distance = "glm"`` to about 1e-8. Vectorised in numpy; above
    100,000 rows the iterations start from a fit on an evenly spaced subsample, so a 1.5
    million-row fit needs two or three passes over the data.

    Parameters
    ----------
    covariates
        Model matrix without intercept (an intercept is added).
    treatment
        0/1 array.
    max_iter, tol
        Iteration limit and convergence tolerance on the deviance (R's defaults).

    Returns
    -------
    numpy.ndarray
        Propensity scores in (0, 1).

    Raises
    ------
    MatchingError
        If the model matrix is rank deficient (collinear covariates).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [2.0], [3.0], [1.5], [2.5]])
    >>> t = np.array([0, 0, 1, 1, 0, 1])
    >>> ps = fit_propensity_score(x, t)
    >>> bool(np.all((ps > 0) & (ps < 1)))
    True
    """
    names = list(covariates.columns) if isinstance(covariates, pd.DataFrame) else None
    x = np.asarray(covariates, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    y = np.asarray(treatment, dtype=float)
    design = np.empty((len(y), x.shape[1] + 1))
    design[:, 0] = 1.0
    design[:, 1:] = x
    # Rank of the correlation-scaled cross-product: one pass, robust to columns in pounds.
    cross = design.T @ design
    scale = np.sqrt(np.diag(cross))
    scale[scale == 0] = 1.0
    rank = np.linalg.matrix_rank(cross / np.outer(scale, scale), tol=1e-10)
    if rank < design.shape[1]:
        raise MatchingError(
            f"The propensity model matrix is rank deficient (rank {rank} of {design.shape[1]} "
            f"columns{'; columns ' + str(names) if names else ''}): drop collinear covariates."
        )
    mu = (y + 0.5) / 2.0
    eta = np.log(mu / (1.0 - mu))
    if len(y) > _WARM_START_ROWS:
        # Warm start from a fit on an evenly spaced subsample: the full-data iterations then
        # converge in two or three Newton steps to the same maximum likelihood estimate, under
        # the same stopping rule, instead of five or six.
        sub = slice(0, None, -(-len(y) // _WARM_START_ROWS))  # at most _WARM_START_ROWS rows
        if 0 < y[sub].sum() < len(y[sub]):
            sub_y = y[sub]
            sub_mu = (sub_y + 0.5) / 2.0
            beta0, _, _ = _irls(design[sub], sub_y, np.log(sub_mu / (1 - sub_mu)), max_iter, 1e-6)
            eta = design @ beta0
    _, mu, converged = _irls(design, y, eta, max_iter, tol)
    if not converged:
        warnings.warn(
            f"The propensity model did not converge in {max_iter} iterations "
            "(possible separation: some covariate pattern is all treated or all control).",
            RuntimeWarning,
            stacklevel=2,
        )
    return mu


def _irls(
    design: np.ndarray, y: np.ndarray, eta: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Logistic IRLS from linear predictor ``eta`` with R glm's deviance stopping rule."""
    mu = 1.0 / (1.0 + np.exp(-eta))
    deviance_old = math.inf
    scaled = np.empty_like(design)
    beta = np.zeros(design.shape[1])
    for iteration in range(1, max_iter + 1):
        w = mu * (1.0 - mu)
        z = eta + (y - mu) / w
        np.multiply(design, np.sqrt(w)[:, None], out=scaled)  # reused buffer: no page faults
        beta = np.linalg.solve(scaled.T @ scaled, design.T @ (w * z))
        eta = design @ beta
        mu = np.clip(1.0 / (1.0 + np.exp(-eta)), 1e-15, 1 - 1e-15)
        deviance = -2.0 * float(np.sum(np.log(np.where(y == 1.0, mu, 1.0 - mu))))
        if abs(deviance - deviance_old) / (abs(deviance) + 0.1) < tol:
            logger.debug("propensity model: %d rows, converged in %d iterations", len(y), iteration)
            return beta, mu, True
        deviance_old = deviance
    return beta, mu, False


def _pooled_within_cov(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    # MatchIt's transform_covariates(method = "mahalanobis"): pooled within-group covariance.
    total = np.zeros((x.shape[1], x.shape[1]))
    for g in (0, 1):
        xg = x[t == g]
        total += np.cov(xg, rowvar=False).reshape(x.shape[1], x.shape[1]) * (len(xg) - 1)
    return total / (len(x) - 2)


# --------------------------------------------------------------------------------------------
# Greedy nearest-neighbour matching
# --------------------------------------------------------------------------------------------


def _find(parent: dict[int, int], i: int) -> int:
    """Union-find root with full path compression: the nearest free slot at or beyond i.

    Only used slots are keys (a used slot points to its neighbour), so the structure costs
    memory in proportion to the matches made, not to the 1.5 million controls.
    """
    path = []
    while i in parent:
        path.append(i)
        i = parent[i]
    for slot in path:
        parent[slot] = i
    return i


def _nearest_1d(
    distance: np.ndarray,
    t: np.ndarray,
    *,
    ratio: int,
    replace: bool,
    caliper: float | None,
    strata: np.ndarray | None,
    order: np.ndarray,
) -> np.ndarray:
    """Greedy NN on a scalar distance with MatchIt 4.7's semantics.

    Returns an (n_treated, ratio) array of row positions of matched controls (-1 = none), rows in
    the order of the treated units in the data.
    """
    n = len(t)
    rows = np.arange(n)
    strata_key = np.zeros(n, dtype=np.int64) if strata is None else strata
    # MatchIt sorts every unit by distance with a stable sort (ties in data order); with exact
    # strata it matches each stratum separately, i.e. within blocks of the same sort.
    all_order = np.argsort(distance, kind="stable")  # stable: ties stay in data order
    if strata is not None:
        all_order = all_order[np.argsort(strata_key[all_order], kind="stable")]
    is_control_sorted = t[all_order] == 0
    controls_sorted = all_order[is_control_sorted]  # control rows by (stratum, distance, row)
    n0 = len(controls_sorted)
    # For each treated unit: how many controls precede it in the joint sort (its "gap").
    controls_before = np.cumsum(is_control_sorted) - is_control_sorted
    gap = np.empty(n, dtype=np.int64)
    gap[all_order] = controls_before
    c_dist = distance[controls_sorted]
    treated_rows = rows[t == 1]
    n1 = len(treated_rows)
    # Bounds of each treated unit's stratum among the sorted controls (indexed by row).
    block_lo = np.zeros(n, dtype=np.int64)
    block_hi = np.full(n, n0, dtype=np.int64)
    if strata is not None:
        c_stratum = strata_key[controls_sorted]
        t_stratum = strata_key[treated_rows]
        block_lo[treated_rows] = np.searchsorted(c_stratum, t_stratum, side="left")
        block_hi[treated_rows] = np.searchsorted(c_stratum, t_stratum, side="right")
    matches = np.full((n1, ratio), -1, dtype=np.int64)
    cal = math.inf if caliper is None else float(caliper)

    if replace:
        # Every treated unit independently takes its k nearest controls (two-pointer merge),
        # ties to the lower-distance side as MatchIt's find_left/find_right.
        d_t = distance[treated_rows]
        left = gap[treated_rows] - 1
        right = gap[treated_rows].copy()
        lo = block_lo[treated_rows]
        hi = block_hi[treated_rows]
        for r in range(ratio):
            has_left = left >= lo
            has_right = right < hi
            dl = np.where(has_left, np.abs(d_t - c_dist[np.clip(left, 0, n0 - 1)]), np.inf)
            dr = np.where(has_right, np.abs(d_t - c_dist[np.clip(right, 0, n0 - 1)]), np.inf)
            dl = np.where(dl > cal, np.inf, dl)
            dr = np.where(dr > cal, np.inf, dr)
            take_left = np.isfinite(dl) & (dl <= dr)
            take_right = np.isfinite(dr) & ~take_left
            chosen = np.where(take_left, left, np.where(take_right, right, -1))
            matches[:, r] = np.where(chosen >= 0, controls_sorted[np.clip(chosen, 0, n0 - 1)], -1)
            left = left - take_left
            right = right + take_right
        return matches

    # Without replacement: right[j] = nearest free sorted-control index >= j (n0 = none);
    # left[j + 1] = nearest free index <= j, stored shifted by one (0 = none).
    right_parent: dict[int, int] = {}
    left_parent: dict[int, int] = {}
    dist_of = c_dist.item  # a Python float per lookup, without listing 1.5 million values
    gap_t = gap[treated_rows].tolist()
    lo_t = block_lo[treated_rows].tolist()
    hi_t = block_hi[treated_rows].tolist()
    d_t = distance[treated_rows].tolist()
    order_list = order.tolist()
    chosen_sorted = np.full((n1, ratio), -1, dtype=np.int64)
    for r in range(ratio):
        column: list[int] = [-1] * n1
        for i in order_list:
            g = gap_t[i]
            di = d_t[i]
            k_left = _find(left_parent, g) - 1
            if k_left < lo_t[i] or abs(di - dist_of(k_left)) > cal:
                k_left = -1
            k_right = _find(right_parent, g)
            if k_right >= hi_t[i] or abs(dist_of(k_right) - di) > cal:
                k_right = -1
            if k_left >= 0 and k_right >= 0:
                k = k_left if abs(dist_of(k_left) - di) <= abs(dist_of(k_right) - di) else k_right
            elif k_left >= 0:
                k = k_left
            elif k_right >= 0:
                k = k_right
            else:
                continue
            column[i] = k
            right_parent[k] = k + 1
            left_parent[k + 1] = k
        chosen_sorted[:, r] = column
    found = chosen_sorted >= 0
    matches[found] = controls_sorted[chosen_sorted[found]]
    return matches


def _nearest_mahalanobis(
    x: np.ndarray,
    t: np.ndarray,
    *,
    ratio: int,
    replace: bool,
    strata: np.ndarray | None,
    order: np.ndarray,
) -> np.ndarray:
    """Greedy NN on the Mahalanobis distance, treated units in ``order``; O(n1 * n0)."""
    cov = _pooled_within_cov(x, t)
    try:
        chol = np.linalg.cholesky(np.linalg.inv(cov))
    except np.linalg.LinAlgError as exc:
        raise MatchingError(
            "The pooled covariance of the covariates is singular: drop constant or collinear "
            "covariates before Mahalanobis matching."
        ) from exc
    z = x @ chol  # Euclidean distance on z equals Mahalanobis distance on x.
    treated_rows = np.flatnonzero(t == 1)
    control_rows = np.flatnonzero(t == 0)
    zc = z[control_rows]
    c_stratum = np.zeros(len(control_rows)) if strata is None else strata[control_rows]
    t_stratum = np.zeros(len(treated_rows)) if strata is None else strata[treated_rows]
    available = np.ones(len(control_rows), dtype=bool)
    matches = np.full((len(treated_rows), ratio), -1, dtype=np.int64)
    sq_norm_c = np.einsum("ij,ij->i", zc, zc)
    for r in range(ratio):
        for i in order:
            ok = available & (c_stratum == t_stratum[i])
            if replace and r:
                ok[np.searchsorted(control_rows, matches[i, :r][matches[i, :r] >= 0])] = False
            if not ok.any():
                continue
            d2 = sq_norm_c - 2.0 * zc @ z[treated_rows[i]]
            d2[~ok] = np.inf
            k = int(np.argmin(d2))  # first minimum: ties go to the earlier control, as which.min
            matches[i, r] = control_rows[k]
            if not replace:
                available[k] = False
    return matches


# --------------------------------------------------------------------------------------------
# Exact and coarsened exact matching
# --------------------------------------------------------------------------------------------


def _sturges_bins(n: int) -> int:
    # grDevices::nclass.Sturges: ceiling(log2(n) + 1).
    return int(math.ceil(math.log2(n) + 1))


def _coarsen(
    data: pd.DataFrame, covariates: Sequence[str], cutpoints: dict[str, Any] | None
) -> pd.DataFrame:
    cutpoints = dict(cutpoints or {})
    unknown = sorted(set(cutpoints) - set(covariates))
    if unknown:
        raise MatchingError(
            f"cutpoints names {unknown}, which are not among the covariates {list(covariates)}."
        )
    coarse = {}
    for name in covariates:
        col = data[name]
        spec = cutpoints.get(name, "sturges")
        if _is_categorical(col) or spec == 0:
            coarse[name] = col.astype(str).to_numpy()
            continue
        values = col.to_numpy(dtype=float)
        if isinstance(spec, str):
            if spec == "sturges":
                n_bins: int | None = _sturges_bins(len(values))
                breaks = None
            elif spec.startswith("q") and spec[1:].isdigit():
                q = int(spec[1:])
                breaks = np.quantile(values, np.arange(1, q) / q)
                n_bins = None
            else:
                raise MatchingError(
                    f"cutpoints['{name}'] must be 'sturges', 'q<k>', a number of bins or a list "
                    f"of cut points; got {spec!r}."
                )
        elif np.ndim(spec) == 0:
            n_bins, breaks = int(spec), None
            if n_bins < 1:
                raise MatchingError(f"cutpoints['{name}'] must be a positive number of bins.")
        else:
            n_bins, breaks = None, np.unique(np.asarray(spec, dtype=float))
        if n_bins is not None:
            inner = np.linspace(values.min(), values.max(), n_bins + 1)[1:-1]
            breaks = inner
        # findInterval semantics: a value equal to a cut point goes to the upper bin.
        coarse[name] = np.searchsorted(np.asarray(breaks), values, side="right")
    return pd.DataFrame(coarse, index=data.index)


def _exact_subclasses(keys: pd.DataFrame, t: np.ndarray) -> np.ndarray:
    """Subclass id (1..S) of each row whose stratum holds both groups; 0 = unmatched."""
    if keys.shape[1] == 0:
        return np.ones(len(t), dtype=np.int64)
    stratum = keys.groupby(list(keys.columns), sort=False, dropna=False).ngroup().to_numpy()
    n_strata = int(stratum.max()) + 1
    has_t = np.bincount(stratum[t == 1], minlength=n_strata) > 0
    has_c = np.bincount(stratum[t == 0], minlength=n_strata) > 0
    common = has_t & has_c
    # MatchIt numbers subclasses in order of first appearance among the controls.
    control_strata = stratum[t == 0]
    first_seen = pd.unique(control_strata[common[control_strata]])
    number = np.zeros(n_strata, dtype=np.int64)
    number[first_seen] = np.arange(1, len(first_seen) + 1)
    return number[stratum]


def _subclass_weights(subclass: np.ndarray, t: np.ndarray, estimand: str) -> np.ndarray:
    n_sub = int(subclass.max()) + 1
    matched = subclass > 0
    n_t = np.bincount(subclass[matched & (t == 1)], minlength=n_sub).astype(float)
    n_c = np.bincount(subclass[matched & (t == 0)], minlength=n_sub).astype(float)
    w = np.zeros(len(t))
    tr = matched & (t == 1)
    co = matched & (t == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if estimand == "ATT":
            w[tr] = 1.0
            w[co] = (n_t / n_c)[subclass[co]]
        elif estimand == "ATC":
            w[tr] = (n_c / n_t)[subclass[tr]]
            w[co] = 1.0
        else:
            total = n_t + n_c
            w[tr] = (total / n_t)[subclass[tr]]
            w[co] = (total / n_c)[subclass[co]]
    return _sum_to_n(w, tr, co)


def _sum_to_n(w: np.ndarray, tr: np.ndarray, co: np.ndarray) -> np.ndarray:
    # MatchIt's .make_sum_to_n: weights in each group scaled to sum to its number of units.
    for group in (tr, co):
        total = w[group].sum()
        if total > 0:
            w[group] = w[group] * group.sum() / total
    return w


def _matrix_weights(matches: np.ndarray, t: np.ndarray, focal_rows: np.ndarray) -> np.ndarray:
    """MatchIt's weights.matrix: focal units 1, others sum of 1/k over the focal units they serve."""
    w = np.zeros(len(t))
    found = matches >= 0
    n_found = found.sum(axis=1)
    has = n_found > 0
    w[focal_rows[has]] = 1.0
    share = np.repeat(1.0 / np.maximum(n_found, 1), matches.shape[1]).reshape(matches.shape)
    np.add.at(w, matches[found], share[found])
    other = w > 0
    other[focal_rows] = False
    total = w[other].sum()
    if total > 0:
        w[other] *= other.sum() / total
    return w


# --------------------------------------------------------------------------------------------
# Balance statistics
# --------------------------------------------------------------------------------------------


def _weighted_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w[:, None] * x).sum(axis=0) / w.sum()


def _weighted_var(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    # Unbiased ("reliability") weighted variance as cobalt/MatchIt: n-1 variance when w = 1.
    sw = w.sum()
    mean = _weighted_mean(x, w)
    return (w[:, None] * (x - mean) ** 2).sum(axis=0) * sw / (sw**2 - (w**2).sum())


def _ecdf_stats(x: np.ndarray, t: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Mean and max over distinct values of |weighted eCDF(treated) - eCDF(control)|.

    The distinct values are those of the whole sample, unmatched units included (with weight 0),
    as MatchIt's ``summary()``: its eCDF means after matching are reproduced only this way.
    """
    wn = np.where(t == 1, w / w[t == 1].sum(), -w / w[t == 0].sum())
    order = np.argsort(x, kind="stable")
    xs = x[order]
    diff = np.abs(np.cumsum(wn[order]))
    last_of_run = np.append(np.diff(xs) != 0, True)
    at_values = diff[last_of_run]
    return float(at_values.mean()), float(at_values.max())


def _balance_table(
    x: pd.DataFrame,
    t: np.ndarray,
    weights: np.ndarray,
    estimand: str,
    binary: str,
) -> pd.DataFrame:
    names = list(x.columns)
    values = x.to_numpy(dtype=float)
    is_binary = np.array([set(np.unique(values[:, j])) <= {0.0, 1.0} for j in range(len(names))])
    ones = np.ones(len(t))
    # Standardisation uses the unmatched sample, as MatchIt's summary and cobalt's bal.tab.
    xt, xc = values[t == 1], values[t == 0]
    p_t, p_c = xt.mean(axis=0), xc.mean(axis=0)
    var_t = np.where(is_binary, p_t * (1 - p_t), _weighted_var(xt, ones[t == 1]))
    var_c = np.where(is_binary, p_c * (1 - p_c), _weighted_var(xc, ones[t == 0]))
    denom = {
        "ATT": np.sqrt(var_t),
        "ATC": np.sqrt(var_c),
        "ATE": np.sqrt((var_t + var_c) / 2.0),
    }[estimand]

    out: dict[str, Any] = {
        "type": np.where(is_binary, "binary", "continuous"),
    }
    if "distance" in names:
        out["type"][names.index("distance")] = "distance"
    for label, w in (("before", ones), ("after", weights)):
        if not ((w > 0) & (t == 1)).any() or not ((w > 0) & (t == 0)).any():
            for stat in (
                "mean_treated",
                "mean_control",
                "smd",
                "var_ratio",
                "ecdf_mean",
                "ecdf_max",
            ):
                out[f"{stat}_{label}"] = np.full(len(names), np.nan)
            continue
        wt, wc = w[t == 1], w[t == 0]
        keep_t, keep_c = wt > 0, wc > 0
        mean_t = _weighted_mean(xt[keep_t], wt[keep_t])
        mean_c = _weighted_mean(xc[keep_c], wc[keep_c])
        diff = mean_t - mean_c
        with np.errstate(divide="ignore", invalid="ignore"):
            smd = diff / denom
            raw_binary = is_binary if binary == "raw" else np.zeros_like(is_binary)
            smd = np.where(raw_binary, diff, smd)
            vr = _weighted_var(xt[keep_t], wt[keep_t]) / _weighted_var(xc[keep_c], wc[keep_c])
        vr = np.where(is_binary, np.nan, vr)
        ecdf = np.array([_ecdf_stats(values[:, j], t, w) for j in range(len(names))])
        if len(names) == 0:
            ecdf = np.empty((0, 2))
        # A binary covariate's eCDFs differ at one point only: both statistics are |diff|.
        ecdf[is_binary, 0] = ecdf[is_binary, 1] = np.abs(diff[is_binary])
        out[f"mean_treated_{label}"] = mean_t
        out[f"mean_control_{label}"] = mean_c
        out[f"smd_{label}"] = smd
        out[f"var_ratio_{label}"] = vr
        out[f"ecdf_mean_{label}"] = ecdf[:, 0]
        out[f"ecdf_max_{label}"] = ecdf[:, 1]
    frame = pd.DataFrame(out, index=pd.Index(names, name="covariate"))
    return frame


@dataclass(frozen=True)
class Balance:
    """Covariate balance before and after matching (MatchIt ``summary`` / cobalt ``bal.tab``).

    ``table`` has one row per covariate (categoricals expanded to one row per level, named
    ``<column>_<level>`` as cobalt) and the ``distance``; columns ``mean_treated_*``,
    ``mean_control_*``, ``smd_*`` (standardised mean difference: for the ATT divided by the
    treated group's SD in the unmatched sample; binary covariates get the raw difference in
    proportions when ``binary="raw"``, cobalt's default, or the difference over
    sqrt(p(1 - p)) of the treated when ``binary="std"``, MatchIt ``summary()``'s convention),
    ``var_ratio_*`` (weighted treated / control variance, continuous only), ``ecdf_mean_*`` and
    ``ecdf_max_*`` (mean and maximum over distinct values of the absolute difference in weighted
    eCDFs; for a binary covariate both equal the absolute difference in proportions), each
    ``_before`` and ``_after`` matching. After matching, statistics use the matching weights.
    """

    table: pd.DataFrame
    estimand: str
    binary: str
    threshold: float = SMD_THRESHOLD

    def to_frame(self) -> pd.DataFrame:
        """A tidy copy of the balance table.

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> bal = match(lalonde, "treat", ["age", "educ"]).balance()
        >>> bal.to_frame().index.tolist()
        ['distance', 'age', 'educ']
        """
        return self.table.copy()

    def summary(self) -> pd.DataFrame:
        """SMD, variance ratio and eCDF max before and after, and whether |SMD after| < 0.1.

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> bal = match(lalonde, "treat", ["age", "educ", "re74", "re75"]).balance()
        >>> bal.summary().columns.tolist()
        ['type', 'smd_before', 'smd_after', 'var_ratio_after', 'ecdf_max_after', 'balanced']
        """
        cols = ["type", "smd_before", "smd_after", "var_ratio_after", "ecdf_max_after"]
        small = self.table[cols].copy()
        small["balanced"] = small["smd_after"].abs() < self.threshold
        return small

    @property
    def max_abs_smd_after(self) -> float:
        """Largest |SMD| after matching over the covariates (the distance excluded)."""
        rows = self.table[self.table["type"] != "distance"]
        return float(rows["smd_after"].abs().max())

    def plot(self, ax: Axes | None = None) -> Axes:
        """Love plot: |SMD| of each covariate before and after matching, threshold at 0.1.

        Parameters
        ----------
        ax
            Axes to draw on; a new figure when None.

        Returns
        -------
        matplotlib.axes.Axes

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> ax = match(lalonde, "treat", ["age", "educ"]).balance().plot()
        >>> ax.get_xlabel()
        'Absolute standardised mean difference (raw difference for binary)'
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 0.35 * len(self.table) + 1.2))
        table = self.table.iloc[::-1]
        y = np.arange(len(table))
        ax.scatter(
            table["smd_before"].abs(),
            y,
            marker="o",
            facecolors="none",
            edgecolors="grey",
            label="Before matching",
        )
        ax.scatter(table["smd_after"].abs(), y, marker="o", color="black", label="After matching")
        ax.axvline(self.threshold, linestyle="--", color="grey", linewidth=1)
        ax.set_yticks(y)
        ax.set_yticklabels(table.index)
        kind = "raw difference for binary" if self.binary == "raw" else "standardised"
        ax.set_xlabel(f"Absolute standardised mean difference ({kind})")
        ax.legend(loc="lower right", frameon=False)
        return ax

    def _repr_html_(self) -> str:
        return self.summary().to_html(float_format=lambda v: f"{v:.4f}")


# --------------------------------------------------------------------------------------------
# Effect estimation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchedEffect:
    """A treatment effect estimated on a matched sample.

    ``estimate`` is on the natural scale of ``model``: a difference in means (``"difference"``),
    a rate ratio (``"poisson"``) or a hazard ratio (``"cox"``); the interval and p-value use the
    ``se_method`` named (cluster-robust on matched pairs/subclasses unless matching was with
    replacement).
    """

    outcome: str
    model: str
    scale: str
    estimate: float
    std_error: float
    conf_low: float
    conf_high: float
    p_value: float
    n_treated: int
    n_control: int
    n_clusters: int | None
    se_method: str
    level: float = 0.95

    def to_frame(self) -> pd.DataFrame:
        """One-row tidy frame of the effect.

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> effect = match(lalonde, "treat", ["age", "educ", "re74", "re75"]).estimate("re78")
        >>> effect.to_frame()[["outcome", "n_treated", "n_control"]].to_dict("records")
        [{'outcome': 're78', 'n_treated': 185, 'n_control': 185}]
        """
        return pd.DataFrame([self.__dict__])

    def summary(self) -> pd.DataFrame:
        """Estimate, interval and p-value (a small table).

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> effect = match(lalonde, "treat", ["age", "educ", "re74", "re75"]).estimate("re78")
        >>> effect.summary().columns.tolist()
        ['outcome', 'scale', 'estimate', 'conf_low', 'conf_high', 'p_value', 'se_method']
        """
        return self.to_frame()[
            ["outcome", "scale", "estimate", "conf_low", "conf_high", "p_value", "se_method"]
        ]

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies within the confidence interval (e.g. a known true effect).

        Parameters
        ----------
        value
            On the scale of ``estimate`` (a difference, or a rate or hazard ratio).

        Returns
        -------
        bool

        Examples
        --------
        >>> effect = MatchedEffect("y", "difference", "difference in means", 1.0, 0.5, 0.02,
        ...                        1.98, 0.045, 100, 100, 100, "cluster-robust (pairs)")
        >>> effect.covers(0.0), effect.covers(1.5)
        (False, True)
        """
        return bool(self.conf_low <= value <= self.conf_high)

    def _repr_html_(self) -> str:
        return self.summary().to_html(float_format=lambda v: f"{v:.4g}")


# --------------------------------------------------------------------------------------------
# The result object
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MatchResult:
    """The outcome of :func:`match`: weights, subclasses and distance for every input row.

    Attributes
    ----------
    data
        The input data (not copied).
    treatment, covariates
        Names used.
    method, estimand, ratio, replace, caliper
        Settings; ``caliper`` is the caliper actually applied on the distance's scale.
    weights
        Matching weight of every input row (0 = not matched).
    subclass
        Pair or subclass id (1..S) of every input row; 0 = not matched, or matching was with
        replacement (no pairs; MatchIt gives none either).
    distance
        The distance (propensity score) of every row, or None for Mahalanobis/exact/CEM.
    match_matrix
        For nearest-neighbour matching, (n_focal, ratio) row positions of each focal unit's
        matches, -1 where none.
    """

    data: pd.DataFrame
    treatment: str
    covariates: tuple[str, ...]
    method: str
    estimand: str
    ratio: int
    replace: bool
    caliper: float | None
    weights: np.ndarray = field(repr=False)
    subclass: np.ndarray = field(repr=False)
    distance: np.ndarray | None = field(repr=False)
    match_matrix: np.ndarray | None = field(repr=False, default=None)

    @cached_property
    def _treat(self) -> np.ndarray:
        return self.data[self.treatment].to_numpy().astype(np.int8)

    @cached_property
    def matched(self) -> pd.DataFrame:
        """Matched rows with ``weights``, ``subclass`` and ``distance`` (MatchIt ``match_data``).

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> result = match(lalonde, "treat", ["age", "educ", "re74", "re75"])
        >>> result.matched.treat.value_counts().sort_index().tolist()
        [185, 185]
        """
        keep = self.weights > 0
        out = self.data.loc[keep].copy()
        out["weights"] = self.weights[keep]
        out["subclass"] = self.subclass[keep]
        if self.distance is not None:
            out["distance"] = self.distance[keep]
        return out

    def to_frame(self) -> pd.DataFrame:
        """A copy of the matched rows with ``weights``, ``subclass`` and ``distance``.

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> frame = match(lalonde, "treat", ["age", "educ"]).to_frame()
        >>> frame[["weights", "subclass", "distance"]].notna().all().all()
        np.True_
        """
        return self.matched.copy()

    def summary(self) -> pd.DataFrame:
        """Sample sizes per group as MatchIt's summary: all, matched, ESS, unmatched, discarded.

        ``matched_ess`` is Kish's effective sample size of the matched weights,
        (sum w)^2 / sum w^2, as MatchIt's "Matched (ESS)".

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> sizes = match(lalonde, "treat", ["age", "educ", "re74", "re75"]).summary()
        >>> sizes.loc[["all", "matched", "unmatched"]].to_dict("index")
        {'all': {'control': 429.0, 'treated': 185.0}, 'matched': {'control': 185.0, 'treated': 185.0}, 'unmatched': {'control': 244.0, 'treated': 0.0}}
        """
        t = self._treat
        rows = {}
        for label, group in (("control", t == 0), ("treated", t == 1)):
            w = self.weights[group]
            m = w > 0
            ess = float(w.sum() ** 2 / (w**2).sum()) if m.any() else 0.0
            rows[label] = {
                "all": int(group.sum()),
                "matched_ess": round(ess, 2),
                "matched": int(m.sum()),
                "unmatched": int((~m).sum()),
                "discarded": 0,
            }
        return pd.DataFrame(rows)

    def balance(self, *, binary: Literal["raw", "std"] = "raw") -> Balance:
        """Balance statistics before and after matching; see :class:`Balance`.

        Parameters
        ----------
        binary
            ``"raw"`` (cobalt's default): binary covariates get the raw difference in
            proportions; ``"std"`` (MatchIt ``summary()``): standardised like the others.

        Returns
        -------
        Balance

        Raises
        ------
        MatchingError
            ``binary`` is neither ``"raw"`` nor ``"std"``.

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> result = match(lalonde, "treat", ["age", "educ", "married"])
        >>> result.balance().table.loc["married", "type"]
        'binary'
        """
        if binary not in ("raw", "std"):
            raise MatchingError(f"binary must be 'raw' or 'std'; got {binary!r}.")
        x, _ = _covariate_frames(self.data, self.covariates)
        if self.distance is not None:
            x = pd.concat([pd.Series(self.distance, index=x.index, name="distance"), x], axis=1)
        table = _balance_table(x, self._treat, self.weights, self.estimand, binary)
        return Balance(table=table, estimand=self.estimand, binary=binary)

    def love_plot(self, ax: Axes | None = None, *, binary: Literal["raw", "std"] = "raw") -> Axes:
        """Love plot of |SMD| before and after matching; returns the Axes.

        Parameters
        ----------
        ax
            Axes to draw on; a new figure when None.
        binary
            As :meth:`balance`.

        Returns
        -------
        matplotlib.axes.Axes

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> ax = match(lalonde, "treat", ["age", "educ"]).love_plot()
        >>> [t.get_text() for t in ax.get_yticklabels()]
        ['educ', 'age', 'distance']
        """
        return self.balance(binary=binary).plot(ax=ax)

    plot = love_plot

    def estimate(
        self,
        outcome: str,
        model: Literal["difference", "poisson", "cox"] = "difference",
        *,
        time: str | None = None,
        level: float = 0.95,
        adjust: bool | Sequence[str] = False,
    ) -> MatchedEffect:
        """Estimate the treatment effect on the matched sample.

        Parameters
        ----------
        outcome
            Outcome column: a value (``"difference"``), a count (``"poisson"``) or an event
            indicator 0/1 (``"cox"``).
        model
            ``"difference"``: weighted least squares of outcome on treatment (difference in
            weighted means). ``"poisson"``: Poisson GLM with log link, rate ratio; ``time`` gives
            person-time (log offset). ``"cox"``: Cox proportional hazards (statsmodels PHReg,
            Breslow ties), hazard ratio; ``time`` is required (time to event or censoring).
        time
            Person-time or follow-up time column.
        level
            Confidence level.
        adjust
            Also adjust for covariates in the outcome model (``True``: the matching
            covariates; or a list of columns), by g-computation for the effect on the treated,
            as MatchIt's "Estimating effects" vignette recommends: an outcome model fitted to
            the matched controls predicts each matched treated person's outcome without
            treatment (``"difference"``: weighted least squares, i.e. ``lm(y ~ treat * x)``
            with covariates centred at the treated means; ``"poisson"``: a Poisson rate model
            on the controls, the rate ratio being the treated's events over their predicted
            events). This removes the covariate differences left inside the pairs (greedy
            matching where controls are scarce pairs the highest scores with slightly lower
            ones). Standard errors: cluster-robust on pairs (sandwich; for the Poisson ratio
            by the influence function of both parts). Not for ``"cox"``.

        Returns
        -------
        MatchedEffect

        Notes
        -----
        Standard errors are cluster-robust with the matched pair/subclass as cluster (MatchIt's
        "estimating effects" guidance); the matching weights enter as analytic weights. After
        matching with replacement there are no pairs, so heteroskedasticity-robust (HC1 for the
        difference and Poisson; the robust sandwich for Cox) errors are used and said so in
        ``se_method``. statsmodels' PHReg takes no case weights, so ``"cox"`` requires equal
        matching weights (1:1 or k:1 without replacement with complete matches) and raises
        otherwise.

        Raises
        ------
        MatchingError
            Unknown ``model``, a missing column or missing values, or unequal weights for Cox.

        Examples
        --------
        >>> from kidresearch.data import load
        >>> lalonde = load("lalonde")  # MatchIt's example data
        >>> result = match(lalonde, "treat", ["age", "educ", "re74", "re75"])
        >>> effect = result.estimate("re78")  # difference in mean 1978 earnings (USD)
        >>> effect.n_treated, effect.n_clusters, effect.se_method
        (185, 185, 'cluster-robust (pairs)')
        """
        import statsmodels.api as sm
        from scipy import stats

        _check_choice("model", model, ["difference", "poisson", "cox"])
        data = self.matched
        for name in [outcome] + ([time] if time else []):
            if name not in data.columns:
                raise MatchingError(f"Column '{name}' is not in the data.")
            n_missing = int(data[name].isna().sum())
            if n_missing:
                raise MatchingError(
                    f"Outcome column '{name}' has {n_missing} missing values among the matched "
                    "rows; effect estimation needs complete outcomes."
                )
        y = data[outcome].to_numpy(dtype=float)
        treat = data[self.treatment].to_numpy(dtype=float)
        w = data["weights"].to_numpy(dtype=float)
        groups = data["subclass"].to_numpy()
        clustered = not self.replace
        design = sm.add_constant(treat, has_constant="add")
        z = stats.norm.ppf(0.5 + level / 2)
        n_clusters = int(len(np.unique(groups))) if clustered else None

        def log_scale_effect(
            scale: str, coef: float, se: float, se_method: str, suffix: str = ""
        ) -> MatchedEffect:
            # Rate and hazard ratios: interval and test on the log scale, reported exponentiated.
            return MatchedEffect(
                outcome=outcome,
                model=model,
                scale=scale,
                estimate=math.exp(coef),
                std_error=se,
                conf_low=math.exp(coef - z * se),
                conf_high=math.exp(coef + z * se),
                p_value=float(2 * stats.norm.sf(abs(coef / se))),
                n_treated=int((treat == 1).sum()),
                n_control=int((treat == 0).sum()),
                n_clusters=n_clusters,
                se_method=("cluster-robust (pairs)" if clustered else se_method)
                + suffix
                + "; SE on log scale",
                level=level,
            )

        x_adj: np.ndarray | None = None
        if adjust is not False:
            if model == "cox":
                raise MatchingError("adjust= is for model='difference' or 'poisson', not 'cox'.")
            names = list(self.covariates) if adjust is True else list(adjust)
            _, frame = _covariate_frames(data, names)
            x_adj = frame.to_numpy(dtype=float)
            # Centred at the (weighted) treated means: the treatment coefficient of the
            # interacted linear model is then the effect on the treated.
            is_t = treat == 1
            x_adj = x_adj - (w[is_t, None] * x_adj[is_t]).sum(axis=0) / w[is_t].sum()
            x_adj = x_adj[:, x_adj[treat == 0].std(axis=0) > 0]
        adjusted = "; adjusted (g-computation)" if x_adj is not None else ""

        if model == "difference":
            fit_kw: dict[str, Any] = (
                {"cov_type": "cluster", "cov_kwds": {"groups": groups}}
                if clustered
                else {"cov_type": "HC1"}
            )
            if x_adj is not None:
                design = np.column_stack([design, x_adj, treat[:, None] * x_adj])
            fit = sm.WLS(y, design, weights=w).fit(**fit_kw)
            coef, se = float(fit.params[1]), float(fit.bse[1])
            # t reference with G - 1 df for clusters, as sandwich::vcovCL + coeftest.
            dof = (n_clusters - 1) if clustered else fit.df_resid
            crit = stats.t.ppf(0.5 + level / 2, dof)
            p = float(2 * stats.t.sf(abs(coef / se), dof))
            return MatchedEffect(
                outcome=outcome,
                model=model,
                scale="difference in means",
                estimate=coef,
                std_error=se,
                conf_low=float(coef - crit * se),
                conf_high=float(coef + crit * se),
                p_value=p,
                n_treated=int((treat == 1).sum()),
                n_control=int((treat == 0).sum()),
                n_clusters=n_clusters,
                se_method=("cluster-robust (pairs)" if clustered else "HC1 robust") + adjusted,
                level=level,
            )

        if model == "poisson":
            if (y < 0).any():
                raise MatchingError(f"Poisson outcome '{outcome}' has negative values.")
            person_time = np.ones(len(y))
            if time is not None:
                person_time = data[time].to_numpy(dtype=float)
                bad = (person_time < 0) | ((person_time == 0) & (y > 0))
                if bad.any():
                    raise MatchingError(
                        f"Person-time column '{time}' must be >= 0, and > 0 where '{outcome}' "
                        f"has events; {int(bad.sum())} matched rows are not."
                    )
            if x_adj is not None:
                coef, se = _poisson_gcomputation(
                    y, person_time, treat, w, x_adj, groups if clustered else None
                )
                return log_scale_effect("rate ratio", coef, se, "HC1 robust", adjusted)
            # With treatment as the only term the weighted Poisson MLE is closed-form: each
            # group's rate is sum(w * y) / sum(w * t) (rows with no person-time add nothing,
            # e.g. a control censored at once under inverse probability of censoring weights).
            rates = []
            for group in (0.0, 1.0):
                mine = treat == group
                events, exposure = float((w * y)[mine].sum()), float((w * person_time)[mine].sum())
                if events <= 0 or exposure <= 0:
                    raise MatchingError(
                        f"Poisson outcome '{outcome}' has no events (or no person-time) among the "
                        f"matched {'treated' if group else 'controls'}: no rate ratio."
                    )
                rates.append(events / exposure)
            params = np.array([math.log(rates[0]), math.log(rates[1] / rates[0])])
            mu = person_time * np.exp(design @ params)
            # Sandwich by hand (statsmodels' robust covariances do not fully support weights):
            # sandwich::vcovCL's HC1 for a weighted glm, clusters = pairs (or each row).
            scores = design * (w * (y - mu))[:, None]
            bread = np.linalg.inv((design * (w * mu)[:, None]).T @ design)
            cluster_ids = groups if clustered else np.arange(len(y))
            _, codes = np.unique(cluster_ids, return_inverse=True)
            summed = np.zeros((codes.max() + 1, design.shape[1]))
            np.add.at(summed, codes, scores)
            n_obs, n_par, n_g = len(y), design.shape[1], len(summed)
            vcov = bread @ (summed.T @ summed) @ bread
            vcov *= (n_g / (n_g - 1) if clustered else 1.0) * (n_obs - 1) / (n_obs - n_par)
            coef, se = float(params[1]), float(math.sqrt(vcov[1, 1]))
            return log_scale_effect("rate ratio", coef, se, "HC1 robust")

        if time is None:
            raise MatchingError("model='cox' needs time= (the time-to-event column).")
        if not np.allclose(w, w[0]):
            raise MatchingError(
                "model='cox' needs equal matching weights (statsmodels PHReg has no case "
                "weights); use 1:1 matching without replacement, or model='poisson' with time=."
            )
        status = y
        if not set(np.unique(status)) <= {0.0, 1.0}:
            raise MatchingError(f"Cox outcome '{outcome}' must be a 0/1 event indicator.")
        durations = data[time].to_numpy(dtype=float)
        ph = sm.PHReg(durations, treat[:, None], status=status, ties="breslow")
        fit = ph.fit(groups=groups if clustered else np.arange(len(y)))
        coef, se = float(fit.params[0]), float(fit.bse[0])
        return log_scale_effect("hazard ratio", coef, se, "robust sandwich")

    def _repr_html_(self) -> str:
        head = (
            f"<p>{self.method} matching ({self.estimand}), ratio {self.ratio}, "
            f"{'with' if self.replace else 'without'} replacement"
            f"{'' if self.caliper is None else f', caliper {self.caliper:.4g}'}</p>"
        )
        return head + self.summary().to_html()


def _poisson_gcomputation(
    y: np.ndarray,
    person_time: np.ndarray,
    treat: np.ndarray,
    w: np.ndarray,
    x: np.ndarray,
    groups: np.ndarray | None,
) -> tuple[float, float]:
    """Log rate ratio for the treated by g-computation and its cluster-robust standard error.

    A weighted Poisson rate model log(rate) = [1, x] g is fitted to the controls; each treated
    row's expected events without treatment are t_i exp([1, x_i] g); the ratio is the treated's
    events A over those predicted events B. Its standard error comes from the influence
    function of log A - log B(g): a_c / A - b_c / B - dB/dg' H^-1 u_c / B summed by cluster c
    (H the controls' information, u_c their scores), with the G / (G - 1) factor.
    """
    import statsmodels.api as sm

    design = np.column_stack([np.ones(len(y)), x])
    ctrl = treat == 0
    fit_rows = ctrl & (person_time > 0)
    rate = np.divide(y, person_time, out=np.zeros(len(y)), where=person_time > 0)
    glm = sm.GLM(
        rate[fit_rows],
        design[fit_rows],
        family=sm.families.Poisson(),
        var_weights=(w * person_time)[fit_rows],
    )
    g = glm.fit().params
    mu0 = person_time * np.exp(design @ g)
    is_t = treat == 1
    a_total = float((w * y)[is_t].sum())
    b_total = float((w * mu0)[is_t].sum())
    if a_total <= 0 or b_total <= 0:
        raise MatchingError("No events among the matched treated: no rate ratio.")
    info = (design[ctrl] * (w * mu0)[ctrl, None]).T @ design[ctrl]
    d_b = ((w * mu0)[is_t, None] * design[is_t]).sum(axis=0)
    scores = np.where(ctrl, w * (y - mu0), 0.0)[:, None] * design
    per_row = np.where(is_t, w * y / a_total - w * mu0 / b_total, 0.0)
    per_row = per_row - scores @ np.linalg.solve(info, d_b) / b_total
    ids = groups if groups is not None else np.arange(len(y))
    _, codes = np.unique(ids, return_inverse=True)
    per_cluster = np.bincount(codes, weights=per_row)
    n_g = len(per_cluster)
    variance = n_g / (n_g - 1) * float((per_cluster**2).sum())
    return math.log(a_total / b_total), math.sqrt(variance)


# --------------------------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------------------------


def match(
    data: pd.DataFrame | Any,
    treatment: str | None = None,
    covariates: Sequence[str] | None = None,
    *,
    method: Method = "nearest",
    distance: str | np.ndarray | pd.Series = "logit",
    ratio: int = 1,
    caliper: float | None = None,
    std_caliper: bool = True,
    replace: bool = False,
    exact: Sequence[str] | None = None,
    estimand: Estimand = "ATT",
    m_order: Literal["largest", "smallest", "data", "random"] | None = None,
    cutpoints: dict[str, Any] | None = None,
    seed: int | None = None,
) -> MatchResult:
    """Match treated and control rows; R MatchIt's ``matchit()`` for one-row-per-person data.

    Parameters
    ----------
    data
        One row per person (pandas DataFrame), or a ``CohortStudy`` (its ``data``,
        ``treatment`` and ``covariates`` are used when the arguments are omitted).
    treatment
        0/1 column: 1 = treated (exposed).
    covariates
        Columns to balance (and, for ``distance="logit"``, the propensity model's terms;
        text/categorical columns enter as indicators of each level but the first).
    method
        ``"nearest"``, ``"exact"`` or ``"cem"``.
    distance
        ``"logit"`` (alias ``"glm"``): propensity score from a logistic regression, on the
        probability scale as MatchIt's default. ``"mahalanobis"``: Mahalanobis distance on the
        covariates. An array/Series: a user-supplied score, one per row.
    ratio
        Controls per treated unit (k:1).
    caliper
        Largest allowed distance between matched units; with ``std_caliper=True`` (MatchIt's
        default) in standard deviations of the distance over all units.
    replace
        Match with replacement.
    exact
        Columns that must match exactly (nearest-neighbour matching within their strata).
    estimand
        ``"ATT"`` (default), ``"ATC"``; ``"ATE"`` for exact and CEM.
    m_order
        Order treated units are matched in: ``"largest"`` score first (default with a score,
        as MatchIt), ``"smallest"``, ``"data"`` (default for Mahalanobis) or ``"random"``.
    cutpoints
        CEM bins per column: ``"sturges"`` (default), ``"q<k>"`` quantile bins, a number of
        equal-width bins, a list of cut points, or 0 for no coarsening.
    seed
        Seed for ``m_order="random"``.

    Returns
    -------
    MatchResult

    Raises
    ------
    MatchingError
        For missing columns, missing values, a non-0/1 treatment, or invalid settings; the
        message names the column or argument.

    Examples
    --------
    >>> import pandas as pd
    >>> toy = pd.DataFrame({
    ...     "treat": [1, 1, 0, 0, 0, 0],
    ...     "sex": ["f", "m", "f", "m", "m", "f"],
    ...     "age": [70, 80, 71, 79, 60, 90],
    ... })
    >>> result = match(toy, "treat", ["sex", "age"], method="exact")
    >>> int(result.summary().loc["matched", "treated"])
    0
    >>> result = match(toy, "treat", ["age"], distance=toy["age"], exact=["sex"])
    >>> result.matched.sort_values(["subclass", "treat"])["age"].tolist()
    [71, 70, 79, 80]
    """
    if treatment is None or covariates is None:
        if hasattr(data, "data") and hasattr(data, "treatment"):
            treatment = treatment or data.treatment
            covariates = covariates if covariates is not None else list(data.covariates)
            data = data.data
        else:
            raise MatchingError("match needs treatment= and covariates= (or a CohortStudy).")
    if not isinstance(data, pd.DataFrame):
        raise MatchingError(
            f"The 'data' parameter of match must be a pandas DataFrame or CohortStudy. "
            f"Got {type(data).__name__} instead."
        )
    covariates = [covariates] if isinstance(covariates, str) else list(covariates)
    _check_choice("method", method, ["nearest", "exact", "cem"])
    _check_choice("estimand", estimand, ["ATT", "ATC", "ATE"])
    if not isinstance(ratio, int | np.integer) or ratio < 1:
        raise MatchingError(
            f"The 'ratio' parameter of match must be an integer >= 1. Got {ratio!r}."
        )
    if caliper is not None and not caliper > 0:
        raise MatchingError(f"The 'caliper' parameter must be positive. Got {caliper!r}.")
    t = _treatment_vector(data, treatment)
    exact = list(exact or [])
    for name in exact:
        if name not in data.columns:
            raise MatchingError(f"exact column '{name}' is not in the data.")
        if data[name].isna().any():
            raise MatchingError(f"exact column '{name}' has missing values.")
    _, model_x = _covariate_frames(data, covariates)

    if method in ("exact", "cem"):
        keys_cols = covariates + [c for c in exact if c not in covariates]
        if method == "exact":
            keys = data[keys_cols].reset_index(drop=True)
        else:
            keys = _coarsen(data.reset_index(drop=True), keys_cols, cutpoints)
        subclass = _exact_subclasses(keys, t)
        weights = _subclass_weights(subclass, t, estimand)
        for group, label in ((1, "treated"), (0, "control")):
            n_group = int((t == group).sum())
            n_matched = int(((weights > 0) & (t == group)).sum())
            if n_matched < n_group:
                warnings.warn(
                    f"{method}: {n_group - n_matched} of {n_group} {label} rows share no "
                    "stratum with the other group; they are left out of .matched and counted "
                    "in .summary().",
                    DroppedRowsWarning,
                    stacklevel=2,
                )

        return MatchResult(
            data=data,
            treatment=treatment,
            covariates=tuple(covariates),
            method=method,
            estimand=estimand,
            ratio=1,
            replace=False,
            caliper=None,
            weights=weights,
            subclass=subclass,
            distance=None,
        )

    if estimand == "ATE":
        raise MatchingError(
            "Nearest-neighbour matching estimates the ATT or ATC (as MatchIt); use "
            "method='exact' or 'cem' for the ATE."
        )
    focal = 1 if estimand == "ATT" else 0
    t_focal = (t == focal).astype(np.int8)  # matching code treats the focal group as "treated"

    strata = None
    if exact:
        strata = data[exact].reset_index(drop=True).groupby(exact, sort=True).ngroup().to_numpy()

    is_mahalanobis = isinstance(distance, str) and distance == "mahalanobis"
    score: np.ndarray | None = None
    if isinstance(distance, str):
        _check_choice("distance", distance, ["logit", "glm", "mahalanobis"])
        if not is_mahalanobis:
            score = fit_propensity_score(model_x, t)
    else:
        score = np.asarray(distance, dtype=float).ravel()
        if score.shape[0] != len(data):
            raise MatchingError(
                f"distance array has {score.shape[0]} values; expected one per row ({len(data)})."
            )
        if np.isnan(score).any():
            raise MatchingError(f"distance array has {int(np.isnan(score).sum())} missing values.")

    if m_order is None:
        m_order = "data" if is_mahalanobis else ("largest" if estimand == "ATT" else "smallest")
    _check_choice("m_order", m_order, ["largest", "smallest", "data", "random"])
    focal_rows = np.flatnonzero(t_focal == 1)
    n1 = len(focal_rows)
    if replace:
        order = np.arange(n1)
    elif m_order == "random":
        order = np.random.default_rng(seed).permutation(n1)
    elif m_order == "data" or score is None:
        order = np.arange(n1)
    else:
        s1 = score[focal_rows]
        # R's order(decreasing = TRUE) is stable: ties stay in data order.
        order = np.argsort(-s1 if m_order == "largest" else s1, kind="stable")

    applied_caliper = None
    if caliper is not None:
        if score is None:
            raise MatchingError(
                "A caliper needs a scalar distance (propensity score or distance array); "
                "distance='mahalanobis' has none."
            )
        applied_caliper = float(caliper) * (float(np.std(score, ddof=1)) if std_caliper else 1.0)

    n_available = int((t_focal == 0).sum())
    if not replace and n_available < n1 * ratio:
        warnings.warn(
            f"Only {n_available} controls for {n1} focal units at ratio {ratio}: not every unit "
            "will get all its matches.",
            UserWarning,
            stacklevel=2,
        )

    if is_mahalanobis:
        matches = _nearest_mahalanobis(
            model_x.to_numpy(dtype=float),
            t_focal,
            ratio=ratio,
            replace=replace,
            strata=strata,
            order=order,
        )
    else:
        assert score is not None
        matches = _nearest_1d(
            score,
            t_focal,
            ratio=ratio,
            replace=replace,
            caliper=applied_caliper,
            strata=strata,
            order=order,
        )

    weights = _matrix_weights(matches, t_focal, focal_rows)
    subclass = np.zeros(len(t), dtype=np.int64)
    if not replace:
        has = (matches >= 0).any(axis=1)
        ids = np.cumsum(has)
        subclass[focal_rows[has]] = ids[has]
        found = matches >= 0
        subclass[matches[found]] = np.repeat(ids, ratio).reshape(matches.shape)[found]
    n_unmatched = int((~(matches >= 0).any(axis=1)).sum())
    if n_unmatched:
        warnings.warn(
            f"{n_unmatched} of {n1} {'treated' if focal == 1 else 'control'} rows found no "
            "match (caliper, exact strata or too few controls); they are left out of .matched "
            "and counted in .summary().",
            DroppedRowsWarning,
            stacklevel=2,
        )
    return MatchResult(
        data=data,
        treatment=treatment,
        covariates=tuple(covariates),
        method=method,
        estimand=estimand,
        ratio=int(ratio),
        replace=bool(replace),
        caliper=applied_caliper,
        weights=weights,
        subclass=subclass,
        distance=score,
        match_matrix=matches,
    )


# --------------------------------------------------------------------------------------------
# Cohort studies on a KID session: index dates, baseline covariates, outcomes
# --------------------------------------------------------------------------------------------

#: Outcomes ``cohort_study`` can count in the follow-up window: table, date column, row filter.
OUTCOMES: dict[str, tuple[str, str, str | None]] = {
    "emergency_admissions": ("inpatient_spells", "admission_date", "is_emergency"),
    "elective_admissions": ("inpatient_spells", "admission_date", "is_elective"),
    "ae_attendances": ("ae_attendances", "arrival_date", None),
    "cost_gbp": ("costs", "activity_date", None),
    "death": ("persons", "date_of_death", None),
}

#: Baseline covariates measured before the index date (see :func:`cohort_study`).
BASELINE_COVARIATES = (
    "age",
    "female",
    "imd_quintile",
    "efi_deficits",
    "polypharmacy",
    "efi_mild",
    "efi_moderate",
    "efi_severe",
    "lives_alone",
    "household_unknown",
    "gp_events_12m",
    "prescriptions_12m",
    "emergency_admissions_prior_12m",
    "ae_attendances_prior_12m",
    "emergency_admissions_lookback",
    "ae_attendances_lookback",
    "gp_events_lookback",
)


def _informative(data: pd.DataFrame, covariates: Sequence[str]) -> list[str]:
    """Covariates that vary and do not repeat an earlier one (others would make the propensity
    model rank deficient), dropping the rest with a logged note."""
    keep: list[str] = []
    for name in covariates:
        col = data[name]
        if col.nunique(dropna=False) < 2:
            logger.info("cohort_study: covariate %s is constant in this cohort; not used", name)
        elif any(col.equals(data[k]) for k in keep if data[k].dtype == col.dtype):
            logger.info("cohort_study: covariate %s repeats another in this cohort; not used", name)
        else:
            keep.append(name)
    return keep


_DAYS_PER_MONTH = 365.25 / 12


@dataclass(frozen=True, eq=False)
class CohortStudy:
    """People exposed to a programme and candidate controls, one row per person and index date.

    ``data`` has ``person_id``, ``index_date`` (enrolment date for the treated; for controls a
    date drawn from the treated people's enrolment dates, before any enrolment of their own),
    ``index_month``, the 0/1 ``treatment`` column, the baseline ``covariates`` (measured before
    the index date), the ``outcomes`` (counted from the index date for ``follow_up_months``)
    and ``follow_up_days`` (days observed: to the end of follow-up, death, leaving Kent or the
    study end, whichever is first). With ``controls="censor"`` (the default of
    :func:`cohort_study`) a control's outcomes and ``follow_up_days`` are inverse probability of
    censoring weighted totals up to its later enrolment, and ``censored_day`` and ``ipcw`` are
    added. ``match(study, ...)`` and :meth:`match` accept it directly.
    """

    data: pd.DataFrame = field(repr=False)
    treatment: str
    covariates: tuple[str, ...]
    outcomes: tuple[str, ...]
    programme: str
    lookback_months: int
    follow_up_months: int

    def match(self, **options: Any) -> MatchResult:
        """Match on the baseline covariates, exactly on the index month, within a caliper.

        Exact matching on ``index_month`` gives every matched control an index date in the
        same calendar month as its treated person's enrolment; pass ``exact=[]`` to drop it.
        The default caliper is 0.2 standard deviations of the propensity score (MatchIt's
        ``caliper = 0.2`` with ``std.caliper = TRUE``; Austin, Pharm Stat 2011;10:150-161):
        treated people with no control that close are left unmatched (reported by
        ``summary()``), since the synthetic scenarios with common enrolment showed pairs beyond it
        biased the estimate (docs/matching.md). Pass ``caliper=None`` for none.

        Parameters
        ----------
        **options
            Options of :func:`match` (``method``, ``ratio``, ``caliper``, ``exact``, ...).

        Returns
        -------
        MatchResult

        Examples
        --------
        >>> from kidresearch._examples import toy_programme_kid
        >>> study = cohort_study(toy_programme_kid(), outcomes=["emergency_admissions"])
        >>> study.match(caliper=None).summary().loc["matched"].tolist()
        [3.0, 3.0]
        >>> study.match().summary().loc["matched"].tolist()  # one enrolee has no control close
        [2.0, 2.0]
        """
        options.setdefault("exact", ["index_month"])
        options.setdefault("caliper", 0.2)
        return match(self, **options)

    def summary(self) -> pd.DataFrame:
        """People per group and mean of each covariate and outcome (before matching).

        Examples
        --------
        >>> from kidresearch._examples import toy_programme_kid
        >>> study = cohort_study(toy_programme_kid(), outcomes=["emergency_admissions"])
        >>> study.summary().loc[["emergency_admissions", "people"]].round(2)
                              control  treated
        emergency_admissions      0.0     0.33
        people                    9.0     3.00
        """
        cols = list(self.covariates) + list(self.outcomes)
        table = self.data.groupby(self.treatment)[cols].mean().T
        table.columns = ["control" if c == 0 else "treated" for c in table.columns]
        counts = self.data[self.treatment].value_counts()
        table.loc["people"] = [counts.get(0, 0), counts.get(1, 0)]
        return table

    def to_frame(self) -> pd.DataFrame:
        """A copy of the cohort data.

        Examples
        --------
        >>> from kidresearch._examples import toy_programme_kid
        >>> study = cohort_study(toy_programme_kid(), outcomes=["emergency_admissions"])
        >>> study.to_frame()[["person_id", "treated", "index_date"]].head(2)
           person_id  treated index_date
        0          0        1 2024-03-01
        1          1        1 2024-03-01
        """
        return self.data.copy()


def _as_dates(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values).dt.normalize()


#: Default handling of candidate controls who enrol during their own follow-up window.
ControlsDesign = Literal["censor", "itt"]

#: Inverse probability of censoring weights are capped here (a control's estimated chance of
#: staying unenrolled to the end of an interval is taken as at least 1 / this).
_IPCW_CAP = 20.0

#: Below this many censoring events per model term the enrolment hazard model falls back to
#: the interval-specific (Kaplan-Meier-like) hazard.
_EVENTS_PER_TERM = 10

#: The pooled logistic model of the enrolment hazard is fitted on all censoring events and a
#: random sample of this many other at-risk control-intervals (with the intercept corrected).
_HAZARD_ROWS = 400_000


def _interval_of(offset: np.ndarray, follow_up_days: int, n_intervals: int) -> np.ndarray:
    """Interval 0..J-1 of a day offset in [0, follow_up_days): floor(offset * J / days)."""
    return (offset * n_intervals) // follow_up_days


def _fit_logistic(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients of a logistic regression (design includes the intercept column)."""
    cross = design.T @ design
    scale = np.sqrt(np.diag(cross))
    scale[scale == 0] = 1.0
    if np.linalg.matrix_rank(cross / np.outer(scale, scale), tol=1e-10) < design.shape[1]:
        raise np.linalg.LinAlgError("rank deficient")
    mu = (y + 0.5) / 2.0
    beta, _, converged = _irls(design, y, np.log(mu / (1.0 - mu)), 25, 1e-8)
    if not converged or not np.all(np.isfinite(beta)):
        raise np.linalg.LinAlgError("did not converge")
    return beta


def _censoring_weights(
    kid: Any,
    cohort: pd.DataFrame,
    covariates: Sequence[str],
    outcomes: Sequence[str],
    *,
    follow_up_days: int,
    n_intervals: int,
    observed_end: pd.Series,
    seed: int,
) -> pd.DataFrame:
    """Censor controls at a later enrolment and reweight the uncensored (IPCW).

    Returns the cohort with, for controls, every outcome and ``follow_up_days`` replaced by
    its inverse-probability-of-censoring-weighted total over the follow-up intervals
    (sum over intervals j of R_ij * w_ij * y_ij: R_ij = 1 while not yet enrolled at the end of
    interval j, w_ij = 1 / P(not enrolled by then | history), y_ij the outcome in interval j),
    plus ``censored_day`` and ``ipcw`` (the weight at the end of the window, 0 if censored).
    """
    import ibis

    from kidresearch.frailty import EFI_CATEGORIES, _category_codes, deficit_codelist

    out = cohort.copy()
    out["censored_day"] = np.nan
    out["ipcw"] = 1.0
    is_ctrl = out["treated"].to_numpy() == 0
    ctrl = out.loc[is_ctrl]
    index = _as_dates(ctrl["index_date"])
    later = (_as_dates(ctrl["later_enrolment"]) - index).dt.days
    enrol_day = later.where(later < follow_up_days).to_numpy(dtype=float)  # NaN = not in window
    out.loc[is_ctrl, "censored_day"] = enrol_day
    n_censored = int(np.isfinite(enrol_day).sum())
    if n_censored == 0:
        logger.info("cohort_study: no control enrols during its follow-up; nothing to censor")
        return out

    n, J = len(ctrl), n_intervals
    bounds = -(-np.arange(J + 1) * follow_up_days // J)  # ceil(j * days / J): interval starts
    rows = np.arange(n)
    row_ids = ctrl["row_id"].to_numpy()
    position = pd.Series(rows, index=row_ids)
    cw = ibis.memtable(
        pd.DataFrame(
            {
                "row_id": row_ids,
                "person_id": ctrl["person_id"].to_numpy(),
                "index_date": index.dt.date.to_numpy(),
                "history_start": (index - pd.Timedelta(days=365)).dt.date.to_numpy(),
                "window_end": (index + pd.Timedelta(days=follow_up_days)).dt.date.to_numpy(),
            }
        )
    )

    def offsets(table: str, date_col: str, start: str, extra: Sequence[str] = ()) -> pd.DataFrame:
        events = kid.table(table)
        j = events.join(cw, "person_id")
        j = j.filter((j[date_col] >= j[start]) & (j[date_col] < j.window_end))
        frame = kid.to_pandas(
            j.select("row_id", *extra, offset=j[date_col].delta(j.index_date, unit="day"))
        )
        frame["pos"] = position.loc[frame["row_id"].to_numpy()].to_numpy()
        return frame

    def per_interval(frame: pd.DataFrame, values: np.ndarray | None = None) -> np.ndarray:
        """(n, J) totals of events (or ``values``) in each follow-up interval."""
        total = np.zeros(n * J)
        inside = frame["offset"].to_numpy() >= 0
        cell = frame["pos"].to_numpy()[inside] * J + _interval_of(
            frame["offset"].to_numpy()[inside], follow_up_days, J
        )
        np.add.at(total, cell, 1.0 if values is None else values[inside])
        return total.reshape(n, J)

    def before(frame: pd.DataFrame, lo: int, hi: int) -> np.ndarray:
        """(n, J) counts of events with offset in [bounds_j + lo, bounds_j + hi)."""
        key = frame["pos"].to_numpy().astype(np.int64) * 1_000_000 + frame["offset"].to_numpy()
        key = np.sort(key)
        base = rows.astype(np.int64)[:, None] * 1_000_000 + bounds[None, :J]
        return np.searchsorted(key, base + hi) - np.searchsorted(key, base + lo)

    # ---- time-varying enrolment drivers at each interval start: emergency admissions in the
    # 365 days before, and eFI deficits ever coded before (baseline count + new onsets).
    spells = offsets(
        "inpatient_spells", "admission_date", "history_start", ["is_emergency", "is_elective"]
    )
    emergency = spells[spells["is_emergency"].fillna(False).astype(bool)]
    em_prior = before(emergency, -365, 0)
    gp = kid.table("gp_events")
    codes = ibis.memtable(deficit_codelist()[["snomed_code", "deficit"]])
    hits = gp.join(codes, gp.snomed_code == codes.snomed_code)
    hits = hits.join(cw.select("person_id").distinct(), "person_id", how="semi")
    onsets = hits.group_by(["person_id", "deficit"]).aggregate(onset=hits.event_date.min())
    onsets = onsets.join(cw, "person_id")
    onsets = onsets.filter((onsets.onset >= onsets.index_date) & (onsets.onset < onsets.window_end))
    new = kid.to_pandas(
        onsets.select("row_id", offset=onsets.onset.delta(onsets.index_date, unit="day"))
    )
    new["pos"] = position.loc[new["row_id"].to_numpy()].to_numpy()
    deficits = ctrl["efi_deficits"].to_numpy()[:, None] + before(new, -(10**5), 0)
    poly = ctrl["polypharmacy"].to_numpy() if "polypharmacy" in ctrl else np.zeros(n)
    category = _category_codes((deficits + poly[:, None]).ravel()).reshape(n, J)

    # ---- at risk of enrolling at the start of interval j: alive, registered, not yet enrolled.
    end_day = (observed_end.loc[ctrl.index] - index).dt.days.to_numpy(dtype=float)
    start = bounds[None, :J]
    enrolled_by_start = np.nan_to_num(enrol_day, nan=np.inf)[:, None] < start
    at_risk = (end_day[:, None] > start) & ~enrolled_by_start
    event = at_risk & (np.nan_to_num(enrol_day, nan=np.inf)[:, None] < bounds[None, 1:])

    replaced = {
        "efi_deficits",
        "efi_mild",
        "efi_moderate",
        "efi_severe",
        "emergency_admissions_prior_12m",
    }
    _, base_x = _covariate_frames(ctrl, [c for c in covariates if c not in replaced])
    base = base_x.to_numpy(dtype=float)
    r_idx, j_idx = np.nonzero(at_risk)

    def design_rows(sel: np.ndarray | slice) -> np.ndarray:
        """Hazard model terms of the at-risk control-intervals ``sel`` (built in pieces, so
        that a Kent cohort's millions of control-months never sit in memory at once)."""
        r, j = r_idx[sel], j_idx[sel]
        columns = [base[r], j[:, None].astype(float), em_prior[r, j][:, None].astype(float)]
        if "efi_deficits" in covariates:
            columns.append(deficits[r, j][:, None].astype(float))
        for code, name in enumerate(EFI_CATEGORIES[1:], start=1):
            if f"efi_{name}" in covariates:
                columns.append((category[r, j] == code)[:, None].astype(float))
        return np.hstack(columns)

    y = event[r_idx, j_idx].astype(float)
    hazard = np.zeros((n, J))
    n_events = int(y.sum())
    # Case-control subsample of the non-events when there are many; the logistic slopes are
    # unchanged and the intercept is corrected by log(sampling fraction) (Prentice & Pyke 1979).
    rng = np.random.default_rng(seed)
    non = np.flatnonzero(y == 0)
    fraction = min(1.0, _HAZARD_ROWS / max(len(non), 1))
    take = np.flatnonzero((y == 1) | (rng.random(len(y)) < fraction))
    x_fit = design_rows(take)
    varying = x_fit.std(axis=0) > 0
    fitted = False
    if n_events >= _EVENTS_PER_TERM * (int(varying.sum()) + 1):
        design = np.column_stack([np.ones(len(take)), x_fit[:, varying]])
        try:
            beta = _fit_logistic(design, y[take])
            fitted = True
        except np.linalg.LinAlgError:
            logger.info(
                "cohort_study: the enrolment hazard model did not fit; using interval hazards"
            )
        if fitted:
            beta[0] += math.log(fraction)
            for start_row in range(0, len(r_idx), _HAZARD_ROWS):
                piece = slice(start_row, start_row + _HAZARD_ROWS)
                eta = beta[0] + design_rows(piece)[:, varying] @ beta[1:]
                hazard[r_idx[piece], j_idx[piece]] = 1.0 / (1.0 + np.exp(-eta))
    if not fitted:
        at_j = np.bincount(j_idx, minlength=J)
        ev_j = np.bincount(j_idx, weights=y, minlength=J)
        hazard[r_idx, j_idx] = (ev_j / np.maximum(at_j, 1))[j_idx]
    survival = np.cumprod(1.0 - np.clip(hazard, 0.0, 1.0 - 1e-9), axis=1)
    weight = np.minimum(1.0 / survival, _IPCW_CAP)
    n_capped = int((1.0 / survival[:, -1] > _IPCW_CAP).sum())
    uncensored = ~(np.nan_to_num(enrol_day, nan=np.inf)[:, None] < bounds[None, 1:])
    rw = np.where(uncensored, weight, 0.0)

    # ---- outcomes per interval, reweighted and summed.
    adjusted: dict[str, np.ndarray] = {}
    if "emergency_admissions" in outcomes:
        adjusted["emergency_admissions"] = per_interval(emergency)
    if "elective_admissions" in outcomes:
        adjusted["elective_admissions"] = per_interval(
            spells[spells["is_elective"].fillna(False).astype(bool)]
        )
    if "ae_attendances" in outcomes:
        adjusted["ae_attendances"] = per_interval(
            offsets("ae_attendances", "arrival_date", "index_date")
        )
    if "cost_gbp" in outcomes:
        costs = kid.table("costs").join(cw, "person_id")
        costs = costs.filter(
            (costs.activity_date >= costs.index_date) & (costs.activity_date < costs.window_end)
        )
        costs = costs.mutate(offset=costs.activity_date.delta(costs.index_date, unit="day"))
        costs = costs.mutate(interval=(costs.offset * J) // follow_up_days)
        summed = kid.to_pandas(
            costs.group_by(["row_id", "interval"]).aggregate(cost=costs.cost_gbp.sum())
        )
        grid = np.zeros(n * J)
        cell = (
            position.loc[summed["row_id"].to_numpy()].to_numpy() * J + summed["interval"].to_numpy()
        )
        np.add.at(grid, cell, summed["cost"].fillna(0.0).to_numpy(dtype=float))
        adjusted["cost_gbp"] = grid.reshape(n, J)
    if "death" in outcomes:
        death_day = (_as_dates(ctrl["date_of_death"]) - index).dt.days.to_numpy(dtype=float)
        died = np.isfinite(death_day) & (death_day < follow_up_days)
        grid = np.zeros((n, J))
        grid[rows[died], _interval_of(death_day[died].astype(np.int64), follow_up_days, J)] = 1.0
        adjusted["death"] = grid
    observed = np.clip(np.minimum(end_day[:, None], bounds[None, 1:]) - bounds[None, :J], 0, None)
    adjusted["follow_up_days"] = observed
    ctrl_index = out.index[is_ctrl]
    for name, grid in adjusted.items():
        out[name] = out[name].astype(float)  # counts become weighted totals for controls
        out.loc[ctrl_index, name] = (rw * grid).sum(axis=1)
    out.loc[ctrl_index, "ipcw"] = rw[:, -1]
    logger.info(
        "cohort_study: %d of %d candidate controls enrol during follow-up and are censored "
        "then; enrolment hazard model %s (%d events), largest weight %.2f%s",
        n_censored,
        n,
        "fitted" if fitted else "by interval only",
        n_events,
        float(rw.max()),
        f", {n_capped} capped at {_IPCW_CAP:g}" if n_capped else "",
    )
    return out


def cohort_study(
    kid: Any,
    exposure: str = "programme_enrolments",
    outcomes: Sequence[str] = ("emergency_admissions", "ae_attendances"),
    *,
    programme: str = "integrated_frailty_team",
    lookback: str | int = "3y",
    follow_up: str | int = "12m",
    min_age: int = 65,
    seed: int = 0,
    controls: ControlsDesign = "censor",
) -> CohortStudy:
    """Build a cohort of programme enrolees and candidate controls from a KID session.

    Parameters
    ----------
    kid
        An open :class:`kidresearch.access.KID` session (anything with ``table(name)`` and
        ``to_pandas(expr)``) whose proposal approves ``persons``, ``lsoas``, the exposure table,
        ``gp_events``, ``prescriptions``, ``inpatient_spells`` and ``ae_attendances`` (and
        ``costs`` for ``cost_gbp``). With ``prescriptions.bnf_code`` approved the eFI counts
        polypharmacy; with ``persons.household_id`` approved ``lives_alone`` is measured
        (otherwise each is left out, with a logged note).
    exposure
        The exposure table; ``"programme_enrolments"`` (the only one so far).
    outcomes
        Names from :data:`OUTCOMES`, counted in ``[index, index + follow_up)``: emergency and
        elective admissions, A&E attendances, ``cost_gbp`` (sum) and ``death`` (0/1).
    programme
        The programme whose enrolees are treated.
    lookback
        Window before the index date for the longer prior-use counts (``"3y"``: GP events,
        emergency admissions and A&E attendances); the eFI is not limited by it.
    follow_up
        Outcome window from the index date (``"12m"``).
    min_age
        Eligibility: aged at least this on the index date (the programmes take people 65+),
        alive and registered.
    seed
        Seed for drawing controls' index dates (and for subsampling the enrolment hazard
        model's rows at Kent scale).
    controls
        ``"censor"`` (default): a candidate control who enrols during its follow-up is censored
        then and the others are reweighted (inverse probability of censoring weights; see
        Notes), estimating the effect of enrolling against not enrolling during the follow-up.
        ``"itt"``: controls are followed for the whole window whatever they do ("not enrolled
        at the index date").

    Returns
    -------
    CohortStudy

    Raises
    ------
    MatchingError
        An unknown ``exposure``, outcome or ``controls`` design, a programme with no
        enrolments, or cohort members whose LSOA is missing from ``lsoas``.

    Notes
    -----
    Index dates: a treated person's is their first enrolment in ``programme``. Every person
    never enrolled in it is a candidate control with an index date drawn at random from the
    treated people's enrolment dates, so the two groups' dates share a distribution;
    :meth:`CohortStudy.match` then matches exactly on the index month, so each matched control's
    index date lies in the calendar month of its treated person's. Covariates are measured at
    each person's own index date, strictly before it:

    * age (years, to the month), ``female``, IMD quintile of the LSOA (1 = most deprived);
    * the electronic frailty index as Clegg et al. 2016 define it (``kidresearch.frailty``):
      ``efi_deficits``, the coded deficits *ever* recorded before the index date (deficits are
      never resolved), ``polypharmacy`` (5+ distinct BNF chemical substances from chapters 1-15
      issued in the 365 days before), and the category of their sum as dummies ``efi_mild``,
      ``efi_moderate``, ``efi_severe`` (fit is the reference); ``efi_count``, ``efi`` (score)
      and ``efi_category`` are kept in the data too, outside the covariates;
    * ``lives_alone``: 1 when the person's household (``household_id``) has no other member
      alive and registered on the index date; ``household_unknown`` when there is no
      ``household_id``;
    * prior use in the 365 days before: GP events, prescription issues, emergency admissions
      (uncapped: a version capped at 5 is nearly collinear with it, as few people have more,
      and makes the propensity model ill-conditioned), A&E attendances; and over the ``lookback``: GP events, emergency
      admissions, A&E attendances.

    Deficits coded before the proposal's visible history (``study_period.start``, or
    ``lookback_start`` when approved) cannot be seen: approve a ``lookback_start`` for a full
    eFI. Covariates constant in the cohort, or repeating another, are left out of
    ``covariates`` (logged), since they would make the propensity model rank deficient. Treated
    people not eligible on their enrolment date (younger than ``min_age``, not registered, dead)
    are left out with a :class:`~kidresearch.errors.DroppedRowsWarning` giving the count.

    People enrolled later can be controls at a drawn date before their enrolment. The estimand
    is the effect of enrolling against not enrolling during the follow-up (the synthetic
    truth's contrast), so by default (``controls="censor"``) such a control is censored when it
    enrols, and the controls still unenrolled are reweighted by inverse probability of
    censoring weights: the follow-up is cut into monthly intervals, a pooled logistic model of
    the enrolment hazard among at-risk candidate controls uses the baseline covariates, the
    interval, and, updated at each interval start, emergency admissions in the 365 days before
    and eFI deficits ever coded (with their category); each control's outcome becomes the sum
    over intervals of (not yet enrolled) x weight x outcome in the interval (Bang and Tsiatis
    2000), weights capped at 20. Censoring without weights was biased (the censored were the
    controls about to cost most); following them whatever they do (``controls="itt"``) dilutes a
    true effect when enrolment is common (docs/matching.md: +0.09 on the log rate ratio in a
    simulation where 13% of matched controls enrol within their year). Matching
    (:meth:`CohortStudy.match`) uses a caliper of 0.2 standard deviations of the propensity score
    by default: without it, when enrolment is common, greedy matching pairs frail enrolees with
    fitter controls.

    Examples
    --------
    >>> from kidresearch._examples import toy_programme_kid
    >>> study = cohort_study(toy_programme_kid(), outcomes=["emergency_admissions", "cost_gbp"])
    >>> study
    CohortStudy(treatment='treated', covariates=('age', 'female'), outcomes=('emergency_admissions', 'cost_gbp'), programme='integrated_frailty_team', lookback_months=36, follow_up_months=12)
    >>> study.data.groupby("treated")[["emergency_admissions", "cost_gbp"]].sum()
             emergency_admissions  cost_gbp
    treated
    0                           0       0.0
    1                           1    3000.0
    """
    import ibis

    from kidresearch.frailty import (
        EFI_CATEGORIES,
        EFI_DEFICIT_TOTAL,
        POLYPHARMACY_MIN_DRUGS,
        _category_codes,
        _rx_substances,
        deficit_codelist,
        parse_months,
    )

    if controls not in ("censor", "itt"):
        raise MatchingError(
            f"controls must be 'censor' (censor controls at a later enrolment, with inverse "
            f"probability of censoring weights) or 'itt' (follow them whatever they do); "
            f"got {controls!r}."
        )
    if exposure != "programme_enrolments":
        raise MatchingError(
            f"exposure must be 'programme_enrolments' (the only exposure table); got {exposure!r}."
        )
    unknown = [o for o in outcomes if o not in OUTCOMES]
    if unknown:
        raise MatchingError(f"Unknown outcomes {unknown}; available: {list(OUTCOMES)}.")
    lookback_months = parse_months(lookback, "lookback")
    follow_up_months = parse_months(follow_up, "follow_up")
    lookback_days = round(lookback_months * _DAYS_PER_MONTH)
    follow_up_days = round(follow_up_months * _DAYS_PER_MONTH)

    enrol = kid.table(exposure)
    enrol = enrol.filter(enrol.programme == programme)
    first = kid.to_pandas(
        enrol.group_by("person_id").aggregate(index_date=enrol.enrolment_date.min())
    )
    if first.empty:
        raise MatchingError(f"No enrolments in programme '{programme}' in {exposure}.")
    persons = kid.to_pandas(
        kid.table("persons").select(
            "person_id",
            "sex",
            "birth_year",
            "birth_month",
            "lsoa_code",
            "registration_start",
            "registration_end",
            "date_of_death",
        )
    )
    lsoas = kid.to_pandas(kid.table("lsoas").select("lsoa_code", "imd_quintile"))

    first["index_date"] = _as_dates(first["index_date"])
    # The database returns groups in no fixed order: sort, so that ``seed`` fixes the draw.
    first = first.sort_values("person_id", ignore_index=True)
    persons = persons.sort_values("person_id", ignore_index=True)
    treated = persons.merge(first, on="person_id", how="inner")
    # Every person is a candidate control at a drawn date, as long as they are not yet enrolled
    # then ("not yet treated", as in sequential trial emulation): dropping people enrolled later
    # from the pool would leave controls healthier than the people they stand for.
    candidates = persons.copy()
    rng = np.random.default_rng(seed)
    candidates["index_date"] = rng.choice(first["index_date"].to_numpy(), size=len(candidates))
    enrolled_on = candidates["person_id"].map(first.set_index("person_id")["index_date"])
    candidates = candidates[enrolled_on.isna() | (enrolled_on > candidates["index_date"])].copy()
    treated["treated"] = 1
    candidates["treated"] = 0
    treated["later_enrolment"] = pd.NaT
    candidates["later_enrolment"] = candidates["person_id"].map(
        first.set_index("person_id")["index_date"]
    )
    cohort = pd.concat([treated, candidates], ignore_index=True)
    index = _as_dates(cohort["index_date"])
    birth_months = cohort["birth_year"].astype(int) * 12 + cohort["birth_month"].astype(int) - 1
    age_months = index.dt.year * 12 + index.dt.month - 1 - birth_months
    cohort["age"] = age_months / 12.0
    registered = (_as_dates(cohort["registration_start"]) <= index) & (
        cohort["registration_end"].isna() | (_as_dates(cohort["registration_end"]) > index)
    )
    alive = cohort["date_of_death"].isna() | (_as_dates(cohort["date_of_death"]) > index)
    eligible = registered & alive & (cohort["age"] >= min_age)
    n_treated_out = int((~eligible & (cohort["treated"] == 1)).sum())
    if n_treated_out:
        warnings.warn(
            f"{n_treated_out} of {len(treated)} people enrolled in {programme} were not eligible "
            f"on their enrolment date (aged under {min_age}, not registered or dead) and are "
            "left out.",
            DroppedRowsWarning,
            stacklevel=2,
        )
    cohort = cohort.loc[eligible].reset_index(drop=True)
    index = _as_dates(cohort["index_date"])
    cohort["index_date"] = index
    cohort["index_month"] = index.dt.strftime("%Y-%m")
    cohort["female"] = (cohort["sex"] == "F").astype(float)
    cohort = cohort.merge(lsoas, on="lsoa_code", how="left")
    n_no_imd = int(cohort["imd_quintile"].isna().sum())
    if n_no_imd:
        raise MatchingError(
            f"{n_no_imd} cohort members have an lsoa_code missing from the lsoas table; "
            "cannot measure deprivation."
        )
    cohort["row_id"] = np.arange(len(cohort), dtype=np.int64)
    # Outcomes are counted over the whole window for everyone here; with controls="censor" the
    # controls' totals are replaced below by IPCW totals up to a later enrolment. Simply cutting
    # them at enrolment (no weights) was biased: enrolment follows a rise in frailty and
    # admissions, so the censored controls were the ones about to cost most (+742 GBP per
    # enrolee on a null synthetic scenario; docs/matching.md).
    fu_end = index + pd.Timedelta(days=follow_up_days)

    windows = pd.DataFrame(
        {
            "row_id": cohort["row_id"],
            "person_id": cohort["person_id"],
            "index_date": index.dt.date,
            "prior_12m_start": (index - pd.Timedelta(days=365)).dt.date,
            "lookback_start": (index - pd.Timedelta(days=lookback_days)).dt.date,
            "follow_up_end": fu_end.dt.date,
        }
    )
    win = ibis.memtable(windows)

    def counts(table: str, date_col: str, aggregates: dict[str, Any], start: str) -> pd.DataFrame:
        events = kid.table(table)
        joined = events.join(win, "person_id")
        joined = joined.filter(
            (joined[date_col] >= joined[start]) & (joined[date_col] < joined.follow_up_end)
        )
        spec = {name: make(joined) for name, make in aggregates.items()}
        return kid.to_pandas(joined.group_by("row_id").aggregate(**spec))

    def n_in(joined: Any, date_col: str, lo: str, hi: str, flag: str | None = None) -> Any:
        inside = (joined[date_col] >= joined[lo]) & (joined[date_col] < joined[hi])
        if flag is not None:
            inside = inside & joined[flag]
        return inside.cast("int64").sum()

    parts = [
        counts(
            "inpatient_spells",
            "admission_date",
            {
                "emergency_admissions_prior_12m": lambda j: n_in(
                    j, "admission_date", "prior_12m_start", "index_date", "is_emergency"
                ),
                "emergency_admissions_lookback": lambda j: n_in(
                    j, "admission_date", "lookback_start", "index_date", "is_emergency"
                ),
                "emergency_admissions": lambda j: n_in(
                    j, "admission_date", "index_date", "follow_up_end", "is_emergency"
                ),
                "elective_admissions": lambda j: n_in(
                    j, "admission_date", "index_date", "follow_up_end", "is_elective"
                ),
            },
            "lookback_start",
        ),
        counts(
            "ae_attendances",
            "arrival_date",
            {
                "ae_attendances_prior_12m": lambda j: n_in(
                    j, "arrival_date", "prior_12m_start", "index_date"
                ),
                "ae_attendances_lookback": lambda j: n_in(
                    j, "arrival_date", "lookback_start", "index_date"
                ),
                "ae_attendances": lambda j: n_in(j, "arrival_date", "index_date", "follow_up_end"),
            },
            "lookback_start",
        ),
        counts(
            "prescriptions",
            "issue_date",
            {"prescriptions_12m": lambda j: n_in(j, "issue_date", "prior_12m_start", "index_date")},
            "prior_12m_start",
        ),
    ]
    if "cost_gbp" in outcomes:
        parts.append(
            counts(
                "costs",
                "activity_date",
                {
                    "cost_gbp": lambda j: (
                        ((j.activity_date >= j.index_date) & (j.activity_date < j.follow_up_end))
                        .ifelse(j.cost_gbp, 0.0)
                        .sum()
                    )
                },
                "index_date",
            )
        )
    gp = kid.table("gp_events")
    gp_win = gp.join(win, "person_id")
    gp_win = gp_win.filter(
        (gp_win.event_date >= gp_win.lookback_start) & (gp_win.event_date < gp_win.index_date)
    )
    parts.append(
        kid.to_pandas(
            gp_win.group_by("row_id").aggregate(
                gp_events_12m=(gp_win.event_date >= gp_win.prior_12m_start).cast("int64").sum(),
                gp_events_lookback=gp_win.count(),
            )
        )
    )
    # eFI deficits ever coded before the index date (Clegg et al. 2016: deficits are never
    # resolved), from each person's first date per deficit, found once.
    codes = ibis.memtable(deficit_codelist()[["snomed_code", "deficit"]])
    hits = gp.join(codes, gp.snomed_code == codes.snomed_code)
    hits = hits.join(win.select("person_id").distinct(), "person_id", how="semi")
    onsets = hits.group_by(["person_id", "deficit"]).aggregate(onset=hits.event_date.min())
    onsets = onsets.join(win.select("row_id", "person_id", "index_date"), "person_id")
    onsets = onsets.filter(onsets.onset < onsets.index_date)
    parts.append(kid.to_pandas(onsets.group_by("row_id").aggregate(efi_deficits=onsets.count())))
    count_cols = [
        "emergency_admissions_prior_12m",
        "emergency_admissions",
        "elective_admissions",
        "ae_attendances_prior_12m",
        "ae_attendances",
        "prescriptions_12m",
        "efi_deficits",
        "gp_events_12m",
        "emergency_admissions_lookback",
        "ae_attendances_lookback",
        "gp_events_lookback",
    ]
    covariates = list(BASELINE_COVARIATES)
    rx_table = kid.table("prescriptions")
    if "bnf_code" in rx_table.columns:
        # Polypharmacy, the 36th deficit: 5+ distinct chemical substances (BNF chapters 1-15)
        # issued in the 12 months before the index date.
        rx = _rx_substances(rx_table).join(win, "person_id")
        rx = rx.filter((rx.issue_date >= rx.prior_12m_start) & (rx.issue_date < rx.index_date))
        pairs = rx.select("row_id", "substance").distinct()
        parts.append(kid.to_pandas(pairs.group_by("row_id").aggregate(drugs_12m=pairs.count())))
        count_cols.append("drugs_12m")
    else:
        logger.info(
            "cohort_study: prescriptions.bnf_code is not approved for this proposal, so the eFI "
            "has no polypharmacy deficit (35 of 36 deficits)"
        )
        covariates.remove("polypharmacy")
    persons_table = kid.table("persons")
    if "household_id" in persons_table.columns:
        # Household size at the index date: members (same household_id) alive and registered.
        homes = persons_table.filter(persons_table.household_id.notnull())
        mine = win.join(homes.select("person_id", "household_id"), "person_id")
        mine = mine.select("row_id", "index_date", "household_id")
        members = mine.join(homes.drop("person_id"), "household_id")
        members = members.filter(alive_and_registered(members, members.index_date))
        parts.append(
            kid.to_pandas(members.group_by("row_id").aggregate(household_size=members.count()))
        )
    else:
        logger.info(
            "cohort_study: persons.household_id is not approved for this proposal, so "
            "lives_alone is not measured"
        )
        covariates = [c for c in covariates if c not in ("lives_alone", "household_unknown")]

    for part in parts:
        cohort = cohort.merge(part, on="row_id", how="left")
    cohort[count_cols] = cohort[count_cols].fillna(0).astype(np.int64)
    if "polypharmacy" in covariates:
        cohort["polypharmacy"] = (cohort["drugs_12m"] >= POLYPHARMACY_MIN_DRUGS).astype(float)
        cohort["efi_count"] = cohort["efi_deficits"] + cohort["polypharmacy"].astype(np.int64)
    else:
        cohort["efi_count"] = cohort["efi_deficits"]
    cohort["efi"] = cohort["efi_count"] / EFI_DEFICIT_TOTAL
    category = _category_codes(cohort["efi_count"].to_numpy())
    cohort["efi_category"] = pd.Categorical.from_codes(category, categories=list(EFI_CATEGORIES))
    for code, name in enumerate(EFI_CATEGORIES[1:], start=1):
        cohort[f"efi_{name}"] = (category == code).astype(float)
    if "household_size" in cohort.columns:
        # Someone registered at the index date counts themselves, so a size of 1 is alone; no
        # household_id (no UPRN sent) is "unknown", kept as its own indicator.
        cohort["household_unknown"] = cohort["household_size"].isna().astype(float)
        cohort["lives_alone"] = (cohort["household_size"] == 1).astype(float)
    covariates = _informative(cohort, covariates)
    if "cost_gbp" in outcomes:
        cohort["cost_gbp"] = cohort["cost_gbp"].fillna(0.0)

    death = _as_dates(cohort["date_of_death"])
    cohort["death"] = (death.notna() & (death < fu_end)).astype(np.int64)
    end = fu_end.copy()
    for limit in (death, _as_dates(cohort["registration_end"])):
        end = end.where(limit.isna() | (limit >= end), limit)
    study_end = getattr(getattr(getattr(kid, "proposal", None), "study_period", None), "end", None)
    if study_end is not None:
        end = end.clip(upper=pd.Timestamp(study_end) + pd.Timedelta(days=1))
    cohort["follow_up_days"] = (end - index).dt.days.clip(lower=0)
    extra: list[str] = []
    if controls == "censor":
        cohort = _censoring_weights(
            kid,
            cohort,
            covariates,
            outcomes,
            follow_up_days=follow_up_days,
            n_intervals=max(1, follow_up_months),
            observed_end=end,
            seed=seed,
        )
        extra = ["censored_day", "ipcw"]

    keep = [
        "person_id",
        "index_date",
        "index_month",
        "treated",
        *covariates,
        "efi_count",
        "efi",
        "efi_category",
        *outcomes,
        "follow_up_days",
        *extra,
    ]
    data = cohort[list(dict.fromkeys(keep))]
    logger.info(
        "cohort_study %s: %d treated, %d candidate controls",
        programme,
        int(data["treated"].sum()),
        int((data["treated"] == 0).sum()),
    )
    return CohortStudy(
        data=data,
        treatment="treated",
        covariates=tuple(covariates),
        outcomes=tuple(outcomes),
        programme=programme,
        lookback_months=lookback_months,
        follow_up_months=follow_up_months,
    )
