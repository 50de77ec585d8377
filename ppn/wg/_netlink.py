"""WireGuard generic-netlink messages (the kernel backend), sans I/O, as bytes.

The layout is ``uapi/wireguard.h`` on netlink framing (``linux/netlink.h``, ``genetlink.h``):
this core builds and reads the bytes itself, so the kernel path needs no pyroute2 (whose
import alone costs ~140 ms natively and seconds under emulation, and whose generic attribute
objects cost more per peer than the work they describe). :mod:`ppn.wg._io_kernel` owns the
socket and sends what this module builds.

* :func:`build_set_messages` turns operations into ``WG_CMD_SET_DEVICE`` messages, batching
  many peers per message under a size budget. A peer whose allowed IPs do not fit is continued
  in the next message with ``WGPEER_F_UPDATE_ONLY`` and without ``REPLACE_ALLOWEDIPS`` (as
  wg(8) does), so the continuation appends instead of wiping the first part.
* :func:`merge_dump` folds the messages of a ``WG_CMD_GET_DEVICE`` dump into one
  :class:`DeviceState`. The kernel splits a large device over several messages, and one peer's
  allowed IPs may straddle two of them: chunks are merged by public key. The private key is
  turned into the public key and dropped as it is read.
* The rest is the framing both need: the family lookup (``CTRL_CMD_GETFAMILY``), splitting a
  receive buffer into messages, and reading the kernel's error/ack messages; and the one
  rtnetlink request the backend selection needs (a link's kind, ``RTM_GETLINK``).
"""

from __future__ import annotations

import ipaddress
import operator
import struct
from collections.abc import Callable, Iterable, Iterator, KeysView, Mapping, Sequence

from .._errors import LocalProtocolError
from ._model import (
    DeviceState,
    Endpoint,
    IPNetwork,
    PeerConfig,
    PeerState,
    UAPIProtocolError,
    _prefix_value,
    _v4_int,
    key_fingerprint,
    public_key_of,
)
from ._plan import AddPeer, Operation, RemovePeer, SetInterface

__all__ = [
    "MESSAGE_BUDGET",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "WG_CMD_SET_DEVICE",
    "WG_GENL_VERSION",
    "WGPEER_F_REMOVE_ME",
    "WGPEER_F_REPLACE_ALLOWEDIPS",
    "WGPEER_F_UPDATE_ONLY",
    "DumpMemo",
    "KernelPeers",
    "build_set_messages",
    "error_code",
    "family_id",
    "get_device_request",
    "get_family_request",
    "get_link_request",
    "get_links_request",
    "link_kind",
    "link_name_and_kind",
    "merge_dump",
    "split_messages",
]

# linux/netlink.h, linux/genetlink.h, linux/rtnetlink.h, linux/if_link.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
RTM_NEWLINK = 16
RTM_GETLINK = 18
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
AF_INET = 2
AF_INET6 = 10

# uapi/wireguard.h (the kernel ABI; a test holds them equal to pyroute2's copies).
WG_GENL_NAME = "wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE = 0
WG_CMD_SET_DEVICE = 1
WGDEVICE_A_IFNAME = 2
WGDEVICE_A_PRIVATE_KEY = 3
WGDEVICE_A_PUBLIC_KEY = 4
WGDEVICE_A_LISTEN_PORT = 6
WGDEVICE_A_FWMARK = 7
WGDEVICE_A_PEERS = 8
WGPEER_A_PUBLIC_KEY = 1
WGPEER_A_PRESHARED_KEY = 2
WGPEER_A_FLAGS = 3
WGPEER_A_ENDPOINT = 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL = 5
WGPEER_A_LAST_HANDSHAKE_TIME = 6
WGPEER_A_RX_BYTES = 7
WGPEER_A_TX_BYTES = 8
WGPEER_A_ALLOWEDIPS = 9
WGPEER_A_PROTOCOL_VERSION = 10
WGALLOWEDIP_A_FAMILY = 1
WGALLOWEDIP_A_IPADDR = 2
WGALLOWEDIP_A_CIDR_MASK = 3
WGPEER_F_REMOVE_ME = 1 << 0
WGPEER_F_REPLACE_ALLOWEDIPS = 1 << 1
WGPEER_F_UPDATE_ONLY = 1 << 2

# Stay well under the kernel's per-message limits and a default socket buffer.
MESSAGE_BUDGET = 16 * 1024
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_HEADERS = _NLMSGHDR.size + 4  # + genlmsghdr: cmd, version, reserved
_NLA = struct.Struct("=HH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_TIMESPEC = struct.Struct("=qq")
_PORT = struct.Struct("!H")


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size & 3)


def _nest(kind: int, parts: Iterable[bytes]) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def _genl_message(family: int, flags: int, seq: int, cmd: int, body: bytes) -> bytes:
    header = _NLMSGHDR.pack(_HEADERS + len(body), family, flags, seq, 0)
    return header + bytes((cmd, WG_GENL_VERSION, 0, 0)) + body


def _ifname(interface: str) -> bytes:
    return _attr(WGDEVICE_A_IFNAME, interface.encode() + b"\0")


