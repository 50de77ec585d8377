"""The cross-platform WireGuard configuration protocol ("UAPI"), sans I/O.

One request per connection over ``/var/run/wireguard/<iface>.sock``: ``get=1`` or ``set=1``,
then ``key=value`` lines, then an empty line. The answer is ``key=value`` lines ending with
``errno=N`` and an empty line. Keys travel as lower-case hex. See RFC-NOTES §6.3 for the
golden encodings this module produces.

Secrets are redacted as they are parsed: a ``private_key`` line becomes the interface's public
key and a ``preshared_key`` line a fingerprint; the secret itself is never stored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ._errors import LocalProtocolError
from ._wg_model import (
    DeviceError,
    DeviceState,
    Endpoint,
    IPNetwork,
    PeerState,
    UAPIProtocolError,
    key_fingerprint,
    public_key_of,
)
from ._wg_plan import AddPeer, Operation, RemovePeer, SetInterface

__all__ = [
    "GET_REQUEST",
    "encode_set",
    "parse_errno",
    "parse_get",
]

GET_REQUEST = b"get=1\n\n"


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


def parse_get(response: bytes, name: str) -> DeviceState:
    """Decode the answer to ``get=1``. Raises :class:`UAPIProtocolError` on malformed input
    (never anything else for arbitrary bytes) and :class:`DeviceError` for ``errno != 0``."""
    lines = _lines(response)
    _check_errno(lines[-1])
    public_key: bytes | None = None
    listen_port = 0
    fwmark = 0
    peers: dict[bytes, PeerState] = {}
    peer: dict[str, object] | None = None
    allowed: list[IPNetwork] = []

    def finish() -> None:
        if peer is None:
            return
        key = peer.pop("public_key")
        assert isinstance(key, bytes)
        if key in peers:
            raise UAPIProtocolError("the same peer appears twice")
        sec = int(peer.pop("hs_sec", 0))  # type: ignore[call-overload]
        nsec = int(peer.pop("hs_nsec", 0))  # type: ignore[call-overload]
        handshake = None if sec == 0 and nsec == 0 else sec + nsec / 1e9
        peers[key] = PeerState(
            public_key=key,
            allowed_ips=tuple(allowed),
            last_handshake=handshake,
            **peer,  # type: ignore[arg-type]
        )

    for line in lines[:-1]:
        key, sep, value = line.partition("=")
        if not sep:
            raise UAPIProtocolError(f"line without '=': {line[:40]!r}")
        if key == "public_key":
            finish()
            peer = {"public_key": _hex_key(value, "public_key")}
            allowed = []
        elif peer is None:
            if key == "private_key":
                private = _hex_key(value, "private_key")
                public_key = None if private == bytes(32) else public_key_of(private)
                del private
            elif key == "listen_port":
                listen_port = _uint(value, key, 65535)
            elif key == "fwmark":
                fwmark = _uint(value, key, 2**32 - 1)
            # Unknown device keys are future extensions: ignore them.
        elif key == "allowed_ip":
            try:
                allowed.append(ipaddress.ip_network(value, strict=True))
            except ValueError:
                raise UAPIProtocolError(f"allowed_ip={value[:50]!r} is not a prefix") from None
        elif key == "endpoint":
            try:
                peer["endpoint"] = Endpoint.parse(value)
            except ValueError:
                raise UAPIProtocolError(f"endpoint={value[:50]!r} is not ip:port") from None
        elif key == "preshared_key":
            psk = _hex_key(value, key)
            peer["preshared_fingerprint"] = None if psk == bytes(32) else key_fingerprint(psk)
            del psk
        elif key == "last_handshake_time_sec":
            peer["hs_sec"] = _uint(value, key, 2**63)
        elif key == "last_handshake_time_nsec":
            peer["hs_nsec"] = _uint(value, key, 10**9)
        elif key == "rx_bytes":
            peer["rx_bytes"] = _uint(value, key, 2**64)
        elif key == "tx_bytes":
            peer["tx_bytes"] = _uint(value, key, 2**64)
        elif key == "persistent_keepalive_interval":
            peer["persistent_keepalive"] = _uint(value, key, 65535)
        elif key == "protocol_version":
            peer["protocol_version"] = _uint(value, key, 2**32)
        # Unknown peer keys: ignore (forward compatible).
    finish()
    return DeviceState(
        name=name, public_key=public_key, listen_port=listen_port, fwmark=fwmark, peers=peers
    )


def _endpoint(endpoint: Endpoint) -> str:
    if not endpoint.is_literal:
        raise LocalProtocolError(f"endpoint {endpoint} must be resolved to an address first")
    return str(endpoint)


def _allowed(out: list[str], nets: Iterable[IPNetwork]) -> None:
    out.append("replace_allowed_ips=true")
    out.extend(f"allowed_ip={n}" for n in nets)


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
            _allowed(out, p.allowed_ips)
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
                _allowed(out, op.allowed_ips)
    return ("\n".join(out) + "\n\n").encode("ascii")
