"""CPace (draft-irtf-cfrg-cpace-21), suite CPACE-X25519-SHA512 — low-level.

This is the balanced PAKE under the Genesis join ceremony, public so that interop tests and
benchmarks can drive it directly. It is deliberately small and does no I/O: each party makes
a :class:`CPace` object, sends :attr:`CPace.share` (plus its associated data) to the other,
and calls :meth:`CPace.finish` with what it received. Applications should normally use the
ceremony (``genesis``) instead; RFC-NOTES §4 is the normative profile.

    >>> a = CPace(Role.INITIATOR, b"code", ci=b"ci", sid=b"sid", ad=b"A")
    >>> b = CPace(Role.RESPONDER, b"code", ci=b"ci", sid=b"sid", ad=b"B")
    >>> a.finish(b.share, peer_ad=b"B") == b.finish(a.share, peer_ad=b"A")
    True
    >>> b.verify(a.tag()) and a.verify(b.tag())
    True

Contract:

* ``calculate_generator(prs, ci, sid)`` — the 32-byte u-coordinate g (draft section 8.2).
* ``CPace(role, prs, ci=b"", sid=b"", ad=b"", scalar=None)``; ``scalar=None`` draws 32 bytes
  from :mod:`secrets`. A given 32-byte scalar is how a sans-IO core injects its randomness and
  how known-answer tests run; it must be uniformly random and never used twice.
* ``share``: Ya for the initiator, Yb for the responder, the own share in symmetric mode.
* ``finish(peer_share, peer_ad=b"")`` returns the 64-byte ISK, or raises :class:`CPaceError`
  for a share of the wrong length or a low-order share (K = G.I), and on any second use.
* ``sid_output`` (after finish): ``SHA-512(b"CPaceSidOutput" || transcript)`` (section 10.6).
* ``tag()`` / ``verify(peer_tag)`` (after finish): explicit key confirmation as in the draft's
  section 10.4 with MAC = HMAC-SHA-512: ``mac_key = SHA-512(b"CPaceMac" || sid || ISK)``, a
  party's tag is ``HMAC(mac_key, lv_cat(own share, own AD))``. ``verify`` compares in
  constant time and returns False when the peer's share is our own (a reflected message,
  whose reflected tag would otherwise be accepted).

Roles: the initiator-responder mode hashes ``transcript_ir`` (A's message first), the symmetric
mode the order-free ``transcript_oc``; both sides of one exchange must use matching modes
(INITIATOR with RESPONDER, or SYMMETRIC with SYMMETRIC).

Timing: the Elligator 2 map runs on CPython integers and is not constant-time; see RFC-NOTES
§4 for what that leaks and why it is acceptable for single-use codes.
"""

from __future__ import annotations

import enum
import hashlib
import hmac

from ._cpace_strings import lv_cat, o_cat
from ._cpace_x25519 import (
    DSI_ISK,
    FIELD_SIZE_BYTES,
    IDENTITY,
    calculate_generator,
    sample_scalar,
    scalar_mult_vfy,
)
from ._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ISK_SIZE",
    "SHARE_SIZE",
    "SUITE",
    "TAG_SIZE",
    "CPace",
    "CPaceError",
    "Role",
    "calculate_generator",
]

SUITE = "CPACE-X25519-SHA512"
SHARE_SIZE = FIELD_SIZE_BYTES  # bytes in Ya / Yb
ISK_SIZE = 64  # SHA-512 output
TAG_SIZE = 64  # HMAC-SHA-512 output

_SID_OUTPUT_PREFIX = b"CPaceSidOutput"
_MAC_KEY_PREFIX = b"CPaceMac"


class CPaceError(RemoteProtocolError):
    """The CPace exchange cannot produce a key; the object is now unusable.

    Raised for a peer share of the wrong length, for a share that yields the neutral element
    (a low-order point), and for any use of an object out of order (a second ``finish``, or
    ``tag``/``verify``/``sid_output`` before ``finish``). It is a ``RemoteProtocolError``
    because in a running ceremony the usual cause of a second ``finish`` is a peer that sent
    its share twice. The message never says which check failed: no error is an oracle.
    """


class Role(enum.Enum):
    """Which transcript a party builds (draft section 6.3)."""

    INITIATOR = "initiator"  # party A: sends Ya, ADa; transcript_ir
    RESPONDER = "responder"  # party B: sends Yb, ADb; transcript_ir
    SYMMETRIC = "symmetric"  # either party may speak first; transcript_oc


class _State(enum.Enum):
    WAITING = "waiting for the peer's share"
    FINISHED = "finished"
    FAILED = "failed"


# Explicit transition table: the one state change an exchange has. Anything else is misuse.
_TRANSITIONS: dict[tuple[_State, str], _State] = {
    (_State.WAITING, "finish"): _State.FINISHED,
}
# Queries that leave the state alone, and where they are allowed.
_QUERIES: dict[str, _State] = {
    "tag": _State.FINISHED,
    "verify": _State.FINISHED,
    "sid_output": _State.FINISHED,
}

_FAILED_MESSAGE = "CPace exchange failed"
_MISUSE_MESSAGE = "CPace object used out of order (each object runs one exchange)"


def _as_bytes(value: bytes, name: str) -> bytes:
    if type(value) is bytes:  # the usual case, checked first: this runs five times per object
        return value
    if not isinstance(value, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"CPace {name} must be bytes, not {type(value).__name__}")
    return bytes(value)


