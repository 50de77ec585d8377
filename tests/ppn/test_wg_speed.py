"""The fast paths of ARCHITECTURE §8.1 give the answers of the slow ones, and verify stays honest."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn._keys import KeyFormatError, decode_key
from ppn.wg import (
    ConfigError,
    DeviceState,
    Endpoint,
    FakeBackend,
    InterfaceConfig,
    Operation,
    PeerConfig,
    PeerState,
    UpdatePeer,
    VerifyError,
    load_record,
    parse_config,
    public_key_of,
    reconcile,
    save_record,
)
from ppn.wg._config import _key
from ppn.wg._model import canonical_prefix
from ppn.wg._uapi import parse_get

NOW = 1_800_000_000.0
PRIV = bytes(range(1, 33))


def key(n: int) -> bytes:
    return n.to_bytes(2, "big") * 16


def peer(n: int, *nets: str, endpoint: str | None = None) -> PeerConfig:
    return PeerConfig(
        public_key=key(n),
        allowed_ips=tuple(ipaddress.ip_network(x) for x in nets),
        endpoint=None if endpoint is None else Endpoint.parse(endpoint),
    )


def config(*peers: PeerConfig) -> InterfaceConfig:
    return InterfaceConfig(private_key=PRIV, listen_port=51820, peers=peers)


# --- read-back verification: the peer set in full, written peers field by field ---------------


class _Lying(FakeBackend):
    """Applies every operation, then corrupts what it reports for one written peer."""

    def __init__(self, victim: bytes) -> None:
        super().__init__()
        self.victim = victim

    def apply(self, ops: Sequence[Operation]) -> None:
        super().apply(ops)
        state = self.state.peers[self.victim]
        self._put(dataclasses.replace(state, allowed_ips=state.allowed_ips[:-1]))


def test_verify_catches_a_wrong_read_back_of_a_written_peer() -> None:
    cfg = config(peer(1, "10.0.0.1/32", "fd00::1/128"), peer(2, "10.0.0.2/32"))
    with pytest.raises(VerifyError, match="1 place"):
        reconcile(_Lying(key(1)), cfg, now=NOW)


def test_verify_catches_a_missing_peer_and_an_owned_peer_left_over() -> None:
    class Forgetful(FakeBackend):
        def apply(self, ops: Sequence[Operation]) -> None:
            super().apply([op for op in ops if getattr(op, "peer", None) is None])

    with pytest.raises(VerifyError, match="add peer"):
        reconcile(Forgetful(), config(peer(1, "10.0.0.1/32")), now=NOW)

    class Sticky(FakeBackend):  # ignores removals
        def apply(self, ops: Sequence[Operation]) -> None:
            super().apply([op for op in ops if type(op).__name__ != "RemovePeer"])

    device = Sticky()
    reconcile(device, config(peer(1, "10.0.0.1/32"), peer(2, "10.0.0.2/32")), now=NOW)
    with pytest.raises(VerifyError, match="remove peer"):
        reconcile(device, config(peer(1, "10.0.0.1/32"), peer(3, "10.0.0.3/32")), now=NOW)


class _Counting(Mapping[bytes, PeerState]):
    """A device's peers that count how many are looked at one by one."""

    def __init__(self, peers: Mapping[bytes, PeerState]) -> None:
        self.peers = dict(peers)
        self.looked_at: list[bytes] = []

    def __getitem__(self, k: bytes) -> PeerState:
        self.looked_at.append(k)
        return self.peers[k]

    def __contains__(self, k: object) -> bool:
        return k in self.peers

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.peers)

    def __len__(self) -> int:
        return len(self.peers)


def test_verify_compares_only_the_written_peers_field_by_field() -> None:
    peers = [peer(i, f"10.0.{i // 256}.{i % 256}/32") for i in range(1, 51)]
    reads: list[_Counting] = []

    class Watched(FakeBackend):
        def read(self) -> DeviceState:
            state = super().read()
            reads.append(_Counting(state.peers))
            return dataclasses.replace(state, peers=reads[-1])

    device = Watched()
    reconcile(device, config(*peers), now=NOW)
    changed = [*peers[:-1], peer(50, "10.9.9.9/32")]
    report = reconcile(device, config(*changed), now=NOW)
    assert [type(op) for op in report.plan] == [UpdatePeer] and report.verified
    assert reads[-1].looked_at == [key(50)]  # the read-back decoded the written peer only