def get_family_request(name: str = WG_GENL_NAME, *, seq: int = 1) -> bytes:
    """``CTRL_CMD_GETFAMILY`` for ``name``: the answer holds the family's message type."""
    body = _attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    header = _NLMSGHDR.pack(_HEADERS + len(body), GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
    return header + bytes((CTRL_CMD_GETFAMILY, 1, 0, 0)) + body


def get_device_request(family: int, interface: str, *, seq: int = 1) -> bytes:
    """The ``WG_CMD_GET_DEVICE`` dump request for ``interface``."""
    # No NLM_F_ACK: a dump ends with NLMSG_DONE (or an NLMSG_ERROR), nothing after it.
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _genl_message(family, flags, seq, WG_CMD_GET_DEVICE, _ifname(interface))


def get_link_request(interface: str, *, seq: int = 1) -> bytes:
    """rtnetlink ``RTM_GETLINK`` for one link by name (answer: ``RTM_NEWLINK`` or ENODEV)."""
    body = bytes(16) + _attr(IFLA_IFNAME, interface.encode() + b"\0")  # ifinfomsg: all zero
    flags = NLM_F_REQUEST | NLM_F_ACK
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETLINK, flags, seq, 0) + body


def get_links_request(*, seq: int = 1) -> bytes:
    """rtnetlink ``RTM_GETLINK`` dump of every link (answers: ``RTM_NEWLINK`` each)."""
    body = bytes(16)  # ifinfomsg: any family, any link
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETLINK, flags, seq, 0) + body


def split_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence, message) for each netlink message in one received buffer; each
    message is whole (header included), as :func:`merge_dump` and the readers below take it."""
    at = 0
    end = len(data)
    while at + _NLMSGHDR.size <= end:
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, at)
        if length < _NLMSGHDR.size or at + length > end:
            raise UAPIProtocolError("a netlink message overruns its buffer")
        yield kind, seq, data[at : at + length]
        at += (length + 3) & ~3


def error_code(message: bytes) -> int:
    """The errno of an ``NLMSG_ERROR`` message (0 = an acknowledgement)."""
    if len(message) < _NLMSGHDR.size + 4:
        raise UAPIProtocolError("a netlink error message is truncated")
    (code,) = struct.unpack_from("=i", message, _NLMSGHDR.size)
    return -int(code)


def _attrs(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in ``data[start:end]``."""
    stop = len(data) if end is None else end
    at = start
    unpack = _NLA.unpack_from
    while at + 4 <= stop:
        size, kind = unpack(data, at)
        if size < 4 or at + size > stop:
            raise UAPIProtocolError("a netlink attribute overruns its message")
        yield kind & _NLA_TYPE_MASK, at + 4, at + size
        at += (size + 3) & ~3


def family_id(message: bytes) -> int:
    """The family's message type from a ``CTRL_CMD_GETFAMILY`` answer."""
    for kind, start, end in _attrs(message, _HEADERS):
        if kind == CTRL_ATTR_FAMILY_ID and end - start >= 2:
            return int(_U16.unpack_from(message, start)[0])
    raise UAPIProtocolError("the generic-netlink family answer has no id")


def link_kind(message: bytes) -> str:
    """``IFLA_INFO_KIND`` of an ``RTM_NEWLINK`` message (``"unknown"`` if it has none)."""
    return link_name_and_kind(message)[1]


def link_name_and_kind(message: bytes) -> tuple[str, str]:
    """``IFLA_IFNAME`` and ``IFLA_INFO_KIND`` of an ``RTM_NEWLINK`` message."""
    name, found = "", "unknown"
    for kind, start, end in _attrs(message, _NLMSGHDR.size + 16):  # after the ifinfomsg
        if kind == IFLA_IFNAME:
            name = message[start:end].rstrip(b"\0").decode("utf-8", "replace")
        elif kind == IFLA_LINKINFO:
            for inner, s, e in _attrs(message, start, end):
                if inner == IFLA_INFO_KIND:
                    found = message[s:e].rstrip(b"\0").decode("ascii", "replace") or "unknown"
    return name, found


# ---------------------------------------------------------------------------------------------
# WG_CMD_SET_DEVICE


# Fixed layouts of the attributes a set message repeats per peer (header, then payload).
_KEY_ATTR = struct.Struct("=HH32s")
_FLAGS_ATTR = struct.Struct("=HHI")
_KEEPALIVE_ATTR = struct.Struct("=HHH2x")
# One allowed IP: its nest, then family (u16), address, prefix length (u8), each padded.
_V4_ALLOWED = struct.Struct("=HHHHH2xHH4sHHB3x")
_V6_ALLOWED = struct.Struct("=HHHHH2xHH16sHHB3x")


def _allowed_from_text(text: str) -> bytes:
    """One allowed-IP nest from a canonical prefix text (no network object built)."""
    value, length, v6, _canonical = _prefix_value(text)
    if v6:
        return _V6_ALLOWED.pack(
            40, NLA_F_NESTED, 6, WGALLOWEDIP_A_FAMILY, AF_INET6,
            20, WGALLOWEDIP_A_IPADDR, value.to_bytes(16, "big"), 5, WGALLOWEDIP_A_CIDR_MASK, length,
        )  # fmt: skip
    return _V4_ALLOWED.pack(
        28, NLA_F_NESTED, 6, WGALLOWEDIP_A_FAMILY, AF_INET,
        8, WGALLOWEDIP_A_IPADDR, value.to_bytes(4, "big"), 5, WGALLOWEDIP_A_CIDR_MASK, length,
    )  # fmt: skip


def _endpoint_attr(endpoint: Endpoint) -> bytes:
    if not endpoint.is_literal:
        raise LocalProtocolError(f"endpoint {endpoint} must be resolved to an address first")
    port = _PORT.pack(endpoint.port)
    if ":" not in endpoint.host:  # struct sockaddr_in
        address = _v4_int(endpoint.host).to_bytes(4, "big")
        return _attr(WGPEER_A_ENDPOINT, _U16.pack(AF_INET) + port + address + bytes(8))
    # struct sockaddr_in6: flow info, address, scope id (a zone is not sent)
    address = ipaddress.IPv6Address(endpoint.host.partition("%")[0]).packed
    return _attr(WGPEER_A_ENDPOINT, _U16.pack(AF_INET6) + port + bytes(4) + address + bytes(4))


