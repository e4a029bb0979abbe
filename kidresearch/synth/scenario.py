"""Scenario files: what the synthetic generator simulates, validated at the boundary.

A scenario is a YAML file (or a built-in preset: ``tiny``, ``demo``, ``kent``) with a few
sections: ``period``, ``population``, ``morbidity``, ``mortality``, ``emergency``, ``acsc``,
``programmes``, ``activity`` and ``data_quality``. Anything not given takes the default documented
on the field. Unknown keys, negative sizes and a period that ends before it starts are refused with
a :class:`~kidresearch.errors.ScenarioError` naming the key.

Examples
--------
>>> from kidresearch.synth.scenario import load_scenario
>>> s = load_scenario("tiny")
>>> s.population.people
4000
>>> s.period.months
60
>>> load_scenario({"population": {"people": -5}})
Traceback (most recent call last):
...
kidresearch.errors.ScenarioError: population.people: must be > 0, got -5
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kidresearch.errors import ScenarioError

PRESETS = ("tiny", "demo", "kent")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _month_index(text: str) -> int:
    year, month = text.split("-")
    return int(year) * 12 + int(month) - 1


class Period(_Section):
    """Study period: first and last month of events and extracts (YYYY-MM)."""

    start: str = Field("2021-11", pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    end: str = Field("2026-10", pattern=r"^\d{4}-(0[1-9]|1[0-2])$")

    @model_validator(mode="after")
    def _end_after_start(self) -> Period:
        if _month_index(self.end) < _month_index(self.start) + 35:
            raise ValueError(
                f"end must be at least 36 months after start (the risk-model truth needs a "
                f"24-month lookback and a 12-month outcome window), got start {self.start}, "
                f"end {self.end}"
            )
        return self

    @property
    def months(self) -> int:
        return _month_index(self.end) - _month_index(self.start) + 1


class Population(_Section):
    """Population size and geography."""

    people: int = Field(50_000, description="people in the register at the period start")
    practices: int = Field(20, description="GP practices")
    lsoa_residents: int = Field(1_500, description="residents per LSOA (LSOAs = people / this)")
    chunk_size: int = Field(100_000, description="people simulated per chunk (fixed per scenario)")
    births_per_1000_per_year: float = Field(9.5, ge=0)
    move_in_share: float = Field(0.08, ge=0, le=0.5, description="share registering mid-period")
    move_out_share: float = Field(0.07, ge=0, le=0.5, description="share leaving Kent mid-period")
    practice_change_share: float = Field(0.04, ge=0, le=0.5)
    address_change_share: float = Field(0.04, ge=0, le=0.5)

    @field_validator("people", "practices", "lsoa_residents", "chunk_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError(f"must be > 0, got {value}")
        return value


class Morbidity(_Section):
    """eFI deficit accumulation (onset-age model; see ``population.py``)."""

    shift_log_odds: float = Field(0.04, description="global shift on every deficit's log-odds")
    frailty_sd: float = Field(0.15, ge=0, description="SD of the shared person frailty factor")
    deprivation_log_odds: float = Field(
        0.08, description="log-odds per IMD quintile step towards most deprived"
    )
    trend_log_odds_per_year: float = Field(
        0.04, description="calendar trend on every deficit's log-odds (frailty trend)"
    )
    reference_year: float = Field(2024.0, description="calendar year where the trend term is 0")


class Mortality(_Section):
    """Piecewise-constant yearly death hazard: h = exp(a + b*(age-80) + c*male) * HR[eFI cat]."""

    log_hazard_at_80: float = Field(-3.85, description="log yearly hazard at 80, female, fit")
    age_slope: float = Field(0.095, description="log hazard per year of age (Gompertz)")
    male_log_hr: float = Field(0.33)
    efi_hazard_ratios: tuple[float, float, float] = Field(
        (1.92, 3.10, 4.52),
        description="HR mild/moderate/severe vs fit (Clegg et al. 2016, one-year mortality)",
    )


class Emergency(_Section):
    """Emergency admission model: per model year, P(any) = logistic(linear predictor)."""

    intercept: float = -2.55
    age_per_decade: float = 0.18
    age_centre: float = 65.0
    male: float = 0.10
    efi_mild: float = 0.45
    efi_moderate: float = 0.85
    efi_severe: float = 1.25
    polypharmacy: float = 0.25
    prior_emergency: float = 0.90
    deprivation_per_quintile: float = 0.05
    practice_sd: float = Field(0.05, ge=0)
    extra_admissions_base: float = Field(0.25, ge=0, description="Poisson mean of extra spells")
    extra_admissions_per_efi_category: float = Field(0.15, ge=0)


class Acsc(_Section):
    """Practices with excess emergency admissions for ambulatory care sensitive conditions."""

    practice_share: float = Field(0.10, ge=0, le=1)
    rate_ratio: float = Field(1.7, gt=0)
    base_share: float = Field(
        0.18, gt=0, lt=0.5, description="share of emergency spells with an ACSC diagnosis"
    )


class FrailtyTeam(_Section):
    """Integrated frailty team: non-random enrolment on observed covariates, true effect."""

    emergency_rate_ratio: float = Field(0.80, gt=0, le=1.5)
    effect_months: int = Field(12, gt=0)
    intercept: float = -7.0
    age_per_year: float = 0.05
    efi_mild: float = 0.9
    efi_moderate: float = 1.9
    efi_severe: float = 2.6
    prior_emergency_per_spell: float = 0.55
    deprivation_per_quintile: float = 0.10
    team_contacts: float = Field(2.0, ge=0, description="mean rapid-response contacts per enrolee")


class SafeAndWell(_Section):
    """Kent Fire and Rescue safe-and-well visits: non-random, NO effect on A&E."""

    intercept: float = -5.3
    age_per_year: float = 0.05
    lives_alone: float = 0.6
    efi_moderate_or_severe: float = 0.5
    prior_ae_per_attendance: float = 0.35
    deprivation_per_quintile: float = 0.15


class Programmes(_Section):
    integrated_frailty_team: FrailtyTeam = FrailtyTeam()
    safe_and_well_visit: SafeAndWell = SafeAndWell()


class Activity(_Section):
    """Yearly rates of the other activity (per person-year, before frailty multipliers)."""

    gp_consultations_base: float = Field(0.5, ge=0)
    gp_consultations_per_year_of_age: float = Field(0.015, ge=0)
    gp_consultations_per_efi_category: float = Field(0.6, ge=0)
    prescription_interval_days: int = Field(182, gt=0, le=300)
    elective_base: float = Field(0.03, ge=0)
    elective_per_year_of_age: float = Field(0.0015, ge=0)
    ae_base: float = Field(0.20, ge=0)
    outpatient_base: float = Field(0.15, ge=0)
    outpatient_per_year_of_age: float = Field(0.006, ge=0)
    community_base: float = Field(0.04, ge=0)
    mental_health_base: float = Field(0.06, ge=0)
    out_of_hours_base: float = Field(0.05, ge=0)
    home_care_start_base: float = Field(0.006, ge=0)
    care_home_start_base: float = Field(0.0015, ge=0)
    deprivation_per_quintile: float = Field(0.05, description="log rate ratio per quintile step")


class DataQuality(_Section):
    """Reporting lag, unlinkable NHS numbers, malformed rows and corrections."""

    lag_months: dict[int, float] = Field({1: 0.75, 2: 0.25})
    nhs_missing: float = Field(0.004, ge=0, le=0.05)
    nhs_bad_check_digit: float = Field(0.003, ge=0, le=0.05)
    nhs_nine_digits: float = Field(0.002, ge=0, le=0.05)
    nhs_unknown: float = Field(0.005, ge=0, le=0.05)
    nhs_spaces: float = Field(0.02, ge=0, le=0.2)
    nhs_dashes: float = Field(0.01, ge=0, le=0.2)
    injected_error_rate: float = Field(0.0015, ge=0, le=0.05)
    correction_rate: float = Field(0.004, ge=0, le=0.05)

    @field_validator("lag_months")
    @classmethod
    def _lags(cls, value: dict[int, float]) -> dict[int, float]:
        if not value or any(k < 0 or k > 6 for k in value) or any(p < 0 for p in value.values()):
            raise ValueError(f"must map lags 0-6 months to probabilities >= 0, got {value}")
        total = sum(value.values())
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"probabilities must sum to 1, got {total}")
        return dict(sorted(value.items()))


class Scenario(_Section):
    """A complete synthetic KID scenario (see the module docstring for the sections)."""

    name: str = "custom"
    seed: int = 20261126
    period: Period = Period()
    population: Population = Population()
    morbidity: Morbidity = Morbidity()
    mortality: Mortality = Mortality()
    emergency: Emergency = Emergency()
    acsc: Acsc = Acsc()
    programmes: Programmes = Programmes()
    activity: Activity = Activity()
    data_quality: DataQuality = DataQuality()

    def to_yaml(self) -> str:
        """The fully resolved scenario as YAML (what ``OUT/scenario.yaml`` holds)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_error(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(scenario)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see kidresearch.synth.scenario for the keys)"
        elif "input" in err and err["type"] not in ("value_error",):
            msg = f"{msg}, got {err['input']!r}"
        lines.append(f"{key}: {msg}")
    prefix = f"{origin}: " if origin else ""
    return prefix + "; ".join(lines)


