"""SIGTERM (how systemd stops a unit) ends a long-running role cleanly: exit 0, one log line, and
nothing that was pending lost (RFC-NOTES §1.4). Real ``ppn`` processes on loopback: a vault that
has just refused replayed invocations is stopped well inside the 2 s its denial counts may wait
in memory (§9.4.5), and the counts are on disk afterwards; the aggregator stops the same way.
(``ppn vault follow``: tests/psp/test_replica_observability.py; ``ppn fleet serve`` and ``ppn
vmhost serve``: tests/test_observability.py; ``ppn up``: its own tests.)"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trio

from psp import Capability, ErrorCode, Query, VaultError
from psp._capability import invoke_for_vault
from psp._trio import VaultClient

from .psp._orchestration_support import HOLDER, cap_for, make_vault
from .test_observability import PPN, Role, json_log, tuple_of

REPLAYS = 5


async def _replays(address: tuple[str, int], cap: Capability) -> list[ErrorCode]:
    """One invocation answered once, then sent again REPLAYS times: each refusal's code."""
    query = Query(collection="people", op="count")
    codes: list[ErrorCode] = []
    async with await VaultClient.connect(*address) as client:
        hello = await client.hello()
        envelope = invoke_for_vault(
            cap, HOLDER, hello.vault, query.encode(), now=int(time.time()), nonce=b"t" * 16
        )
        await client.fetch(envelope.raw, query.encode())
        for _ in range(REPLAYS):
            try:
                await client.fetch(envelope.raw, query.encode())
            except VaultError as exc:
                codes.append(exc.code)
    return codes


def test_vault_serve_commits_its_denial_counts_on_sigterm_and_exits_0(tmp_path: Path) -> None:
    vault = make_vault(tmp_path / "v", 501, [{"name": "a"}])
    cap = cap_for(vault)
    vault.close()
    role = Role("vault", ["vault", "serve", "--store", "v", "--listen", "127.0.0.1:0"], tmp_path)
    try:
        address = tuple_of(str(role.event("listening")["address"]))
        codes = trio.run(_replays, address, cap)
        assert codes == [ErrorCode.REPLAYED] * REPLAYS
    finally:
        # At once: the counts are still in memory (they may wait up to 2 s for a commit).
        status = role.stop()
    assert status == 0
    stopping = [r for r in json_log(role.log_path) if r["event"] == "stopping"]
    assert len(stopping) == 1 and stopping[0]["signal"] == "SIGTERM", stopping
    audit = subprocess.run(
        [*PPN, "vault", "audit", "--store", "v", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    on_disk = json.loads(audit.stdout)
    denials = {d["name"]: d["count"] for d in on_disk["denials"]}
    assert denials == {"REPLAYED": REPLAYS}, on_disk["denials"]
    assert len(on_disk["entries"]) == 1  # the one answered request


def test_orchestration_serve_exits_0_on_sigterm(tmp_path: Path) -> None:
    role = Role(
        "orchestration",
        ["orchestration", "serve", "--listen", "127.0.0.1:0", "--any-target"],
        tmp_path,
    )
    role.event("listening")
    assert role.stop() == 0
    assert [r["event"] for r in json_log(role.log_path)].count("stopping") == 1
    assert role.proc.stdout is not None
    assert "orchestration listening on" in role.proc.stdout.read()


@pytest.mark.parametrize(
    "argv",
    [
        ["vault", "serve", "--store", "v", "--listen", "127.0.0.1:0"],
        ["orchestration", "serve", "--listen", "127.0.0.1:0", "--any-target"],
    ],
    ids=["vault", "orchestration"],
)
def test_ctrl_c_is_still_an_interruption_logged_as_json(tmp_path: Path, argv: list[str]) -> None:
    """SIGINT: exit 130, no ``stopping`` line, and under --log-format json the ``interrupted``
    line is a JSON record too (RFC-NOTES §1.4, §1.5), so every stderr line parses."""
    make_vault(tmp_path / "v", 502, [{"name": "a"}]).close()
    role = Role(argv[0], argv, tmp_path)
    try:
        role.event("listening")
        role.proc.send_signal(signal.SIGINT)
        assert role.proc.wait(timeout=30) == 130
    finally:
        role.stop()
    records = json_log(role.log_path)  # fails on any line that is not a JSON object
    assert all(r["event"] != "stopping" for r in records), records
    assert records[-1]["event"] == "interrupted" and records[-1]["status"] == 130, records
    assert "ppn: interrupted" not in role.log_path.read_text()
