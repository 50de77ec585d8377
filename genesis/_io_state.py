"""The node's state directory: the one place the ceremony's result is written (RFC-NOTES §5.9).

Layout (every file 0600, the directory 0700, each file written atomically: temporary file in
the same directory, fsync, rename, fsync of the directory)::

    identity.key      the Ed25519 identity seed, base64, one line
    wireguard.key     the WireGuard private key, base64, one line (as `wg genkey` prints it)
    node.json         {"version": 1, "name", "identity", "wg", "endpoints"}   (public keys, base64)
    mesh.json         {"version": 1, "mesh_id" (hex), "cidr", "address", "interface",
                       "sponsor" (base64 identity key), "roster": [member, ...]}
                      member = {"name", "identity", "wg" (base64), "address", "endpoints", "roles",
                                ["sponsor" (base64): who admitted it, when this node knows]}
    wg-<iface>.conf   a wg-quick configuration derived from the two JSON files
    identity.key.next, wireguard.key.next
                      a staged replacement key (``ppn rotate``, RFC-NOTES §7.15): written before
                      anything is signed with it, promoted by :func:`promote_node_key`

``mesh.json`` is written last: its presence means "this node is a member". A failed or
aborted ceremony writes nothing at all, so the directory stays byte-identical.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ppn import IdentityKey, KeyFormatError, WireGuardKeyPair, decode_key, encode_key
from ppn._io_files import atomic_write
from ppn.ports import WIREGUARD_PORT

from ._bundle import MemberRecord, parse_endpoint
from ._errors import GenesisError

__all__ = [
    "DEFAULT_INTERFACE",
    "MeshState",
    "NodeState",
    "StateError",
    "add_member",
    "atomic_write",
    "load_mesh",
    "load_node",
    "member_from_json",
    "member_to_json",
    "new_node",
    "discard_staged_key",
    "promote_node_key",
    "stage_node_key",
    "staged_node_key",
    "render_wg_quick",
    "wg_config_path",
    "write_membership",
]

DEFAULT_INTERFACE = "ppn0"
STATE_VERSION = 1


class StateError(GenesisError):
    """The state directory is missing, unreadable, malformed or in the wrong condition."""


@dataclass(frozen=True, kw_only=True)
class NodeState:
    name: str
    identity: IdentityKey
    wg: WireGuardKeyPair
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MeshState:
    mesh_id: bytes
    cidr: str
    address: str
    sponsor: bytes
    roster: tuple[MemberRecord, ...]
    interface: str = DEFAULT_INTERFACE
    # identity -> identity of the member that sponsored it, for the members this node knows it
    # of: the ones it admitted itself (``add_member``). The node agent signs admissions for
    # exactly those (RFC-NOTES §7.9). Optional in mesh.json, so older files still load.
    sponsors: dict[bytes, bytes] = field(default_factory=dict, hash=False)

    def member(self, identity: bytes) -> MemberRecord | None:
        return next((m for m in self.roster if m.identity == identity), None)

    def sponsor_of(self, identity: bytes) -> bytes | None:
        """Who admitted ``identity`` (None when this node does not know)."""
        return self.sponsors.get(identity)


def new_node(name: str, endpoints: tuple[str, ...] = ()) -> NodeState:
    """Fresh keys, in memory only (written by :func:`write_membership` on success)."""
    return NodeState(
        name=name,
        identity=IdentityKey.generate(),
        wg=WireGuardKeyPair.generate(),
        endpoints=endpoints,
    )


def member_to_json(member: MemberRecord, *, sponsor: bytes | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {
        "name": member.name,
        "identity": encode_key(member.identity),
        "wg": encode_key(member.wg),
        "address": member.address,
        "endpoints": list(member.endpoints),
        "roles": list(member.roles),
    }
    if sponsor is not None:
        value["sponsor"] = encode_key(sponsor)
    return value


def member_from_json(value: Any) -> MemberRecord:
    try:
        return MemberRecord(
            name=str(value["name"]),
            identity=decode_key(value["identity"]),
            wg=decode_key(value["wg"]),
            address=str(ipaddress.ip_address(value["address"])),
            endpoints=tuple(str(e) for e in value["endpoints"]),
            roles=tuple(str(r) for r in value["roles"]),
        )
    except (KeyError, TypeError, ValueError, KeyFormatError) as exc:
        raise StateError(f"malformed member record in mesh.json: {exc}") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {path}: {exc}") from exc


def _read_key(path: Path) -> bytes:
    try:
        return decode_key(path.read_text())
    except (OSError, KeyFormatError) as exc:
        raise StateError(f"cannot read {path}: {exc}") from exc


def load_node(directory: Path) -> NodeState | None:
    """The node's keys and name, or None when the directory holds no node yet.

    A key promotion that a crash interrupted (node.json already names the staged key, the
    rename of ``KIND.key.next`` over ``KIND.key`` not done yet) is finished here."""
    if not (directory / "node.json").exists():
        return None
    info = _read_json(directory / "node.json")
    _finish_promotion(directory, info)
    identity = IdentityKey.from_seed(_read_key(directory / "identity.key"))
    wg = WireGuardKeyPair.from_private(_read_key(directory / "wireguard.key"))
    try:
        if info["version"] != STATE_VERSION:
            raise StateError(f"{directory / 'node.json'}: unknown version {info['version']}")
        if decode_key(info["identity"]) != identity.public or decode_key(info["wg"]) != wg.public:
            raise StateError(f"{directory}: node.json does not match the key files")
        endpoints = tuple(str(e) for e in info["endpoints"])
        return NodeState(name=str(info["name"]), identity=identity, wg=wg, endpoints=endpoints)
    except (KeyError, TypeError, KeyFormatError) as exc:
        raise StateError(f"malformed {directory / 'node.json'}") from exc


# --- key rotation (RFC-NOTES §7.15) ----------------------------------------------------------
#
# A new key is written to KIND.key.next (atomically) before anything is signed with it, and is
# promoted only once the mesh has the record that names it: node.json first (it names the public
# key), then the rename over KIND.key. A crash between the two leaves node.json naming the staged
# key, which load_node recognises and finishes; a crash before node.json is written leaves the
# old key in force and the staged one waiting. The old key is never deleted before the new one
# is in place, so at every instant one of the two files holds the key the node's peers know.

_KEY_KINDS = {"identity": "identity", "wireguard": "wg"}


def _key_public(kind: str, private: bytes) -> bytes:
    if kind == "identity":
        return IdentityKey.from_seed(private).public
    return WireGuardKeyPair.from_private(private).public


def _finish_promotion(directory: Path, info: Any) -> None:
    if not isinstance(info, dict):
        return
    for kind, field_name in _KEY_KINDS.items():
        staged = directory / f"{kind}.key.next"
        if not staged.exists() or not isinstance(info.get(field_name), str):
            continue
        try:
            named = decode_key(info[field_name])
            if _key_public(kind, _read_key(directory / f"{kind}.key")) == named:
                continue
            if _key_public(kind, _read_key(staged)) == named:
                os.replace(staged, directory / f"{kind}.key")
                _fsync_directory(directory)
        except (KeyFormatError, ValueError, OSError, StateError):
            continue  # load_node's own check reports the mismatch


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage_node_key(directory: Path, kind: str, private: bytes) -> None:
    """Write a replacement ``kind`` key ("identity" or "wireguard") to ``KIND.key.next``,
    atomically, replacing any earlier staged one. Raises :class:`StateError`."""
    if kind not in _KEY_KINDS:
        raise ValueError(f"unknown key kind {kind!r}")
    try:
        atomic_write(directory / f"{kind}.key.next", (encode_key(private) + "\n").encode())
    except OSError as exc:
        raise StateError(f"cannot write {directory / f'{kind}.key.next'}: {exc}") from exc


def staged_node_key(directory: Path, kind: str) -> bytes | None:
    """The staged ``kind`` key's private bytes, or None when none is staged."""
    path = directory / f"{kind}.key.next"
    if not path.exists():
        return None
    return _read_key(path)


