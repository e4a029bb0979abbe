"""Key files and keyed pseudonyms (RFC 2104 HMAC-SHA256)."""

from __future__ import annotations

import hashlib
import hmac
import stat

import duckdb
import pytest

from kidresearch.errors import BuildError
from kidresearch.linkage import new_key_file
from kidresearch.linkage.pseudonym import (
    PSEUDONYM_HEX_CHARS,
    ensure_secret_file,
    hmac_hex,
    key_fingerprint,
    read_key,
    sql_hmac_hex,
    sql_hmac_params,
)


def test_new_key_file_is_32_random_bytes_with_owner_only_permissions(tmp_path) -> None:
    path = new_key_file(tmp_path / "a.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_key(path)
    assert len(key) == 32
    assert read_key(new_key_file(tmp_path / "b.key")) != key


def test_new_key_file_refuses_to_overwrite(tmp_path) -> None:
    path = new_key_file(tmp_path / "a.key")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        new_key_file(path)
    assert path.read_bytes() == before


def test_bad_key_file_error_names_the_file_but_not_its_content(tmp_path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("not-a-key-secretvalue")
    with pytest.raises(BuildError, match="bad.key") as info:
        read_key(path)
    assert "secretvalue" not in str(info.value)
    with pytest.raises(BuildError, match="does not exist"):
        read_key(tmp_path / "missing.key")


def test_hmac_matches_the_standard_library_and_rfc_4231_vector() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert hmac_hex(b"Jefe", "what do ya want for nothing?", chars=64) == expected
    key = bytes(range(32))
    reference = hmac.new(key, b"9434765919", hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]
    assert hmac_hex(key, "9434765919") == reference


def test_duckdb_hmac_equals_python_hmac_for_many_messages() -> None:
    key = bytes.fromhex("ab" * 32)
    messages = [f"{i:010d}" for i in range(0, 10**10, 10**8)] + ["uprn:100060000001", ""]
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT m, {sql_hmac_hex('m')} FROM unnest($messages) t(m)",
        {**sql_hmac_params(key), "messages": messages},
    ).fetchall()
    assert {m: h for m, h in rows} == {m: hmac_hex(key, m) for m in messages}
    # RFC 4231 vector through DuckDB too (short key padded to the block size).
    row = con.execute(
        f"SELECT {sql_hmac_hex(chr(39) + 'what do ya want for nothing?' + chr(39), chars=64)}",
        sql_hmac_params(b"Jefe"),
    ).fetchone()
    assert row[0] == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_different_keys_give_different_pseudonyms_and_fingerprints() -> None:
    a, b = bytes(32), bytes([1] * 32)
    numbers = [f"{i:010d}" for i in range(1000)]
    assert not {hmac_hex(a, n) for n in numbers} & {hmac_hex(b, n) for n in numbers}
    assert key_fingerprint(a) != key_fingerprint(b)
    assert key_fingerprint(a) not in a.hex()


def test_proposal_secret_is_created_once(tmp_path) -> None:
    path = ensure_secret_file(tmp_path / "restricted" / "proposal_secret")
    content = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ensure_secret_file(path)
    assert path.read_text() == content
