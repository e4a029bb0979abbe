"""Where the KID and the proposals live: arguments first, then environment, then a config file.

Resolution order for the KID folder (``data``):

1. the ``data`` argument of the call (``connect(..., data=...)``, ``kid audit verify --data``);
2. the ``KID_DATA`` environment variable;
3. ``data = "..."`` in the ``[kid]`` table of ``kidresearch.toml`` in the working directory, or
   else of ``~/.kidresearch.toml`` (a relative path is taken relative to that file).

Proposal ids are looked up in ``KID_PROPOSALS`` (a folder, or several joined by ``os.pathsep``),
then ``proposals = "..."`` in the same config file, then ``./proposals``.

Example ``kidresearch.toml``::

    [kid]
    data = "demo_data/kid"
    proposals = "proposals"

Examples
--------
>>> import os, tempfile
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp())
>>> resolve_data(folder) == folder.resolve()
True
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from kidresearch.errors import ProposalError

CONFIG_NAME = "kidresearch.toml"
HOME_CONFIG_NAME = ".kidresearch.toml"
DATA_ENV = "KID_DATA"
PROPOSALS_ENV = "KID_PROPOSALS"


def _config_file() -> Path | None:
    for candidate in (Path.cwd() / CONFIG_NAME, Path.home() / HOME_CONFIG_NAME):
        if candidate.is_file():
            return candidate
    return None


def _config_value(key: str) -> Path | None:
    path = _config_file()
    if path is None:
        return None
    try:
        config: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProposalError(f"{path}: cannot read the configuration file: {exc}") from exc
    section = config.get("kid", {})
    if not isinstance(section, dict) or key not in section:
        return None
    value = section[key]
    if not isinstance(value, str):
        raise ProposalError(f"{path}: [kid].{key} must be a path string; got {value!r}")
    resolved = Path(value).expanduser()
    return resolved if resolved.is_absolute() else (path.parent / resolved)


def resolve_data(data: str | os.PathLike[str] | None = None) -> Path:
    """Return the KID folder: ``data``, else ``$KID_DATA``, else the config file's ``data``.

    Raises
    ------
    ProposalError
        If none of them is set (the message says how to set one).
    """
    if data is not None:
        return Path(data).expanduser().resolve()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    configured = _config_value("data")
    if configured is not None:
        return configured.resolve()
    raise ProposalError(
        "No KID folder given: pass data=..., set the KID_DATA environment variable, or put "
        f'data = "<folder>" under [kid] in ./{CONFIG_NAME} or ~/{HOME_CONFIG_NAME}'
    )


def proposal_dirs() -> list[Path]:
    """Folders searched for ``<id>.yaml`` when a proposal is given by id."""
    env = os.environ.get(PROPOSALS_ENV)
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    configured = _config_value("proposals")
    if configured is not None:
        return [configured]
    return [Path.cwd() / "proposals"]
