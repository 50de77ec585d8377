"""The provision scripts' own behaviour (deploy/, issue 17), without namespaces: help, usage
errors, the prerequisite step with its installer, the configuration file, and the exit status
of a ceremony that fails. The whole run, ceremony and roles included, is
tests/deploy/test_provision_netns.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from interop.mesh_platform import _read_event

ROOT = Path(__file__).resolve().parents[2]
ONPREM = ROOT / "deploy" / "provision-vm-infrastructure-onprem.sh"
CLOUD = ROOT / "deploy" / "provision-vm-infrastructure-cloud.sh"
# What the scripts run besides ppn and the prerequisites they check for.
TOOLS = (
    *("sh", "dirname", "readlink", "id", "sed", "grep", "date"),
    *("mkdir", "chmod", "mv", "rm", "sleep", "cat"),
)


def _run(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env if env is not None else {**os.environ, "PPN": f"{sys.executable} -m ppn"},
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("script", [ONPREM, CLOUD], ids=["onprem", "cloud"])
def test_help_teaches_and_lists_exit_statuses(script: Path, tmp_path: Path) -> None:
    (tmp_path / script.name).symlink_to(script)  # as from /usr/local/bin
    done = _run(tmp_path / script.name, "--help")
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: {script.name} ")
    for text in ("--join CODE", "--services MODE", "PPN_INSTALL", "exit status", "130"):
        assert text in done.stdout
    assert ("--genesis" in done.stdout) == (script is ONPREM)


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        (ONPREM, [], "give --genesis (first node) or --join CODE"),
        (CLOUD, [], "give --join CODE"),
        (CLOUD, ["--genesis"], "--genesis is for provision-vm-infrastructure-onprem.sh"),
        (CLOUD, ["--join", "1-AAAA-AAAA-A", "--relay"], "--relay is for"),
        (ONPREM, ["--genesis", "--join", "X"], "not both"),
        (ONPREM, ["--join"], "--join needs a value"),
        (ONPREM, ["--genesis", "--sponsor", "h:1"], "--sponsor is for --join"),
        (ONPREM, ["--genesis", "--services", "cron"], "systemd, background or none"),
        (ONPREM, ["--genesis", "--frobnicate"], "unknown argument: --frobnicate"),
        (ONPREM, ["--genesis", "--services", "systemd", "--state", "/tmp/x"], "/var/lib/ppn"),
    ],
)
def test_bad_arguments_are_one_line_and_the_usage(
    script: Path, args: list[str], message: str
) -> None:
    done = _run(script, *args)
    assert done.returncode == 2
    first, second, *rest = done.stderr.splitlines()
    assert first.startswith(f"{script.name}: ") and message in first
    assert second.startswith(f"usage: {script.name} ") and rest == []


def _bare_path(tmp_path: Path) -> Path:
    """A PATH directory with the scripts' plain tools and python, but no WireGuard tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return bin_dir


@pytest.mark.skipif(os.geteuid() != 0, reason="the scripts run as root (the next test checks)")
def test_missing_prerequisites_are_installed_then_the_ceremony_status_is_the_scripts(
    tmp_path: Path,
) -> None:
    bin_dir = _bare_path(tmp_path)
    module = Path("/sys/module/wireguard").is_dir()
    env = {
        "PATH": str(bin_dir),
        "PPN": f"{sys.executable} -m ppn",
        "PYTHONPATH": str(ROOT),
        "PPN_INSTALL": "none",
    }
    args = ["--join", "1-AAAA-AAAA-A", "--state", str(tmp_path / "state"),
            "--config", str(tmp_path / "ppn.toml"), "--services", "none"]  # fmt: skip
    done = _run(CLOUD, *args, env=env)
    assert done.returncode == 3
    wanted = "iproute2 wireguard-tools" + ("" if module else " wireguard-go")
    assert f"missing: {wanted} (PPN_INSTALL=none" in done.stderr
    assert not (tmp_path / "ppn.toml").exists()  # nothing written before the prerequisites
    # An installer gets the package names; this one "installs" them as scripts on PATH.
    installer = tmp_path / "install"
    installer.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/installed\n'
        'for p in "$@"; do case $p in\n'
        f"  iproute2) printf '#!/bin/sh\\n' > {bin_dir}/ip;;\n"
        f"  wireguard-tools) printf '#!/bin/sh\\n' > {bin_dir}/wg;;\n"
        f"  wireguard-go) printf '#!/bin/sh\\n' > {bin_dir}/wireguard-go;;\n"
        f"esac; done; chmod +x {bin_dir}/*\n"
    )
    installer.chmod(0o755)
    # A code with a typo: the ceremony fails before anything is sent (ppn join: status 10),
    # and the script exits with that status.
    done = _run(CLOUD, *args, env={**env, "PPN_INSTALL": str(installer)})
    assert (tmp_path / "installed").read_text() == wanted + "\n"
    assert done.returncode == 10, done.stderr
    assert "the join ceremony failed (ppn join: status 10); nothing was installed" in done.stderr
    config = (tmp_path / "ppn.toml").read_text()
    assert 'role = ["cloud"]' in config and f'state = "{tmp_path / "state"}"' in config
    # Again: nothing is missing now, so nothing is installed, and the file is kept.
    (tmp_path / "ppn.toml").write_text(config + "\n# mine\n")
    done = _run(CLOUD, *args, env={**env, "PPN_INSTALL": str(installer)})
    assert done.returncode == 10
    assert (tmp_path / "installed").read_text() == wanted + "\n"
    assert (tmp_path / "ppn.toml").read_text().endswith("# mine\n")
    assert "keeping" in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the scripts run as root (the next test checks)")