# --- parsing: canonical texts instead of network objects, fast key check -----------------------

_octet = st.integers(0, 255)
_v4 = st.builds(lambda *o: ".".join(map(str, o)), _octet, _octet, _octet, _octet)
_v6 = st.lists(st.sampled_from([0, 0, 0, 1, 0xFD00, 0xABC, 0xFFFF]), min_size=8, max_size=8).map(
    lambda groups: ipaddress.IPv6Address(int("".join(f"{g:04x}" for g in groups), 16))
)


@st.composite
def _prefix_texts(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        address, bits = draw(_v4), 32
    else:
        a6 = draw(_v6)
        address = draw(st.sampled_from([str(a6), a6.exploded, str(a6).upper()]))
        bits = 128
    length = draw(st.one_of(st.none(), st.integers(0, bits), st.integers(bits + 1, 200)))
    return address if length is None else f"{address}/{length}"


@given(_prefix_texts())
@settings(max_examples=400, deadline=None)
def test_canonical_prefix_is_the_text_of_the_network(text: str) -> None:
    try:
        expected = str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        with pytest.raises(ValueError):
            canonical_prefix(text)
        return
    assert canonical_prefix(text) == expected


def test_parsed_peers_equal_peers_built_from_network_objects() -> None:
    k = base64.b64encode(key(7)).decode()
    text = (
        f"[Interface]\nPrivateKey = {base64.b64encode(PRIV).decode()}\n"
        f"[Peer]\nPublicKey = {k}\nAllowedIPs = 10.0.0.5/24, FD00:0::1, fd00::1/128, 10.0.0.0/24\n"
    )
    parsed = parse_config(text).peers[0]
    built = PeerConfig(
        public_key=key(7),
        allowed_ips=(ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::1/128")),
    )
    assert parsed.prefix_texts() == ("10.0.0.0/24", "fd00::1/128")
    assert parsed == built and hash(parsed) == hash(built)
    assert parsed.allowed_ips == built.allowed_ips  # built on first use
    with pytest.raises(ConfigError, match="line 5"):
        parse_config(text.replace("10.0.0.0/24\n", "10.0.0.300/24\n"))


_b64ish = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet="AEQgw048+/=aZ9", min_size=42, max_size=46),
    st.binary(min_size=32, max_size=32).map(
        lambda b: base64.b64encode(b).decode()[:42] + "B="  # non-zero padding bits
    ),
)


@given(_b64ish)
@settings(max_examples=400, deadline=None)
def test_fast_key_check_agrees_with_the_shared_decoder(text: str) -> None:
    try:
        expected = decode_key(text)
    except KeyFormatError:
        with pytest.raises(ConfigError):
            _key(text, "PublicKey", 1)
        return
    assert _key(text, "PublicKey", 1) == expected


@given(st.binary(min_size=32, max_size=32))
@settings(max_examples=200, deadline=None)
def test_public_key_of_matches_the_cryptography_package(private: bytes) -> None:
    expected = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    assert public_key_of(private) == expected


# --- UAPI: the text comparison that skips unchanged peers ---------------------------------------


def _answer(blocks: list[list[str]]) -> bytes:
    lines = [f"private_key={PRIV.hex()}", "listen_port=51820"]
    for block in blocks:
        lines.extend(block)
    return ("\n".join([*lines, "errno=0"]) + "\n\n").encode()


def _block(p: PeerConfig, order: str = "wireguard-go", extra: str | None = None) -> list[str]:
    static = [f"public_key={p.public_key.hex()}", f"preshared_key={'0' * 64}"]
    volatile = ["protocol_version=1", f"endpoint={p.endpoint}", "last_handshake_time_sec=5"]
    volatile += ["last_handshake_time_nsec=0", "tx_bytes=1", "rx_bytes=2"]
    tail = ["persistent_keepalive_interval=0", *(f"allowed_ip={n}" for n in p.allowed_ips)]
    if extra is not None:
        volatile.insert(1, extra)
    if order == "wireguard-go":
        return static + volatile + tail
    return static + tail + volatile[::-1]  # another implementation's order


