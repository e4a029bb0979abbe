"""The access log: an append-only, hash-chained JSON-lines file beside the KID.

Every ``connect``, table access, query and refusal is one line of ``<KID>/audit/audit.log``::

    {"action": "sql", "detail": {...}, "hash": "...", "prev_hash": "...", "proposal": "...",
     "rows": null, "seq": 7, "timestamp": "2026-11-26T08:00:00.123456+00:00", "user": "alice"}

``hash`` is the SHA-256 of the entry's canonical JSON (sorted keys, no spaces, without ``hash``),
which includes ``prev_hash``, the hash of the entry before it (64 zeros for the first). Editing an
entry breaks its hash; removing or reordering entries breaks ``seq`` and the chain. Cutting the
last entries off leaves a valid chain, so ``<KID>/audit/HEAD`` records the last ``seq`` and
``hash`` and is replaced atomically after each append; :func:`verify` compares the two. (Whoever
can rewrite both the log and HEAD can rewrite history: copy HEAD somewhere else, e.g. the
nightly backup, to anchor it.)

The log holds who, which proposal, when, what (table names, a fingerprint of the SQL) and how many
rows came back, never row data. Appends take an exclusive ``fcntl`` lock on the log, write with
``O_APPEND`` and ``fsync`` before the lock is released, so concurrent sessions interleave whole
lines and keep the chain.

Examples
--------
>>> import tempfile
>>> kid_dir = tempfile.mkdtemp()
>>> log = AuditLog(kid_dir)
>>> entry = log.append("demo-proposal", "connect", {"version": "2026-10"}, user="alice")
>>> entry["seq"], entry["prev_hash"] == GENESIS_HASH
(1, True)
>>> _ = log.append("demo-proposal", "sql", {"fingerprint": "ab12"}, rows=3, user="alice")
>>> verify(kid_dir).ok
True
>>> show(kid_dir)[["seq", "action", "rows"]].to_string(index=False)
' seq  action  rows\\n   1 connect  <NA>\\n   2     sql     3'
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from kidresearch.config import resolve_data
from kidresearch.errors import AuditError

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
LOG_NAME = "audit.log"
HEAD_NAME = "HEAD"
USER_ENV = "KID_USER"
_FIELDS = ("seq", "timestamp", "user", "proposal", "action", "detail", "rows", "prev_hash", "hash")


def current_user(user: str | None = None) -> str:
    """The user to record: ``user``, else ``$KID_USER``, else the login name."""
    if user:
        return user
    env = os.environ.get(USER_ENV)
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return f"uid-{os.getuid()}"


def canonical(entry: Mapping[str, Any]) -> str:
    """The canonical JSON of an entry without its ``hash``: what ``hash`` is the SHA-256 of."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical` of ``entry``; it covers ``prev_hash``."""
    return hashlib.sha256(canonical(entry).encode("utf-8")).hexdigest()


def _audit_dir(data: str | os.PathLike[str] | None) -> Path:
    return resolve_data(data) / "audit"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _last_line(path: Path) -> str | None:
    """The last non-empty line of ``path`` (read from the end, so long logs stay cheap)."""
    if not path.exists():
        return None
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        block, data = 4096, b""
        pos = end
        while pos > 0:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
            if data.strip(b"\n").count(b"\n") >= 1:
                break
        lines = [ln for ln in data.split(b"\n") if ln.strip()]
        return lines[-1].decode("utf-8") if lines else None


