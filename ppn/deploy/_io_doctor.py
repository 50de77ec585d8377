"""What ``ppn doctor`` looks at on this host (issue 17); :mod:`ppn.deploy._doctor` judges it.

Probes go only to addresses this node already knows: its own ports on the wildcard address,
and the endpoints its members published in the signed roster.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from .. import ports
from ._doctor import (
    Finding,
    Severity,
    clock_finding,
    is_ppn_command,
    mode_finding,
    service_finding,
)

__all__ = [
    "check_background",
    "check_clock",
    "check_endpoints",
    "check_ports",
    "check_privileges",
    "check_services",
    "check_state",
    "check_wireguard",
    "port_holder",
    "probe",
    "run_checks",
    "wireguard_port_endpoints",
]

CAP_NET_ADMIN = 12  # linux/capability.h

# Every port a node's services listen on (RFC-NOTES §3), with the service that uses it.
NODE_PORTS: tuple[tuple[str, int, str], ...] = (
    ("udp", ports.WIREGUARD_PORT, "WireGuard"),
    ("tcp", ports.CONTROL_PORT, "PPN control (ppn up)"),
    ("tcp", ports.PAIRING_PORT, "join windows (ppn genesis/invite)"),
    ("tcp", ports.FLEET_PORT, "fleet heartbeats (ppn fleet serve)"),
    ("tcp", ports.SPAWN_PORT, "VM spawn (ppn vmhost serve)"),
    ("tcp", ports.VAULT_PORT, "vault (ppn vault serve)"),
    ("tcp", ports.AGGREGATOR_PORT, "orchestration (ppn orchestration serve)"),
)


def _ok(check: str, message: str) -> Finding:
    return Finding(check=check, severity=Severity.OK, message=message)


def check_privileges() -> Finding:
    # What configuring WireGuard needs is CAP_NET_ADMIN in the effective set: root usually has
    # it, a unit grants it to a non-root user, and a container's root may lack it.
    try:
        status = Path("/proc/self/status").read_text()
        caps = next(line for line in status.splitlines() if line.startswith("CapEff:"))
        effective = int(caps.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        effective = -1 if os.geteuid() == 0 else 0  # no /proc: trust root
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    if effective >> CAP_NET_ADMIN & 1:
        return _ok("privileges", f"{who} with CAP_NET_ADMIN")
    return Finding(
        check="privileges",
        severity=Severity.BLOCKS,
        message=f"{who} without CAP_NET_ADMIN: the agent cannot configure WireGuard; run as "
        "root or install the unit ('ppn service install agent', which grants only CAP_NET_ADMIN)",
    )


def check_wireguard(modules: Path = Path("/sys/module"), installed: Path | None = None) -> Finding:
    """``modules``: the loaded modules; ``installed``: this kernel's module tree."""
    if (modules / "wireguard").is_dir():
        return _ok("wireguard", "the WireGuard kernel module is loaded")
    found = shutil.which("wireguard-go")
    if found:
        return _ok("wireguard", f"no kernel module; wireguard-go at {found}")
    if installed is None:
        installed = Path(f"/lib/modules/{os.uname().release}")
    if any(installed.rglob("wireguard.ko*")):
        return Finding(
            check="wireguard",
            severity=Severity.BLOCKS,
            message="the WireGuard module is installed but not loaded: modprobe wireguard",
        )
    return Finding(
        check="wireguard",
        severity=Severity.BLOCKS,
        message="no WireGuard kernel module and no wireguard-go on PATH: "
        "apt-get install wireguard-go (or a kernel with the module)",
    )


def port_holder(proto: str, port: int) -> tuple[int, list[str]] | None:
    """The pid and command line of a local process bound to ``port``, when /proc shows it."""
    inodes: set[str] = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # TCP: only listeners (state 0A) hold a port against a new bind.
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and (proto == "udp" or fields[3] == "0A"):
                inodes.add(fields[9])
    for pid in filter(str.isdigit, os.listdir("/proc")) if inodes else ():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    return int(pid), [a.decode(errors="replace") for a in argv if a]
        except OSError:
            continue  # gone, or not ours to read
    return None


