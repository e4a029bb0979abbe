"""The disclosure policy: every number that decides whether an output may leave the environment.

Policy numbers are named constants with their source, in one place, as in ehrQL's
``measures/disclosure_control.py``. ``docs/disclosure_control.md`` explains each rule and every
intended difference from ACRO.

Sources
-------
- ACRO 1.0.2 (SACRO project), ``acro/default.yaml``: ``safe_threshold: 10``,
  ``safe_dof_threshold: 10``, ``safe_nk_n: 2``, ``safe_nk_k: 0.90``, ``safe_pratio_p: 0.10``,
  ``survival_safe_threshold: 10``, ``zeros_are_disclosive: True``, ``safe_round_base: 5``.
- ONS / SDAP, "Handbook on Statistical Disclosure Control for Outputs" (Griffiths et al., 2019):
  a minimum frequency of 10 as the rule of thumb for counts and for statistics derived from them,
  10 residual degrees of freedom for models, the (n, k) dominance and p% rules for magnitudes,
  and that a bare minimum or maximum is a single person's value.
- OpenSAFELY documentation "Disclosure control" (outputs/sdc, July 2023) and ehrQL
  ``measures/disclosure_control.py``: statistics describing 7 or fewer people are redacted, every
  count is rounded to the nearest 5 and totals are recomputed from the rounded counts; minimum
  and maximum are redacted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kidresearch.errors import DisclosureError

# ACRO acro/default.yaml ``safe_threshold``; SDAP handbook rule of thumb. A count (or the number of
# records behind a statistic) below this is suppressed.
SAFE_THRESHOLD = 10
# ACRO acro/default.yaml ``safe_dof_threshold``; SDAP handbook: residual degrees of freedom.
SAFE_DOF_THRESHOLD = 10
# ACRO acro/default.yaml ``safe_nk_n`` / ``safe_nk_k``: a cell fails when its N largest
# contributors make up K (90%) or more of its total.
SAFE_NK_N = 2
SAFE_NK_K = 0.90
# ACRO acro/default.yaml ``safe_pratio_p``: a cell fails when
# (total - largest - second largest) / largest < P.
SAFE_PRATIO_P = 0.10
# ACRO acro/default.yaml ``survival_safe_threshold``: numbers at risk / events in survival tables.
SURVIVAL_SAFE_THRESHOLD = 10
# ACRO acro/default.yaml ``zeros_are_disclosive``: a zero count is treated as disclosive
# (it can reveal that *everyone* in a group has, or lacks, a characteristic).
ZEROS_ARE_DISCLOSIVE = True
# ACRO 1.0 ``safe_round_base``: the base used when rounding is switched on without a base.
SAFE_ROUND_BASE = 5
# SDAP handbook: a minimum or maximum is one person's value, so it is never released by default.
ALLOW_MIN_MAX = False
# Percentiles (median included): at least this many records on each side of the cut point,
# so the percentile is not one person's value (SDAP handbook: treat like a count of records).
PERCENTILE_MIN_EACH_SIDE = 10

# OpenSAFELY (documentation "outputs/sdc"; ehrQL measures/disclosure_control.py): any statistic
# describing 7 or fewer people is redacted, then counts are rounded to the nearest 5.
OPENSAFELY_REDACT_AT_OR_BELOW = 7
OPENSAFELY_ROUNDING_BASE = 5

PRESETS = ("default", "opensafely")


def _fail(key: str, expected: str, got: object, source: str | None = None) -> DisclosureError:
    where = f" in {source}" if source else ""
    return DisclosureError(
        f"disclosure policy key '{key}'{where} must be {expected}; got {got!r} instead"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DisclosurePolicy:
    """The rules an output must pass before release.

    Parameters
    ----------
    threshold : int
        Minimum number of records behind a released count or statistic; a cell with
        ``0 < n < threshold`` is suppressed (ACRO semantics: ``n < threshold`` fails).
    rounding : int or None
        Round released counts to this base (nearest, halves up). Margins and subtotals are then
        recomputed from the released rounded cells (OpenSAFELY convention).
    dominance_n, dominance_k : int, float
        (n, k) dominance: a magnitude cell fails when its ``dominance_n`` largest contributions
        make up ``dominance_k`` or more of the cell total.
    p_ratio : float
        p% rule (ACRO's p-ratio): a cell fails when
        ``(total - largest - second) / largest < p_ratio``.
    min_dof : int
        Minimum residual degrees of freedom for a model.
    zeros_are_disclosive : bool
        Suppress cells with a zero count (ACRO default ``True``).
    survival_threshold : int
        Minimum number at risk / events per released row of a survival table.
    allow_min_max : bool
        Allow minimum and maximum cells (still subject to ``threshold``).
    percentile_min_each_side : int
        Records required on each side of a released percentile or median.
    protection_level : float or None
        Secondary suppression: the feasible range of a suppressed count must be at least this
        wide (``None``: the threshold).
    protection_ratio : float
        Secondary suppression for magnitude tables: the feasible range of a suppressed sum must
        be at least this fraction of its value.
    secondary : bool
        Run secondary suppression on additive tables with margins.
    preset : str
        Which preset the policy started from ("default" or "opensafely").

    Examples
    --------
    >>> DisclosurePolicy.default().threshold
    10
    >>> p = DisclosurePolicy.opensafely()
    >>> (p.threshold, p.rounding)
    (8, 5)
    >>> DisclosurePolicy.from_mapping({"threshold": 5, "rounding": 5}).rounding
    5
    >>> DisclosurePolicy.from_mapping({"treshold": 5})
    Traceback (most recent call last):
    ...
    kidresearch.errors.DisclosureError: unknown disclosure policy key 'treshold'...
    """

    threshold: int = SAFE_THRESHOLD
    rounding: int | None = None
    dominance_n: int = SAFE_NK_N
    dominance_k: float = SAFE_NK_K
    p_ratio: float = SAFE_PRATIO_P
    min_dof: int = SAFE_DOF_THRESHOLD
    zeros_are_disclosive: bool = ZEROS_ARE_DISCLOSIVE
    survival_threshold: int = SURVIVAL_SAFE_THRESHOLD
    allow_min_max: bool = ALLOW_MIN_MAX
    percentile_min_each_side: int = PERCENTILE_MIN_EACH_SIDE
    protection_level: float | None = None
    protection_ratio: float = SAFE_PRATIO_P
    secondary: bool = True
    preset: str = field(default="default")

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self, source: str | None = None) -> None:
        def positive_int(key: str, minimum: int = 1) -> None:
            value = getattr(self, key)
            if not _is_int(value) or value < minimum:
                raise _fail(key, f"an integer >= {minimum}", value, source)

        positive_int("threshold")
        positive_int("dominance_n")
        positive_int("min_dof", 0)
        positive_int("survival_threshold")
        positive_int("percentile_min_each_side", 0)
        if self.rounding is not None and (not _is_int(self.rounding) or self.rounding < 2):
            raise _fail("rounding", "null or an integer base >= 2", self.rounding, source)
        if not _is_number(self.dominance_k) or not 0 < self.dominance_k <= 1:
            raise _fail("dominance_k", "a number in (0, 1]", self.dominance_k, source)
        if not _is_number(self.p_ratio) or not 0 <= self.p_ratio < 1:
            raise _fail("p_ratio", "a number in [0, 1)", self.p_ratio, source)
        if not _is_number(self.protection_ratio) or not 0 <= self.protection_ratio <= 1:
            raise _fail("protection_ratio", "a number in [0, 1]", self.protection_ratio, source)
        if self.protection_level is not None and (
            not _is_number(self.protection_level) or self.protection_level <= 0
        ):
            raise _fail("protection_level", "null or a number > 0", self.protection_level, source)
        for key in ("zeros_are_disclosive", "allow_min_max", "secondary"):
            if not isinstance(getattr(self, key), bool):
                raise _fail(key, "true or false", getattr(self, key), source)
        if self.preset not in PRESETS:
            raise _fail("preset", f"one of {list(PRESETS)}", self.preset, source)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def default(cls) -> DisclosurePolicy:
        """ACRO / SDAP defaults: threshold 10, (2, 0.9) dominance, p 0.1, 10 residual dof."""
        return cls()

    @classmethod
    def opensafely(cls) -> DisclosurePolicy:
        """OpenSAFELY style: redact 7 or fewer, round counts to the nearest 5, totals recomputed.

        Examples
        --------
        >>> DisclosurePolicy.opensafely().preset
        'opensafely'
        """
        return cls(
            threshold=OPENSAFELY_REDACT_AT_OR_BELOW + 1,
            rounding=OPENSAFELY_ROUNDING_BASE,
            percentile_min_each_side=OPENSAFELY_REDACT_AT_OR_BELOW + 1,
            preset="opensafely",
        )

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, Any], *, source: str | None = None
    ) -> DisclosurePolicy:
        """Build a policy from a proposal's ``output_policy`` mapping.

        Keys are the field names of this class plus ``preset`` ("default" or "opensafely"); the
        preset is applied first and the other keys override it. ``rounding: true`` means the
        default base (5).

        Raises
        ------
        DisclosureError
            An unknown key or an impossible value; the message names the key (and ``source``).
        """
        if mapping is None:
            return cls.default()
        if not isinstance(mapping, Mapping):
            where = f" in {source}" if source else ""
            raise DisclosureError(
                f"output_policy{where} must be a mapping of policy keys; got {type(mapping).__name__}"
            )
        known = {f.name for f in fields(cls)}
        for key in mapping:
            if key not in known:
                where = f" in {source}" if source else ""
                raise DisclosureError(
                    f"unknown disclosure policy key '{key}'{where}; expected one of {sorted(known)}"
                )
        values = dict(mapping)
        preset = values.pop("preset", "default")
        if preset not in PRESETS:
            raise _fail("preset", f"one of {list(PRESETS)}", preset, source)
        base = cls.opensafely() if preset == "opensafely" else cls.default()
        if values.get("rounding") is True:
            values["rounding"] = SAFE_ROUND_BASE
        elif values.get("rounding") is False:
            values["rounding"] = None
        # Whole-number floats from YAML ("threshold: 10.0") are accepted for integer keys.
        for f in fields(cls):
            v = values.get(f.name)
            if isinstance(v, float) and v.is_integer() and f.type in ("int", "int | None"):
                values[f.name] = int(v)
        try:
            policy = dataclasses.replace(base, **values)
        except DisclosureError as exc:
            if source:
                raise DisclosureError(f"{exc} (in {source})") from None
            raise
        return policy

    @classmethod
    def from_yaml(cls, path: str | Path) -> DisclosurePolicy:
        """Read a policy YAML file, or a proposal YAML file holding an ``output_policy`` mapping.

        Raises
        ------
        DisclosureError
            The file is missing or unreadable, or holds an invalid policy (message names the file).
        """
        path = Path(path)
        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DisclosureError(f"disclosure policy file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise DisclosureError(
                f"disclosure policy file {path} is not valid YAML: {exc}"
            ) from None
        if content is None:
            content = {}
        if isinstance(content, Mapping) and "output_policy" in content:
            content = content["output_policy"] or {}
        return cls.from_mapping(content, source=str(path))

    # ------------------------------------------------------------------ helpers
    @property
    def count_protection(self) -> float:
        """Width the feasible range of a suppressed count must reach (secondary suppression)."""
        return float(self.threshold if self.protection_level is None else self.protection_level)

    def to_dict(self) -> dict[str, Any]:
        """The policy as a plain mapping (written into output-log records).

        Examples
        --------
        >>> DisclosurePolicy.default().to_dict()["threshold"]
        10
        """
        return dataclasses.asdict(self)

    def round_counts(self, values: Any) -> Any:
        """Round counts to the policy's base, halves up (``None`` rounding returns them unchanged).

        Examples
        --------
        >>> import numpy as np
        >>> DisclosurePolicy.opensafely().round_counts(np.array([0, 2, 3, 12, 13, 17.5]))
        array([ 0.,  0.,  5., 10., 15., 20.])
        """
        import numpy as np

        if self.rounding is None:
            return values
        base = self.rounding
        return np.floor(np.asarray(values, dtype=float) / base + 0.5) * base
