"""Who is who in the fleet: the membership view the fleet services need, as an injected interface.

The fleet trusts exactly what the mesh roster trusts (RFC-NOTES §8.1): a heartbeat is accepted
only when signed by a member's identity key, and a spawn request only when signed by the member
that holds the fleet-controller role. The services never read the roster themselves; they ask a
:class:`MemberDirectory`. Until the signed roster (RFC-NOTES §7) is wired in, a
:class:`StaticDirectory` loaded from a JSON document plays that part.

Sans-IO: parsing takes an already-decoded JSON value; reading the file is the caller's job.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .._errors import PPNError
from .._keys import KeyFormatError, decode_key, encode_key
from ..mesh._ids import node_id as roster_node_id

__all__ = [
    "CONTROLLER_ROLES",
    "DirectoryError",
    "Member",
    "MemberDirectory",
    "StaticDirectory",
    "derive_node_id",
]

# A member holding any of these roles runs the fleet controller. "cloud" is the platform's name for
# the node that hosts VM-Orchestration and the controller (ARCHITECTURE §1).
CONTROLLER_ROLES = frozenset({"cloud", "fleet-controller"})

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def derive_node_id(identity: bytes) -> str:
    """A member's node id as text: the lowercase hex of the roster's node id (RFC-NOTES §7.1)."""
    return roster_node_id(identity).hex()


class DirectoryError(PPNError, ValueError):
    """A membership document that does not describe a usable fleet."""


@dataclass(frozen=True, kw_only=True)
class Member:
    """One mesh member as the fleet sees it."""

    node_id: str
    name: str
    identity: bytes  # 32-byte Ed25519 verify key
    mesh_address: str
    roles: frozenset[str] = frozenset()

    @property
    def is_controller(self) -> bool:
        return bool(self.roles & CONTROLLER_ROLES)


class MemberDirectory(Protocol):
    """The membership lookups the fleet services make. The roster implements this too."""

    def member_by_identity(self, identity: bytes) -> Member | None:
        """The member whose identity key is ``identity``, or None for a stranger."""
        ...

    def member_by_name(self, name: str) -> Member | None: ...

    def controller(self) -> Member | None:
        """The member that runs the fleet controller, or None if the fleet has none."""
        ...

    def members(self) -> list[Member]: ...


class StaticDirectory:
    """A fixed membership list, e.g. loaded from a JSON file with :meth:`from_document`.

    Document shape::

        {"members": [{"name": "cloud", "identity": "<base64 Ed25519 public key>",
                      "mesh_address": "10.8.0.1", "roles": ["cloud"],
                      "node_id": "optional; defaults to derive_node_id(identity)"}, ...]}
    """

    def __init__(self, members: Iterable[Member]) -> None:
        self._by_identity: dict[bytes, Member] = {}
        self._by_name: dict[str, Member] = {}
        node_ids: set[str] = set()
        addresses: set[str] = set()
        for member in members:
            if member.identity in self._by_identity:
                raise DirectoryError(f"two members share the identity key of {member.name!r}")
            if member.name in self._by_name:
                raise DirectoryError(f"two members are named {member.name!r}")
            if member.node_id in node_ids:
                raise DirectoryError(f"two members have node id {member.node_id!r}")
            if member.mesh_address in addresses:
                raise DirectoryError(f"two members claim mesh address {member.mesh_address}")
            self._by_identity[member.identity] = member
            self._by_name[member.name] = member
            node_ids.add(member.node_id)
            addresses.add(member.mesh_address)
        controllers = [m for m in self._by_name.values() if m.is_controller]
        if len(controllers) > 1:
            names = ", ".join(sorted(m.name for m in controllers))
            raise DirectoryError(f"more than one fleet controller ({names}); the fleet has one")
        self._controller = controllers[0] if controllers else None

    @classmethod
    def from_document(cls, document: Any) -> StaticDirectory:
        if not isinstance(document, Mapping) or not isinstance(document.get("members"), list):
            raise DirectoryError("a member directory is an object with a 'members' list")
        return cls(_parse_member(entry, i) for i, entry in enumerate(document["members"]))

    def to_document(self) -> dict[str, Any]:
        return {
            "members": [
                {
                    "name": m.name,
                    "node_id": m.node_id,
                    "identity": encode_key(m.identity),
                    "mesh_address": m.mesh_address,
                    "roles": sorted(m.roles),
                }
                for m in self._by_name.values()
            ]
        }

    def member_by_identity(self, identity: bytes) -> Member | None:
        return self._by_identity.get(identity)

    def member_by_name(self, name: str) -> Member | None:
        return self._by_name.get(name)

    def controller(self) -> Member | None:
        return self._controller

    def members(self) -> list[Member]:
        return list(self._by_name.values())


def _parse_member(entry: Any, index: int) -> Member:
    where = f"member #{index + 1}"
    if not isinstance(entry, Mapping):
        raise DirectoryError(f"{where} is not an object")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise DirectoryError(f"{where} needs a 'name' of lower-case letters, digits and '-'")
    where = f"member {name!r}"
    identity_text = entry.get("identity")
    if not isinstance(identity_text, str):
        raise DirectoryError(f"{where} needs an 'identity' (base64 Ed25519 public key)")
    try:
        identity = decode_key(identity_text)
    except KeyFormatError as exc:
        raise DirectoryError(f"{where}: identity: {exc}") from exc
    node_id = entry.get("node_id") or derive_node_id(identity)
    if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
        raise DirectoryError(f"{where} has an unusable 'node_id'")
    address_text = entry.get("mesh_address")
    try:
        address = str(ipaddress.ip_address(address_text))  # type: ignore[arg-type]
    except ValueError as exc:
        raise DirectoryError(f"{where} needs a 'mesh_address' that is an IP address") from exc
    roles = entry.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise DirectoryError(f"{where} has 'roles' that are not a list of strings")
    return Member(
        node_id=node_id,
        name=name,
        identity=identity,
        mesh_address=address,
        roles=frozenset(roles),
    )
