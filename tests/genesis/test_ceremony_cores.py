"""Sponsor and Joiner cores wired together in memory: no sockets, no clocks, no threads."""

from __future__ import annotations

import copy
import secrets

import pytest

from genesis import (
    Abort,
    AcceptWindow,
    ConfirmSas,
    Failed,
    FailureReason,
    Joined,
    Joiner,
    JoinerState,
    JoinRequested,
    LocalProtocolError,
    RemoteProtocolError,
    SasReady,
    Sponsor,
    SponsorState,
    make_code,
    mesh_id_for,
)
from genesis import _messages as m
from genesis._code import JoinCode
from ppn import wire

from .ceremony_kit import make_pair, new_code, party


def last_message(data: bytes) -> m.Message:
    decoder = wire.FrameDecoder(max_size=m.MAX_FRAME)
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return m.decode_message(frames[-1])


def failure(events: list[object]) -> Failed:
    found = [e for e in events if isinstance(e, Failed)]
    assert len(found) == 1, events
    return found[0]


def test_a_join_end_to_end() -> None:
    pair = make_pair()
    pair.pump()
    assert pair.sponsor_events == [JoinRequested(window=pair.code.window)]
    pair.sponsor.send(AcceptWindow(code=pair.code), 0.0)
    pair.pump()
    (s_sas,) = pair.sponsor_events[1:]
    (j_sas,) = pair.joiner_events
    assert isinstance(s_sas, SasReady) and isinstance(j_sas, SasReady)
    assert s_sas.sas == j_sas.sas and len(s_sas.sas.replace(" ", "")) == 7
    # Each side learns exactly the keys the other bound into CPace.
    assert s_sas.peer == pair.joiner_info and j_sas.peer == pair.sponsor_info
    pair.confirm_both()
    s_joined, j_joined = pair.sponsor_events[-1], pair.joiner_events[-1]
    assert isinstance(s_joined, Joined) and isinstance(j_joined, Joined)
    assert s_joined == j_joined
    assert s_joined.member.address == "10.8.0.2"
    assert s_joined.member.wg == pair.joiner_info.wg
    assert s_joined.member.endpoints == ("192.0.2.2:51820",)
    assert [r.name for r in s_joined.roster] == ["alpha", "beta"]
    assert s_joined.mesh_id == mesh_id_for(pair.sponsor_info.identity)
    assert pair.sponsor.state is SponsorState.JOINED and pair.joiner.state is JoinerState.JOINED
    assert pair.sponsor.wants_close and pair.joiner.wants_close


def test_strong_sas_is_negotiated_up_by_either_side() -> None:
    pair = make_pair()
    pair.joiner = Joiner(
        me=pair.joiner_info, code=pair.code, nonce=secrets.token_bytes(16), now=0, sas_digits=13
    )
    pair.to_sas()
    sas = [e for e in pair.sponsor_events + pair.joiner_events if isinstance(e, SasReady)]
    assert len(sas) == 2 and sas[0].sas == sas[1].sas
    assert len(sas[0].sas.replace(" ", "")) == 13 and sas[0].digits == 13


def test_wrong_code_fails_both_within_one_round_trip() -> None:
    pair = make_pair(joiner_code=new_code())  # same window, different secret
    pair.pump()
    pair.sponsor.send(AcceptWindow(code=pair.code), 0.0)
    before = pair.deliveries
    pair.pump()
    # offer -> share -> reveal (joiner fails here) -> abort (sponsor fails here)
    assert pair.deliveries - before == 4
    s, j = failure(pair.sponsor_events), failure(pair.joiner_events)
    assert j.reason is FailureReason.WRONG_CODE and not j.by_peer
    assert s.reason is FailureReason.WRONG_CODE and s.by_peer
    assert s.code_spent and j.code_spent  # one guess per code: the window is burned
    assert not any(isinstance(e, SasReady) for e in pair.sponsor_events + pair.joiner_events)
    assert FailureReason.WRONG_CODE.status == 11


