"""wg(8) / wg-quick(8) configuration files: parsing, errors with line numbers, round trips."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn._keys import encode_key
from ppn.wg import (
    ConfigError,
    Endpoint,
    InterfaceConfig,
    PeerConfig,
    QuickExtras,
    emit_config,
    parse_config,
    public_key_of,
)

PRIV = bytes(range(1, 33))
PUB_A = bytes([0xA0]) * 32
PUB_B = bytes([0xB0]) * 32
PSK = bytes([7]) * 32

SAMPLE = f"""\
# a wg-quick file
[Interface]
PrivateKey = {encode_key(PRIV)}
ListenPort = 51820
FwMark = 0x1234
Address = 10.8.0.1/24, fd08::1/64
DNS = 10.8.0.53
MTU = 1420
Table = off
PostUp = iptables -A FORWARD -i %i -j ACCEPT
PostUp = echo second
SaveConfig = false

[Peer]  # the relay
PublicKey = {encode_key(PUB_A)}
PresharedKey = {encode_key(PSK)}
AllowedIPs = 10.8.0.2/32, fd08::2/128
AllowedIPs = 192.168.50.7/24
Endpoint = 192.0.2.10:51820
PersistentKeepalive = 25

[peer]
publickey = {encode_key(PUB_B)}
endpoint = [2001:DB8::0001]:51821
persistentkeepalive = off
"""


def test_parse_sample() -> None:
    cfg = parse_config(SAMPLE)
    assert cfg.private_key == PRIV
    assert cfg.public_key == public_key_of(PRIV)
    assert (cfg.listen_port, cfg.fwmark) == (51820, 0x1234)
    assert cfg.extras.addresses == ("10.8.0.1/24", "fd08::1/64")
    assert cfg.extras.post_up == ("iptables -A FORWARD -i %i -j ACCEPT", "echo second")
    assert cfg.extras.mtu == 1420 and cfg.extras.table == "off" and cfg.extras.save_config is False
    a, b = cfg.peers
    assert a.public_key == PUB_A and a.preshared_key == PSK
    # host bits are masked, as wg does; lists may repeat
    assert a.allowed_ips == (
        ipaddress.ip_network("10.8.0.2/32"),
        ipaddress.ip_network("fd08::2/128"),
        ipaddress.ip_network("192.168.50.0/24"),
    )
    assert a.endpoint == Endpoint(host="192.0.2.10", port=51820)
    assert a.persistent_keepalive == 25
    assert b.endpoint == Endpoint(host="2001:db8::1", port=51821)  # one spelling
    assert b.persistent_keepalive == 0 and b.allowed_ips == ()


def test_secrets_are_not_in_repr() -> None:
    cfg = parse_config(SAMPLE)
    text = repr(cfg)
    for secret in (PRIV, PSK):
        assert encode_key(secret) not in text
        assert repr(secret) not in text


def test_emit_round_trips_and_is_stable() -> None:
    cfg = parse_config(SAMPLE)
    text = emit_config(cfg)
    assert parse_config(text) == cfg
    assert emit_config(parse_config(text)) == text


def test_redacted_emit_hides_keys() -> None:
    text = emit_config(parse_config(SAMPLE), redact=True)
    assert encode_key(PRIV) not in text and encode_key(PSK) not in text
    assert "PrivateKey = (hidden)" in text


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("PrivateKey = x\n", 1, "before any"),
        ("[Interface]\nListenPort = 70000\n", 2, "ListenPort"),
        ("[Interface]\n\n[Peer]\nPublicKey = nope\n", 4, "PublicKey"),
        ("[Peer]\nAllowedIPs = 10.0.0.0/33\n", 2, "prefix"),
        ("[Peer]\nEndpoint = fd00::1:51820\n", 2, "brackets"),
        ("[Interface]\nBogus = 1\n", 2, "unknown"),
        ("[Interface]\n[Interface]\n", 2, "second"),
        ("[Tunnel]\n", 1, "section"),
        ("[Interface]\njust words\n", 2, "Key = Value"),
        ("[Peer]\nEndpoint = 1.2.3.4\n", 2, "host:port"),
        ("[Interface]\n# fine\n\n[Peer]\nAllowedIPs = 10.0.0.1/32\n", 4, "without a PublicKey"),
        (
            f"[Peer]\nPublicKey = {encode_key(PUB_A)}\n[Peer]\nPublicKey = {encode_key(PUB_A)}\n",
            3,
            "line 1",
        ),
    ],
)
def test_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.line == line
    assert words in str(info.value)
    assert str(info.value).startswith(f"line {line}: ")


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_arbitrary_text_is_a_config_or_a_config_error(text: str) -> None:
    try:
        cfg = parse_config(text)
    except ConfigError:
        return
    assert parse_config(emit_config(cfg)) == cfg


_LINES = st.sampled_from(
    [
        "[Interface]",
        "[Peer]",
        f"PrivateKey = {encode_key(PRIV)}",
        f"PublicKey = {encode_key(PUB_A)}",
        f"PublicKey = {encode_key(PUB_B)}",
        "PublicKey = AAAA",
        "ListenPort = 51820",
        "ListenPort = -1",
        "AllowedIPs = 10.0.0.0/8, ::/0",
        "AllowedIPs = 10.0.0.300/32",
        "Endpoint = [::1]:1",
        "Endpoint = host.invalid:99999",
        "PersistentKeepalive = 25",
        "MTU = 1280",
        "FwMark = off",
        "= value",
        "# comment",
        "",
    ]
)


@given(st.lists(_LINES, max_size=20))
@settings(max_examples=300, deadline=None)
def test_near_valid_configs_parse_or_fail_cleanly(lines: list[str]) -> None:
    try:
        cfg = parse_config("\n".join(lines))
    except ConfigError as exc:
        assert exc.line >= 1
        return
    assert parse_config(emit_config(cfg)) == cfg


_keys = st.binary(min_size=32, max_size=32)
_nets = st.one_of(
    st.builds(
        lambda a, p: ipaddress.ip_network((a, p), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    st.builds(
        lambda a, p: ipaddress.ip_network((a, p), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
)
_hook = (
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="#"),
        min_size=1,
        max_size=30,
    )
    .map(str.strip)
    .filter(bool)
)
_endpoints = st.one_of(
    st.none(),
    st.builds(
        lambda a, port: Endpoint(host=str(ipaddress.ip_address(a)), port=port),
        st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32, 2**128 - 1)),
        st.integers(1, 65535),
    ),
)
_peers = st.builds(
    lambda key, psk, ep, nets, ka: PeerConfig(
        public_key=key,
        preshared_key=psk,
        endpoint=ep,
        allowed_ips=tuple(dict.fromkeys(nets)),
        persistent_keepalive=ka,
    ),
    _keys,
    st.none() | _keys,
    _endpoints,
    st.lists(_nets, max_size=4),
    st.integers(0, 65535),
)
_configs = st.builds(
    lambda priv, port, mark, peers, mtu, hooks: InterfaceConfig(
        private_key=priv,
        listen_port=port,
        fwmark=mark,
        peers=tuple({p.public_key: p for p in peers}.values()),
        extras=QuickExtras(mtu=mtu, post_up=tuple(hooks)),
    ),
    st.none() | _keys,
    st.none() | st.integers(0, 65535),
    st.none() | st.integers(0, 2**32 - 1),
    st.lists(_peers, max_size=4),
    st.none() | st.integers(68, 65535),
    st.lists(_hook, max_size=2),
)


@given(_configs)
@settings(max_examples=200, deadline=None)
def test_every_model_config_round_trips(cfg: InterfaceConfig) -> None:
    assert parse_config(emit_config(cfg)) == cfg


_addr_text = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v))),
    st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v))),
    st.integers(0, 2**128 - 1).map(lambda v: ipaddress.IPv6Address(v).exploded),
    st.integers(0, 2**32 - 1).map(lambda v: f"::ffff:{ipaddress.IPv4Address(v)}"),
    st.text(alphabet="0123456789abcdefABCDEF:.%/x ", max_size=45),
)


@given(
    _addr_text,
    st.one_of(st.none(), st.integers(0, 130).map(str), st.text("0123456789", max_size=4)),
)
@settings(max_examples=1000, deadline=None)
def test_fast_prefix_parser_agrees_with_ipaddress(address: str, length: str | None) -> None:
    from ppn.wg import parse_network

    text = address if length is None else f"{address}/{length}"
    try:
        expected = ipaddress.ip_network(text, strict=False)
    except ValueError:
        expected = None
    try:
        got = parse_network(text)
    except ValueError:
        got = None
    if "%" in text:  # a scoped address is not a prefix for WireGuard: always refused
        assert got is None, text
        return
    assert got == expected, text
    assert got is None or str(got) == str(expected)


@pytest.mark.parametrize(
    "text", ["fe80::1%eth0", "fe80::1%eth0/64", "::%0", "fe80::%1/128", "10.0.0.1%eth0"]
)
def test_a_scoped_address_is_not_an_allowed_ip(text: str) -> None:
    # Issue 15: parse_network("fe80::1%eth0") returned fe80::1/128, dropping the scope.
    from ppn.wg import parse_network
    from ppn.wg._model import canonical_prefix

    with pytest.raises(ValueError, match="is not an IP prefix"):
        parse_network(text)
    with pytest.raises(ValueError, match="is not an IP prefix"):
        canonical_prefix(text)
    with pytest.raises(ConfigError, match="line 3"):
        parse_config(f"[Peer]\nPublicKey = {'A' * 43}=\nAllowedIPs = {text}\n")


def test_a_scoped_endpoint_keeps_its_scope() -> None:
    # Scopes stay valid where they mean something: a link-local endpoint.
    assert Endpoint.parse("[fe80::1%eth0]:51820").host == "fe80::1%eth0"