@pytest.mark.parametrize("order", ["wireguard-go", "other"])
def test_unchanged_text_check_in_either_line_order(order: str) -> None:
    p = peer(1, "10.0.0.1/32", "fd00::1/128", endpoint="192.0.2.1:51820")
    state = parse_get(_answer([_block(p, order)]), "wg0", lazy=True)
    unchanged = state.peers.unchanged  # type: ignore[attr-defined]
    assert unchanged(p)
    assert not unchanged(dataclasses.replace(p, persistent_keepalive=25))
    assert not unchanged(dataclasses.replace(p, allowed_ips=p.allowed_ips[:1]))
    assert not unchanged(dataclasses.replace(p, endpoint=Endpoint.parse("192.0.2.2:51820")))
    odd = parse_get(_answer([_block(p, order, extra="future_key=1")]), "wg0", lazy=True)
    assert not odd.peers.unchanged(p)  # type: ignore[attr-defined]
    # A peer the device has no endpoint for (no endpoint line at all).
    bare = dataclasses.replace(p, endpoint=None)
    lines = [line for line in _block(p, order) if not line.startswith("endpoint=")]
    without = parse_get(_answer([lines]), "wg0", lazy=True).peers
    assert without.unchanged(bare)  # type: ignore[attr-defined]
    assert not without.unchanged(p)  # type: ignore[attr-defined]
    # Numbers that are not numbers: never the exact wireguard-go match, same answers.
    junk = [line.replace("tx_bytes=1", "tx_bytes=x") for line in _block(p, order)]
    assert parse_get(_answer([junk]), "wg0", lazy=True).peers.unchanged(p)  # type: ignore[attr-defined]


# --- the sync record: decoded lazily, written only when it changes ------------------------------