def test_tampered_tag_is_a_wrong_code_for_the_sponsor() -> None:
    pair = make_pair()
    pair.pump()
    pair.sponsor.send(AcceptWindow(code=pair.code), 0.0)
    pair.joiner.receive_data(pair.sponsor.data_to_send(), 0)  # offer
    pair.sponsor.receive_data(pair.joiner.data_to_send(), 0)  # share
    pair.joiner.receive_data(pair.sponsor.data_to_send(), 0)  # reveal
    frame = wire.encode_frame(m.encode_message(m.Confirm(tag=bytes(64))), max_size=m.MAX_FRAME)
    pair.joiner.data_to_send()
    pair.sponsor.receive_data(frame, 0)
    pair.collect()
    assert failure(pair.sponsor_events).reason is FailureReason.WRONG_CODE


def test_a_reveal_that_breaks_the_commitment_is_refused() -> None:
    pair = make_pair()
    pair.pump()
    pair.sponsor.send(AcceptWindow(code=pair.code), 0.0)
    pair.joiner.receive_data(pair.sponsor.data_to_send(), 0)
    pair.sponsor.receive_data(pair.joiner.data_to_send(), 0)
    reveal = m.decode_message(
        wire.FrameDecoder(max_size=m.MAX_FRAME).max_size and pair.sponsor.data_to_send()[4:]
    )
    assert isinstance(reveal, m.Reveal)
    other = m.Reveal(y=party("x").wg, ad=reveal.ad, tag=reveal.tag)  # a different share
    pair.joiner.receive_data(wire.encode_frame(m.encode_message(other), max_size=m.MAX_FRAME), 0)
    pair.collect()
    assert failure(pair.joiner_events).reason is FailureReason.WRONG_CODE


@pytest.mark.parametrize("who", ["sponsor", "joiner"])
def test_sas_rejected_by_either_operator_aborts_both(who: str) -> None:
    pair = make_pair()
    pair.to_sas()
    if who == "sponsor":
        pair.joiner.send(ConfirmSas(accept=True), 0)
        pair.sponsor.send(ConfirmSas(accept=False), 0)
    else:
        pair.joiner.send(ConfirmSas(accept=False), 0)
    pair.pump()
    s, j = failure(pair.sponsor_events), failure(pair.joiner_events)
    assert s.reason is j.reason is FailureReason.SAS_REJECTED
    assert (s.by_peer, j.by_peer) == ((False, True) if who == "sponsor" else (True, False))
    assert not any(isinstance(e, Joined) for e in pair.sponsor_events + pair.joiner_events)


def test_bundle_only_after_both_confirmed() -> None:
    pair = make_pair()
    pair.to_sas()
    pair.sponsor.send(ConfirmSas(accept=True, grant=pair.grant()), 0)
    pair.pump()
    assert pair.sponsor.state is SponsorState.SAS  # the joiner has not confirmed yet
    assert pair.joiner.state is JoinerState.SAS
    pair.joiner.send(ConfirmSas(accept=True), 0)
    pair.pump()
    assert pair.joiner.state is JoinerState.JOINED


def test_sponsor_refusal_reaches_the_joiner() -> None:
    pair = make_pair()
    pair.to_sas()
    pair.sponsor.send(Abort(reason=FailureReason.REFUSED), 0)
    pair.pump()
    assert failure(pair.joiner_events).reason is FailureReason.REFUSED
    assert FailureReason.REFUSED.status == 19


@pytest.mark.parametrize("reason", [FailureReason.CROWDED, FailureReason.NO_WINDOW])
def test_window_refusals(reason: FailureReason) -> None:
    pair = make_pair()
    pair.pump()
    pair.sponsor.send(Abort(reason=reason), 0)
    pair.pump()
    j = failure(pair.joiner_events)
    assert j.reason is reason and j.by_peer and not j.code_spent
    assert not failure(pair.sponsor_events).code_spent


def test_version_mismatch() -> None:
    sponsor_info = party("alpha")
    sponsor = Sponsor(me=sponsor_info, mesh_id=bytes(16), nonce=bytes(16), now=0)
    hello = m.Hello(window=1, nonce=bytes(16), sas_digits=7, version=2)
    sponsor.receive_data(wire.encode_frame(m.encode_message(hello), max_size=m.MAX_FRAME), 0)
    assert sponsor.next_event() == Failed(reason=FailureReason.VERSION)
    reply = m.decode_message(sponsor.data_to_send()[4:])
    assert reply == m.Abort(reason="version")


