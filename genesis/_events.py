"""Events the ceremony cores emit and accept (frozen, keyword-only; secrets kept out of repr)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ._bundle import MemberRecord
from ._code import JoinCode
from ._derive import PartyInfo

__all__ = [
    "Abort",
    "AcceptWindow",
    "ConfirmSas",
    "Failed",
    "FailureReason",
    "Grant",
    "JoinRequested",
    "Joined",
    "SasReady",
    "SpendCode",
    "SpendRequested",
]


class FailureReason(enum.Enum):
    """Why a ceremony stopped: wire token (``abort.reason``), exit status, and one sentence."""

    BAD_CODE = ("bad_code", 10, "the code is malformed or has a typo; nothing was sent")
    WRONG_CODE = (
        "key_confirmation",
        11,
        "the code did not match, or someone interfered with the session; get a new code",
    )
    SAS_REJECTED = ("sas_rejected", 12, "the comparison string was rejected; nothing was installed")
    TIMEOUT = ("timeout", 13, "the ceremony timed out")
    PEER_VANISHED = ("vanished", 14, "the other side went away in the middle of the ceremony")
    CANCELLED = ("cancelled", 14, "the ceremony was cancelled")
    UNREACHABLE = ("unreachable", 14, "could not reach the sponsor's pairing port")
    PROTOCOL = (
        "protocol",
        15,
        "the other side broke the protocol (malformed or oversized message)",
    )
    VERSION = ("version", 15, "the other side speaks a different protocol version")
    CROWDED = ("crowded", 16, "someone else is already using this join window; get a new code")
    NO_WINDOW = ("no_window", 16, "no join window with that number is open; get a new code")
    RATE_LIMITED = (
        "rate_limited",
        17,
        "too many failed attempts in the last hour; the sponsor opens no window for now",
    )
    STATE = ("state", 18, "the state directory cannot be used for this")
    REFUSED = (
        "refused",
        19,
        "the sponsor refused the join (name or key already in the mesh, or no free address)",
    )

    def __init__(self, token: str, status: int, sentence: str) -> None:
        self.token = token
        self.status = status
        self.sentence = sentence

    @classmethod
    def from_token(cls, token: str) -> FailureReason:
        for reason in cls:
            if reason.token == token:
                return reason
        return cls.PROTOCOL


# --- emitted by the cores -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class JoinRequested:
    """Sponsor: a joiner asked for this window. Answer with AcceptWindow or Abort."""

    window: int


@dataclass(frozen=True, kw_only=True)
class SpendRequested:
    """Sponsor (with ``spend_check``): the joiner's share arrived; finishing CPace spends the
    window's one guess. Answer SpendCode, or Abort(CROWDED) when another ceremony on the same
    window already spent it (RFC-NOTES §5.7)."""

    window: int


@dataclass(frozen=True, kw_only=True)
class SasReady:
    """Both: keys confirmed both ways; show ``sas`` and ask the operator. ``peer`` is bound in AD."""

    sas: str
    digits: int
    peer: PartyInfo


@dataclass(frozen=True, kw_only=True)
class Joined:
    """Both: the ceremony completed. ``member`` is the joiner's record; ``roster`` includes it."""

    mesh_id: bytes
    cidr: str
    member: MemberRecord
    sponsor: bytes
    roster: tuple[MemberRecord, ...]


@dataclass(frozen=True, kw_only=True)
class Failed:
    """Both: the ceremony stopped. ``by_peer``: the other side said so. ``code_spent``: the
    window's code was used for a guess, so the window is burned."""

    reason: FailureReason
    by_peer: bool = False
    code_spent: bool = False
    detail: str = ""  # set by adapters for local failures (e.g. why the state was not written)


# --- sent to the cores by the application -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AcceptWindow:
    """Sponsor: run the ceremony on this window with its code."""

    code: JoinCode = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class SpendCode:
    """Sponsor: this ceremony may spend the window's code (the answer to SpendRequested)."""


@dataclass(frozen=True, kw_only=True)
class Grant:
    """Sponsor: what the joiner gets if both confirm — its address, roles and the current roster."""

    cidr: str
    address: str
    roster: tuple[MemberRecord, ...]
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ConfirmSas:
    """Both: the local operator's answer. The sponsor passes ``grant`` when accepting."""

    accept: bool
    grant: Grant | None = None


@dataclass(frozen=True, kw_only=True)
class Abort:
    """Both: stop now (operator cancelled, window crowded or closed, join refused)."""

    reason: FailureReason
