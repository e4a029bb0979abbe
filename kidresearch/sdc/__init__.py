"""Statistical disclosure control: safe tables, secondary suppression, model checks, output log.

Everything a researcher releases goes through here: :func:`crosstab`, :func:`pivot_table` and
:func:`check_table` return a :class:`CheckedTable` whose ``released`` frame is safe by
construction; :func:`check_model` and :func:`check_figure` check models and figures; every
check yields a record for the :class:`OutputLog`; :func:`check_folder` re-checks a folder of
outputs (``kid outputs check``). Rules and defaults: ``docs/disclosure_control.md``.

Examples
--------
>>> import pandas as pd
>>> from kidresearch import sdc
>>> data = pd.DataFrame({"district": ["Dover"] * 40 + ["Thanet"] * 6})
>>> sdc.crosstab(data, "district", margins=False).released.tolist()
[40.0, nan]
"""

from __future__ import annotations

from kidresearch.sdc.models import CheckedOutput, check_figure, check_model
from kidresearch.sdc.outputs import FolderCheck, OutputLog, OutputRecord, check_folder
from kidresearch.sdc.policy import DisclosurePolicy
from kidresearch.sdc.secondary import feasible_ranges
from kidresearch.sdc.tables import (
    CheckedTable,
    check_survival,
    check_table,
    crosstab,
    pivot_table,
)

__all__ = [
    "CheckedOutput",
    "CheckedTable",
    "DisclosurePolicy",
    "FolderCheck",
    "OutputLog",
    "OutputRecord",
    "check_figure",
    "check_folder",
    "check_model",
    "check_survival",
    "check_table",
    "crosstab",
    "feasible_ranges",
    "pivot_table",
]
