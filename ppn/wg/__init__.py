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

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import Backend, Reconciler, SyncReport, reconcile
    from ._config import emit_config, parse_config
    from ._fake import FakeBackend, apply_to_state
    from ._io_device import (
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
    from ._io_kernel import KernelBackend
    from ._io_state import SyncRecord, load_record, save_record
    from ._io_uapi import UAPIBackend
    from ._model import (
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
    from ._netlink import build_set_messages, merge_dump
    from ._plan import (
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
    from ._uapi import encode_set, parse_get

# Loaded on first use: importing the facade (or any module of the package) loads no
# adapter, event loop, sqlite3 or pyroute2 until a name that needs it is asked for.
_LAZY: dict[str, str] = {
    "Backend": "_backend",
    "Reconciler": "_backend",
    "SyncReport": "_backend",
    "reconcile": "_backend",
    "emit_config": "_config",
    "parse_config": "_config",
    "FakeBackend": "_fake",
    "apply_to_state": "_fake",
    "BackendChoice": "_io_device",
    "ConfigOnlyBackend": "_io_device",
    "WireGuardGo": "_io_device",
    "configure_interface": "_io_device",
    "interface_kind": "_io_device",
    "kernel_module_present": "_io_device",
    "list_kernel_interfaces": "_io_device",
    "list_userspace_interfaces": "_io_device",
    "remove_interface": "_io_device",
    "select_backend": "_io_device",
    "KernelBackend": "_io_kernel",
    "SyncRecord": "_io_state",
    "load_record": "_io_state",
    "save_record": "_io_state",
    "UAPIBackend": "_io_uapi",
    "DEFAULT_STALE_AFTER": "_model",
    "ConfigError": "_model",
    "DesiredStateError": "_model",
    "DeviceError": "_model",
    "DeviceState": "_model",
    "Endpoint": "_model",
    "InterfaceConfig": "_model",
    "PeerConfig": "_model",
    "PeerState": "_model",
    "QuickExtras": "_model",
    "UAPIProtocolError": "_model",
    "VerifyError": "_model",
    "parse_network": "_model",
    "public_key_of": "_model",
    "build_set_messages": "_netlink",
    "merge_dump": "_netlink",
    "AddPeer": "_plan",
    "Operation": "_plan",
    "Ownership": "_plan",
    "Plan": "_plan",
    "RemovePeer": "_plan",
    "SetInterface": "_plan",
    "UpdatePeer": "_plan",
    "check_prefixes": "_plan",
    "describe": "_plan",
    "operation_to_json": "_plan",
    "plan": "_plan",
    "encode_set": "_uapi",
    "parse_get": "_uapi",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppn.wg' has no attribute {name!r}")
    value = getattr(import_module(f"ppn.wg.{module}"), name)
    globals()[name] = value
    return value


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
