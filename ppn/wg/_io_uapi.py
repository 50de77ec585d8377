"""The userspace backend: a UAPI client over ``/var/run/wireguard/<iface>.sock``.

One request per connection (the protocol closes nothing for us, but implementations handle one
operation per connection reliably). All operations of an apply go in one ``set=1`` request,
which wireguard-go applies line by line: an interrupted apply leaves a consistent prefix of
the operations applied, and the next reconcile finishes the job.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from ._model import DeviceError, DeviceState, TextMemo
from ._plan import Operation
from ._uapi import GET_REQUEST, PeerTexts, encode_set, parse_errno, parse_get

__all__ = ["DEFAULT_SOCKET_DIR", "UAPIBackend", "socket_path"]

DEFAULT_SOCKET_DIR = "/var/run/wireguard"


def socket_path(interface: str, socket_dir: str = DEFAULT_SOCKET_DIR) -> str:
    return os.path.join(socket_dir, f"{interface}.sock")


class UAPIBackend:
    """A WireGuard device run by a userspace implementation (wireguard-go, boringtun)."""

    kind = "userspace"

    def __init__(
        self, interface: str, *, socket_dir: str = DEFAULT_SOCKET_DIR, timeout: float = 30.0
    ) -> None:
        self.interface = interface
        self.path = socket_path(interface, socket_dir)
        self.timeout = timeout
        # Kept from one read to the next: a device read pass after pass repeats nearly every
        # prefix, endpoint and peer text (most of a no-change pass at 10,000 peers).
        self.memo = TextMemo()
        self.texts = PeerTexts()

    @property
    def description(self) -> str:
        return f"userspace WireGuard via its UAPI socket {self.path}"

    def available(self) -> bool:
        return os.path.exists(self.path)

    def _request(self, request: bytes) -> bytes:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except FileNotFoundError:
                raise DeviceError(
                    f"no userspace WireGuard device {self.interface} ({self.path} is missing)",
                    2,
                ) from None
            except ConnectionRefusedError:
                raise DeviceError(
                    f"{self.path} exists but nothing listens (a stale socket of a dead "
                    "wireguard-go?)",
                    111,
                ) from None
            except PermissionError:
                raise DeviceError(f"no permission to open {self.path} (run as root)", 13) from None
            sock.sendall(request)
            chunks: list[bytes] = []
            tail = b""
            while True:
                chunk = sock.recv(1 << 18)
                if not chunk:
                    break
                chunks.append(chunk)
                tail = (tail + chunk)[-2:]
                # The answer ends with "errno=N\n\n"; a "\n\n" can occur nowhere else.
                if tail == b"\n\n":
                    break
            return b"".join(chunks)
        except TimeoutError:
            raise DeviceError(f"{self.path} did not answer in {self.timeout:g} s", 110) from None
        finally:
            sock.close()

    def read(self) -> DeviceState:
        return parse_get(
            self._request(GET_REQUEST),
            self.interface,
            lazy=True,
            memo=self.memo,
            texts=self.texts,
        )

    def apply(self, ops: Sequence[Operation]) -> None:
        if ops:
            parse_errno(self._request(encode_set(ops)))
