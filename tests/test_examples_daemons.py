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


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline()


async def _event(proc: subprocess.Popen[str], wanted: str) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            line = await trio.to_thread.run_sync(_line, proc)
            if not line:
                raise AssertionError(f"process ended before {wanted!r}")
            event: dict[str, Any] = json.loads(line)
            if event.get("event") == wanted:
                return event


def _answer(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


def _vault(tmp: Path) -> tuple[subprocess.Popen[str], str, Path, Path]:
    """A vault with RECORDS records, a holder key and a capability for it; returns the serving
    process and its address."""
    store = tmp / "vault"
    subprocess.run([*PPN, "vault", "init", "--store", str(store)], check=True, capture_output=True)
    data = tmp / "records.jsonl"
    data.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(RECORDS)))
    subprocess.run(
        [*PPN, "vault", "import", "--store", str(store), "--collection", "visits", str(data)],
        check=True,
        capture_output=True,
    )
    key = tmp / "holder.key"
    out = subprocess.run(
        [*PPN, "key", "new", str(key), "--json"], check=True, capture_output=True, text=True
    )
    cap = tmp / "holder.cap"
    subprocess.run(
        [*PPN, "cap", "mint", "--store", str(store), "--to", json.loads(out.stdout)["public"],
         "--ops", "count", "--out", str(cap)],
        check=True, capture_output=True,
    )  # fmt: skip
    serve = subprocess.Popen(
        [*PPN, "vault", "serve", "--store", str(store), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = _line(serve)
    address = line.rsplit(" ", 1)[-1].strip()
    assert address.startswith("127.0.0.1:"), line
    return serve, address, key, cap


@pytest.mark.parametrize("example", ["asyncio_daemon.py", "trio_daemon.py"])
async def test_example_daemon_joins_syncs_and_queries(example: str, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[str]] = []
    try:
        vault, vault_address, key, cap = _vault(tmp_path)
        procs.append(vault)
        gstate, dstate = tmp_path / "genesis", tmp_path / "daemon"
        sponsor = subprocess.Popen(
            [*PPN, "genesis", "--state", str(gstate), "--name", "gen", "--listen", "127.0.0.1:0",
             "--endpoint", "127.0.0.1:51820", "--events", "json"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        procs.append(sponsor)
        code = await _event(sponsor, "code")

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
            daemon_sas = (await _event(daemon, "sas"))["sas"]
            sponsor_sas = (await _event(sponsor, "sas"))["sas"]
            assert daemon_sas == sponsor_sas
            _answer(daemon, "yes")
            _answer(sponsor, "yes")
            joined = await _event(daemon, "joined")
            assert joined["address"] == "10.8.0.2"
            assert await trio.to_thread.run_sync(sponsor.wait) == 0

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
            agent = await _event(daemon, "agent")
            assert agent["control"].startswith("127.0.0.1:")
            query = await _event(daemon, "query")
            assert [json.loads(r) for r in query["rows"]] == [{"count": RECORDS}]

            # The daemon pulled the admission, then signed its own entry and pushed it here.
            daemon_identity = next(m.identity for m in state.roster if m.name == "embedded")
            with trio.fail_after(20):
                while True:
                    record = roster.get(daemon_identity)
                    if record is not None and record.signer == daemon_identity:
                        break
                    await trio.sleep(0.1)
            planned = await _event(daemon, "wireguard")
            assert planned["peers"] == ["10.8.0.1/32"]
            # And the daemon's own control server answers a pull with the same roster.
            events = await mesh.pull_once(*_split(agent["control"]), roster)
            assert any(isinstance(e, mesh.SyncComplete) for e in events)
            assert not any(isinstance(e, mesh.RosterUpdated) and e.changed for e in events)

            daemon.send_signal(signal.SIGTERM)
            stopped = await _event(daemon, "stopped")
            assert stopped["pulls_ok"] >= 1 and stopped["pushes_ok"] >= 1
            assert await trio.to_thread.run_sync(daemon.wait) == 0
            nursery.cancel_scope.cancel()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _private_imports(source: str) -> list[str]:
    """Modules (or names from them) an example imports whose dotted path has a private part."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            paths = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            paths = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [p for p in paths if any(part.startswith("_") for part in p.split("."))]
    return found


def test_examples_import_no_private_module() -> None:
    """Issue 20: the examples embed the stack through public names only."""
    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
    assert examples
    for path in examples:
        assert _private_imports(path.read_text()) == [], path.name
    assert _private_imports("from genesis import _trio as t\nimport psp._trio\n") == [
        "genesis._trio",
        "psp._trio",
    ]
