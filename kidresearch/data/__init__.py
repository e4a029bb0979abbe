"""Reference data shipped with kidresearch: code lists, unit costs, standard populations.

Every file here has its source, version or date and licence in ``SOURCES.md`` beside it, and is
loaded through :func:`load` so that notebooks, recipes and the synthetic generator read the same
copy.

Examples
--------
>>> from kidresearch.data import available
>>> isinstance(available(), list)
True
"""

from __future__ import annotations

from importlib import resources

import pandas as pd
import yaml


def _root():
    return resources.files("kidresearch.data")


def available() -> list[str]:
    """Names (without extension) of the reference data files shipped with the package."""
    return sorted(
        p.name.rsplit(".", 1)[0]
        for p in _root().iterdir()
        if p.name.endswith((".csv", ".yaml")) and not p.name.startswith("_")
    )


def load(name: str, **read_csv_kwargs: object) -> pd.DataFrame:
    """Load a CSV reference table by name, e.g. ``load("unit_costs")``.

    Raises
    ------
    FileNotFoundError
        If no ``<name>.csv`` ships with the package; the message lists what does.
    """
    path = _root() / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"No reference table '{name}' in kidresearch/data. Available: {', '.join(available())}"
        )
    with path.open("rb") as fh:
        return pd.read_csv(fh, **read_csv_kwargs)  # type: ignore[arg-type]


def load_yaml(name: str) -> object:
    """Load a YAML reference file by name (without extension)."""
    path = _root() / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"No reference file '{name}.yaml' in kidresearch/data. Available: {', '.join(available())}"
        )
    with path.open("r", encoding="utf-8") as fh:
        return yaml.safe_load(fh)