class CPace:
    """One party of one CPACE-X25519-SHA512 exchange (single use)."""

    __slots__ = (
        "_mac_key",
        "_message",
        "_peer_message",
        "_peer_share",
        "_role",
        "_scalar",
        "_share",
        "_sid",
        "_state",
        "_transcript",
    )

    def __init__(
        self,
        role: Role,
        prs: bytes,
        ci: bytes = b"",
        sid: bytes = b"",
        ad: bytes = b"",
        scalar: bytes | None = None,
    ) -> None:
        if not isinstance(role, Role):
            raise LocalProtocolError(f"CPace role must be a Role, not {role!r}")
        prs = _as_bytes(prs, "PRS")
        ci = _as_bytes(ci, "CI")
        sid = _as_bytes(sid, "sid")
        ad = _as_bytes(ad, "AD")
        if scalar is None:
            scalar = sample_scalar()
        else:
            scalar = _as_bytes(scalar, "scalar")
            if len(scalar) != FIELD_SIZE_BYTES:
                raise LocalProtocolError(f"CPace scalar must be {FIELD_SIZE_BYTES} bytes")
        self._role = role
        self._sid = sid
        self._scalar = scalar
        # Ya / Yb = G.scalar_mult(y, g). (A low-order g is out of reach of any hash output
        # one could find; should it happen, X25519 gives G.I and the peer aborts.)
        self._share = share = scalar_mult_vfy(scalar, calculate_generator(prs, ci, sid))
        # lv_cat(own share, own AD): this party's half of the transcript, and its tag's input.
        self._message = lv_cat(share, ad)
        self._state = _State.WAITING
        self._peer_share = b""
        self._peer_message = b""
        self._transcript = b""
        self._mac_key = b""

    def __repr__(self) -> str:
        return f"<CPace {self._role.value} {self._state.value}>"

    @property
    def role(self) -> Role:
        return self._role

    @property
    def share(self) -> bytes:
        """This party's public share (32 bytes), to send with its AD."""
        return self._share

    def finish(self, peer_share: bytes, peer_ad: bytes = b"") -> bytes:
        """Derive the 64-byte ISK from the peer's share and AD (draft section 7.2)."""
        self._transition("finish")
        scalar, self._scalar = self._scalar, b""  # never reuse y (section 10.9)
        if type(peer_share) is not bytes:
            if not isinstance(peer_share, bytearray | memoryview):
                self._state = _State.FAILED
                raise CPaceError(_FAILED_MESSAGE)
            peer_share = bytes(peer_share)
        if len(peer_share) != SHARE_SIZE:
            self._state = _State.FAILED
            raise CPaceError(_FAILED_MESSAGE)
        try:
            peer_ad = _as_bytes(peer_ad, "peer AD")
        except LocalProtocolError:
            self._state = _State.FAILED
            raise
        # K = G.scalar_mult_vfy(y, Y_peer); abort if K = G.I.
        k = scalar_mult_vfy(scalar, peer_share)
        if hmac.compare_digest(k, IDENTITY):
            self._state = _State.FAILED
            raise CPaceError(_FAILED_MESSAGE)
        peer_message = lv_cat(peer_share, peer_ad)
        # transcript_ir(Ya, ADa, Yb, ADb) = lv_cat(Ya, ADa) || lv_cat(Yb, ADb);
        # transcript_oc(...) = o_cat(lv_cat(Ya, ADa), lv_cat(Yb, ADb)).
        if self._role is Role.INITIATOR:
            transcript = self._message + peer_message
        elif self._role is Role.RESPONDER:
            transcript = peer_message + self._message
        else:
            transcript = o_cat(self._message, peer_message)
        # ISK = H.hash(lv_cat(G.DSI || b"_ISK", sid, K) || transcript)
        isk = hashlib.sha512(lv_cat(DSI_ISK, self._sid, k) + transcript).digest()
        self._peer_share = peer_share
        self._peer_message = peer_message
        self._transcript = transcript
        # mac_key = H.hash(b"CPaceMac" || sid || ISK) (section 10.4; plain ||, not lv_cat)
        self._mac_key = hashlib.sha512(_MAC_KEY_PREFIX + self._sid + isk).digest()
        return isk

    @property
    def sid_output(self) -> bytes:
        """``SHA-512(b"CPaceSidOutput" || transcript)``, public (draft section 10.6)."""
        self._query("sid_output")
        return hashlib.sha512(_SID_OUTPUT_PREFIX + self._transcript).digest()

    def tag(self) -> bytes:
        """This party's key-confirmation tag: ``HMAC-SHA-512(mac_key, lv_cat(share, AD))``."""
        self._query("tag")
        return hmac.digest(self._mac_key, self._message, "sha512")

    def verify(self, peer_tag: bytes) -> bool:
        """True iff ``peer_tag`` confirms the peer derived the same ISK (constant-time)."""
        self._query("verify")
        if not isinstance(peer_tag, bytes | bytearray | memoryview):
            return False
        expected = hmac.digest(self._mac_key, self._peer_message, "sha512")
        tag_ok = hmac.compare_digest(expected, peer_tag)
        # A reflected message (our own share back) makes the expected tag equal our own tag,
        # which the attacker also reflects; no honest peer ever sends our share.
        reflected = hmac.compare_digest(self._peer_share, self._share)
        return tag_ok and not reflected

    def _transition(self, action: str) -> None:
        new_state = _TRANSITIONS.get((self._state, action))
        if new_state is None:
            self._state = _State.FAILED
            self._scalar = b""
            raise CPaceError(_MISUSE_MESSAGE)
        self._state = new_state

    def _query(self, name: str) -> None:
        if self._state is not _QUERIES[name]:
            self._state = _State.FAILED
            self._scalar = b""
            raise CPaceError(_MISUSE_MESSAGE)