class AuditLog:
    """The audit log of one KID folder.

    Parameters
    ----------
    data
        The KID folder (``KID_DATA`` when ``None``); the log lives in its ``audit/`` folder.
    """

    def __init__(self, data: str | os.PathLike[str] | None = None) -> None:
        self.dir = _audit_dir(data)
        self.path = self.dir / LOG_NAME
        self.head_path = self.dir / HEAD_NAME

    def _tail(self) -> tuple[int, str]:
        """(last seq, last hash) from HEAD, or from the log's last line when HEAD is absent."""
        if self.head_path.exists():
            try:
                head = json.loads(self.head_path.read_text(encoding="utf-8"))
                return int(head["seq"]), str(head["hash"])
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditError(
                    f"{self.head_path}: unreadable HEAD ({exc}); run `kid audit verify`"
                ) from exc
        last = _last_line(self.path)
        if last is None:
            return 0, GENESIS_HASH
        try:
            entry = json.loads(last)
            return int(entry["seq"]), str(entry["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(
                f"{self.path}: last line is not a valid entry ({exc}); run `kid audit verify`"
            ) from exc

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_name(f".{HEAD_NAME}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"seq": seq, "hash": digest}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.head_path)

    def append(
        self,
        proposal: str,
        action: str,
        detail: Mapping[str, Any] | None = None,
        *,
        rows: int | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Append one entry and return it (with its ``seq`` and ``hash``).

        ``detail`` must hold metadata only (table names, fingerprints, reasons), never row data.

        Raises
        ------
        AuditError
            If the log cannot be written; access must not go on unrecorded.
        """
        try:
            with _locked(self.path) as fd:
                seq, prev = self._tail()
                entry: dict[str, Any] = {
                    "seq": seq + 1,
                    "timestamp": datetime.now(UTC).isoformat(),
                    "user": current_user(user),
                    "proposal": proposal,
                    "action": action,
                    "detail": dict(detail or {}),
                    "rows": None if rows is None else int(rows),
                    "prev_hash": prev,
                }
                entry["hash"] = entry_hash(entry)
                line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
                self._write_head(entry["seq"], entry["hash"])
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append to the audit log: {exc}") from exc
        log.debug("audit %s %s seq=%s", proposal, action, entry["seq"])
        return entry

    def read(self) -> list[dict[str, Any]]:
        """All entries, in file order (no verification; see :func:`verify`)."""
        if not self.path.exists():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except ValueError as exc:
                raise AuditError(f"{self.path}: line {number} is not JSON: {exc}") from exc
        return entries


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`.

    Attributes
    ----------
    ok
        ``True`` when the chain, the sequence numbers and HEAD all agree.
    problems
        One message per problem, naming the line and what was expected.
    entries
        Number of entries read.
    path
        The log file checked.
    """

    ok: bool
    problems: tuple[str, ...] = field(default_factory=tuple)
    entries: int = 0
    path: Path | None = None

    def summary(self) -> str:
        """A short human-readable verdict."""
        if self.ok:
            return f"Audit log OK: {self.entries} entries, hash chain and HEAD intact ({self.path})"
        lines = [f"Audit log FAILED verification ({self.path}): {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def verify(data: str | os.PathLike[str] | None = None) -> VerifyResult:
    """Check the audit log of a KID folder for edited, removed, reordered or truncated entries.

    Parameters
    ----------
    data
        The KID folder (``KID_DATA`` when ``None``).

    Returns
    -------
    VerifyResult
        ``ok`` is ``False`` with one message per problem found.

    Examples
    --------
    >>> import tempfile
    >>> kid_dir = tempfile.mkdtemp()
    >>> for action in ("connect", "table", "sql"):
    ...     _ = AuditLog(kid_dir).append("p1", action, user="u")
    >>> path = AuditLog(kid_dir).path
    >>> lines = path.read_text().splitlines()
    >>> _ = path.write_text("\\n".join([lines[0], lines[2]]) + "\\n")  # remove an entry
    >>> result = verify(kid_dir)
    >>> result.ok
    False
    >>> print(result.problems[0])
    line 2: seq 3, expected 2 (an entry was removed or reordered)
    """
    audit = AuditLog(data)
    problems: list[str] = []
    if not audit.path.exists():
        if audit.head_path.exists():
            problems.append(f"{audit.path} is missing but {audit.head_path} records entries")
        return VerifyResult(not problems, tuple(problems), 0, audit.path)

    prev_hash, expected_seq, count = GENESIS_HASH, 1, 0
    last_seq, last_hash = 0, GENESIS_HASH
    # A shared lock: an append in progress (line written, HEAD not yet replaced) is not
    # mistaken for a rewritten tail.
    with open(audit.path, encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        try:
            text = fh.read()
            head_text = (
                audit.head_path.read_text(encoding="utf-8") if audit.head_path.exists() else None
            )
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    if text and not text.endswith("\n"):
        problems.append("the last line is incomplete (the file was cut mid-entry)")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            problems.append(f"line {number}: empty line")
            continue
        try:
            entry = json.loads(line)
            seq = int(entry["seq"])
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"line {number}: not a valid entry ({exc})")
            continue
        count += 1
        missing = [f for f in _FIELDS if f not in entry]
        if missing:
            problems.append(f"line {number}: missing field(s) {', '.join(missing)}")
        if seq != expected_seq:
            problems.append(
                f"line {number}: seq {seq}, expected {expected_seq} "
                "(an entry was removed or reordered)"
            )
        if entry.get("prev_hash") != prev_hash:
            problems.append(
                f"line {number} (seq {seq}): prev_hash does not match the hash of the entry "
                "before it (the chain is broken)"
            )
        if entry.get("hash") != entry_hash(entry):
            problems.append(f"line {number} (seq {seq}): hash does not match its content (edited)")
        prev_hash = str(entry.get("hash"))
        expected_seq = seq + 1
        last_seq, last_hash = seq, prev_hash

    if head_text is None:
        if count:
            problems.append(f"{audit.head_path} is missing: a truncated tail cannot be ruled out")
    else:
        try:
            head = json.loads(head_text)
            head_seq, head_hash = int(head["seq"]), str(head["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{audit.head_path}: unreadable ({exc})")
        else:
            if head_seq > last_seq:
                problems.append(
                    f"HEAD records seq {head_seq} but the log ends at seq {last_seq}: "
                    f"{head_seq - last_seq} entr{'y' if head_seq - last_seq == 1 else 'ies'} "
                    "cut from the end (truncated tail)"
                )
            elif head_seq != last_seq or head_hash != last_hash:
                problems.append(
                    f"HEAD (seq {head_seq}) does not match the last entry (seq {last_seq}): the "
                    "tail was rewritten"
                )
    return VerifyResult(not problems, tuple(problems), count, audit.path)


def show(data: str | os.PathLike[str] | None = None, proposal: str | None = None) -> pd.DataFrame:
    """The logged activity as a table, optionally for one proposal.

    Returns
    -------
    pandas.DataFrame
        One row per entry: seq, timestamp, user, proposal, action, detail (compact JSON), rows.
    """
    entries = AuditLog(data).read()
    if proposal is not None:
        entries = [e for e in entries if e.get("proposal") == proposal]
    columns = ["seq", "timestamp", "user", "proposal", "action", "detail", "rows"]
    frame = pd.DataFrame(
        {
            "seq": pd.array([e.get("seq") for e in entries], dtype="Int64"),
            "timestamp": [e.get("timestamp") for e in entries],
            "user": [e.get("user") for e in entries],
            "proposal": [e.get("proposal") for e in entries],
            "action": [e.get("action") for e in entries],
            "detail": [
                json.dumps(e.get("detail", {}), sort_keys=True, separators=(",", ":"))
                for e in entries
            ],
            "rows": pd.array([e.get("rows") for e in entries], dtype="Int64"),
        },
        columns=columns,
    )
    return frame
