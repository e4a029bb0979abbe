"""Immutable KID versions, published atomically.

Layout of a KID folder::

    KID_DIR/
      CURRENT                      text file: the label of the version researchers get
      versions/<YYYY-MM>/          one immutable version (manifest.json + tables/)
      reports/linkage_<v>.{md,html,json}
      restricted/                  identifiable or secret: never opened by researchers
        quarantine/<v>/<feed>.parquet
        proposal_secret

A version is written into a temporary folder next to ``versions/<v>`` and renamed into place
(``os.rename`` is atomic on one file system), then ``CURRENT`` is replaced with
``os.replace``. A build that fails before the rename leaves the previous versions and
``CURRENT`` exactly as they were.

Incremental monthly versions
----------------------------
``kid build`` adds a month to the latest earlier version ``P`` instead of rebuilding when ``P``
was made by the same builder, key, data dictionary, unit costs and reference files, and the
raw extracts of months <= ``P`` still have the sha256 that ``P``'s manifest lists
(``inputs_by_month``). Otherwise (e.g. a provider re-sent an old month) it builds in full and
the manifest and report say why (``build.reason``); ``kid build --full`` forces a full build.
An incremental version equals a full build of the same extracts, table by table (tests
compare them as sorted data frames, with the quarantine and the report counts):

* **Register and persons** are re-derived whole from every registration and death extract
  (small): linkage depends on the whole register.
* **Touched records**, per event feed: every record_id with a row in a new extract, plus rows
  that ``P`` quarantined as *not in the population register* whose person has registered
  since (they become linkable). Their rows in *all* extracts are validated, linked and
  deduplicated again (a later extract's row with the same record_id replaces the earlier one:
  the reporting-lag corrections), so the latest valid row of each record is known.
* **Dirty years**: event years holding a row that ``P`` published and that is replaced now.
  Those year folders are rewritten whole from their raw rows.
* **Appended rows**: rows published now that were not published in ``P``, in years that are
  not dirty, are written as an extra file ``year=Y/part-<v>-0.parquet`` next to ``P``'s files.
* Every other file (``year=Y/part-*.parquet`` of the events, ``costs/year=Y/<feed>-*.parquet``)
  is **hard-linked** (``os.link``) from ``P`` into the new version's temporary folder, so each
  version is complete and immutable on its own and ``P`` is never modified. Social care and
  hospice costs, which run to the version's month end, are recomputed.
* **Quarantine and counts**: ``P``'s quarantine is carried over for rows not re-staged; rows
  per older extract are ``P``'s counts adjusted by the re-staged rows, and rows in = rows
  linked + rows quarantined is checked for every feed and month as in a full build; the rows
  of the written and linked files must equal rows linked - corrections.

The manifest records the build mode, the previous version, the new months, the years
rewritten and appended per feed, the rows re-linked, and each table file as ``written`` or
``reused`` (with its sha256).

Examples
--------
>>> import tempfile, pathlib
>>> kid = pathlib.Path(tempfile.mkdtemp())
>>> current_version(kid) is None
True
>>> write_current(kid, "2026-10")
>>> current_version(kid)
'2026-10'
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from kidresearch.errors import BuildError

VERSION_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")

__all__ = [
    "VERSION_PATTERN",
    "check_version_label",
    "current_version",
    "list_versions",
    "new_temp_dir",
    "publish_dir",
    "read_manifest",
    "version_dir",
    "write_current",
]


def check_version_label(version: str) -> str:
    """Return ``version`` if it is a YYYY-MM label, else raise :class:`BuildError`."""
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise BuildError(
            f"The 'version' parameter must be a month label YYYY-MM (e.g. '2026-10'). "
            f"Got {version!r} instead."
        )
    return version


def version_dir(kid_dir: str | os.PathLike[str], version: str) -> Path:
    """The folder of ``version`` inside ``kid_dir`` (it may not exist)."""
    return Path(kid_dir) / "versions" / check_version_label(version)


def list_versions(kid_dir: str | os.PathLike[str]) -> list[str]:
    """Published version labels, oldest first."""
    root = Path(kid_dir) / "versions"
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and VERSION_PATTERN.match(p.name) and (p / "manifest.json").is_file()
    )


def current_version(kid_dir: str | os.PathLike[str]) -> str | None:
    """The label in ``KID_DIR/CURRENT``, or ``None`` before the first build."""
    path = Path(kid_dir) / "CURRENT"
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def read_manifest(kid_dir: str | os.PathLike[str], version: str) -> dict:
    """The ``manifest.json`` of a published version."""
    path = version_dir(kid_dir, version) / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(f"Cannot read the manifest of KID version {version}: {path}") from exc


def new_temp_dir(parent: Path, label: str) -> Path:
    """A fresh hidden temporary folder inside ``parent`` (same file system, for rename)."""
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f".tmp-{label}-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path


def publish_dir(temp: Path, final: Path) -> None:
    """Atomically rename the finished folder ``temp`` to ``final`` (which must not exist)."""
    if final.exists():
        raise BuildError(f"{final} already exists; published versions are never overwritten.")
    os.rename(temp, final)


def replace_dir(temp: Path, final: Path) -> None:
    """Rename ``temp`` to ``final``, removing an older ``final`` first (restricted areas only)."""
    if final.exists():
        trash = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        os.rename(temp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(temp, final)


def write_current(kid_dir: str | os.PathLike[str], version: str) -> None:
    """Atomically point ``KID_DIR/CURRENT`` at ``version``."""
    kid_dir = Path(kid_dir)
    kid_dir.mkdir(parents=True, exist_ok=True)
    tmp = kid_dir / f".CURRENT.{uuid.uuid4().hex[:8]}"
    tmp.write_text(check_version_label(version) + "\n", encoding="utf-8")
    os.replace(tmp, kid_dir / "CURRENT")
