"""Run ACRO's checks on many tables in one process (executed inside ACRO's own venv).

Reads a JSON job from stdin::

    {"rows": [...], "cols": [...],
     "runs": [{"name": str, "settings": {ACRO risk appetite}, "aggfunc": "count"|"sum"|"max",
               "tables": [{"id": int, "row": [...], "col": [...], "value": [...]}, ...]}],
     "n_single": int}

and writes, per run, the failing checks of every cell ("id|row|col" -> ["NKCheck", ...]).
All tables of a run are stacked into one table with the table id as an outer row level: ACRO's
primary checks are cell-local, so each cell gets the decision it gets in a table of its own;
the first ``n_single`` tables of each run are also checked one by one to show it.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import sys
from typing import Any

import pandas as pd

# ``acro`` is imported inside main(): this file lives in the test tree, where pytest's
# --doctest-modules imports it under our own venv (which has no acro).


def outcomes(
    acro: Any, frame: pd.DataFrame, aggfunc: str, margins: bool = False
) -> dict[str, list[str]]:
    rows = [frame["id"], frame["row"]]
    if aggfunc == "count":
        acro.crosstab(rows, frame["col"], margins=margins)
    elif aggfunc in ("sum", "mean"):
        acro.crosstab(rows, frame["col"], values=frame["value"], aggfunc=aggfunc, margins=margins)
    else:
        acro.pivot_table(frame, index=["id", "row"], columns="col", values="value", aggfunc=aggfunc)
    result = acro.results.results[list(acro.results.results)[-1]]
    out: dict[str, list[str]] = {}
    for key, series in result.outcome.iterrows():
        tid, row = key
        for col, text in series.items():
            if isinstance(col, tuple):
                col = col[-1]
            checks = [t.strip() for t in str(text).split(";") if t.strip() and t.strip() != "ok"]
            out[f"{tid}|{row}|{col}"] = sorted(checks)
    return out


def stacked(tables: list[dict], rows: list[str], cols: list[str]) -> pd.DataFrame:
    frame = pd.concat(
        [
            pd.DataFrame({"id": t["id"], "row": t["row"], "col": t["col"], "value": t["value"]})
            for t in tables
        ],
        ignore_index=True,
    )
    frame["id"] = pd.Categorical(frame["id"], categories=sorted({t["id"] for t in tables}))
    frame["row"] = pd.Categorical(frame["row"], categories=rows)
    frame["col"] = pd.Categorical(frame["col"], categories=cols)
    return frame


def main() -> None:
    from acro import ACRO

    logging.disable(logging.CRITICAL)
    job = json.load(sys.stdin)
    result: dict = {"version": importlib.metadata.version("acro"), "runs": {}, "single": {}}
    for run in job["runs"]:
        acro = ACRO(suppress=False)
        acro.config.update(run["settings"])
        acro.sdc_checks.risk_appetite.update(run["settings"])
        frame = stacked(run["tables"], job["rows"], job["cols"])
        margins = bool(run.get("margins", False))
        if margins:
            # Margins span the table id too, so each table is crosstabbed on its own.
            out: dict[str, list[str]] = {}
            for t in run["tables"]:
                one = outcomes(acro, stacked([t], job["rows"], job["cols"]), run["aggfunc"], True)
                # The grand-total row has no table id ("All||col"): put it back.
                out.update({k.replace("All||", f"{t['id']}|All|"): v for k, v in one.items()})
            result["runs"][run["name"]] = out
            continue
        result["runs"][run["name"]] = outcomes(acro, frame, run["aggfunc"])
        single: dict[str, list[str]] = {}
        for t in run["tables"][: job.get("n_single", 0)]:
            single.update(outcomes(acro, stacked([t], job["rows"], job["cols"]), run["aggfunc"]))
        result["single"][run["name"]] = single
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
