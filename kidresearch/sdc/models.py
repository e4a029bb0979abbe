"""Disclosure checks for fitted models and for figures.

A model passes when its residual degrees of freedom reach ``min_dof`` (ACRO / SDAP) and every
cell behind a categorical term (each level of a dummy-coded factor, the reference level
included) and each class of a binary outcome holds at least ``threshold`` observations: a
coefficient estimated from 3 people is a statement about those 3 people.

A figure is released only together with the checked table behind it, and only when that table
could be released unchanged: a figure is drawn from the unsuppressed numbers, so a table that
needed suppression means the figure would show what the table hides.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kidresearch.errors import DisclosureError
from kidresearch.sdc.outputs import OutputRecord, RuleResult
from kidresearch.sdc.policy import DisclosurePolicy

_TERM = re.compile(r"^(?P<term>.+?)\[(?:T\.)?(?P<level>.+)\]$")


@dataclass(frozen=True)
class CheckedOutput:
    """A checked model or figure: its output-log record, plus the evidence behind it."""

    record: OutputRecord
    details: pd.DataFrame
    figure: Any = None

    @property
    def passed(self) -> bool:
        return self.record.status == "pass"

    @property
    def name(self) -> str:
        return self.record.name

    def summary(self) -> pd.DataFrame:
        """The evidence: one row per quantity checked, with its value, limit and result."""
        return self.details.copy()

    def to_frame(self) -> pd.DataFrame:
        return self.details.copy()

    def request_exception(self, justification: str) -> OutputRecord:
        return self.record.with_exception(justification)

    def save(self, path: str | Path) -> Path:
        """Save a figure to ``path`` (if it passed) with its sidecar ``<file>.sdc.json``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.figure is not None and self.passed and hasattr(self.figure, "savefig"):
            self.figure.savefig(path)
        sidecar = path.with_name(path.name + ".sdc.json")
        sidecar.write_text(json.dumps({"record": self.record.to_dict()}, indent=2, default=str))
        return sidecar

    def __repr__(self) -> str:
        return f"CheckedOutput({self.record.name!r}, {self.record.kind}, {self.record.status})"

    def _repr_html_(self) -> str:
        return (
            f"<p><b>{self.record.name}</b> ({self.record.kind}): {self.record.status}</p>"
            + self.details.to_html(index=False)
        )


def _design(result: Any) -> tuple[pd.DataFrame | None, np.ndarray | None]:
    """The design matrix (named columns) and the outcome of a statsmodels/linearmodels result."""
    model = getattr(result, "model", None)
    if model is None:
        return None, None
    exog = getattr(model, "exog", None)
    endog = getattr(model, "endog", None)
    # linearmodels wraps data in IVData/PanelData objects with .pandas / .dataframe
    for attr in ("pandas", "dataframe"):
        if exog is not None and hasattr(exog, attr) and not isinstance(exog, np.ndarray):
            exog = getattr(exog, attr)
            break
    dependent = getattr(model, "dependent", None)
    if dependent is not None:
        for attr in ("pandas", "dataframe"):
            if hasattr(dependent, attr):
                endog = getattr(dependent, attr)
                break
    if exog is None:
        return None, None
    if not isinstance(exog, pd.DataFrame):
        names = getattr(model, "exog_names", None) or [f"x{i}" for i in range(np.shape(exog)[1])]
        exog = pd.DataFrame(np.asarray(exog), columns=names)
    y = None if endog is None else np.asarray(endog, dtype=float).reshape(-1)
    return exog, y


def _residual_dof(result: Any) -> float:
    dof = getattr(result, "df_resid", None)
    if dof is None:
        nobs = getattr(result, "nobs", None)
        params = getattr(result, "params", None)
        if nobs is None or params is None:
            raise DisclosureError(
                f"check_model: cannot find residual degrees of freedom on a "
                f"{type(result).__name__} (no df_resid, nobs or params)"
            )
        dof = float(nobs) - len(params)
    return float(dof)