def test_record_is_written_only_when_it_changes(tmp_path: Path) -> None:
    peers = (peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1"), peer(2, "10.0.0.2/32"))
    assert save_record("wg9", peers, str(tmp_path))
    record = load_record("wg9", str(tmp_path))
    assert record is not None
    assert dict(record.endpoints) == {key(1): Endpoint.parse("192.0.2.1:1"), key(2): None}
    before = os.stat(tmp_path / "wg9.json").st_mtime_ns
    assert not save_record("wg9", peers, str(tmp_path), unless_equal=record)
    assert os.stat(tmp_path / "wg9.json").st_mtime_ns == before
    moved = (peers[0], peer(2, "10.0.0.2/32", endpoint="192.0.2.2:2"))
    assert save_record("wg9", moved, str(tmp_path), unless_equal=record)
    again = load_record("wg9", str(tmp_path))
    assert again is not None and again.endpoints[key(2)] == Endpoint.parse("192.0.2.2:2")


# --- start-up: what `ppn wg sync` loads on the userspace path -----------------------------------


def test_the_sync_path_loads_no_heavy_module() -> None:
    import subprocess
    import sys

    code = """
import sys
from ppn.wg import _cli as _cli_wg
from ppn.wg import _io_device as _io_wg_device
from ppn.wg import _io_state as _io_wg_state
from ppn.wg import _backend as _wg_backend
from ppn.wg import _config as _wg_config
from ppn.wg import _plan as _wg_plan
from ppn.wg._fake import FakeBackend
cfg = _wg_config.parse_config(
    "[Interface]\\nPrivateKey = " + "E" * 43 + "=\\n[Peer]\\nPublicKey = " + "A" * 43 + "=\\n"
    "AllowedIPs = 10.0.0.1/32\\nEndpoint = 192.0.2.1:51820\\n"
)
_wg_backend.reconcile(FakeBackend(), cfg, now=0.0)
heavy = ("cryptography", "pyroute2", "subprocess", "tempfile", "ppn._keys", "trio")
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_equal_peers_built_separately_share_one_signature() -> None:
    from ppn.wg._uapi import PeerTexts

    _signature = PeerTexts().signature
    a = peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1")
    b = peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1")
    assert a is not b and _signature(a) is _signature(b)
    for other in (
        peer(1, "10.0.0.1/32", endpoint="192.0.2.1:2"),
        peer(1, "10.0.0.2/32", endpoint="192.0.2.1:1"),
        peer(2, "10.0.0.1/32", endpoint="192.0.2.1:1"),
        dataclasses.replace(a, persistent_keepalive=25),
        dataclasses.replace(a, preshared_key=key(9)),
        dataclasses.replace(a, endpoint=None),
    ):
        assert _signature(other) != _signature(a)
        assert _signature(other).text == _signature(dataclasses.replace(other)).text


def test_caches_belong_to_objects_not_to_the_module() -> None:
    # Two owners never see each other's entries; a module holds no table that grows.
    import ppn.wg._model as model_module
    import ppn.wg._plan as plan_module
    import ppn.wg._uapi as uapi_module
    from ppn.wg._model import TextMemo
    from ppn.wg._uapi import PeerTexts

    for module in (model_module, uapi_module, plan_module):
        tables = [
            name
            for name, value in vars(module).items()
            if isinstance(value, (dict, list, set)) and name not in ("__all__", "__builtins__")
        ]
        assert tables == [], (module.__name__, tables)
    one, two = TextMemo(), TextMemo()
    assert one.network("fd00::1/128") is one.network("fd00::1/128")
    assert one.network("fd00::1/128") is not two.network("fd00::1/128")
    assert one.network_text(one.network("fd00:0::1/128")) == "fd00::1/128"
    a = peer(1, "10.0.0.1/32")
    assert PeerTexts().signature(a) is not PeerTexts().signature(a)


def test_a_memo_is_bounded() -> None:
    from ppn.wg._model import TextMemo

    memo = TextMemo(limit=4)
    for i in range(10):
        memo.network(f"10.0.0.{i}/32")
        memo.endpoint(f"192.0.2.{i}:1")
    assert len(memo._networks) <= 4 and len(memo._texts) <= 4 and len(memo._endpoints) <= 4


def test_the_planner_s_quick_check_is_a_declared_protocol() -> None:
    from ppn.wg._plan import QuickCheck
    from ppn.wg._uapi import LazyPeers

    assert isinstance(LazyPeers({}), QuickCheck)
    assert not isinstance({}, QuickCheck)


def test_the_kernel_reader_declares_what_its_read_found_unchanged() -> None:
    from ppn.wg import merge_dump
    from ppn.wg._plan import KnownUnchanged, QuickCheck
    from ppn.wg._uapi import LazyPeers

    peers = merge_dump([], "wg0", lazy=True).peers
    assert isinstance(peers, KnownUnchanged) and isinstance(peers, QuickCheck)
    assert not isinstance(LazyPeers({}), KnownUnchanged) and not isinstance({}, KnownUnchanged)


def test_a_reconciler_skips_the_duplicate_check_only_for_the_state_it_checked() -> None:
    from ppn.wg import DesiredStateError, FakeBackend, InterfaceConfig, Reconciler

    reconciler = Reconciler(FakeBackend())
    good = InterfaceConfig(peers=(peer(1, "10.0.0.1/32"), peer(2, "10.0.0.2/32")))
    reconciler.sync(good, now=0.0)
    reconciler.sync(good, now=1.0)  # the same object: not re-hashed, still fine
    bad = InterfaceConfig(peers=(peer(1, "10.0.0.1/32"), peer(2, "10.0.0.1/32")))
    with pytest.raises(DesiredStateError, match="claimed by two peers"):
        reconciler.sync(bad, now=2.0)
    with pytest.raises(DesiredStateError, match="claimed by two peers"):
        reconciler.sync(bad, now=3.0)  # a refused state is never remembered as checked


def test_the_duplicate_check_names_the_peers_and_allows_a_repeat_within_one() -> None:
    """The duplicate check's set shortcut (no prefix text twice) and its loop agree: two
    peers claiming a prefix are named, one peer listing a prefix twice is no conflict, and
    only a state found clean is marked checked."""
    from ppn.wg import DesiredStateError, InterfaceConfig
    from ppn.wg._plan import check_prefixes

    twice = InterfaceConfig(peers=(peer(1, "10.0.0.1/32", "10.0.0.1/32"), peer(2, "10.0.0.2/32")))
    check_prefixes(twice)
    assert twice.__dict__["_prefixes_distinct"] is True
    clash = InterfaceConfig(peers=(peer(1, "10.0.0.1/32"), peer(2, "10.0.0.9/32", "10.0.0.1/32")))
    with pytest.raises(DesiredStateError, match=r"prefix 10\.0\.0\.1/32 is claimed by two peers"):
        check_prefixes(clash)
    assert "_prefixes_distinct" not in clash.__dict__
    with pytest.raises(DesiredStateError):
        check_prefixes(clash)  # still refused: a refusal is never remembered
