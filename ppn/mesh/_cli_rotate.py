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
    outcome = _hand_over(args.state, files, record, lambda: _node_json_wg(args.state) == new.public)
    result = {
        "rotated": "wireguard",
        "name": files.name,
        "old_key": encode_key(files.wg.public),
        "new_key": encode_key(new.public),
        "version": record.version,
        "agent": outcome,
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
    elif outcome == "handed-over":
        print(
            f"rotated the WireGuard key of {files.name}: {result['old_key']} -> "
            f"{result['new_key']} (entry version {record.version}); the members have it"
        )
    else:
        print(
            f"signed the new WireGuard key of {files.name} ({result['new_key']}); the agent "
            "hands it over when 'ppn up' next runs"
        )
    return 0


def _node_json_wg(state: Path) -> bytes | None:
    from .._keys import decode_key

    try:
        info = json.loads((state / "node.json").read_text())
        return decode_key(info["wg"])
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