def _is_wireguard_go(argv: list[str]) -> bool:
    return bool(argv) and os.path.basename(argv[0]) == "wireguard-go"


def _kernel_wireguard_links(net: Path = Path("/sys/class/net")) -> list[str]:
    links = []
    try:
        entries = sorted(net.iterdir())
    except OSError:
        return []
    for link in entries:
        try:
            if "DEVTYPE=wireguard" in (link / "uevent").read_text().split():
                links.append(link.name)
        except OSError:
            continue
    return links


def wireguard_port_endpoints(state: Path) -> tuple[str, ...]:
    """The node's own endpoints from its state directory (none when it has none yet)."""
    try:
        node = json.loads((state / "node.json").read_text())
        return tuple(str(e) for e in node.get("endpoints", ()))
    except (OSError, ValueError, AttributeError):
        return ()


def _free(proto: str, port: int) -> bool:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, kind) as s:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            if exc.errno != errno.EAFNOSUPPORT and exc.errno != errno.EADDRNOTAVAIL:
                raise
    return True


def check_ports(wanted: Iterable[tuple[str, int, str]] = NODE_PORTS) -> list[Finding]:
    findings = []
    for proto, port, what in wanted:
        if _free(proto, port):
            findings.append(_ok("ports", f"{proto.upper()} {port} ({what}) is free"))
            continue
        holder = port_holder(proto, port)
        if holder is not None and is_ppn_command(holder[1]):
            findings.append(
                _ok("ports", f"{proto.upper()} {port} ({what}) is held by ppn (pid {holder[0]})")
            )
            continue
        if proto == "udp" and holder is not None and _is_wireguard_go(holder[1]):
            findings.append(
                _ok("ports", f"UDP {port} ({what}) is held by wireguard-go (pid {holder[0]})")
            )
            continue
        kernel = _kernel_wireguard_links() if proto == "udp" and holder is None else []
        if kernel:
            # A kernel socket belongs to no process: the module's, for these interfaces.
            findings.append(
                _ok(
                    "ports",
                    f"UDP {port} ({what}) is held by the kernel, which runs WireGuard "
                    f"interface(s) {', '.join(kernel)}",
                )
            )
            continue
        who = (
            f"pid {holder[0]} ({' '.join(holder[1])[:60]})"
            if holder
            else "a process not visible here"
        )
        findings.append(
            Finding(
                check="ports",
                severity=Severity.BLOCKS,
                message=f"{proto.upper()} {port} ({what}) is taken by {who}: "
                "stop it, or give the service another port in /etc/ppn/ppn.toml",
            )
        )
    return findings


