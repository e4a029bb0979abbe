"""`make demo` / `kid demo`: synthetic KID -> linked research KID -> report batch, end to end."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _say(text: str) -> None:
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def run_demo(
    *,
    out: str | os.PathLike[str] = "demo_data",
    seed: int | None = None,
    preset: str = "demo",
    progress: bool = True,
) -> int:
    """Run the whole demo into ``out`` and say where everything is. Returns an exit code."""
    from kidresearch.synth import generate

    out = Path(out)
    started = time.perf_counter()
    raw_dir = out / "synthetic"
    _say(f"[1] Generating the synthetic KID ({preset} preset) into {raw_dir} ...")
    synth = generate(preset, out=raw_dir, seed=seed, progress=progress)
    _say(synth.summary().to_string())

    if importlib.util.find_spec("kidresearch.linkage.build") is None:
        _say(f"Done in {time.perf_counter() - started:.0f} s. Raw feeds and truth.json: {raw_dir}")
        return 0
    from kidresearch.linkage import build, new_key_file

    key = out / "secrets" / "pseudonymisation.key"
    if not key.exists():
        new_key_file(key)
    kid_dir = out / "kid"
    _say(f"[2] Linking and pseudonymising into {kid_dir} ...")
    built = build(raw_dir / "raw", kid_dir, key_file=key, progress=progress)
    _say(built.summary().to_string())

    if importlib.util.find_spec("kidresearch.reports") is None:
        _say(f"Done in {time.perf_counter() - started:.0f} s. Research KID: {kid_dir}")
        return 0
    from kidresearch.reports import run_all

    _say("[3] Running the report batch for the example proposals ...")
    code = run_all(data=kid_dir, out=out / "reports", progress=progress)
    _say(f"Done in {time.perf_counter() - started:.0f} s. Reports: {(out / 'reports').resolve()}")
    return code
