"""``ppn fleet``/``vmhost``/``vm`` in-process: documented exit statuses and one-sentence errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppn import IdentityKey, decode_key
from ppn.cli import main

from ._fleet_support import fleet_directory


def test_status_without_a_controller_is_60(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", "status", "--control", str(tmp_path / "none.sock")]) == 60
    err = capsys.readouterr().err
    assert err.startswith("ppn: cannot reach the fleet controller") and "Traceback" not in err


def test_migrate_is_refused_with_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vm", "migrate", "db-1", "--to", "b"]) == 64
    assert "live migration is excluded by design" in capsys.readouterr().err


def test_keygen_writes_a_private_seed_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "id.key"
    assert main(["fleet", "keygen", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    key = IdentityKey.from_seed(decode_key(path.read_text()))
    assert printed["identity"] == key.public_b64
    assert path.stat().st_mode & 0o777 == 0o600
    assert main(["fleet", "keygen", str(path)]) == 66
    assert IdentityKey.from_seed(decode_key(path.read_text())) == key


def test_bad_configuration_is_66(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "fleet.json"
    directory.write_text(json.dumps(fleet_directory().to_document()))
    stranger = tmp_path / "stranger.key"
    assert main(["fleet", "keygen", str(stranger)]) == 0
    capsys.readouterr()
    common = ["--directory", str(directory)]
    assert main(["fleet", "serve", "--identity", str(tmp_path / "missing.key"), *common]) == 66
    assert "cannot read the identity key" in capsys.readouterr().err
    assert main(["vmhost", "serve", "--identity", str(stranger), *common]) == 66
    assert "not a member" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert (
        main(
            [
                "vmhost",
                "serve",
                "--identity",
                str(stranger),
                "--directory",
                str(tmp_path / "bad.json"),
            ]
        )
        == 66
    )
    assert "member directory" in capsys.readouterr().err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vm", "create", "Bad Type!", "--ram", "1"]) == 2
    assert main(["vm", "create", "generic", "--ram", "0"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["vm", "create", "generic"])  # --ram is required
    assert info.value.code == 2


# --- the VM lifecycle commands (issue 18) ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["vm", "list"], ["vm", "stop", "web-1"], ["vm", "start", "web-1"], ["vm", "delete", "web-1"]],
)
def test_lifecycle_commands_without_a_controller_are_60(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main([*argv, "--control", str(tmp_path / "none.sock")]) == 60
    err = capsys.readouterr().err
    assert err.startswith("ppn: cannot reach the fleet controller") and err.count("\n") == 1


def test_lifecycle_usage_errors(tmp_path: Path) -> None:
    assert main(["vm", "stop", "Web 1", "--control", str(tmp_path / "none.sock")]) == 2
    with pytest.raises(SystemExit) as info:
        main(["vm", "stop"])  # the VM's name is required
    assert info.value.code == 2


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["vm", "list"], ["--json", "--node", "dispatched", "68 no such VM", "130"]),
        (["vm", "stop"], ["--wait", "--json", "PPN_VM_ACTION=stop", "keeps its share"]),
        (["vm", "start"], ["--wait", "--json", "PPN_VM_ACTION=start"]),
        (
            ["vm", "delete"],
            ["--yes", "--confirm NAME", "VM-Totebox", "PPN_VM_KEEP_DATA=1", "never deleted"],
        ),
        (["fleet", "serve"], ["--vcpu-overcommit RATIO", "(default 4)"]),
        (["vmhost", "serve"], ["--vm-state FILE", "fleet-vms.bin", "PPN_VM_ACTION"]),
    ],
)
def test_lifecycle_help_teaches(
    capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in needles:
        assert needle in text, needle


def test_a_damaged_vm_record_file_stops_the_vmhost_with_66(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "fleet.json"
    directory.write_text(json.dumps(fleet_directory().to_document()))
    key = tmp_path / "a.key"
    key.write_text(__import__("base64").b64encode(bytes([2]) * 32).decode() + "\n")
    records = tmp_path / "a.key.vms"  # the default beside --identity
    records.write_bytes(b"\x81\xa1v\x01")  # {"v": 1}: no "vms"
    argv = ["vmhost", "serve", "--identity", str(key), "--directory", str(directory)]
    assert main(argv) == 66
    err = capsys.readouterr().err
    assert "VM records" in err and "damaged" in err and err.count("\n") == 1
    assert records.read_bytes() == b"\x81\xa1v\x01"  # left for the operator to look at
