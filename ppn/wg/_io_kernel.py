"""The kernel backend: WireGuard's generic-netlink family through pyroute2.

The message layout and dump merging live in the sans-IO :mod:`ppn.wg._netlink` (tested against
recorded dumps); this module owns what needs pyroute2: the ``wgmsg`` objects and the socket.
The host has no WireGuard module; ``tests/kernel/`` runs this backend against the real module
inside a Debian kernel booted under qemu (``make test-kernel``; RFC-NOTES §6.4), and CI runs it.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.wireguard import wgmsg

from ._model import DeviceError, DeviceState
from ._netlink import WG_CMD_SET_DEVICE, WG_GENL_VERSION, merge_dump, set_device_attrs
from ._plan import Operation

__all__ = ["KernelBackend", "build_set_messages"]


def build_set_messages(interface: str, ops: Iterable[Operation]) -> list[wgmsg]:
    """``WG_CMD_SET_DEVICE`` messages for ``ops``, in order, batched under the budget.

    Headers (type, pid, sequence) are left for the socket to fill in.
    """
    messages = []
    for attrs in set_device_attrs(interface, ops):
        msg = wgmsg()
        msg["cmd"] = WG_CMD_SET_DEVICE
        msg["version"] = WG_GENL_VERSION
        msg["attrs"] = attrs
        messages.append(msg)
    return messages


class KernelBackend:
    kind = "kernel"

    def __init__(self, interface: str, *, netns: str | None = None) -> None:
        self.interface = interface
        self.netns = netns

    @property
    def description(self) -> str:
        return "kernel WireGuard via generic netlink"

    def _socket(self) -> Any:
        from pyroute2 import WireGuard

        try:
            return WireGuard() if self.netns is None else WireGuard(netns=self.netns)
        except (OSError, NetlinkError) as exc:  # NetlinkError is no OSError in pyroute2 0.9
            code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
            if code in (errno.ENOENT, errno.ENOTSUP):
                raise DeviceError("the kernel has no WireGuard module", code) from None
            raise DeviceError(f"cannot open the WireGuard netlink family: {exc}", code) from None

    def read(self) -> DeviceState:
        wg = self._socket()
        try:
            messages = wg.info(self.interface)
        except (OSError, NetlinkError) as exc:  # NetlinkError is no OSError in pyroute2 0.9
            code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
            raise DeviceError(f"cannot read {self.interface}: {exc}", code) from None
        finally:
            wg.close()
        return merge_dump(messages, self.interface)

    def apply(self, ops: Sequence[Operation]) -> None:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST

        messages = build_set_messages(self.interface, ops)
        if not messages:
            return
        wg = self._socket()
        try:
            prid = getattr(wg, "prid", None) or wg.asyncore.prid
            for msg in messages:
                wg.nlm_request(msg, msg_type=prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK)
        except (OSError, NetlinkError) as exc:  # NetlinkError is no OSError in pyroute2 0.9
            code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
            raise DeviceError(
                f"the kernel refused a change to {self.interface}: {exc}", code
            ) from None
        finally:
            wg.close()
