"""access_policy.md states the disclosure numbers the code enforces.

The policy document carries a machine-readable table (between ``policy-numbers`` markers) of
rule, constant name and value. These tests read it and compare every value with the constant in
``kidresearch/sdc/policy.py``, with the default and OpenSAFELY policies built from them, and with
what ``sdc.crosstab`` actually does at the documented thresholds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from kidresearch import sdc
from kidresearch.sdc import DisclosurePolicy
from kidresearch.sdc import policy as policy_module

POLICY_DOC = Path(__file__).resolve().parents[1] / "access_policy.md"


def _value(text: str) -> bool | int | float:
    text = text.strip().lower()
    if text in ("true", "false"):
        return text == "true"
    return float(text) if "." in text else int(text)


def _documented() -> dict[str, bool | int | float]:
    doc = POLICY_DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- policy-numbers:start -->(.*?)<!-- policy-numbers:end -->", doc, re.S)
    assert block, "access_policy.md has no policy-numbers table"
    numbers: dict[str, bool | int | float] = {}
    for line in block.group(1).strip().splitlines()[2:]:  # skip header and rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        constant = cells[1].strip("`")
        assert constant not in numbers, f"{constant} is documented twice"
        numbers[constant] = _value(cells[2])
    return numbers


DOCUMENTED = _documented()


@pytest.mark.parametrize("constant", sorted(DOCUMENTED))
def test_documented_number_is_the_constant_the_code_uses(constant):
    assert hasattr(policy_module, constant), f"access_policy.md names unknown constant {constant}"
    actual = getattr(policy_module, constant)
    assert type(actual) is type(DOCUMENTED[constant]), (constant, actual)
    assert actual == DOCUMENTED[constant], (
        f"access_policy.md says {constant} = {DOCUMENTED[constant]}, the code has {actual}"
    )


def test_every_policy_constant_is_documented():
    constants = {
        name
        for name, value in vars(policy_module).items()
        if name.isupper() and isinstance(value, bool | int | float)
    }
    assert constants <= set(DOCUMENTED), f"undocumented: {sorted(constants - set(DOCUMENTED))}"


def test_default_and_opensafely_policies_use_the_documented_numbers():
    d = DisclosurePolicy.default()
    assert d.threshold == DOCUMENTED["SAFE_THRESHOLD"]
    assert d.zeros_are_disclosive is DOCUMENTED["ZEROS_ARE_DISCLOSIVE"]
    assert (d.dominance_n, d.dominance_k) == (DOCUMENTED["SAFE_NK_N"], DOCUMENTED["SAFE_NK_K"])
    assert d.p_ratio == DOCUMENTED["SAFE_PRATIO_P"]
    assert d.min_dof == DOCUMENTED["SAFE_DOF_THRESHOLD"]
    assert d.survival_threshold == DOCUMENTED["SURVIVAL_SAFE_THRESHOLD"]
    assert d.percentile_min_each_side == DOCUMENTED["PERCENTILE_MIN_EACH_SIDE"]
    assert d.allow_min_max is DOCUMENTED["ALLOW_MIN_MAX"]
    assert (
        DisclosurePolicy.from_mapping({"rounding": True}).rounding == DOCUMENTED["SAFE_ROUND_BASE"]
    )
    o = DisclosurePolicy.opensafely()
    # "7 or fewer redacted" is a threshold of 8 under "n < threshold fails".
    assert o.threshold == DOCUMENTED["OPENSAFELY_REDACT_AT_OR_BELOW"] + 1
    assert o.rounding == DOCUMENTED["OPENSAFELY_ROUNDING_BASE"]


def _counts(sizes: dict[str, int], policy: DisclosurePolicy | None = None) -> dict[str, float]:
    people = pd.DataFrame({"group": [g for g, n in sizes.items() for _ in range(n)]})
    released = sdc.crosstab(people, "group", margins=False, policy=policy).released
    return {k: (None if pd.isna(v) else float(v)) for k, v in released.items()}


def test_counts_are_suppressed_below_the_documented_threshold():
    t = DOCUMENTED["SAFE_THRESHOLD"]
    # Three groups so that suppressing one cell cannot be undone from the others (no margins).
    released = _counts({"below": t - 1, "at": t, "above": 3 * t})
    assert released == {"above": float(3 * t), "at": float(t), "below": None}


def test_opensafely_preset_redacts_and_rounds_as_documented():
    redact = DOCUMENTED["OPENSAFELY_REDACT_AT_OR_BELOW"]
    base = DOCUMENTED["OPENSAFELY_ROUNDING_BASE"]
    released = _counts({"a": redact, "b": redact + 1, "c": 26}, DisclosurePolicy.opensafely())
    # 7 redacted; 8 rounds to the nearest 5 (10); 26 rounds to 25 (hand computation).
    assert released == {"a": None, "b": float(round((redact + 1) / base) * base), "c": 25.0}
