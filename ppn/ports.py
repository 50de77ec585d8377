"""The default port of every service in the stack (RFC-NOTES §3): the only place in code where one
is written. Every port is configurable; tests use ephemeral ports or namespaced addresses.
"""

from __future__ import annotations

__all__ = [
    "AGGREGATOR_PORT",
    "CONTROL_PORT",
    "FLEET_PORT",
    "PAIRING_PORT",
    "SPAWN_PORT",
    "VAULT_PORT",
    "WIREGUARD_PORT",
]

WIREGUARD_PORT = 51820
"""WireGuard, UDP, on the underlay."""
PAIRING_PORT = 9205
"""The join ceremony (``ppn genesis`` / ``ppn invite``), TCP, open only while a window is."""
CONTROL_PORT = 9206
"""PPN control (roster sync), TCP, on per-node control addresses inside the mesh."""
FLEET_PORT = 9203
"""The fleet controller's heartbeats, TCP, on mesh addresses."""
SPAWN_PORT = 9220
"""A vm-host's spawn requests from the controller, TCP, on mesh addresses."""
VAULT_PORT = 9210
"""A PSP vault (VM-Totebox), TCP."""
AGGREGATOR_PORT = 9211
"""The PSP aggregator (VM-Orchestration), TCP."""
