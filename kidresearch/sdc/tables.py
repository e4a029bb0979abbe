"""Safe tables: frequency and magnitude tables checked cell by cell, with secondary suppression.

:func:`crosstab` and :func:`pivot_table` tabulate microdata; :func:`check_table` checks a table
built elsewhere (a pandas or Ibis result, one row per cell). All three return a
:class:`CheckedTable` whose ``released`` frame is safe to leave the environment: cells failing a
primary rule (threshold, zero, (n, k) dominance, p%, percentile sides, min/max, negative
contributions) are suppressed, and with margins (and hierarchies) enough further cells are
suppressed that no suppressed cell can be recovered from the totals (:mod:`.secondary`).

Conventions (see ``docs/disclosure_control.md``):

- margins are labelled ``"Total"`` (``margins_name``); a hierarchical dimension (``hierarchy=
  {"practice": "district"}``) shows two label levels, subtotals as ``(district, "Total")`` and
  the grand total as ``("Total", "Total")``;
- every combination of categories is a cell, including empty ones (as ACRO's
  ``dropna=False``);
- with rounding, counts are rounded (halves up) and released margins are recomputed as the sum
  of the released interior cells they cover, suppressed cells counting as 0 (OpenSAFELY);
  secondary suppression is then not needed, because released totals carry no information about
  suppressed cells.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kidresearch.errors import DisclosureError
from kidresearch.sdc.outputs import OutputRecord, RuleResult
from kidresearch.sdc.policy import DisclosurePolicy
from kidresearch.sdc.secondary import TableStructure, protect

logger = logging.getLogger(__name__)

MARGINS_NAME = "Total"
ADDITIVE_KINDS = ("count", "sum")
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")


# ---------------------------------------------------------------------------------- dimensions
@dataclass(frozen=True)
class _Dim:
    """One table dimension: its leaves, optional parent groups and total, as nodes."""

    name: str
    group: str | None
    leaf_labels: np.ndarray  # per node
    group_labels: np.ndarray | None  # per node (hierarchical dims)
    level: np.ndarray  # per node: 0 leaf, 1 group subtotal, 2 total
    parent: np.ndarray  # per node: parent node or -1
    leaf_node: pd.Index  # leaf label -> position in leaf order
    leaf_to_node: np.ndarray  # leaf position -> node index

    @property
    def size(self) -> int:
        return len(self.level)

    @property
    def label_columns(self) -> list[str]:
        return [self.group, self.name] if self.group else [self.name]


def _ordered_unique(values: pd.Series) -> list[Any]:
    if isinstance(values.dtype, pd.CategoricalDtype):
        return list(values.cat.categories)
    uniq = pd.unique(values)
    try:
        return sorted(uniq)
    except TypeError:
        return list(uniq)


def _build_dim(
    frame: pd.DataFrame, name: str, group: str | None, margins: bool, margins_name: str
) -> _Dim:
    leaves = _ordered_unique(frame[name])
    if not group:
        labels = list(leaves) + ([margins_name] if margins else [])
        n_leaf = len(leaves)
        level = np.array([0] * n_leaf + ([2] if margins else []))
        parent = np.full(len(labels), -1)
        if margins:
            parent[:n_leaf] = n_leaf
        return _Dim(
            name,
            None,
            np.array(labels, dtype=object),
            None,
            level,
            parent,
            pd.Index(leaves),
            np.arange(n_leaf),
        )
    pairs = frame[[name, group]].drop_duplicates()
    dup = pairs[name].duplicated(keep=False)
    if dup.any():
        leaf = pairs.loc[dup, name].iloc[0]
        groups = pairs.loc[pairs[name] == leaf, group].tolist()
        raise DisclosureError(
            f"hierarchy '{name}' within '{group}': {name} {leaf!r} appears under "
            f"{len(groups)} {group} values {groups[:3]}; each {name} must belong to one {group}"
        )
    leaf_group = dict(zip(pairs[name], pairs[group], strict=True))
    groups = _ordered_unique(frame[group])
    leaf_index = pd.Index(leaves)
    leaf_labels: list[Any] = []
    group_labels: list[Any] = []
    level: list[int] = []
    parent: list[int] = []
    leaf_to_node = np.empty(len(leaves), dtype=np.int64)
    total_pending: list[int] = []
    for g in groups:
        members = [leaf for leaf in leaves if leaf_group.get(leaf) == g]
        if not members:
            continue
        first = len(level)
        for leaf in members:
            leaf_to_node[leaf_index.get_loc(leaf)] = len(level)
            leaf_labels.append(leaf)
            group_labels.append(g)
            level.append(0)
            parent.append(first + len(members))
        total_pending.append(len(level))
        leaf_labels.append(margins_name)
        group_labels.append(g)
        level.append(1)
        parent.append(-1)
    total = len(level)
    leaf_labels.append(margins_name)
    group_labels.append(margins_name)
    level.append(2)
    parent.append(-1)
    parent_arr = np.array(parent)
    parent_arr[total_pending] = total
    return _Dim(
        name,
        group,
        np.array(leaf_labels, dtype=object),
        np.array(group_labels, dtype=object),
        np.array(level),
        parent_arr,
        leaf_index,
        leaf_to_node,
    )


# ---------------------------------------------------------------------------------- validation
def _as_pandas(data: Any, what: str) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    for method in ("to_pandas", "execute"):
        if hasattr(data, method):
            result = getattr(data, method)()
            if isinstance(result, pd.DataFrame):
                return result
    raise DisclosureError(
        f"The '{what}' parameter must be a pandas DataFrame or an Ibis table; "
        f"got {type(data).__name__} instead"
    )


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DisclosureError(
            f"{what}: column(s) {missing} not found; the table has columns {list(frame.columns)}"
        )


def _check_no_missing(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    for col in columns:
        bad = frame[col].isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DisclosureError(
                f"{what}: column '{col}' has {int(bad.sum())} missing value(s) (first at row "
                f"{row}); fill or recode them explicitly (e.g. 'Unknown') so no row is dropped"
            )


def _numeric(frame: pd.DataFrame, col: str, what: str) -> np.ndarray:
    if not pd.api.types.is_numeric_dtype(frame[col]) or pd.api.types.is_bool_dtype(frame[col]):
        if pd.api.types.is_bool_dtype(frame[col]):
            return frame[col].to_numpy(dtype=float)
        raise DisclosureError(
            f"{what}: column '{col}' must be numeric; got dtype {frame[col].dtype}"
        )
    return frame[col].to_numpy(dtype=float)


def _check_counts(values: np.ndarray, col: str, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise DisclosureError(
            f"{what}: count column '{col}' has a missing value at row {int(np.flatnonzero(bad)[0])}"
        )
    neg = values < 0
    if neg.any():
        r = int(np.flatnonzero(neg)[0])
        raise DisclosureError(
            f"{what}: count column '{col}' must be non-negative; row {r} has {values[r]:g}"
        )
    frac = values != np.round(values)
    if frac.any():
        r = int(np.flatnonzero(frac)[0])
        raise DisclosureError(
            f"{what}: count column '{col}' must hold whole numbers; row {r} has {values[r]:g}"
        )


def _parse_aggfunc(aggfunc: str) -> tuple[str, float | None]:
    if aggfunc in ("count", "sum", "mean", "min", "max"):
        return aggfunc, None
    if aggfunc == "median":
        return "percentile", 0.5
    m = _PERCENTILE.match(str(aggfunc))
    if m and 0 < float(m.group(1)) < 100:
        return "percentile", float(m.group(1)) / 100
    raise DisclosureError(
        "The 'aggfunc' parameter must be one of 'count', 'sum', 'mean', 'median', 'min', 'max' "
        f"or a percentile such as 'p90'; got {aggfunc!r} instead"
    )


# ---------------------------------------------------------------------------------- cell stats
@dataclass
class _Stats:
    n: np.ndarray
    total: np.ndarray
    neg: np.ndarray
    top: np.ndarray  # (cells, K), NaN where fewer contributors
    value: np.ndarray


def _level_codes(dims: list[_Dim], leaf_pos: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Per dimension, node codes of each row at each level the dimension has."""
    out = []
    for dim, pos in zip(dims, leaf_pos, strict=True):
        leaf = dim.leaf_to_node[pos]
        levels = [leaf]
        if dim.group:
            sub = dim.parent[leaf]
            levels.append(sub)
            levels.append(dim.parent[sub])
        elif dim.parent.max() >= 0:
            levels.append(dim.parent[leaf])
        out.append(levels)
    return out


