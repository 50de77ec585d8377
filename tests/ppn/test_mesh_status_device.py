"""``ppn status`` reading the device: a device that answers badly is reported, not raised.

A real UAPI socket (a thread serving one malformed answer on a unique path under
/var/run/wireguard/, as wireguard-go would serve it) and the real backend selection and reader.
The reader finds the answer's framing sound and decodes each peer when it is first looked at
(RFC-NOTES §6.10), so the error comes from building the observations, after the read.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest

from ppn.mesh._cli import _observe_device
from ppn.wg._io_uapi import DEFAULT_SOCKET_DIR

pytestmark = pytest.mark.skipif(
    not os.access(os.path.dirname(DEFAULT_SOCKET_DIR) or "/", os.W_OK),
    reason="needs to create a socket under /var/run/wireguard (root)",
)

_BAD = (
    "private_key=" + "11" * 32 + "\nlisten_port=51820\n"
    "public_key=" + "22" * 32 + "\nallowed_ip=not-an-address\n"
    "errno=0\n\n"
).encode()


def test_a_device_that_answers_badly_is_reported_unreadable() -> None:
    name = f"wgbad{uuid.uuid4().hex[:8]}"
    os.makedirs(DEFAULT_SOCKET_DIR, exist_ok=True)
    path = os.path.join(DEFAULT_SOCKET_DIR, f"{name}.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    served: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            served.append(conn.recv(4096))
            conn.sendall(_BAD)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        observations, note = _observe_device(name)
    finally:
        server.close()
        os.unlink(path)
        thread.join(timeout=5)
    assert served == [b"get=1\n\n"]
    assert observations == {}
    assert note.startswith("unreadable (") and "not-an-address" in note
