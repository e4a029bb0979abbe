"""kidresearch: research environment for a pseudonymised linked health and social care dataset
modelled on the Kent Integrated Dataset (KID).

The public API is small: :func:`connect` opens a KID version for an approved proposal, and the
recipe modules (``frailty``, ``risk``, ``variation``, ``costs``, ``cohorts``, ``segments``,
``stats``) and disclosure control (``sdc``) work on what it returns. Submodules are imported
lazily, so ``import kidresearch`` is cheap.

Examples
--------
>>> import kidresearch
>>> kidresearch.__version__
'0.1.0'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "schema",
    "synth",
    "linkage",
    "access",
    "audit",
    "sdc",
    "stats",
    "frailty",
    "risk",
    "variation",
    "costs",
    "cohorts",
    "segments",
    "reports",
    "data",
    "errors",
}

__all__ = ["__version__", "connect", *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name == "connect":
        from kidresearch.access import connect

        return connect
    if name in _SUBMODULES:
        return importlib.import_module(f"kidresearch.{name}")
    raise AttributeError(f"module 'kidresearch' has no attribute '{name}'")
