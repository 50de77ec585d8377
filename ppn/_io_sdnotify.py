"""Tell systemd a service is ready: the sd_notify datagram protocol, written out (issue 17).

A ``Type=notify`` unit starts the service with ``NOTIFY_SOCKET`` naming a Unix datagram socket
(a path, or ``@name`` for Linux's abstract namespace); the service sends newline-separated
``KEY=VALUE`` assignments to it, ``READY=1`` once it really serves. That is the whole protocol
(sd_notify(3)); a library for one ``sendto`` is not worth a dependency. Outside systemd the
variable is unset and every call is a cheap no-op, so the commands call it unconditionally.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "notify_ready", "notify_stopping"]


def notify(*assignments: str) -> bool:
    """Send ``assignments`` (``"READY=1"``, ``"STATUS=..."``) to systemd; ``True`` if sent.

    Never raises: a service must not die because its supervisor's socket went away (systemd
    itself ignores a lost notification and falls back to its start timeout)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    message = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, target)
    except OSError:
        return False
    return True


def notify_ready(status: str = "") -> bool:
    """``READY=1`` (with ``MAINPID`` so a wrapper process cannot confuse systemd)."""
    extra = (f"STATUS={status}",) if status else ()
    return notify("READY=1", f"MAINPID={os.getpid()}", *extra)


def notify_stopping() -> bool:
    return notify("STOPPING=1")
