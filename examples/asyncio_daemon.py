"""An example node daemon on asyncio, embedding the PPN stack's three clients (RFC-NOTES §12).

1. the join client (:func:`genesis.join_asyncio`): joins a mesh by code; the SAS is printed as
   a JSON line and the operator's ``yes``/``no`` is read from stdin;
2. the node agent (:class:`ppn.mesh.AsyncioMeshNode` driving :class:`ppn.mesh.MeshAgent`): serves
   PPN control, pulls from the sponsor, pushes its own signed entry, plans WireGuard peers;
3. the PSP client (:class:`psp.AsyncioVaultClient`): counts a collection with a capability.

Then it serves until SIGTERM/SIGINT and exits 0. Run it against a sponsor and a vault::

    ppn genesis --state g --listen 127.0.0.1:0 --events json      # prints the code and address
    python examples/asyncio_daemon.py --state d --sponsor 127.0.0.1:PORT --code CODE \\
        --vault 127.0.0.1:9210 --key holder.key --cap holder.cap
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_support as support

import genesis
import psp
from ppn import mesh


async def ask_operator(event: genesis.SasReady) -> genesis.ConfirmSas:
    support.emit("sas", sas=event.sas)
    answer = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return genesis.ConfirmSas(accept=answer.strip().lower() in ("y", "yes"))


async def join_mesh(args: argparse.Namespace) -> bool:
    node = support.new_node(args)
    host, port = support.split_hostport(args.sponsor)

    async def joined(event: genesis.Joined) -> None:
        support.persist(args.state, node, event)

    result = await genesis.join_asyncio(
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
    args = support.parse_args(argv, loop="asyncio")
    if genesis.load_mesh(args.state) is None and not await join_mesh(args):
        return 1
    member = support.load_membership(args.state)
    loop = asyncio.get_running_loop()
    agent = mesh.MeshAgent(
        member.roster,
        identity=member.node.identity,
        now=loop.time(),
        endpoints=member.node.endpoints,
        bootstrap=member.bootstrap,
    )
    host, port = support.split_hostport(args.control_listen)
    node = mesh.AsyncioMeshNode(
        agent,
        wireguard=WireGuard(support.PlannedWireGuard(member.node.identity.public)),
        save=lambda roster: support.save_roster(args.state, roster),
        listen_host=host,
        listen_port=port,
        control_address=support.control_resolver(args.peer, member.state),
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    started: asyncio.Future[int] = loop.create_future()
    running = asyncio.create_task(node.run(started))
    support.emit("agent", control=f"{host}:{await started}")
    if args.vault:
        key, cap = support.load_holder(args)
        vhost, vport = support.split_hostport(args.vault)
        client = await psp.AsyncioVaultClient.connect(vhost, vport)
        async with client:
            result = await client.query(key, cap, support.count_query(args.collection))
        support.emit("query", rows=[r.decode() for r in result.rows], as_of=result.header.as_of)
    await stop.wait()
    running.cancel()
    try:
        await running
    except asyncio.CancelledError:
        pass
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
    sys.exit(asyncio.run(main()))
