"""Render the HTML reports of a test run in a real browser (headless Chromium).

For every report of a notebook that ran to the end (researcher and commissioner versions) the test
checks, in the rendered page, that every ``<img>`` decoded (``naturalWidth > 0``) and that no error
cell (papermill's error banner or a traceback output) is shown, and saves a screenshot in the
test's tmp folder (its path is printed; run with ``-s`` to see it). Two controls keep the checker
honest: the report of the failing notebook must show its error cell, and a page with a corrupt
image must be caught.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from kidresearch import reports

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found (Debian package 'chromium'; .ci/run installs it)",
)

DATA = Path(__file__).parent / "data"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# Runs in the page after load and writes what it found onto <body>, which --dump-dom prints.
PROBE = """<script>
window.addEventListener('load', function () {
  var widths = Array.from(document.images).map(function (img) { return img.naturalWidth; });
  var errors = document.querySelectorAll('#papermill-error-cell, .celltag_papermill-error-cell-tag');
  var tracebacks = Array.from(document.querySelectorAll(
      '[data-mime-type="application/vnd.jupyter.stderr"]'))
    .filter(function (el) { return /Traceback|Error:/.test(el.textContent); });
  document.body.setAttribute('data-kid-images', String(widths.length));
  document.body.setAttribute('data-kid-widths', widths.join(','));
  document.body.setAttribute('data-kid-errors', String(errors.length + tracebacks.length));
});
</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _inspect(page: Path, tmp: Path) -> dict[str, object]:
    """Load ``page`` (with the probe injected) in Chromium; return image widths and error count."""
    probed = tmp / f"probed-{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    done = _chromium(["--virtual-time-budget=5000", "--dump-dom", probed.as_uri()], tmp / "profile")
    body = re.search(r"<body[^>]*data-kid-images=\"(\d+)\"[^>]*>", done.stdout)
    assert body, f"Chromium did not run the probe on {page}: {done.stderr[-2000:]}"
    tag = body.group(0)
    widths = re.search(r'data-kid-widths="([\d,]*)"', tag).group(1)
    return {
        "images": int(body.group(1)),
        "widths": [int(w) for w in widths.split(",") if w],
        "errors": int(re.search(r'data-kid-errors="(\d+)"', tag).group(1)),
    }


@pytest.fixture(scope="session")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> reports.ReportRun:
    """The test batch run of tests/test_reports.py (same folder and lock: made once per session)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / "shared" / "report_batch"
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "report_batch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            manifests = sorted(out.glob("*/*/manifest.json"))
            if manifests:
                manifest = manifests[0]
                return reports.ReportRun(manifest.parent, json.loads(manifest.read_text()))
            return reports.run(
                DATA / "proposal_reports_test.yaml",
                parameters={"scale": "2"},
                out=out,
                notebook_dir=DATA / "notebooks",
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def test_every_report_renders_its_figures_and_shows_no_error_cell(report_run, tmp_path):
    pages = [
        report_run.run_dir / nb[key]
        for nb in report_run.manifest["notebooks"]
        if nb["status"] == "ok"
        for key in ("html", "html_commissioner")
    ]
    assert [p.name for p in pages] == ["tiny_release.html", "tiny_release.commissioner.html"]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for uri in re.findall(r'<img src="data:image/png;base64,([^"]+)"', text):
            assert base64.b64decode(uri)[:8] == b"\x89PNG\r\n\x1a\n"
        found = _inspect(page, tmp_path)
        assert found["images"] >= 1, f"{page.name}: the figure is missing"
        assert all(w > 0 for w in found["widths"]), f"{page.name}: an image did not load {found}"
        assert found["errors"] == 0, f"{page.name}: shows {found['errors']} error cell(s)"

        shot = tmp_path / f"{page.stem}.png"
        done = _chromium(
            ["--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], tmp_path / "profile"
        )
        assert shot.is_file(), f"no screenshot of {page}: {done.stderr[-2000:]}"
        pixels = plt.imread(shot)
        assert pixels.shape[:2] == (1600, 1200) and pixels.std() > 0  # not a blank page
        print(f"screenshot of {page.name}: {shot}")


def test_the_checker_sees_the_error_cell_of_a_failed_notebook(report_run, tmp_path):
    failed = report_run.run_dir / "html" / "tiny_fails.html"
    assert _inspect(failed, tmp_path)["errors"] >= 1


def test_the_checker_sees_an_image_that_does_not_decode(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><body><p>figure:</p>"
        '<img src="data:image/png;base64,iVBORw0KGgoAAAAN"></body></html>'
    )
    found = _inspect(page, tmp_path)
    assert found["images"] == 1 and found["widths"] == [0]
