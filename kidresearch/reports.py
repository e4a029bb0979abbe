"""Batch reports: run a proposal's approved notebooks, release what passed disclosure control.

`run` executes the notebooks a proposal approves (its YAML's ``notebooks`` list, files under
``notebooks/``) with papermill into ``<out>/<proposal-id>/<run-id>/``::

    proposal.yaml                 copy of the proposal the run was made under
    inputs/notebooks/*.ipynb      the notebooks exactly as run (for `verify`)
    executed/*.ipynb              the executed notebooks (papermill)
    html/<name>.html              researcher version (code shown)
    html/<name>.commissioner.html code hidden (only for notebooks that ran to the end)
    released/<name>/*.csv|*.png   ONLY outputs that passed disclosure control
    manifest.json                 proposal, parameters, KID version and input hashes, package
                                  versions, git commit, durations, per-output status

The run id is ``<UTC time YYYYmmddTHHMMSSZ>-<first 8 hex of the sha256 of the inputs>`` (the
proposal file, the notebooks, the parameters and the KID version), so two runs never overwrite each
other and runs of the same inputs share the suffix.

Notebooks hand outputs to the runner through :func:`release`: every notebook has one cell tagged
``parameters`` in which ``output_dir = None``; the runner injects the run's staging folder there and
the notebook calls ``release(checked, "name", output_dir=output_dir)``. A table is released only if
its disclosure check passed; a figure only together with the checked table it was drawn from, and
only if that table passed. Everything else is listed in the manifest as withheld with the reasons.
Outputs of a notebook that fails are all withheld: a half-run analysis is not released.

Released files are byte-for-byte reproducible: tables are sorted and written with fixed CSV
settings, figures are saved as PNG at a fixed resolution without the time-stamp and software
metadata matplotlib would otherwise add. `verify` re-executes a run and compares the hashes.

Examples
--------
Outside a report run (no ``output_dir``) :func:`release` only previews the decision:

>>> import pandas as pd
>>> from types import SimpleNamespace
>>> checked = SimpleNamespace(
...     released=pd.DataFrame({"district": ["Dover", "Thanet"], "people": [120, 85]}),
...     passed=True,
...     record={"status": "pass"},
... )
>>> release(checked, "people_by_district").status
'preview'
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kidresearch.errors import (
    AccessRefused,
    DisclosureError,
    KidError,
    ProposalError,
    ReportError,
)

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = "kidresearch.report-manifest/1"
#: Parameters the runner sets itself; ``-p`` may not override them.
RESERVED_PARAMETERS = ("proposal", "data", "kid_version", "output_dir")
#: The papermill kernel: the running interpreter's ipykernel (installed on first use if absent).
KERNEL_NAME = "python3"
#: Resolution of released PNG figures; fixed so re-runs give the same bytes.
FIGURE_DPI = 100
_RECORD_SUFFIX = ".record.json"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PACKAGES = (
    "kidresearch",
    "pandas",
    "numpy",
    "scipy",
    "statsmodels",
    "linearmodels",
    "ibis-framework",
    "duckdb",
    "pyarrow",
    "matplotlib",
    "papermill",
    "nbconvert",
    "nbformat",
    "ipykernel",
)


# ------------------------------------------------------------------------------- release
@dataclass(frozen=True)
class ReleaseRecord:
    """What :func:`release` decided about one output.

    Attributes
    ----------
    name : str
        Output name (file stem).
    kind : str
        ``"table"`` or ``"figure"``.
    status : str
        ``"released"`` (files written), ``"withheld"`` (failed disclosure control, nothing
        written) or ``"preview"`` (passed, but no ``output_dir``: outside a report run).
    reasons : tuple of str
        Why an output was withheld (empty when it passed).
    files : tuple of str
        Files written, relative to ``output_dir``.
    table : str or None
        For a figure, the name under which its table was written beside it.
    sdc_record : dict or None
        The disclosure-control record of the (underlying) checked table.
    """

    name: str
    kind: str
    status: str
    reasons: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    table: str | None = None
    sdc_record: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the record."""
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        out["files"] = list(self.files)
        return out


def _is_checked(obj: object) -> bool:
    return all(hasattr(obj, a) for a in ("released", "passed", "record"))


def _is_figure(obj: object) -> bool:
    return hasattr(obj, "savefig") and hasattr(obj, "axes")


def _jsonable(value: Any) -> Any:
    """Turn an sdc record (dataclass, pydantic model, dict, frame...) into JSON-ready data."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    for method in ("to_dict", "model_dump"):
        fn = getattr(value, method, None)
        if callable(fn) and not isinstance(value, pd.DataFrame | pd.Series):
            try:
                return _jsonable(fn())
            except TypeError:
                pass
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return json.loads(value.to_json(orient="records", date_format="iso"))
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return str(value)


def _reasons(checked: object) -> tuple[str, ...]:
    """Readable reasons from a checked table's record (any of the usual shapes)."""
    record = checked.record  # type: ignore[attr-defined]
    found: Any = getattr(record, "reasons", None)
    if found is None and isinstance(record, Mapping):
        found = record.get("reasons")
    if found is None:
        found = getattr(checked, "reasons", None)
    if isinstance(found, str):
        return (found,)
    if found:
        return tuple(str(r) for r in found)
    return ("failed disclosure control",)


def _sorted_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """Rows in a canonical order (index if meaningful, else all columns); (frame, write index)."""
    has_index = not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None
    try:
        if has_index:
            return frame.sort_index(kind="stable"), True
        if len(frame.columns):
            ordered = frame.sort_values(list(frame.columns), kind="stable", na_position="last")
            return ordered.reset_index(drop=True), False
    except TypeError:
        log.warning("rows of a released table have mixed types and were kept in their order")
    return frame, has_index