# --- timeouts at each step (core level; the adapter tests run them under autojump_clock) --------


def test_every_wait_has_a_deadline() -> None:
    pair = make_pair()
    assert pair.sponsor.get_timer() == 60.0 and pair.joiner.get_timer() == 60.0
    pair.now = 10.0
    pair.pump()
    assert pair.sponsor.get_timer() is None  # deciding on the window is local, not a wait
    pair.sponsor.send(AcceptWindow(code=pair.code), 10.0)
    pair.pump()
    assert pair.sponsor.get_timer() == 130.0 and pair.joiner.get_timer() == 130.0  # SAS 120 s
    pair.joiner.send(ConfirmSas(accept=True), 20.0)
    assert pair.joiner.get_timer() == 190.0  # rest of the SAS time, then one step


@pytest.mark.parametrize("stage", ["hello", "offer", "share", "confirm", "sas", "bundle"])
def test_timeout_at_each_step(stage: str) -> None:
    pair = make_pair()
    if stage == "hello":
        pair.joiner.data_to_send()  # the hello is lost on the way
    else:
        pair.pump()
    if stage in ("share", "confirm", "sas", "bundle"):
        pair.sponsor.send(AcceptWindow(code=pair.code), 0.0)
    if stage == "share":
        pair.sponsor.data_to_send()  # the offer never arrives: sponsor waits for a share
    if stage == "confirm":
        pair.joiner.receive_data(pair.sponsor.data_to_send(), 0)
        pair.sponsor.receive_data(pair.joiner.data_to_send(), 0)
        pair.sponsor.data_to_send()  # the reveal is lost: sponsor waits for the confirm
    if stage in ("sas", "bundle"):
        pair.pump()
    if stage == "bundle":
        pair.joiner.send(ConfirmSas(accept=True), 0)
        pair.pump()
    pair.collect()
    cores = {"hello": [pair.sponsor, pair.joiner], "offer": [pair.joiner]}.get(
        stage, [pair.sponsor] if stage in ("share", "confirm") else [pair.sponsor, pair.joiner]
    )
    for core in cores:
        deadline = core.get_timer()
        assert deadline is not None
        core.handle_timer(deadline - 0.001)
        assert core.next_event() is None
        core.handle_timer(deadline)
        event = core.next_event()
        # A sponsor whose share went out but whose peer never confirmed the key cannot tell a
        # guesser from a lost message: it reports interference (RFC-NOTES §5.8).
        reason = FailureReason.WRONG_CODE if stage == "confirm" else FailureReason.TIMEOUT
        assert isinstance(event, Failed) and event.reason is reason
        assert last_message(core.data_to_send()) == m.Abort(reason=reason.token)
        assert core.get_timer() is None


# --- a peer that vanishes, and malformed input ---------------------------------------------------


def test_vanished_peer_mid_ceremony() -> None:
    pair = make_pair()
    pair.to_sas()
    pair.joiner.receive_data(b"", 0)
    pair.collect()
    assert failure(pair.joiner_events).reason is FailureReason.PEER_VANISHED


def test_eof_inside_a_frame_is_a_protocol_error() -> None:
    pair = make_pair()
    pair.sponsor.receive_data(pair.joiner.data_to_send()[:7], 0)
    with pytest.raises(RemoteProtocolError):
        pair.sponsor.receive_data(b"", 0)
    assert pair.sponsor.state is SponsorState.ERROR


