"""The state directory: atomic 0600 files, round trips, wg-quick rendering, refusals."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from genesis import MemberRecord, MeshState, StateError, load_mesh, load_node, write_membership
from genesis._io_state import add_member, atomic_write, new_node, render_wg_quick
from ppn import encode_key

from .ceremony_kit import party, record


def _mesh_for(node_identity: bytes, node_wg: bytes, name: str) -> MeshState:
    me = MemberRecord(
        name=name,
        identity=node_identity,
        wg=node_wg,
        address="10.8.0.1",
        endpoints=("192.0.2.1:51900",),
    )
    other = record(party("beta"), "10.8.0.2")
    return MeshState(
        mesh_id=bytes(range(16)),
        cidr="10.8.0.0/24",
        address="10.8.0.1",
        sponsor=node_identity,
        roster=(me, other),
    )


def test_round_trip_and_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    node = new_node("alpha", ("192.0.2.1:51900",))
    mesh = _mesh_for(node.identity.public, node.wg.public, "alpha")
    write_membership(directory, node, mesh)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("identity.key", "wireguard.key", "node.json", "mesh.json", "wg-ppn0.conf"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temp files left
    loaded = load_node(directory)
    assert loaded is not None and loaded.identity.public == node.identity.public
    assert loaded.wg.private == node.wg.private and loaded.endpoints == node.endpoints
    assert load_mesh(directory) == mesh


def test_wg_quick_file(tmp_path: Path) -> None:
    node = new_node("alpha", ("192.0.2.1:51900",))
    mesh = _mesh_for(node.identity.public, node.wg.public, "alpha")
    text = render_wg_quick(node, mesh)
    assert f"PrivateKey = {encode_key(node.wg.private)}" in text
    assert "Address = 10.8.0.1/24" in text and "ListenPort = 51900" in text
    assert text.count("[Peer]") == 1  # not ourselves
    assert f"PublicKey = {encode_key(mesh.roster[1].wg)}" in text
    assert "AllowedIPs = 10.8.0.2/32" in text and "Endpoint = 192.0.2.1:51820" in text


def test_add_member_and_clash(tmp_path: Path) -> None:
    node = new_node("alpha")
    mesh = _mesh_for(node.identity.public, node.wg.public, "alpha")
    write_membership(tmp_path, node, mesh)
    gamma = record(party("gamma"), "10.8.0.3")
    updated = add_member(tmp_path, node, gamma)
    assert updated.roster[-1] == gamma and load_mesh(tmp_path) == updated
    with pytest.raises(StateError):
        add_member(tmp_path, node, gamma)


def test_other_nodes_keys_are_refused(tmp_path: Path) -> None:
    node = new_node("alpha")
    write_membership(tmp_path, node, _mesh_for(node.identity.public, node.wg.public, "alpha"))
    other = new_node("alpha")
    with pytest.raises(StateError):
        write_membership(
            tmp_path, other, _mesh_for(other.identity.public, other.wg.public, "alpha")
        )


def test_malformed_state_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "mesh.json").write_text("{not json")
    with pytest.raises(StateError):
        load_mesh(tmp_path)
    assert load_node(tmp_path / "missing") is None


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_full_disk_leaves_nothing_half_written(tmp_path: Path) -> None:
    """Issue 14, finding 12: `ppn genesis` on a full disk left identity.key and wireguard.key
    behind. A write that fails is a StateError and removes what it created."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        with open(mount / "filler", "wb") as filler:
            try:
                filler.write(b"\0" * (1 << 20))
            except OSError:
                pass
        node = new_node("alpha")
        state = mount / "state"
        mesh = MeshState(
            mesh_id=bytes(16), cidr="10.8.0.0/24", address="10.8.0.1", sponsor=bytes(32), roster=()
        )
        with pytest.raises(StateError, match="No space left"):
            write_membership(state, node, mesh)
        assert not state.exists()
        (mount / "filler").unlink()
        write_membership(state, node, mesh)  # a rerun with room works
        assert (state / "mesh.json").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=True)
