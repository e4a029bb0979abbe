"""The exceptions and warnings kidresearch raises, one per kind of problem.

Each subclasses ``ValueError`` (bad data or settings) or ``PermissionError`` (refused access), so
callers that already catch those keep working. ``kid`` maps each class to its own exit code: 2
scenario, 3 feed or build, 4 proposal, 5 access refused, 6 audit, 7 disclosure, 8 report, 9 bad
input to an analysis recipe (:class:`AnalysisError` and its subclasses).

Examples
--------
>>> from kidresearch.errors import AnalysisError, CostError
>>> issubclass(CostError, AnalysisError) and issubclass(CostError, ValueError)
True
>>> CostError.exit_code
9
"""

from __future__ import annotations


class KidError(Exception):
    """Base class of kidresearch's own errors."""

    exit_code = 1


class ScenarioError(KidError, ValueError):
    """A synthetic scenario file or preset is invalid; the message names the key."""

    exit_code = 2


class FeedError(KidError, ValueError):
    """A raw feed file is unreadable, truncated or of the wrong shape; the message names the file."""

    exit_code = 3


class BuildError(KidError, RuntimeError):
    """A KID build failed; the previous version stays published."""

    exit_code = 3


class ProposalError(KidError, ValueError):
    """A proposal file is invalid, expired or does not allow what was asked."""

    exit_code = 4


class AccessRefused(KidError, PermissionError):
    """A request went beyond what the proposal allows; it was refused and logged."""

    exit_code = 5


class AuditError(KidError, RuntimeError):
    """The audit log is missing, unreadable or fails verification."""

    exit_code = 6


class DisclosureError(KidError, ValueError):
    """An output or disclosure policy is invalid, or an output fails disclosure control."""

    exit_code = 7


class ReportError(KidError, RuntimeError):
    """A report run failed (one or more notebooks failed)."""

    exit_code = 8


class AnalysisError(KidError, ValueError):
    """Bad arguments or data for an analysis recipe; the message names the field, column or row.

    Each recipe module raises its own subclass (:class:`StatsError`, :class:`RiskError`,
    :class:`VariationError`, :class:`MatchingError`, :class:`CostError`, :class:`SegmentError`),
    so callers can catch one recipe's errors or all of them.
    """

    exit_code = 9


class StatsError(AnalysisError):
    """Bad input to a statistic (:mod:`kidresearch.stats`); the message names the column or
    argument and the rows."""


class RiskError(AnalysisError):
    """Bad arguments or data for the risk model (:mod:`kidresearch.risk`); the message names the
    field."""


class VariationError(AnalysisError):
    """Bad arguments or data for practice variation (:mod:`kidresearch.variation`); the message
    names the field."""


class MatchingError(AnalysisError):
    """Bad input to matching or effect estimation (:mod:`kidresearch.cohorts`); the message names
    the column or argument."""


class CostError(AnalysisError):
    """Bad arguments or data for a cost recipe (:mod:`kidresearch.costs`); the message names the
    field or row."""


class SegmentError(AnalysisError):
    """Bad arguments or code lists for segmentation (:mod:`kidresearch.segments`); the message
    names the field."""


class DroppedRowsWarning(UserWarning):
    """Rows were left out of an analysis (e.g. missing values); the message gives the count."""
