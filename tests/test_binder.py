"""Binder and JupyterLab: the environments agree with pyproject.toml, and JupyterLab starts.

``binder/requirements.txt`` and ``environment.yml`` must list exactly pyproject's runtime
dependencies; ``binder/postBuild`` must be a valid script whose ``kid`` commands the CLI accepts.
The smoke test starts JupyterLab on a free localhost port with a random token, finds the
project's ``kidresearch`` kernel (registered as ``make lab`` does, into a private prefix)
through the server's REST API, and stops the server cleanly.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from kidresearch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
KERNEL = "kidresearch"


def _normalise(lines: list[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        key = canonicalize_name(req.name) + (
            f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        )
        assert key not in out, f"{where}: {req.name} is listed twice"
        out[key] = str(SpecifierSet(str(req.specifier)))
    return out


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pyproject_deps() -> dict[str, str]:
    return _normalise(_pyproject()["project"]["dependencies"], "pyproject.toml")


def _binder_deps() -> dict[str, str]:
    lines = [
        line.split("#", 1)[0].strip()
        for line in (BINDER / "requirements.txt").read_text().splitlines()
    ]
    return _normalise([line for line in lines if line], "binder/requirements.txt")


def _environment_yml() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _conda_pip_deps() -> dict[str, str]:
    env = _environment_yml()
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    # "-e ." installs the project itself; everything else must match pyproject.
    return _normalise([p for p in pip if not p.startswith("-e")], "environment.yml")


def _diff(a: dict[str, str], b: dict[str, str]) -> str:
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in keys if a.get(k) != b.get(k))


def test_binder_requirements_match_pyproject_dependencies():
    pyproject, binder = _pyproject_deps(), _binder_deps()
    assert binder == pyproject, "pyproject.toml vs binder/requirements.txt: " + _diff(
        pyproject, binder
    )


def test_environment_yml_matches_pyproject_dependencies():
    pyproject, conda = _pyproject_deps(), _conda_pip_deps()
    assert conda == pyproject, "pyproject.toml vs environment.yml: " + _diff(pyproject, conda)
    pip = next(d["pip"] for d in _environment_yml()["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip


def test_python_versions_agree():
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(\d+\.\d+)", runtime)
    assert match, f"binder/runtime.txt must read python-X.Y, got {runtime!r}"
    conda_python = next(
        d
        for d in _environment_yml()["dependencies"]
        if isinstance(d, str) and d.startswith("python")
    )
    assert conda_python == f"python={match.group(1)}"
    assert requires.contains(f"{match.group(1)}.0")


def test_post_build_is_a_valid_script_with_valid_kid_commands():
    script = BINDER / "postBuild"
    assert os.access(script, os.X_OK), "binder/postBuild must be executable"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text().replace("\\\n", " ")
    values = {
        "KID_HOME": "/home/jovyan/kid_demo",
        "KID_SEED": "20261126",
        "KEY_FILE": "/home/jovyan/.kid_secrets/k.key",
        "HOME": "/home/jovyan",
        "PWD": "/home/jovyan/repo",
    }
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("kid ")]
    assert [c.split()[1] for c in commands] == ["synth", "key", "build"]
    parser = build_parser()
    for command in commands:
        expanded = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], command)
        args = parser.parse_args(shlex.split(expanded)[1:])
        if args.command == "build":
            # The key file must live outside the KID folder the kernel is given.
            assert not str(args.key_file).startswith(str(args.out))
    kernel_line = next(line for line in text.splitlines() if "ipykernel install" in line)
    assert f"--name {KERNEL}" in kernel_line and "--env KID_DATA" in kernel_line
    assert f"--name {KERNEL}" in (ROOT / "Makefile").read_text()  # `make lab`: same kernel


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_jupyterlab_starts_and_lists_the_project_kernel(tmp_path):
    prefix = tmp_path / "prefix"
    # Register the kernel as `make lab` does, but into a private prefix (not the shared venv).
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ipykernel",
            "install",
            "--prefix",
            str(prefix),
            "--name",
            KERNEL,
            "--display-name",
            "Python (kidresearch)",
        ],
        check=True,
        capture_output=True,
    )
    env = {
        **os.environ,
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
    }
    port, token = _free_port(), secrets.token_hex(16)
    log = (tmp_path / "lab.log").open("w")
    lab = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("jupyter")),
            "lab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.token={token}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.root_dir={tmp_path}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            # CI runs as root (.ci/run); JupyterLab refuses root unless told.
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/kernelspecs"
        request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
        specs = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and lab.poll() is None:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    specs = json.load(response)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert specs is not None, (
            f"JupyterLab did not answer on port {port}: {(tmp_path / 'lab.log').read_text()[-3000:]}"
        )
        assert KERNEL in specs["kernelspecs"], sorted(specs["kernelspecs"])
        assert specs["kernelspecs"][KERNEL]["spec"]["display_name"] == "Python (kidresearch)"
        # Without the token the API refuses.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 403
    finally:
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait(timeout=10)
        log.close()
    assert lab.returncode is not None
    assert lab.returncode in (0, -signal.SIGTERM), (tmp_path / "lab.log").read_text()[-3000:]
