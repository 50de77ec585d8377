"""The mesh's name-to-endpoint binding: ``resolve(name)`` and the hosts-file fragment.

A member's name is the DNS label its sponsor admitted it under; it resolves to the member's mesh
address. Names are looked up exactly, with or without the mesh domain suffix (``ppn``), or by a
node id prefix of at least 8 hex digits. A member that lost a name conflict resolves only by node
id (RFC-NOTES §7.4 rule 5, §7.7).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ._ids import short_id
from ._view import Member, RosterView

__all__ = [
    "DEFAULT_DOMAIN",
    "Resolution",
    "hosts_fragment",
    "replace_hosts_block",
    "resolve",
]

DEFAULT_DOMAIN = "ppn"
_MIN_ID_PREFIX = 8


@dataclass(frozen=True, kw_only=True)
class Resolution:
    """Where a name points: the member's mesh address and its underlay endpoints."""

    name: str
    node_id: bytes
    address: str
    endpoints: tuple[str, ...]
    routed: bool  # False while the member's address is lost to a conflict


def _resolution(member: Member) -> Resolution:
    return Resolution(
        name=member.name,
        node_id=member.node_id,
        address=member.address,
        endpoints=member.endpoints,
        routed=member.routed,
    )


def resolve(view: RosterView, name: str, *, domain: str = DEFAULT_DOMAIN) -> Resolution | None:
    """The member ``name`` refers to, or None. Accepts ``NAME``, ``NAME.DOMAIN`` and node ids."""
    wanted = name.strip().lower().rstrip(".")
    suffix = "." + domain
    if wanted.endswith(suffix):
        wanted = wanted[: -len(suffix)]
    member = view.by_name(wanted)
    if member is not None:
        return _resolution(member)
    if len(wanted) >= _MIN_ID_PREFIX and all(c in "0123456789abcdef" for c in wanted):
        matches = [m for m in view.members if m.node_id.hex().startswith(wanted)]
        if len(matches) == 1:
            return _resolution(matches[0])
    return None


def _address_key(address: str) -> tuple[int, int]:
    parsed = ipaddress.ip_address(address)
    return parsed.version, int(parsed)


def _markers(mesh: bytes) -> tuple[str, str]:
    tag = short_id(mesh)
    return f"# BEGIN ppn mesh {tag}", f"# END ppn mesh {tag}"


def hosts_fragment(view: RosterView, *, mesh: bytes, domain: str = DEFAULT_DOMAIN) -> str:
    """/etc/hosts lines for every named, routed member, between begin/end markers.

    Ordered by address so the text only changes when the binding does.
    """
    begin, end = _markers(mesh)
    rows = sorted(
        ((m.address, m.name) for m in view.members if m.named and m.routed),
        key=lambda row: _address_key(row[0]),
    )
    lines = [begin]
    lines += [f"{address}\t{name}.{domain} {name}" for address, name in rows]
    lines.append(end)
    return "\n".join(lines) + "\n"


def replace_hosts_block(text: str, fragment: str, *, mesh: bytes) -> str:
    """``text`` (a hosts file) with this mesh's block replaced by ``fragment`` (or appended).

    Lines outside the block are kept byte for byte.
    """
    begin, end = _markers(mesh)
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == begin)
        stop = next(i for i in range(start, len(lines)) if lines[i].rstrip("\n") == end)
    except StopIteration:
        prefix = text if not text or text.endswith("\n") else text + "\n"
        return prefix + fragment
    return "".join(lines[:start]) + fragment + "".join(lines[stop + 1 :])