def check_model(
    result: Any, *, policy: DisclosurePolicy | None = None, name: str | None = None
) -> CheckedOutput:
    """Check a fitted statsmodels or linearmodels result for release.

    Parameters
    ----------
    result : fitted results object
        OLS, GLM, Logit, PHReg (statsmodels) or linearmodels results.
    policy : DisclosurePolicy, optional
    name : str, optional

    Returns
    -------
    CheckedOutput
        ``record.status`` is "pass" or "fail"; ``summary()`` lists every quantity checked.

    Examples
    --------
    >>> import numpy as np, pandas as pd, statsmodels.formula.api as smf
    >>> rng = np.random.default_rng(0)
    >>> df = pd.DataFrame({"y": rng.normal(size=40), "g": ["a"] * 37 + ["b"] * 3})
    >>> checked = check_model(smf.ols("y ~ g", df).fit(), name="m1")
    >>> checked.record.status
    'fail'
    >>> checked.record.reasons[0]
    "term 'g' level 'b' rests on 3 observations (threshold 10)"
    """
    policy = policy or DisclosurePolicy.default()
    name = name or type(result).__name__
    rows: list[dict[str, Any]] = []
    reasons: list[str] = []
    dof = _residual_dof(result)
    dof_ok = dof >= policy.min_dof
    rows.append(
        {
            "check": "residual_dof",
            "term": "",
            "level": "",
            "value": dof,
            "limit": policy.min_dof,
            "result": "pass" if dof_ok else "fail",
        }
    )
    if not dof_ok:
        reasons.append(f"residual degrees of freedom {dof:g} < {policy.min_dof}")
    exog, y = _design(result)
    if exog is not None:
        nobs = len(exog)
        terms: dict[str, list[str]] = {}
        for col in exog.columns:
            x = np.asarray(exog[col], dtype=float)
            binary = np.isin(x, (0.0, 1.0)).all() and 0 < x.sum() < nobs
            m = _TERM.match(str(col))
            if binary and m:
                terms.setdefault(m.group("term"), []).append(col)
            elif binary:
                terms.setdefault(str(col), []).append(col)
        for term, cols in terms.items():
            levels = {}
            for col in cols:
                m = _TERM.match(str(col))
                levels[m.group("level") if m else "1"] = int(
                    np.asarray(exog[col], dtype=float).sum()
                )
            covered = np.asarray(exog[cols], dtype=float).sum(axis=1)
            if np.all(covered <= 1):
                levels["(reference)" if m else "0"] = int(nobs - covered.sum())
            for level, count in levels.items():
                ok = count >= policy.threshold
                rows.append(
                    {
                        "check": "level_count",
                        "term": term,
                        "level": level,
                        "value": count,
                        "limit": policy.threshold,
                        "result": "pass" if ok else "fail",
                    }
                )
                if not ok:
                    reasons.append(
                        f"term '{term}' level '{level}' rests on {count} observations "
                        f"(threshold {policy.threshold})"
                    )
        if y is not None and len(y) and np.isin(y[np.isfinite(y)], (0.0, 1.0)).all():
            for cls in (0.0, 1.0):
                count = int((y == cls).sum())
                ok = count >= policy.threshold
                rows.append(
                    {
                        "check": "outcome_count",
                        "term": "outcome",
                        "level": f"{cls:g}",
                        "value": count,
                        "limit": policy.threshold,
                        "result": "pass" if ok else "fail",
                    }
                )
                if not ok:
                    reasons.append(
                        f"binary outcome class {cls:g} has {count} observations "
                        f"(threshold {policy.threshold})"
                    )
    status_var = getattr(getattr(result, "model", None), "status", None)
    if status_var is not None and np.ndim(status_var) == 1 and len(status_var):
        # Survival models (PHReg): the number of events, like a survival table's counts.
        events = int(np.sum(np.asarray(status_var, dtype=float) > 0))
        ok = events >= policy.survival_threshold
        rows.append(
            {
                "check": "event_count",
                "term": "events",
                "level": "",
                "value": events,
                "limit": policy.survival_threshold,
                "result": "pass" if ok else "fail",
            }
        )
        if not ok:
            reasons.append(f"{events} events (survival threshold {policy.survival_threshold})")
    details = pd.DataFrame(rows, columns=["check", "term", "level", "value", "limit", "result"])
    rules = tuple(
        RuleResult(
            check,
            "fail" if (g["result"] == "fail").any() else "pass",
            int((g["result"] == "fail").sum()),
        )
        for check, g in details.groupby("check", sort=False)
    )
    record = OutputRecord(
        name=name,
        kind="model",
        status="fail" if reasons else "pass",
        rules=rules,
        reasons=tuple(reasons),
        policy=policy.to_dict(),
    )
    return CheckedOutput(record, details)


def check_figure(fig_or_path: Any, table: Any, *, name: str | None = None) -> CheckedOutput:
    """Release a figure only with the checked table behind it, and only if that table passes.

    Parameters
    ----------
    fig_or_path : matplotlib Figure or Axes, or a path to an image file
    table : CheckedTable
        The table of the numbers drawn (e.g. histogram bins, funnel-plot points).
    name : str, optional

    Returns
    -------
    CheckedOutput
        "pass" only when ``table.raw_passed``: every number drawn could be released as it is.

    Examples
    --------
    >>> import pandas as pd
    >>> from kidresearch.sdc.tables import crosstab
    >>> data = pd.DataFrame({"band": ["<65"] * 30 + ["65+"] * 4})
    >>> check_figure("bars.png", crosstab(data, "band", margins=False)).record.status
    'fail'
    """
    from kidresearch.sdc.tables import CheckedTable

    if not isinstance(table, CheckedTable):
        raise DisclosureError(
            "The 'table' parameter of check_figure must be a CheckedTable (the numbers drawn, "
            f"checked with sdc.crosstab / check_table); got {type(table).__name__} instead"
        )
    figure = fig_or_path
    if hasattr(fig_or_path, "get_figure") and not hasattr(fig_or_path, "savefig"):
        figure = fig_or_path.get_figure()
    if isinstance(fig_or_path, str | Path):
        label = Path(fig_or_path).name
        figure = None
    else:
        label = name or f"figure of {table.name}"
    reasons: list[str] = []
    if not table.raw_passed:
        reasons.append(
            f"the table behind the figure ({table.name}) needed {table.n_suppressed} suppressed "
            "cell(s) or review; draw the figure from the released table or coarsen the bins"
        )
    details = pd.DataFrame(
        {
            "check": ["table_passes"],
            "table": [table.name],
            "result": ["fail" if reasons else "pass"],
        }
    )
    record = OutputRecord(
        name=name or label,
        kind="figure",
        status="fail" if reasons else "pass",
        rules=(RuleResult("table_passes", "fail" if reasons else "pass", table.n_suppressed),),
        reasons=tuple(reasons),
        notes=(f"released together with table '{table.name}'",),
        policy=table.policy.to_dict(),
    )
    return CheckedOutput(record, details, figure)


def with_exception(output: CheckedOutput, justification: str) -> CheckedOutput:
    """A copy of a checked output whose record carries an exception request."""
    return replace(output, record=output.record.with_exception(justification))
