"""``ppn rotate wireguard`` and ``ppn rotate identity``: new keys for this node (RFC-NOTES §7.15).

Both stage the new key in the state directory first, then sign the record that names it and
hand it to the node agent through ``outbox.bin`` (as ``ppn remove`` does); the agent delivers
the record to the mesh and only then switches to the new key. Module top stays light.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli._main import CommandError
from ._cli import EXIT_BAD_STATE, EXIT_STATUSES, _load, _state_arg

if TYPE_CHECKING:
    from typing import TypeAlias

    from ._records import Record

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_ROTATE_REFUSED = 80
EXIT_ROTATION_PENDING = 81
EXIT_HANDOVER_SLOW = 82

# How long 'ppn rotate' waits for a running agent to hand the new key over.
ROTATE_WAIT = 30.0

ROTATE_STATUSES = (
    EXIT_STATUSES.replace("  130 interrupted\n", "")
    + """\
  80  (rotate) this node has no live entry on its signed roster, or (identity) it is the
      genesis node, whose identity names the mesh
  81  (rotate) an earlier rotation of that key is still being handed over; nothing changed
  82  (rotate) the running agent did not finish the handover within 30 s (it goes on; the
      new key is staged and the record queued)
  130 interrupted
"""
)


def register(subparsers: Subparsers) -> None:
    """Add ``rotate wireguard`` and ``rotate identity`` to ``ppn``."""
    p = subparsers.add_parser(
        "rotate",
        help="give this node a new WireGuard or identity key; every member follows",
        description=(
            "Replace one of this node's keys. The new key is written to the state directory "
            "first, then a record naming it is signed and handed to this node's agent, which "
            "delivers it to the mesh and only then switches: a crash at any point leaves the "
            "node reachable with one key or the other."
        ),
        epilog=ROTATE_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="rotate_command", metavar="KEY", required=True)
    w = sub.add_parser(
        "wireguard",
        help="new WireGuard key; every member's agent swaps this node's peer",
        description=(
            "Generate a new WireGuard key, stage it as wireguard.key.next, sign the next "
            "version of this node's roster entry naming it, and hand it to the agent. The "
            "agent pushes the entry to every member while still using the old key; once one "
            "member has acknowledged, it promotes the key (node.json, then wireguard.key) and "
            "sets it on the interface. Each member's agent replaces the old peer by the new "
            "one, with the same allowed IPs and endpoint: traffic pauses for about one "
            "handshake. Without a running agent the rotation is handed over at the next "
            "'ppn up'."
        ),
        epilog=ROTATE_STATUSES + "\nexample:\n  ppn rotate wireguard --state /var/lib/ppn\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _state_arg(w)
    w.add_argument("--json", action="store_true", help="print the outcome as JSON")
    w.set_defaults(handler=_rotate_wireguard)
    i = sub.add_parser(
        "identity",
        help="new identity key; the mesh follows, admissions it made stay valid",
        description=(
            "Generate a new identity (Ed25519) key, stage it as identity.key.next, and sign a "
            "rotation record with both the old and the new key, plus the new identity's first "
            "entry: admitted by the old identity under the same name and admission time, with "
            "the same WireGuard key, address, endpoints and roles. The agent delivers both to "
            "the mesh as the old identity, then promotes the key (node.json, then "
            "identity.key) and restarts itself under the new one: a new node id and control "
            "address, the same tunnel. Members this node admitted stay; anything the old key "
            "signs after the rotation (admissions, admin acts, entries) no longer counts. The "
            "genesis node's identity names the mesh and is not rotated."
        ),
        epilog=ROTATE_STATUSES + "\nexample:\n  ppn rotate identity --state /var/lib/ppn --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _state_arg(i)
    i.add_argument("--json", action="store_true", help="print the outcome as JSON")
    i.set_defaults(handler=_rotate_identity)


def _rotate_identity(args: argparse.Namespace) -> int:
    from genesis import StateError, stage_node_key, staged_node_key

    from .._keys import IdentityKey, encode_key
    from ._ids import node_id
    from ._rotation import RotationRefused, identity_rotation_pending, sign_identity_rotation

    files, (roster, _) = _load(args.state)
    try:
        staged = staged_node_key(args.state, "identity")
    except StateError as exc:
        raise CommandError(str(exc), EXIT_BAD_STATE) from exc
    if staged is not None and identity_rotation_pending(
        roster, files.identity.public, staged=IdentityKey.from_seed(staged).public
    ):
        raise CommandError(
            "an earlier identity rotation is still being handed over; nothing changed",
            EXIT_ROTATION_PENDING,
        )
    new = IdentityKey.generate()
    try:
        # Probe before staging: a refused rotation leaves no staged key behind.
        sign_identity_rotation(roster.copy(), files.identity, new, now=int(time.time()))
    except RotationRefused as exc:
        raise CommandError(str(exc), EXIT_ROTATE_REFUSED) from exc
    try:
        stage_node_key(args.state, "identity", new.seed)
    except StateError as exc:
        raise CommandError(str(exc), EXIT_BAD_STATE) from exc
    rotation, successor = sign_identity_rotation(roster, files.identity, new, now=int(time.time()))
    outcome = _hand_over(
        args.state,
        files,
        (rotation, successor),
        lambda: _node_json_key(args.state, "identity") == new.public,
    )
    result = {
        "rotated": "identity",
        "name": files.name,
        "old_identity": encode_key(files.identity.public),
        "new_identity": encode_key(new.public),
        "old_node_id": node_id(files.identity.public).hex(),
        "new_node_id": node_id(new.public).hex(),
        "rotated_at": rotation.rotated_at,
        "agent": outcome,
    }
    _report(
        args,
        result,
        done=f"rotated the identity of {files.name}: node {result['old_node_id'][:8]} -> "
        f"{result['new_node_id'][:8]}; the members have it and the agent runs as the new one",
        queued=f"signed the identity rotation of {files.name} (new node "
        f"{result['new_node_id'][:8]}); the agent hands it over when 'ppn up' next runs",
    )
    return 0


def _rotate_wireguard(args: argparse.Namespace) -> int:
    from genesis import StateError, stage_node_key, staged_node_key

    from .._keys import WireGuardKeyPair, encode_key
    from ._rotation import (
        KeyStatus,
        RotationRefused,
        sign_wireguard_rotation,
        wireguard_key_status,
    )

    files, (roster, _) = _load(args.state)
    try:
        staged = staged_node_key(args.state, "wireguard")
    except StateError as exc:
        raise CommandError(str(exc), EXIT_BAD_STATE) from exc
    status = wireguard_key_status(
        roster,
        files.identity.public,
        current=files.wg.public,
        staged=None if staged is None else WireGuardKeyPair.from_private(staged).public,
    )
    if status is KeyStatus.PENDING:
        raise CommandError(
            "an earlier WireGuard key rotation is still being handed over (see 'ppn status'); "
            "nothing changed",
            EXIT_ROTATION_PENDING,
        )
    new = WireGuardKeyPair.generate()
    try:
        # On disk before anything names it: a record must never name a key this node lost.
        stage_node_key(args.state, "wireguard", new.private)
    except StateError as exc:
        raise CommandError(str(exc), EXIT_BAD_STATE) from exc
    try:
        record = sign_wireguard_rotation(roster, files.identity, new.public)
    except RotationRefused as exc:
        raise CommandError(str(exc), EXIT_ROTATE_REFUSED) from exc
    outcome = _hand_over(
        args.state, files, record, lambda: _node_json_key(args.state, "wg") == new.public
    )
    result = {
        "rotated": "wireguard",
        "name": files.name,
        "old_key": encode_key(files.wg.public),
        "new_key": encode_key(new.public),
        "version": record.version,
        "agent": outcome,
    }
    _report(
        args,
        result,
        done=f"rotated the WireGuard key of {files.name}: {result['old_key']} -> "
        f"{result['new_key']} (entry version {record.version}); the members have it",
        queued=f"signed the new WireGuard key of {files.name} ({result['new_key']}); the agent "
        "hands it over when 'ppn up' next runs",
    )
    return 0


def _report(args: argparse.Namespace, result: dict[str, Any], *, done: str, queued: str) -> None:
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(done if result["agent"] == "handed-over" else queued)


def _node_json_key(state: Path, field: str) -> bytes | None:
    """The public key node.json names under ``field`` ("wg" or "identity"): it changes when
    the agent promotes a staged key."""
    from .._keys import decode_key

    try:
        info = json.loads((state / "node.json").read_text())
        return decode_key(info[field])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _hand_over(
    state: Path, files: Any, record: Record | tuple[Record, ...], done: Callable[[], bool]
) -> str:
    """Queue the record(s) for the agent and wait until ``done()`` (the agent promoted the new
    key). Without a running agent, merge them into roster.bin: ``ppn up`` hands them over."""
    from ._io_state import StateDirError, load_roster, queue_records, running_agent_pid, save_roster

    records = record if isinstance(record, tuple) else (record,)
    try:
        queue_records(state, records)
        agent_pid = running_agent_pid(state)
        if agent_pid is None:
            saved = load_roster(state, mesh=files.mesh, cidr=files.cidr)
            if saved is not None:
                saved.roster.merge(records)
                save_roster(
                    state, saved.roster, generation=saved.generation + 1, baseline=saved.baseline
                )
            return "queued"
    except (StateDirError, OSError) as exc:
        raise CommandError(f"cannot record the rotation: {exc}", EXIT_BAD_STATE) from exc
    deadline = time.monotonic() + ROTATE_WAIT
    print(
        f"ppn rotate: the agent (pid {agent_pid}) delivers the new key to the mesh ...",
        file=sys.stderr,
        flush=True,
    )
    while not done():
        if time.monotonic() > deadline:
            raise CommandError(
                f"the agent (pid {agent_pid}) did not finish the handover within "
                f"{ROTATE_WAIT:.0f} s; it goes on trying (the new key is staged)",
                EXIT_HANDOVER_SLOW,
            )
        time.sleep(0.1)
    return "handed-over"
