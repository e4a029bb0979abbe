"""The error hierarchy: one exit code per kind of failure, recipe errors under AnalysisError."""

from __future__ import annotations

import inspect

from kidresearch import errors, risk, stats, variation


def _classes() -> list[type[errors.KidError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.KidError)
    ]


def test_recipe_modules_raise_the_classes_defined_in_errors() -> None:
    assert stats.StatsError is errors.StatsError
    assert risk.RiskError is errors.RiskError
    assert variation.VariationError is errors.VariationError


def test_every_recipe_error_is_an_analysis_error_and_a_value_error() -> None:
    for cls in (
        errors.StatsError,
        errors.RiskError,
        errors.VariationError,
        errors.MatchingError,
        errors.CostError,
        errors.SegmentError,
    ):
        assert issubclass(cls, errors.AnalysisError), cls
        assert issubclass(cls, ValueError), cls
        assert cls.exit_code == errors.AnalysisError.exit_code == 9


def test_exit_codes_name_one_kind_of_failure_each() -> None:
    # Classes that are not recipe errors each have their own code (BuildError and FeedError
    # share 3: both are failures of the build), so a shell script can tell them apart.
    codes: dict[int, list[str]] = {}
    for cls in _classes():
        if issubclass(cls, errors.AnalysisError) and cls is not errors.AnalysisError:
            continue
        codes.setdefault(cls.exit_code, []).append(cls.__name__)
    shared = {code: names for code, names in codes.items() if len(names) > 1}
    assert shared == {3: ["BuildError", "FeedError"]}