def _combos(dims: list[_Dim], leaf_pos: list[np.ndarray]) -> list[np.ndarray]:
    """Flat cell index of every row, for every combination of levels (leaf/subtotal/total)."""
    shape = tuple(d.size for d in dims)
    per_dim = _level_codes(dims, leaf_pos)
    return [np.ravel_multi_index(combo, shape) for combo in itertools.product(*per_dim)]


def _topk(flat: np.ndarray, v: np.ndarray, n_cells: int, k: int) -> np.ndarray:
    top = np.full((n_cells, k), np.nan)
    if len(flat) == 0:
        return top
    order = np.lexsort((-v, flat))
    f = flat[order]
    start = np.r_[0, np.flatnonzero(f[1:] != f[:-1]) + 1]
    rank = np.arange(len(f)) - np.repeat(start, np.diff(np.r_[start, len(f)]))
    keep = rank < k
    top[f[keep], rank[keep]] = v[order][keep]
    return top


def _stats_from_rows(
    dims: list[_Dim],
    leaf_pos: list[np.ndarray],
    n_rows: np.ndarray,
    total_rows: np.ndarray | None,
    neg_rows: np.ndarray | None,
    top_rows: np.ndarray | None,
    k: int,
) -> _Stats:
    """Aggregate per-row (or per-interior-cell) statistics to every cell, margins included."""
    n_cells = int(np.prod([d.size for d in dims]))
    n = np.zeros(n_cells)
    total = np.zeros(n_cells)
    neg = np.zeros(n_cells)
    top = np.full((n_cells, k), np.nan)
    for flat in _combos(dims, leaf_pos):
        n += np.bincount(flat, weights=n_rows, minlength=n_cells)
        if total_rows is not None:
            total += np.bincount(flat, weights=total_rows, minlength=n_cells)
        if neg_rows is not None:
            neg += np.bincount(flat, weights=neg_rows, minlength=n_cells)
        if top_rows is not None:
            rep = np.repeat(flat, top_rows.shape[1])
            vals = top_rows.reshape(-1)
            ok = np.isfinite(vals)
            t = _topk(rep[ok], vals[ok], n_cells, k)
            has = np.isfinite(t)
            top[has] = t[has]
    return _Stats(n, total, neg, top, np.full(n_cells, np.nan))