def check_clock() -> Finding:
    synced: bool | None = None
    if shutil.which("timedatectl") and os.path.isdir("/run/systemd/system"):
        done = subprocess.run(
            ["timedatectl", "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip() in ("yes", "no"):
            synced = done.stdout.strip() == "yes"
    return clock_finding(time.time(), synced)


def check_state(state: Path) -> Finding:
    try:
        st = os.stat(state)
    except FileNotFoundError:
        return Finding(
            check="state",
            severity=Severity.BLOCKS,
            message=f"{state} does not exist: this host is not a member yet; run "
            "'ppn genesis' (first node) or 'ppn join CODE'",
        )
    except OSError as exc:
        return Finding(
            check="state", severity=Severity.BLOCKS, message=f"cannot read {state}: {exc}"
        )
    if not stat.S_ISDIR(st.st_mode):
        return Finding(
            check="state", severity=Severity.BLOCKS, message=f"{state} is not a directory"
        )
    return mode_finding(str(state), stat.S_IMODE(st.st_mode), st.st_uid, os.geteuid())


def probe(proto: str, host: str, port: int, timeout: float) -> str | None:
    """``None`` if ``host:port`` may be reached, else why not.

    TCP: a completed connect. UDP (WireGuard answers nothing unauthenticated): a datagram on a
    connected socket; only an ICMP refusal (ECONNREFUSED on the next receive) says no."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        )
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror}"
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as s:
        s.settimeout(timeout)
        try:
            s.connect(address)
            if proto == "udp":
                s.send(b"\0")  # not a WireGuard message: the device drops it silently
                try:
                    s.recv(1)
                except TimeoutError:
                    return None
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def check_endpoints(state: Path, timeout: float) -> list[Finding]:
    from ppn.mesh._io_state import StateDirError, load_mesh_files, load_roster

    try:
        files = load_mesh_files(state)
        saved = load_roster(state, mesh=files.mesh, cidr=files.cidr)
    except (StateDirError, OSError):
        return []  # check_state has said what is wrong with the directory
    if saved is None:
        return [_ok("endpoints", "no signed roster yet ('ppn up' writes it): nothing to probe")]
    findings = []
    for member in saved.roster.view().members:
        if member.node_id == files.identity.public or member.name == files.name:
            continue
        for endpoint in member.endpoints:
            host, _, port = endpoint.rpartition(":")
            why = probe("udp", host.strip("[]"), int(port), timeout)
            if why is None:
                findings.append(_ok("endpoints", f"{member.name} {endpoint}: no refusal"))
            else:
                findings.append(
                    Finding(
                        check="endpoints",
                        severity=Severity.WARNS,
                        message=f"{member.name} at UDP {endpoint}: {why}; check that its "
                        "WireGuard port is open, or route it through a relay",
                    )
                )
    return findings


def check_services(unit_dir: Path = Path("/etc/systemd/system")) -> list[Finding]:
    from ._io_systemd import SystemdError, booted, unit_state
    from ._units import ROLES

    # A template's instances are the ones enabled: their links in multi-user.target.wants.
    wants = unit_dir / "multi-user.target.wants"
    installed = [
        (role, f"{role.unit}.service")
        for role in ROLES
        if not role.template and (unit_dir / f"{role.unit}.service").is_file()
    ] + [
        (role, link.name)
        for role in ROLES
        if role.template
        for link in sorted(wants.glob(f"{role.unit}?*.service"))
    ]
    if not installed:
        return [_ok("services", "no ppn unit installed (the roles run in the foreground)")]
    if not booted():
        return [
            Finding(
                check="services",
                severity=Severity.WARNS,
                message="ppn units are installed but systemd is not running here: start the "
                "roles by hand ('ppn up', ...)",
            )
        ]
    findings = []
    for role, unit in installed:
        try:
            state = unit_state(unit)
        except SystemdError as exc:
            findings.append(Finding(check="services", severity=Severity.WARNS, message=str(exc)))
            continue
        findings.append(service_finding(unit, agent=role.name == "agent", state=state))
    return findings


def check_background(run_dir: Path = Path("/run/ppn")) -> list[Finding]:
    """Roles started without systemd (``ppn service install ROLE --no-systemd``): each PID file
    must still name a running ppn; nothing restarts one that died (RFC-NOTES §13.2)."""
    from ._io_background import last_line, running_pid

    findings = []
    for pid_file in sorted(run_dir.glob("ppn-*.pid")):
        name = pid_file.stem
        pid = running_pid(pid_file)
        if pid is not None:
            findings.append(_ok("services", f"{name} runs in the background (pid {pid})"))
            continue
        role = name.removeprefix("ppn-").split("@", 1)
        again = f"ppn service install {role[0]}" + (
            f" --instance {role[1]}" if len(role) > 1 else ""
        )
        said = last_line(run_dir / f"{name}.log")
        findings.append(
            Finding(
                check="services",
                severity=Severity.BLOCKS,
                message=f"{name} (started without systemd) is not running any more"
                + (f"; its log ends: {said}" if said else "")
                + f"; start it again: {again} --no-systemd --run-dir {run_dir}",
            )
        )
    return findings


def run_checks(
    state: Path,
    *,
    probe_timeout: float = 2.0,
    node_ports: Iterable[tuple[str, int, str]] = NODE_PORTS,
    run_dir: Path = Path("/run/ppn"),
) -> list[Finding]:
    return [
        check_privileges(),
        check_wireguard(),
        *check_ports(node_ports),
        check_clock(),
        check_state(state),
        *check_endpoints(state, probe_timeout),
        *check_services(),
        *check_background(run_dir),
    ]
