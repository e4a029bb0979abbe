"""Linkage and pseudonymisation: ``kid build`` turns raw monthly feeds into a research KID.

* :mod:`.nhs`: NHS number normalisation and the modulus 11 check, vectorised.
* :mod:`.pseudonym`: key files and keyed HMAC-SHA256 pseudonyms (person and household).
* :mod:`.validate`: the row checks generated from the data dictionary.
* :mod:`.quarantine`: where unlinkable and malformed rows go, with their reasons.
* :mod:`.costs`: the ``costs`` table from the documented unit costs.
* :mod:`.versions`: immutable versions, published atomically.
* :mod:`.report`: the linkage report (Markdown, HTML, JSON).
* :mod:`.build`: :func:`build`, which runs all of the above.

Examples
--------
>>> from kidresearch.linkage import is_valid_nhs_number
>>> is_valid_nhs_number("943 476 5919")
True
"""

from kidresearch.linkage.build import BuildResult, build
from kidresearch.linkage.nhs import (
    is_valid_nhs_number,
    normalise_nhs_number,
    validate_nhs_number,
)
from kidresearch.linkage.pseudonym import new_key_file
from kidresearch.linkage.quarantine import read_quarantine
from kidresearch.linkage.versions import current_version, list_versions

__all__ = [
    "BuildResult",
    "build",
    "current_version",
    "is_valid_nhs_number",
    "list_versions",
    "new_key_file",
    "normalise_nhs_number",
    "read_quarantine",
    "validate_nhs_number",
]