# ---------------------------------------------------------------------------------- rules
def _fmt(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"


def _primary(
    kind: str, q: float | None, stats: _Stats, policy: DisclosurePolicy
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: first rule that fired ('' if none), its reason, all rules fired, review flag."""
    n_cells = len(stats.n)
    rule = np.full(n_cells, "", dtype=object)
    fired: dict[str, np.ndarray] = {}
    reason = np.full(n_cells, "", dtype=object)
    review = np.zeros(n_cells, dtype=bool)
    n = stats.n
    t = policy.threshold

    def fire(mask: np.ndarray, name: str, texts: Any) -> None:
        """Record ``name`` for cells where ``mask`` holds and no earlier rule fired.

        ``texts`` is a string, or a function from cell positions to reason strings (so reasons
        are only formatted for the cells that need one).
        """
        fired[name] = mask.copy()
        m = np.flatnonzero(mask & (rule == ""))
        if len(m) == 0:
            return
        rule[m] = name
        reason[m] = texts if isinstance(texts, str) else np.asarray(texts(m), dtype=object)

    if kind in ("min", "max") and not policy.allow_min_max:
        fire(
            np.ones(n_cells, dtype=bool),
            "min_max",
            f"a {kind}imum is one person's value; it is not released (allow_min_max is off)",
        )
    if policy.zeros_are_disclosive:
        fire(n == 0, "zero", "zero count: zeros are disclosive under this policy")
    small = (n > 0) & (n < t)
    fire(
        small,
        "threshold",
        lambda m: [f"count {_fmt(v)} is below the threshold of {t}" for v in n[m]],
    )
    if kind in ("sum", "mean"):
        negative = stats.neg > 0
        fire(
            negative,
            "negative",
            "negative contributions: dominance rules are not defined; needs review",
        )
        review |= negative
        nk = np.nansum(stats.top[:, : policy.dominance_n], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(stats.total != 0, nk / stats.total, np.nan)
        # As ACRO: a zero total gives 0/0, which fails no (n, k) test; the p% rule below
        # catches it (every contribution is then 0, which is itself revealed).
        dom = (n > 0) & ~negative & np.isfinite(share) & (share >= policy.dominance_k)
        fire(
            dom,
            "dominance",
            lambda m: [
                f"the {policy.dominance_n} largest contributions make up {s:.0%} of the "
                f"total (limit {policy.dominance_k:.0%})"
                for s in share[m]
            ],
        )
        top1 = stats.top[:, 0]
        top2 = np.nan_to_num(stats.top[:, 1]) if stats.top.shape[1] > 1 else 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            rest = np.where(top1 > 0, (stats.total - top1 - top2) / top1, 0.0)
        pr = (n > 0) & ~negative & (rest < policy.p_ratio)
        fire(
            pr,
            "p_ratio",
            lambda m: [
                "all contributions are zero, so each one is revealed"
                if t1 == 0
                else f"p% rule: the rest of the cell is {r:.1%} of its largest contribution "
                f"(needs {policy.p_ratio:.0%}), so the second largest could estimate it"
                for r, t1 in zip(rest[m], top1[m], strict=True)
            ],
        )
    if kind == "percentile" and q is not None:
        m = policy.percentile_min_each_side
        below = np.floor(q * n)
        above = np.floor((1 - q) * n)
        side = (n > 0) & ((below < m) | (above < m))
        fire(
            side,
            "percentile",
            lambda idx: [
                f"a percentile needs {m} records on each side; this cell has "
                f"{_fmt(b)} below and {_fmt(a)} above"
                for b, a in zip(below[idx], above[idx], strict=True)
            ],
        )
    all_rules = np.full(n_cells, "", dtype=object)
    for name, hit in fired.items():
        if hit.any():
            joined = np.where(all_rules == "", name, all_rules + ";" + name)
            all_rules = np.where(hit, joined, all_rules)
    return rule, reason, all_rules, review


# ---------------------------------------------------------------------------------- result
@dataclass(frozen=True, repr=False)
class CheckedTable:
    """A table after disclosure control, with per-cell decisions.

    Attributes
    ----------
    name : str
        Output name (used in the output log and file names).
    kind : str
        "count", "sum", "mean", "percentile", "min", "max" or "survival".
    cells : pandas DataFrame
        One row per cell (margins included): label columns, ``n``, ``value``, ``released``,
        ``status``, ``rule`` (the first primary rule that fired, or "secondary"), ``rules``
        (every primary rule that fired, ";"-separated) and ``reason``.
    index, columns : tuple of str
        Label columns on the rows and columns of :attr:`released`.
    policy : DisclosurePolicy
        The policy applied.
    margins : bool
        Whether margins (and subtotals) are part of the table.
    notes : tuple of str
        Table-level notes (e.g. how totals relate to rounded cells).
    structure : TableStructure or None
        Parents of every node, for re-auditing suppression.
    """

    name: str
    kind: str
    cells: pd.DataFrame
    index: tuple[str, ...]
    columns: tuple[str, ...]
    policy: DisclosurePolicy
    margins: bool
    notes: tuple[str, ...] = ()
    structure: TableStructure | None = None
    margins_name: str = MARGINS_NAME
    hierarchy: Mapping[str, str] = field(default_factory=dict)
    review: tuple[str, ...] = ()

    # ------------------------------------------------------------------ views
    def _wide(self, column: str) -> pd.DataFrame | pd.Series:
        frame = self.cells
        if not self.columns:
            return frame.set_index(list(self.index))[column]
        # Cells are stored in C order with the row dimensions first, so the table is a reshape
        # (a pivot would invent (district, practice) pairs that do not exist).
        n_cols = len(frame[list(self.columns)].drop_duplicates())
        n_rows = len(frame) // n_cols

        def axis(labels: pd.DataFrame, name: str) -> pd.Index:
            if labels.shape[1] == 1:
                return pd.Index(labels.iloc[:, 0].to_numpy(), name=labels.columns[0], dtype=object)
            return pd.MultiIndex.from_frame(labels)

        index = axis(frame[list(self.index)].iloc[::n_cols].reset_index(drop=True), "index")
        columns = axis(frame[list(self.columns)].iloc[:n_cols].reset_index(drop=True), "columns")
        return pd.DataFrame(
            frame[column].to_numpy().reshape(n_rows, n_cols), index=index, columns=columns
        )

    @cached_property
    def released(self) -> pd.DataFrame | pd.Series:
        """The safe table: suppressed cells are NaN, counts rounded where the policy says."""
        return self._wide("released")

    @cached_property
    def status(self) -> pd.DataFrame | pd.Series:
        """Per-cell status: ok, rounded, primary:<rule> or secondary."""
        return self._wide("status")

    @cached_property
    def reasons(self) -> pd.Series:
        """A readable reason for every suppressed cell, indexed by the cell's labels."""
        sup = self.cells[self.cells["status"].str.startswith(("primary", "secondary"))]
        keys = list(self.index) + list(self.columns)
        return sup.set_index(keys)["reason"]

    @property
    def n_suppressed(self) -> int:
        return int(self.cells["status"].str.startswith(("primary", "secondary")).sum())

    @property
    def needs_review(self) -> bool:
        return bool(self.review) or bool(self.cells["rule"].eq("negative").any())

    @property
    def passed(self) -> bool:
        """True when :attr:`released` may leave as it is (no cell needs human review)."""
        return not self.needs_review

    @property
    def raw_passed(self) -> bool:
        """True when the table could have been released unchanged (nothing suppressed)."""
        return self.n_suppressed == 0 and not self.needs_review

    def to_frame(self) -> pd.DataFrame:
        """Tidy copy: one row per cell with labels, value, released value, status, rule, reason."""
        return self.cells.copy()

    def summary(self) -> pd.DataFrame:
        """Number of cells by status (and rule).

        Examples
        --------
        >>> import pandas as pd
        >>> data = pd.DataFrame({"sex": ["F"] * 30 + ["M"] * 13, "frail": [True] * 25 + [False] * 18})
        >>> crosstab(data, "sex", "frail").summary()
                      status  cells
        0                 ok      5
        1  primary:threshold      1
        2       primary:zero      1
        3          secondary      2
        """
        counts = self.cells.groupby("status", sort=False).size().rename("cells").reset_index()
        order = {"ok": 0, "rounded": 1, "secondary": 9}
        counts["_o"] = counts["status"].map(lambda s: order.get(s, 5))
        return counts.sort_values(["_o", "status"]).drop(columns="_o").reset_index(drop=True)

    # ------------------------------------------------------------------ output log
    @property
    def record(self) -> OutputRecord:
        """The output-log record of this table."""
        rules = []
        for rule_name in (
            "threshold",
            "zero",
            "dominance",
            "p_ratio",
            "percentile",
            "min_max",
            "negative",
            "survival",
        ):
            hit = int(self.cells["rule"].eq(rule_name).sum())
            rules.append(RuleResult(rule_name, "fail" if hit else "pass", hit))
        n_sec = int(self.cells["status"].eq("secondary").sum())
        rules.append(RuleResult("secondary", "applied" if n_sec else "not needed", n_sec))
        status = "review" if self.needs_review else "pass"
        reasons = [
            f"{self._cell_label(row)}: {row['reason']}"
            for _, row in self.cells[self.cells["reason"] != ""].head(200).iterrows()
        ]
        return OutputRecord(
            name=self.name,
            kind=f"table:{self.kind}",
            status=status,
            rules=tuple(rules),
            reasons=tuple(self.review) + tuple(reasons),
            notes=self.notes,
            policy=self.policy.to_dict(),
        )

    def _cell_label(self, row: pd.Series) -> str:
        keys = list(self.index) + list(self.columns)
        return ", ".join(f"{k}={row[k]}" for k in keys)

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        return (
            f"CheckedTable({self.name!r}, kind={self.kind!r}, cells={len(self.cells)}, "
            f"suppressed={self.n_suppressed}, passed={self.passed})\n{self.released}"
        )

    def _repr_html_(self) -> str:
        released = self.released
        table_html = (
            released.to_frame().to_html() if isinstance(released, pd.Series) else released.to_html()
        )
        return (
            f"<p><b>{html.escape(self.name)}</b> ({html.escape(self.kind)} table): "
            f"{self.n_suppressed} of {len(self.cells)} cells suppressed; "
            f"{'passed' if self.passed else 'needs review'}</p>"
            + table_html
            + self.summary().to_html(index=False)
        )

    def plot(self, ax: Any = None) -> Any:
        """Heat map of the released values; suppressed cells are hatched grey. Returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots()
        released = self.released
        if isinstance(released, pd.Series):
            released = released.to_frame()
        values = released.to_numpy(dtype=float)
        masked = np.ma.masked_invalid(values)
        ax.imshow(masked, aspect="auto", cmap="viridis")
        hidden = np.argwhere(~np.isfinite(values))
        for r, c in hidden:
            ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="lightgrey", hatch="//"))
        ax.set_yticks(range(len(released.index)))
        ax.set_yticklabels([str(i) for i in released.index])
        ax.set_xticks(range(len(released.columns)))
        ax.set_xticklabels([str(c) for c in released.columns], rotation=90)
        ax.set_title(f"{self.name}: {self.n_suppressed} cells suppressed")
        return ax

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.csv`` (tidy released cells) and the sidecar ``<name>.sdc.json``.

        The sidecar declares the label columns, the value column and its kind, the margins label
        and hierarchy, and the policy, so :func:`kidresearch.sdc.check_folder` can re-check the
        released file (visible counts against the threshold, and suppressed cells against the
        margins with the LP audit).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keys = list(self.index) + list(self.columns)
        out = self.cells[keys + ["released"]].rename(columns={"released": "value"})
        csv_path = directory / f"{self.name}.csv"
        out.to_csv(csv_path, index=False)
        sidecar = {
            "name": self.name,
            "kind": self.kind,
            "labels": keys,
            "index": list(self.index),
            "columns": list(self.columns),
            "value": "value",
            "counts": ["value"] if self.kind == "count" else [],
            "margins": self.margins,
            "margins_name": self.margins_name,
            "hierarchy": dict(self.hierarchy),
            "rounded": self.policy.rounding is not None and self.kind == "count",
            "policy": self.policy.to_dict(),
            "record": self.record.to_dict(),
        }
        (directory / f"{self.name}.sdc.json").write_text(json.dumps(sidecar, indent=2, default=str))
        return csv_path

    def request_exception(self, justification: str) -> OutputRecord:
        """The record with an exception request (status 'review') carrying the justification."""
        return self.record.with_exception(justification)


# ---------------------------------------------------------------------------------- engine
def _finish(
    *,
    name: str,
    kind: str,
    q: float | None,
    dims: list[_Dim],
    index_dims: int,
    stats: _Stats,
    policy: DisclosurePolicy,
    margins: bool,
    margins_name: str,
    hierarchy: Mapping[str, str],
) -> CheckedTable:
    shape = tuple(d.size for d in dims)
    structure = TableStructure(tuple(d.parent for d in dims))
    rule, reason, all_rules, _ = _primary(kind, q, stats, policy)
    primary = rule != ""
    status = np.full(len(rule), "ok", dtype=object)
    status[primary] = "primary:" + rule[primary]
    value = stats.value
    released = np.where(primary, np.nan, value)
    notes: list[str] = []
    has_margins = margins and any((d.parent >= 0).any() for d in dims)
    if kind == "count" and policy.rounding is not None:
        released = _round_and_recompute(released, primary, dims, shape, policy)
        status = np.where(primary, status, "rounded").astype(object)
        notes.append(
            f"counts rounded to the nearest {policy.rounding} (halves up); released totals "
            "and subtotals are the sums of the released interior cells they cover, with "
            "suppressed cells counted as 0"
        )
    elif has_margins and kind in ADDITIVE_KINDS and policy.secondary and primary.any():
        if kind == "count":
            required = np.full(len(value), policy.count_protection)
        else:
            required = np.maximum(policy.protection_ratio * np.abs(value), 1e-6)
        lower = 0.0 if (stats.neg.sum() == 0) else -np.inf
        result = protect(value, primary, structure, required, lower=lower)
        sec = result.secondary
        status[sec] = "secondary"
        released[sec] = np.nan
        reason[sec] = (
            "secondary suppression: withheld so that suppressed cells cannot be recovered "
            "from the totals"
        )
        notes.append(
            f"secondary suppression: {int(sec.sum())} cells; every suppressed cell's feasible "
            "range given the released cells and totals is at least "
            + (
                f"{_fmt(policy.count_protection)} wide"
                if kind == "count"
                else f"{policy.protection_ratio:.0%} of its value wide"
            )
        )
    elif has_margins and kind not in ADDITIVE_KINDS and primary.any():
        notes.append(
            f"{kind} cells are not additive, so totals do not reveal suppressed cells; no "
            "secondary suppression"
        )
    coords = np.indices(shape).reshape(len(shape), -1)
    data: dict[str, Any] = {}
    for d, dim in enumerate(dims):
        if dim.group:
            data[dim.group] = dim.group_labels[coords[d]]
        data[dim.name] = dim.leaf_labels[coords[d]]
    data["n"] = stats.n.astype(np.int64)
    data["value"] = value
    data["released"] = released
    # Few distinct values: categoricals are cheap to build for tables of 100,000 cells.
    data["status"] = pd.Categorical(status)
    data["rule"] = pd.Categorical(np.where(status == "secondary", "secondary", rule))
    data["rules"] = pd.Categorical(all_rules)
    data["reason"] = pd.Categorical(reason)
    cells = pd.DataFrame(data)
    index_cols = tuple(c for dim in dims[:index_dims] for c in dim.label_columns)
    column_cols = tuple(c for dim in dims[index_dims:] for c in dim.label_columns)
    return CheckedTable(
        name=name,
        kind=kind,
        cells=cells,
        index=index_cols,
        columns=column_cols,
        policy=policy,
        margins=margins,
        notes=tuple(notes),
        structure=structure,
        margins_name=margins_name,
        hierarchy=dict(hierarchy),
    )


def _round_and_recompute(
    released: np.ndarray,
    primary: np.ndarray,
    dims: list[_Dim],
    shape: tuple[int, ...],
    policy: DisclosurePolicy,
) -> np.ndarray:
    """Round interior counts; margins become sums of released interior cells (0 if suppressed)."""
    coords = np.indices(shape).reshape(len(shape), -1)
    interior = np.all([dim.level[coords[d]] == 0 for d, dim in enumerate(dims)], axis=0)
    rounded = policy.round_counts(np.where(np.isnan(released), 0.0, released))
    contrib = np.where(interior & ~primary, rounded, 0.0)
    out = np.zeros(len(released))
    leaf_coords = coords[:, interior]
    per_dim = []
    for d, dim in enumerate(dims):
        levels = [leaf_coords[d]]
        if dim.group:
            levels += [dim.parent[leaf_coords[d]], dim.parent[dim.parent[leaf_coords[d]]]]
        elif dim.parent.max() >= 0:
            levels.append(dim.parent[leaf_coords[d]])
        per_dim.append(levels)
    weights = contrib[interior]
    for combo in itertools.product(*per_dim):
        flat = np.ravel_multi_index(combo, shape)
        out += np.bincount(flat, weights=weights, minlength=len(released))
    return np.where(primary, np.nan, out)


def _dims_for(
    frame: pd.DataFrame,
    names: list[str],
    hierarchy: Mapping[str, str] | None,
    margins: bool,
    margins_name: str,
    what: str,
) -> list[_Dim]:
    hierarchy = dict(hierarchy or {})
    for key, group in hierarchy.items():
        if key not in names:
            raise DisclosureError(
                f"{what}: hierarchy key '{key}' is not one of the table's dimensions {names}"
            )
        if not isinstance(group, str):
            raise DisclosureError(
                f"{what}: hierarchy['{key}'] must name the column holding the parent group; "
                f"got {group!r}"
            )
        if not margins:
            raise DisclosureError(
                f"{what}: a hierarchy ('{key}' within '{group}') needs margins=True, because "
                "subtotals are margins"
            )
    _require_columns(frame, names + list(hierarchy.values()), what)
    _check_no_missing(frame, names + list(hierarchy.values()), what)
    if margins:
        for col in names + list(hierarchy.values()):
            hit = (frame[col].astype(str) == str(margins_name)).to_numpy()
            if hit.any():
                raise DisclosureError(
                    f"{what}: column '{col}' already holds the margins label {margins_name!r} "
                    f"(row {int(np.flatnonzero(hit)[0])}); pass the interior cells only (margins "
                    "are added here) or choose another margins_name"
                )
    return [_build_dim(frame, n, hierarchy.get(n), margins, margins_name) for n in names]


def _leaf_positions(frame: pd.DataFrame, dims: list[_Dim]) -> list[np.ndarray]:
    return [dim.leaf_node.get_indexer(frame[dim.name]) for dim in dims]


def crosstab(
    data: Any,
    index: str | Sequence[str],
    columns: str | Sequence[str] | None = None,
    *,
    values: str | None = None,
    aggfunc: str = "count",
    margins: bool = True,
    policy: DisclosurePolicy | None = None,
    hierarchy: Mapping[str, str] | None = None,
    name: str | None = None,
    margins_name: str = MARGINS_NAME,
) -> CheckedTable:
    """Tabulate microdata and apply disclosure control.

    Parameters
    ----------
    data : pandas DataFrame or Ibis table
        One row per record (person, admission, ...).
    index, columns : str or list of str
        Variables on the rows and columns (``columns`` may be omitted for a one-way table).
    values : str, optional
        Variable to aggregate (required unless ``aggfunc="count"``).
    aggfunc : str
        "count", "sum", "mean", "median", "min", "max" or a percentile "p<q>" (e.g. "p90").
    margins : bool
        Add totals (and subtotals for hierarchies).
    policy : DisclosurePolicy, optional
        Defaults to :meth:`DisclosurePolicy.default`.
    hierarchy : mapping, optional
        ``{dimension: parent column}``, e.g. ``{"practice": "district", "month": "year"}``.
    name : str, optional
        Output name for the log.
    margins_name : str
        Label of totals.

    Returns
    -------
    CheckedTable

    Raises
    ------
    DisclosureError
        A named column is missing, has missing values, or ``values`` is not numeric.

    Examples
    --------
    >>> import pandas as pd
    >>> data = pd.DataFrame({"sex": ["F"] * 30 + ["M"] * 13, "frail": [True] * 25 + [False] * 18})
    >>> t = crosstab(data, "sex", "frail")
    >>> t.released
    frail  False  True  Total
    sex
    F        NaN   NaN   30.0
    M        NaN   NaN   13.0
    Total   18.0  25.0   43.0
    """
    what = f"crosstab {name}" if name else "crosstab"
    policy = policy or DisclosurePolicy.default()
    frame = _as_pandas(data, "data")
    index_l, columns_l = _as_list(index), _as_list(columns)
    kind, q = _parse_aggfunc(aggfunc)
    if kind != "count" and values is None:
        raise DisclosureError(f"{what}: aggfunc={aggfunc!r} needs a 'values' column")
    names = index_l + columns_l
    if not names:
        raise DisclosureError(f"{what}: give at least one 'index' variable")
    dims = _dims_for(frame, names, hierarchy, margins, margins_name, what)
    pos = _leaf_positions(frame, dims)
    k = max(policy.dominance_n, 2)
    if values is not None:
        _require_columns(frame, [values], what)
        v = _numeric(frame, values, what)
        bad = ~np.isfinite(v)
        if bad.any():
            raise DisclosureError(
                f"{what}: values column '{values}' has {int(bad.sum())} missing value(s) "
                f"(first at row {int(np.flatnonzero(bad)[0])}); records are never dropped "
                "silently: fill or filter them first"
            )
    else:
        v = None
    n_rows = np.ones(len(frame))
    needs_top = kind in ("sum", "mean")
    stats = _stats_from_rows(
        dims,
        pos,
        n_rows,
        v,
        (v < 0).astype(float) if v is not None else None,
        v.reshape(-1, 1) if (needs_top and v is not None) else None,
        k,
    )
    stats.value = _cell_values(kind, q, stats, dims, pos, v)
    return _finish(
        name=name or "table",
        kind=kind,
        q=q,
        dims=dims,
        index_dims=len(index_l),
        stats=stats,
        policy=policy,
        margins=margins,
        margins_name=margins_name,
        hierarchy=hierarchy or {},
    )


def _cell_values(
    kind: str,
    q: float | None,
    stats: _Stats,
    dims: list[_Dim],
    pos: list[np.ndarray],
    v: np.ndarray | None,
) -> np.ndarray:
    if kind == "count":
        return stats.n.copy()
    if kind == "sum":
        return stats.total.copy()
    if kind == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(stats.n > 0, stats.total / stats.n, np.nan)
    n_cells = len(stats.n)
    out = np.full(n_cells, np.nan)
    assert v is not None
    for flat in _combos(dims, pos):
        series = pd.Series(v).groupby(flat)
        if kind == "percentile":
            agg = series.quantile(q)
        else:
            agg = series.agg(kind)
        out[agg.index.to_numpy()] = agg.to_numpy()
    return out


def pivot_table(
    data: Any,
    values: str | None = None,
    index: str | Sequence[str] | None = None,
    columns: str | Sequence[str] | None = None,
    aggfunc: str = "mean",
    *,
    margins: bool = True,
    policy: DisclosurePolicy | None = None,
    hierarchy: Mapping[str, str] | None = None,
    name: str | None = None,
    margins_name: str = MARGINS_NAME,
) -> CheckedTable:
    """Like :func:`pandas.pivot_table` (argument order included), with disclosure control.

    Examples
    --------
    >>> import pandas as pd
    >>> data = pd.DataFrame({"district": ["A"] * 12 + ["B"] * 12,
    ...                      "cost_gbp": [100.0] * 11 + [5000.0] + [120.0] * 12})
    >>> t = pivot_table(data, values="cost_gbp", index="district", aggfunc="sum")
    >>> t.status.tolist()
    ['ok', 'ok', 'ok']
    >>> pivot_table(data, values="cost_gbp", index="district", aggfunc="max").status.tolist()
    ['primary:min_max', 'primary:min_max', 'primary:min_max']
    """
    if index is None:
        raise DisclosureError("pivot_table: the 'index' parameter is required")
    if values is None and aggfunc != "count":
        raise DisclosureError(f"pivot_table: aggfunc={aggfunc!r} needs a 'values' column")
    return crosstab(
        data,
        index,
        columns,
        values=values,
        aggfunc=aggfunc,
        margins=margins,
        policy=policy,
        hierarchy=hierarchy,
        name=name,
        margins_name=margins_name,
    )


def check_table(
    frame: Any,
    *,
    counts: str | None = None,
    values: str | None = None,
    contributions: Any = None,
    keys: Sequence[str] | None = None,
    aggfunc: str | None = None,
    policy: DisclosurePolicy | None = None,
    margins: bool = True,
    hierarchy: Mapping[str, str] | None = None,
    index: Sequence[str] | None = None,
    name: str | None = None,
    margins_name: str = MARGINS_NAME,
) -> CheckedTable:
    """Check a table built elsewhere (one row per interior cell; margins are added here).

    Parameters
    ----------
    frame : pandas DataFrame or Ibis table
        Either a wide table of counts (numeric columns, categories on the index and columns), or
        a tidy table with label columns (``keys``) and a ``counts`` column.
    counts : str, optional
        Column holding the number of records behind each cell (whole, non-negative numbers).
    values : str, optional
        Column holding each cell's sum of a magnitude (e.g. ``cost_gbp``). Released as a
        sum table unless ``aggfunc="mean"``.
    contributions : DataFrame or list of str, optional
        For dominance rules: either the microdata (the ``keys`` columns and the ``values``
        column, one row per contributor) or the names of columns in ``frame`` holding each
        cell's largest contributions in order (e.g. ``["top1", "top2"]``). Without them a
        magnitude table cannot be checked for dominance and needs review.
    keys : list of str, optional
        Label columns (default: every column that is not counts, values or contributions).
    aggfunc : str, optional
        "count" (default with only ``counts``), "sum" (default with ``values``) or "mean".
    index : list of str, optional
        Which keys go on the rows of :attr:`CheckedTable.released` (default: all but the last).

    Raises
    ------
    DisclosureError
        Negative, fractional or missing counts, missing labels, unknown columns; the message
        names the column and the row.

    Examples
    --------
    >>> import pandas as pd
    >>> wide = pd.DataFrame({"yes": [25, 3], "no": [40, 52]}, index=pd.Index(["F", "M"], name="sex"))
    >>> t = check_table(wide)
    >>> t.released
    column    no  yes  Total
    sex
    F        NaN  NaN   65.0
    M        NaN  NaN   55.0
    Total   92.0 28.0  120.0
    >>> t.reasons.loc[("M", "yes")]
    'count 3 is below the threshold of 10'

    """
    what = f"check_table {name}" if name else "check_table"
    policy = policy or DisclosurePolicy.default()
    table = _as_pandas(frame, "frame")
    top_cols: list[str] = []
    micro: pd.DataFrame | None = None
    if isinstance(contributions, pd.DataFrame) or hasattr(contributions, "to_pandas"):
        micro = _as_pandas(contributions, "contributions")
    elif contributions is not None:
        top_cols = _as_list(contributions)
    if counts is None and values is None:
        # A wide table of counts: categories on the index and the columns.
        if table.index.names == [None]:
            table = table.rename_axis("row")
        if table.columns.name is None:
            table = table.rename_axis(columns="column")
        if "All" in table.index and "All" in table.columns:
            raise DisclosureError(
                f"{what}: the table already has pandas margins ('All' row and column); pass it "
                "without margins (margins are added and checked here)"
            )
        idx_names = list(table.index.names)
        col_name = table.columns.name
        long = table.stack(future_stack=True).rename("n").reset_index()
        return check_table(
            long,
            counts="n",
            keys=idx_names + [col_name],
            index=idx_names,
            policy=policy,
            margins=margins,
            hierarchy=hierarchy,
            name=name,
            margins_name=margins_name,
        )
    used = {c for c in (counts, values) if c} | set(top_cols)
    key_l = list(keys) if keys is not None else [c for c in table.columns if c not in used]
    _require_columns(table, key_l + sorted(used), what)
    if table.duplicated(key_l).any():
        r = int(np.flatnonzero(table.duplicated(key_l).to_numpy())[0])
        raise DisclosureError(
            f"{what}: keys {key_l} must identify one row per cell; row {r} repeats "
            f"{table.iloc[r][key_l].to_dict()}"
        )
    if aggfunc is None:
        aggfunc = "sum" if values else "count"
    kind, q = _parse_aggfunc(aggfunc)
    if kind not in ("count", "sum", "mean"):
        raise DisclosureError(
            f"{what}: aggfunc must be 'count', 'sum' or 'mean' for precomputed tables; got "
            f"{aggfunc!r} (percentiles, min and max need the microdata: use crosstab)"
        )
    dims = _dims_for(table, key_l, hierarchy, margins, margins_name, what)
    pos = _leaf_positions(table, dims)
    k = max(policy.dominance_n, 2)
    if counts is None:
        if micro is None:
            raise DisclosureError(
                f"{what}: a magnitude table needs 'counts' (records per cell) or the microdata "
                "as 'contributions'"
            )
    n_rows = None
    if counts is not None:
        n_rows = _numeric(table, counts, what)
        _check_counts(n_rows, counts, what)
    total_rows = None
    if values is not None:
        total_rows = _numeric(table, values, what)
        bad = ~np.isfinite(total_rows)
        if bad.any():
            raise DisclosureError(
                f"{what}: values column '{values}' has a missing value at row "
                f"{int(np.flatnonzero(bad)[0])}"
            )
    top_rows = None
    neg_rows = None
    notes_review = False
    if micro is not None:
        if values is None:
            raise DisclosureError(f"{what}: 'contributions' needs the 'values' column name")
        _require_columns(micro, key_l + [values], f"{what} contributions")
        _check_no_missing(micro, key_l + [values], f"{what} contributions")
        mpos = _leaf_positions(micro, dims)
        for dim, p in zip(dims, mpos, strict=True):
            if (p < 0).any():
                r = int(np.flatnonzero(p < 0)[0])
                raise DisclosureError(
                    f"{what}: contributions row {r} has {dim.name}={micro[dim.name].iloc[r]!r}, "
                    "which is not a cell of the table"
                )
        mv = _numeric(micro, values, f"{what} contributions")
        micro_stats = _stats_from_rows(
            dims, mpos, np.ones(len(micro)), mv, (mv < 0).astype(float), mv.reshape(-1, 1), k
        )
        shape_cells = len(micro_stats.n)
        table_stats = _stats_from_rows(
            dims,
            pos,
            n_rows if n_rows is not None else np.zeros(len(table)),
            total_rows,
            None,
            None,
            k,
        )
        if n_rows is not None and not np.allclose(table_stats.n, micro_stats.n):
            bad_cell = int(np.flatnonzero(~np.isclose(table_stats.n, micro_stats.n))[0])
            raise DisclosureError(
                f"{what}: counts in '{counts}' do not match the contributions (cell {bad_cell} of "
                f"{shape_cells}: {table_stats.n[bad_cell]:g} vs {micro_stats.n[bad_cell]:g})"
            )
        if total_rows is not None and not np.allclose(table_stats.total, micro_stats.total):
            raise DisclosureError(
                f"{what}: values in '{values}' do not match the sum of the contributions"
            )
        stats = micro_stats
    else:
        if top_cols:
            top_rows = np.column_stack([_numeric(table, c, what) for c in top_cols])
            top_rows = np.where(np.isfinite(top_rows), top_rows, np.nan)
        if "neg" in table.columns:
            neg_rows = _numeric(table, "neg", what)
        assert n_rows is not None
        stats = _stats_from_rows(dims, pos, n_rows, total_rows, neg_rows, top_rows, k)
        if kind in ("sum", "mean") and top_rows is None:
            notes_review = True
        if top_rows is not None and top_rows.shape[1] < k:
            # Fewer top columns than needed: the missing ones are unknown, not zero.
            notes_review = True
    stats.value = _cell_values(kind, q, stats, dims, pos, total_rows)
    result = _finish(
        name=name or "table",
        kind=kind,
        q=q,
        dims=dims,
        index_dims=len(index) if index is not None else max(1, len(key_l) - 1),
        stats=stats,
        policy=policy,
        margins=margins,
        margins_name=margins_name,
        hierarchy=hierarchy or {},
    )
    if notes_review:
        result = dataclasses.replace(
            result,
            review=(
                "dominance could not be checked: give the largest contributions per cell "
                f"({k} top columns) or the microdata as 'contributions'",
            ),
        )
    return result


def check_survival(
    frame: Any,
    *,
    at_risk: str = "n_at_risk",
    events: str | None = "n_events",
    policy: DisclosurePolicy | None = None,
    name: str | None = None,
) -> CheckedTable:
    """Check a life table / Kaplan-Meier table: rows with fewer than ``survival_threshold`` at risk
    are suppressed, and so is every later row (numbers at risk only fall, so later rows are
    smaller groups still).

    Examples
    --------
    >>> import pandas as pd
    >>> km = pd.DataFrame({"day": [0, 30, 60, 90], "n_at_risk": [40, 22, 11, 6], "n_events": [5, 4, 2, 1]})
    >>> check_survival(km).to_frame()["status"].tolist()
    ['ok', 'ok', 'ok', 'primary:survival']
    """
    what = f"check_survival {name}" if name else "check_survival"
    policy = policy or DisclosurePolicy.default()
    table = _as_pandas(frame, "frame").reset_index(drop=True)
    cols = [at_risk] + ([events] if events else [])
    _require_columns(table, cols, what)
    for c in cols:
        _check_counts(_numeric(table, c, what), c, what)
    n = table[at_risk].to_numpy(dtype=float)
    fails = n < policy.survival_threshold
    later = np.maximum.accumulate(fails)
    status = np.where(later, "primary:survival", "ok")
    reason = np.where(
        fails,
        [
            f"{_fmt(v)} at risk is below the survival threshold of {policy.survival_threshold}"
            for v in n
        ],
        np.where(later, "follows a row below the survival threshold", ""),
    )
    cells = table.copy()
    cells["n"] = n.astype(np.int64)
    cells["value"] = n
    cells["released"] = np.where(later, np.nan, n)
    cells["status"] = status
    cells["rule"] = np.where(later, "survival", "")
    cells["rules"] = cells["rule"]
    cells["reason"] = reason
    if events:
        cells[events] = cells[events].where(~later)
    keys = [c for c in table.columns if c not in cols]
    if not keys:
        cells.insert(0, "row", np.arange(len(cells)))
        keys = ["row"]
    return CheckedTable(
        name=name or "survival",
        kind="survival",
        cells=cells,
        index=tuple(keys),
        columns=(),
        policy=policy,
        margins=False,
    )