# What a message holds besides its peers: headers, the interface name (16 bytes at most),
# the peers nest, one peer's nest and its allowed-IPs nest.
_MESSAGE_OVERHEAD = _HEADERS + 24 + 4 + 4 + 4


def _peer_entries(op: Operation) -> list[bytes]:
    """The peer nests of one peer operation, split so that each fits a message."""
    assert not isinstance(op, SetInterface)
    key = op.peer.public_key if isinstance(op, AddPeer) else op.public_key
    key_attr = _KEY_ATTR.pack(36, WGPEER_A_PUBLIC_KEY, key)
    if isinstance(op, RemovePeer):
        return [_nest(0, (key_attr, _FLAGS_ATTR.pack(8, WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME)))]
    parts = [key_attr, b""]  # the flags go second, once known
    texts: Sequence[str] | None
    if isinstance(op, AddPeer):
        p = op.peer
        flags = WGPEER_F_REPLACE_ALLOWEDIPS
        psk, endpoint, keepalive = p.preshared_key, p.endpoint, p.persistent_keepalive or None
        texts = p.prefix_texts()
    else:
        flags = WGPEER_F_UPDATE_ONLY
        psk, endpoint, keepalive = op.preshared_key, op.endpoint, op.persistent_keepalive
        texts = None if op.allowed_ips is None else [str(n) for n in op.allowed_ips]
        if texts is not None:
            flags |= WGPEER_F_REPLACE_ALLOWEDIPS
    parts[1] = _FLAGS_ATTR.pack(8, WGPEER_A_FLAGS, flags)
    if psk is not None:
        parts.append(_KEY_ATTR.pack(36, WGPEER_A_PRESHARED_KEY, psk))
    if endpoint is not None:
        parts.append(_endpoint_attr(endpoint))
    if keepalive is not None:
        parts.append(_KEEPALIVE_ATTR.pack(6, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, keepalive))
    first = b"".join(parts)
    if texts is None:
        return [_nest(0, (first,))]
    entries: list[bytes] = []
    prefix = first
    room = MESSAGE_BUDGET - _MESSAGE_OVERHEAD - len(prefix)
    batch: list[bytes] = []
    for text in texts:
        encoded = _allowed_from_text(text)
        if batch and len(encoded) > room:
            entries.append(_nest(0, (prefix, _nest(WGPEER_A_ALLOWEDIPS, batch))))
            # the continuation appends: update-only, no REPLACE_ALLOWEDIPS
            prefix = key_attr + _FLAGS_ATTR.pack(8, WGPEER_A_FLAGS, WGPEER_F_UPDATE_ONLY)
            room = MESSAGE_BUDGET - _MESSAGE_OVERHEAD - len(prefix)
            batch = []
        batch.append(encoded)
        room -= len(encoded)
    entries.append(_nest(0, (prefix, _nest(WGPEER_A_ALLOWEDIPS, batch))))
    return entries


def build_set_messages(
    interface: str, ops: Iterable[Operation], *, family: int, seq: int = 1
) -> list[bytes]:
    """The ``WG_CMD_SET_DEVICE`` messages for ``ops``, in order, each at most
    :data:`MESSAGE_BUDGET` bytes, numbered from ``seq`` and asking for an acknowledgement
    (empty when there is nothing to do). ``family`` is the generic-netlink message type of
    ``wireguard`` (:func:`family_id`)."""
    device: list[bytes] = []
    entries: list[bytes] = []
    for op in ops:
        if isinstance(op, SetInterface):
            if op.private_key is not None:
                device.append(_attr(WGDEVICE_A_PRIVATE_KEY, op.private_key))
            if op.listen_port is not None:
                device.append(_attr(WGDEVICE_A_LISTEN_PORT, _U16.pack(op.listen_port)))
            if op.fwmark is not None:
                device.append(_attr(WGDEVICE_A_FWMARK, _U32.pack(op.fwmark)))
        else:
            entries.extend(_peer_entries(op))
    if not device and not entries:
        return []
    name = _ifname(interface)
    flags = NLM_F_REQUEST | NLM_F_ACK
    messages: list[bytes] = []
    head = name + b"".join(device)
    batch: list[bytes] = []
    used = _HEADERS + len(head) + 4
    for entry in entries:
        if batch and used + len(entry) > MESSAGE_BUDGET:
            body = head + _nest(WGDEVICE_A_PEERS, batch)
            messages.append(_genl_message(family, flags, seq, WG_CMD_SET_DEVICE, body))
            seq += 1
            head, batch = name, []
            used = _HEADERS + len(head) + 4
        batch.append(entry)
        used += len(entry)
    body = head + (_nest(WGDEVICE_A_PEERS, batch) if batch else b"")
    messages.append(_genl_message(family, flags, seq, WG_CMD_SET_DEVICE, body))
    return messages


# ---------------------------------------------------------------------------------------------
# WG_CMD_GET_DEVICE