def test_oversized_frame_is_refused_from_its_header() -> None:
    sponsor = Sponsor(me=party("alpha"), mesh_id=bytes(16), nonce=bytes(16), now=0)
    with pytest.raises(RemoteProtocolError):
        sponsor.receive_data((m.MAX_FRAME + 1).to_bytes(4, "big"), 0)
    assert sponsor.state is SponsorState.ERROR
    assert sponsor.next_event() == Failed(reason=FailureReason.PROTOCOL)
    assert m.decode_message(sponsor.data_to_send()[4:]) == m.Abort(reason="protocol")
    with pytest.raises(RemoteProtocolError):
        sponsor.receive_data(b"more", 0)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # not msgpack
        wire.pack_canonical([1, 2]),  # not a map
        wire.pack_canonical({"t": "hello"}),  # missing fields
        wire.pack_canonical({"t": "nope"}),
        wire.pack_canonical({"t": "hello", "v": 1, "window": 1, "nonce": b"x", "sas": 7}),
        wire.pack_canonical({"t": "share", "y": bytes(32), "ad": b""}),  # out of order
    ],
)
def test_malformed_messages(payload: bytes) -> None:
    sponsor = Sponsor(me=party("alpha"), mesh_id=bytes(16), nonce=bytes(16), now=0)
    with pytest.raises(RemoteProtocolError):
        sponsor.receive_data(wire.encode_frame(payload, max_size=m.MAX_FRAME), 0)
    assert sponsor.state is SponsorState.ERROR


def test_misuse_is_a_local_error_and_leaves_error_state() -> None:
    pair = make_pair()
    with pytest.raises(LocalProtocolError):
        pair.joiner.send(ConfirmSas(accept=True), 0)
    assert pair.joiner.state is JoinerState.ERROR
    pair = make_pair()
    pair.to_sas()
    with pytest.raises(LocalProtocolError):
        pair.sponsor.send(ConfirmSas(accept=True), 0)  # accepting needs a Grant


def test_accepting_a_code_for_another_window_is_misuse() -> None:
    pair = make_pair()
    pair.pump()
    with pytest.raises(LocalProtocolError):
        pair.sponsor.send(AcceptWindow(code=make_code(2, bytes(5))), 0)


def test_secrets_stay_out_of_repr() -> None:
    pair = make_pair()
    assert pair.code.secret not in repr(AcceptWindow(code=pair.code))
    assert pair.code.secret not in repr(pair.code)


# --- the interceptor who knows the code ----------------------------------------------------------


def _mitm_trial(modulus: int) -> bool:
    """A relay that knows the code runs one ceremony with the sponsor (as a joiner) and one
    with the joiner (as a sponsor). Returns whether the two honest screens show the same SAS."""
    code = new_code()
    honest_sponsor_info, honest_joiner_info = party("alpha"), party("beta")
    mesh = mesh_id_for(honest_sponsor_info.identity)
    sponsor = Sponsor(
        me=honest_sponsor_info,
        mesh_id=mesh,
        nonce=secrets.token_bytes(16),
        now=0,
        sas_modulus=modulus,
    )
    fake_joiner = Joiner(
        me=party("mallory"), code=code, nonce=secrets.token_bytes(16), now=0, sas_modulus=modulus
    )
    fake_sponsor = Sponsor(
        me=party("mallory"),
        mesh_id=mesh,
        nonce=secrets.token_bytes(16),
        now=0,
        sas_modulus=modulus,
    )
    joiner = Joiner(
        me=honest_joiner_info, code=code, nonce=secrets.token_bytes(16), now=0, sas_modulus=modulus
    )

    def run(a: Sponsor, b: Joiner) -> str:
        a.receive_data(b.data_to_send(), 0)
        assert isinstance(a.next_event(), JoinRequested)
        a.send(AcceptWindow(code=code), 0)
        for _ in range(3):
            b.receive_data(a.data_to_send(), 0)
            a.receive_data(b.data_to_send(), 0)
        sa, sb = a.next_event(), b.next_event()
        assert isinstance(sa, SasReady) and isinstance(sb, SasReady) and sa.sas == sb.sas
        return sa.sas

    return run(sponsor, fake_joiner) == run(fake_sponsor, joiner)


def test_interceptor_matches_an_8_bit_sas_at_about_2_to_the_minus_8() -> None:
    trials = 1024
    matches = sum(_mitm_trial(256) for _ in range(trials))
    # Expected 4; P(X > 16) for Binomial(1024, 1/256) is about 1e-6. "About 1" would be ~1024.
    assert matches <= 16, matches


