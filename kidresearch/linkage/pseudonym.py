"""Keyed pseudonyms: HMAC-SHA256 of the NHS number (person) and of the UPRN (household).

The key is 32 random bytes kept in a file *outside* the research environment (``kid key new``).
It is read into memory for the build and never written into the KID, the reports or the logs;
only :func:`key_fingerprint` (itself an HMAC, which does not reveal the key) is recorded so that
a version says which key made it.

``person_id`` is the first :data:`PSEUDONYM_HEX_CHARS` (32) hex characters of
HMAC-SHA256(key, normalised NHS number), i.e. 128 bits. For n = 2.5 million people the chance
that any two collide is about n**2 / 2**129, roughly 1e-26. ``household_id`` is
HMAC-SHA256(key, "uprn:" + UPRN) truncated the same way; the prefix keeps the two id spaces
apart.

The build computes the HMAC of each *distinct* NHS number and UPRN once
(:func:`hmac_hex_many`, about 2 million at Kent scale) and joins the result back in DuckDB;
:func:`hmac_hex` is the plain :mod:`hmac` reference implementation, and the tests check they
agree. :func:`sql_hmac_hex` is the same construction in DuckDB SQL (over its ``sha256``), for
callers that must not move values out of the database; it is about half as fast.

Examples
--------
>>> key = bytes(range(32))
>>> hmac_hex(key, "9434765919") == hmac_hex(key, "9434765919")
True
>>> hmac_hex(key, "9434765919") != hmac_hex(bytes(32), "9434765919")
True
>>> len(hmac_hex(key, "9434765919"))
32
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from kidresearch.errors import BuildError

KEY_BYTES = 32
PSEUDONYM_HEX_CHARS = 32
HOUSEHOLD_PREFIX = "uprn:"
_BLOCK = 64  # SHA-256 block size in bytes (RFC 2104)

__all__ = [
    "HOUSEHOLD_PREFIX",
    "KEY_BYTES",
    "PSEUDONYM_HEX_CHARS",
    "ensure_secret_file",
    "hmac_hex",
    "hmac_hex_many",
    "key_fingerprint",
    "new_key_file",
    "read_key",
    "sql_hmac_hex",
    "sql_hmac_params",
]


def _write_secret(path: Path, *, refuse_existing: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if refuse_existing:
            raise FileExistsError(
                f"{path} already exists; refusing to overwrite a key (pseudonyms made with it "
                "would no longer match). Choose a new path or delete the old key deliberately."
            ) from None
        return path
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(KEY_BYTES) + "\n")
    os.chmod(path, 0o600)
    return path


def new_key_file(path: str | os.PathLike[str]) -> Path:
    """Write a new random 32-byte pseudonymisation key (64 hex characters), mode 0600.

    Parameters
    ----------
    path
        Where to write it: outside the KID folder and the research environment.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileExistsError
        If ``path`` exists (a key is never overwritten).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> key = new_key_file(folder / "kid.key")
    >>> oct(key.stat().st_mode & 0o777), len(read_key(key))
    ('0o600', 32)
    """
    return _write_secret(Path(path), refuse_existing=True)


def ensure_secret_file(path: str | os.PathLike[str]) -> Path:
    """Create a random 32-byte secret (hex, mode 0600) at ``path`` unless one is already there."""
    return _write_secret(Path(path), refuse_existing=False)


def read_key(path: str | os.PathLike[str]) -> bytes:
    """Read a key file written by :func:`new_key_file` and return the 32 key bytes.

    Raises
    ------
    BuildError
        If the file is missing or is not 64 hex characters; the message names the file but
        never shows its content.
    """
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"Key file {path} does not exist; create one with `kid key new {path}`.")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise BuildError(
            f"Key file {path} is not a pseudonymisation key: expected {2 * KEY_BYTES} hex "
            f"characters (32 bytes), found {len(text)} characters."
        )
    return key


def hmac_hex(key: bytes, message: str, *, chars: int = PSEUDONYM_HEX_CHARS) -> str:
    """HMAC-SHA256 of ``message`` under ``key`` as lower-case hex, truncated to ``chars``."""
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()[:chars]


def hmac_hex_many(
    key: bytes, messages: list[str], *, prefix: str = "", chars: int = PSEUDONYM_HEX_CHARS
) -> list[str]:
    """HMAC-SHA256 (hex, truncated) of ``prefix + m`` for every message: RFC 2104 with the
    padded-key hash states computed once and copied per message (about twice as fast as
    :func:`hmac.new` per message). Used on *distinct* NHS numbers and UPRNs only.

    Examples
    --------
    >>> key = bytes(range(32))
    >>> hmac_hex_many(key, ["9434765919"]) == [hmac_hex(key, "9434765919")]
    True
    """
    ipad, opad = _pads(key)
    inner, outer = hashlib.sha256(ipad), hashlib.sha256(opad)
    head = prefix.encode("utf-8")

    def one(message: str) -> str:
        first = inner.copy()
        first.update(head + message.encode("utf-8"))
        second = outer.copy()
        second.update(first.digest())
        return second.hexdigest()[:chars]

    return [one(m) for m in messages]


def key_fingerprint(key: bytes) -> str:
    """A non-secret label of the key (an HMAC of a fixed text), to record which key was used."""
    return hmac_hex(key, "kidresearch key fingerprint", chars=16)


def _pads(key: bytes) -> tuple[bytes, bytes]:
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def sql_hmac_hex(expression: str, *, chars: int = PSEUDONYM_HEX_CHARS) -> str:
    """DuckDB SQL for HMAC-SHA256 (hex, truncated to ``chars``) over a VARCHAR expression.

    The SQL uses the named parameters ``$ipad`` and ``$opad``; pass
    :func:`sql_hmac_params` ``(key)``. The key travels as a query parameter, so it never
    appears in SQL text or query logs.

    Examples
    --------
    >>> import duckdb
    >>> key = bytes(range(32))
    >>> con = duckdb.connect()
    >>> sql = sql_hmac_hex("'9434765919'")
    >>> con.execute(f"SELECT {sql}", sql_hmac_params(key)).fetchone()[0] == hmac_hex(
    ...     key, "9434765919"
    ... )
    True
    """
    inner = f"unhex(sha256($ipad || CAST({expression} AS BLOB)))"
    return f"left(sha256($opad || {inner}), {chars})"


def sql_hmac_params(key: bytes) -> dict[str, bytes]:
    """The DuckDB parameters ``ipad``/``opad`` for :func:`sql_hmac_hex` derived from ``key``."""
    ipad, opad = _pads(key)
    return {"ipad": ipad, "opad": opad}
