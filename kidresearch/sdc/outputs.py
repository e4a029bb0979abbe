"""The output log, and re-checking a folder of released outputs.

Every checked output (table, model, figure) yields an :class:`OutputRecord`: its name, kind, the
rules applied with their results, a status (pass / review / fail), readable reasons and, when the
researcher asks for one, an exception request with their justification. :class:`OutputLog`
collects records and writes JSON, which the report runner puts into its manifest.

:func:`check_folder` re-checks a folder of CSV outputs (what ``kid outputs check DIR`` runs).
Convention: a table saved with :meth:`CheckedTable.save` has a sidecar ``<name>.sdc.json`` naming
its label and value columns, its kind, margins and hierarchy; visible counts are re-checked
against the threshold (and the rounding base) and, for tables with margins, every suppressed
cell's feasible range is re-audited by LP from the released file alone. A CSV without a sidecar
is checked by column names: integer columns named ``n``, ``count``, ``*_n``, ``n_*``,
``*_count`` or ``count_*`` are counts; columns named ``min``/``max`` (or ``*_min``, ``*_max``,
``minimum``, ``maximum``) are refused unless the policy allows them; a CSV with no recognisable
count column needs review. Other files (figures) pass only with a sidecar whose record passed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kidresearch.errors import DisclosureError

STATUSES = ("pass", "review", "fail")
_COUNT_NAME = re.compile(r"^(n|count|counts|.*_n|n_.*|.*_count|count_.*)$", re.IGNORECASE)
_MINMAX_NAME = re.compile(r"^(min|max|minimum|maximum|.*_min|.*_max)$", re.IGNORECASE)


@dataclass(frozen=True)
class RuleResult:
    """One rule applied to an output: its name, result and how many cells it concerned."""

    rule: str
    result: str
    cells: int = 0


@dataclass(frozen=True)
class OutputRecord:
    """The output-log entry of one checked output.

    Examples
    --------
    >>> r = OutputRecord("t1", "table:count", "pass", (RuleResult("threshold", "pass"),))
    >>> r.with_exception("needed for the funnel plot").status
    'review'
    """

    name: str
    kind: str
    status: str
    rules: tuple[RuleResult, ...] = ()
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    policy: dict[str, Any] = field(default_factory=dict)
    exception: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise DisclosureError(
                f"output record '{self.name}': status must be one of {STATUSES}; got {self.status!r}"
            )

    def with_exception(self, justification: str) -> OutputRecord:
        """A copy carrying an exception request; its status becomes 'review' (a human decides)."""
        if not isinstance(justification, str) or not justification.strip():
            raise DisclosureError(
                f"output record '{self.name}': an exception request needs a written justification"
            )
        return replace(
            self,
            status="review",
            exception={"justification": justification.strip(), "previous_status": self.status},
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rules"] = [asdict(r) for r in self.rules]
        out["reasons"] = list(self.reasons)
        out["notes"] = list(self.notes)
        return out


def _as_record(item: Any) -> OutputRecord:
    if isinstance(item, OutputRecord):
        return item
    record = getattr(item, "record", None)
    if isinstance(record, OutputRecord):
        return record
    raise DisclosureError(
        f"OutputLog.add expects an OutputRecord or a checked output with a .record; got "
        f"{type(item).__name__}"
    )


@dataclass
class OutputLog:
    """Collects output records and writes them as JSON.

    Examples
    --------
    >>> log = OutputLog()
    >>> log.add(OutputRecord("t1", "table:count", "pass"))
    >>> log.add(OutputRecord("m1", "model", "fail", reasons=("residual dof 4 < 10",)))
    >>> log.summary()
      name         kind status              reasons
    0   t1  table:count   pass
    1   m1        model   fail  residual dof 4 < 10
    >>> log.ok
    False
    """

    records: list[OutputRecord] = field(default_factory=list)

    def add(self, item: Any) -> None:
        """Add a record (or anything with a ``.record``, e.g. a CheckedTable)."""
        self.records.append(_as_record(item))

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.add(item)

    @property
    def ok(self) -> bool:
        """True when every record passed."""
        return all(r.status == "pass" for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": [r.to_dict() for r in self.records]}

    def to_json(self, path: str | Path | None = None) -> str:
        """The log as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "name": [r.name for r in self.records],
                "kind": [r.kind for r in self.records],
                "status": [r.status for r in self.records],
                "reasons": ["; ".join(r.reasons[:3]) for r in self.records],
            }
        )


