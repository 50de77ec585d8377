"""The Sponsor core: the existing member that opened a join window (sans-IO, RFC-NOTES §5.5).

Message flow (J = joiner, S = sponsor)::

    J -> S  hello    {v, window, nonce_j, sas}
    S -> J  offer    {nonce_s, mesh, commit = H(sid, Ya, ADa), sas}        S commits first
    J -> S  share    {Yb, ADb}
    S -> J  reveal   {Ya, ADa, tag_a}                                      S confirms first
    J -> S  confirm  {tag_b}                      -> both show the SAS and ask their operator
    J -> S  approve                               (the joiner's operator said yes)
    S -> J  bundle   sealed(s2j, 0)               (only after both operators said yes)
    J -> S  endpoints sealed(j2s, 0)
    S -> J  done     sealed(s2j, 1)               -> both emit Joined
    either  abort    {reason}                     at any point, then close
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, ClassVar

from . import _messages as m
from ._bundle import JoinerBundle, MemberRecord, SponsorBundle, open_box, seal_box
from ._core import CeremonyCore
from ._derive import (
    PartyInfo,
    bundle_keys,
    commitment,
    decode_ad,
    encode_ad,
    make_ci,
    make_sid,
    render_sas,
    sas_value,
    transcript_hash,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    AcceptWindow,
    ConfirmSas,
    FailureReason,
    Grant,
    Joined,
    JoinRequested,
    SasReady,
    SpendCode,
    SpendRequested,
)
from .cpace import CPace, CPaceError, Role

__all__ = ["DEFAULT_SAS_DIGITS", "Sponsor", "SponsorState"]

DEFAULT_SAS_DIGITS = 7


class SponsorState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    WINDOW_CHECK = "window_check"
    AWAIT_SHARE = "await_share"
    SPEND_CHECK = "spend_check"
    AWAIT_CONFIRM = "await_confirm"
    SAS = "sas"
    AWAIT_ENDPOINTS = "await_endpoints"
    JOINED = "joined"
    FAILED = "failed"
    ERROR = "error"


class Sponsor(CeremonyCore[SponsorState]):
    """One ceremony on the sponsor side, for one connection.

    ``nonce`` (16 bytes) and ``scalar`` (32 bytes, CPace) are the injected randomness; the
    adapter draws them from ``secrets``. ``sas_modulus`` weakens the SAS for tests only.
    """

    TERMINAL: ClassVar[frozenset[Any]] = frozenset(
        {SponsorState.JOINED, SponsorState.FAILED, SponsorState.ERROR}
    )
    ERROR: ClassVar[Any] = SponsorState.ERROR
    FAILED: ClassVar[Any] = SponsorState.FAILED

    def __init__(
        self,
        *,
        me: PartyInfo,
        mesh_id: bytes,
        nonce: bytes,
        scalar: bytes | None = None,
        now: float,
        sas_digits: int = DEFAULT_SAS_DIGITS,
        sas_modulus: int | None = None,
        step_timeout: float = 60.0,
        sas_timeout: float = 120.0,
        pre_confirm_timeout: float | None = None,
        spend_check: bool = False,
    ) -> None:
        super().__init__(
            SponsorState.AWAIT_HELLO, now=now, step_timeout=step_timeout, sas_timeout=sas_timeout
        )
        if len(nonce) != m.NONCE:
            raise LocalProtocolError("the sponsor nonce is 16 bytes")
        self.me = me
        self.mesh_id = mesh_id
        self._nonce = nonce
        self._scalar = scalar
        self._own_digits = sas_digits
        self._sas_modulus = sas_modulus
        self._ad = encode_ad(me)
        self._hello: m.Hello | None = None
        self._cpace: CPace | None = None
        self._isk = b""
        self._peer: PartyInfo | None = None
        self._spent = False
        self._local_ok = False
        self._remote_ok = False
        self._grant: Grant | None = None
        self._keys = (b"", b"")
        self.digits = sas_digits
        # Until the joiner has proved the code (its key confirmation), every wait is short: a
        # real joiner's software answers at once, and a peer that only holds a connection must
        # not hold the window (RFC-NOTES §5.7). None keeps the step timeout.
        self.pre_confirm_timeout = pre_confirm_timeout or step_timeout
        self._spend_check = spend_check
        self._share: tuple[m.Share, bytes] | None = None
        self._deadline = now + self.pre_confirm_timeout

    @property
    def peer(self) -> PartyInfo | None:
        """The joiner's name and keys as bound in CPace (known after its share arrived)."""
        return self._peer

    def _code_spent(self) -> bool:
        return self._spent

    def _unproven(self) -> bool:
        return self.state is SponsorState.AWAIT_CONFIRM

    # --- messages from the joiner ----------------------------------------------------------------

    def _on_hello(self, message: m.Hello, payload: bytes) -> None:
        if message.version != m.VERSION:
            self._fail(FailureReason.VERSION, tell_peer=True)
            return
        self._hello = message
        self._transcript.append(payload)
        self.digits = max(self._own_digits, message.sas_digits)
        self._goto(SponsorState.WINDOW_CHECK, timeout=None)
        self._events.append(JoinRequested(window=message.window))

    def _on_share(self, message: m.Share, payload: bytes) -> None:
        assert self._hello is not None
        # A malformed AD is the peer's protocol error, found while its message is read.
        self._peer = decode_ad(message.ad)
        if self._spend_check:
            self._share = (message, payload)
            self._goto(SponsorState.SPEND_CHECK, timeout=None)
            self._events.append(SpendRequested(window=self._hello.window))
            return
        self._spend(message, payload)

    def _spend_code(self, event: SpendCode) -> None:
        assert self._share is not None
        self._spend(*self._share)

    def _spend(self, message: m.Share, payload: bytes) -> None:
        assert self._cpace is not None
        self._transcript.append(payload)
        self._spent = True  # from here on the code has been guessed against
        try:
            self._isk = self._cpace.finish(message.y, peer_ad=message.ad)
            tag = self._cpace.tag()
        except CPaceError:
            self._fail(FailureReason.WRONG_CODE, tell_peer=True)
            return
        self._transcript.append(
            self._send_message(m.Reveal(y=self._cpace.share, ad=self._ad, tag=tag))
        )
        self._goto(SponsorState.AWAIT_CONFIRM, timeout=self.pre_confirm_timeout)

    def _on_confirm(self, message: m.Confirm, payload: bytes) -> None:
        assert self._cpace is not None and self._peer is not None
        if not self._cpace.verify(message.tag):
            self._fail(FailureReason.WRONG_CODE, tell_peer=True)
            return
        self._transcript.append(payload)
        th = transcript_hash(self._transcript)
        self._keys = bundle_keys(self._isk, th)
        modulus = self._sas_modulus or 10**self.digits
        sas = render_sas(sas_value(self._isk, th, modulus), len(str(modulus - 1)))
        self._goto(SponsorState.SAS, timeout=self.sas_timeout)
        self._events.append(SasReady(sas=sas, digits=self.digits, peer=self._peer))

    def _on_approve(self, message: m.Approve, payload: bytes) -> None:
        if self._remote_ok:
            raise RemoteProtocolError("approve sent twice")
        self._remote_ok = True
        self._maybe_send_bundle()

    def _on_endpoints(self, message: m.JoinerBundleBox, payload: bytes) -> None:
        assert self._peer is not None and self._grant is not None
        joiner = JoinerBundle.from_bytes(open_box(self._keys[1], 0, "endpoints", message.box))
        member = MemberRecord(
            name=self._peer.name,
            identity=self._peer.identity,
            wg=self._peer.wg,
            address=self._grant.address,
            endpoints=joiner.endpoints,
            roles=self._grant.roles,
        )
        roster = (*self._grant.roster, member)
        self._send_message(m.Done(box=seal_box(self._keys[0], 1, "done", b"\x80")))
        self._goto(SponsorState.JOINED, timeout=None)
        self._events.append(
            Joined(
                mesh_id=self.mesh_id,
                cidr=self._grant.cidr,
                member=member,
                sponsor=self.me.identity,
                roster=roster,
            )
        )

    # --- application decisions -------------------------------------------------------------------

    def _accept_window(self, event: AcceptWindow) -> None:
        assert self._hello is not None
        if event.code.window != self._hello.window:
            raise LocalProtocolError("accepted a code for a different window")
        sid = make_sid(self._hello.nonce, self._nonce)
        ci = make_ci(self.mesh_id, self._hello.window)
        self._cpace = CPace(
            Role.INITIATOR, event.code.prs, ci=ci, sid=sid, ad=self._ad, scalar=self._scalar
        )
        offer = m.Offer(
            nonce=self._nonce,
            mesh=self.mesh_id,
            commit=commitment(sid, self._cpace.share, self._ad),
            sas_digits=self._own_digits,
        )
        self._transcript.append(self._send_message(offer))
        self._goto(SponsorState.AWAIT_SHARE, timeout=self.pre_confirm_timeout)

    def _confirm_sas(self, event: ConfirmSas) -> None:
        if not event.accept:
            self._fail(FailureReason.SAS_REJECTED, tell_peer=True)
            return
        if event.grant is None:
            raise LocalProtocolError("the sponsor accepts with a Grant (address, roster)")
        if self._local_ok:
            raise LocalProtocolError("the SAS was already confirmed")
        self._local_ok = True
        self._grant = event.grant
        self._maybe_send_bundle()

    def _maybe_send_bundle(self) -> None:
        if not (self._local_ok and self._remote_ok):
            return
        assert self._grant is not None
        bundle = SponsorBundle(
            mesh_id=self.mesh_id,
            cidr=self._grant.cidr,
            address=self._grant.address,
            roles=self._grant.roles,
            sponsor=self.me.identity,
            roster=self._grant.roster,
        )
        box = seal_box(self._keys[0], 0, "bundle", bundle.to_bytes())
        self._send_message(m.SponsorBundleBox(box=box))
        self._goto(SponsorState.AWAIT_ENDPOINTS, timeout=self.step_timeout)

    ON_MESSAGE: ClassVar[dict[tuple[Any, type], Callable[..., None]]] = {
        (SponsorState.AWAIT_HELLO, m.Hello): _on_hello,
        (SponsorState.AWAIT_SHARE, m.Share): _on_share,
        (SponsorState.AWAIT_CONFIRM, m.Confirm): _on_confirm,
        (SponsorState.SAS, m.Approve): _on_approve,
        (SponsorState.AWAIT_ENDPOINTS, m.JoinerBundleBox): _on_endpoints,
    }
    ON_EVENT: ClassVar[dict[tuple[Any, type], Callable[..., None]]] = {
        (SponsorState.WINDOW_CHECK, AcceptWindow): _accept_window,
        (SponsorState.SPEND_CHECK, SpendCode): _spend_code,
        (SponsorState.SAS, ConfirmSas): _confirm_sas,
    }
