"""WireGuard management: one model, several backends, minimal-diff reconcile (RFC-NOTES §6).

Typical use (what ``ppn wg sync`` and the mesh agent do)::

    from ppn import wg

    desired = wg.parse_config(text)                     # or build wg.InterfaceConfig(...)
    choice = wg.select_backend("wg0")                   # kernel / userspace / config-only
    report = wg.reconcile(choice.backend, desired, now=time.time(), owned=my_peer_keys)

or step by step: ``state = backend.read()``, ``ops = wg.plan(desired, state, now=...)``,
``backend.apply(ops.operations)``. :class:`FakeBackend` is an in-memory device for tests.
"""

from __future__ import annotations

from ._io_wg_device import (
    BackendChoice,
    ConfigOnlyBackend,
    WireGuardGo,
    configure_interface,
    interface_kind,
    kernel_module_present,
    list_kernel_interfaces,
    list_userspace_interfaces,
    remove_interface,
    select_backend,
)
from ._io_wg_kernel import KernelBackend
from ._io_wg_state import SyncRecord, load_record, save_record
from ._io_wg_uapi import UAPIBackend
from ._wg_backend import Backend, Reconciler, SyncReport, reconcile
from ._wg_config import emit_config, parse_config
from ._wg_fake import FakeBackend, apply_to_state
from ._wg_model import (
    DEFAULT_STALE_AFTER,
    ConfigError,
    DesiredStateError,
    DeviceError,
    DeviceState,
    Endpoint,
    InterfaceConfig,
    PeerConfig,
    PeerState,
    QuickExtras,
    UAPIProtocolError,
    VerifyError,
    parse_network,
    public_key_of,
)
from ._wg_netlink import build_set_messages, merge_dump
from ._wg_plan import (
    AddPeer,
    Operation,
    Ownership,
    Plan,
    RemovePeer,
    SetInterface,
    UpdatePeer,
    check_prefixes,
    describe,
    operation_to_json,
    plan,
)
from ._wg_uapi import encode_set, parse_get

__all__ = [
    "DEFAULT_STALE_AFTER",
    "AddPeer",
    "Backend",
    "BackendChoice",
    "ConfigError",
    "ConfigOnlyBackend",
    "DesiredStateError",
    "DeviceError",
    "DeviceState",
    "Endpoint",
    "FakeBackend",
    "InterfaceConfig",
    "KernelBackend",
    "Operation",
    "Ownership",
    "PeerConfig",
    "PeerState",
    "Plan",
    "QuickExtras",
    "Reconciler",
    "RemovePeer",
    "SetInterface",
    "SyncRecord",
    "SyncReport",
    "UAPIBackend",
    "UAPIProtocolError",
    "UpdatePeer",
    "VerifyError",
    "WireGuardGo",
    "apply_to_state",
    "build_set_messages",
    "check_prefixes",
    "configure_interface",
    "describe",
    "emit_config",
    "encode_set",
    "interface_kind",
    "kernel_module_present",
    "list_kernel_interfaces",
    "list_userspace_interfaces",
    "load_record",
    "merge_dump",
    "operation_to_json",
    "parse_config",
    "parse_get",
    "parse_network",
    "plan",
    "public_key_of",
    "reconcile",
    "remove_interface",
    "save_record",
    "select_backend",
]
