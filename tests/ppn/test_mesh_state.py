"""State directory integration: the ceremony's files in, roster.bin with generations out,
sponsor admissions with a baseline, and the status/resolve commands' exit statuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genesis._bundle import MemberRecord as CeremonyMember
from genesis._derive import mesh_id_for
from genesis._io_state import MeshState, add_member, new_node, write_membership
from ppn.cli import main
from ppn.mesh._bootstrap import sponsor_admissions
from ppn.mesh._io_state import StateDirError, load_mesh_files, load_roster, save_roster
from ppn.mesh._roster import Roster


def genesis_dir(path: Path) -> tuple[Path, object]:
    node = new_node("genesis", ("192.0.2.1:51820",))
    me = CeremonyMember(
        name="genesis",
        identity=node.identity.public,
        wg=node.wg.public,
        address="10.8.0.1",
        endpoints=node.endpoints,
        roles=("genesis",),
    )
    mesh = MeshState(
        mesh_id=mesh_id_for(node.identity.public),
        cidr="10.8.0.0/24",
        address="10.8.0.1",
        sponsor=node.identity.public,
        roster=(me,),
    )
    write_membership(path, node, mesh)
    return path, node


def joiner(name: str, address: str) -> tuple[object, CeremonyMember]:
    node = new_node(name, ())
    return node, CeremonyMember(
        name=name,
        identity=node.identity.public,
        wg=node.wg.public,
        address=address,
        endpoints=(),
        roles=(),
    )


def test_files_load_and_the_genesis_node_is_recognised(tmp_path: Path) -> None:
    directory, _ = genesis_dir(tmp_path / "g")
    files = load_mesh_files(directory)
    assert files.is_genesis and files.address == "10.8.0.1" and files.name == "genesis"
    assert files.own_preliminary() is not None
    with pytest.raises(StateDirError) as info:
        load_mesh_files(tmp_path / "nothing")
    assert info.value.missing


def test_roster_file_round_trip_generation_and_damage(tmp_path: Path) -> None:
    directory, _ = genesis_dir(tmp_path / "g")
    files = load_mesh_files(directory)
    roster = Roster.found(
        files.identity, name="genesis", wg_key=files.wg.public, now=5, network=files.cidr
    )
    assert load_roster(directory, mesh=files.mesh, cidr=files.cidr) is None
    save_roster(directory, roster, generation=7, baseline=[b"x" * 32])
    loaded = load_roster(directory, mesh=files.mesh, cidr=files.cidr)
    assert loaded is not None and loaded.generation == 7
    assert loaded.roster.digest() == roster.digest() and loaded.baseline == {b"x" * 32}
    assert not list(directory.glob(".roster.bin*"))  # no temporary file left behind
    with pytest.raises(StateDirError, match="another mesh"):
        load_roster(directory, mesh=bytes(16), cidr=files.cidr)
    (directory / "roster.bin").write_bytes(b"\x81garbage")
    with pytest.raises(StateDirError, match="damaged"):
        load_roster(directory, mesh=files.mesh, cidr=files.cidr)


def test_only_members_this_node_sponsored_are_admitted(tmp_path: Path) -> None:
    directory, node = genesis_dir(tmp_path / "g")
    files = load_mesh_files(directory)
    roster = Roster.found(
        files.identity, name="genesis", wg_key=files.wg.public, now=5, network=files.cidr
    )
    _, relay = joiner("relay", "10.8.0.2")
    _, other = joiner("other", "10.8.0.3")
    add_member(directory, node, relay)  # type: ignore[arg-type]
    add_member(directory, node, other)  # type: ignore[arg-type]
    # "other" as a mesh.json written before sponsors were recorded lists it: the baseline
    # rule decides (test_mesh_sponsors.py covers recorded sponsors).
    info = json.loads((directory / "mesh.json").read_text())
    for entry in info["roster"]:
        if entry["name"] == "other":
            del entry["sponsor"]
    (directory / "mesh.json").write_text(json.dumps(info))
    files = load_mesh_files(directory)
    admitted = sponsor_admissions(
        roster, files.preliminary, baseline=[other.identity], sponsor=files.identity, now=10
    )
    assert [r.name for r in admitted] == ["relay"]
    assert admitted[0].address == "10.8.0.2" and admitted[0].signer == files.identity.public
    # Idempotent: a second pass finds nothing new.
    again = sponsor_admissions(
        roster, files.preliminary, baseline=[other.identity], sponsor=files.identity, now=11
    )
    assert again == []


def test_status_and_resolve_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory, node = genesis_dir(tmp_path / "g")
    files = load_mesh_files(directory)
    roster = Roster.found(
        files.identity,
        name="genesis",
        wg_key=files.wg.public,
        now=5,
        network=files.cidr,
        endpoints=files.endpoints,
    )
    save_roster(directory, roster, generation=1, baseline=[])
    _, relay = joiner("relay", "10.8.0.2")
    add_member(directory, node, relay)  # type: ignore[arg-type]

    assert main(["resolve", "genesis", "--state", str(directory)]) == 0
    assert capsys.readouterr().out.strip() == "10.8.0.1"
    # Not signed yet: the ceremony's preliminary roster still resolves it, marked unsigned.
    assert main(["resolve", "relay.ppn", "--state", str(directory), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["address"] == "10.8.0.2" and result["signed"] is False
    assert main(["resolve", "nobody", "--state", str(directory)]) == 32

    assert main(["status", "--state", str(directory), "--interface", "ppnnone0", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["node"] == "genesis" and status["generation"] == 1
    assert [m["path"] for m in status["members"]] == ["self"]
    assert main(["status", "--state", str(directory), "--interface", "ppnnone0"]) == 0
    text = capsys.readouterr().out
    assert "genesis" in text and "NAME" in text

    assert main(["status", "--state", str(tmp_path / "empty")]) == 30
    (directory / "roster.bin").write_bytes(b"junk")
    assert main(["status", "--state", str(directory)]) == 31
    assert "damaged" in capsys.readouterr().err