def _prefix_text(raw: bytes) -> str:
    """The canonical text (``str(network)``) of one allowed-IP nest's payload."""
    family = address = cidr = None
    at, end = 0, len(raw)
    while at + 4 <= end:
        size, kind = _NLA.unpack_from(raw, at)
        if size < 4 or at + size > end:
            break
        kind &= _NLA_TYPE_MASK
        if kind == WGALLOWEDIP_A_FAMILY and size >= 6:
            family = _U16.unpack_from(raw, at + 4)[0]
        elif kind == WGALLOWEDIP_A_IPADDR:
            address = raw[at + 4 : at + size]
        elif kind == WGALLOWEDIP_A_CIDR_MASK and size >= 5:
            cidr = raw[at + 4]
        at += (size + 3) & ~3
    if address is None or cidr is None:
        pass
    elif family == AF_INET and len(address) == 4 and cidr <= 32:
        value = int.from_bytes(address, "big") & (0xFFFFFFFF ^ ((1 << (32 - cidr)) - 1))
        a = value.to_bytes(4, "big")
        return f"{a[0]}.{a[1]}.{a[2]}.{a[3]}/{cidr}"
    elif family == AF_INET6 and len(address) == 16 and cidr <= 128:
        return str(ipaddress.IPv6Network((address, cidr), strict=False))
    raise UAPIProtocolError("an allowed IP in a netlink dump is malformed")


def _decode_endpoint(raw: bytes) -> Endpoint | None:
    if len(raw) < 4:
        return None
    family = _U16.unpack_from(raw)[0]
    (port,) = _PORT.unpack_from(raw, 2)
    if port == 0:
        return None
    if family == AF_INET and len(raw) >= 8:
        host = f"{raw[4]}.{raw[5]}.{raw[6]}.{raw[7]}"
    elif family == AF_INET6 and len(raw) >= 24:
        host = str(ipaddress.IPv6Address(raw[8:24]))
    else:
        return None
    return Endpoint(host=host, port=port)


class DumpMemo:
    """What earlier reads decoded, by the bytes it came from, kept by a backend from one read
    to the next: a peer's allowed IPs (the whole nest: its prefix texts, and the networks when
    asked for) and endpoints. A device read again yields the *same* objects, so the planner's
    comparisons short-cut on identity, and nothing is decoded twice (RFC-NOTES §6.10).

    ``matched`` maps a public key to the desired ``PeerConfig`` last found unchanged on the
    device and the stable tail of the nest it was found in (:meth:`KernelPeers.unchanged`).
    ``pages`` keeps, per message of the dump, what indexing it found (:class:`_Page`).
    """

    def __init__(self, *, limit: int = 1 << 16) -> None:
        self.limit = limit
        self._texts: dict[bytes, tuple[str, ...]] = {}
        self._nets: dict[tuple[str, ...], tuple[IPNetwork, ...]] = {}
        self._endpoints: dict[bytes, Endpoint | None] = {}
        self.matched: dict[bytes, tuple[PeerConfig, bytes]] = {}
        # By message position in the dump: what indexing that message's peers found, kept
        # while the message comes back the same (see _Page).
        self.pages: dict[int, _Page] = {}

    def remember(self, key: bytes, peer: PeerConfig, tail: bytes) -> None:
        if len(self.matched) >= self.limit and key not in self.matched:
            self.matched.clear()
        self.matched[key] = (peer, tail)

    def prefix_texts(self, parts: list[bytes]) -> tuple[str, ...]:
        """The canonical texts of a peer's allowed IPs, from its allowed-IPs nests' payloads
        (one per dump message the peer spans), without duplicates."""
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        found = self._texts.get(raw)
        if found is None:
            texts: list[str] = []
            at, end = 0, len(raw)
            while at + 4 <= end:
                size, _kind = _NLA.unpack_from(raw, at)
                if size < 4 or at + size > end:
                    raise UAPIProtocolError("a netlink attribute overruns its message")
                texts.append(_prefix_text(raw[at + 4 : at + size]))
                at += (size + 3) & ~3
            found = tuple(dict.fromkeys(texts)) if len(texts) > 1 else tuple(texts)
            if len(self._texts) >= self.limit:
                self._texts.clear()
            self._texts[raw] = found
        return found

    def networks(self, texts: tuple[str, ...]) -> tuple[IPNetwork, ...]:
        found = self._nets.get(texts)
        if found is None:
            found = tuple(ipaddress.ip_network(t) for t in texts)
            if len(self._nets) >= self.limit:
                self._nets.clear()
            self._nets[texts] = found
        return found

    def endpoint(self, raw: bytes | None) -> Endpoint | None:
        if raw is None:
            return None
        try:
            return self._endpoints[raw]
        except KeyError:
            pass
        found = _decode_endpoint(raw)
        if len(self._endpoints) >= self.limit:
            self._endpoints.clear()
        self._endpoints[raw] = found
        return found


_Continued = tuple[bytes, int, int]  # a nest continuing a peer: its key, payload start and end


