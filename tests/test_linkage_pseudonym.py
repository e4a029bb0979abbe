"""Key files and keyed pseudonyms (RFC 2104 HMAC-SHA256, 63-bit integer ids)."""

from __future__ import annotations

import hashlib
import hmac
import stat

import duckdb
import numpy as np
import pytest

from kidresearch.errors import BuildError
from kidresearch.linkage import new_key_file
from kidresearch.linkage import pseudonym as pseudonym_module
from kidresearch.linkage.pseudonym import (
    check_distinct,
    ensure_secret_file,
    hmac_hex,
    key_fingerprint,
    pseudonym_int,
    pseudonym_ints,
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
    assert hmac_hex(b"Jefe", "what do ya want for nothing?") == expected
    # The id is the first 8 bytes, big-endian, top bit cleared: 0x5bdcc146bf60754e has its top
    # bit clear already, so the id is that number.
    assert pseudonym_int(b"Jefe", "what do ya want for nothing?") == 0x5BDCC146BF60754E
    # RFC 4231 test case 1 (key 20 x 0x0b, "Hi There"): b0344c61d8db3853..., top bit set.
    assert pseudonym_int(b"\x0b" * 20, "Hi There") == 0xB0344C61D8DB3853 - 2**63


def test_fast_ids_equal_the_plain_hmac_reference() -> None:
    key = bytes.fromhex("ab" * 32)
    messages = [f"{i:010d}" for i in range(0, 10**10, 10**7)] + ["", "9434765919"]
    fast = pseudonym_ints(key, messages)
    assert fast.dtype == np.int64 and (fast >= 0).all()
    reference = [
        int.from_bytes(hmac.new(key, m.encode(), hashlib.sha256).digest()[:8], "big") % 2**63
        for m in messages
    ]
    assert fast.tolist() == reference == [pseudonym_int(key, m) for m in messages]
    households = pseudonym_ints(key, ["100060000001"], prefix="uprn:")
    assert households.tolist() == [pseudonym_int(key, "uprn:100060000001")]
    assert households[0] != pseudonym_ints(key, ["100060000001"])[0]
    assert pseudonym_ints(key, []).shape == (0,)


def test_top_bits_are_uniform_enough_to_use_all_63_bits() -> None:
    ids = pseudonym_ints(bytes(32), [f"{i:010d}" for i in range(4000)])
    assert ids.max() > 2**62  # the top remaining bit is used
    assert len(set(ids.tolist())) == 4000


def test_check_distinct_counts_the_values_that_share_an_id(monkeypatch) -> None:
    check_distinct(np.array([5, 1, 7]), "NHS numbers")
    with pytest.raises(BuildError, match=r"^5 distinct UPRNs share .*2 id.*`kid key new"):
        check_distinct(np.array([1, 1, 2, 3, 3, 3, 4]), "UPRNs")
    # Narrowed to 3 bits (8 ids), 20 numbers must collide; the count follows the reference.
    monkeypatch.setattr(pseudonym_module, "ID_BITS", 3)
    key = bytes(range(32))
    numbers = [f"{i:010d}" for i in range(20)]
    ids = pseudonym_ints(key, numbers)
    assert ids.max() < 8 and ids.tolist() == [pseudonym_int(key, n) for n in numbers]
    values, counts = np.unique([pseudonym_int(key, n) for n in numbers], return_counts=True)
    with pytest.raises(BuildError, match=rf"^{counts[counts > 1].sum()} distinct"):
        check_distinct(ids, "NHS numbers")


def test_duckdb_hmac_equals_python_hmac_for_many_messages() -> None:
    key = bytes.fromhex("ab" * 32)
    messages = [f"{i:010d}" for i in range(0, 10**10, 10**8)] + ["uprn:100060000001", ""]
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT m, {sql_hmac_hex('m', chars=32)} FROM unnest($messages) t(m)",
        {**sql_hmac_params(key), "messages": messages},
    ).fetchall()
    assert {m: h for m, h in rows} == {m: hmac_hex(key, m, chars=32) for m in messages}
    row = con.execute(
        f"SELECT {sql_hmac_hex(chr(39) + 'what do ya want for nothing?' + chr(39))}",
        sql_hmac_params(b"Jefe"),
    ).fetchone()
    assert row[0] == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_different_keys_give_different_pseudonyms_and_fingerprints() -> None:
    a, b = bytes(32), bytes([1] * 32)
    numbers = [f"{i:010d}" for i in range(1000)]
    assert not set(pseudonym_ints(a, numbers).tolist()) & set(pseudonym_ints(b, numbers).tolist())
    assert key_fingerprint(a) != key_fingerprint(b)
    assert key_fingerprint(a) not in a.hex()


def test_proposal_secret_is_created_once(tmp_path) -> None:
    path = ensure_secret_file(tmp_path / "restricted" / "proposal_secret")
    content = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ensure_secret_file(path)
    assert path.read_text() == content