def _write_table(frame: object, path: Path, *, what: str, sort: bool) -> None:
    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    if not isinstance(frame, pd.DataFrame):
        raise DisclosureError(
            f"{what}: .released must be a pandas DataFrame, got {type(frame).__name__}"
        )
    index = not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None
    if sort:
        frame, index = _sorted_frame(frame)
    frame.to_csv(path, index=index, lineterminator="\n", encoding="utf-8")


def _write_figure(fig: Any, path: Path) -> None:
    # No "Software"/time metadata and a fixed dpi: the same figure gives the same PNG bytes.
    fig.savefig(path, format="png", dpi=FIGURE_DPI, metadata={"Software": None})


def release(
    obj: object,
    name: str,
    *,
    table: object | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    sort: bool = True,
) -> ReleaseRecord:
    """Hand an output to the report runner; it is written only if it passed disclosure control.

    Parameters
    ----------
    obj : CheckedTable or matplotlib Figure
        A checked table from :mod:`kidresearch.sdc` (anything with ``.released``, ``.passed`` and
        ``.record``) or a figure. Plain DataFrames are refused: check them with ``sdc`` first.
    name : str
        File stem of the output: letters, digits, ``_``, ``-`` and ``.``; unique in a notebook.
    table : CheckedTable, optional
        For a figure (required): the checked table the figure was drawn from. The figure is
        released only if this table passed; the table's released CSV is written beside it.
    output_dir : path, optional
        Where to write (the notebook's ``output_dir`` parameter, set by the runner). When None
        nothing is written and the decision is returned as a preview.
    sort : bool, default True
        Write table rows in a canonical order (by index, or by all columns for a plain
        RangeIndex) so re-runs give identical files.

    Returns
    -------
    ReleaseRecord

    Raises
    ------
    DisclosureError
        ``obj`` is not a checked table or a figure, a figure came without its table, or the
        name is unusable.
    ReportError
        An output of this name was already released into ``output_dir``.

    Examples
    --------
    >>> import pandas as pd
    >>> from types import SimpleNamespace
    >>> small = SimpleNamespace(released=pd.DataFrame({"n": [3]}), passed=False,
    ...                         record={"reasons": ["count 3 is below the threshold of 10"]})
    >>> rec = release(small, "tiny")
    >>> rec.status, rec.reasons
    ('withheld', ('count 3 is below the threshold of 10',))
    >>> release(pd.DataFrame({"n": [3]}), "raw")
    Traceback (most recent call last):
    ...
    kidresearch.errors.DisclosureError: release('raw'): expected a CheckedTable ...
    """
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or name.endswith(".record"):
        raise DisclosureError(
            f"release(): the 'name' parameter must be a file stem of letters, digits, '_', '-' "
            f"or '.', got {name!r}"
        )
    figure: Any = None
    if _is_figure(obj) or (hasattr(obj, "get_figure") and not _is_checked(obj)):
        kind = "figure"
        figure = obj if _is_figure(obj) else obj.get_figure()  # type: ignore[attr-defined]
        if table is None:
            raise DisclosureError(
                f"release('{name}'): a figure is released only with the checked table it was "
                f"drawn from; call release(fig, '{name}', table=checked)"
            )
        if not _is_checked(table):
            raise DisclosureError(
                f"release('{name}'): the 'table' parameter must be a CheckedTable from "
                f"kidresearch.sdc (with .released, .passed, .record), got {type(table).__name__}"
            )
        checked = table
        passed, sdc_record, reasons = _figure_decision(figure, table, name)
    elif _is_checked(obj):
        kind = "table"
        checked = obj
        passed = bool(checked.passed)  # type: ignore[attr-defined]
        sdc_record = _record_dict(checked.record)  # type: ignore[attr-defined]
        reasons = () if passed else _reasons(checked)
    elif _is_figure(getattr(obj, "figure", None)) and hasattr(obj, "record"):
        # A CheckedOutput from sdc.check_figure: the decision was made there, with its table.
        kind = "figure"
        checked = None
        figure = obj.figure  # type: ignore[attr-defined]
        passed = bool(obj.passed)  # type: ignore[attr-defined]
        sdc_record = _record_dict(obj.record)  # type: ignore[attr-defined]
        reasons = () if passed else _reasons(obj)
    else:
        raise DisclosureError(
            f"release('{name}'): expected a CheckedTable from kidresearch.sdc (with .released, "
            f".passed and .record), a matplotlib Figure with table=, or a CheckedOutput of "
            f"sdc.check_figure; got {type(obj).__name__}. Check the output with kidresearch.sdc "
            "first."
        )
    table_name = f"{name}.table" if kind == "figure" and checked is not None else None

    if output_dir is None:
        status = "preview" if passed else "withheld"
        log.info("release('%s'): %s (no output_dir: nothing written)", name, status)
        return ReleaseRecord(name, kind, status, reasons, (), table_name, sdc_record)

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / f"{name}{_RECORD_SUFFIX}"
    if record_path.exists():
        raise ReportError(
            f"release('{name}'): an output called '{name}' was already released in {folder}; "
            "give each output of a notebook its own name"
        )
    files: list[str] = []
    if passed:
        if figure is not None:
            _write_figure(figure, folder / f"{name}.png")
            # The sidecar sdc.check_folder (``kid outputs check``) reads for a figure.
            sidecar = folder / f"{name}.png.sdc.json"
            sidecar.write_text(
                json.dumps({"record": sdc_record}, indent=2, sort_keys=True, default=str),
                encoding="utf-8",
            )
            files += [f"{name}.png", sidecar.name]
        if checked is not None:
            stem = table_name or name
            files += _save_checked(checked, folder, stem, what=f"release('{name}')", sort=sort)
    record = ReleaseRecord(
        name,
        kind,
        "released" if passed else "withheld",
        reasons,
        tuple(files),
        table_name,
        sdc_record,
    )
    record_path.write_text(json.dumps(record.to_dict(), indent=2, default=str), encoding="utf-8")
    return record


