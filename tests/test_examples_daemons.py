"""The example daemons (examples/trio_daemon.py, examples/asyncio_daemon.py) run for real on
loopback: each joins a mesh opened by ``ppn genesis`` (the test compares both SAS), pulls the
sponsor's signed roster through its node agent and pushes back its own self-signed entry, counts
a vault's records with a capability, and exits 0 on SIGTERM.

The test plays the genesis node's agent with the library's trio control server
(``ppn.mesh.serve_connection``), so both daemons are checked against the trio control server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import genesis
from ppn import mesh

ROOT = Path(__file__).resolve().parent.parent
PPN = [sys.executable, "-m", "ppn"]
RECORDS = 4


# Every wait on a child is bounded, generously: CI may run two suites at once on two loaded
# cores, and the point of this test is what the daemons do, not how fast.
WAIT = 60.0


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline()


async def _read_line(proc: subprocess.Popen[str]) -> str:
    # abandon_on_cancel: a readline blocked on a silent child must not hold the test past its
    # deadline (a plain to_thread call ignores cancellation); the test kills the child on the
    # way out, and the abandoned thread's read then ends.
    return await trio.to_thread.run_sync(_line, proc, abandon_on_cancel=True)


async def _exit_status(proc: subprocess.Popen[str]) -> int:
    with trio.fail_after(WAIT):
        return await trio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)


class Events:
    """A child's JSON event lines, each kept until the test asks for it. The daemon's agent and
    its vault query run concurrently, so which prints first is up to the scheduler: waiting for
    one event must not throw another away (the agent's ``wireguard`` line, printed before the
    ``query`` line, used to be skipped, and the test then waited for it forever)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.printed: list[str] = []
        self.unclaimed: list[dict[str, Any]] = []

    async def next(self, wanted: str) -> dict[str, Any]:
        for i, event in enumerate(self.unclaimed):
            if event.get("event") == wanted:
                return self.unclaimed.pop(i)
        with trio.move_on_after(WAIT):
            while True:
                line = await _read_line(self.proc)
                if not line:
                    raise AssertionError(f"ended before {wanted!r}; printed {self.printed}")
                self.printed.append(line)
                event: dict[str, Any] = json.loads(line)
                if event.get("event") == wanted:
                    return event
                self.unclaimed.append(event)
        raise AssertionError(f"no {wanted!r} within {WAIT} s; printed {self.printed}")


def _answer(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


def _ppn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PPN, *args], check=True, capture_output=True, text=True, timeout=WAIT)


async def _vault(tmp: Path, procs: list[subprocess.Popen[str]]) -> tuple[str, Path, Path]:
    """A vault with RECORDS records, a holder key and a capability for it; starts the serving
    process (added to ``procs`` at once, so it is killed however the test ends) and returns its
    address."""
    store = tmp / "vault"
    _ppn("vault", "init", "--store", str(store))
    data = tmp / "records.jsonl"
    data.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(RECORDS)))
    _ppn("vault", "import", "--store", str(store), "--collection", "visits", str(data))
    key = tmp / "holder.key"
    public = json.loads(_ppn("key", "new", str(key), "--json").stdout)["public"]
    cap = tmp / "holder.cap"
    _ppn("cap", "mint", "--store", str(store), "--to", public, "--ops", "count", "--out", str(cap))
    serve = subprocess.Popen(
        [*PPN, "vault", "serve", "--store", str(store), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    procs.append(serve)
    with trio.fail_after(WAIT):
        line = await _read_line(serve)
    address = line.rsplit(" ", 1)[-1].strip()
    assert address.startswith("127.0.0.1:"), line
    return address, key, cap


@pytest.mark.parametrize("example", ["asyncio_daemon.py", "trio_daemon.py"])
async def test_example_daemon_joins_syncs_and_queries(example: str, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[str]] = []
    try:
        vault_address, key, cap = await _vault(tmp_path, procs)
        gstate, dstate = tmp_path / "genesis", tmp_path / "daemon"
        sponsor = subprocess.Popen(
            [*PPN, "genesis", "--state", str(gstate), "--name", "gen", "--listen", "127.0.0.1:0",
             "--endpoint", "127.0.0.1:51820", "--events", "json"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        procs.append(sponsor)
        sponsor_events = Events(sponsor)
        code = await sponsor_events.next("code")

        # The genesis node's agent: the roster it founds (with the daemon's admission, once the
        # ceremony recorded it), served on a loopback port the daemon is told about.
        ready = trio.Event()
        box: dict[str, mesh.Roster] = {}
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        control_port = listeners[0].socket.getsockname()[1]

        async def handle(stream: trio.SocketStream) -> None:
            await ready.wait()
            await mesh.serve_connection(stream, box["roster"], lambda event: None)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, listeners)
            daemon = subprocess.Popen(
                [sys.executable, str(ROOT / "examples" / example), "--state", str(dstate),
                 "--name", "embedded", "--sponsor", code["address"], "--code", code["code"],
                 "--endpoint", "127.0.0.1:51821", "--peer", f"gen=127.0.0.1:{control_port}",
                 "--vault", vault_address, "--key", str(key), "--cap", str(cap)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(daemon)
            events = Events(daemon)
            daemon_sas = (await events.next("sas"))["sas"]
            sponsor_sas = (await sponsor_events.next("sas"))["sas"]
            assert daemon_sas == sponsor_sas
            _answer(daemon, "yes")
            _answer(sponsor, "yes")
            joined = await events.next("joined")
            assert joined["address"] == "10.8.0.2"
            assert await _exit_status(sponsor) == 0

            node = genesis.load_node(gstate)
            state = genesis.load_mesh(gstate)
            assert node is not None and state is not None
            roster = mesh.Roster.found(
                node.identity, name=node.name, wg_key=node.wg.public, now=int(time.time()),
                endpoints=node.endpoints, network=state.cidr,
            )  # fmt: skip
            assert roster.mesh == state.mesh_id
            preliminary = [
                mesh.PreliminaryMember(
                    name=m.name,
                    identity=m.identity,
                    wg_key=m.wg,
                    address=m.address,
                    endpoints=m.endpoints,
                    roles=m.roles,
                )
                for m in state.roster
            ]
            mesh.sponsor_admissions(
                roster, preliminary, baseline={node.identity.public}, sponsor=node.identity,
                now=int(time.time()),
            )  # fmt: skip
            box["roster"] = roster
            ready.set()
            agent = await events.next("agent")
            assert agent["control"].startswith("127.0.0.1:")
            query = await events.next("query")
            assert [json.loads(r) for r in query["rows"]] == [{"count": RECORDS}]

            # The daemon pulled the admission, then signed its own entry and pushed it here.
            daemon_identity = next(m.identity for m in state.roster if m.name == "embedded")
            with trio.fail_after(WAIT):
                while True:
                    record = roster.get(daemon_identity)
                    if record is not None and record.signer == daemon_identity:
                        break
                    await trio.sleep(0.1)
            planned = await events.next("wireguard")
            assert planned["peers"] == ["10.8.0.1/32"]
            # And the daemon's own control server answers a pull with the same roster.
            pulled = await mesh.pull_once(*_split(agent["control"]), roster)
            assert any(isinstance(e, mesh.SyncComplete) for e in pulled)
            assert not any(isinstance(e, mesh.RosterUpdated) and e.changed for e in pulled)

            daemon.send_signal(signal.SIGTERM)
            stopped = await events.next("stopped")
            assert stopped["pulls_ok"] >= 1 and stopped["pushes_ok"] >= 1
            assert await _exit_status(daemon) == 0
            nursery.cancel_scope.cancel()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)
