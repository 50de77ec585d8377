"""Building blocks for join-ceremony scenarios across processes and network namespaces.

A sponsor (``ppn genesis``) and a joiner (``ppn join``) run as separate processes with
``--events json``; :func:`run_join` plays both operators (compares the SAS, answers ``yes``)
and returns what each side reported. :func:`bring_up_wireguard` then applies a node's
``wg-<iface>.conf`` to a fresh wireguard-go device (until the node agent does this itself).

By hand, on loopback::

    python -m interop.ceremony DIR     # two state directories under DIR, a full join
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JoinResult", "bring_up_wireguard", "ppn", "run_join", "wg_setconf_text"]

Launcher = Callable[[Sequence[str]], "subprocess.Popen[str]"]


def ppn(*args: str) -> list[str]:
    """The argv that runs the ``ppn`` CLI from this interpreter."""
    return [sys.executable, "-m", "ppn", *args]


def _local(argv: Sequence[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _event(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"process ended without an event: {err.strip()}")
    value: dict[str, Any] = json.loads(line)
    return value


def _answer(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


@dataclass
class JoinResult:
    code: dict[str, Any]
    sponsor_sas: str
    joiner_sas: str
    sponsor_final: dict[str, Any]
    joiner_final: dict[str, Any]
    sponsor_status: int
    joiner_status: int


def run_join(
    *,
    sponsor_state: Path,
    joiner_state: Path,
    listen: str,
    sponsor_endpoint: str,
    joiner_endpoint: str,
    sponsor_launch: Launcher = _local,
    joiner_launch: Launcher = _local,
    sponsor_address: str | None = None,
) -> JoinResult:
    """One full join: genesis on the sponsor, join on the joiner, both confirmed if equal."""
    sponsor = sponsor_launch(
        ppn(
            "genesis",
            "--state",
            str(sponsor_state),
            "--name",
            "alpha",
            "--listen",
            listen,
            "--endpoint",
            sponsor_endpoint,
            "--events",
            "json",
        )
    )
    joiner: subprocess.Popen[str] | None = None
    try:
        code = _event(sponsor)
        joiner = joiner_launch(
            ppn(
                "join",
                code["code"],
                "--sponsor",
                sponsor_address or code["address"],
                "--state",
                str(joiner_state),
                "--name",
                "beta",
                "--endpoint",
                joiner_endpoint,
                "--events",
                "json",
            )
        )
        joiner_sas = _event(joiner)["sas"]
        sponsor_sas = _event(sponsor)["sas"]
        verdict = "yes" if joiner_sas == sponsor_sas else "no"
        _answer(sponsor, verdict)
        _answer(joiner, verdict)
        sponsor_final, joiner_final = _event(sponsor), _event(joiner)
        return JoinResult(
            code=code,
            sponsor_sas=sponsor_sas,
            joiner_sas=joiner_sas,
            sponsor_final=sponsor_final,
            joiner_final=joiner_final,
            sponsor_status=sponsor.wait(timeout=30),
            joiner_status=joiner.wait(timeout=30),
        )
    finally:
        for proc in (joiner, sponsor):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


_WG_QUICK_ONLY = (
    "Address",
    "MTU",
    "DNS",
    "Table",
    "PreUp",
    "PostUp",
    "PreDown",
    "PostDown",
    "SaveConfig",
)


def wg_setconf_text(conf: str) -> str:
    """A wg-quick file reduced to what ``wg setconf`` accepts (no Address, MTU, ...)."""
    kept = []
    for line in conf.splitlines():
        key = line.split("=", 1)[0].strip()
        if key not in _WG_QUICK_ONLY:
            kept.append(line)
    return "\n".join(kept) + "\n"


def bring_up_wireguard(
    run: Callable[[Sequence[str]], Any], popen: Launcher, state: Path, ifname: str
) -> subprocess.Popen[str]:
    """Start wireguard-go as ``ifname`` and configure it from ``state``'s wg-quick file.

    ``run``/``popen`` run a command where the device should live (a namespace's ``Host.run``
    and ``Host.popen``). Returns the wireguard-go process (the caller stops it by PID).
    """
    mesh = json.loads((state / "mesh.json").read_text())
    conf = (state / f"wg-{mesh['interface']}.conf").read_text()
    prefix = mesh["cidr"].split("/")[1]
    proc = popen(
        ["env", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", "wireguard-go", "-f", ifname]
    )
    socket_path = Path(f"/var/run/wireguard/{ifname}.sock")
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"wireguard-go did not create {socket_path}")
        time.sleep(0.05)
    setconf = state / f".{ifname}.setconf"
    fd = os.open(setconf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(wg_setconf_text(conf))
    try:
        run(["wg", "setconf", ifname, str(setconf)])
    finally:
        setconf.unlink()
    run(["ip", "addr", "add", f"{mesh['address']}/{prefix}", "dev", ifname])
    run(["ip", "link", "set", ifname, "mtu", "1420", "up"])
    return proc


def main(argv: list[str]) -> int:
    base = Path(argv[0]) if argv else Path.cwd() / "ceremony-scenario"
    result = run_join(
        sponsor_state=base / "alpha",
        joiner_state=base / "beta",
        listen="127.0.0.1:0",
        sponsor_endpoint="127.0.0.1:51820",
        joiner_endpoint="127.0.0.1:51821",
    )
    print(
        f"code {result.code['code']}  SAS sponsor {result.sponsor_sas} / joiner {result.joiner_sas}"
    )
    print(f"statuses sponsor {result.sponsor_status}, joiner {result.joiner_status}")
    print(json.dumps(result.sponsor_final, indent=2))
    return 0 if result.sponsor_status == result.joiner_status == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