def _record_dict(record: object) -> dict[str, Any]:
    out = _jsonable(record)
    return out if isinstance(out, dict) else {"record": out}


def _real_checked_table(obj: object) -> bool:
    """Is ``obj`` a :class:`kidresearch.sdc.CheckedTable` (not just something shaped like one)?"""
    try:
        from kidresearch.sdc import CheckedTable
    except ImportError:  # pragma: no cover - sdc is part of the package
        return False
    return isinstance(obj, CheckedTable)


def _figure_decision(
    figure: Any, table: object, name: str
) -> tuple[bool, dict[str, Any], tuple[str, ...]]:
    """Release a figure only if every number drawn could be released as it is."""
    if _real_checked_table(table):
        from kidresearch.sdc import check_figure

        checked = check_figure(figure, table, name=name)
        passed = bool(checked.passed)
        return passed, _record_dict(checked.record), () if passed else _reasons(checked)
    # Duck-typed tables: a figure cannot show a suppressed cell, so it needs the raw table to pass.
    passed = bool(getattr(table, "raw_passed", table.passed))  # type: ignore[attr-defined]
    reasons = () if passed else _reasons(table)
    return passed, _record_dict(table.record), reasons  # type: ignore[attr-defined]


def _save_checked(checked: object, folder: Path, stem: str, *, what: str, sort: bool) -> list[str]:
    """Write a checked table as ``<stem>.csv``; sdc tables also get their ``.sdc.json`` sidecar.

    A real :class:`kidresearch.sdc.CheckedTable` is written by its own ``save`` (tidy released
    cells plus the sidecar), so ``kid outputs check`` can re-check the released folder.
    """
    if _real_checked_table(checked):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            checked.save(tmp)  # type: ignore[attr-defined]
            own = checked.name  # type: ignore[attr-defined]
            written = []
            for suffix in (".csv", ".sdc.json"):
                source = Path(tmp) / f"{own}{suffix}"
                if source.exists():
                    shutil.move(source, folder / f"{stem}{suffix}")
                    written.append(f"{stem}{suffix}")
        return written
    _write_table(checked.released, folder / f"{stem}.csv", what=what, sort=sort)  # type: ignore[attr-defined]
    return [f"{stem}.csv"]


# ------------------------------------------------------------------------------- proposals
@dataclass(frozen=True)
class _Proposal:
    id: str
    path: Path
    notebooks: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False)

    def get(self, *keys: str) -> Any:
        """First present of several spellings of a field (nested 'a.b' allowed)."""
        for key in keys:
            value: Any = self.raw
            for part in key.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
            if value is not None:
                return value
        return None


def _find_dir(name: str) -> Path:
    here = Path.cwd() / name
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1] / name


def _load_proposal(proposal: str | os.PathLike[str]) -> _Proposal:
    """Read and validate a proposal (by path, or by id from the proposals folders).

    Validation (every field, approval and expiry dates) is :func:`kidresearch.access.
    load_proposal`'s, so the runner and ``connect`` accept exactly the same proposals.
    """
    from kidresearch.access import load_proposal

    model = load_proposal(proposal)
    model.check_dates()
    path = Path(model.source) if model.source else Path(str(proposal))
    raw = model.model_dump(mode="json")
    return _Proposal(model.id, path, tuple(_nb_name(n) for n in model.notebooks), raw)


def _nb_name(name: str) -> str:
    return name if name.endswith(".ipynb") else f"{name}.ipynb"


# ------------------------------------------------------------------------------- provenance
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _kid_info(data: str | os.PathLike[str] | None, version: str | None) -> dict[str, Any]:
    """KID folder, version and input hashes, from the KID version's ``manifest.json``.

    The folder is ``data``, else ``$KID_DATA``, else the config file's (as for ``connect``); with
    none of them the notebooks run without a KID (``data`` is None). ``version`` None or
    ``"latest"`` means the folder's ``CURRENT`` version.
    """
    from kidresearch.config import resolve_data
    from kidresearch.linkage import versions

    try:
        root = resolve_data(data)
    except ProposalError:
        return {"data": None, "version": None, "input_hashes": None}
    info: dict[str, Any] = {"data": str(root), "version": None, "input_hashes": None}
    label = versions.current_version(root) if version in (None, "latest") else version
    if label is None:
        log.warning("%s holds no published KID version (no CURRENT file)", root)
        return info
    path = root / "versions" / label / "manifest.json"
    if not path.is_file():
        raise ProposalError(
            f"KID version '{label}' is not published in {root} (no {path}); published versions: "
            + (", ".join(versions.list_versions(root)) or "none")
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: KID version manifest is unreadable ({exc})") from exc
    inputs = content.get("inputs") or []
    info.update(
        version=content.get("version", label),
        manifest="versions/" + label + "/manifest.json",
        manifest_sha256=_sha256(path),
        content_hash=content.get("content_hash"),
        schema_hash=content.get("schema_hash"),
        input_hashes={str(item["file"]): item["sha256"] for item in inputs},
    )
    return info


def _git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _environment() -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "git": _git_commit(),
    }


