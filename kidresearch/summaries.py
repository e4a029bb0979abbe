"""Small bridges between the recipes' summaries and the report runner, for notebooks.

The recipes' ``.summary()`` methods (``frailty``, ``risk``, ``variation``, ``cohorts``) return
frames whose count columns have already been through :mod:`kidresearch.sdc`: a suppressed count
is missing and a ``<count>_status`` column says why (``ok``, ``rounded``, ``primary:<rule>`` or
``secondary``). Beside the counts they carry numbers derived from them (shares, rates, hazard
ratios, observed / expected ratios). :func:`checked_summary` turns such a frame into an object
:func:`kidresearch.reports.release` accepts, and blanks every derived number in a row whose
count was suppressed (a ratio would give the suppressed count back). Models behind the numbers
can be added as further checks (:func:`kidresearch.sdc.check_model`); the summary passes only if
all of them pass.

:func:`load_truth` finds the synthetic generator's ``truth.json`` for a KID folder laid out as
``kid demo`` lays it out (``<out>/kid`` and ``<out>/synthetic/truth.json``), for the teaching
notebooks that set the known truth beside each estimate.

Examples
--------
>>> import pandas as pd
>>> frame = pd.DataFrame({
...     "category": ["fit", "mild", "severe"],
...     "people": [120.0, 45.0, None],
...     "people_status": ["rounded", "rounded", "primary:threshold"],
...     "share": [0.71, 0.27, 0.02],
... })
>>> checked = checked_summary(frame, "efi_shares")
>>> checked.released["share"].tolist()[:2], pd.isna(checked.released["share"].iloc[2])
([0.71, 0.27], True)
>>> checked.passed, checked.raw_passed
(True, False)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kidresearch.errors import DisclosureError, KidError, MatchingError

STATUS_SUFFIX = "_status"
#: Significant figures of released non-count numbers: enough for any estimate, and few enough
#: that a different summation order (e.g. rows arriving in another order from a parallel
#: query) cannot change the released bytes.
SIGNIFICANT_DIGITS = 6
#: Statuses of a count that was released as it is or rounded (anything else was suppressed).
RELEASED_STATUSES = ("ok", "rounded")


@dataclass(frozen=True)
class CheckedSummary:
    """A recipe summary ready for :func:`kidresearch.reports.release`.

    Attributes
    ----------
    name : str
        Output name.
    released : pandas.DataFrame
        The summary with derived numbers blanked where a count was suppressed.
    passed : bool
        True when every extra check (models) passed: the table may be released.
    raw_passed : bool
        True when, in addition, no count was suppressed: a figure drawn from it may be released.
    suppressed_rows : int
        Rows in which at least one count was suppressed.
    record : dict
        What the report manifest records (status, suppressed rows, reasons, model records).
    """

    name: str
    released: pd.DataFrame
    passed: bool
    raw_passed: bool
    suppressed_rows: int
    record: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """A copy of the released frame."""
        return self.released.copy()

    def summary(self) -> pd.DataFrame:
        """The released frame (as the other result objects' ``summary``)."""
        return self.released.copy()

    def drop_suppressed(self) -> CheckedSummary:
        """The rows in which nothing was suppressed, for a figure (which cannot show a blank).

        Examples
        --------
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"unit": ["A", "B"], "people": [30.0, None],
        ...                       "people_status": ["ok", "primary:threshold"]})
        >>> plotted = checked_summary(frame, "units").drop_suppressed()
        >>> plotted.released["unit"].tolist(), plotted.raw_passed
        (['A'], True)
        """
        status_cols = [c for c in self.released.columns if str(c).endswith(STATUS_SUFFIX)]
        keep = np.ones(len(self.released), dtype=bool)
        for status in status_cols:
            keep &= self.released[status].astype(str).isin(RELEASED_STATUSES).to_numpy()
        record = {**self.record, "name": f"{self.name}_plotted", "suppressed_rows": 0}
        return CheckedSummary(
            name=f"{self.name}_plotted",
            released=self.released[keep].reset_index(drop=True),
            passed=self.passed,
            raw_passed=self.passed,
            suppressed_rows=0,
            record=record,
        )

    def _repr_html_(self) -> str:
        return self.released.to_html(index=False, na_rep="")


def round_significant(values: pd.Series, digits: int = SIGNIFICANT_DIGITS) -> pd.Series:
    """Round numbers to ``digits`` significant figures (missing values stay missing).

    Examples
    --------
    >>> round_significant(pd.Series([3967.999668737, -0.1884057971, 0.0, None])).tolist()
    [3968.0, -0.188406, 0.0, nan]
    """
    v = values.to_numpy(dtype="float64", copy=True)
    where = np.flatnonzero(np.isfinite(v) & (v != 0))
    decimals = digits - 1 - np.floor(np.log10(np.abs(v[where]))).astype(int)
    for d in np.unique(decimals):  # one pass per order of magnitude, not per value
        rows = where[decimals == d]
        v[rows] = np.round(v[rows], int(d))
    return pd.Series(v, index=values.index, name=values.name)


def _check_record(check: Any) -> tuple[bool, dict[str, Any]]:
    record = getattr(check, "record", None)
    if record is None or not hasattr(check, "passed"):
        raise DisclosureError(
            "checked_summary(): each of 'checks' must be a checked output of kidresearch.sdc "
            f"(with .passed and .record), got {type(check).__name__}"
        )
    as_dict = record.to_dict() if hasattr(record, "to_dict") else dict(record)
    return bool(check.passed), as_dict


def checked_summary(
    frame: pd.DataFrame,
    name: str,
    *,
    derived: Sequence[str] | None = None,
    checks: Sequence[Any] = (),
    digits: int | None = SIGNIFICANT_DIGITS,
) -> CheckedSummary:
    """Make a recipe's disclosure-checked summary frame releasable.

    Parameters
    ----------
    frame : pandas.DataFrame
        A ``.summary()`` frame: count columns with a ``<count>_status`` column each (or, with
        ``checks``, a table of model estimates whose release rests on those checks alone).
    name : str
        Output name (for the record).
    derived : list of str, optional
        Columns computed from the counts, blanked in rows where a count was suppressed.
        Default: every numeric column that is neither a checked count nor a status.
    checks : sequence of checked outputs, optional
        Further checks the numbers rest on (e.g. :func:`kidresearch.sdc.check_model` of the
        fitted models); the summary passes only if all pass.
    digits : int or None, default 6
        Significant figures of the non-count float columns (None: as they are), so re-runs
        give identical released files.

    Returns
    -------
    CheckedSummary

    Raises
    ------
    DisclosureError
        ``frame`` has no ``<count>_status`` column and no ``checks`` were given, a status column has no count column, a
        ``derived`` column is unknown, or a check is not an sdc output.

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"unit": ["A", "B"], "observed": [30.0, None],
    ...                       "observed_status": ["ok", "secondary"], "ratio": [1.2, 0.4]})
    >>> out = checked_summary(frame, "units")
    >>> out.released["ratio"].isna().tolist(), out.suppressed_rows
    ([False, True], 1)
    >>> checked_summary(frame[["unit", "ratio"]], "bad")
    Traceback (most recent call last):
    ...
    kidresearch.errors.DisclosureError: checked_summary('bad'): expected a recipe summary ...
    """
    if not isinstance(frame, pd.DataFrame):
        raise DisclosureError(
            f"checked_summary('{name}'): the 'frame' parameter must be a pandas DataFrame, "
            f"got {type(frame).__name__}"
        )
    status_cols = [c for c in frame.columns if str(c).endswith(STATUS_SUFFIX)]
    if not status_cols and not checks:
        raise DisclosureError(
            f"checked_summary('{name}'): expected a recipe summary with '<count>_status' "
            f"columns from kidresearch.sdc; got columns {list(frame.columns)}. Check the counts "
            "with kidresearch.sdc first."
        )
    count_cols = [str(c)[: -len(STATUS_SUFFIX)] for c in status_cols]
    missing = [c for c in count_cols if c not in frame.columns]
    if missing:
        raise DisclosureError(
            f"checked_summary('{name}'): status column(s) without their count column: {missing}"
        )
    if derived is None:
        derived = [
            c
            for c in frame.columns
            if c not in count_cols
            and c not in status_cols
            and pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])
        ]
    unknown = [c for c in derived if c not in frame.columns]
    if unknown:
        raise DisclosureError(
            f"checked_summary('{name}'): the 'derived' columns {unknown} are not in the frame "
            f"(columns: {list(frame.columns)})"
        )
    out = frame.reset_index(drop=True).copy()
    suppressed = np.zeros(len(out), dtype=bool)
    for status in status_cols:
        suppressed |= ~out[status].astype(str).isin(RELEASED_STATUSES).to_numpy()
    for column in derived:
        values = out[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            values = values.astype("float64")
        else:
            values = values.astype(object)
        out[column] = values.mask(suppressed)
    if digits is not None:
        for column in out.columns:
            if column in count_cols or not pd.api.types.is_float_dtype(out[column]):
                continue
            out[column] = round_significant(out[column], digits)
    passed = True
    reasons: list[str] = []
    models: list[dict[str, Any]] = []
    for check in checks:
        ok, record = _check_record(check)
        models.append(record)
        if not ok:
            passed = False
            reasons += [str(r) for r in record.get("reasons", [])] or [
                f"{record.get('name', 'a check')} failed disclosure control"
            ]
    n_suppressed = int(suppressed.sum())
    record = {
        "name": name,
        "kind": "summary",
        "status": "pass" if passed else "fail",
        "suppressed_rows": n_suppressed,
        "reasons": reasons,
        "checks": models,
    }
    return CheckedSummary(
        name=name,
        released=out,
        passed=passed,
        raw_passed=passed and n_suppressed == 0,
        suppressed_rows=n_suppressed,
        record=record,
    )


def truth_path(data: str | os.PathLike[str] | None = None) -> Path:
    """Where the synthetic generator's ``truth.json`` is for a KID folder.

    ``kid demo`` writes the research KID to ``<out>/kid`` and the raw synthetic feeds with
    ``truth.json`` to ``<out>/synthetic``; the test fixtures keep ``truth.json`` in a folder
    beside the KID. The places tried, in order: ``<data>/truth.json``,
    ``<data>/../synthetic/truth.json``, ``<data>/../truth.json``.

    Parameters
    ----------
    data : path, optional
        The KID folder (None: ``$KID_DATA`` or ``kidresearch.toml``).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    KidError
        No ``truth.json`` in any of those places (the message lists them).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "synthetic").mkdir(); (root / "kid").mkdir()
    >>> _ = (root / "synthetic" / "truth.json").write_text("{}")
    >>> truth_path(root / "kid") == root / "synthetic" / "truth.json"
    True
    """
    from kidresearch.config import resolve_data

    folder = Path(resolve_data(data))
    tried = [
        folder / "truth.json",
        folder.parent / "synthetic" / "truth.json",
        folder.parent / "truth.json",
    ]
    for path in tried:
        if path.is_file():
            return path
    raise KidError(
        f"truth.json not found for the KID at {folder}: tried {', '.join(map(str, tried))}. "
        "Pass the 'truth' parameter (the synthetic folder's truth.json)."
    )


def load_truth(
    truth: str | os.PathLike[str] | None = None, *, data: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Read the synthetic generator's ``truth.json`` (``truth``, else found from ``data``).

    Parameters
    ----------
    truth : path, optional
        The ``truth.json`` file; None looks beside the KID (:func:`truth_path`).
    data : path, optional
        The KID folder used when ``truth`` is None.

    Returns
    -------
    dict

    Raises
    ------
    KidError
        The file is missing or is not a JSON object.
    """
    path = Path(truth) if truth is not None else truth_path(data)
    if not path.is_file():
        raise KidError(f"truth.json not found: {path} (expected the synthetic folder's truth.json)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise KidError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(content, dict):
        raise KidError(f"{path}: expected a JSON object, got {type(content).__name__}")
    return content


def naive_vs_matched(
    study: Any,
    matched: Any,
    outcomes: Sequence[str] | None = None,
    *,
    adjust: bool | Sequence[str] = False,
) -> pd.DataFrame:
    """Naive (unmatched) and matched differences in mean outcome, one row per outcome.

    The naive difference compares every treated person with every candidate control, with a
    Welch (unequal variances) normal-approximation 95% interval; the matched difference is
    :meth:`kidresearch.cohorts.MatchResult.estimate` (difference in means on the matched sample,
    pair-clustered standard errors), as MatchIt's vignette estimates the ATT; with ``adjust`` it
    is also adjusted for covariates by g-computation (see ``MatchResult.estimate``), which
    removes differences left inside the pairs.

    Parameters
    ----------
    study : kidresearch.cohorts.CohortStudy
        The cohort (``data``, ``treatment``, ``outcomes``, ``programme``).
    matched : kidresearch.cohorts.MatchResult
        ``study.match(...)``.
    outcomes : list of str, optional
        Default: the study's outcomes.
    adjust : bool or list of str, default False
        Passed to ``matched.estimate``: ``True`` adjusts the matched difference for the
        matching covariates, a list for those columns.

    Returns
    -------
    pandas.DataFrame
        ``programme, outcome, treated_mean, control_mean, naive_difference, naive_lower,
        naive_upper, matched_difference, matched_lower, matched_upper, matched_p_value,
        matched_adjusted, treated, controls, matched_controls`` (``matched_adjusted`` says
        which covariates the matched difference is adjusted for, ``""`` for none).

    Raises
    ------
    MatchingError
        An outcome is not a column of the study, or a group is empty.
    """
    data = study.data
    names = list(outcomes if outcomes is not None else study.outcomes)
    missing = [o for o in names if o not in data.columns]
    if missing:
        raise MatchingError(
            f"naive_vs_matched(): outcome(s) {missing} are not columns of the cohort "
            f"(outcomes: {list(study.outcomes)})"
        )
    is_treated = data[study.treatment].to_numpy() == 1
    n1, n0 = int(is_treated.sum()), int((~is_treated).sum())
    if n1 < 2 or n0 < 2:
        raise MatchingError(
            f"naive_vs_matched(): need at least 2 treated and 2 control people, got {n1} and {n0}"
        )
    y = data[names].astype("float64")
    mean1, mean0 = y[is_treated].mean(), y[~is_treated].mean()
    se = np.sqrt(y[is_treated].var() / n1 + y[~is_treated].var() / n0)
    if adjust is True:
        adjusted_for = "matching covariates"
    elif adjust is False:
        adjusted_for = ""
    else:
        adjusted_for = ", ".join(adjust)
    rows = []
    for outcome in names:
        effect = matched.estimate(outcome, adjust=adjust) if adjust else matched.estimate(outcome)
        diff = float(mean1[outcome] - mean0[outcome])
        rows.append(
            {
                "programme": getattr(study, "programme", ""),
                "outcome": outcome,
                "treated_mean": float(mean1[outcome]),
                "control_mean": float(mean0[outcome]),
                "naive_difference": diff,
                "naive_lower": diff - 1.959964 * float(se[outcome]),
                "naive_upper": diff + 1.959964 * float(se[outcome]),
                "matched_difference": float(effect.estimate),
                "matched_lower": float(effect.conf_low),
                "matched_upper": float(effect.conf_high),
                "matched_p_value": float(effect.p_value),
                "matched_adjusted": adjusted_for,
                "treated": int(effect.n_treated),
                "controls": n0,
                "matched_controls": int(effect.n_control),
            }
        )
    return pd.DataFrame(rows)


def _interval_text(estimate: float, lower: float, upper: float, digits: int) -> str:
    values = np.array([estimate, lower, upper], dtype=float)
    if np.isnan(values).any():
        return "suppressed"
    scale = float(np.abs(values).max())
    if scale >= 10 ** (digits - 1):
        decimals = 0
    else:
        magnitude = int(np.floor(np.log10(scale))) if scale > 0 else 0
        decimals = max(0, digits - 1 - magnitude)
    text = [f"{v:,.{decimals}f}" for v in values]
    return f"{text[0]} ({text[1]} to {text[2]})"


def effect_intervals(effects: pd.DataFrame, *, digits: int = 3) -> pd.DataFrame:
    """Naive and matched differences with their 95% intervals as text, one row per outcome.

    For reading a :func:`naive_vs_matched` table (or its released copy) at a glance: each
    difference is shown as ``estimate (lower to upper)``, so how wide the interval is, and
    whether it covers 0 or a known truth, is seen beside the estimate.

    Parameters
    ----------
    effects : pandas.DataFrame
        Columns ``outcome``, ``naive_difference``, ``naive_lower``, ``naive_upper``,
        ``matched_difference``, ``matched_lower``, ``matched_upper``, and optionally
        ``matched_p_value``, ``treated``, ``matched_controls``.
    digits : int, default 3
        Significant figures of the largest of the three numbers of an interval (whole numbers
        when it has more digits than this, e.g. costs in pounds).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``outcome``: ``naive difference (95% CI)``, ``matched difference (95% CI)``
        and the optional columns present. An interval with a blanked (suppressed) number reads
        ``suppressed``.

    Raises
    ------
    MatchingError
        A required column is missing.

    Examples
    --------
    >>> effects = pd.DataFrame({
    ...     "outcome": ["emergency_admissions", "cost_gbp"],
    ...     "naive_difference": [0.19, 8042.5], "naive_lower": [0.062, 4950.4],
    ...     "naive_upper": [0.318, 11134.6], "matched_difference": [-0.087, 3713.9],
    ...     "matched_lower": [-0.288, -131.7], "matched_upper": [0.114, 7559.5]})
    >>> effect_intervals(effects)["matched difference (95% CI)"].tolist()
    ['-0.087 (-0.288 to 0.114)', '3,714 (-132 to 7,560)']
    """
    needed = ["outcome"] + [
        f"{kind}_{part}"
        for kind in ("naive", "matched")
        for part in ("difference", "lower", "upper")
    ]
    missing = [c for c in needed if c not in effects.columns]
    if missing:
        raise MatchingError(
            f"effect_intervals(): columns {missing} are missing; expected a naive_vs_matched() "
            f"table (columns: {list(effects.columns)})"
        )
    out = pd.DataFrame(index=pd.Index(effects["outcome"].astype(str), name="outcome"))
    for kind in ("naive", "matched"):
        out[f"{kind} difference (95% CI)"] = [
            _interval_text(e, lo, hi, digits)
            for e, lo, hi in zip(
                effects[f"{kind}_difference"],
                effects[f"{kind}_lower"],
                effects[f"{kind}_upper"],
                strict=True,
            )
        ]
    if "matched_p_value" in effects.columns:
        out["matched_p_value"] = effects["matched_p_value"].to_numpy()
    for column in ("treated", "matched_controls"):  # released counts arrive as floats
        if column in effects.columns:
            out[column] = effects[column].round().astype("Int64").array
    return out


def checked_counts(
    frame: pd.DataFrame,
    name: str,
    *,
    counts: Sequence[str],
    keys: Sequence[str] | None = None,
    policy: Any = None,
    derived: Sequence[str] | None = None,
    digits: int | None = SIGNIFICANT_DIGITS,
) -> CheckedSummary:
    """Put a tidy table's count columns through disclosure control and make it releasable.

    The count columns go through :func:`kidresearch.sdc.check_table` one by one (one cell per
    row, no margins; :func:`kidresearch.frailty.release`); derived numbers are then blanked in
    rows where a count was suppressed (:func:`checked_summary`).

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per cell: label columns (``keys``), count columns and derived numbers.
    name : str
        Output name.
    counts : list of str
        Columns of whole, non-negative counts.
    keys : list of str, optional
        Label columns (default: the columns that are neither counts nor floats).
    policy : kidresearch.sdc.DisclosurePolicy, optional
        The proposal's output policy (default: the package default).
    derived : list of str, optional
        As :func:`checked_summary`.
    digits : int or None, default 6
        As :func:`checked_summary`.

    Returns
    -------
    CheckedSummary

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"group": ["a", "b"], "people": [40, 3], "rate": [0.1, 0.5]})
    >>> out = checked_counts(frame, "groups", counts=["people"], keys=["group"])
    >>> out.released[["people", "people_status", "rate"]].to_dict("list")
    {'people': [40.0, nan], 'people_status': ['ok', 'primary:threshold'], 'rate': [0.1, nan]}
    """
    from kidresearch.frailty import release as release_counts

    missing = [c for c in counts if c not in frame.columns]
    if missing:
        raise DisclosureError(
            f"checked_counts('{name}'): count column(s) {missing} are not in the frame "
            f"(columns: {list(frame.columns)})"
        )
    counted = release_counts(frame, counts=counts, keys=keys, name=name, policy=policy)
    return checked_summary(counted, name, derived=derived, digits=digits)
