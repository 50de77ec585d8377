"""What ``ppn doctor`` reports (issue 17): findings, and the judgements that need no I/O.

:mod:`ppn.deploy._io_doctor` looks at the host; the decisions that turn what it saw into a
finding with a fix live here, so each one is testable on its own.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import ports

__all__ = [
    "Finding",
    "Severity",
    "clock_finding",
    "is_ppn_command",
    "mode_finding",
    "service_finding",
    "service_ports",
]

# A clock before this cannot be right (the project's first release); capabilities and
# heartbeats carry times, and a node that believes it is 1970 refuses every one of them.
EARLIEST_SANE = 1_796_083_200  # 2026-12-01T00:00:00Z


class Severity(enum.Enum):
    OK = "ok"
    WARNS = "warn"  # the node runs, but something will not work (a member unreachable)
    BLOCKS = "FAIL"  # the node cannot run until this is fixed


@dataclass(frozen=True, kw_only=True)
class Finding:
    check: str
    severity: Severity
    message: str  # what was found, then what to do, in one line


def is_ppn_command(argv: Sequence[str]) -> bool:
    """``ppn ...`` or ``python -m ppn ...``: the console script or the module, whatever the path."""
    return any(a.rsplit("/", 1)[-1] == "ppn" for a in argv[:3])


def clock_finding(now: float, ntp_synchronized: bool | None) -> Finding:
    if now < EARLIEST_SANE:
        return Finding(
            check="clock",
            severity=Severity.BLOCKS,
            message=f"the clock says {int(now)} s since 1970, before any valid credential: "
            "set the time (timedatectl set-ntp true, or date -s)",
        )
    if ntp_synchronized is False:
        return Finding(
            check="clock",
            severity=Severity.WARNS,
            message="the clock is not synchronized: heartbeats and capabilities allow only "
            "minutes of skew; enable NTP (timedatectl set-ntp true)",
        )
    return Finding(check="clock", severity=Severity.OK, message="the clock is sane")


def mode_finding(path: str, mode: int, owner: int, me: int) -> Finding:
    """A state directory holds private keys: only its owner (this user) may enter it."""
    if mode & 0o077:
        return Finding(
            check="state",
            severity=Severity.BLOCKS,
            message=f"{path} is mode {mode & 0o777:04o}, readable by others and it holds the "
            f"node's private keys: chmod 0700 {path}",
        )
    if owner != me:
        return Finding(
            check="state",
            severity=Severity.BLOCKS,
            message=f"{path} belongs to uid {owner}, not to this user ({me}): chown {me} {path}",
        )
    return Finding(check="state", severity=Severity.OK, message=f"{path} is private (0700)")


# The flags that choose a listening port, per command (RFC-NOTES §3, §13.4): (protocol, command,
# flag, what listens, default port). A flag holds a port, or a HOST:PORT.
_PORT_FLAGS: tuple[tuple[str, str, str, str, int], ...] = (
    ("tcp", "up", "control-port", "PPN control (ppn up)", ports.CONTROL_PORT),
    ("tcp", "genesis", "listen", "join windows (ppn genesis)", ports.PAIRING_PORT),
    ("tcp", "invite", "listen", "join windows (ppn invite)", ports.PAIRING_PORT),
    ("tcp", "fleet serve", "port", "fleet heartbeats (ppn fleet serve)", ports.FLEET_PORT),
    ("tcp", "vmhost serve", "port", "VM spawn (ppn vmhost serve)", ports.SPAWN_PORT),
    ("tcp", "vault serve", "listen", "vault (ppn vault serve)", ports.VAULT_PORT),
    (
        "tcp",
        "orchestration serve",
        "listen",
        "orchestration (ppn orchestration serve)",
        ports.AGGREGATOR_PORT,
    ),
)


# The roles' metrics endpoints (RFC-NOTES §3.1): off unless a ``metrics`` value is configured,
# then checked on the port it gives (HOST alone means the role's default, which the flag's own
# parsing has already filled in).
_METRICS_COMMANDS = (
    "up",
    "fleet serve",
    "vmhost serve",
    "vault serve",
    "vault follow",
    "orchestration serve",
)


def _port_of(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.rpartition(":")[2].isdigit():
        return int(value.rpartition(":")[2])
    return default


def service_ports(
    config: Mapping[tuple[str, str], tuple[Any, str]], *, endpoints: Sequence[str] = ()
) -> list[tuple[str, int, str]]:
    """(protocol, port, what listens there) for every port the node's services would bind.

    ``config`` maps (command, flag) to (effective value, where it came from: "default", a file
    and line, a variable), as ``ppn config show`` reports it; ``endpoints`` are the node's own
    (the agent's WireGuard port is the first one's, RFC-NOTES §7.11). A role's metrics port is
    checked only where its ``metrics`` is configured (they are off by default). Port 0 (any free
    port) binds nothing fixed and is left out; two services on one port are one row naming
    both."""

    def where(command: str, flag: str) -> str:
        source = config.get((command, flag), (None, "default"))[1]
        return "" if source == "default" else f", set in {source}"

    wg_value = config.get(("up", "listen-port"), (None, "default"))[0]
    configured = config.get(("up", "endpoint"), (None, "default"))[0]
    first = next(iter(configured or endpoints), None)
    wg_port = _port_of(wg_value, _port_of(first, ports.WIREGUARD_PORT))
    rows: dict[tuple[str, int], list[str]] = {
        ("udp", wg_port): [f"WireGuard{where('up', 'listen-port') or where('up', 'endpoint')}"]
    }
    for proto, command, flag, what, default in _PORT_FLAGS:
        port = _port_of(config.get((command, flag), (None, "default"))[0], default)
        if port:
            rows.setdefault((proto, port), []).append(what + where(command, flag))
    for command in _METRICS_COMMANDS:
        value = config.get((command, "metrics"), (None, "default"))[0]
        port = _port_of(value, 0) if value is not None else 0
        if port:
            rows.setdefault(("tcp", port), []).append(
                f"metrics (ppn {command}){where(command, 'metrics')}"
            )
    return [(proto, port, " and ".join(whats)) for (proto, port), whats in rows.items()]


def service_finding(unit: str, *, agent: bool, state: Mapping[str, str]) -> Finding:
    """What a unit's state (``systemctl show``: ActiveState, SubState, Result, NRestarts) means
    for the node."""
    active = state.get("ActiveState", "unknown")
    if active == "active":
        return Finding(check="services", severity=Severity.OK, message=f"{unit} is active")
    # A unit that fails every time never reaches "failed" when its restarts are slower than
    # systemd's start limit (seen under systemd 252): it alternates between waiting to restart
    # and starting again, and only its restart count says so.
    restarts = state.get("NRestarts", "0")
    restarting = state.get("SubState") == "auto-restart" or (
        active == "activating" and restarts.isdigit() and int(restarts) > 0
    )
    if restarting:
        active = f"restarting after a failure (restart {state.get('NRestarts', '?')})"
    # The agent is the node: without it nothing else reaches the mesh.
    blocks = agent or restarting or active == "failed"
    return Finding(
        check="services",
        severity=Severity.BLOCKS if blocks else Severity.WARNS,
        message=f"{unit} is {active} ({state.get('Result', '?')}): "
        f"journalctl -u {unit}, then systemctl restart {unit}",
    )
