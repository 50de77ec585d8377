"""Issue 14, finding 7: heartbeat replay across a controller restart, with real ``ppn fleet
serve`` processes on loopback. The test plays the vm-host "a" (it holds a's identity key) and
sends heartbeat frames itself, so it can record one and replay it later.

Before the fix the replay state lived in memory only: after a restart, a heartbeat recorded
from an earlier boot was taken as a new boot, retired the live node's boot, and every later
heartbeat of the live node was refused ("from a boot that has since ended") until it rebooted.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop.fleet_scenario import NodePlan, ppn, write_fleet_files
from ppn import IdentityKey, wire
from ppn._keys import decode_key
from ppn.fleet import Heartbeat, derive_node_id
from ppn.fleet._heartbeat import decode_heartbeat_reply, encode_heartbeat


class _Controller:
    def __init__(self, argv: list[str], log: Path, host: str, port: int) -> None:
        self.argv, self.log, self.host, self.port = argv, log, host, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stderr=open(self.log, "ab"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "the controller did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[_Controller, IdentityKey]]:
    port = 20000 + secrets.randbelow(20000)
    net = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
    files = write_fleet_files(
        tmp_path, [NodePlan("cloud", f"{net}.1", controller=True), NodePlan("a", f"{net}.2")]
    )
    argv = ppn(
        "fleet", "serve", "--identity", str(files.keys["cloud"]), "--directory",
        str(files.directory), "--port", str(port), "--control", str(files.control),
    )  # fmt: skip
    controller = _Controller(argv, tmp_path / "controller.log", f"{net}.1", port)
    key = IdentityKey.from_seed(decode_key(files.keys["a"].read_text()))
    try:
        yield controller, key
    finally:
        controller.stop()


def _frame(key: IdentityKey, address: str, boot: bytes, seq: int) -> bytes:
    heartbeat = Heartbeat(
        node_id=derive_node_id(key.public),
        mesh_address=address,
        hostname="a",
        ram_total_mb=4096,
        ram_available_mb=2048,
        cpu_cores=2,
        load_milli=100,
        kvm=False,
        reserved=False,
        boot_id=boot,
        seq=seq,
    )
    return wire.encode_frame(encode_heartbeat(heartbeat, key), max_size=65536)


def _send(controller: _Controller, frame: bytes) -> tuple[bool, str]:
    with socket.create_connection((controller.host, controller.port), timeout=10) as sock:
        sock.sendall(frame)
        decoder = wire.FrameDecoder(max_size=1024)
        while (reply := decoder.next_frame()) is None:
            data = sock.recv(4096)
            assert data, "the controller closed without a reply"
            decoder.feed(data)
    return decode_heartbeat_reply(reply)


def test_a_heartbeat_from_an_earlier_boot_is_refused_after_a_restart(
    fleet: tuple[_Controller, IdentityKey],
) -> None:
    controller, key = fleet
    address = controller.host[: -len("1")] + "2"  # a's mesh address
    old_boot, live_boot = secrets.token_bytes(16), secrets.token_bytes(16)
    recorded = _frame(key, address, old_boot, 5_000)  # what an attacker on the path kept
    controller.start()
    assert _send(controller, recorded) == (True, "")
    assert _send(controller, _frame(key, address, live_boot, 100))[0]  # the node rebooted
    assert _send(controller, _frame(key, address, live_boot, 200))[0]

    controller.stop()
    controller.start()

    ok, reason = _send(controller, recorded)
    assert not ok and "boot that has since ended" in reason
    # Below the high-water mark of the live boot.
    ok, reason = _send(controller, _frame(key, address, live_boot, 150))
    assert not ok and "did not increase" in reason
    # The live node is not locked out: its next heartbeat is taken.
    assert _send(controller, _frame(key, address, live_boot, 300)) == (True, "")
