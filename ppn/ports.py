"""The default port of every service in the stack (RFC-NOTES §3): the only place in code where one
is written. Every port is configurable; tests use ephemeral ports or namespaced addresses.
"""

from __future__ import annotations

__all__ = [
    "AGENT_METRICS_PORT",
    "AGGREGATOR_METRICS_PORT",
    "AGGREGATOR_PORT",
    "CONTROL_PORT",
    "FLEET_METRICS_PORT",
    "FLEET_PORT",
    "PAIRING_PORT",
    "REPLICA_METRICS_PORT",
    "SPAWN_PORT",
    "VAULT_METRICS_PORT",
    "VAULT_PORT",
    "VMHOST_METRICS_PORT",
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

# Prometheus metrics (``--metrics HOST[:PORT]``, off by default), TCP, on mesh addresses: one port
# per role, so every role of a node can serve its own. A node with several vaults gives each
# vault instance its own port.
AGENT_METRICS_PORT = 9290
"""The node agent's metrics (``ppn up --metrics``)."""
FLEET_METRICS_PORT = 9291
"""The fleet controller's metrics (``ppn fleet serve --metrics``)."""
VMHOST_METRICS_PORT = 9292
"""A vm-host's metrics (``ppn vmhost serve --metrics``)."""
AGGREGATOR_METRICS_PORT = 9293
"""The aggregator's metrics (``ppn orchestration serve --metrics``)."""
VAULT_METRICS_PORT = 9294
"""A vault's metrics (``ppn vault serve --metrics``)."""
REPLICA_METRICS_PORT = 9295
"""A vault replica's metrics (``ppn vault follow --metrics``)."""
