"""What ``ppn doctor`` reports (issue 17): findings, and the judgements that need no I/O.

:mod:`ppn.deploy._io_doctor` looks at the host; the decisions that turn what it saw into a
finding with a fix live here, so each one is testable on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Finding", "Severity", "clock_finding", "mode_finding"]

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
