"""The WireGuard data model: what an interface should be (config) and what a device reports (state).

Everything is a frozen, keyword-only dataclass. Keys are raw 32-byte values; they are shown as
base64 (as ``wg`` prints them) and put on the UAPI as hex. Secret fields (private and preshared
keys) never appear in ``repr``; a device *state* never holds a private key at all: readers derive
the public key and drop the private one as they parse, and keep only a fingerprint of a preshared
key, enough to tell whether it must change.
"""

from __future__ import annotations

import binascii
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Union

from .._errors import LocalProtocolError, PPNError, RemoteProtocolError

if TYPE_CHECKING:
    from .._keys import KeyFormatError

__all__ = [
    "DEFAULT_STALE_AFTER",
    "ConfigError",
    "DesiredStateError",
    "DeviceError",
    "DeviceState",
    "Endpoint",
    "IPNetwork",
    "InterfaceConfig",
    "PeerConfig",
    "PeerState",
    "QuickExtras",
    "UAPIProtocolError",
    "TextMemo",
    "VerifyError",
    "canonical_address",
    "canonical_prefix",
    "key_fingerprint",
    "key_text",
    "network_text",
    "parse_network",
    "public_key_of",
    "short_key",
]

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007 (runtime alias)

# A peer whose last handshake is older than this is "stale": its roamed endpoint may be
# overwritten by the configured one (RFC-NOTES §6.5). WireGuard rekeys every 120 s while traffic
# flows and gives up on a handshake after 90 s of retries, so 180 s without one means the path is
# not working.
DEFAULT_STALE_AFTER = 180.0

KEY_SIZE = 32  # as ppn._keys.KEY_SIZE
ZERO_KEY = bytes(KEY_SIZE)


def key_text(raw: bytes) -> str:
    """Base64 of a 32-byte key as ``wg`` prints it: what :func:`ppn._keys.encode_key` returns,
    without loading ``ppn._keys`` (which loads the Ed25519 and X25519 bindings, a large part
    of a small ``ppn wg sync``'s start-up)."""
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def _key_error(message: str) -> KeyFormatError:
    from .._keys import KeyFormatError  # only on the error path

    return KeyFormatError(message)


class ConfigError(PPNError, ValueError):
    """A wg(8)/wg-quick(8) configuration that cannot be parsed; ``line`` is 1-based (0 = none)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.reason = message
        self.line = line


class DesiredStateError(LocalProtocolError, ValueError):
    """A desired configuration that must not be applied (e.g. one prefix claimed by two peers)."""


class UAPIProtocolError(RemoteProtocolError):
    """The device answered on its configuration socket with something the protocol forbids."""


class DeviceError(PPNError):
    """The device refused a request (``errno`` is the positive error number it reported)."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class VerifyError(PPNError):
    """Read-back after an apply does not match the desired state."""