def test_a_broken_config_file_stops_the_script_with_its_status(tmp_path: Path) -> None:
    env = _fake_prerequisites(tmp_path)
    config = tmp_path / "ppn.toml"
    config.write_text("[up]\nfrobnicate = 1\n")
    done = _run(ONPREM, "--genesis", "--state", str(tmp_path / "s"), "--config", str(config),
                "--services", "none", env=env)  # fmt: skip
    assert done.returncode == 73, done.stderr
    assert f"{config} line 2" in done.stderr and "is not usable" in done.stderr
    assert not (tmp_path / "s").exists()  # no ceremony ran


def test_not_root_is_a_missing_prerequisite() -> None:
    # CI runs as root: drop to nobody there (util-linux setpriv), so the check runs everywhere.
    # nobody may not reach the checkout or tmp_path (0700 under root): run a copy of deploy/ from
    # a directory anyone can read.
    as_user = ["--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else None
    shared = Path(tempfile.mkdtemp(prefix="ppn-provision-"))
    try:
        shared.chmod(0o755)
        shutil.copytree(ONPREM.parent, shared / "deploy")
        argv = [str(shared / "deploy" / ONPREM.name), "--genesis", "--state", str(shared / "s")]
        done = subprocess.run(
            ["setpriv", *as_user, *argv] if as_user else argv,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PPN": f"{sys.executable} -m ppn"},
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 3 and "run as root" in done.stderr, done.stderr
        assert not (shared / "s").exists()
    finally:
        shutil.rmtree(shared)


def _fake_prerequisites(tmp_path: Path) -> dict[str, str]:
    bin_dir = _bare_path(tmp_path)
    for tool in ("ip", "wg", "wireguard-go"):  # present, as far as the script can tell
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    return {"PATH": str(bin_dir), "PPN": f"{sys.executable} -m ppn", "PYTHONPATH": str(ROOT),
            "PPN_INSTALL": "none"}  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="the scripts run as root")
def test_a_genesis_nobody_joined_is_finished_by_running_the_script_again(tmp_path: Path) -> None:
    """The joiner's operator rejects the comparison: the mesh is founded but nobody joined, the
    script exits with ppn genesis's status (12) and says what next; run again, it skips the
    ceremony and (--services none) prints the roles' commands."""
    env = _fake_prerequisites(tmp_path)
    state, config = tmp_path / "state", tmp_path / "ppn.toml"
    common = ["--state", str(state), "--config", str(config), "--services", "none"]
    genesis = subprocess.Popen(
        [str(ONPREM), "--genesis", "--name", "alpha", *common,
         "--", "--listen", "127.0.0.1:0", "--no-announce", "--events", "json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    joiner = None
    try:
        assert genesis.stdout is not None and genesis.stdin is not None
        deadline = time.monotonic() + 120
        code = _read_event(genesis.stdout, "code", deadline)
        joiner = subprocess.Popen(
            [sys.executable, "-m", "ppn", "join", code["code"], "--sponsor", code["address"],
             "--state", str(tmp_path / "beta"), "--events", "json"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert joiner.stdout is not None and joiner.stdin is not None
        for proc, answer in ((genesis, "yes"), (joiner, "no")):
            assert proc.stdout is not None and proc.stdin is not None
            _read_event(proc.stdout, "sas", deadline)
            proc.stdin.write(answer + "\n")
            proc.stdin.flush()
        _, said = genesis.communicate(timeout=120)
        assert joiner.wait(timeout=60) == 12
    finally:
        for proc in (genesis, joiner):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert genesis.returncode == 12, said
    assert said.splitlines()[-1] == (
        f"{ONPREM.name}: the mesh is founded but nobody joined (ppn genesis: status 12); run "
        f"this again to start the roles, and 'ppn invite --state {state}' to admit a node"
    )
    done = _run(ONPREM, "--genesis", *common, env=env)
    assert done.returncode == 0, done.stderr
    assert f"{state} is already a mesh member: no ceremony" in done.stderr
    python = f"{sys.executable} -m ppn --config {config}"
    assert f"start yourself: {python} up\n" in done.stderr
    assert f"start yourself: {python} vmhost serve\n" in done.stderr
    assert "running:" not in done.stderr