def _ensure_kernel(kernel_name: str) -> None:
    """Make sure papermill finds ``kernel_name``; install this interpreter's ipykernel if not."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        log.info("installing kernel spec '%s' into %s", kernel_name, sys.prefix)
        install(kernel_name=kernel_name, prefix=sys.prefix)


def _has_parameters_cell(nb: Any) -> bool:
    return any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in nb.cells)


# ------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ReportRun:
    """The result of :func:`run`: where the report is and what happened to each notebook.

    Attributes
    ----------
    run_dir : Path
        ``<out>/<proposal-id>/<run-id>``.
    manifest : dict
        The content of ``manifest.json``.
    """

    run_dir: Path
    manifest: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True when every notebook ran to the end."""
        return bool(self.manifest["ok"])

    @property
    def run_id(self) -> str:
        """The run's id (folder name)."""
        return str(self.manifest["run_id"])

    def released_files(self) -> list[Path]:
        """Paths of every released file."""
        return [
            self.run_dir / f["path"]
            for out in self.manifest["outputs"]
            if out["status"] == "released"
            for f in out["files"]
        ]

    def summary(self) -> pd.DataFrame:
        """One row per notebook: status, seconds, outputs released and withheld."""
        rows = []
        for nb in self.manifest["notebooks"]:
            outs = [o for o in self.manifest["outputs"] if o["notebook"] == nb["notebook"]]
            rows.append(
                {
                    "notebook": nb["notebook"],
                    "status": nb["status"],
                    "seconds": round(float(nb["seconds"]), 1),
                    "released": sum(o["status"] == "released" for o in outs),
                    "withheld": sum(o["status"] == "withheld" for o in outs),
                    "error": nb["error"] or "",
                }
            )
        return pd.DataFrame(
            rows, columns=["notebook", "status", "seconds", "released", "withheld", "error"]
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per output: notebook, name, kind, status, reasons, files."""
        rows = [
            {
                "notebook": o["notebook"],
                "name": o["name"],
                "kind": o["kind"],
                "status": o["status"],
                "reasons": "; ".join(o["reasons"]),
                "files": ", ".join(f["path"] for f in o["files"]),
            }
            for o in self.manifest["outputs"]
        ]
        return pd.DataFrame(
            rows, columns=["notebook", "name", "kind", "status", "reasons", "files"]
        )

    def __repr__(self) -> str:
        state = "ok" if self.ok else "FAILED"
        return f"ReportRun({state}, {self.run_dir})\n{self.summary().to_string(index=False)}"

    def _repr_html_(self) -> str:
        state = "ok" if self.ok else "FAILED"
        return (
            f"<p>Report run <code>{html.escape(str(self.run_dir))}</code>: {state}</p>"
            + self.summary().to_html(index=False)
        )


@dataclass(frozen=True)
class VerifyResult:
    """The result of :func:`verify`: did a re-run give the same released files?

    Attributes
    ----------
    ok : bool
        True when every released file has the same sha256 in the re-run, no released file was
        changed since the run, and each notebook ended the same way (ok or error).
    run_dir : Path
        The run that was checked.
    comparison : DataFrame
        One row per released file: ``output``, ``original_sha256``, ``rerun_sha256``, ``status``
        (``same``, ``different``, ``missing in re-run``, ``new in re-run``, ``file changed``).
    notes : tuple of str
        Anything else found (KID inputs changed since the run, failed notebooks).
    """

    ok: bool
    run_dir: Path
    comparison: pd.DataFrame
    notes: tuple[str, ...] = ()

    def summary(self) -> pd.DataFrame:
        """Counts of released files by comparison status."""
        counts = self.comparison["status"].value_counts().rename_axis("status")
        return counts.reset_index(name="files").sort_values("status", ignore_index=True)

    def __str__(self) -> str:
        head = "verified: identical released outputs" if self.ok else "NOT verified"
        lines = [f"{head} ({self.run_dir})", self.summary().to_string(index=False)]
        differing = self.comparison[self.comparison["status"] != "same"]
        if len(differing):
            lines.append(differing[["output", "status"]].to_string(index=False))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------- running
def _coerce(value: Any) -> Any:
    """CLI parameters arrive as strings: read numbers, booleans and null; keep the rest."""
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if parsed is None or isinstance(parsed, bool | int | float | list | dict):
        return parsed
    return value


def _run_id(proposal: _Proposal, sources: list[Path], params: dict[str, Any], kid: dict) -> str:
    digest = hashlib.sha256()
    digest.update(proposal.path.read_bytes())
    for src in sources:
        digest.update(src.name.encode())
        digest.update(src.read_bytes() if src.is_file() else b"")
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(json.dumps([kid.get("version"), kid.get("input_hashes")], default=str).encode())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{digest.hexdigest()[:8]}"


def _html_exports(executed: Path, html_dir: Path, *, commissioner: bool) -> dict[str, str]:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    stem = executed.stem
    written: dict[str, str] = {}
    researcher = HTMLExporter(template_name="lab")
    body, _ = researcher.from_notebook_node(nb)
    path = html_dir / f"{stem}.html"
    path.write_text(body, encoding="utf-8")
    written["html"] = path.name
    if commissioner:
        hidden = HTMLExporter(
            template_name="lab",
            exclude_input=True,
            exclude_input_prompt=True,
            exclude_output_prompt=True,
        )
        body, _ = hidden.from_notebook_node(nb)
        path = html_dir / f"{stem}.commissioner.html"
        path.write_text(body, encoding="utf-8")
        written["html_commissioner"] = path.name
    return written


def _collect_outputs(
    staging: Path, released_dir: Path, notebook: str, *, notebook_ok: bool, run_dir: Path
) -> list[dict[str, Any]]:
    outputs: list[dict[str, Any]] = []
    for record_path in sorted(staging.glob(f"*{_RECORD_SUFFIX}")):
        record = json.loads(record_path.read_text(encoding="utf-8"))
        entry: dict[str, Any] = {
            "notebook": notebook,
            "name": record["name"],
            "kind": record["kind"],
            "status": record["status"],
            "reasons": list(record.get("reasons") or []),
            "files": [],
            "sdc_record": record.get("sdc_record"),
        }
        if record["status"] == "released" and not notebook_ok:
            entry["status"] = "withheld"
            entry["reasons"] = [
                "the notebook failed; outputs of a failed notebook are not released"
            ]
        if entry["status"] == "released":
            released_dir.mkdir(parents=True, exist_ok=True)
            for rel in record["files"]:
                target = released_dir / rel
                shutil.copyfile(staging / rel, target)
                entry["files"].append(
                    {"path": target.relative_to(run_dir).as_posix(), "sha256": _sha256(target)}
                )
        outputs.append(entry)
    return outputs


def _audit_refusal(
    proposal_id: str, data: str | os.PathLike[str] | None, detail: dict[str, Any]
) -> None:
    """Write a refusal to the KID's audit log, when a KID folder is known."""
    from kidresearch.audit import AuditLog
    from kidresearch.config import resolve_data

    try:
        folder = resolve_data(data)
    except ProposalError:
        log.warning("refusal not audited (no KID folder): %s", detail["message"])
        return
    if folder.is_dir():
        AuditLog(folder).append(proposal_id, "refused", detail)


def run(
    proposal: str | os.PathLike[str],
    *,
    notebooks: Sequence[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    data: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "reports",
    progress: bool = False,
    notebook_dir: str | os.PathLike[str] | None = None,
    kernel_name: str = KERNEL_NAME,
    timeout: float | None = 1800,
) -> ReportRun:
    """Execute a proposal's approved notebooks and write a reproducible report.

    Parameters
    ----------
    proposal : str or path
        Proposal YAML file, or a proposal id found in ``proposals/``.
    notebooks : sequence of str, optional
        A subset of the proposal's approved notebooks (default: all of them, in its order).
    parameters : mapping, optional
        Extra notebook parameters (``-p key=value`` on the CLI; strings holding numbers,
        booleans or null are read as such). ``proposal``, ``data``, ``kid_version`` (from the
        proposal) and ``output_dir`` are set by the runner and may not be given.
    data : path, optional
        The built KID folder (default: ``$KID_DATA``), passed to each notebook as ``data``.
    out : path, default "reports"
        Reports folder; the run goes into ``<out>/<proposal-id>/<run-id>/``.
    progress : bool, default False
        Show a rich progress bar (on stderr).
    notebook_dir : path, optional
        Folder the proposal's notebook names are relative to (default: the project's
        ``notebooks/``).
    kernel_name : str, default "python3"
        Jupyter kernel; installed from this interpreter on first use if missing.
    timeout : float or None, default 1800
        Seconds a single cell may run before the notebook is failed.

    Returns
    -------
    ReportRun
        ``.ok`` is False when any notebook failed; the others still ran and were reported.

    Raises
    ------
    ProposalError
        The proposal is invalid or expired, approves no notebooks, a notebook file is missing,
        or a reserved parameter was given.
    AccessRefused
        A requested notebook is not approved by the proposal (written to the KID's audit log
        when the KID folder is known).
    """
    import nbformat
    import papermill as pm
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prop = _load_proposal(proposal)
    if not prop.notebooks:
        raise ProposalError(
            f"{prop.path}: proposal '{prop.id}' approves no notebooks (field 'notebooks')"
        )
    if notebooks:
        wanted = [_nb_name(n) for n in notebooks]
        refused = [n for n in wanted if n not in prop.notebooks]
        if refused:
            err = AccessRefused(
                f"Proposal '{prop.id}' ({prop.path}) does not approve notebook(s) "
                f"{', '.join(refused)}; it approves: {', '.join(prop.notebooks)}"
            )
            _audit_refusal(prop.id, data, {"reason": "notebook_not_approved", "message": str(err)})
            raise err
    else:
        wanted = list(prop.notebooks)
    user_params = {k: _coerce(v) for k, v in (parameters or {}).items()}
    reserved = sorted(set(user_params) & set(RESERVED_PARAMETERS))
    if reserved:
        raise ProposalError(
            f"parameter(s) {', '.join(reserved)} are set by the runner and cannot be given "
            "with -p; use --data for the KID folder (the KID version comes from the proposal)"
        )
    folder = Path(notebook_dir) if notebook_dir is not None else _find_dir("notebooks")
    sources = [folder / n for n in wanted]
    missing = [str(s) for s in sources if not s.is_file()]
    if len(missing) == len(sources):
        raise ProposalError(
            f"Proposal '{prop.id}' approves notebook(s) that do not exist: {', '.join(missing)}"
        )

    kid = _kid_info(data, prop.get("kid_version"))
    run_id = _run_id(prop, sources, user_params, kid)
    base = Path(out) / prop.id
    run_dir = base / run_id
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = base / f"{run_id}-{suffix}"
        run_id = run_dir.name
    for sub in ("inputs/notebooks", "executed", "html", "released"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prop.path, run_dir / "proposal.yaml")
    _ensure_kernel(kernel_name)

    started = time.perf_counter()
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    nb_entries: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task(prop.id, total=len(sources))
        for name, src in zip(wanted, sources, strict=True):
            bar.update(task, description=f"{prop.id}: {name}")
            stem = Path(name).with_suffix("").as_posix().replace("/", "__")
            if not src.is_file():
                # Reported like a failing notebook: the proposal's other notebooks still run.
                not_found = f"ReportError: approved notebook {src} does not exist"
                log.warning("proposal %s: %s", prop.id, not_found)
                nb_entries.append(
                    {
                        "notebook": name,
                        "source": str(src),
                        "sha256": None,
                        "status": "error",
                        "error": not_found,
                        "seconds": 0.0,
                        "executed": None,
                        "html": None,
                        "html_commissioner": None,
                    }
                )
                bar.advance(task)
                continue
            copy = run_dir / "inputs" / "notebooks" / f"{stem}.ipynb"
            shutil.copyfile(src, copy)
            executed = run_dir / "executed" / f"{stem}.ipynb"
            staging = run_dir / ".staging" / stem
            staging.mkdir(parents=True, exist_ok=True)
            nb_params = {
                **user_params,
                "proposal": str((run_dir / "proposal.yaml").resolve()),
                "data": kid["data"],
                "output_dir": str(staging.resolve()),
                # The version the proposal is approved for, as resolved for this run.
                "kid_version": kid.get("version"),
            }
            error: str | None = None
            t0 = time.perf_counter()
            try:
                if not _has_parameters_cell(nbformat.read(copy, as_version=4)):
                    raise ReportError(
                        f"{src}: no cell is tagged 'parameters' (every report notebook needs one)"
                    )
                pm.execute_notebook(
                    str(copy),
                    str(executed),
                    parameters=nb_params,
                    kernel_name=kernel_name,
                    cwd=str(staging),
                    progress_bar=False,
                    log_output=False,
                    request_save_on_cell_execute=False,
                    execution_timeout=timeout,
                    # The kernel's own start-up warnings (e.g. about local TCP) are noise here.
                    extra_arguments=["--IPKernelApp.log_level=ERROR"],
                )
            except pm.PapermillExecutionError as exc:
                error = f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
            except Exception as exc:  # any failure (kernel died, bad file) fails this notebook only
                error = f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - t0
            ok = error is None
            if error is not None:
                log.warning("notebook %s of proposal %s failed: %s", name, prop.id, error)
            entry: dict[str, Any] = {
                "notebook": name,
                "source": str(src.resolve()),
                "sha256": _sha256(copy),
                "status": "ok" if ok else "error",
                "error": error,
                "seconds": round(seconds, 3),
                "executed": executed.relative_to(run_dir).as_posix() if executed.exists() else None,
                "html": None,
                "html_commissioner": None,
            }
            if executed.exists():
                try:
                    for key, file in _html_exports(
                        executed, run_dir / "html", commissioner=ok
                    ).items():
                        entry[key] = f"html/{file}"
                except Exception as exc:  # report the export failure, keep the batch going
                    entry["status"] = "error"
                    entry["error"] = (error + "; " if error else "") + f"HTML export failed: {exc}"
                    ok = False
            outputs += _collect_outputs(
                staging, run_dir / "released" / stem, name, notebook_ok=ok, run_dir=run_dir
            )
            nb_entries.append(entry)
            bar.advance(task)
    shutil.rmtree(run_dir / ".staging", ignore_errors=True)

    statuses = [o["status"] for o in outputs]
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "run_id": run_id,
        "created_utc": created,
        "ok": all(nb["status"] == "ok" for nb in nb_entries),
        "proposal": {
            "id": prop.id,
            "title": prop.get("title"),
            "file": "proposal.yaml",
            "source": str(prop.path.resolve()),
            "sha256": _sha256(prop.path),
        },
        "notebook_dir": str(folder.resolve()),
        "parameters": user_params,
        "kid": kid,
        "environment": _environment(),
        "seconds_total": round(time.perf_counter() - started, 3),
        "notebooks": nb_entries,
        "disclosure_control": {
            "outputs": len(outputs),
            "released": statuses.count("released"),
            "withheld": statuses.count("withheld"),
            "released_files": sum(len(o["files"]) for o in outputs),
        },
        "outputs": outputs,
    }
    (run_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, default=str), encoding="utf-8"
    )
    return ReportRun(run_dir, manifest)