def promote_node_key(directory: Path, kind: str) -> bool:
    """Make the staged ``kind`` key the node's key: this node's own entry in mesh.json first
    (what a join ceremony hands to joiners), then node.json, then the rename — each write
    atomic, the whole idempotent, and a crash after node.json finished by :func:`load_node`.
    False when nothing is staged. Raises StateError."""
    staged = staged_node_key(directory, kind)
    if staged is None:
        return False
    path = directory / "node.json"
    try:
        info = _read_json(path)
        field_name = _KEY_KINDS[kind]
        old, new = decode_key(info[field_name]), _key_public(kind, staged)
        _rekey_own_entry(directory, field_name, old, new)
        info[field_name] = encode_key(new)
        atomic_write(path, _json_bytes(info))
        os.replace(directory / f"{kind}.key.next", directory / f"{kind}.key")
        _fsync_directory(directory)
    except (OSError, TypeError, KeyError, KeyFormatError) as exc:
        raise StateError(f"cannot promote the new {kind} key in {directory}: {exc}") from exc
    return True


def _rekeyed(member: MemberRecord, field_name: str, old: bytes, new: bytes) -> MemberRecord:
    if field_name == "identity" and member.identity == old:
        return replace(member, identity=new)
    if field_name == "wg" and member.wg == old:
        return replace(member, wg=new)
    return member


