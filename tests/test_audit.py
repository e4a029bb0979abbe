"""Tests of kidresearch.audit: the hash chain, HEAD anchor, tamper detection, show and the CLI.

Each way of tampering (edit, edit with a recomputed hash, removal, reordering, truncated tail,
lost HEAD, cut mid-line) is done by hand on the file, and ``verify`` must fail naming it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pytest

from kidresearch.audit import GENESIS_HASH, AuditLog, canonical, show, verify
from kidresearch.cli import main
from kidresearch.errors import AuditError, ProposalError


@pytest.fixture
def kid_dir(tmp_path: Path) -> Path:
    log = AuditLog(tmp_path)
    for i, (proposal, action) in enumerate(
        [("p1", "connect"), ("p1", "table"), ("p2", "connect"), ("p1", "sql"), ("p2", "refused")]
    ):
        log.append(proposal, action, {"step": i}, rows=i if action == "sql" else None, user="u")
    return tmp_path


def lines(kid_dir: Path) -> list[str]:
    return (kid_dir / "audit" / "audit.log").read_text().splitlines()


def rewrite(kid_dir: Path, new_lines: list[str]) -> None:
    (kid_dir / "audit" / "audit.log").write_text("".join(f"{ln}\n" for ln in new_lines))


def test_entries_chain_by_hand_computed_sha256(kid_dir: Path) -> None:
    entries = [json.loads(ln) for ln in lines(kid_dir)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    prev = GENESIS_HASH
    for entry in entries:
        body = {k: v for k, v in entry.items() if k != "hash"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        assert entry["prev_hash"] == prev
        assert entry["hash"] == hashlib.sha256(text.encode()).hexdigest()
        assert canonical(entry) == text
        prev = entry["hash"]
    head = json.loads((kid_dir / "audit" / "HEAD").read_text())
    assert head == {"seq": 5, "hash": prev}
    result = verify(kid_dir)
    assert result.ok and result.entries == 5
    assert "OK: 5 entries" in result.summary()


def test_edited_entry_is_detected(kid_dir: Path) -> None:
    content = lines(kid_dir)
    entry = json.loads(content[3])
    entry["rows"] = 999
    content[3] = json.dumps(entry)
    rewrite(kid_dir, content)
    result = verify(kid_dir)
    assert not result.ok
    assert "line 4 (seq 4): hash does not match its content (edited)" in result.problems


def test_edit_with_recomputed_hash_breaks_the_chain(kid_dir: Path) -> None:
    content = lines(kid_dir)
    entry = json.loads(content[1])
    entry["user"] = "someone-else"
    entry["hash"] = hashlib.sha256(canonical(entry).encode()).hexdigest()
    content[1] = json.dumps(entry)
    rewrite(kid_dir, content)
    result = verify(kid_dir)
    assert not result.ok
    assert any("line 3 (seq 3): prev_hash does not match" in p for p in result.problems)


def test_rehashing_the_last_entry_is_caught_by_head(kid_dir: Path) -> None:
    content = lines(kid_dir)
    entry = json.loads(content[-1])
    entry["action"] = "sql"
    entry["hash"] = hashlib.sha256(canonical(entry).encode()).hexdigest()
    content[-1] = json.dumps(entry)
    rewrite(kid_dir, content)
    result = verify(kid_dir)
    assert not result.ok
    assert any("HEAD (seq 5) does not match the last entry" in p for p in result.problems)


def test_removed_entry_is_detected(kid_dir: Path) -> None:
    content = lines(kid_dir)
    del content[2]
    rewrite(kid_dir, content)
    result = verify(kid_dir)
    assert not result.ok
    assert "line 3: seq 4, expected 3 (an entry was removed or reordered)" in result.problems


def test_removed_first_entry_is_detected(kid_dir: Path) -> None:
    rewrite(kid_dir, lines(kid_dir)[1:])
    result = verify(kid_dir)
    assert not result.ok
    assert "line 1: seq 2, expected 1 (an entry was removed or reordered)" in result.problems


def test_reordered_entries_are_detected(kid_dir: Path) -> None:
    content = lines(kid_dir)
    content[1], content[2] = content[2], content[1]
    rewrite(kid_dir, content)
    result = verify(kid_dir)
    assert not result.ok
    assert "line 2: seq 3, expected 2 (an entry was removed or reordered)" in result.problems


def test_truncated_tail_is_detected_through_head(kid_dir: Path) -> None:
    rewrite(kid_dir, lines(kid_dir)[:3])
    result = verify(kid_dir)
    assert not result.ok
    assert (
        "HEAD records seq 5 but the log ends at seq 3: 2 entries cut from the end "
        "(truncated tail)" in result.problems
    )


def test_deleted_log_or_head_is_detected(kid_dir: Path) -> None:
    (kid_dir / "audit" / "HEAD").unlink()
    result = verify(kid_dir)
    assert not result.ok and "truncated tail cannot be ruled out" in result.summary()
    (kid_dir / "audit" / "audit.log").unlink()
    assert verify(kid_dir).ok  # nothing logged yet and nothing claimed


def test_deleted_log_with_head_is_detected(kid_dir: Path) -> None:
    (kid_dir / "audit" / "audit.log").unlink()
    result = verify(kid_dir)
    assert not result.ok and "is missing but" in result.problems[0]


def test_entry_cut_mid_line_is_detected(kid_dir: Path) -> None:
    path = kid_dir / "audit" / "audit.log"
    path.write_bytes(path.read_bytes()[:-40])
    result = verify(kid_dir)
    assert not result.ok
    assert "the last line is incomplete (the file was cut mid-entry)" in result.problems


def test_append_continues_the_chain_after_reopen(kid_dir: Path) -> None:
    entry = AuditLog(kid_dir).append("p3", "connect", user="v")
    assert entry["seq"] == 6
    assert entry["prev_hash"] == json.loads(lines(kid_dir)[4])["hash"]
    assert verify(kid_dir).ok


def _append_many(args: tuple[str, int]) -> None:
    kid_dir, worker = args
    log = AuditLog(kid_dir)
    for i in range(20):
        log.append(f"p{worker}", "sql", {"i": i}, rows=i, user=f"w{worker}")


def test_concurrent_appends_from_processes_keep_one_chain(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pending = pool.map_async(_append_many, [(str(tmp_path), w) for w in range(4)])
        while not pending.ready():  # verifying during appends must not raise false alarms
            during = verify(tmp_path)
            assert during.ok, during.summary()
        pending.get()
    result = verify(tmp_path)
    assert result.ok, result.summary()
    assert result.entries == 80
    assert [json.loads(ln)["seq"] for ln in lines(tmp_path)] == list(range(1, 81))


def test_show_lists_activity_for_one_proposal(kid_dir: Path) -> None:
    frame = show(kid_dir, proposal="p1")
    assert list(frame.columns) == [
        "seq",
        "timestamp",
        "user",
        "proposal",
        "action",
        "detail",
        "rows",
    ]
    assert list(frame.seq) == [1, 2, 4]
    assert list(frame.action) == ["connect", "table", "sql"]
    assert frame.rows.iloc[2] == 3 and frame.rows.isna().sum() == 2
    assert json.loads(frame.detail.iloc[0]) == {"step": 0}
    assert len(show(kid_dir)) == 5


def test_data_folder_comes_from_kid_data(kid_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KID_DATA", str(kid_dir))
    assert verify().entries == 5
    monkeypatch.delenv("KID_DATA")
    monkeypatch.chdir(kid_dir)
    monkeypatch.setenv("HOME", str(kid_dir))
    with pytest.raises(ProposalError, match="KID_DATA"):
        verify()


def test_unreadable_head_stops_appends(kid_dir: Path) -> None:
    (kid_dir / "audit" / "HEAD").write_text("not json")
    with pytest.raises(AuditError, match="unreadable HEAD"):
        AuditLog(kid_dir).append("p1", "sql")


def test_cli_audit_verify_and_show(
    kid_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["audit", "verify", "--data", str(kid_dir)]) == 0
    assert "Audit log OK" in capsys.readouterr().out
    monkeypatch.setenv("KID_DATA", str(kid_dir))
    assert main(["audit", "show", "--proposal", "p2"]) == 0
    out = capsys.readouterr().out
    assert "refused" in out and "p1" not in out
    rewrite(kid_dir, lines(kid_dir)[:-1])
    assert main(["audit", "verify"]) == 6
    assert "FAILED" in capsys.readouterr().out