def _grind_without_commitment(modulus: int, tries: int) -> bool:
    """Control experiment: the attack the commitment prevents. If the second speaker could
    see the first speaker's share before choosing its own, it could try many shares offline
    (simulated by copying the sponsor's state) until the two SAS match."""
    code = new_code()
    alpha, beta, mallory = party("alpha"), party("beta"), party("mallory")
    mesh = mesh_id_for(alpha.identity)
    fake_sponsor = Sponsor(me=mallory, mesh_id=mesh, nonce=bytes(16), now=0, sas_modulus=modulus)
    joiner = Joiner(me=beta, code=code, nonce=secrets.token_bytes(16), now=0, sas_modulus=modulus)
    fake_sponsor.receive_data(joiner.data_to_send(), 0)
    fake_sponsor.next_event()
    fake_sponsor.send(AcceptWindow(code=code), 0)
    for _ in range(3):
        joiner.receive_data(fake_sponsor.data_to_send(), 0)
        fake_sponsor.receive_data(joiner.data_to_send(), 0)
    target = joiner.next_event()
    assert isinstance(target, SasReady)

    sponsor = Sponsor(
        me=alpha, mesh_id=mesh, nonce=secrets.token_bytes(16), now=0, sas_modulus=modulus
    )
    hello_nonce = secrets.token_bytes(16)
    first = Joiner(me=mallory, code=code, nonce=hello_nonce, now=0, sas_modulus=modulus)
    sponsor.receive_data(first.data_to_send(), 0)
    sponsor.next_event()
    sponsor.send(AcceptWindow(code=code), 0)
    offer = sponsor.data_to_send()
    for _ in range(tries):
        trial_sponsor = copy.deepcopy(sponsor)
        trial = Joiner(me=mallory, code=code, nonce=hello_nonce, now=0, sas_modulus=modulus)
        trial.data_to_send()
        trial.receive_data(offer, 0)
        for _ in range(2):
            trial_sponsor.receive_data(trial.data_to_send(), 0)
            trial.receive_data(trial_sponsor.data_to_send(), 0)
        trial_sponsor.receive_data(trial.data_to_send(), 0)
        got = trial_sponsor.next_event()
        if isinstance(got, SasReady) and got.sas == target.sas:
            return True
    return False


def test_control_grinding_would_win_without_the_commitment() -> None:
    wins = sum(_grind_without_commitment(16, 96) for _ in range(8))
    assert wins >= 6  # each succeeds with probability 1 - (15/16)^96 ≈ 0.998


def test_codes_are_unrelated_to_window_numbers() -> None:
    codes = {str(make_code(1, secrets.token_bytes(5))) for _ in range(100)}
    assert len(codes) == 100
    assert all(isinstance(c, str) for c in codes)
    assert isinstance(new_code(), JoinCode)


def test_bundle_with_other_sponsor_keys_than_bound_is_refused() -> None:
    from genesis import Grant

    from .ceremony_kit import record

    pair = make_pair()
    pair.to_sas()
    impostor = record(party("alpha"), "10.8.0.1")  # the sponsor's name, but other keys
    grant = Grant(cidr="10.8.0.0/24", address="10.8.0.2", roster=(impostor,))
    pair.joiner.send(ConfirmSas(accept=True), 0)
    pair.sponsor.send(ConfirmSas(accept=True, grant=grant), 0)
    pair.sponsor.receive_data(pair.joiner.data_to_send(), 0)
    with pytest.raises(RemoteProtocolError):
        pair.joiner.receive_data(pair.sponsor.data_to_send(), 0)
    assert pair.joiner.state is JoinerState.ERROR
    assert not any(isinstance(e, Joined) for e in pair.joiner_events)


def test_tampered_bundle_does_not_authenticate() -> None:
    pair = make_pair()
    pair.to_sas()
    pair.joiner.send(ConfirmSas(accept=True), 0)
    pair.sponsor.send(ConfirmSas(accept=True, grant=pair.grant()), 0)
    pair.sponsor.receive_data(pair.joiner.data_to_send(), 0)
    sealed = last_message(pair.sponsor.data_to_send())
    assert isinstance(sealed, m.SponsorBundleBox)
    flipped = sealed.box[:-1] + bytes([sealed.box[-1] ^ 1])
    frame = wire.encode_frame(
        m.encode_message(m.SponsorBundleBox(box=flipped)), max_size=m.MAX_FRAME
    )
    with pytest.raises(RemoteProtocolError, match="did not authenticate"):
        pair.joiner.receive_data(frame, 0)
