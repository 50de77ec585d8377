"""CPace behaviour beyond the known answers: agreement, separation, reflection, single use."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesis import LocalProtocolError
from genesis._cpace_elligator2 import FIELD_PRIME, elligator2_u, jacobi
from genesis.cpace import ISK_SIZE, SHARE_SIZE, TAG_SIZE, CPace, CPaceError, Role

PAIRS = [(Role.INITIATOR, Role.RESPONDER), (Role.SYMMETRIC, Role.SYMMETRIC)]
short = st.binary(max_size=40)
scalars = st.binary(min_size=32, max_size=32)


def _run(
    roles: tuple[Role, Role],
    prs: tuple[bytes, bytes],
    ci: tuple[bytes, bytes] = (b"", b""),
    sid: tuple[bytes, bytes] = (b"", b""),
    ad: tuple[bytes, bytes] = (b"A", b"B"),
) -> tuple[CPace, CPace, bytes, bytes]:
    a = CPace(roles[0], prs[0], ci=ci[0], sid=sid[0], ad=ad[0])
    b = CPace(roles[1], prs[1], ci=ci[1], sid=sid[1], ad=ad[1])
    isk_a = a.finish(b.share, ad[1])
    isk_b = b.finish(a.share, ad[0])
    return a, b, isk_a, isk_b


@settings(max_examples=25, deadline=None)
@given(prs=short, ci=short, sid=short, ada=short, adb=short, roles=st.sampled_from(PAIRS))
def test_same_inputs_agree_in_every_mode(
    prs: bytes, ci: bytes, sid: bytes, ada: bytes, adb: bytes, roles: tuple[Role, Role]
) -> None:
    a, b, isk_a, isk_b = _run(roles, (prs, prs), (ci, ci), (sid, sid), (ada, adb))
    assert isk_a == isk_b
    assert len(isk_a) == ISK_SIZE
    assert len(a.share) == len(b.share) == SHARE_SIZE
    assert a.sid_output == b.sid_output
    assert a.verify(b.tag()) and b.verify(a.tag())
    assert len(a.tag()) == TAG_SIZE


@settings(max_examples=25, deadline=None)
@given(
    base=st.tuples(short, short, short),
    other=short,
    which=st.sampled_from(["prs", "ci", "sid"]),
    roles=st.sampled_from(PAIRS),
)
def test_any_difference_in_prs_ci_or_sid_separates(
    base: tuple[bytes, bytes, bytes], other: bytes, which: str, roles: tuple[Role, Role]
) -> None:
    prs, ci, sid = base
    changed = {"prs": prs, "ci": ci, "sid": sid}
    if changed[which] == other:
        other += b"\x01"
    changed[which] = other
    a, b, isk_a, isk_b = _run(
        roles, (prs, changed["prs"]), (ci, changed["ci"]), (sid, changed["sid"])
    )
    assert isk_a != isk_b
    assert not a.verify(b.tag())
    assert not b.verify(a.tag())


@pytest.mark.parametrize("roles", PAIRS)
def test_different_ad_view_separates(roles: tuple[Role, Role]) -> None:
    a = CPace(roles[0], b"pw", ad=b"A")
    b = CPace(roles[1], b"pw", ad=b"B")
    isk_a = a.finish(b.share, b"B-tampered")
    isk_b = b.finish(a.share, b"A")
    assert isk_a != isk_b
    assert not a.verify(b.tag()) and not b.verify(a.tag())


def test_mismatched_modes_do_not_agree() -> None:
    *_, isk_a, isk_b = _run((Role.INITIATOR, Role.SYMMETRIC), (b"pw", b"pw"))
    assert isk_a != isk_b


def test_initiator_and_responder_roles_are_not_interchangeable() -> None:
    *_, isk_a, isk_b = _run((Role.INITIATOR, Role.INITIATOR), (b"pw", b"pw"))
    assert isk_a != isk_b


@pytest.mark.parametrize("role", list(Role))
def test_a_reflected_share_fails_verify(role: Role) -> None:
    a = CPace(role, b"pw", ci=b"ci", sid=b"sid", ad=b"A")
    a.finish(a.share, b"A")  # the attacker sends our own message back...
    assert not a.verify(a.tag())  # ...and our own tag: must not confirm


@pytest.mark.parametrize("role", list(Role))
def test_reuse_of_a_finished_object_raises(role: Role) -> None:
    a = CPace(role, b"pw")
    b = CPace(Role.RESPONDER if role is Role.INITIATOR else role, b"pw")
    a.finish(b.share)
    with pytest.raises(CPaceError):
        a.finish(b.share)
    with pytest.raises(CPaceError):  # the failed reuse leaves the object dead
        a.tag()


@pytest.mark.parametrize("query", ["tag", "verify", "sid_output"])
def test_queries_before_finish_raise(query: str) -> None:
    a = CPace(Role.INITIATOR, b"pw")
    with pytest.raises(CPaceError):
        if query == "tag":
            a.tag()
        elif query == "verify":
            a.verify(bytes(64))
        else:
            _ = a.sid_output


def test_scalar_none_draws_fresh_randomness() -> None:
    shares = {CPace(Role.SYMMETRIC, b"pw").share for _ in range(4)}
    assert len(shares) == 4


def test_given_scalar_is_deterministic() -> None:
    y = bytes(range(32))
    assert (
        CPace(Role.INITIATOR, b"pw", scalar=y).share == CPace(Role.INITIATOR, b"pw", scalar=y).share
    )


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_a_bad_scalar_is_caller_misuse(bad: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        CPace(Role.INITIATOR, b"pw", scalar=bad)


def test_non_bytes_inputs_are_caller_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        CPace(Role.INITIATOR, "pw")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        CPace("initiator", b"pw")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, "x" * 32, 12345])
def test_non_bytes_peer_share_fails(bad: object) -> None:
    a = CPace(Role.INITIATOR, b"pw")
    with pytest.raises(CPaceError):
        a.finish(bad)  # type: ignore[arg-type]


def test_verify_rejects_wrong_and_malformed_tags() -> None:
    a, b, _, _ = _run(PAIRS[0], (b"pw", b"pw"))
    good = b.tag()
    assert a.verify(good)
    assert not a.verify(good[:-1])
    assert not a.verify(good + b"\0")
    assert not a.verify(bytes(64))
    assert not a.verify(bytes([good[0] ^ 1]) + good[1:])
    assert not a.verify("not bytes")  # type: ignore[arg-type]


def test_repr_hides_secrets() -> None:
    a = CPace(Role.INITIATOR, b"hunter2-password", scalar=b"\x42" * 32)
    text = repr(a)
    assert "hunter2" not in text and "42" not in text and "initiator" in text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 255) - 1))
def test_elligator2_always_lands_on_the_curve(r: int) -> None:
    # RFC 9380's map against its own definition, computed the slow way: x1 = -A/(1 + 2 r^2),
    # x = x1 if g(x1) is square else -x1 - A, squareness by Euler's criterion.
    p, a = FIELD_PRIME, 486662
    x1 = -a * pow(1 + 2 * r * r, p - 2, p) % p
    gx1 = (x1**3 + a * x1 * x1 + x1) % p
    x = x1 if pow(gx1, (p - 1) // 2, p) in (0, 1) else (-x1 - a) % p
    assert elligator2_u(r) == x
    # On the curve, never the twist (x = 0, the point (0, 0), only for r = 0; see below).
    assert jacobi((x**3 + a * x * x + x) % p, p) in (0, 1)


def test_elligator2_of_zero_is_the_order_two_point() -> None:
    # r = 0 (a hash output nobody can find) maps to u = 0, whose X25519 result is G.I: the
    # peer then aborts, as the draft requires for any low-order share.
    assert elligator2_u(0) == elligator2_u(FIELD_PRIME) == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=FIELD_PRIME - 1))
def test_jacobi_is_the_legendre_symbol_mod_p(a: int) -> None:
    p = FIELD_PRIME
    euler = pow(a, (p - 1) // 2, p)
    assert jacobi(a, p) == (-1 if euler == p - 1 else euler)


@pytest.mark.parametrize("n", [3, 5, 7, 9, 15, 21, 45, 97, 1001])
def test_jacobi_small_moduli_against_definition(n: int) -> None:
    # Jacobi symbol = product of Legendre symbols over n's prime factors (with multiplicity).
    def factor(m: int) -> list[int]:
        out, q = [], 3
        while m > 1:
            while m % q == 0:
                out.append(q)
                m //= q
            q += 2
        return out

    for a in range(2 * n):
        want = 1
        for q in factor(n):
            e = pow(a, (q - 1) // 2, q)
            want *= -1 if e == q - 1 else e
        assert jacobi(a, n) == want, (a, n)


def test_sid_output_is_public_transcript_hash() -> None:
    a, b, _, _ = _run(PAIRS[0], (b"pw", b"pw"), ad=(b"x", b"y"))
    transcript = bytes([32]) + a.share + b"\x01x" + bytes([32]) + b.share + b"\x01y"
    assert a.sid_output == hashlib.sha512(b"CPaceSidOutput" + transcript).digest()


def test_bytes_like_inputs_work_like_bytes() -> None:
    a = CPace(Role.INITIATOR, bytearray(b"pw"), ci=memoryview(b"ci"), ad=bytearray(b"A"))
    b = CPace(Role.RESPONDER, b"pw", ci=b"ci", ad=b"B")
    isk_a = a.finish(bytearray(b.share), memoryview(b"B"))
    assert isk_a == b.finish(memoryview(a.share), b"A")
    assert a.verify(bytearray(b.tag())) and b.verify(memoryview(a.tag()))


def test_module_docstring_example_holds() -> None:
    import doctest

    import genesis.cpace

    result = doctest.testmod(genesis.cpace, verbose=False)
    assert result.attempted >= 2
    assert result.failed == 0
