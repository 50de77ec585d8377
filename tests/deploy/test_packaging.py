"""`pip install .` (not editable) into a fresh virtual environment gives a working `ppn`
(issue 17): the wheel carries every package the console script needs, `ppn --version`
reads the version from the installed distribution's metadata, and the provision scripts are
installed next to `ppn` and use it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_pip_install_gives_a_working_ppn(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("genesis", "ppn", "psp", "deploy"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    base = Path(sys.base_prefix) / "bin" / "python3"
    venv = tmp_path / "venv"
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ppn = venv / "bin" / "ppn"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    run = subprocess.run([str(ppn), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert run.stdout == f"ppn {version}\n", run.stderr
    run = subprocess.run([str(ppn), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and "COMMAND" in run.stdout
    for command in ("up", "vault", "orchestration", "fleet", "vmhost", "service", "doctor"):
        assert command in run.stdout
    # The installed copy is what runs, not the source tree, and a unit points at it.
    run = subprocess.run(
        [str(ppn), "service", "install", "agent", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert f"ExecStart={ppn} up --state /var/lib/ppn" in run.stdout, run.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import ppn.deploy; print(ppn.deploy.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(venv))
    # The provision scripts come along, next to ppn, and find it there (RFC-NOTES §13.3).
    for script in ("provision-vm-infrastructure-onprem.sh", "provision-vm-infrastructure-cloud.sh"):
        run = subprocess.run(
            [str(venv / "bin" / script), "--help"], capture_output=True, text=True, cwd=tmp_path
        )
        assert run.returncode == 0 and run.stdout.startswith(f"usage: {script} "), run.stderr
    run = subprocess.run(
        [str(venv / "bin" / "provision-vm-infrastructure-cloud.sh"), "--join", "1-AAAA-AAAA-A",
         "--services", "none", "--state", str(tmp_path / "s"), "--config", str(tmp_path / "c")],
        capture_output=True, text=True, cwd=tmp_path,
        env={"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "PPN_INSTALL": "none"},
    )  # fmt: skip
    if os.geteuid() == 0 and run.returncode != 3:  # (3: this host lacks a prerequisite)
        assert f"ppn: {venv / 'bin' / 'ppn'}" not in run.stderr  # it ran ppn, not named it
        assert f"ppn: ppn {version}" in run.stderr, run.stderr
