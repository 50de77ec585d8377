"""The asyncio joiner (genesis.join_asyncio) against the real sponsor (``ppn genesis`` on
loopback): both SAS equal and an accepted join persisted; a joiner that rejects the SAS fails
and writes nothing, and the sponsor fails too; a persist failure is a STATE failure; an
unreachable sponsor."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import genesis
from genesis import ConfirmSas, Failed, FailureReason, Joined, PartyInfo, SasReady
from genesis._io_state import new_node

PPN = [sys.executable, "-m", "ppn"]


def _sponsor(state: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [*PPN, "genesis", "--state", str(state), "--name", "gen", "--listen", "127.0.0.1:0",
         "--endpoint", "127.0.0.1:51820", "--events", "json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def _next(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    value: dict[str, Any] = json.loads(proc.stdout.readline())
    return value


async def _join(
    code: dict[str, Any], directory: Path, sponsor: subprocess.Popen[str], *, accept: bool,
    fail_persist: bool = False,
) -> Joined | Failed:  # fmt: skip
    node = new_node("aio", ("127.0.0.1:51821",))
    shown: dict[str, str] = {}

    async def decide(event: SasReady) -> ConfirmSas:
        loop = asyncio.get_running_loop()
        sponsor_event = await loop.run_in_executor(None, _next, sponsor)
        shown.update(joiner=event.sas, sponsor=sponsor_event["sas"])
        assert sponsor.stdin is not None
        sponsor.stdin.write("yes\n")
        sponsor.stdin.flush()
        return ConfirmSas(accept=accept and event.sas == sponsor_event["sas"])

    async def joined(event: Joined) -> None:
        if fail_persist:
            raise genesis.StateError("disk full")
        state = genesis.MeshState(
            mesh_id=event.mesh_id, cidr=event.cidr, address=event.member.address,
            sponsor=event.sponsor, roster=event.roster,
        )  # fmt: skip
        genesis.write_membership(directory, node, state)

    host, port = code["address"].rsplit(":", 1)
    result = await genesis.join_asyncio(
        host, int(port), me=PartyInfo(name=node.name, identity=node.identity.public, wg=node.wg.public),
        code=genesis.parse_code(code["code"]), endpoints=node.endpoints, decide=decide, joined=joined,
    )  # fmt: skip
    assert shown["joiner"] == shown["sponsor"]
    return result


def test_accepted_join_is_persisted(tmp_path: Path) -> None:
    sponsor, code = _sponsor(tmp_path / "g")
    try:
        result = asyncio.run(_join(code, tmp_path / "j", sponsor, accept=True))
        assert isinstance(result, Joined) and result.member.address == "10.8.0.2"
        assert sponsor.wait(timeout=30) == 0
        state = genesis.load_mesh(tmp_path / "j")
        assert state is not None and state.mesh_id == result.mesh_id
    finally:
        sponsor.kill()
        sponsor.wait()


@pytest.mark.parametrize("fail_persist", [False, True])
def test_rejected_or_unrecorded_join_fails_on_both_sides(
    tmp_path: Path, fail_persist: bool
) -> None:
    sponsor, code = _sponsor(tmp_path / "g")
    try:
        result = asyncio.run(
            _join(code, tmp_path / "j", sponsor, accept=fail_persist, fail_persist=fail_persist)
        )
        assert isinstance(result, Failed)
        assert result.reason is (
            FailureReason.STATE if fail_persist else FailureReason.SAS_REJECTED
        )
        status = sponsor.wait(timeout=30)
        if not fail_persist:
            assert status != 0  # a rejected SAS fails both sides
        # (A joiner that cannot record the result learns of it after the sponsor's last message:
        # only the joiner fails, as with the trio adapter.)
        assert genesis.load_mesh(tmp_path / "j") is None
    finally:
        sponsor.kill()
        sponsor.wait()


def test_unreachable_sponsor() -> None:
    async def attempt() -> Joined | Failed:
        node = new_node("aio")
        return await genesis.join_asyncio(
            "127.0.0.1", 1, me=PartyInfo(name="aio", identity=node.identity.public, wg=node.wg.public),
            code=genesis.make_code(1, bytes(5)), endpoints=(),
            decide=lambda e: None, joined=lambda e: None,  # type: ignore[arg-type,return-value]
        )  # fmt: skip

    result = asyncio.run(attempt())
    assert isinstance(result, Failed) and result.reason is FailureReason.UNREACHABLE
