"""NHS number validation and normalisation (modulus 11), vectorised.

An NHS number is 10 digits. The 10th is a check digit: multiply the first nine digits by the
weights 10, 9, ..., 2, sum, take the remainder modulo 11 and subtract it from 11. A result of 11
becomes a check digit of 0; a result of 10 means the number is invalid (no such NHS number is
issued). Source: NHS Data Dictionary, "NHS Number" (data element), and NHS Digital's
"Check digit" guidance.

Providers send numbers as ``9434765919``, ``943 476 5919`` or ``943-476-5919``; spaces and dashes
are removed before checking. Anything else (letters, other lengths) is invalid.

Examples
--------
>>> is_valid_nhs_number("943 476 5919")
True
>>> import pandas as pd
>>> validate_nhs_number(pd.Series(["9434765919", "9434765918", None, "943-476-5919"])).tolist()
[True, False, False, True]
>>> normalise_nhs_number(pd.Series(["943 476 5919", "12345"])).tolist()
['9434765919', None]
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa

NHS_NUMBER_WEIGHTS: tuple[int, ...] = (10, 9, 8, 7, 6, 5, 4, 3, 2)  # on the first nine digits
_WEIGHTS = np.array(NHS_NUMBER_WEIGHTS, dtype=np.int64)
_SEPARATORS = re.compile(r"[\s-]")
_TEN_DIGITS = re.compile(r"\d{10}")

__all__ = [
    "NHS_NUMBER_WEIGHTS",
    "check_digit",
    "is_valid_nhs_number",
    "nhs_number_reason",
    "normalise_nhs_number",
    "sql_nhs_normalise",
    "sql_nhs_valid",
    "validate_nhs_number",
]


def check_digit(first_nine: str) -> int | None:
    """The modulus 11 check digit of the first nine digits, or ``None`` when it would be 10.

    Examples
    --------
    >>> check_digit("943476591")
    9
    >>> check_digit("828836075")  # weighted sum 297 = 27 x 11: 11 - 0 = 11 -> 0
    0
    >>> check_digit("000000006") is None  # 11 - 1 == 10: never issued
    True
    """
    if len(first_nine) != 9 or not first_nine.isdigit():
        raise ValueError(f"first_nine must be 9 digits; got {first_nine!r}")
    total = sum(int(d) * w for d, w in zip(first_nine, NHS_NUMBER_WEIGHTS, strict=True))
    digit = 11 - total % 11
    if digit == 11:
        return 0
    if digit == 10:
        return None
    return digit


def is_valid_nhs_number(value: str | None) -> bool:
    """Whether one NHS number (spaces and dashes allowed) passes the modulus 11 check.

    Examples
    --------
    >>> is_valid_nhs_number("9434765919"), is_valid_nhs_number("9434765910")
    (True, False)
    >>> is_valid_nhs_number("94347659"), is_valid_nhs_number(None)
    (False, False)
    """
    if not isinstance(value, str):
        return False
    digits = _SEPARATORS.sub("", value)
    if not _TEN_DIGITS.fullmatch(digits) or not digits.isascii():
        return False
    expected = check_digit(digits[:9])
    return bool(expected is not None and expected == int(digits[9]))


def _as_series(values: pd.Series | pa.Array | pa.ChunkedArray | list) -> pd.Series:
    if isinstance(values, pd.Series):
        return values
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return pd.Series(values.to_pylist(), dtype="object")
    return pd.Series(list(values), dtype="object")


def _valid_mask(digits: pd.Series) -> np.ndarray:
    """Modulus 11 over a Series of separator-free strings (or missing), as a numpy bool array."""
    text = digits.astype("string")
    shaped = text.str.fullmatch(r"[0-9]{10}").fillna(False).to_numpy(dtype=bool)
    valid = np.zeros(len(text), dtype=bool)
    if not shaped.any():
        return valid
    raw = text[shaped].to_numpy(dtype=object).astype("S10")
    matrix = np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(-1, 10).astype(np.int64) - 48
    check = 11 - (matrix[:, :9] @ _WEIGHTS) % 11
    check[check == 11] = 0
    valid[shaped] = (check != 10) & (check == matrix[:, 9])
    return valid


def validate_nhs_number(values: pd.Series | pa.Array | pa.ChunkedArray | list) -> pd.Series:
    """Vectorised modulus 11 check: a boolean Series, ``False`` for missing values.

    Parameters
    ----------
    values
        NHS numbers as strings (spaces and dashes allowed), as a pandas Series, an Arrow array
        or a list.

    Returns
    -------
    pandas.Series
        ``True`` where the number is 10 digits with a correct check digit (same index as
        ``values`` when it is a Series).

    Examples
    --------
    >>> validate_nhs_number(["4010232137", "401 023 2130", "abc"]).tolist()
    [True, False, False]
    """
    series = _as_series(values)
    stripped = series.astype("string").str.replace(r"[\s-]", "", regex=True)
    return pd.Series(_valid_mask(stripped), index=series.index, name=series.name)


def normalise_nhs_number(values: pd.Series | pa.Array | pa.ChunkedArray | list) -> pd.Series:
    """Remove spaces and dashes; valid numbers come back as 10-digit strings, others as ``None``.

    Examples
    --------
    >>> normalise_nhs_number(["401-023-2137", "4010232138"]).tolist()
    ['4010232137', None]
    """
    series = _as_series(values)
    stripped = series.astype("string").str.replace(r"[\s-]", "", regex=True)
    valid = _valid_mask(stripped)
    out = np.full(len(stripped), None, dtype=object)
    out[valid] = stripped[valid].to_numpy(dtype=object)
    return pd.Series(out, index=series.index, name=series.name, dtype=object)


def nhs_number_reason(values: pd.Series | pa.Array | pa.ChunkedArray | list) -> pd.Series:
    """Why each NHS number cannot be used (``None`` when it is valid).

    Reasons: ``"nhs_number missing"``, ``"nhs_number not 10 digits"`` and
    ``"nhs_number fails modulus 11 check"``.

    Examples
    --------
    >>> nhs_number_reason([None, "12", "9434765918", "9434765919"]).tolist()
    ['nhs_number missing', 'nhs_number not 10 digits', 'nhs_number fails modulus 11 check', None]
    """
    series = _as_series(values)
    stripped = series.astype("string").str.replace(r"[\s-]", "", regex=True)
    missing = stripped.isna().to_numpy() | (stripped.fillna("") == "").to_numpy()
    shaped = stripped.str.fullmatch(r"[0-9]{10}").fillna(False).to_numpy(dtype=bool)
    valid = _valid_mask(stripped)
    reason = np.select(
        [missing, ~shaped, ~valid],
        ["nhs_number missing", "nhs_number not 10 digits", "nhs_number fails modulus 11 check"],
        default="",
    ).astype(object)
    reason[reason == ""] = None
    return pd.Series(reason, index=series.index, name="reason", dtype=object)


def sql_nhs_normalise(column: str) -> str:
    """DuckDB SQL expression: ``column`` with spaces and dashes removed (NULL stays NULL).

    Most values are already 10 plain characters; those skip the regular expression (a
    10-character value with a separator in it is invalid either way).
    """
    return (
        f"CASE WHEN strlen({column}) = 10 THEN {column} "
        f"ELSE regexp_replace({column}, '[\\s-]', '', 'g') END"
    )


def sql_nhs_valid(normalised: str, *, as_integer: str | None = None) -> str:
    """DuckDB SQL expression that is true when ``normalised`` passes the modulus 11 check.

    ``normalised`` must already be free of separators (see :func:`sql_nhs_normalise`). The
    expression is the same rule as :func:`validate_nhs_number`, evaluated inside DuckDB so the
    build never pulls NHS numbers into Python. The digits are taken arithmetically from the
    number as a BIGINT (``as_integer``, default ``TRY_CAST(normalised AS BIGINT)``), which is
    several times faster than string slicing.
    """
    number = as_integer or f"TRY_CAST({normalised} AS BIGINT)"
    weighted = " + ".join(
        f"(({number} // {10 ** (9 - i)}) % 10) * {w}" for i, w in enumerate(NHS_NUMBER_WEIGHTS)
    )
    check = f"((11 - ({weighted}) % 11) % 11)"
    return (
        f"coalesce(regexp_full_match({normalised}, '[0-9]{{10}}') AND "
        f"{check} <> 10 AND {check} = {number} % 10, FALSE)"
    )