class _Page:
    """What indexing the peers of one dump message found, for the next read of the device.

    A device that did not change is dumped again into the same messages, byte for byte but
    for each peer's handshake time and counters. So a message is compared with the one
    recorded here: first as a whole (an idle device's, one C-level compare), then, if that
    differs, on its *stable* bytes only (everything but those volatile payloads: every
    header, key, preshared key, keepalive, endpoint and allowed IP; one slice-and-compare).
    When they are equal, its peers' index values are the recorded ones (same message
    position, same offsets), and so is ``clean``: a nest found configured exactly as a
    desired ``PeerConfig`` stays so while its stable bytes are the same (the objects are
    immutable). :meth:`KernelPeers.unchanged` keeps ``clean`` in step when it finds an equal
    desired object built afresh, so the next read offers that one.

    A nest that continues a peer met before is recorded as such (``continued``), and merged
    again on every read, as a full read merges it: the module continues a peer's allowed IPs
    in the next message when one fills up, so most messages of a large dump start with one.
    It counts as continued only while its peer is met before (in this message, or in an
    earlier one: ``earlier``). A message with a nest that does not start with its key is not
    recorded.
    """

    __slots__ = (
        "body", "clean", "codes", "continued", "earlier", "end", "last_key", "last_key_at",
        "stable", "stable_of", "start",
    )  # fmt: skip

    def __init__(
        self,
        data: bytes,
        start: int,
        end: int,
        codes: dict[bytes, int],
        continued: list[_Continued],
        clean: dict[bytes, PeerConfig],
    ) -> None:
        self.start, self.end = start, end
        self.body = data[start:end]
        self.codes = codes
        self.continued = continued
        self.earlier = [key for key, _start, _end in continued if key not in codes]
        last = next(reversed(codes.items()), None)  # the last nest located here, if any
        self.last_key = b"" if last is None else last[0]
        self.last_key_at = 0 if last is None else ((last[1] >> 16) & 0xFFFFFFFF) + 4
        self.clean = clean  # the clean peers of these nests (a dict of the page's own)
        # Built when a message first differs from the recorded one (counters moved).
        self.stable_of: Callable[[bytes], object] | None = None
        self.stable: object = None

    def _stable_parts(self) -> Callable[[bytes], object]:
        """Slices of a body that cover all but the volatile payloads of every nest in the
        module's layout (header positions as get_peer writes them: the headers are among
        the stable bytes, so the layout holds for any body that matches)."""
        cuts: list[slice] = []
        at, body, start = 0, self.body, self.start
        for code in self.codes.values():
            nest = ((code >> 16) & 0xFFFFFFFF) - start
            if (
                (code & 0xFFFF) >= _STABLE_TAIL_AT
                and body.startswith(_HANDSHAKE_HEAD, nest + 72)
                and body.startswith(_TX_HEAD, nest + 100)
                and body.startswith(_RX_HEAD, nest + 112)
            ):
                cuts += (slice(at, nest + 76), slice(nest + 92, nest + 104))
                cuts.append(slice(nest + 112, nest + 116))
                at = nest + _STABLE_TAIL_AT
        cuts.append(slice(at, len(body)))
        return operator.itemgetter(*cuts)

    def matches(self, data: bytes, start: int, end: int) -> bool:
        """Whether ``data[start:end]`` indexes as recorded (the caller checks the keys are new)."""
        if start != self.start or end != self.end:
            return False
        if not data.startswith(self.body, start):
            # Up to the first volatile payload (the first nest's header, key and preshared
            # key), and the last peer's key: a message that holds other peers (shifted by a
            # removal, say) differs there, and is not worth building the stable parts for.
            if not (
                data.startswith(self.body[:76], start)
                and data.startswith(self.last_key, self.last_key_at)
            ):
                return False
            if self.stable_of is None:
                self.stable_of = self._stable_parts()
                self.stable = self.stable_of(self.body)
            body = data[start:end]
            if self.stable_of(body) != self.stable:
                return False
            self.body = body  # the counters as now: an idle peer's next dump is equal whole
        return True

    def keep(self, key: bytes, peer: PeerConfig) -> None:
        """``key``'s nest in this message holds exactly ``peer``'s configuration (the caller
        compared them)."""
        if key in self.codes:
            self.clean[key] = peer


class _RawPeer:
    """One peer of a dump, its fields kept as read (the preshared key as its fingerprint)."""

    __slots__ = (
        "allowed", "endpoint", "handshake", "keepalive", "kernel_layout", "psk", "rx", "tx",
        "version",
    )  # fmt: skip

    def __init__(self) -> None:
        self.kernel_layout = False  # one nest, its head as the module writes it
        self.allowed: list[bytes] = []
        self.endpoint: bytes | None = None
        self.psk: bytes | None = None
        self.keepalive = 0
        self.handshake: float | None = None
        self.rx = 0
        self.tx = 0
        self.version = 1