def _run_proposal(
    path: Path, data: str | os.PathLike[str] | None, out: str | os.PathLike[str]
) -> tuple[ReportRun | None, str | None]:
    """One proposal of :func:`run_all` (module level, so a worker process can run it)."""
    try:
        return run(path, data=data, out=out, progress=False), None
    except KidError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def run_all(
    *,
    data: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    progress: bool = False,
    proposals: str | os.PathLike[str] | None = None,
    jobs: int | None = None,
) -> int:
    """Run every proposal in ``proposals/`` that approves notebooks, then build the register.

    Parameters
    ----------
    data : path or None
        The built KID folder (None: ``$KID_DATA`` or the config file).
    out : path
        Reports folder; the register is written to ``<out>/register.md`` (and .json, .html).
    progress : bool, default False
        Show a rich progress bar over the proposals.
    proposals : path, optional
        Folder of proposal YAML files (default: ``$KID_PROPOSALS``, the config file's, or
        ``./proposals``).
    jobs : int, optional
        Proposals run at the same time, each in its own worker process (default: up to 2, the
        machine's cores). Released outputs do not depend on it.

    Returns
    -------
    int
        0 when every notebook of every proposal ran, else 8 (the report error code). A proposal
        that cannot run at all (invalid, expired) is logged and counted as a failure.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if proposals is not None:
        folder = Path(proposals)
    else:
        from kidresearch.config import proposal_dirs

        folder = next((d for d in proposal_dirs() if d.is_dir()), _find_dir("proposals"))
    jobs = jobs if jobs is not None else min(2, os.cpu_count() or 1)
    code = 0
    todo: list[Path] = []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            prop = _load_proposal(path)
        except KidError as exc:
            log.error("proposal %s cannot run: %s", path, exc)
            code = ReportError.exit_code
            continue
        if prop.notebooks:
            todo.append(path)
        else:
            log.info("proposal %s approves no notebooks; skipped", prop.id)

    def record(path: Path, result: ReportRun | None, error: str | None) -> None:
        nonlocal code
        if result is None:
            log.error("proposal %s could not run: %s", path, error)
            code = ReportError.exit_code
            return
        log.info("proposal %s: %s\n%s", path.stem, result.run_dir, result.summary().to_string())
        if not result.ok:
            log.warning("proposal %s: a notebook failed (see %s)", path.stem, result.run_dir)
            code = ReportError.exit_code

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} proposals"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("report batch", total=len(todo))
        if jobs > 1 and len(todo) > 1:
            # "spawn": a fresh interpreter per worker, nothing inherited from this process's
            # threads or open database connections.
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_run_proposal, p, data, out): p for p in todo}
                for future in as_completed(futures):
                    record(futures[future], *future.result())
                    bar.advance(task)
        else:
            for path in todo:
                bar.update(task, description=f"report batch: {path.stem}")
                record(path, *_run_proposal(path, data, out))
                bar.advance(task)
    build_register(proposals=folder, reports=out, out=Path(out) / "register.md")
    return code


def verify(
    run_dir: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    rerun: bool = True,
) -> VerifyResult:
    """Re-execute a report run with its manifest's inputs and compare released files by sha256.

    Parameters
    ----------
    run_dir : path
        A run folder written by :func:`run` (holds ``manifest.json``).
    data : path, optional
        KID folder for the re-run (default: the one recorded in the manifest).
    out : path, optional
        Where to keep the re-run (default: a temporary folder, deleted afterwards).
    rerun : bool, default True
        False only checks the released files on disk against the manifest's hashes (fast; finds
        files changed after the run, not whether the analysis reproduces).

    Returns
    -------
    VerifyResult

    Raises
    ------
    ReportError
        ``run_dir`` has no readable ``manifest.json``.
    """
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{manifest_path}: not a readable report manifest ({exc})") from exc
    notes: list[str] = []
    original: dict[str, str] = {}
    changed: set[str] = set()
    rows: list[dict[str, Any]] = []
    for output in manifest["outputs"]:
        for f in output["files"]:
            key = Path(f["path"]).relative_to("released").as_posix()
            original[key] = f["sha256"]
            on_disk = run_dir / f["path"]
            if not on_disk.is_file() or _sha256(on_disk) != f["sha256"]:
                changed.add(key)
                notes.append(f"{f['path']} was changed after the run (sha256 differs)")
    if not rerun:
        for key, digest in sorted(original.items()):
            status = "file changed" if key in changed else "same"
            rows.append(
                {"output": key, "original_sha256": digest, "rerun_sha256": None, "status": status}
            )
        comparison = pd.DataFrame(
            rows, columns=["output", "original_sha256", "rerun_sha256", "status"]
        )
        return VerifyResult(not changed, run_dir, comparison, tuple(notes))
    data = data if data is not None else manifest["kid"].get("data")
    names = [nb["notebook"] for nb in manifest["notebooks"]]
    stems = {n: Path(n).with_suffix("").as_posix().replace("/", "__") for n in names}
    with tempfile.TemporaryDirectory(prefix="kid-verify-") as tmp:
        work = Path(tmp)
        # Re-run the notebooks as they were run (stored copies), under the stored proposal.
        nb_dir = work / "notebooks"
        for name, stem in stems.items():
            target = nb_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            stored = run_dir / "inputs" / "notebooks" / f"{stem}.ipynb"
            if stored.is_file():  # a notebook missing from the run stays missing in the re-run
                shutil.copyfile(stored, target)
        again = run(
            run_dir / "proposal.yaml",
            notebooks=names,
            parameters=manifest.get("parameters") or {},
            data=data,
            out=Path(out) if out is not None else work / "reports",
            notebook_dir=nb_dir,
        )
        new = {
            Path(f["path"]).relative_to("released").as_posix(): f["sha256"]
            for o in again.manifest["outputs"]
            for f in o["files"]
        }
    if manifest["kid"].get("input_hashes") != again.manifest["kid"].get("input_hashes"):
        notes.append("the KID inputs differ from those of the original run")
    before = {nb["notebook"]: nb["status"] for nb in manifest["notebooks"]}
    after = {nb["notebook"]: nb["status"] for nb in again.manifest["notebooks"]}
    if not again.ok:
        notes.append(
            "notebooks failed in the re-run: "
            + "; ".join(
                f"{nb['notebook']}: {nb['error']}"
                for nb in again.manifest["notebooks"]
                if nb["error"]
            )
        )
    for key in sorted(set(original) | set(new)):
        if key not in new:
            status = "missing in re-run"
        elif key not in original:
            status = "new in re-run"
        else:
            status = "same" if original[key] == new[key] else "different"
        if key in changed:
            status = "file changed"
        rows.append(
            {
                "output": key,
                "original_sha256": original.get(key),
                "rerun_sha256": new.get(key),
                "status": status,
            }
        )
    comparison = pd.DataFrame(rows, columns=["output", "original_sha256", "rerun_sha256", "status"])
    # A run verifies when the re-run gives the same released bytes and each notebook ends the
    # same way (a notebook that failed in the original run is expected to fail again).
    ok = bool(before == after and (comparison["status"] == "same").all())
    return VerifyResult(ok, run_dir, comparison, tuple(notes))


# ------------------------------------------------------------------------------- register
_REGISTER_FIELDS = {
    "title": ("title",),
    "organisation": ("organisation",),
    "lead": ("lead_researcher",),
    "purpose": ("purpose",),
    "approved": ("approved",),
    "expires": ("expires",),
}


def _register_entry(path: Path) -> dict[str, Any]:
    from kidresearch.access import load_proposal

    model = load_proposal(path)
    prop = _Proposal(model.id, path, (), model.model_dump(mode="json"))
    entry: dict[str, Any] = {"id": prop.id}
    for key, spellings in _REGISTER_FIELDS.items():
        value = prop.get(*spellings)
        entry[key] = None if value is None else " ".join(str(value).split())
    entry["runs"] = []
    return entry


def _data_files(output: Mapping[str, Any]) -> list[dict[str, str]]:
    """The released data files of an output (the .sdc.json sidecars are in the JSON register)."""
    return [f for f in output["files"] if not f["path"].endswith(".sdc.json")]


def build_register(
    *,
    proposals: str | os.PathLike[str],
    reports: str | os.PathLike[str],
    out: str | os.PathLike[str],
) -> Path:
    """Write the public register of approved proposals and their released outputs.

    Writes ``out`` (Markdown) and, beside it, the same content as JSON (``.json``) and HTML
    (``.html``). Only released outputs are listed by name (with sha256); withheld outputs are
    counted, never described.

    Parameters
    ----------
    proposals : path
        Folder of proposal YAML files.
    reports : path
        Reports folder; every ``*/*/manifest.json`` under it is read.
    out : path
        Markdown file to write.

    Returns
    -------
    Path
        The Markdown file.

    Raises
    ------
    ProposalError
        A proposal file is unreadable or has no id.
    """
    entries = {
        e["id"]: e for e in (_register_entry(p) for p in sorted(Path(proposals).glob("*.y*ml")))
    }
    reports = Path(reports)
    for manifest_path in sorted(reports.glob("*/*/manifest.json")):
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ReportError(f"{manifest_path}: not a readable report manifest ({exc})") from exc
        pid = manifest["proposal"]["id"]
        if pid not in entries:
            log.warning(
                "%s: proposal '%s' is not in %s; left out of the register",
                manifest_path,
                pid,
                proposals,
            )
            continue
        released = [
            {
                "notebook": o["notebook"],
                "name": o["name"],
                "kind": o["kind"],
                "files": [
                    {
                        "path": (manifest_path.parent / f["path"]).relative_to(reports).as_posix(),
                        "sha256": f["sha256"],
                    }
                    for f in o["files"]
                ],
            }
            for o in manifest["outputs"]
            if o["status"] == "released"
        ]
        entries[pid]["runs"].append(
            {
                "run_id": manifest["run_id"],
                "date": manifest["created_utc"][:10],
                "kid_version": manifest["kid"].get("version"),
                "ok": manifest["ok"],
                "released": released,
                "withheld": sum(o["status"] == "withheld" for o in manifest["outputs"]),
            }
        )
    register = {"proposals": [entries[k] for k in sorted(entries)]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(register, indent=2), encoding="utf-8")

    lines = [
        "# Public register of approved proposals and released outputs",
        "",
        "Built by `kid register` from the approved proposals and the report manifests. Only outputs "
        "that passed disclosure control are listed; withheld outputs are counted, not described.",
        "",
    ]
    for e in register["proposals"]:
        lines += [f"## {e['id']}: {e['title'] or '(untitled)'}", ""]
        lines += [
            f"- **{k.capitalize()}:** {e[k] or 'not stated'}"
            for k in ("organisation", "lead", "purpose", "approved", "expires")
        ]
        lines.append("")
        if not e["runs"]:
            lines += ["No report runs yet.", ""]
        for r in e["runs"]:
            state = "complete" if r["ok"] else "incomplete (a notebook failed)"
            lines += [
                f"### Run {r['run_id']} ({r['date']}, KID version {r['kid_version'] or 'n/a'}, {state})",
                "",
                f"{len(r['released'])} output(s) released, {r['withheld']} withheld.",
                "",
            ]
            if r["released"]:
                lines += ["| notebook | output | kind | file | sha256 |", "|---|---|---|---|---|"]
                for o in r["released"]:
                    for f in _data_files(o):
                        lines.append(
                            f"| {o['notebook']} | {o['name']} | {o['kind']} | `{f['path']}` | `{f['sha256'][:16]}` |"
                        )
                lines.append("")
    out.write_text("\n".join(lines), encoding="utf-8")

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>KID public register</title></head><body>"
    ]
    parts.append("<h1>Public register of approved proposals and released outputs</h1>")
    for e in register["proposals"]:
        parts.append(
            f"<h2>{html.escape(e['id'])}: {html.escape(e['title'] or '(untitled)')}</h2><ul>"
        )
        for k in ("organisation", "lead", "purpose", "approved", "expires"):
            parts.append(f"<li><b>{k.capitalize()}:</b> {html.escape(e[k] or 'not stated')}</li>")
        parts.append("</ul>")
        for r in e["runs"]:
            parts.append(
                f"<h3>Run {html.escape(r['run_id'])} ({r['date']})</h3><p>{len(r['released'])} released, {r['withheld']} withheld.</p><ul>"
            )
            for o in r["released"]:
                for f in _data_files(o):
                    parts.append(
                        f"<li>{html.escape(o['name'])}: <code>{html.escape(f['path'])}</code></li>"
                    )
            parts.append("</ul>")
    parts.append("</body></html>")
    out.with_suffix(".html").write_text("".join(parts), encoding="utf-8")
    return out
