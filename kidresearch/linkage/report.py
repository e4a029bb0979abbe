"""The linkage report of a build: Markdown, HTML and JSON, counts only.

``KID_DIR/reports/linkage_<version>.{md,html,json}`` give, per feed and per extract month, the
rows that arrived, were linked and were quarantined, the linkage rate (linked / arrived), the
quarantine reasons with counts and the corrections applied (rows replaced by a later extract).
The report never contains row data, NHS numbers or the key.

Examples
--------
>>> report = {
...     "version": "2026-10",
...     "feeds": [{"feed": "gp_events", "rows_in": 100, "rows_linked": 97,
...                "rows_quarantined": 3, "rows_unlinkable": 2, "rows_malformed": 1,
...                "linkage_rate": 0.98, "corrections_applied": 1, "rows_published": 96}],
...     "months": [], "reasons": [], "tables": {}, "inputs": 1,
... }
>>> "| gp_events | 100 | 97 | 3 | 2 | 1 | 98.00% | 1 | 96 |" in report_markdown(report)
True
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

FEED_COLUMNS = (
    "feed",
    "rows_in",
    "rows_linked",
    "rows_quarantined",
    "rows_unlinkable",
    "rows_malformed",
    "linkage_rate",
    "corrections_applied",
    "rows_published",
)
MONTH_COLUMNS = (
    "feed",
    "extract_month",
    "rows_in",
    "rows_linked",
    "rows_quarantined",
    "rows_unlinkable",
    "rows_malformed",
    "linkage_rate",
)
REASON_COLUMNS = ("feed", "field", "reason", "rows")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2%}"
    return str(value)


def _md_table(rows: list[dict], columns: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]).replace("|", "\\|") for c in columns) + " |")
    return lines + [""]


def report_markdown(report: dict) -> str:
    """Render the linkage report as Markdown."""
    lines = [
        f"# Linkage report: KID version {report['version']}",
        "",
        "Rows in = rows linked + rows quarantined for every feed and extract month (checked by "
        "the build). Quarantined rows are unlinkable (NHS number missing, invalid or not in the "
        "population register) or malformed (linkable but failing a data-dictionary check); the "
        "linkage rate is (rows in - rows unlinkable) / rows in. Linked rows later replaced by a correction in a later extract are counted "
        "as linked in their own month and as corrections applied; rows published is what the "
        "research table holds. Counts only: no row data leaves the restricted area.",
        "",
        "## By feed",
        "",
        *_md_table(report["feeds"], FEED_COLUMNS),
        "## Quarantine reasons",
        "",
        *_md_table(report["reasons"], REASON_COLUMNS),
        "## By feed and extract month",
        "",
        *_md_table(report["months"], MONTH_COLUMNS),
    ]
    return "\n".join(lines)


def _html_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(report: dict) -> str:
    """Render the linkage report as a standalone HTML page."""
    title = f"Linkage report: KID version {html.escape(report['version'])}"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px;text-align:right}</style></head><body>"
        f"<h1>{title}</h1>"
        "<p>Rows in = rows linked + rows quarantined for every feed and extract month. "
        "Counts only.</p>"
        f"<h2>By feed</h2>{_html_table(report['feeds'], FEED_COLUMNS)}"
        f"<h2>Quarantine reasons</h2>{_html_table(report['reasons'], REASON_COLUMNS)}"
        f"<h2>By feed and extract month</h2>{_html_table(report['months'], MONTH_COLUMNS)}"
        "</body></html>"
    )


def write_report(report: dict, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``linkage_<version>.md``, ``.html`` and ``.json`` into ``folder``; return paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"linkage_{report['version']}"
    paths = [stem.with_suffix(".md"), stem.with_suffix(".html"), stem.with_suffix(".json")]
    paths[0].write_text(report_markdown(report), encoding="utf-8")
    paths[1].write_text(report_html(report), encoding="utf-8")
    paths[2].write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
    return paths