class KernelPeers(Mapping[bytes, PeerState]):
    """The peers of a dump, each turned into a :class:`PeerState` on first access.

    A read only indexes the dump: per peer its public key and where its nest lies (a peer
    continued in a later message, or laid out otherwise, is merged and kept as read instead).
    ``unchanged(peer)`` (the planner's :class:`~ppn.wg._plan.QuickCheck`) answers "does the
    device already hold exactly this configuration for the peer?":

    * first on bytes, without reading the peer: when this ``PeerConfig`` (or one with the same
      endpoint and allowed IPs, as a desired state built afresh has) was found unchanged on an
      earlier read (:attr:`DumpMemo.matched` keeps the object and the stable tail of the nest
      it matched: protocol version, endpoint, allowed IPs), the nest is in the module's layout
      (every attribute header where ``get_peer`` puts it), and its preshared key, keepalive
      and tail are byte for byte the expected ones. Only the volatile fields (handshake time,
      byte counters) are not looked at, as the field comparison does not look at them either;
    * otherwise from the fields as read: keepalive, preshared-key fingerprint, endpoint (when
      one is desired) and the allowed IPs' canonical texts in order, without building network
      objects. A mismatch (another order, say) only means the planner compares field by field.
    """

    def __init__(
        self,
        index: dict[bytes, int],
        messages: list[bytes],
        raw: dict[bytes, _RawPeer],
        memo: DumpMemo,
        clean: dict[bytes, PeerConfig] | None = None,
        pages: dict[int, _Page] | None = None,
    ) -> None:
        self._index = index
        self._messages = messages
        self._raw = raw
        self._memo = memo
        self._decoded: dict[bytes, PeerState] = {}
        self._clean: dict[bytes, PeerConfig] = {} if clean is None else clean
        self._pages: dict[int, _Page] = {} if pages is None else pages  # by message, this read's

    @property
    def known_unchanged(self) -> Mapping[bytes, PeerConfig]:
        """Peers whose nest the read found byte for byte as the desired object given here was
        found before (the planner skips a desired peer that *is* that object)."""
        return self._clean

    def _raw_peer(self, key: bytes) -> _RawPeer:
        """The peer's fields as read (decoding its nest now if the read only indexed it)."""
        code = self._index[key]
        if code < 0 or key in self._raw:
            return self._raw[key]
        data = self._messages[code >> 48]
        start = (code >> 16) & 0xFFFFFFFF
        one: dict[bytes, _RawPeer] = {}
        _read_peer(data, start, start + (code & 0xFFFF), one)
        found = self._raw[key] = one[key]  # read once: a quick check, then the full comparison
        return found

    def __getitem__(self, key: bytes) -> PeerState:
        found = self._decoded.get(key)
        if found is None:
            r = self._raw_peer(key)
            memo = self._memo
            texts = memo.prefix_texts(r.allowed) if r.allowed else ()
            found = self._decoded[key] = PeerState(
                public_key=key,
                preshared_fingerprint=r.psk,
                endpoint=memo.endpoint(r.endpoint),
                allowed_ips=memo.networks(texts) if texts else (),
                persistent_keepalive=r.keepalive,
                last_handshake=r.handshake,
                rx_bytes=r.rx,
                tx_bytes=r.tx,
                protocol_version=r.version,
            )
        return found

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def keys(self) -> KeysView[bytes]:
        return self._index.keys()  # membership and iteration without a Python-level call

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def unchanged(self, peer: PeerConfig) -> bool:
        key = peer.public_key
        seen = self._clean.get(key)
        if seen is not None:  # the read found the nest as ``seen`` expects it (so it exists)
            if seen is peer:
                return True
            # An equal desired object built afresh (a changed file, a mesh agent's pass):
            # what the byte check compared, compared on the objects, then next time by
            # identity. Inline: this runs for every peer of such a pass. Equal attribute
            # dicts (one C-level compare, but for the endpoints' own __eq__) are equal
            # configurations; dicts that differ in what is cached (networks built on one
            # side) are compared field by field.
            if seen.__dict__ == peer.__dict__ or (
                seen.persistent_keepalive == peer.persistent_keepalive
                and seen.preshared_key == peer.preshared_key
                and seen.prefix_texts() == peer.prefix_texts()
                and (seen.endpoint is peer.endpoint or seen.endpoint == peer.endpoint)
            ):
                self._clean[key] = peer
                matched = self._memo.matched
                entry = matched.get(key)
                if entry is not None and entry[0] is seen:  # replaced: the memo cannot grow
                    matched[key] = (peer, entry[1])
                page = self._pages.get(self._index[key] >> 48)
                if page is not None and key in page.codes:  # page.keep(key, peer), inline
                    page.clean[key] = peer
                return True
        code = self._index.get(key)
        if code is None:
            return False
        r = self._raw_peer(key)
        if r.keepalive != peer.persistent_keepalive:
            return False
        if (r.psk is not None or peer.preshared_key is not None) and (
            r.psk != peer.preshared_fingerprint
        ):
            return False
        if peer.endpoint is not None and self._memo.endpoint(r.endpoint) != peer.endpoint:
            return False
        texts = self._memo.prefix_texts(r.allowed) if r.allowed else ()
        if texts != peer.prefix_texts():
            return False
        if code >= 0 and r.kernel_layout:
            # Remembered for the next read: the nest's stable tail, as read and found equal.
            data = self._messages[code >> 48]
            at = (code >> 16) & 0xFFFFFFFF
            self._memo.remember(key, peer, data[at + _STABLE_TAIL_AT : at + (code & 0xFFFF)])
        page = self._pages.get(code >> 48) if code >= 0 else None
        if page is not None:  # what the nest was just found to hold, for the next read
            page.keep(key, peer)
        return True


def _key(data: bytes, start: int, end: int, what: str) -> bytes:
    if end - start != 32:
        raise UAPIProtocolError(f"{what} in a netlink dump is not 32 bytes")
    return data[start:end]


_ZERO_KEY = bytes(32)


# How the module lays out the head of every peer in a dump (drivers/net/wireguard/netlink.c,
# get_peer): public key, preshared key, last handshake, keepalive, tx and rx bytes, protocol
# version, each attribute at a fixed size; then the endpoint (if any) and the allowed IPs. A
# peer whose head matches is read with one unpack; anything else (a continuation that carries
# only the key and more allowed IPs, another order) goes through the attribute loop.
_KERNEL_HEAD = struct.Struct("=HH32sHH32sHHqqHHH2xHHQHHQHHI")
_KERNEL_HEAD_FRAME = operator.itemgetter(0, 1, 3, 4, 6, 7, 10, 11, 13, 14, 16, 17, 19, 20)
_KERNEL_HEAD_EXPECTED = (
    36, WGPEER_A_PUBLIC_KEY, 36, WGPEER_A_PRESHARED_KEY, 20, WGPEER_A_LAST_HANDSHAKE_TIME,
    6, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, 12, WGPEER_A_TX_BYTES, 12, WGPEER_A_RX_BYTES,
    8, WGPEER_A_PROTOCOL_VERSION,
)  # fmt: skip


