"""Disclosure policy: defaults against their published sources, presets, loading and validation."""

from __future__ import annotations

import pytest

from kidresearch.errors import DisclosureError
from kidresearch.sdc import DisclosurePolicy
from kidresearch.sdc import policy as policy_module


def test_defaults_match_acro_default_yaml() -> None:
    # acro/default.yaml in ACRO 1.0.2: safe_threshold 10, safe_dof_threshold 10, safe_nk_n 2,
    # safe_nk_k 0.90, safe_pratio_p 0.10, survival_safe_threshold 10, zeros_are_disclosive True,
    # safe_round_base 5.
    p = DisclosurePolicy.default()
    assert (p.threshold, p.min_dof, p.dominance_n, p.dominance_k, p.p_ratio) == (
        10,
        10,
        2,
        0.90,
        0.10,
    )
    assert p.survival_threshold == 10
    assert p.zeros_are_disclosive is True
    assert p.rounding is None
    assert p.allow_min_max is False
    assert policy_module.SAFE_ROUND_BASE == 5


def test_opensafely_preset_redacts_seven_or_fewer_and_rounds_to_five() -> None:
    # OpenSAFELY outputs/sdc: statistics describing 7 or fewer people are redacted, counts
    # rounded to the nearest 5.
    p = DisclosurePolicy.opensafely()
    assert p.threshold == 8  # a cell fails when n < threshold, i.e. n <= 7
    assert p.rounding == 5
    assert p.preset == "opensafely"


def test_policy_numbers_are_named_constants() -> None:
    assert policy_module.SAFE_THRESHOLD == 10
    assert policy_module.OPENSAFELY_REDACT_AT_OR_BELOW == 7
    assert policy_module.OPENSAFELY_ROUNDING_BASE == 5


def test_from_mapping_overrides_a_preset() -> None:
    p = DisclosurePolicy.from_mapping({"preset": "opensafely", "threshold": 12, "rounding": True})
    assert (p.threshold, p.rounding, p.preset) == (12, 5, "opensafely")
    assert DisclosurePolicy.from_mapping({"rounding": False}).rounding is None
    assert DisclosurePolicy.from_mapping({"threshold": 10.0}).threshold == 10


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        ({"treshold": 10}, "treshold"),
        ({"threshold": 0}, "threshold"),
        ({"threshold": 2.5}, "threshold"),
        ({"threshold": "ten"}, "threshold"),
        ({"rounding": 1}, "rounding"),
        ({"dominance_k": 1.5}, "dominance_k"),
        ({"dominance_k": 0}, "dominance_k"),
        ({"dominance_n": 0}, "dominance_n"),
        ({"p_ratio": -0.1}, "p_ratio"),
        ({"min_dof": -1}, "min_dof"),
        ({"zeros_are_disclosive": "yes"}, "zeros_are_disclosive"),
        ({"preset": "lenient"}, "preset"),
        ({"protection_level": 0}, "protection_level"),
    ],
)
def test_bad_policy_is_refused_naming_the_key(mapping: dict, field: str) -> None:
    with pytest.raises(DisclosureError, match=f"'{field}'"):
        DisclosurePolicy.from_mapping(mapping)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(DisclosureError, match="'dominance_k'"):
        DisclosurePolicy(dominance_k=2.0)


def test_from_yaml_reads_a_proposal_output_policy(tmp_path) -> None:
    proposal = tmp_path / "proposal.yaml"
    proposal.write_text("id: P-001\noutput_policy:\n  threshold: 15\n  p_ratio: 0.2\n")
    p = DisclosurePolicy.from_yaml(proposal)
    assert (p.threshold, p.p_ratio) == (15, 0.2)


def test_from_yaml_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("threshold: 10\nunknown_rule: 3\n")
    with pytest.raises(DisclosureError, match=r"unknown_rule.*policy\.yaml"):
        DisclosurePolicy.from_yaml(bad)
    with pytest.raises(DisclosureError, match="does not exist"):
        DisclosurePolicy.from_yaml(tmp_path / "missing.yaml")


def test_policy_is_frozen() -> None:
    p = DisclosurePolicy.default()
    with pytest.raises(AttributeError):
        p.threshold = 3  # type: ignore[misc]


def test_rounding_is_to_nearest_with_halves_up() -> None:
    p = DisclosurePolicy.opensafely()
    # hand: 2 -> 0, 2.5 -> 5 (half up), 7 -> 5, 8 -> 10, 12 -> 10, 13 -> 15
    assert p.round_counts([2, 2.5, 7, 8, 12, 13]).tolist() == [0, 5, 5, 10, 10, 15]