# ---------------------------------------------------------------------------------- folders
@dataclass(frozen=True)
class FolderCheck:
    """Result of :func:`check_folder`: one record per file."""

    directory: Path
    records: tuple[OutputRecord, ...]
    files: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every file passed (review and fail both block release)."""
        return all(r.status == "pass" for r in self.records)

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "file": list(self.files),
                "kind": [r.kind for r in self.records],
                "status": [r.status for r in self.records],
                "reasons": ["; ".join(r.reasons[:3]) for r in self.records],
            },
            columns=["file", "kind", "status", "reasons"],
        )


def _resolve_policy(policy: Any, proposal: Any) -> Any:
    from kidresearch.sdc.policy import DisclosurePolicy

    if policy is not None and proposal is not None:
        raise DisclosureError("give either a policy or a proposal, not both")
    if isinstance(policy, DisclosurePolicy):
        return policy
    if policy is not None:
        return DisclosurePolicy.from_yaml(policy)
    if proposal is not None:
        return DisclosurePolicy.from_yaml(proposal)
    return DisclosurePolicy.default()


def _count_violations(values: pd.Series, column: str, policy: Any, rounded: bool) -> list[str]:
    v = pd.to_numeric(values, errors="coerce")
    text_bad = values.notna() & v.isna()
    problems = []
    if text_bad.any():
        r = int(np.flatnonzero(text_bad.to_numpy())[0])
        problems.append(f"column '{column}' row {r}: {values.iloc[r]!r} is not a count")
    shown = v.dropna()
    if (shown < 0).any() or (shown != np.round(shown)).any():
        r = int(shown.index[(shown < 0) | (shown != np.round(shown))][0])
        problems.append(
            f"column '{column}' row {r}: {v.loc[r]:g} is not a whole non-negative count"
        )
    small = (shown > 0) & (shown < policy.threshold)
    if not policy.zeros_are_disclosive:
        pass
    else:
        small |= shown == 0
    if small.any():
        rows = shown.index[small].tolist()
        problems.append(
            f"column '{column}': {len(rows)} released count(s) below the threshold of "
            f"{policy.threshold}{' or zero' if policy.zeros_are_disclosive else ''} "
            f"(rows {rows[:5]})"
        )
    if rounded and policy.rounding:
        off = (shown % policy.rounding) != 0
        if off.any():
            r = int(shown.index[off][0])
            problems.append(
                f"column '{column}' row {r}: {shown.loc[r]:g} is not a multiple of the rounding "
                f"base {policy.rounding}"
            )
    return problems


def _audit_released(frame: pd.DataFrame, sidecar: dict[str, Any], policy: Any) -> list[str]:
    """Re-audit suppressed cells of a released table with margins, from the file alone."""
    from kidresearch.sdc.secondary import TableStructure, certify_released
    from kidresearch.sdc.tables import _build_dim

    margins_name = sidecar.get("margins_name", "Total")
    hierarchy = sidecar.get("hierarchy") or {}
    groups = set(hierarchy.values())
    dim_names = [c for c in sidecar["labels"] if c not in groups]
    interior = np.ones(len(frame), dtype=bool)
    for c in sidecar["labels"]:
        interior &= frame[c].astype(str).to_numpy() != str(margins_name)
    inner = frame[interior]
    dims = [_build_dim(inner, n, hierarchy.get(n), True, margins_name) for n in dim_names]
    shape = tuple(d.size for d in dims)
    codes = []
    for dim in dims:
        node_keys = (
            list(zip(dim.group_labels.astype(str), dim.leaf_labels.astype(str), strict=True))
            if dim.group
            else list(dim.leaf_labels.astype(str))
        )
        lookup = {k: i for i, k in enumerate(node_keys)}
        if dim.group:
            keys = zip(frame[dim.group].astype(str), frame[dim.name].astype(str), strict=True)
        else:
            keys = frame[dim.name].astype(str)
        code = np.array([lookup.get(k, -1) for k in keys])
        if (code < 0).any():
            r = int(np.flatnonzero(code < 0)[0])
            return [f"row {r}: labels do not fit the table's categories and margins"]
        codes.append(code)
    flat = np.ravel_multi_index(tuple(codes), shape)
    n_cells = int(np.prod(shape))
    if len(np.unique(flat)) != n_cells or len(flat) != n_cells:
        return [
            f"the file holds {len(flat)} rows for {n_cells} cells of the table with margins; "
            "cannot audit suppression"
        ]
    values = np.full(n_cells, np.nan)
    values[flat] = pd.to_numeric(frame[sidecar["value"]], errors="coerce").to_numpy()
    suppressed = np.isnan(values)
    if not suppressed.any():
        return []
    structure = TableStructure(tuple(d.parent for d in dims))
    required = policy.count_protection if sidecar.get("kind") == "count" else 1e-6
    bad = certify_released(values, suppressed, structure, required)
    if len(bad):
        return [
            f"{len(bad)} suppressed cell(s) can be recovered from the released cells and totals "
            f"to within less than {required:g} (first at row {int(np.flatnonzero(flat == bad[0])[0])})"
        ]
    return []


def _check_csv(path: Path, policy: Any) -> OutputRecord:
    sidecar_path = path.with_name(path.name[: -len(".csv")] + ".sdc.json")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        return OutputRecord(
            path.stem, "table", "fail", reasons=(f"{path.name}: unreadable CSV: {exc}",)
        )
    reasons: list[str] = []
    rules: list[RuleResult] = []
    if sidecar_path.exists():
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            return OutputRecord(
                path.stem, "table", "fail", reasons=(f"{sidecar_path.name}: invalid JSON: {exc}",)
            )
        kind = f"table:{sidecar.get('kind', 'unknown')}"
        missing = [c for c in sidecar.get("labels", []) + [sidecar.get("value")] if c not in frame]
        if missing:
            return OutputRecord(
                path.stem,
                kind,
                "fail",
                reasons=(
                    f"{path.name}: columns {missing} declared in {sidecar_path.name} are missing",
                ),
            )
        rounded = bool(sidecar.get("rounded"))
        for col in sidecar.get("counts", []):
            problems = _count_violations(frame[col], col, policy, rounded)
            rules.append(RuleResult("threshold", "fail" if problems else "pass", len(problems)))
            reasons += problems
        if sidecar.get("kind") in ("min", "max") and not policy.allow_min_max:
            shown = pd.to_numeric(frame[sidecar["value"]], errors="coerce").notna().sum()
            if shown:
                reasons.append(f"{int(shown)} minimum/maximum value(s) released")
                rules.append(RuleResult("min_max", "fail", int(shown)))
        if (
            sidecar.get("margins")
            and not rounded
            and sidecar.get("kind") in ("count", "sum")
            and not reasons
        ):
            audit = _audit_released(frame, sidecar, policy)
            rules.append(RuleResult("secondary", "fail" if audit else "pass", len(audit)))
            reasons += audit
        record_status = (sidecar.get("record") or {}).get("status", "pass")
        status = "fail" if reasons else ("review" if record_status == "review" else "pass")
        if record_status == "review":
            reasons.append("the table's own check asked for review")
        return OutputRecord(
            path.stem, kind, status, tuple(rules), tuple(reasons), policy=policy.to_dict()
        )
    counts = [
        c
        for c in frame.columns
        if _COUNT_NAME.match(str(c)) and pd.api.types.is_numeric_dtype(frame[c])
    ]
    minmax = [c for c in frame.columns if _MINMAX_NAME.match(str(c))]
    for col in counts:
        problems = _count_violations(frame[col], col, policy, policy.rounding is not None)
        rules.append(RuleResult("threshold", "fail" if problems else "pass", len(problems)))
        reasons += problems
    if minmax and not policy.allow_min_max:
        reasons.append(f"columns {minmax} look like minima/maxima, which are not released")
        rules.append(RuleResult("min_max", "fail", len(minmax)))
    if reasons:
        status = "fail"
    elif not counts:
        status = "review"
        reasons.append(
            f"{path.name}: no count column found (name counts n, count, *_n or *_count, or save "
            "the table with CheckedTable.save to write a sidecar)"
        )
    else:
        status = "pass"
    return OutputRecord(
        path.stem, "table", status, tuple(rules), tuple(reasons), policy=policy.to_dict()
    )


def check_folder(directory: str | Path, *, policy: Any = None, proposal: Any = None) -> FolderCheck:
    """Re-check every output file in a folder against a disclosure policy.

    Parameters
    ----------
    directory : path
        Folder of outputs (CSV tables with optional ``.sdc.json`` sidecars, figures).
    policy : DisclosurePolicy or path, optional
        The policy, or a policy YAML file.
    proposal : path, optional
        A proposal YAML whose ``output_policy`` mapping holds the policy.

    Returns
    -------
    FolderCheck
        ``.ok`` is False when any file fails or needs review.

    Raises
    ------
    DisclosureError
        The folder does not exist, or the policy is invalid.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> folder = Path(tempfile.mkdtemp())
    >>> pd.DataFrame({"district": ["Dover", "Thanet"], "n": [40, 4]}).to_csv(folder / "t.csv", index=False)
    >>> result = check_folder(folder)
    >>> result.ok, result.summary()["status"].tolist()
    (False, ['fail'])
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DisclosureError(f"output folder {directory} does not exist or is not a folder")
    pol = _resolve_policy(policy, proposal)
    records: list[OutputRecord] = []
    files: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.is_dir() or path.name.endswith(".sdc.json") or path.name.startswith("."):
            continue
        files.append(path.name)
        if path.suffix.lower() == ".csv":
            records.append(_check_csv(path, pol))
            continue
        sidecar = path.with_name(path.name + ".sdc.json")
        if sidecar.exists():
            try:
                rec = json.loads(sidecar.read_text(encoding="utf-8")).get("record", {})
            except json.JSONDecodeError:
                rec = {}
            status = rec.get("status", "review")
            records.append(
                OutputRecord(
                    path.name,
                    rec.get("kind", "figure"),
                    status if status in STATUSES else "review",
                    reasons=tuple(rec.get("reasons", [])),
                )
            )
        else:
            records.append(
                OutputRecord(
                    path.name,
                    "file",
                    "review",
                    reasons=(
                        f"{path.name}: not a checked table; a figure needs the sidecar written "
                        "by check_figure(...).save() with the table behind it",
                    ),
                )
            )
    return FolderCheck(directory, tuple(records), tuple(files))
