"""The shared byte layer: frames and canonical msgpack."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ppn.wire import (
    EncodingError,
    FrameDecoder,
    FrameError,
    encode_frame,
    pack_canonical,
    unpack_canonical,
)

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(values)
def test_canonical_round_trip(value: object) -> None:
    data = pack_canonical(value)
    assert unpack_canonical(data) == value
    assert pack_canonical(unpack_canonical(data)) == data


def test_keys_are_sorted_by_utf8_bytes() -> None:
    assert pack_canonical({"b": 1, "a": 2}) == pack_canonical({"a": 2, "b": 1})
    assert unpack_canonical(pack_canonical({"b": 1, "a": 2})) == {"a": 2, "b": 1}


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb({"b": 1, "a": 2}),  # unsorted keys
        b"\x82\xa1a\x01\xa1a\x02",  # duplicate key
        msgpack.packb(1.5),  # float
        msgpack.packb({"a": [1, {"b": 2.0}]}),  # nested float
        msgpack.packb({"a": {"z": 1, "b": 2}}),  # nested unsorted map
        msgpack.packb([1, msgpack.ExtType(5, b"")]),  # nested extension type
        b"\xd9\x01a",  # str8 holding a 1-byte string: not the shortest form
        b"\xd0\x01",  # int8 encoding of 1: not minimal
        msgpack.packb(msgpack.ExtType(1, b"x")),  # extension type
        b"\x81\x01\x02",  # integer map key
        msgpack.packb(1) + b"\x00",  # trailing bytes
        b"\xa2\xff\xfe",  # invalid UTF-8 text
        b"",
    ],
)
def test_non_canonical_input_is_rejected(data: bytes) -> None:
    with pytest.raises(EncodingError):
        unpack_canonical(data)


def test_bin_and_str_are_distinct() -> None:
    assert unpack_canonical(pack_canonical(b"a")) == b"a"
    assert unpack_canonical(pack_canonical("a")) == "a"


def test_depth_limit_is_exact() -> None:
    value: object = 1
    for _ in range(5):
        value = [value]
    assert unpack_canonical(pack_canonical(value, max_depth=5), max_depth=5) == value
    with pytest.raises(EncodingError):
        unpack_canonical(pack_canonical([value], max_depth=6), max_depth=5)
    with pytest.raises(EncodingError):
        pack_canonical([value], max_depth=5)


def test_size_and_depth_limits() -> None:
    with pytest.raises(EncodingError):
        unpack_canonical(pack_canonical(b"x" * 100), max_size=50)
    deep: object = 1
    for _ in range(10):
        deep = [deep]
    with pytest.raises(EncodingError):
        unpack_canonical(pack_canonical(deep), max_depth=5)
    with pytest.raises(EncodingError):
        pack_canonical(1.0)


@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(1, 7))
def test_frames_survive_any_split(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(encode_frame(p, max_size=64) for p in payloads)
    decoder = FrameDecoder(max_size=64)
    out = []
    for i in range(0, len(stream), chunk):
        decoder.feed(stream[i : i + chunk])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == payloads


def test_oversized_frame_rejected_from_header_alone() -> None:
    decoder = FrameDecoder(max_size=10)
    decoder.feed(b"\x00\x00\x00\x0b")
    with pytest.raises(FrameError):
        decoder.next_frame()
    with pytest.raises(FrameError):
        encode_frame(b"x" * 11, max_size=10)


def test_eof_mid_frame_is_an_error() -> None:
    decoder = FrameDecoder(max_size=10)
    decoder.feed(b"\x00\x00\x00\x05ab")
    assert decoder.next_frame() is None
    decoder.feed(b"")
    with pytest.raises(FrameError):
        decoder.next_frame()
