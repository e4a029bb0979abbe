"""Shared fixtures: one synthetic demo KID per test run, shared by all xdist workers.

The demo preset is generated and built once into a folder shared by the workers (guarded by a
file lock), so every test that needs data reads the same files without paying for them twice.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DEMO_SEED = 20261126


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Under xdist each worker has its own basetemp; their parent is shared by the run.
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / "shared"


def _once(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]
) -> Path:
    root = _shared_dir(tmp_path_factory)
    target = root / name
    with _locked(root / f"{name}.lock"):
        done = target / ".complete"
        if not done.exists():
            make(target)
            done.write_text(json.dumps({"made_by": os.environ.get("PYTEST_XDIST_WORKER", "main")}))
    return target


@pytest.fixture(scope="session")
def demo_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a generated demo synthetic KID: ``raw/``, ``truth.json``, ``scenario.yaml``."""
    from kidresearch.synth import generate

    return _once(
        tmp_path_factory,
        "demo_synth",
        lambda out: generate("demo", out=out, seed=DEMO_SEED, progress=False),
    )


@pytest.fixture(scope="session")
def demo_truth(demo_synth: Path) -> dict:
    """The generator's ``truth.json`` for the demo KID."""
    return json.loads((demo_synth / "truth.json").read_text())


@pytest.fixture(scope="session")
def demo_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pseudonymisation key file kept outside the KID folder."""
    from kidresearch.linkage import new_key_file

    def make(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        new_key_file(out / "pseudonymisation.key")

    return _once(tmp_path_factory, "demo_key", make) / "pseudonymisation.key"


@pytest.fixture(scope="session")
def demo_kid(tmp_path_factory: pytest.TempPathFactory, demo_synth: Path, demo_key: Path) -> Path:
    """Folder of the built (linked, pseudonymised) research KID from the demo synthetic KID."""
    from kidresearch.linkage import build

    return _once(
        tmp_path_factory,
        "demo_kid",
        lambda out: build(demo_synth / "raw", out, key_file=demo_key, progress=False),
    )


_ALL_TABLES_PROPOSAL = """\
id: recipes-tests
title: Recipe tests against the synthetic truth
lead_researcher: Test suite
organisation: kidresearch
purpose: Check the analysis recipes against the demo KID's truth file.
approved: 2026-01-01
expires: 2099-01-01
kid_version: latest
tables:
{tables}
study_period:
  start: 1900-01-01
  end: 2099-12-31
"""


@pytest.fixture(scope="module")
def demo_session(demo_kid: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A KID session on the demo KID for a proposal approving every research table.

    The study period starts in 1900 because the eFI needs every coded event ever recorded.
    Module-scoped: each test module (and so each xdist worker) opens its own session on the
    shared, read-only demo KID.
    """
    import kidresearch
    from kidresearch.schema import RESEARCH_TABLES

    folder = tmp_path_factory.mktemp("recipes_proposal")
    path = folder / "recipes-tests.yaml"
    tables = "\n".join(f"  {name}: all" for name in RESEARCH_TABLES)
    path.write_text(_ALL_TABLES_PROPOSAL.format(tables=tables))
    kid = kidresearch.connect(path, data=demo_kid, user="tests")
    yield kid
    kid.close()
