"""The kernel backend: WireGuard's generic-netlink family over a netlink socket of our own.

The message layout, dump merging and netlink framing live in the sans-IO
:mod:`ppn.wg._netlink` (tested against pyroute2's decoder and recorded dumps); this module owns
the sockets: one per request, opened in the backend's network namespace, one message sent and
its acknowledgement awaited before the next (so a refusal stops the apply after a prefix of the
operations, RFC-NOTES §6.5, 6). No pyroute2: its import alone cost ~140 ms natively and ~7 s
under emulation, and its attribute objects cost more per peer than the peer's work (RFC-NOTES
§6.10). ``tests/kernel/`` runs this backend against the real module inside a Debian kernel
booted under qemu (``make test-kernel``; RFC-NOTES §6.4), and CI runs it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator, Sequence

from ._model import DeviceError, DeviceState
from ._netlink import (
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_NEWLINK,
    DumpMemo,
    build_set_messages,
    error_code,
    family_id,
    get_device_request,
    get_family_request,
    get_link_request,
    get_links_request,
    link_kind,
    link_name_and_kind,
    merge_dump,
    split_messages,
)
from ._plan import Operation

__all__ = ["KernelBackend", "NetlinkSocket", "link_kind_of", "wireguard_links"]

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10  # acknowledgements without a copy of the request (acks stay small)
_CLONE_NEWNET = 0x40000000
_RECEIVE = 1 << 18  # a dump part is at most 32 KiB; the acks of one request fit many times


def _setns_function() -> Callable[[int, int], None]:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        return setns  # type: ignore[no-any-return]
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def call(fd: int, nstype: int) -> None:
        if libc.setns(fd, nstype) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return call


@contextlib.contextmanager
def _in_netns(netns: str | None) -> Iterator[None]:
    """This thread inside ``netns`` (a name under /run/netns, or a path) for the block.

    A socket keeps the namespace it was made in, so only its creation needs this.
    """
    if netns is None:
        yield
        return
    path = netns if "/" in netns else os.path.join("/run/netns", netns)
    setns = _setns_function()
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceError(
                f"no network namespace {netns}: {exc.strerror}", exc.errno or 0
            ) from None
        try:
            setns(target, _CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(own, _CLONE_NEWNET)
    finally:
        os.close(own)


class NetlinkSocket:
    """One netlink socket: a request sent, the answer collected up to its end."""

    def __init__(self, protocol: int, *, netns: str | None = None) -> None:
        with _in_netns(netns):
            self.sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol
            )
        try:
            with contextlib.suppress(OSError):  # kernels before 4.3: full copies, still correct
                self.sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def request(self, message: bytes, seq: int) -> list[bytes]:
        """Send ``message`` (numbered ``seq``) and return the messages that answer it, up to
        its acknowledgement or the end of a dump. A refusal raises :class:`OSError` with the
        kernel's errno."""
        self.sock.send(message)
        answer: list[bytes] = []
        while True:
            data = self.sock.recv(_RECEIVE)
            if not data:
                raise OSError(errno.EIO, "the netlink socket closed")
            for kind, got_seq, msg in split_messages(data):
                if got_seq != seq:
                    continue  # a late answer to an earlier request: not ours
                if kind == NLMSG_ERROR:
                    code = error_code(msg)
                    if code:
                        raise OSError(code, os.strerror(code))
                    return answer
                if kind == NLMSG_DONE:
                    return answer
                answer.append(msg)


def _error(exc: OSError, what: str) -> DeviceError:
    code = exc.errno or 0
    return DeviceError(f"{what}: [Errno {code}] {os.strerror(code)}", code)


def link_kind_of(interface: str, netns: str | None = None) -> str | None:
    """The link kind (``wireguard``, ``tun``...) or None when there is no such interface."""
    try:
        with NetlinkSocket(NETLINK_ROUTE, netns=netns) as nl:
            seq = nl.next_seq()
            answer = nl.request(get_link_request(interface, seq=seq), seq)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise
    for msg in answer:
        if int.from_bytes(msg[4:6], "little") == RTM_NEWLINK:
            return link_kind(msg)
    return None


def wireguard_links(netns: str | None = None) -> list[str]:
    """Names of the kernel WireGuard links (one rtnetlink dump of every link)."""
    with NetlinkSocket(NETLINK_ROUTE, netns=netns) as nl:
        seq = nl.next_seq()
        answer = nl.request(get_links_request(seq=seq), seq)
    names = []
    for msg in answer:
        if int.from_bytes(msg[4:6], "little") == RTM_NEWLINK:
            name, kind = link_name_and_kind(msg)
            if kind == "wireguard":
                names.append(name)
    return sorted(names)


class KernelBackend:
    kind = "kernel"

    def __init__(self, interface: str, *, netns: str | None = None) -> None:
        self.interface = interface
        self.netns = netns
        # Kept for this backend's life (RFC-NOTES §6.10): the family's message type (fixed
        # while the module stays loaded) and the decoded prefixes and endpoints of earlier reads.
        self._family: int | None = None
        self._memo = DumpMemo()

    @property
    def description(self) -> str:
        return "kernel WireGuard via generic netlink"

    def _socket(self) -> tuple[NetlinkSocket, int]:
        try:
            nl = NetlinkSocket(NETLINK_GENERIC, netns=self.netns)
        except OSError as exc:
            raise _error(exc, "cannot open a generic-netlink socket") from None
        if self._family is None:
            try:
                seq = nl.next_seq()
                answer = nl.request(get_family_request(seq=seq), seq)
                self._family = family_id(answer[0]) if answer else None
            except OSError as exc:
                nl.close()
                if exc.errno in (errno.ENOENT, errno.ENOTSUP):
                    raise DeviceError("the kernel has no WireGuard module", exc.errno) from None
                raise _error(exc, "cannot open the WireGuard netlink family") from None
            if self._family is None:
                nl.close()
                raise DeviceError("the kernel has no WireGuard module", errno.ENOENT)
        return nl, self._family

    def read(self) -> DeviceState:
        nl, family = self._socket()
        try:
            seq = nl.next_seq()
            messages = nl.request(get_device_request(family, self.interface, seq=seq), seq)
        except OSError as exc:
            raise _error(exc, f"cannot read {self.interface}") from None
        finally:
            nl.close()
        return merge_dump(messages, self.interface, memo=self._memo, lazy=True)

    def apply(self, ops: Sequence[Operation]) -> None:
        if not ops:
            return
        nl, family = self._socket()
        try:
            messages = build_set_messages(self.interface, ops, family=family, seq=nl.seq + 1)
            for message in messages:
                nl.request(message, nl.next_seq())
        except OSError as exc:
            raise _error(exc, f"the kernel refused a change to {self.interface}") from None
        finally:
            nl.close()
