"""Issue 14, finding 11, against real `ppn genesis` processes on loopback: a peer that only
says `hello` cannot hold the window, a burned code reads as interference, and the next window
gets a new, unpredictable number."""

from __future__ import annotations

import secrets
import socket

from genesis import _messages as m
from genesis import parse_code
from genesis._derive import encode_ad
from ppn import wire

from .ceremony_kit import party
from .test_ceremony_cli import answer, event, finish, ppn, start_joiner, start_sponsor


def _connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _send(sock: socket.socket, message: m.Message) -> None:
    sock.sendall(wire.encode_frame(m.encode_message(message), max_size=m.MAX_FRAME))


def _hello(sock: socket.socket, window: int) -> None:
    _send(sock, m.Hello(window=window, nonce=secrets.token_bytes(16), sas_digits=7))


def test_idle_hello_holders_do_not_block_the_real_joiner(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sponsor, code = start_sponsor(tmp_path / "alpha")
    holders = []
    try:
        # Two holders say hello on the window and go silent (before: the window was theirs,
        # and the real joiner got "crowded", status 16).
        for _ in range(2):
            sock = _connect(code["address"])
            _hello(sock, code["window"])
            sock.recv(4096)  # the offer: the window was claimed
            holders.append(sock)
        joiner = start_joiner(tmp_path / "beta", code["code"], code["address"])
        j_sas = event(joiner)
        assert j_sas["event"] == "sas", j_sas  # before the fix: failed, crowded (16)
        assert event(sponsor)["event"] == "sas"
        answer(joiner, "yes")
        answer(sponsor, "yes")
        assert finish(sponsor, joiner) == [0, 0]
    finally:
        for sock in holders:
            sock.close()
        for proc in (sponsor,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_burned_code_reads_as_interference_and_the_next_window_is_renumbered(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    sponsor = ppn(
        "genesis",
        "--state",
        str(tmp_path / "alpha"),
        "--name",
        "alpha",
        "--listen",
        "127.0.0.1:0",
        "--keep-open",
        "--events",
        "json",
    )
    try:
        first = event(sponsor)
        # hello, then a share with a random point: spends the code without knowing it, then
        # leaves. Before: the operator read "vanished" and the new window reused number 1.
        sock = _connect(first["address"])
        _hello(sock, first["window"])
        sock.recv(4096)
        _send(sock, m.Share(y=secrets.token_bytes(32), ad=encode_ad(party("mallory"))))
        sock.recv(4096)  # the reveal: the guess was taken
        sock.close()
        second = event(sponsor)
        assert second["event"] == "code" and second["window"] != first["window"]
        assert second["code"] != first["code"]
        # Without --keep-open the same burn ends the sponsor with status 11 (interference).
        lone = ppn(
            "genesis",
            "--state",
            str(tmp_path / "gamma"),
            "--name",
            "gamma",
            "--listen",
            "127.0.0.1:0",
        )
        assert lone.stdout is not None and lone.stderr is not None
        window = parse_code(lone.stdout.readline().strip()).window
        address = None
        while address is None:
            line = lone.stderr.readline()
            assert line, "no pairing address"
            if "--sponsor " in line:
                address = line.split("--sponsor ")[1].split()[0]
        sock = _connect(address)
        _hello(sock, window)
        sock.recv(4096)
        _send(sock, m.Share(y=secrets.token_bytes(32), ad=encode_ad(party("mallory"))))
        sock.recv(4096)
        sock.close()
        _, err = lone.communicate(timeout=30)
        assert lone.returncode == 11, err
        assert "interfered" in err and "vanished" not in err
    finally:
        for proc in (sponsor,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