def _rekey_own_entry(directory: Path, field_name: str, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` in mesh.json: this node's roster entry and, for an identity,
    the members it is recorded as having sponsored (so its agent still signs their admissions,
    RFC-NOTES §7.9). No entry with ``old``: already done, nothing to write."""
    mesh = load_mesh(directory)
    if mesh is None or not any(getattr(m, field_name) == old for m in mesh.roster):
        return
    roster = tuple(_rekeyed(m, field_name, old, new) for m in mesh.roster)
    sponsors = mesh.sponsors
    if field_name == "identity":
        sponsors = {(new if k == old else k): (new if v == old else v) for k, v in sponsors.items()}
    atomic_write(
        directory / "mesh.json",
        _json_bytes(_mesh_json(replace(mesh, roster=roster, sponsors=sponsors))),
    )


def discard_staged_key(directory: Path, kind: str) -> None:
    """Remove a staged key that no record names (a rotation that was never signed)."""
    (directory / f"{kind}.key.next").unlink(missing_ok=True)


def load_mesh(directory: Path) -> MeshState | None:
    """The node's mesh membership, or None when it is not a member of any mesh."""
    path = directory / "mesh.json"
    if not path.exists():
        return None
    info = _read_json(path)
    try:
        if info["version"] != STATE_VERSION:
            raise StateError(f"{path}: unknown version {info['version']}")
        sponsors = {
            decode_key(m["identity"]): decode_key(m["sponsor"])
            for m in info["roster"]
            if isinstance(m, dict) and m.get("sponsor") is not None
        }
        return MeshState(
            mesh_id=bytes.fromhex(info["mesh_id"]),
            cidr=str(ipaddress.ip_network(info["cidr"])),
            address=str(ipaddress.ip_address(info["address"])),
            sponsor=decode_key(info["sponsor"]),
            interface=str(info["interface"]),
            roster=tuple(member_from_json(m) for m in info["roster"]),
            sponsors=sponsors,
        )
    except (KeyError, TypeError, ValueError, KeyFormatError) as exc:
        raise StateError(f"malformed {path}: {exc}") from exc


def render_wg_quick(node: NodeState, mesh: MeshState) -> str:
    """A wg-quick file: our key and address, one [Peer] per other member (its mesh /32)."""
    prefix = ipaddress.ip_network(mesh.cidr).prefixlen
    me = mesh.member(node.identity.public)
    port = WIREGUARD_PORT
    if me and me.endpoints:
        port = parse_endpoint(me.endpoints[0])[1]
    lines = [
        f"# Written by the PPN genesis ceremony for node {node.name}, mesh {mesh.mesh_id.hex()}.",
        "[Interface]",
        f"PrivateKey = {encode_key(node.wg.private)}",
        f"Address = {mesh.address}/{prefix}",
        f"ListenPort = {port}",
        "MTU = 1420",
    ]
    for member in mesh.roster:
        if member.identity == node.identity.public:
            continue
        host_bits = 32 if ipaddress.ip_address(member.address).version == 4 else 128
        lines += ["", f"# {member.name}", "[Peer]", f"PublicKey = {encode_key(member.wg)}"]
        lines.append(f"AllowedIPs = {member.address}/{host_bits}")
        if member.endpoints:
            lines.append(f"Endpoint = {member.endpoints[0]}")
            lines.append("PersistentKeepalive = 25")
    return "\n".join(lines) + "\n"


def wg_config_path(directory: Path, mesh: MeshState) -> Path:
    return directory / f"wg-{mesh.interface}.conf"


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _mesh_json(mesh: MeshState) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "mesh_id": mesh.mesh_id.hex(),
        "cidr": mesh.cidr,
        "address": mesh.address,
        "interface": mesh.interface,
        "sponsor": encode_key(mesh.sponsor),
        "roster": [member_to_json(m, sponsor=mesh.sponsor_of(m.identity)) for m in mesh.roster],
    }


def write_membership(directory: Path, node: NodeState, mesh: MeshState) -> None:
    """Persist a node and its mesh membership: keys, node.json, wg-quick file, mesh.json last.

    A failure (a full disk, a read-only or unusable path) is a :class:`StateError` and leaves
    nothing new behind: the files and the directory this call created are removed, so a failed
    ceremony writes nothing (RFC-NOTES §5.8) and a rerun starts clean (issue 14, finding 12)."""
    created_dir = not directory.exists()
    names = ("identity.key", "wireguard.key", "node.json", wg_config_path(directory, mesh).name)
    before = {n for n in (*names, "mesh.json") if (directory / n).exists()}
    try:
        _write_membership(directory, node, mesh)
    except OSError as exc:
        for name in (*names, "mesh.json"):
            if name not in before:
                try:
                    (directory / name).unlink(missing_ok=True)
                except OSError:
                    pass  # not a directory, or unreadable: there is nothing of ours to remove
        if created_dir:
            try:
                directory.rmdir()
            except OSError:
                pass  # something else is in it: leave it
        raise StateError(
            f"cannot write the state directory {directory}: {exc.strerror or exc}"
        ) from exc


def _write_membership(directory: Path, node: NodeState, mesh: MeshState) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = load_node(directory)
    if existing is None:
        atomic_write(directory / "identity.key", (encode_key(node.identity.seed) + "\n").encode())
        atomic_write(directory / "wireguard.key", (encode_key(node.wg.private) + "\n").encode())
        node_info = {
            "version": STATE_VERSION,
            "name": node.name,
            "identity": node.identity.public_b64,
            "wg": node.wg.public_b64,
            "endpoints": list(node.endpoints),
        }
        atomic_write(directory / "node.json", _json_bytes(node_info))
    elif existing.identity.public != node.identity.public or existing.wg.public != node.wg.public:
        raise StateError(f"{directory} holds another node's keys")
    atomic_write(wg_config_path(directory, mesh), render_wg_quick(node, mesh).encode())
    atomic_write(directory / "mesh.json", _json_bytes(_mesh_json(mesh)))


def add_member(
    directory: Path, node: NodeState, member: MemberRecord, *, drop: Collection[bytes] = ()
) -> MeshState:
    """Sponsor side: add a joined member to the roster on disk and return the new membership.

    ``drop``: identities the signed roster says were removed; they leave ``mesh.json`` here, so
    a member rejoining under its old name and address does not clash with its former entry
    (RFC-NOTES §7.13)."""
    mesh = load_mesh(directory)
    if mesh is None:
        raise StateError(f"{directory} is not a mesh member")
    kept = tuple(
        m for m in mesh.roster if m.identity not in drop or m.identity == node.identity.public
    )
    clash = [
        m
        for m in kept
        if m.identity == member.identity
        or m.wg == member.wg
        or m.name == member.name
        or m.address == member.address
    ]
    if clash:
        raise StateError(f"{member.name} clashes with {clash[0].name} in the roster")
    updated = MeshState(
        mesh_id=mesh.mesh_id,
        cidr=mesh.cidr,
        address=mesh.address,
        sponsor=mesh.sponsor,
        interface=mesh.interface,
        roster=(*kept, member),
        sponsors={
            **{k: v for k, v in mesh.sponsors.items() if k not in drop},
            member.identity: node.identity.public,
        },
    )
    write_membership(directory, node, updated)
    return updated
