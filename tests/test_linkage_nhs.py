"""NHS number validation: modulus 11 (NHS Data Dictionary, "NHS Number")."""

from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kidresearch.linkage.nhs import (
    check_digit,
    is_valid_nhs_number,
    nhs_number_reason,
    normalise_nhs_number,
    sql_nhs_normalise,
    sql_nhs_valid,
    validate_nhs_number,
)

# Published examples: 943 476 5919 (NHS Digital's example number), 401 023 2137 (NHS Data
# Dictionary worked example) and 174 543 891 -> check digit 2 (peterfisher.me.uk worked example:
# 1x10 + 7x9 + 4x8 + 5x7 + 4x6 + 3x5 + 8x4 + 9x3 + 1x2 = 240; 240 mod 11 = 9; 11 - 9 = 2).
VALID = ["9434765919", "4010232137", "1745438912"]
# Hand computed: 9999999999: 9 x (10+9+...+2) = 486, 486 mod 11 = 2, 11 - 2 = 9 -> valid.
# 8288360750: 8x10+2x9+8x8+8x7+3x6+6x5+0x4+7x3+5x2 = 297 = 27 x 11, 11 - 0 = 11 -> check 0.
VALID_HAND = ["9999999999", "8288360750"]
# Wrong check digit: the valid numbers with the last digit changed.
WRONG_CHECK = ["9434765918", "4010232138", "1745438911", "8288360751"]
# 000000006x: sum 12, 12 mod 11 = 1, 11 - 1 = 10 -> no valid check digit exists.
CHECK_TEN = [f"000000006{d}" for d in range(10)]


@pytest.mark.parametrize("number", VALID + VALID_HAND)
def test_published_and_hand_computed_numbers_are_valid(number: str) -> None:
    assert is_valid_nhs_number(number)
    assert validate_nhs_number(pd.Series([number])).tolist() == [True]


@pytest.mark.parametrize("number", WRONG_CHECK + CHECK_TEN)
def test_wrong_check_digits_and_check_digit_10_are_invalid(number: str) -> None:
    assert not is_valid_nhs_number(number)
    assert validate_nhs_number([number]).tolist() == [False]


def test_check_digit_ten_is_none_and_eleven_is_zero() -> None:
    assert check_digit("000000006") is None
    assert check_digit("828836075") == 0
    assert check_digit("174543891") == 2


@pytest.mark.parametrize(
    "text", ["943 476 5919", "943-476-5919", " 9434765919 ", "943 476-5919", "9434 765 919"]
)
def test_spaces_and_dashes_are_accepted(text: str) -> None:
    assert is_valid_nhs_number(text)
    assert normalise_nhs_number([text]).tolist() == ["9434765919"]


@pytest.mark.parametrize(
    "text",
    [
        "943476591",
        "94347659190",
        "",
        "943476591X",
        "abcdefghij",
        "943.476.5919",
        "９４３４７６５９１９",
    ],
)
def test_wrong_lengths_and_non_digits_are_invalid(text: str) -> None:
    assert not is_valid_nhs_number(text)
    assert normalise_nhs_number([text]).tolist() == [None]


def test_missing_values_are_invalid_not_errors() -> None:
    series = pd.Series(["9434765919", None, pd.NA, float("nan")], dtype=object)
    assert validate_nhs_number(series).tolist() == [True, False, False, False]
    assert not is_valid_nhs_number(None)


def test_vectorised_check_accepts_arrow_and_keeps_the_index() -> None:
    arrow = pa.chunked_array([["9434765919", None], ["4010232137"]])
    assert validate_nhs_number(arrow).tolist() == [True, False, True]
    series = pd.Series(["4010232137", "x"], index=[10, 20])
    assert validate_nhs_number(series).index.tolist() == [10, 20]


def test_reasons_name_the_problem() -> None:
    reasons = nhs_number_reason([None, "", "12", "9434765918", "0000000060", "943 476 5919"])
    assert reasons.tolist() == [
        "nhs_number missing",
        "nhs_number missing",
        "nhs_number not 10 digits",
        "nhs_number fails modulus 11 check",
        "nhs_number fails modulus 11 check",
        None,
    ]


_CON = duckdb.connect()


def _scalar_reference(text: str) -> bool:
    """Reference implementation, written from the NHS Data Dictionary steps."""
    digits = text.replace(" ", "").replace("-", "")
    if len(digits) != 10 or not all(c in "0123456789" for c in digits):
        return False
    total = sum(int(digits[i]) * (10 - i) for i in range(9))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="0123456789 -x", min_size=0, max_size=13), max_size=40))
def test_vectorised_python_and_duckdb_checks_agree_with_the_reference(values: list[str]) -> None:
    expected = [_scalar_reference(v) for v in values]
    assert validate_nhs_number(values).tolist() == expected
    assert [is_valid_nhs_number(v) for v in values] == expected
    con = _CON
    frame = pd.DataFrame({"v": pd.Series(values, dtype=object), "i": range(len(values))})
    con.register("frame", frame)
    rows = con.execute(
        f"SELECT coalesce({sql_nhs_valid(sql_nhs_normalise('v'))}, false) FROM frame ORDER BY i"
    ).fetchall()
    assert [r[0] for r in rows] == expected


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=999_999_999))
def test_every_prefix_has_exactly_one_valid_check_digit_unless_it_is_ten(prefix: int) -> None:
    first = f"{prefix:09d}"
    valid = [d for d in range(10) if is_valid_nhs_number(first + str(d))]
    expected = check_digit(first)
    assert valid == ([] if expected is None else [expected])
