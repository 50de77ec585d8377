"""``ppn wg`` exit statuses and messages that need no device, and backend selection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ppn._keys import WireGuardKeyPair, encode_key
from ppn.cli import main
from ppn.wg import ConfigOnlyBackend, parse_config, select_backend
from ppn.wg import _io_device as _io_wg_device


def _conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "wg.conf"
    path.write_text(text)
    return str(path)


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPN_WG_STATE_DIR", str(tmp_path / "state"))


def test_bad_config_is_status_20_with_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _conf(tmp_path, "[Interface]\nListenPort = 51820\n[Peer]\nPublicKey = bad\n")
    assert main(["wg", "sync", "wgnope0", path]) == 20
    err = capsys.readouterr().err
    assert "line 4" in err and "PublicKey" in err and "Traceback" not in err


def test_missing_config_is_status_20(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wg", "sync", "wgnope0", str(tmp_path / "absent.conf")]) == 20
    assert "cannot read" in capsys.readouterr().err


def test_unresolvable_endpoint_is_status_27(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = WireGuardKeyPair.generate().public_b64
    path = _conf(tmp_path, f"[Peer]\nPublicKey = {key}\nEndpoint = no-such-host.invalid:51820\n")
    assert main(["wg", "sync", "wgnope0", path]) == 27
    assert "does not resolve" in capsys.readouterr().err


def test_missing_interface_is_status_21(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_io_wg_device, "kernel_module_present", lambda: False)
    monkeypatch.setattr(_io_wg_device.shutil, "which", lambda _name: "/usr/bin/wireguard-go")
    monkeypatch.setattr(_io_wg_device.os, "geteuid", lambda: 0)
    path = _conf(tmp_path, "[Interface]\nListenPort = 51820\n")
    assert main(["wg", "sync", "wgnope0", path]) == 21
    err = capsys.readouterr().err
    assert "no WireGuard interface wgnope0" in err and "wireguard-go wgnope0" in err
    assert main(["wg", "show", "wgnope0"]) == 21


def test_config_only_writes_the_file_and_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_io_wg_device, "kernel_module_present", lambda: False)
    monkeypatch.setattr(_io_wg_device.shutil, "which", lambda _name: None)
    me = WireGuardKeyPair.generate()
    peer = WireGuardKeyPair.generate()
    text = (
        f"[Interface]\nPrivateKey = {encode_key(me.private)}\nListenPort = 51820\n"
        f"[Peer]\nPublicKey = {peer.public_b64}\nAllowedIPs = 10.8.0.2/32\n"
    )
    path = _conf(tmp_path, text)
    assert main(["wg", "sync", "wgnope0", path]) == 25
    err = capsys.readouterr().err
    assert "wireguard-go is not installed" in err and "no kernel WireGuard module" in err
    written = tmp_path / "state" / "wgnope0.conf"
    assert parse_config(written.read_text()) == parse_config(text)
    assert os.stat(written).st_mode & 0o777 == 0o600
    backend = ConfigOnlyBackend("wgnope0", str(written), "test")
    assert set(backend.read().peers) == {peer.public}
    # show reports the kept configuration; an interface with no file is not shown
    assert main(["wg", "show", "wgnope0", "--json"]) == 0
    assert peer.public_b64 in capsys.readouterr().out
    assert main(["wg", "show", "wgnope1"]) == 21


def test_selection_prefers_a_running_userspace_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "wgx0.sock"
    sock.write_text("")
    choice = select_backend("wgx0", socket_dir=str(tmp_path))
    assert choice.kind == "userspace" and choice.running
    monkeypatch.setattr(_io_wg_device, "kernel_module_present", lambda: True)
    choice = select_backend("wgnope0", socket_dir=str(tmp_path))
    assert choice.kind == "kernel" and not choice.running


def test_not_permitted_userspace_is_config_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_io_wg_device, "kernel_module_present", lambda: False)
    choice = select_backend("wgnope0", allow_userspace=False)
    assert choice.kind == "config-only" and "not permitted" in choice.reason


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["wg", "sync", "--help"])
    out = capsys.readouterr().out
    assert "wg syncconf" in out and "exit status" in out and "roamed" in out
