"""An example node daemon on trio, embedding the PPN stack's three clients (RFC-NOTES §12).

The trio twin of ``asyncio_daemon.py``, using the adapters ``ppn`` itself runs on:

1. the join client (``genesis.join``): joins a mesh by code; the SAS is printed as a JSON
   line and the operator's ``yes``/``no`` is read from stdin;
2. the node agent (:class:`ppn.mesh.MeshNode` driving :class:`ppn.mesh.MeshAgent`): serves PPN
   control, pulls from the sponsor, pushes its own signed entry, plans WireGuard peers;
3. the PSP client (``psp.VaultClient``): counts a collection with a capability.

Then it serves until SIGTERM/SIGINT and exits 0. Same options as the asyncio daemon::

    python examples/trio_daemon.py --state d --sponsor 127.0.0.1:PORT --code CODE \\
        --vault 127.0.0.1:9210 --key holder.key --cap holder.cap
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_support as support

import genesis
import psp
from ppn import mesh


async def ask_operator(event: genesis.SasReady) -> genesis.ConfirmSas:
    support.emit("sas", sas=event.sas)
    answer = await trio.to_thread.run_sync(sys.stdin.readline)
    return genesis.ConfirmSas(accept=answer.strip().lower() in ("y", "yes"))


async def join_mesh(args: argparse.Namespace) -> bool:
    node = support.new_node(args)
    host, port = support.split_hostport(args.sponsor)

    async def joined(event: genesis.Joined) -> None:
        support.persist(args.state, node, event)

    result = await genesis.join(
        host,
        port,
        me=support.party(node),
        code=genesis.parse_code(args.code),
        endpoints=node.endpoints,
        decide=ask_operator,
        joined=joined,
    )
    if isinstance(result, genesis.Failed):
        support.fail(f"join failed: {result.reason.name}")
        return False
    support.emit("joined", address=result.member.address, mesh=result.mesh_id.hex())
    return True


class WireGuard:
    """The agent's WireGuard port: here the planning stand-in (a real daemon reconciles)."""

    def __init__(self, planned: support.PlannedWireGuard) -> None:
        self.planned = planned

    async def reconcile(self, roster: mesh.Roster) -> None:
        self.planned.plan(roster)


async def main(argv: list[str] | None = None) -> int:
    args = support.parse_args(argv, loop="trio")
    if genesis.load_mesh(args.state) is None and not await join_mesh(args):
        return 1
    member = support.load_membership(args.state)
    agent = mesh.MeshAgent(
        member.roster,
        identity=member.node.identity,
        now=trio.current_time(),
        endpoints=member.node.endpoints,
        bootstrap=member.bootstrap,
    )
    host, port = support.split_hostport(args.control_listen)
    node = mesh.MeshNode(
        agent,
        wireguard=WireGuard(support.PlannedWireGuard(member.node.identity.public)),
        save=lambda roster: support.save_roster(args.state, roster),
        listen_host=host,
        listen_port=port,
        control_address=support.control_resolver(args.peer, member.state),
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(node.run)
            support.emit("agent", control=f"{host}:{bound}")
            if args.vault:
                key, cap = support.load_holder(args)
                vhost, vport = support.split_hostport(args.vault)
                async with await psp.VaultClient.connect(vhost, vport) as client:
                    result = await client.query(key, cap, support.count_query(args.collection))
                rows = [r.decode() for r in result.rows]
                support.emit("query", rows=rows, as_of=result.header.as_of)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    stats = node.stats
    support.emit(
        "stopped",
        pulls_ok=stats.pulls_ok,
        pulls_failed=stats.pulls_failed,
        pushes_ok=stats.pushes_ok,
        pushes_failed=stats.pushes_failed,
        last_error=stats.last_error,
    )
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
