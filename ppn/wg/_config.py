"""wg(8) / wg-quick(8) configuration files: parse to :class:`InterfaceConfig`, emit back.

Parsing follows wg(8): ``#`` starts a comment, section names and keys are case-insensitive, a
later scalar overrides an earlier one, ``AllowedIPs`` and ``Address`` may repeat and hold
comma-separated lists. The wg-quick extras (Address, DNS, MTU, Table, Pre/PostUp/Down,
SaveConfig) are kept as data in :class:`QuickExtras`. Every problem is a :class:`ConfigError`
naming the line. Emitting is canonical, so ``parse(emit(c)) == c`` for every config ``c``.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field

from ._model import (
    ConfigError,
    Endpoint,
    InterfaceConfig,
    PeerConfig,
    QuickExtras,
    TextMemo,
    key_text,
)

__all__ = ["emit_config", "parse_config"]

_HOOKS = {"preup": "pre_up", "postup": "post_up", "predown": "pre_down", "postdown": "post_down"}


@dataclass(slots=True)
class _PeerDraft:
    line: int
    public_key: bytes | None = None
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    allowed_ips: list[str] = field(default_factory=list)  # canonical prefix texts
    persistent_keepalive: int = 0


@dataclass
class _InterfaceDraft:
    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    addresses: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None
    hooks: dict[str, list[str]] = field(default_factory=dict)
    save_config: bool | None = None


# The base64 characters that can end a canonical 32-byte key: the last character carries four
# bits of the key and two padding bits that must be zero, so re-encoding gives the same text
# (what decode_key checks the slow way).
_LAST_KEY_CHAR = frozenset("AEIMQUYcgkosw048")


def _key(value: str, what: str, line: int) -> bytes:
    if len(value) == 44 and value[43] == "=" and value[42] in _LAST_KEY_CHAR:
        try:
            raw = binascii.a2b_base64(value, strict_mode=True)
        except binascii.Error:
            raw = b""
        if len(raw) == 32:
            return raw
    from .._keys import KeyFormatError, decode_key

    try:  # not a canonical key: the shared decoder says exactly what is wrong
        return decode_key(value)
    except KeyFormatError as exc:
        raise ConfigError(f"{what}: {exc}", line) from None


def _int(value: str, what: str, line: int, low: int, high: int) -> int:
    text = value.strip()
    try:
        number = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise ConfigError(f"{what} must be a number, not {value!r}", line) from None
    if not low <= number <= high:
        raise ConfigError(f"{what} must be within {low}..{high}", line)
    return number


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_config(text: str, *, memo: TextMemo | None = None) -> InterfaceConfig:
    """Parse a wg(8) or wg-quick(8) configuration. Raises :class:`ConfigError` with a line.

    ``memo`` remembers the prefixes and endpoints read, for a caller that parses again and
    again (by default, one for this parse).
    """
    return _parse(text, TextMemo() if memo is None else memo)


def _parse(text: str, memo: TextMemo) -> InterfaceConfig:
    prefix, endpoint = memo.prefix, memo.endpoint
    iface = _InterfaceDraft()
    peers: list[_PeerDraft] = []
    peer: _PeerDraft | None = None
    section: str | None = None
    seen_interface = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip() if "#" in raw else raw.strip()
        if not line:
            continue
        if line[0] == "[":
            name = line.lower()
            if name == "[peer]":
                section = "peer"
                peer = _PeerDraft(line=number)
                peers.append(peer)
            elif name == "[interface]":
                if seen_interface:
                    raise ConfigError("a second [Interface] section", number)
                seen_interface = True
                section = "interface"
            else:
                raise ConfigError(f"unknown section {line!r} (want [Interface] or [Peer])", number)
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"expected 'Key = Value', got {line!r}", number)
        key = key.strip().lower()
        value = value.strip()
        try:
            # The three keys of nearly every peer line, inline; everything else below.
            if section == "peer":
                assert peer is not None
                if key == "publickey":
                    peer.public_key = _key(value, "PublicKey", number)
                elif key == "allowedips":
                    peer.allowed_ips.extend(
                        prefix(item) for item in value.split(",") if item.strip()
                    )
                elif key == "endpoint":
                    peer.endpoint = endpoint(value)
                else:
                    _peer_line(peer, key, value, number, memo)
            elif section == "interface":
                _interface_line(iface, key, value, number)
            else:
                raise ConfigError(f"{key!r} before any [Interface] or [Peer] section", number)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc), number) from None
    return _build(iface, peers)


def _interface_line(iface: _InterfaceDraft, key: str, value: str, line: int) -> None:
    if key == "privatekey":
        iface.private_key = _key(value, "PrivateKey", line)
    elif key == "listenport":
        iface.listen_port = _int(value, "ListenPort", line, 0, 65535)
    elif key == "fwmark":
        iface.fwmark = 0 if value.lower() == "off" else _int(value, "FwMark", line, 0, 2**32 - 1)
    elif key == "address":
        iface.addresses.extend(_list(value))
    elif key == "dns":
        iface.dns.extend(_list(value))
    elif key == "mtu":
        iface.mtu = _int(value, "MTU", line, 68, 65535)
    elif key == "table":
        if not value:
            raise ConfigError("Table needs a value (a number, 'off' or 'auto')", line)
        iface.table = value
    elif key in _HOOKS:
        iface.hooks.setdefault(_HOOKS[key], []).append(value)
    elif key == "saveconfig":
        if value.lower() not in ("true", "false"):
            raise ConfigError("SaveConfig is 'true' or 'false'", line)
        iface.save_config = value.lower() == "true"
    else:
        raise ConfigError(f"unknown [Interface] key {key!r}", line)


def _peer_line(peer: _PeerDraft, key: str, value: str, line: int, memo: TextMemo) -> None:
    if key == "publickey":
        peer.public_key = _key(value, "PublicKey", line)
    elif key == "presharedkey":
        peer.preshared_key = _key(value, "PresharedKey", line)
    elif key == "allowedips":
        peer.allowed_ips.extend(memo.prefix(item) for item in _list(value))
    elif key == "endpoint":
        peer.endpoint = memo.endpoint(value)
    elif key == "persistentkeepalive":
        peer.persistent_keepalive = (
            0 if value.lower() == "off" else _int(value, "PersistentKeepalive", line, 0, 65535)
        )
    else:
        raise ConfigError(f"unknown [Peer] key {key!r}", line)


def _build(iface: _InterfaceDraft, drafts: list[_PeerDraft]) -> InterfaceConfig:
    peers: list[PeerConfig] = []
    first_line: dict[bytes, int] = {}
    for draft in drafts:
        if draft.public_key is None:
            raise ConfigError("[Peer] section without a PublicKey", draft.line)
        if draft.public_key in first_line:
            raise ConfigError(
                f"the same PublicKey as the [Peer] on line {first_line[draft.public_key]}",
                draft.line,
            )
        first_line[draft.public_key] = draft.line
        # Duplicates inside one peer are harmless to WireGuard; drop them, keep the order.
        # (Texts are canonical, so equal prefixes are equal strings.)
        nets = draft.allowed_ips
        if len(nets) == 2:
            distinct = nets[0] != nets[1]
        else:
            distinct = len(nets) < 2 or len(set(nets)) == len(nets)
        peers.append(
            PeerConfig.from_prefix_texts(
                public_key=draft.public_key,
                preshared_key=draft.preshared_key,
                endpoint=draft.endpoint,
                prefixes=tuple(nets) if distinct else tuple(dict.fromkeys(nets)),
                persistent_keepalive=draft.persistent_keepalive,
            )
        )
    extras = QuickExtras(
        addresses=tuple(iface.addresses),
        dns=tuple(iface.dns),
        mtu=iface.mtu,
        table=iface.table,
        pre_up=tuple(iface.hooks.get("pre_up", ())),
        post_up=tuple(iface.hooks.get("post_up", ())),
        pre_down=tuple(iface.hooks.get("pre_down", ())),
        post_down=tuple(iface.hooks.get("post_down", ())),
        save_config=iface.save_config,
    )
    return InterfaceConfig(
        private_key=iface.private_key,
        listen_port=iface.listen_port,
        fwmark=iface.fwmark,
        peers=tuple(peers),
        extras=extras,
    )


def emit_config(config: InterfaceConfig, *, redact: bool = False) -> str:
    """The canonical wg-quick text of ``config``. ``redact`` replaces secret keys by ``(hidden)``
    (such text is for display and does not parse back)."""
    out = ["[Interface]"]
    if config.private_key is not None:
        out.append(f"PrivateKey = {'(hidden)' if redact else key_text(config.private_key)}")
    if config.listen_port is not None:
        out.append(f"ListenPort = {config.listen_port}")
    if config.fwmark is not None:
        out.append(f"FwMark = {hex(config.fwmark) if config.fwmark else 'off'}")
    x = config.extras
    if x.addresses:
        out.append(f"Address = {', '.join(x.addresses)}")
    if x.dns:
        out.append(f"DNS = {', '.join(x.dns)}")
    if x.mtu is not None:
        out.append(f"MTU = {x.mtu}")
    if x.table is not None:
        out.append(f"Table = {x.table}")
    for name, values in (
        ("PreUp", x.pre_up),
        ("PostUp", x.post_up),
        ("PreDown", x.pre_down),
        ("PostDown", x.post_down),
    ):
        out.extend(f"{name} = {v}" for v in values)
    if x.save_config is not None:
        out.append(f"SaveConfig = {'true' if x.save_config else 'false'}")
    for peer in config.peers:
        out.append("")
        out.append("[Peer]")
        out.append(f"PublicKey = {key_text(peer.public_key)}")
        if peer.preshared_key is not None:
            shown = "(hidden)" if redact else key_text(peer.preshared_key)
            out.append(f"PresharedKey = {shown}")
        if peer.prefix_texts():
            out.append(f"AllowedIPs = {', '.join(peer.prefix_texts())}")
        if peer.endpoint is not None:
            out.append(f"Endpoint = {peer.endpoint}")
        if peer.persistent_keepalive:
            out.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(out) + "\n"
