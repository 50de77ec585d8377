"""CPACE-X25519-SHA512 known answers from draft-irtf-cfrg-cpace-21 (tests/vectors/README.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from genesis import GenesisError, RemoteProtocolError
from genesis._cpace_elligator2 import FIELD_PRIME, elligator2_u, jacobi
from genesis._cpace_strings import (
    generator_string,
    lexiographically_larger,
    lv_cat,
    o_cat,
    prepend_len,
    transcript_ir,
    transcript_oc,
)
from genesis._cpace_x25519 import DSI, DSI_ISK, H_S_IN_BYTES, IDENTITY, scalar_mult_vfy
from genesis.cpace import CPace, CPaceError, Role, calculate_generator

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "cpace-x25519-sha512.json").read_text()
)
KAT = VECTORS["kat"]
IN = {k: bytes.fromhex(v) for k, v in KAT["inputs"].items() if k in {"PRS", "CI", "sid"}}
IN |= {k: bytes.fromhex(KAT["inputs"][k]) for k in ("ADa", "ADb", "ya", "yb")}
OUT = {k: bytes.fromhex(v) for k, v in KAT["outputs"].items()}
MID = KAT["intermediate"]
LOW_ORDER = VECTORS["low_order_points"]


def h(x: str) -> bytes:
    return bytes.fromhex(x)


# --- string helpers (appendix A) -------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["string_utils"]["prepend_len"], ids=lambda c: c["out"][:8])
def test_prepend_len(case: dict[str, str]) -> None:
    assert prepend_len(h(case["in"])) == h(case["out"])


def test_prepend_len_multi_byte_lengths_are_leb128() -> None:
    # Beyond the draft's vectors: 16383 needs two LEB128 bytes, 16384 three.
    assert prepend_len(bytes(16383))[:2] == b"\xff\x7f"
    assert prepend_len(bytes(16384))[:3] == b"\x80\x80\x01"


@pytest.mark.parametrize("case", VECTORS["string_utils"]["lv_cat"])
def test_lv_cat(case: dict[str, Any]) -> None:
    assert lv_cat(*(h(x) for x in case["in"])) == h(case["out"])


@pytest.mark.parametrize("case", VECTORS["string_utils"]["lexiographically_larger"])
def test_lexiographically_larger(case: dict[str, Any]) -> None:
    assert lexiographically_larger(h(case["a"]), h(case["b"])) is case["out"]


@pytest.mark.parametrize("case", VECTORS["string_utils"]["o_cat"])
def test_o_cat(case: dict[str, str]) -> None:
    assert o_cat(h(case["a"]), h(case["b"])) == h(case["out"])
    assert o_cat(h(case["b"]), h(case["a"])) == h(case["out"])


@pytest.mark.parametrize("case", VECTORS["string_utils"]["transcript_ir"])
def test_transcript_ir(case: dict[str, str]) -> None:
    got = transcript_ir(h(case["Ya"]), h(case["ADa"]), h(case["Yb"]), h(case["ADb"]))
    assert got == h(case["out"])


@pytest.mark.parametrize("case", VECTORS["string_utils"]["transcript_oc"])
def test_transcript_oc(case: dict[str, str]) -> None:
    got = transcript_oc(h(case["Ya"]), h(case["ADa"]), h(case["Yb"]), h(case["ADb"]))
    assert got == h(case["out"])
    # Order-free: swapping the parties changes nothing.
    assert transcript_oc(h(case["Yb"]), h(case["ADb"]), h(case["Ya"]), h(case["ADa"])) == got


def test_constants() -> None:
    consts = VECTORS["constants"]
    assert h(consts["DSI"]) == DSI
    assert h(consts["DSI_ISK"]) == DSI_ISK
    assert h(consts["identity_I"]) == IDENTITY
    assert consts["H_s_in_bytes"] == H_S_IN_BYTES


# --- generator (B.1.1) --------------------------------------------------------------------------


def test_generator_string_and_its_hash() -> None:
    gen_str = generator_string(DSI, IN["PRS"], IN["CI"], IN["sid"], H_S_IN_BYTES)
    assert gen_str == h(MID["generator_string"])
    assert gen_str.count(b"\0") >= MID["zpad_len"]
    gen_str_hash = hashlib.sha512(gen_str).digest()[:32]
    assert gen_str_hash == h(MID["gen_str_hash_32"])
    # decodeUCoordinate clears bit 255.
    u = int.from_bytes(gen_str_hash, "little") & ((1 << 255) - 1)
    assert u.to_bytes(32, "little") == h(MID["decoded_u_255bit"])
    assert elligator2_u(u).to_bytes(32, "little") == OUT["g"]


def test_calculate_generator() -> None:
    assert calculate_generator(IN["PRS"], IN["CI"], IN["sid"]) == OUT["g"]


def test_generator_is_on_the_curve_not_the_twist() -> None:
    # Curve25519: v^2 = u^3 + A u^2 + u must have a solution for g.
    p = FIELD_PRIME
    u = int.from_bytes(OUT["g"], "little")
    assert u < p
    assert jacobi((u * u * u + 486662 * u * u + u) % p, p) == 1


# --- the key exchange (B.1.2 - B.1.7) -----------------------------------------------------------


def _pair(role_a: Role, role_b: Role) -> tuple[CPace, CPace]:
    common = {"ci": IN["CI"], "sid": IN["sid"]}
    a = CPace(role_a, IN["PRS"], ad=IN["ADa"], scalar=IN["ya"], **common)
    b = CPace(role_b, IN["PRS"], ad=IN["ADb"], scalar=IN["yb"], **common)
    return a, b


def test_shares_ya_yb() -> None:
    a, b = _pair(Role.INITIATOR, Role.RESPONDER)
    assert a.share == OUT["Ya"]
    assert b.share == OUT["Yb"]
    sa, sb = _pair(Role.SYMMETRIC, Role.SYMMETRIC)
    assert (sa.share, sb.share) == (OUT["Ya"], OUT["Yb"])


def test_k_both_ways() -> None:
    assert scalar_mult_vfy(IN["ya"], OUT["Yb"]) == OUT["K"]
    assert scalar_mult_vfy(IN["yb"], OUT["Ya"]) == OUT["K"]


def test_isk_hash_input_layout() -> None:
    # The draft's intermediate "lv_cat(DSI, sid, K) || transcript" for both modes.
    prefix = lv_cat(DSI_ISK, IN["sid"], OUT["K"])
    ir = transcript_ir(OUT["Ya"], IN["ADa"], OUT["Yb"], IN["ADb"])
    oc = transcript_oc(OUT["Ya"], IN["ADa"], OUT["Yb"], IN["ADb"])
    assert ir == h(MID["transcript_ir"])
    assert oc == h(MID["transcript_oc"])
    assert prefix + ir == h(MID["isk_hash_input_ir"])
    assert prefix + oc == h(MID["isk_hash_input_oc"])


def test_isk_initiator_responder() -> None:
    a, b = _pair(Role.INITIATOR, Role.RESPONDER)
    assert a.finish(OUT["Yb"], IN["ADb"]) == OUT["ISK_IR"]
    assert b.finish(OUT["Ya"], IN["ADa"]) == OUT["ISK_IR"]
    assert a.sid_output == b.sid_output == OUT["sid_output_ir"]


def test_isk_symmetric() -> None:
    a, b = _pair(Role.SYMMETRIC, Role.SYMMETRIC)
    assert a.finish(OUT["Yb"], IN["ADb"]) == OUT["ISK_SY"]
    assert b.finish(OUT["Ya"], IN["ADa"]) == OUT["ISK_SY"]
    assert a.sid_output == b.sid_output == OUT["sid_output_oc"]


@pytest.mark.parametrize(
    ("mode", "roles"),
    [
        ("initiator_responder", (Role.INITIATOR, Role.RESPONDER)),
        ("symmetric", (Role.SYMMETRIC, Role.SYMMETRIC)),
    ],
)
def test_key_confirmation_known_answers(mode: str, roles: tuple[Role, Role]) -> None:
    kc = VECTORS["key_confirmation_derived"][mode]
    isk = OUT["ISK_IR"] if mode == "initiator_responder" else OUT["ISK_SY"]
    assert hashlib.sha512(b"CPaceMac" + IN["sid"] + isk).digest() == h(kc["mac_key"])
    a, b = _pair(*roles)
    a.finish(b.share, IN["ADb"])
    b.finish(a.share, IN["ADa"])
    assert a.tag() == h(kc["Ta"])
    assert b.tag() == h(kc["Tb"])
    assert a.verify(h(kc["Tb"])) and b.verify(h(kc["Ta"]))
    assert not a.verify(h(kc["Ta"])) and not b.verify(h(kc["Tb"]))


# --- low-order and non-canonical points (B.1.10) ------------------------------------------------


@pytest.mark.parametrize("case", LOW_ORDER["cases"], ids=lambda c: c["name"])
def test_scalar_mult_vfy_table(case: dict[str, Any]) -> None:
    assert scalar_mult_vfy(h(LOW_ORDER["s"]), h(case["u"])) == h(case["expected_scalar_mult_vfy"])


@pytest.mark.parametrize("case", LOW_ORDER["cases"], ids=lambda c: c["name"])
@pytest.mark.parametrize("role", list(Role))
def test_low_order_share_aborts_exactly_where_the_draft_says(
    case: dict[str, Any], role: Role
) -> None:
    # u0-u5 and u7 MUST abort when they arrive as Ya or Yb; u6, u8, u9, ua, ub (bit 255 set,
    # ordinary points once it is masked) MUST NOT.
    party = CPace(role, IN["PRS"], ci=IN["CI"], sid=IN["sid"], scalar=h(LOW_ORDER["s"]))
    if case["must_abort_in_protocol"]:
        with pytest.raises(CPaceError) as info:
            party.finish(h(case["u"]))
        assert str(info.value) == "CPace exchange failed"
        with pytest.raises(CPaceError):  # and the object stays dead
            party.tag()
    else:
        assert case["top_bit_255_set"]
        isk = party.finish(h(case["u"]))
        assert len(isk) == 64


def test_abort_cases_are_the_seven_the_draft_lists() -> None:
    aborting = {c["name"] for c in LOW_ORDER["cases"] if c["must_abort_in_protocol"]}
    assert aborting == {"u0", "u1", "u2", "u3", "u4", "u5", "u7"}


@pytest.mark.parametrize("bad", [b"", b"\x09" * 31, b"\x09" * 33, OUT["Yb"] + b"\0"])
def test_wrong_length_share_fails_like_a_low_order_one(bad: bytes) -> None:
    party = CPace(Role.INITIATOR, IN["PRS"])
    with pytest.raises(CPaceError) as info:
        party.finish(bad)
    low = CPace(Role.INITIATOR, IN["PRS"])
    with pytest.raises(CPaceError) as info_low:
        low.finish(bytes(32))
    assert str(info.value) == str(info_low.value)  # no oracle: one message for every cause
    assert info.value.args == info_low.value.args


def test_cpace_error_is_a_genesis_remote_protocol_error() -> None:
    assert issubclass(CPaceError, RemoteProtocolError)
    assert issubclass(CPaceError, GenesisError)