def _read_peer(data: bytes, at: int, end: int, peers: dict[bytes, _RawPeer]) -> None:
    """One peer nest's payload ``data[at:end]`` into ``peers`` (merged by public key)."""
    r: _RawPeer | None = None
    if end - at >= _KERNEL_HEAD.size:
        head = _KERNEL_HEAD.unpack_from(data, at)
        if _KERNEL_HEAD_FRAME(head) == _KERNEL_HEAD_EXPECTED:
            key = head[2]
            r = peers.get(key)
            if r is None:
                r = peers[key] = _RawPeer()
                r.kernel_layout = True
            else:
                r.kernel_layout = False
            psk = head[5]
            r.psk = None if psk == _ZERO_KEY else key_fingerprint(psk)
            sec, nsec = head[8], head[9]
            r.handshake = None if sec == 0 and nsec == 0 else sec + nsec / 1e9
            r.keepalive, r.tx, r.rx, r.version = head[12], head[15], head[18], head[21]
            del psk, head
            at += _KERNEL_HEAD.size
    unpack = _NLA.unpack_from
    while at + 4 <= end:
        size, kind = unpack(data, at)
        if size < 4 or at + size > end:
            raise UAPIProtocolError("a netlink attribute overruns its message")
        kind &= _NLA_TYPE_MASK
        s, e = at + 4, at + size
        at += (size + 3) & ~3
        if kind == WGPEER_A_PUBLIC_KEY:
            if r is not None:
                raise UAPIProtocolError("a peer in a netlink dump has two public keys")
            key = _key(data, s, e, "peer public key")
            r = peers.get(key)
            if r is None:
                r = peers[key] = _RawPeer()
            else:
                r.kernel_layout = False  # continued: its allowed IPs span two nests
        elif r is None:
            if kind:  # padding (type 0) may come first; anything else needs the key first
                raise UAPIProtocolError("a peer in a netlink dump does not start with its key")
        elif kind == WGPEER_A_ALLOWEDIPS:
            r.allowed.append(data[s:e])
        elif kind == WGPEER_A_ENDPOINT:
            r.endpoint = data[s:e]
        elif kind == WGPEER_A_PRESHARED_KEY:
            psk = _key(data, s, e, "preshared key")
            r.psk = None if psk == _ZERO_KEY else key_fingerprint(psk)
            del psk
        elif kind == WGPEER_A_LAST_HANDSHAKE_TIME and e - s >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data, s)
            r.handshake = None if sec == 0 and nsec == 0 else sec + nsec / 1e9
        elif kind == WGPEER_A_RX_BYTES and e - s >= 8:
            r.rx = _U64.unpack_from(data, s)[0]
        elif kind == WGPEER_A_TX_BYTES and e - s >= 8:
            r.tx = _U64.unpack_from(data, s)[0]
        elif kind == WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL and e - s >= 2:
            r.keepalive = _U16.unpack_from(data, s)[0]
        elif kind == WGPEER_A_PROTOCOL_VERSION and e - s >= 4:
            r.version = _U32.unpack_from(data, s)[0]


# The fixed offsets of the module's layout within a peer nest's payload (see _KERNEL_HEAD):
# key attribute at 0, preshared key at 36, handshake time at 72, keepalive at 92, tx bytes at
# 100, rx bytes at 112, protocol version at 124; what follows (version, endpoint, allowed IPs)
# is the stable tail a quick check compares as bytes.
_STABLE_TAIL_AT = 124
_PUBLIC_KEY_HEAD = _NLA.pack(36, WGPEER_A_PUBLIC_KEY)
_HANDSHAKE_HEAD = _NLA.pack(20, WGPEER_A_LAST_HANDSHAKE_TIME)
_TX_HEAD = _NLA.pack(12, WGPEER_A_TX_BYTES)
_RX_HEAD = _NLA.pack(12, WGPEER_A_RX_BYTES)


def _psk_and_handshake_head(psk: bytes | None) -> bytes:
    """The bytes from the preshared-key attribute to the handshake time's header."""
    return _KEY_ATTR.pack(36, WGPEER_A_PRESHARED_KEY, psk or _ZERO_KEY) + _HANDSHAKE_HEAD


def _keepalive_and_tx_head(keepalive: int) -> bytes:
    """The bytes from the keepalive attribute to the tx counter's header."""
    return _KEEPALIVE_ATTR.pack(6, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, keepalive) + _TX_HEAD


_NO_PSK_HEAD = _psk_and_handshake_head(None)
_NO_KEEPALIVE_HEAD = _keepalive_and_tx_head(0)


def _first_key(data: bytes, at: int, end: int) -> bytes | None:
    """The public key of a peer nest's payload ``data[at:end]`` that does not start with it."""
    for kind, start, stop in _attrs(data, at, end):
        if kind == WGPEER_A_PUBLIC_KEY:
            return _key(data, start, stop, "peer public key")
    return None


