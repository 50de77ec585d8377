"""The cross-platform WireGuard configuration protocol ("UAPI"), sans I/O.

One request per connection over ``/var/run/wireguard/<iface>.sock``: ``get=1`` or ``set=1``,
then ``key=value`` lines, then an empty line. The answer is ``key=value`` lines ending with
``errno=N`` and an empty line. Keys travel as lower-case hex. See RFC-NOTES §6.3 for the
golden encodings this module produces.

Secrets are redacted as they are parsed: a ``private_key`` line becomes the interface's public
key and a ``preshared_key`` line a fingerprint; the secret itself is never stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, KeysView, Mapping
from typing import NamedTuple

from .._errors import LocalProtocolError
from ._model import (
    DeviceError,
    DeviceState,
    Endpoint,
    IPNetwork,
    PeerConfig,
    PeerState,
    TextMemo,
    UAPIProtocolError,
    key_fingerprint,
    network_text,
    public_key_of,
)
from ._plan import AddPeer, Operation, RemovePeer, SetInterface

__all__ = [
    "GET_REQUEST",
    "LazyPeers",
    "PeerTexts",
    "peer_signature",
    "encode_set",
    "parse_errno",
    "parse_get",
]

GET_REQUEST = b"get=1\n\n"
_ZERO_HEX = "0" * 64
_ZERO_KEY = bytes(32)
_NO_PSK_LINE = f"\npreshared_key={_ZERO_HEX}\n"


def _hex_key(value: str, what: str) -> bytes:
    if len(value) != 64:
        raise UAPIProtocolError(f"{what} is not 64 hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise UAPIProtocolError(f"{what} is not hex") from None


def _uint(value: str, what: str, limit: int) -> int:
    if not value.isdigit() or not value.isascii() or len(value) > 20:
        raise UAPIProtocolError(f"{what}={value[:40]!r} is not an unsigned number")
    number = int(value)
    if number > limit:
        raise UAPIProtocolError(f"{what}={number} is out of range")
    return number


def _lines(response: bytes) -> list[str]:
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        raise UAPIProtocolError("the answer is not UTF-8") from None
    if not text.endswith("\n\n"):
        raise UAPIProtocolError("the answer does not end with an empty line")
    lines = text[:-2].split("\n")
    if not lines or not lines[-1].startswith("errno="):
        raise UAPIProtocolError("the answer does not end with errno=")
    return lines


def _check_errno(line: str) -> None:
    value = line.removeprefix("errno=")
    # Implementations differ in the sign they report (wireguard-go positive, others -errno).
    digits = value[1:] if value.startswith("-") else value
    code = _uint(digits, "errno", 2**31)
    if code:
        raise DeviceError(f"the device refused the request (errno {code})", code)


def parse_errno(response: bytes) -> None:
    """Check the answer to a ``set=1``: ``errno=0`` and an empty line, or :class:`DeviceError`."""
    lines = _lines(response)
    if len(lines) != 1:
        raise UAPIProtocolError("unexpected lines before errno= in a set answer")
    _check_errno(lines[0])


def _number(value: str, what: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise UAPIProtocolError(f"{what}={value[:40]!r} is not an unsigned number")
    return int(value)


# Non-zero preshared keys are replaced by their fingerprint before anything is kept: the line
# becomes "preshared_key=<32 hex digits of the fingerprint>" (an all-zero key, i.e. none, is
# no secret and stays as 64 zeros).
_PSK_LINE = re.compile(r"\npreshared_key=(?!0{64}\n)([^\n]*)")
# The lines of a peer that change on their own (or that the roam rule judges separately).
# Patterns start with the newline rather than "^" under re.M: several times faster.
_VOLATILE_LINE = re.compile(
    r"(?:\n(?:protocol_version|endpoint|last_handshake_time_n?sec|[tr]x_bytes)=[^\n]*)+"
)
# The same lines as a run, each with its newline (what wireguard-go prints between a peer's
# preshared key and its keepalive).
_VOLATILE_RUN = re.compile(
    r"(?:(?:protocol_version|endpoint|last_handshake_time_n?sec|[tr]x_bytes)=[^\n]*+\n)*+"
)


# The volatile lines exactly as wireguard-go prints them between a peer's preshared key and its
# keepalive (the endpoint line only when it has one).
_WIREGUARD_GO_MIDDLE = re.compile(
    r"protocol_version=[0-9]+\n(?:endpoint=([^\n]*)\n)?last_handshake_time_sec=[0-9]+\n"
    r"last_handshake_time_nsec=[0-9]+\ntx_bytes=[0-9]+\nrx_bytes=[0-9]+\n"
)


def _redact_psk(match: re.Match[str]) -> str:
    psk = _hex_key(match.group(1), "preshared_key")
    tag = key_fingerprint(psk).hex()
    del psk
    return f"\npreshared_key={tag}"


class _Signature(NamedTuple):
    text: str  # what peer_signature returns
    head: str  # its public key and preshared key lines
    tail: str  # its keepalive and allowed IP lines, without the final newline
    endpoint: str | None  # the endpoint as a device prints it


def _build_signature(peer: PeerConfig) -> _Signature:
    ep = peer.endpoint
    psk = peer.preshared_key
    tag = _ZERO_HEX if psk is None or psk == _ZERO_KEY else key_fingerprint(psk).hex()
    nets = "".join([f"allowed_ip={text}\n" for text in peer.prefix_texts()])
    head = f"{peer.public_key.hex()}\npreshared_key={tag}\n"
    tail = f"persistent_keepalive_interval={peer.persistent_keepalive}\n{nets}"
    return _Signature(head + tail, head, tail[:-1], None if ep is None else str(ep))


class PeerTexts:
    """Each desired peer's text as a UAPI device prints it (:func:`peer_signature`), kept by
    the object that compares against the device pass after pass (the UAPI backend).

    By the identity of the (frozen) PeerConfig: hashing a config would hash all its prefixes,
    which costs more than building the text. The entry holds the object, so its id cannot be
    reused while it is here. Behind it, by value (the fields the text is made of): a desired
    state built afresh (the mesh agent builds one every pass, a changed config file parses
    into new objects) mostly repeats peers already seen. Bounded like :class:`TextMemo`.
    """

    def __init__(self, *, limit: int = 1 << 17) -> None:
        self.limit = limit
        self._by_identity: dict[int, tuple[PeerConfig, _Signature]] = {}
        self._by_value: dict[tuple[object, ...], _Signature] = {}

    def signature(self, peer: PeerConfig) -> _Signature:
        entry = self._by_identity.get(id(peer))
        if entry is not None and entry[0] is peer:
            return entry[1]
        ep = peer.endpoint
        value = (
            peer.public_key,
            peer.preshared_key,
            peer.persistent_keepalive,
            None if ep is None else ep.host,
            None if ep is None else ep.port,
            peer.prefix_texts(),
        )
        signature = self._by_value.get(value)
        if signature is None:
            signature = _build_signature(peer)
            if len(self._by_value) >= self.limit:
                self._by_value.clear()
            self._by_value[value] = signature
        if len(self._by_identity) >= self.limit:
            self._by_identity.clear()
        self._by_identity[id(peer)] = (peer, signature)
        return signature


def peer_signature(peer: PeerConfig) -> str:
    """The configuration lines a UAPI device prints for ``peer`` (after ``public_key=``,
    volatile lines and endpoint left out, preshared key as fingerprint), in set order."""
    return _build_signature(peer).text


def _parse_block(block: str, memo: TextMemo) -> PeerState:
    """One peer's lines (redacted form), starting with the public key's hex."""
    lines = block.split("\n")
    peer_key = _hex_key(lines[0], "public_key")
    psk_tag: bytes | None = None
    endpoint: Endpoint | None = None
    allowed: list[IPNetwork] = []
    keepalive = hs_sec = hs_nsec = rx = tx = 0
    version = 1
    for line in lines[1:]:
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UAPIProtocolError(f"line without '=': {line[:40]!r}")
        if key == "allowed_ip":
            try:
                allowed.append(memo.network(value))
            except ValueError:
                raise UAPIProtocolError(f"allowed_ip={value[:50]!r} is not a prefix") from None
        elif key == "endpoint":
            try:
                endpoint = memo.endpoint(value)
            except ValueError:
                raise UAPIProtocolError(f"endpoint={value[:50]!r} is not ip:port") from None
        elif key == "preshared_key":
            psk_tag = None if value == _ZERO_HEX else bytes.fromhex(value)
        elif key == "last_handshake_time_sec":
            hs_sec = _number(value, key)
        elif key == "last_handshake_time_nsec":
            hs_nsec = _number(value, key)
        elif key == "rx_bytes":
            rx = _number(value, key)
        elif key == "tx_bytes":
            tx = _number(value, key)
        elif key == "persistent_keepalive_interval":
            keepalive = _number(value, key)
        elif key == "protocol_version":
            version = _number(value, key)
        # Unknown peer keys: ignore (forward compatible).
    if keepalive > 65535 or hs_nsec >= 10**9:
        raise UAPIProtocolError("a peer's numbers are out of range")
    return PeerState(
        public_key=peer_key,
        preshared_fingerprint=psk_tag,
        endpoint=endpoint,
        allowed_ips=tuple(allowed),
        persistent_keepalive=keepalive,
        last_handshake=None if hs_sec == 0 and hs_nsec == 0 else hs_sec + hs_nsec / 1e9,
        rx_bytes=rx,
        tx_bytes=tx,
        protocol_version=version,
    )


class LazyPeers(Mapping[bytes, PeerState]):
    """The peers of a UAPI answer, each decoded on first access.

    ``unchanged(peer)`` (the planner's :class:`~ppn.wg._plan.QuickCheck` protocol) answers
    "does the device already have exactly this configuration for the peer?" by comparing text
    (:func:`peer_signature`) without decoding; the planner uses it to skip the thousands of
    peers that did not change. A mismatch only means "look closer".
    """

    def __init__(
        self,
        blocks: dict[bytes, str],
        *,
        memo: TextMemo | None = None,
        texts: PeerTexts | None = None,
    ) -> None:
        self._blocks = blocks
        self._decoded: dict[bytes, PeerState] = {}
        self._memo = TextMemo() if memo is None else memo
        self._texts = PeerTexts() if texts is None else texts

    def __getitem__(self, key: bytes) -> PeerState:
        found = self._decoded.get(key)
        if found is None:
            found = self._decoded[key] = _parse_block(self._blocks[key], self._memo)
        return found

    def __contains__(self, key: object) -> bool:
        return key in self._blocks

    def keys(self) -> KeysView[bytes]:
        return self._blocks.keys()  # membership and iteration without a Python-level call

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def unchanged(self, peer: PeerConfig) -> bool:
        block = self._blocks.get(peer.public_key)
        if block is None:
            return False
        sig = self._texts.signature(peer)
        # Fast: the block is the signature's head (key, preshared key), then only volatile
        # lines, then the signature's tail (keepalive, allowed IPs), as wireguard-go prints
        # it. Otherwise (another implementation's order, unknown lines): drop the volatile
        # lines and compare; either way equal text means equal configuration.
        head = sig.head
        end = len(block) - 1 if block[-1:] == "\n" else len(block)
        middle_end = end - len(sig.tail)
        fast = False
        if middle_end >= len(head) and block.startswith(head) and block.endswith(sig.tail, 0, end):
            # wireguard-go's exact volatile lines: one match that also yields the endpoint
            # (most of a no-change pass at 10,000 peers is spent in this method)
            exact = _WIREGUARD_GO_MIDDLE.fullmatch(block, len(head), middle_end)
            if exact is not None:
                return sig.endpoint is None or exact[1] == sig.endpoint
            fast = _VOLATILE_RUN.fullmatch(block, len(head), middle_end) is not None
        if not fast:
            whole = block if block[-1:] == "\n" else block + "\n"
            if _VOLATILE_LINE.sub("", "\n" + whole)[1:] != sig.text:
                return False
        if sig.endpoint is None:
            return True
        at = block.find("\nendpoint=")
        if at < 0:
            return False
        stop = block.find("\n", at + 10)
        return block[at + 10 : stop if stop >= 0 else len(block)] == sig.endpoint

    def decode_all(self) -> dict[bytes, PeerState]:
        return {key: self[key] for key in self._blocks}


def parse_get(
    response: bytes,
    name: str,
    *,
    lazy: bool = False,
    memo: TextMemo | None = None,
    texts: PeerTexts | None = None,
) -> DeviceState:
    """Decode the answer to ``get=1``. Raises :class:`UAPIProtocolError` on malformed input
    (never anything else for arbitrary bytes) and :class:`DeviceError` for ``errno != 0``.

    ``lazy`` defers decoding each peer until it is looked at (:class:`LazyPeers`); a malformed
    peer then raises :class:`UAPIProtocolError` on access instead of here. ``memo`` and
    ``texts`` are the caller's to keep from one read to the next (by default, fresh ones).
    """
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        raise UAPIProtocolError("the answer is not UTF-8") from None
    if not text.endswith("\n\n"):
        raise UAPIProtocolError("the answer does not end with an empty line")
    errno_at = text.rfind("\n", 0, len(text) - 2) + 1  # start of the last line
    if not text.startswith("errno=", errno_at):
        raise UAPIProtocolError("the answer does not end with errno=")
    _check_errno(text[errno_at:-2])
    # Device lines come first, up to the first public_key; no big split of the whole answer.
    peers_at = 0 if text.startswith("public_key=") else text.find("\npublic_key=") + 1
    if peers_at == 0 and not text.startswith("public_key="):
        peers_at = errno_at
    public_key: bytes | None = None
    listen_port = 0
    fwmark = 0
    for line in text[:peers_at].split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UAPIProtocolError(f"line without '=': {line[:40]!r}")
        if key == "private_key":
            private = _hex_key(value, "private_key")
            public_key = None if private == bytes(32) else public_key_of(private)
            del private
        elif key == "listen_port":
            listen_port = _uint(value, key, 65535)
        elif key == "fwmark":
            fwmark = _uint(value, key, 2**32 - 1)
        # Unknown device keys are future extensions: ignore them.
    peer_text = "\n" + text[peers_at:errno_at]
    del text
    try:
        # Two fast counts tell whether any peer has a preshared key at all (rarely): only
        # then does the slower redacting substitution run.
        if peer_text.count("\npreshared_key=") != peer_text.count(_NO_PSK_LINE):
            peer_text = _PSK_LINE.sub(_redact_psk, peer_text)
    except ValueError:
        raise UAPIProtocolError("a preshared_key is not hex") from None
    blocks: dict[bytes, str] = {}
    for block in peer_text.split("\npublic_key=")[1:]:
        peer_key = _hex_key(block[:64], "public_key")
        if len(block) > 64 and block[64] != "\n":
            raise UAPIProtocolError("public_key is not 64 hex digits")
        if peer_key in blocks:
            raise UAPIProtocolError("the same peer appears twice")
        blocks[peer_key] = block
    lazy_peers = LazyPeers(blocks, memo=memo, texts=texts)
    peers: Mapping[bytes, PeerState] = lazy_peers if lazy else lazy_peers.decode_all()
    return DeviceState(
        name=name, public_key=public_key, listen_port=listen_port, fwmark=fwmark, peers=peers
    )


def _endpoint(endpoint: Endpoint) -> str:
    if not endpoint.is_literal:
        raise LocalProtocolError(f"endpoint {endpoint} must be resolved to an address first")
    return str(endpoint)


def _allowed(out: list[str], texts: Iterable[str]) -> None:
    out.append("replace_allowed_ips=true")
    out.extend(f"allowed_ip={text}" for text in texts)


def encode_set(ops: Iterable[Operation]) -> bytes:
    """One ``set=1`` request carrying every operation, in order. Never uses ``replace_peers``."""
    out = ["set=1"]
    for op in ops:
        if isinstance(op, SetInterface):
            if op.private_key is not None:
                out.append(f"private_key={op.private_key.hex()}")
            if op.listen_port is not None:
                out.append(f"listen_port={op.listen_port}")
            if op.fwmark is not None:
                out.append(f"fwmark={op.fwmark}")
        elif isinstance(op, RemovePeer):
            out.append(f"public_key={op.public_key.hex()}")
            out.append("remove=true")
        elif isinstance(op, AddPeer):
            p = op.peer
            out.append(f"public_key={p.public_key.hex()}")
            if p.preshared_key is not None:
                out.append(f"preshared_key={p.preshared_key.hex()}")
            if p.endpoint is not None:
                out.append(f"endpoint={_endpoint(p.endpoint)}")
            if p.persistent_keepalive:
                out.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
            _allowed(out, p.prefix_texts())
        else:
            out.append(f"public_key={op.public_key.hex()}")
            out.append("update_only=true")
            if op.preshared_key is not None:
                out.append(f"preshared_key={op.preshared_key.hex()}")
            if op.endpoint is not None:
                out.append(f"endpoint={_endpoint(op.endpoint)}")
            if op.persistent_keepalive is not None:
                out.append(f"persistent_keepalive_interval={op.persistent_keepalive}")
            if op.allowed_ips is not None:
                _allowed(out, map(network_text, op.allowed_ips))
    return ("\n".join(out) + "\n\n").encode("ascii")
