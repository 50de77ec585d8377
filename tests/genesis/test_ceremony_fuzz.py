"""Arbitrary bytes into either core, whole and byte by byte: only RemoteProtocolError escapes."""

from __future__ import annotations

import secrets

from hypothesis import given, settings
from hypothesis import strategies as st

from genesis import AcceptWindow, Joiner, RemoteProtocolError, Sponsor
from genesis import _messages as m
from ppn import wire

from .ceremony_kit import make_pair, new_code, party

SPONSOR_INFO = party("alpha")
JOINER_INFO = party("beta")
CODE = new_code()


def _sponsor() -> Sponsor:
    return Sponsor(me=SPONSOR_INFO, mesh_id=bytes(16), nonce=secrets.token_bytes(16), now=0)


def _joiner() -> Joiner:
    joiner = Joiner(me=JOINER_INFO, code=CODE, nonce=secrets.token_bytes(16), now=0)
    joiner.data_to_send()
    return joiner


def _feed(core: Sponsor | Joiner, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            core.receive_data(chunk, 0)
            while core.next_event() is not None:
                pass
            core.data_to_send()
        core.receive_data(b"", 0)
    except RemoteProtocolError:
        pass


def _frames(payloads: list[bytes]) -> bytes:
    return b"".join(wire.encode_frame(p, max_size=m.MAX_FRAME) for p in payloads)


raw = st.binary(max_size=600)
framed = st.lists(st.binary(max_size=200), max_size=6).map(_frames)
messages = st.lists(
    st.dictionaries(
        st.sampled_from(
            [
                "t",
                "v",
                "window",
                "nonce",
                "sas",
                "mesh",
                "commit",
                "y",
                "ad",
                "tag",
                "box",
                "reason",
            ]
        ),
        st.one_of(
            st.sampled_from(
                [
                    "hello",
                    "offer",
                    "share",
                    "reveal",
                    "confirm",
                    "approve",
                    "bundle",
                    "endpoints",
                    "done",
                    "abort",
                ]
            ),
            st.binary(max_size=70),
            st.integers(min_value=-5, max_value=2**33),
        ),
    ).map(wire.pack_canonical),
    max_size=6,
).map(_frames)
inputs = st.one_of(raw, framed, messages)


@settings(max_examples=300, deadline=None)
@given(data=inputs)
def test_sponsor_whole_and_bytewise(data: bytes) -> None:
    _feed(_sponsor(), [data])
    _feed(_sponsor(), [data[i : i + 1] for i in range(len(data))])


@settings(max_examples=300, deadline=None)
@given(data=inputs)
def test_joiner_whole_and_bytewise(data: bytes) -> None:
    _feed(_joiner(), [data])
    _feed(_joiner(), [data[i : i + 1] for i in range(len(data))])


@settings(max_examples=150, deadline=None)
@given(data=inputs, cut=st.integers(min_value=0, max_value=3))
def test_garbage_after_a_valid_prefix(data: bytes, cut: int) -> None:
    """Deeper states: run a real ceremony part way, then feed garbage to both sides."""
    pair = make_pair()
    pair.pump()
    pair.sponsor.send(AcceptWindow(code=pair.code), 0)
    for _ in range(cut):
        pair.joiner.receive_data(pair.sponsor.data_to_send(), 0)
        pair.sponsor.receive_data(pair.joiner.data_to_send(), 0)
    _feed(pair.sponsor, [data[i : i + 1] for i in range(len(data))])
    _feed(pair.joiner, [data])


member_values = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(["alpha", "b-2", "-x"]), st.text(max_size=5)),
        "identity": st.one_of(st.just(bytes(32)), st.binary(max_size=40)),
        "wg": st.one_of(st.just(bytes(range(32))), st.binary(max_size=40)),
        "address": st.one_of(
            st.sampled_from(["10.8.0.1", "fe80::1", "nope"]), st.binary(max_size=4)
        ),
        "endpoints": st.lists(
            st.one_of(st.sampled_from(["1.2.3.4:5", "[::1]:9", "x:0", "h:"]), st.text(max_size=8)),
            max_size=3,
        ),
        "roles": st.lists(st.text(max_size=4), max_size=3),
    }
)
bundle_values = st.fixed_dictionaries(
    {
        "mesh": st.one_of(st.just(bytes(16)), st.binary(max_size=20)),
        "cidr": st.one_of(
            st.sampled_from(["10.8.0.0/24", "10.8.0.1/24", "::/64"]), st.binary(max_size=4)
        ),
        "address": st.one_of(st.sampled_from(["10.8.0.2", "x"]), st.binary(max_size=4)),
        "roles": st.lists(st.text(max_size=4), max_size=2),
        "sponsor": st.one_of(st.just(bytes(32)), st.binary(max_size=40)),
        "roster": st.lists(member_values, max_size=3),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        bundle_values,
        st.dictionaries(
            st.text(max_size=8), st.integers(min_value=-(2**63), max_value=2**64 - 1), max_size=3
        ),
    )
)
def test_bundle_decoders_only_raise_remote_protocol_errors(value: dict[str, object]) -> None:
    from genesis import JoinerBundle, SponsorBundle

    data = wire.pack_canonical(value)
    for decoder in (SponsorBundle.from_bytes, JoinerBundle.from_bytes):
        try:
            decoded = decoder(data)
        except RemoteProtocolError:
            continue
        assert decoded.to_bytes() == data  # whatever decodes re-encodes to the same bytes