def _index_peers(
    messages: list[bytes],
    slot: int,
    at: int,
    end: int,
    index: dict[bytes, int],
    raw: dict[bytes, _RawPeer],
    matched: dict[bytes, tuple[PeerConfig, bytes]],
    clean: dict[bytes, PeerConfig],
    found: dict[bytes, PeerConfig],
) -> tuple[dict[bytes, int], list[_Continued]] | None:
    """Index the peer nests of one ``WGDEVICE_A_PEERS`` nest ``messages[slot][at:end]``.
    Returns what a :class:`_Page` keeps: the index values it added and the nests that
    continue a peer met before, in order; or None if a nest does not start with its key. The
    clean peers of these nests go into ``found`` (the caller adds them to ``clean``, the
    clean peers of the earlier messages).

    A peer seen for the first time with its key attribute first is only located: message,
    payload offset and length in one integer (which the collector does not track); and if the
    backend remembers a desired peer found unchanged in an earlier nest (``matched``), this
    nest is compared with it on bytes, here where it lies at hand: in the module's layout
    (every attribute header where ``get_peer`` puts it), the remembered preshared key and
    keepalive, the remembered stable tail (protocol version, endpoint, allowed IPs). Only the
    volatile fields (handshake time, counters) are skipped. A match goes into ``found``.
    Any other nest (a continuation of a peer's allowed IPs, another layout) is read now and
    merged by key into ``raw``, with the peer's earlier nest if it was only located; its index
    value is -1.
    """
    data = messages[slot]
    unpack = _NLA.unpack_from
    recall = matched.get
    startswith = data.startswith
    where = slot << 48
    located: dict[bytes, int] = {}
    continued: list[_Continued] = []
    simple = True
    while at + 4 <= end:
        size, _kind = unpack(data, at)
        if size < 4 or at + size > end:
            raise UAPIProtocolError("a netlink attribute overruns its message")
        start, stop = at + 4, at + size
        at += (size + 3) & ~3
        key: bytes | None
        if size >= 40 and startswith(_PUBLIC_KEY_HEAD, start):
            key = data[start + 4 : start + 36]
            if key not in index:
                located[key] = index[key] = where | (start << 16) | (size - 4)
                seen = recall(key)
                if seen is not None:
                    peer, tail = seen
                    psk, keepalive = peer.preshared_key, peer.persistent_keepalive
                    if (
                        size - 4 == _STABLE_TAIL_AT + len(tail)
                        and startswith(tail, start + _STABLE_TAIL_AT)
                        and startswith(
                            _NO_PSK_HEAD if psk is None else _psk_and_handshake_head(psk),
                            start + 36,
                        )
                        and startswith(
                            _NO_KEEPALIVE_HEAD
                            if not keepalive
                            else _keepalive_and_tx_head(keepalive),
                            start + 92,
                        )
                        and startswith(_RX_HEAD, start + 112)
                    ):
                        found[key] = peer
                continue
            continued.append((key, start, stop))  # a later nest of a peer met before
        else:
            key = _first_key(data, start, stop)
            simple = False
        if key is not None:
            found.pop(key, None)
            _continue_peer(messages, index, raw, clean, key)
        _read_peer(data, start, stop, raw)
    return (located, continued) if simple else None


def _continue_peer(
    messages: list[bytes],
    index: dict[bytes, int],
    raw: dict[bytes, _RawPeer],
    clean: dict[bytes, PeerConfig],
    key: bytes,
) -> None:
    """Another nest of ``key`` follows (the caller reads it into ``raw`` next): its first nest
    is read now if it was only located, so the two merge; the peer is then neither located
    (index value -1) nor clean (its first nest may have matched, but it continues)."""
    code = index.get(key, -1)
    if code >= 0:
        first = messages[code >> 48]
        first_start = (code >> 16) & 0xFFFFFFFF
        _read_peer(first, first_start, first_start + (code & 0xFFFF), raw)
    index[key] = -1
    clean.pop(key, None)


def merge_dump(
    messages: Iterable[bytes], name: str, *, memo: DumpMemo | None = None, lazy: bool = False
) -> DeviceState:
    """One :class:`DeviceState` from the messages of a ``WG_CMD_GET_DEVICE`` dump, each a whole
    netlink message (header included) as received. Raises :class:`UAPIProtocolError` on
    malformed input. ``memo`` is the caller's to keep from one read to the next; ``lazy``
    leaves the peers as a :class:`KernelPeers` (decoded on access, quick-checkable)."""
    memo = DumpMemo() if memo is None else memo
    public_key: bytes | None = None
    listen_port = 0
    fwmark = 0
    raw: dict[bytes, _RawPeer] = {}
    index: dict[bytes, int] = {}
    clean: dict[bytes, PeerConfig] = {}
    kept = messages if isinstance(messages, list) else list(messages)
    pages, used = memo.pages, {}
    for slot, data in enumerate(kept):
        for kind, start, end in _attrs(data, _HEADERS):
            if kind == WGDEVICE_A_PRIVATE_KEY:
                private = _key(data, start, end, "private key")
                public_key = None if private == _ZERO_KEY else public_key_of(private)
                del private
            elif kind == WGDEVICE_A_PUBLIC_KEY and public_key is None:
                key = _key(data, start, end, "public key")
                public_key = None if key == _ZERO_KEY else key
            elif kind == WGDEVICE_A_LISTEN_PORT and end - start >= 2:
                listen_port = _U16.unpack_from(data, start)[0]
            elif kind == WGDEVICE_A_FWMARK and end - start >= 4:
                fwmark = _U32.unpack_from(data, start)[0]
            elif kind == WGDEVICE_A_PEERS:
                page = pages.get(slot)
                if (
                    page is not None
                    and page.matches(data, start, end)
                    and index.keys().isdisjoint(page.codes)  # its peers are new here
                    and all(map(index.__contains__, page.earlier))  # its continued ones not
                ):
                    index.update(page.codes)  # the same message as last read: as found then
                    clean.update(page.clean)
                    for key, s, e in page.continued:  # merged again, as a full read merges
                        _continue_peer(kept, index, raw, clean, key)
                        _read_peer(data, s, e, raw)
                    used[slot] = page
                    continue
                found: dict[bytes, PeerConfig] = {}
                indexed = _index_peers(
                    kept, slot, start, end, index, raw, memo.matched, clean, found
                )
                clean.update(found)
                if indexed is None:
                    pages.pop(slot, None)
                else:
                    located, continued = indexed
                    page = _Page(data, start, end, located, continued, found)
                    pages[slot] = used[slot] = page
    for slot in [slot for slot in pages if slot >= len(kept)]:
        del pages[slot]
    peers = KernelPeers(index, kept, raw, memo, clean, used)
    return DeviceState(
        name=name,
        public_key=public_key,
        listen_port=listen_port,
        fwmark=fwmark,
        peers=peers if lazy else {key: peers[key] for key in index},
    )
