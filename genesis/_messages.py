"""The ceremony's wire messages: one canonical msgpack map per frame (RFC-NOTES §5.3).

Every map has a text field ``t`` naming the message; the first message (``hello``) also carries
the protocol version ``v``. Decoding is strict: the exact set of keys, their types and the byte
lengths are checked, and anything else is a :class:`RemoteProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ppn import wire
from ppn._fields import Fields, unpack_typed

from ._errors import RemoteProtocolError

__all__ = [
    "MAX_FRAME",
    "VERSION",
    "Abort",
    "Approve",
    "Confirm",
    "Done",
    "Hello",
    "JoinerBundleBox",
    "Message",
    "Offer",
    "Reveal",
    "Share",
    "SponsorBundleBox",
    "decode_message",
    "encode_message",
]

VERSION = 1
MAX_FRAME = 65536  # the roster of a full /24 fits comfortably
NONCE = 16
POINT = 32
HASH = 64
MAX_AD = 256
MAX_BOX = MAX_FRAME - 64
MAX_REASON = 32
MIN_SAS_DIGITS_WIRE, MAX_SAS_DIGITS_WIRE = 1, 16


@dataclass(frozen=True, kw_only=True)
class Hello:
    """Joiner -> sponsor, first: version, window number, joiner nonce, wanted SAS digits."""

    window: int
    nonce: bytes
    sas_digits: int
    version: int = VERSION


@dataclass(frozen=True, kw_only=True)
class Offer:
    """Sponsor -> joiner: sponsor nonce, mesh id, commitment to its share, wanted SAS digits."""

    nonce: bytes
    mesh: bytes
    commit: bytes
    sas_digits: int


@dataclass(frozen=True, kw_only=True)
class Share:
    """Joiner -> sponsor: the joiner's CPace share Yb and its AD."""

    y: bytes
    ad: bytes


@dataclass(frozen=True, kw_only=True)
class Reveal:
    """Sponsor -> joiner: the committed share Ya, its AD and the sponsor's confirmation tag."""

    y: bytes
    ad: bytes
    tag: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class Confirm:
    """Joiner -> sponsor: the joiner's confirmation tag."""

    tag: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class Approve:
    """Joiner -> sponsor: the joiner's operator confirmed the SAS."""


@dataclass(frozen=True, kw_only=True)
class SponsorBundleBox:
    """Sponsor -> joiner: the sealed join bundle (after both operators confirmed)."""

    box: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class JoinerBundleBox:
    """Joiner -> sponsor: the sealed joiner bundle (its endpoints)."""

    box: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class Done:
    """Sponsor -> joiner: sealed acknowledgement that the joiner is in the sponsor's roster."""

    box: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class Abort:
    """Either way, last: why the sender stopped (a reason token of RFC-NOTES §5.8)."""

    reason: str


Message = (
    Hello
    | Offer
    | Share
    | Reveal
    | Confirm
    | Approve
    | SponsorBundleBox
    | JoinerBundleBox
    | Done
    | Abort
)


def encode_message(message: Message) -> bytes:
    """The canonical msgpack payload of ``message`` (not yet framed)."""
    value: dict[str, Any]
    match message:
        case Hello():
            value = {
                "t": "hello",
                "v": message.version,
                "window": message.window,
                "nonce": message.nonce,
                "sas": message.sas_digits,
            }
        case Offer():
            value = {
                "t": "offer",
                "nonce": message.nonce,
                "mesh": message.mesh,
                "commit": message.commit,
                "sas": message.sas_digits,
            }
        case Share():
            value = {"t": "share", "y": message.y, "ad": message.ad}
        case Reveal():
            value = {"t": "reveal", "y": message.y, "ad": message.ad, "tag": message.tag}
        case Confirm():
            value = {"t": "confirm", "tag": message.tag}
        case Approve():
            value = {"t": "approve"}
        case SponsorBundleBox():
            value = {"t": "bundle", "box": message.box}
        case JoinerBundleBox():
            value = {"t": "endpoints", "box": message.box}
        case Done():
            value = {"t": "done", "box": message.box}
        case Abort():
            value = {"t": "abort", "reason": message.reason}
    return wire.pack_canonical(value)


_FIELDS: dict[str, frozenset[str]] = {
    "hello": frozenset({"t", "v", "window", "nonce", "sas"}),
    "offer": frozenset({"t", "nonce", "mesh", "commit", "sas"}),
    "share": frozenset({"t", "y", "ad"}),
    "reveal": frozenset({"t", "y", "ad", "tag"}),
    "confirm": frozenset({"t", "tag"}),
    "approve": frozenset({"t"}),
    "bundle": frozenset({"t", "box"}),
    "endpoints": frozenset({"t", "box"}),
    "done": frozenset({"t", "box"}),
    "abort": frozenset({"t", "reason"}),
}


def decode_message(payload: bytes) -> Message:
    """Parse one frame payload. Raises :class:`RemoteProtocolError` for anything malformed."""
    kind, value = unpack_typed(payload, error=RemoteProtocolError, max_depth=2, max_size=MAX_FRAME)
    expected = _FIELDS.get(kind)
    if expected is None:
        raise RemoteProtocolError("unknown message type")
    f = Fields(value, error=RemoteProtocolError, required=expected, what=kind)
    match kind:
        case "hello":
            return Hello(
                version=f.integer("v", 0, 2**32),
                window=f.integer("window", 1, 2**32),
                nonce=f.blob("nonce", size=NONCE),
                sas_digits=f.integer("sas", MIN_SAS_DIGITS_WIRE, MAX_SAS_DIGITS_WIRE),
            )
        case "offer":
            return Offer(
                nonce=f.blob("nonce", size=NONCE),
                mesh=f.blob("mesh", size=16),
                commit=f.blob("commit", size=HASH),
                sas_digits=f.integer("sas", MIN_SAS_DIGITS_WIRE, MAX_SAS_DIGITS_WIRE),
            )
        case "share":
            return Share(y=f.blob("y", size=POINT), ad=f.blob("ad", high=MAX_AD))
        case "reveal":
            return Reveal(
                y=f.blob("y", size=POINT),
                ad=f.blob("ad", high=MAX_AD),
                tag=f.blob("tag", size=HASH),
            )
        case "confirm":
            return Confirm(tag=f.blob("tag", size=HASH))
        case "approve":
            return Approve()
        case "bundle":
            return SponsorBundleBox(box=f.blob("box", high=MAX_BOX))
        case "endpoints":
            return JoinerBundleBox(box=f.blob("box", high=MAX_BOX))
        case "done":
            return Done(box=f.blob("box", high=MAX_BOX))
        case _:
            return Abort(reason=f.text("reason", low=1, high=MAX_REASON))
