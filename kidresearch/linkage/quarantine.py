"""The quarantine: rows ``kid build`` could not link or found malformed, with the reason.

The quarantine is identifiable (it keeps the offending value, which may be an NHS number) and
lives under ``KID_DIR/restricted/quarantine/<version>/<feed>.parquet``, never under
``versions/``. One row per quarantined input row, with the columns of
:data:`QUARANTINE_SCHEMA`. Reports carry only counts of it.

Examples
--------
>>> [f.name for f in QUARANTINE_SCHEMA][:4]
['feed', 'source_file', 'row_number', 'record_id']
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("feed", pa.string()),
        pa.field("source_file", pa.string()),  # path relative to the raw folder
        pa.field("row_number", pa.int64()),  # 1-based data row within the source file
        pa.field("record_id", pa.string()),
        pa.field("extract_month", pa.string()),  # from the file name
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("value", pa.string()),  # offending value as text (identifiable)
    ]
)

DUPLICATE_REASON = "record_id repeated within the extract (the last row is kept)"


def quarantine_path(kid_dir: str | os.PathLike[str], version: str, feed: str) -> Path:
    """Where the quarantine of ``feed`` for ``version`` is written."""
    return Path(kid_dir) / "restricted" / "quarantine" / version / f"{feed}.parquet"


def read_quarantine(
    kid_dir: str | os.PathLike[str], version: str, feed: str | None = None
) -> pd.DataFrame:
    """Read the quarantine of one feed (or all feeds) of a built version, for data managers."""
    root = Path(kid_dir) / "restricted" / "quarantine" / version
    paths = [quarantine_path(kid_dir, version, feed)] if feed else sorted(root.glob("*.parquet"))
    frames = [pd.read_parquet(p) for p in paths]
    if not frames:
        return QUARANTINE_SCHEMA.empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True)