def public_key_of(private_key: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key (clamped as every WireGuard does)."""
    if len(private_key) != KEY_SIZE:
        raise _key_error(f"a private key is {KEY_SIZE} bytes")
    # libsodium's X25519 (PyNaCl, already a dependency), imported here: it loads in a third
    # of the time of the cryptography package's, which is a good part of a small sync.
    # Both clamp the scalar as RFC 7748 says, so the result is the same (tested).
    from nacl.bindings import crypto_scalarmult_base

    return bytes(crypto_scalarmult_base(private_key))


def key_fingerprint(key: bytes) -> bytes:
    """A one-way 16-byte tag of a secret key, so state can be compared without keeping the key."""
    import hashlib  # here: most syncs have no preshared key, and hashlib costs ~5 ms to load

    return hashlib.blake2b(key, digest_size=16, person=b"ppn-wg-psk").digest()


def short_key(public_key: bytes) -> str:
    """The first 8 base64 characters of a key, for messages."""
    return key_text(public_key)[:8] + "…"


_HEX_GROUP = re.compile(r"[0-9a-fA-F]{1,4}\Z")
_NOT_IN_HOST = re.compile(r"[ \t\n\[\]]")


# A canonical IPv4 literal (no leading zeros, octets up to 255) in one regular expression: the
# common prefix ("a.b.c.d/32") and endpoint ("a.b.c.d:port") spellings are recognised in one
# match instead of a parse.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4_HOST_PREFIX = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}/32")
_V4_ADDRESS = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_V4_ENDPOINT = re.compile(rf"({_OCTET}(?:\.{_OCTET}){{3}}):([0-9]{{1,5}})")
# An IPv6 host prefix whose written groups are all non-zero without leading zeros, around one
# "::": with at most six groups written (checked apart), "::" stands for the longest zero run,
# so the spelling is canonical (RFC 5952, lower case) as it stands.
_HEX16 = r"[1-9a-f][0-9a-f]{0,3}"
_V6_HOST_PREFIX = re.compile(rf"(?:{_HEX16}(?::{_HEX16})*)?::(?:{_HEX16}(?::{_HEX16})*)?/128")
_V4 = re.compile(
    r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})"
)


def _v4_int(text: str) -> int:
    # Leading zeros are refused (an ambiguous, octal-looking spelling, as ipaddress refuses it).
    match = _V4.fullmatch(text)
    if match is None:
        raise ValueError(text)
    a, b, c, d = map(int, match.groups())
    if a > 255 or b > 255 or c > 255 or d > 255:
        raise ValueError(text)
    return a << 24 | b << 16 | c << 8 | d


def _v6_int(text: str) -> int:
    return _v6(text)[0]


def _zero_run(groups: list[str]) -> int:
    longest = run = 0
    for group in groups:
        run = run + 1 if group == "0" else 0
        longest = max(longest, run)
    return longest


def _v6(text: str) -> tuple[int, bool]:
    """The value of an IPv6 literal, and whether ``text`` is already its canonical (RFC 5952,
    as ``str(IPv6Address)``) spelling, which spares formatting it again."""
    if "." in text or "%" in text:
        return int(ipaddress.IPv6Address(text)), False  # embedded IPv4 or zone: slow and exact
    head, sep, tail = text.partition("::")
    if "::" in tail:
        raise ValueError(text)
    head_groups = head.split(":") if head else []
    tail_groups = tail.split(":") if tail else []
    if sep:
        missing = 8 - len(head_groups) - len(tail_groups)
        if missing < 1:
            raise ValueError(text)
    elif len(head_groups) != 8:
        raise ValueError(text)
    else:
        missing = 0
    value = 0
    canonical = True
    for group in head_groups:
        if not _HEX_GROUP.match(group):
            raise ValueError(text)
        value = value << 16 | int(group, 16)
        canonical = canonical and (group[0] != "0" or group == "0")
    value <<= 16 * missing
    for group in tail_groups:
        if not _HEX_GROUP.match(group):
            raise ValueError(text)
        value = value << 16 | int(group, 16)
        canonical = canonical and (group[0] != "0" or group == "0")
    if canonical:
        canonical = text == text.lower()
    if canonical:
        # "::" must stand for the longest run of two or more zero groups (the leftmost of
        # equals), and no zero group may touch it.
        head_run, tail_run = _zero_run(head_groups), _zero_run(tail_groups)
        if sep:
            canonical = (
                missing >= 2
                and head_run < missing
                and tail_run <= missing
                and not (head_groups and head_groups[-1] == "0")
                and not (tail_groups and tail_groups[0] == "0")
            )
        else:
            canonical = head_run < 2
    return value, canonical


def _prefix_value(text: str) -> tuple[int, int, bool, bool]:
    """(masked value, prefix length, is IPv6, ``text`` is the canonical spelling)."""
    address, slash, length_text = text.partition("/")
    if "%" in address:
        # A scope (zone) names a link, not part of a prefix: wg(8) refuses it, and keeping the
        # address while dropping the scope would route a different set of addresses.
        raise ValueError(text)
    v6 = ":" in address
    bits = 128 if v6 else 32
    if slash:
        if not (length_text.isascii() and length_text.isdigit()):
            raise ValueError(text)
        length = int(length_text)
        if length > bits:
            raise ValueError(text)
    else:
        length = bits
    if v6:
        value, canonical = _v6(address)
    else:
        value, canonical = _v4_int(address), True
    masked = value & (((1 << bits) - 1) ^ ((1 << (bits - length)) - 1))
    canonical = canonical and masked == value and slash == "/" and length_text == str(length)
    return masked, length, v6, canonical


def _parse_network(text: str) -> tuple[IPNetwork, str]:
    masked, length, v6, canonical = _prefix_value(text)
    network: IPNetwork
    if v6:
        network = ipaddress.IPv6Network((masked, length))
    else:
        network = ipaddress.IPv4Network((masked, length))
    # The common spelling is already canonical; formatting it again costs microseconds.
    return network, text if canonical else str(network)


def parse_network(text: str) -> IPNetwork:
    """A prefix as ``wg`` accepts it: host bits are masked, a bare address is a host route."""
    return _parse_prefix(text)[0]


def _parse_prefix(text: str) -> tuple[IPNetwork, str]:
    stripped = text.strip()
    try:
        return _parse_network(stripped)
    except ValueError:
        raise ValueError(f"{stripped!r} is not an IP prefix") from None


def canonical_prefix(text: str) -> str:
    """``str(parse_network(text))`` without building the network object when ``text`` is
    already spelled canonically (the usual case): validates, and costs about a microsecond."""
    stripped = text.strip()
    if _V4_HOST_PREFIX.fullmatch(stripped) or (
        stripped.count(":") <= 6 and _V6_HOST_PREFIX.fullmatch(stripped)
    ):
        return stripped  # canonical already
    try:
        canonical = _prefix_value(stripped)[3]
    except ValueError:
        raise ValueError(f"{stripped!r} is not an IP prefix") from None
    return stripped if canonical else _parse_prefix(stripped)[1]


def network_text(network: IPNetwork) -> str:
    """``str(network)``; :meth:`TextMemo.network_text` remembers it for the prefixes it parsed."""
    return str(network)


def canonical_address(text: str) -> str:
    """An IP literal in its one canonical spelling (zone kept); ValueError if not a literal."""
    address, pct, zone = text.partition("%")
    if ":" in address:
        value, already = _v6(address)
        return (address if already else str(ipaddress.IPv6Address(value))) + pct + zone
    if pct:
        raise ValueError(text)
    _v4_int(address)
    return address


class TextMemo:
    """Parsed prefixes, addresses and endpoints by the text they were read from, for the object
    that owns it (a backend that reads its device pass after pass, one config parse).

    Within a read, most prefixes and endpoints repeat; across the reads of a long-lived owner,
    nearly all of them do. A hit returns the *same* object, so the planner's tuple comparisons
    short-cut on identity. The canonical text of each prefix parsed here is remembered by the
    prefix's identity (the entry holds the object, so its id cannot be reused while it is
    here): the IPv6 spelling costs several microseconds to format. Bounded: a table that
    reaches ``limit`` entries starts again empty. Not thread-safe (one owner, one pass at a
    time).
    """

    def __init__(self, *, limit: int = 1 << 17) -> None:
        self.limit = limit
        self._networks: dict[str, IPNetwork] = {}
        self._texts: dict[int, tuple[IPNetwork, str]] = {}
        self._prefixes: dict[str, str] = {}  # prefix as written -> canonical text
        self._addresses: dict[str, str] = {}
        self._endpoints: dict[str, Endpoint] = {}

    def network(self, text: str) -> IPNetwork:
        """:func:`parse_network`, remembered."""
        found = self._networks.get(text)
        if found is not None:
            return found
        network, canonical = _parse_prefix(text)
        if len(self._networks) >= self.limit:
            self._networks.clear()
            self._texts.clear()
        self._networks[text] = network
        self._texts[id(network)] = (network, canonical)
        return network

    def network_text(self, network: IPNetwork) -> str:
        """``str(network)``, without formatting it again when it was parsed here."""
        entry = self._texts.get(id(network))
        if entry is not None and entry[0] is network:
            return entry[1]
        return str(network)

    def prefix(self, text: str) -> str:
        """:func:`canonical_prefix`, remembered for spellings that are not canonical already
        (canonical ones are checked faster than they are looked up)."""
        found = self._prefixes.get(text)
        if found is not None:
            return found
        found = canonical_prefix(text)
        if found != text:
            if len(self._prefixes) >= self.limit:
                self._prefixes.clear()
            self._prefixes[text] = found
        return found

    def address(self, text: str) -> str:
        """:func:`canonical_address`, remembered."""
        found = self._addresses.get(text)
        if found is None:
            found = canonical_address(text)
            if len(self._addresses) >= self.limit:
                self._addresses.clear()
            self._addresses[text] = found
        return found

    def endpoint(self, text: str) -> Endpoint:
        """:meth:`Endpoint.parse`, remembered."""
        found = self._endpoints.get(text)
        if found is None:
            found = Endpoint.parse(text)
            if len(self._endpoints) >= self.limit:
                self._endpoints.clear()
            self._endpoints[text] = found
        return found


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """A peer's UDP endpoint. ``host`` is an IP literal or (in config files only) a host name."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is outside 1..65535")
        if not self.host or _NOT_IN_HOST.search(self.host):
            raise ValueError(f"{self.host!r} is not a host")

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``1.2.3.4:51820``, ``[fd00::1]:51820`` or ``host.example:51820``."""
        return cls._parse(text.strip())

    @classmethod
    def _parse(cls, text: str) -> Endpoint:
        v4 = _V4_ENDPOINT.fullmatch(text)
        if v4 is not None:  # the common case, canonical as written
            return cls(host=v4[1], port=int(v4[2]))
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ValueError(f"{text!r} is not [address]:port")
            port_text = rest[1:]
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or ":" in host:
                raise ValueError(f"{text!r} is not host:port (put IPv6 addresses in brackets)")
        if not port_text.isdigit() or len(port_text) > 5:
            raise ValueError(f"{port_text!r} is not a port number")
        try:  # literal addresses in one spelling, so equal endpoints compare equal
            host = canonical_address(host)
        except ValueError:
            if text.startswith("["):
                raise ValueError(f"{host!r} is not an IPv6 address") from None
        return cls(host=host, port=int(port_text))

    @property
    def is_literal(self) -> bool:
        if _V4_ADDRESS.fullmatch(self.host):
            return True
        try:
            canonical_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class PeerConfig:
    """One ``[Peer]`` as it should be. ``persistent_keepalive`` 0 means off."""

    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: Endpoint | None = None
    # A factory, not a plain default, so the class has no ``allowed_ips`` attribute and a
    # peer from the parser can build its networks on first use (``__getattr__`` below).
    allowed_ips: tuple[IPNetwork, ...] = field(default_factory=tuple)
    persistent_keepalive: int = 0

    def __post_init__(self) -> None:
        if len(self.public_key) != KEY_SIZE:
            raise _key_error("a public key is 32 bytes")
        if self.preshared_key is not None and len(self.preshared_key) != KEY_SIZE:
            raise _key_error("a preshared key is 32 bytes")
        if not 0 <= self.persistent_keepalive <= 65535:
            raise ValueError("persistent keepalive is 0..65535 seconds")

    @classmethod
    def from_prefix_texts(
        cls,
        *,
        public_key: bytes,
        preshared_key: bytes | None,
        endpoint: Endpoint | None,
        prefixes: tuple[str, ...],
        persistent_keepalive: int,
    ) -> PeerConfig:
        """A peer whose allowed IPs are given as *canonical* prefix texts (see
        :func:`canonical_prefix`, which the caller must have applied): the network objects
        are built only if ``allowed_ips`` is ever read. A 10,000-peer sync that changes a
        few peers then builds a few dozen instead of 20,000 (ARCHITECTURE §8.1)."""
        if len(public_key) != KEY_SIZE or not 0 <= persistent_keepalive <= 65535:
            raise ValueError("a public key is 32 bytes, a keepalive 0..65535 seconds")
        if preshared_key is not None and len(preshared_key) != KEY_SIZE:
            raise _key_error("a preshared key is 32 bytes")
        peer = object.__new__(cls)
        put = object.__setattr__
        put(peer, "public_key", public_key)
        put(peer, "preshared_key", preshared_key)
        put(peer, "endpoint", endpoint)
        put(peer, "persistent_keepalive", persistent_keepalive)
        put(peer, "_prefixes", prefixes)
        return peer

    if not TYPE_CHECKING:  # for mypy every attribute is declared; this only builds one lazily

        def __getattr__(self, name: str) -> tuple[IPNetwork, ...]:
            texts = self.__dict__.get("_prefixes") if name == "allowed_ips" else None
            if texts is None:
                raise AttributeError(name)
            nets = tuple(parse_network(text) for text in texts)
            object.__setattr__(self, "allowed_ips", nets)
            return nets

    def prefix_texts(self) -> tuple[str, ...]:
        """The canonical text of each allowed IP (``str(net)``), without building networks
        for a parsed peer."""
        texts: tuple[str, ...] | None = self.__dict__.get("_prefixes")
        if texts is None:
            texts = tuple(network_text(n) for n in self.allowed_ips)
            object.__setattr__(self, "_prefixes", texts)
        return texts

    @property
    def public_key_b64(self) -> str:
        return key_text(self.public_key)

    @property
    def preshared_fingerprint(self) -> bytes | None:
        if self.preshared_key is None or self.preshared_key == ZERO_KEY:
            return None
        return key_fingerprint(self.preshared_key)


@dataclass(frozen=True, kw_only=True)
class QuickExtras:
    """wg-quick(8) settings, kept as data: wg(8) ignores them, plumbing may use them."""

    addresses: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    mtu: int | None = None
    table: str | None = None
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    save_config: bool | None = None

    @property
    def empty(self) -> bool:
        return self == QuickExtras()


@dataclass(frozen=True, kw_only=True)
class InterfaceConfig:
    """An ``[Interface]`` and its peers. ``None`` fields are left as the device has them."""

    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int | None = None
    fwmark: int | None = None
    peers: tuple[PeerConfig, ...] = ()
    extras: QuickExtras = field(default_factory=QuickExtras)

    def __post_init__(self) -> None:
        if self.private_key is not None and len(self.private_key) != KEY_SIZE:
            raise _key_error("a private key is 32 bytes")
        if self.listen_port is not None and not 0 <= self.listen_port <= 65535:
            raise ValueError("listen port is 0..65535")
        if self.fwmark is not None and not 0 <= self.fwmark <= 0xFFFFFFFF:
            raise ValueError("fwmark is a 32-bit number")

    @cached_property
    def public_key(self) -> bytes | None:
        # Kept by the config itself (a planner asks on every pass; X25519 costs ~30 us).
        return None if self.private_key is None else public_key_of(self.private_key)

    def peer_map(self) -> Mapping[bytes, PeerConfig]:
        """The peers by public key, built once (the state is frozen; a planner asks each pass)."""
        found: dict[bytes, PeerConfig] | None = self.__dict__.get("_peer_map")
        if found is None:
            found = {p.public_key: p for p in self.peers}
            object.__setattr__(self, "_peer_map", found)
        return found


@dataclass(frozen=True, kw_only=True)
class PeerState:
    """One peer as the device reports it. ``last_handshake`` is Unix seconds, None = never."""

    public_key: bytes
    preshared_fingerprint: bytes | None = None
    endpoint: Endpoint | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    persistent_keepalive: int = 0
    last_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    protocol_version: int = 1

    @property
    def public_key_b64(self) -> str:
        return key_text(self.public_key)

    def handshake_age(self, now: float) -> float | None:
        return None if self.last_handshake is None else max(0.0, now - self.last_handshake)

    def is_stale(self, now: float, stale_after: float = DEFAULT_STALE_AFTER) -> bool:
        age = self.handshake_age(now)
        return age is None or age > stale_after


@dataclass(frozen=True, kw_only=True)
class DeviceState:
    """What a device reports. Holds the interface's public key, never its private key."""

    name: str
    public_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: Mapping[bytes, PeerState] = field(default_factory=dict)

    @property
    def public_key_b64(self) -> str | None:
        return None if self.public_key is None else key_text(self.public_key)
