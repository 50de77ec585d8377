"""The role units under a real systemd: a Debian container booted with ``systemd-nspawn -b``.

The build hosts' PID 1 is not systemd, so ``ppn service install`` cannot start a unit there. This
boots systemd as PID 1 of a container instead: a Debian bookworm tree made once with
``debootstrap`` (cached in ``$PPN_NSPAWN_ROOT``, default /var/tmp/ppn-nspawn-bookworm), booted
``--ephemeral`` (a throw-away copy, so every run starts clean) with its own network namespace,
``/dev/net/tun`` for wireguard-go, and this checkout and its interpreter bound read-only at
their own paths. In it, the provision script runs in systemd mode: ``ppn genesis`` in the
container with a joiner beside it, then ``ppn service install agent`` and ``vmhost`` as units.
Run by hand (root; needs systemd-container and debootstrap, and a Debian mirror the first time)::

    .venv/bin/python -m interop.systemd_nspawn
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from interop.mesh_platform import _read_event

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = "systemd,systemd-sysv,dbus,python3,iproute2,wireguard-tools,wireguard-go,procps"
MIRROR = os.environ.get("PPN_NSPAWN_MIRROR", "http://deb.debian.org/debian")
PPN = str(Path(sys.executable).parent / "ppn")
SCRIPT = str(ROOT / "deploy" / "provision-vm-infrastructure-onprem.sh")


def rootfs() -> Path:
    return Path(os.environ.get("PPN_NSPAWN_ROOT", "/var/tmp/ppn-nspawn-bookworm"))


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("systemd-nspawn") is None:
        return "needs systemd-nspawn (Debian package systemd-container)"
    if not (rootfs() / "usr" / "lib" / "systemd" / "systemd").exists() and not shutil.which(
        "debootstrap"
    ):
        return f"no container tree at {rootfs()} and no debootstrap to make one"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun (wireguard-go)"
    if any(ROOT.is_relative_to(private) for private in (Path("/tmp"), Path("/var/tmp"))):
        # The checkout is bound into the container at its own path, and the units run its
        # ppn with PrivateTmp=yes: they would see an empty /tmp and fail with 203/EXEC.
        return f"the checkout {ROOT} is under /tmp or /var/tmp, which the units cannot see"
    return None


def ensure_rootfs() -> Path:
    """The cached Debian tree; made with debootstrap (minutes) when absent."""
    target = rootfs()
    if (target / "usr" / "lib" / "systemd" / "systemd").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
             str(building), MIRROR],
            check=True, capture_output=True, timeout=1800,
        )  # fmt: skip
        building.rename(target)  # whole or not at all
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


class Container:
    """A booted ephemeral container; ``run`` executes in all its namespaces (nsenter)."""

    def __init__(self, tree: Path) -> None:
        interpreter = Path(os.path.realpath(sys.executable)).parent.parent
        binds = [f"--bind-ro={ROOT}"]
        if not str(interpreter).startswith("/usr"):
            binds.append(f"--bind-ro={interpreter}")  # the venv's base Python (pyenv, /opt)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--directory", str(tree), "--ephemeral", "--boot",
             "--register=no", "--keep-unit", "--private-network", "--bind=/dev/net/tun",
             "--console=passive", *binds],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.init = self._wait_for_init()

    def _wait_for_init(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.nspawn.returncode}: {self._log()}")
            children = subprocess.run(
                ["ps", "-o", "pid=", "--ppid", str(self.nspawn.pid)], capture_output=True, text=True
            ).stdout.split()
            if children:
                pid = int(children[0])
                state = self.run(["systemctl", "is-system-running"], check=False, pid=pid)
                if state.stdout.strip() in ("running", "degraded"):
                    return pid
            time.sleep(0.5)
        raise TimeoutError(f"the container's systemd did not finish booting: {self._log()}")

    def _log(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def cmd(self, argv: Sequence[str], pid: int | None = None) -> list[str]:
        path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return ["nsenter", "-t", str(pid or self.init), "-a", "env", "-i", path, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        pid: int | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.cmd(argv, pid), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def unit(self, name: str) -> dict[str, str]:
        out = self.run(
            ["systemctl", "show", name,
             "--property=Type,ActiveState,SubState,Result,MainPID,NRestarts"]
        ).stdout  # fmt: skip
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def close(self) -> None:
        if self.nspawn.poll() is None:
            # SIGTERM to nspawn asks the container's systemd to power off (then the copy goes).
            os.kill(self.nspawn.pid, signal.SIGTERM)
            try:
                self.nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.nspawn.pid, signal.SIGKILL)
                self.nspawn.wait(timeout=30)
        self.log.close()


def provision_genesis(box: Container, timeout: float = 240) -> dict[str, Any]:
    """The on-prem script with --genesis, in systemd mode, and a joiner in the same container."""
    env = ["env", f"PPN={PPN}", "PPN_INSTALL=none"]
    deadline = time.monotonic() + timeout
    genesis = subprocess.Popen(
        box.cmd([*env, SCRIPT, "--genesis", "--name", "alpha", "--endpoint", "127.0.0.1:51820",
                 "--", "--listen", "127.0.0.1:0", "--no-announce", "--events", "json"]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    joiner = None
    try:
        assert genesis.stdout is not None and genesis.stdin is not None
        code = _read_event(genesis.stdout, "code", deadline)
        joiner = subprocess.Popen(
            box.cmd([PPN, "join", code["code"], "--sponsor", code["address"], "--state",
                     "/root/beta", "--name", "beta", "--endpoint", "127.0.0.1:51821",
                     "--events", "json"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        for proc in (genesis, joiner):
            assert proc.stdout is not None and proc.stdin is not None
            _read_event(proc.stdout, "sas", deadline)
            proc.stdin.write("yes\n")
            proc.stdin.flush()
        _, said = genesis.communicate(timeout=max(1, deadline - time.monotonic()))
        if genesis.returncode != 0 or joiner.wait(timeout=60) != 0:
            raise RuntimeError(f"provisioning failed ({genesis.returncode}): {said}")
    finally:
        for left in (genesis, joiner):
            if left is not None and left.poll() is None:
                left.kill()
                left.wait()
    status = json.loads(box.run([PPN, "status", "--json"]).stdout)
    return {"script": said, "status": status}


def main() -> None:
    ensure_rootfs()
    box = Container(rootfs())
    try:
        result = provision_genesis(box)
        print(result["script"])
        for unit in ("ppn-agent.service", "ppn-vmhost.service"):
            print(unit, box.unit(unit))
        print(box.run([PPN, "doctor"], check=False).stdout)
    finally:
        box.close()


if __name__ == "__main__":
    main()