def load_scenario(source: str | os.PathLike[str] | dict[str, Any] | Scenario) -> Scenario:
    """Load and validate a scenario from a preset name, a YAML path, a mapping or a Scenario.

    Parameters
    ----------
    source
        ``"tiny"``, ``"demo"`` or ``"kent"``; a path to a YAML file; a dict with the same
        structure; or a :class:`Scenario` (returned unchanged).

    Returns
    -------
    Scenario

    Raises
    ------
    ScenarioError
        If the file is missing or not YAML, or a key is unknown or has an invalid value; the
        message names the key (``population.people: must be > 0, got -5``).

    Examples
    --------
    >>> load_scenario("demo").population.people
    50000
    >>> load_scenario({"period": {"start": "2024-01", "end": "2023-01"}})
    Traceback (most recent call last):
    ...
    kidresearch.errors.ScenarioError: period: end must be at least 36 months after start ...
    """
    if isinstance(source, Scenario):
        return source
    origin = ""
    if isinstance(source, dict):
        data: Any = source
    else:
        text_source = str(source)
        if text_source in PRESETS:
            origin = f"preset '{text_source}'"
            ref = resources.files("kidresearch.synth") / "presets" / f"{text_source}.yaml"
            data = yaml.safe_load(ref.read_text(encoding="utf-8"))
        else:
            path = Path(source)
            origin = str(path)
            if not path.is_file():
                raise ScenarioError(
                    f"{path}: no such scenario file (or preset: the presets are "
                    f"{', '.join(PRESETS)})"
                )
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{origin or 'scenario'}: expected a mapping of sections at top level")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_format_error(exc, origin)) from None
