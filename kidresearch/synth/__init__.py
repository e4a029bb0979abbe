"""The synthetic KID generator: raw monthly feeds with known truth, deterministic and chunked.

``generate(source, out=...)`` writes::

    OUT/raw/<feed>/<feed>_<YYYY-MM>.parquet   one file per feed per extract month
    OUT/raw/reference/practices.parquet, lsoas.parquet
    OUT/raw/MANIFEST.json                     files with row counts and sha256
    OUT/truth.json                            every parameter a recipe should recover
    OUT/scenario.yaml                         the fully resolved scenario (incl. seed)

People are simulated in chunks of ``population.chunk_size`` (fixed by the scenario); each chunk
has its own random stream (``SeedSequence(seed, spawn_key=(chunk,))``), so the same scenario and
seed give byte-identical files however many worker processes run. Worker processes simulate
chunks and spill each feed to a temporary Arrow part file (one record batch per extract month);
then they write the feed-month Parquet files, each from the parts in chunk order (one row group
per chunk). The parent only sums the chunks' truth statistics (counts and fixed-size arrays, in
chunk order), and no process holds more than one chunk or one open Parquet writer, so peak
memory depends on the chunk size, not on the population size.

Examples
--------
>>> import tempfile
>>> from kidresearch.synth import generate
>>> with tempfile.TemporaryDirectory() as tmp:
...     result = generate({"population": {"people": 300, "practices": 2}}, out=tmp, seed=1)
...     int(result.row_counts["registrations"]) > 300
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kidresearch.schema import REFERENCE_TABLES
from kidresearch.synth.feeds import (
    COST_BINS,
    FEEDS,
    ChunkTruth,
    Reference,
    simulate_chunk,
)
from kidresearch.synth.population import DISTRICTS, Calendar, Geography, make_geography
from kidresearch.synth.scenario import PRESETS, Scenario, load_scenario
from kidresearch.synth.truth import build_truth

__all__ = ["PRESETS", "Scenario", "SynthResult", "generate", "load_scenario"]

log = logging.getLogger(__name__)

# Fixed writer settings: no timestamps, fixed compression, statistics on (deterministic).
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": True,
    "write_statistics": True,
    # Categorical columns are written from Arrow dictionary arrays; without the stored Arrow
    # schema, readers get plain strings, i.e. exactly schema.RAW_FEEDS[feed].arrow_schema().
    "store_schema": False,
}


def _writer_options(schema: pa.Schema) -> dict[str, Any]:
    """Dictionary-encode only the low-cardinality string columns (codes, categories, months);
    record ids and NHS numbers are nearly unique, so building dictionaries for them is waste."""
    low = [
        f.name
        for f in schema
        if (pa.types.is_string(f.type) or pa.types.is_dictionary(f.type))
        and f.name not in ("record_id", "nhs_number")
    ]
    stats = [f.name for f in schema if f.name not in ("record_id", "nhs_number")]
    return _PARQUET_OPTIONS | {"use_dictionary": low, "write_statistics": stats}


@dataclass(frozen=True)
class SynthResult:
    """What :func:`generate` wrote.

    Attributes
    ----------
    out
        The output folder (``raw/``, ``truth.json``, ``scenario.yaml``).
    scenario
        The resolved scenario (seed included).
    truth
        The content of ``truth.json``.
    row_counts
        Rows written per feed (all extract months).
    """

    out: Path
    scenario: Scenario
    truth: dict[str, Any] = field(repr=False)
    row_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """One row per feed: rows, extract months, files, linkage rate, injected errors."""
        quality = self.truth["data_quality"]["feeds"]
        months = self.truth["period"]["months"]
        rows = []
        for feed in FEEDS:
            q = quality.get(feed, {})
            rows.append(
                {
                    "feed": feed,
                    "rows": self.row_counts.get(feed, 0),
                    "months": months,
                    "linkage_rate": q.get("nhs_number", {}).get("linkage_rate"),
                    "injected_errors": sum(q.get("injected_errors", {}).values()),
                    "corrections": q.get("corrections", 0),
                }
            )
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        head = (
            f"<p><b>Synthetic KID</b> '{self.scenario.name}' (seed {self.scenario.seed}): "
            f"{self.truth['population']['people']:,} people, written to <code>{self.out}</code></p>"
        )
        return head + self.summary().to_html(index=False)

    def __repr__(self) -> str:
        return (
            f"SynthResult(out={str(self.out)!r}, scenario={self.scenario.name!r}, "
            f"seed={self.scenario.seed}, rows={sum(self.row_counts.values()):,})"
        )


# ---------------------------------------------------------------------------- worker state
_WORKER: dict[str, Any] = {}


def _init_worker(scn: Scenario, parts: Path) -> None:
    _WORKER["scn"] = scn
    _WORKER["cal"] = Calendar.from_scenario(scn)
    _WORKER["geo"] = make_geography(scn)
    _WORKER["ref"] = Reference.load()
    _WORKER["parts"] = parts


def _part_path(parts: Path, feed: str, chunk: int) -> Path:
    return parts / feed / f"chunk{chunk:06d}.arrow"


def _run_chunk(chunk: int) -> ChunkTruth:
    """Simulate one chunk and spill each feed to a part file: an uncompressed Arrow IPC file
    with one record batch per extract month, so that a writer can later take one month of one
    chunk (memory-mapped, no copy; compressing the parts costs more CPU than the disk saves)."""
    feeds, truth = simulate_chunk(
        _WORKER["scn"], _WORKER["geo"], _WORKER["cal"], _WORKER["ref"], chunk
    )
    n_months = _WORKER["cal"].n_months
    for feed, ff in feeds.items():
        bounds = np.searchsorted(ff.month, np.arange(n_months + 1))
        batches = ff.table.combine_chunks().to_batches()
        whole = batches[0] if batches else _empty_batch(ff.table.schema)
        path = _part_path(_WORKER["parts"], feed, chunk)
        with pa.ipc.new_file(path, whole.schema) as sink:
            for m in range(n_months):
                lo, hi = int(bounds[m]), int(bounds[m + 1])
                sink.write_batch(whole.slice(lo, hi - lo))
    return truth


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)


def _write_file(feed: str, m: int, path: Path) -> tuple[int, str]:
    """Write one feed-month file: one row group per chunk (in chunk order) from the part files;
    returns its row count and sha256."""
    parts: Path = _WORKER["parts"]
    n_chunks = -(-_WORKER["scn"].population.people // _WORKER["scn"].population.chunk_size)
    writer = None
    schema = None
    rows = 0
    try:
        for chunk in range(n_chunks):
            with pa.memory_map(str(_part_path(parts, feed, chunk))) as source:
                reader = pa.ipc.open_file(source)
                schema = reader.schema
                batch = reader.get_batch(m)
                if batch.num_rows == 0:
                    continue
                if writer is None:
                    writer = pq.ParquetWriter(path, schema, **_writer_options(schema))
                writer.write_table(pa.Table.from_batches([batch]))
                rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no rows this month: a 0-row file, so every extract month is present
        assert schema is not None
        pq.write_table(schema.empty_table(), path, **_writer_options(schema))
    return rows, _sha256(path)


def _in_order(
    ex: ProcessPoolExecutor | None, fn: Callable[..., Any], tasks: list[tuple], workers: int
) -> Iterator[Any]:
    """``fn(*task)`` for every task, results yielded in task order, at most ``workers + 1``
    tasks in flight (inline when there is no pool)."""
    if ex is None:
        for task in tasks:
            yield fn(*task)
        return
    pending: dict[int, Future] = {}
    nxt = 0
    for i in range(len(tasks)):
        while nxt < len(tasks) and len(pending) < workers + 1:
            pending[nxt] = ex.submit(fn, *tasks[nxt])
            nxt += 1
        yield pending.pop(i).result()


def _write_reference(raw: Path, geo: Geography | None = None) -> dict[str, int]:
    """Write the practice and LSOA tables (the worker's geography by default)."""
    geo = geo if geo is not None else _WORKER["geo"]
    ref = raw / "reference"
    ref.mkdir(parents=True, exist_ok=True)
    names = np.array([d[0] for d in DISTRICTS])
    practices = {
        "practice_code": geo.practice_code,
        "practice_name": np.array([f"Synthetic Practice {i + 1}" for i in range(geo.n_practices)]),
        "district": names[geo.practice_district],
        "lsoa_code": geo.lsoa_code[geo.practice_lsoa],
        "latitude": geo.practice_lat,
        "longitude": geo.practice_lon,
    }
    lsoas = {
        "lsoa_code": geo.lsoa_code,
        "district": names[geo.lsoa_district],
        "imd_score": geo.lsoa_imd_score,
        "imd_decile": geo.lsoa_imd_decile,
        "imd_quintile": geo.lsoa_imd_quintile,
        "latitude": geo.lsoa_lat,
        "longitude": geo.lsoa_lon,
    }
    out = {}
    for name, cols in (("practices", practices), ("lsoas", lsoas)):
        schema = REFERENCE_TABLES[name].arrow_schema()
        table = pa.Table.from_arrays(
            [pa.array(np.asarray(cols[f.name]).tolist(), type=f.type) for f in schema],
            schema=schema,
        )
        pq.write_table(table, ref / f"{name}.parquet", **_PARQUET_OPTIONS)
        out[f"reference/{name}"] = table.num_rows
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def generate(
    source: str | os.PathLike[str] | dict[str, Any] | Scenario,
    *,
    out: str | os.PathLike[str],
    seed: int | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> SynthResult:
    """Generate a synthetic KID: raw monthly feeds, reference tables, truth and manifest.

    Parameters
    ----------
    source
        A preset name (``"tiny"``, ``"demo"``, ``"kent"``), a scenario YAML path, a mapping or a
        :class:`Scenario`.
    out
        Output folder; its ``raw/`` subfolder is replaced.
    seed
        Overrides the scenario's seed.
    progress
        Show a rich progress bar.
    workers
        Worker processes (default: up to 2, one per CPU). The output does not depend on it.

    Returns
    -------
    SynthResult

    Raises
    ------
    ScenarioError
        If the scenario is invalid (the message names the key).
    """
    scn = load_scenario(source)
    if seed is not None:
        scn = scn.model_copy(update={"seed": int(seed)})
    out = Path(out)
    raw = out / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    cal = Calendar.from_scenario(scn)
    geo = make_geography(scn)
    n_chunks = -(-scn.population.people // scn.population.chunk_size)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)  # the file-writing pass runs in parallel too

    # Two passes over the same worker pool, so that no process holds anything that grows with
    # the population: (1) workers simulate chunks and spill each feed to a part file; (2)
    # workers write the feed-month files, each from the parts in chunk order (one row group per
    # chunk), one open Parquet writer per worker. The parent only sums the truth statistics.
    parts = out / ".synth_parts"
    if parts.exists():
        shutil.rmtree(parts)
    for f in FEEDS:
        (raw / f).mkdir()
        (parts / f).mkdir(parents=True)
    files = [
        (feed, m, raw / feed / f"{feed}_{cal.month_label(m)}.parquet")
        for feed in FEEDS
        for m in range(cal.n_months)
    ]

    counts: dict[str, Any] = {}
    practice_acsc = np.zeros((geo.n_practices, 2), dtype=np.int64)
    cost_histogram = np.zeros((2, COST_BINS))
    cost_55 = np.zeros((2, 5))
    row_counts = dict.fromkeys(FEEDS, 0)
    file_rows: dict[str, int] = {}
    file_sha: dict[str, str] = {}

    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=False)
        sim_task = bar.add_task(f"synth {scn.name}: people", total=n_chunks)
        write_task = bar.add_task(f"synth {scn.name}: files", total=len(files))
        bar.start()
    ex: ProcessPoolExecutor | None = None
    try:
        if workers > 1:
            ctx = __import__("multiprocessing").get_context("fork")
            ex = ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(scn, parts)
            )
        else:
            _init_worker(scn, parts)
        # Truth statistics are summed in chunk order (float sums are order-dependent).
        for truth in _in_order(ex, _run_chunk, [(c,) for c in range(n_chunks)], workers):
            for key, value in truth.counts.items():
                counts[key] = counts.get(key, 0) + value
            practice_acsc += truth.practice_acsc
            cost_histogram += truth.cost_histogram
            cost_55 += truth.cost_55_by_quintile
            if bar is not None:
                bar.advance(sim_task)
        for (feed, m, path), (rows, sha) in zip(
            files, _in_order(ex, _write_file, files, workers), strict=True
        ):
            name = f"{feed}/{path.name}"
            file_rows[name] = rows
            file_sha[name] = sha
            row_counts[feed] += rows
            if m == cal.n_months - 1:  # results come in order: this feed's files are all done
                shutil.rmtree(parts / feed)
            if bar is not None:
                bar.advance(write_task)
        # Reference tables too are written by a worker: the parent never writes Parquet (Arrow's
        # allocator would keep its buffers in the parent's memory).
        file_rows |= next(_in_order(ex, _write_reference, [(raw,)], workers))
    finally:
        if ex is not None:
            ex.shutdown(cancel_futures=True)
        _WORKER.clear()
        shutil.rmtree(parts, ignore_errors=True)
        if bar is not None:
            bar.stop()

    truth = build_truth(
        scn,
        geo,
        cal,
        counts,
        practice_acsc,
        cost_histogram,
        cost_55,
    )
    manifest_files = []
    for name in sorted(file_rows):
        rel = name if name.endswith(".parquet") else f"{name}.parquet"
        sha = file_sha.get(name) or _sha256(raw / rel)
        manifest_files.append({"path": rel, "rows": file_rows[name], "sha256": sha})
    manifest = {
        "scenario": scn.name,
        "seed": scn.seed,
        "first_extract": cal.month_label(0),
        "last_extract": cal.month_label(cal.n_months - 1),
        "feeds": {f: row_counts[f] for f in FEEDS},
        "files": manifest_files,
    }
    (raw / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    (out / "scenario.yaml").write_text(scn.to_yaml(), encoding="utf-8")
    log.info("synthetic KID '%s' written to %s", scn.name, out)
    return SynthResult(out=out, scenario=scn, truth=truth, row_counts=row_counts)
