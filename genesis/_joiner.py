"""The Joiner core: the new node that typed the code (sans-IO, RFC-NOTES §5.5).

See :mod:`genesis._sponsor` for the message flow. The joiner speaks second in CPace, so it
sends its share only after it holds the sponsor's commitment, and checks the revealed share
against that commitment before anything else.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
from collections.abc import Callable
from typing import Any, ClassVar

from . import _messages as m
from ._bundle import JoinerBundle, MemberRecord, SponsorBundle, open_box, seal_box
from ._code import JoinCode
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
from ._events import ConfirmSas, FailureReason, Joined, SasReady
from ._sponsor import DEFAULT_SAS_DIGITS
from .cpace import CPace, CPaceError, Role

__all__ = ["Joiner", "JoinerState"]


class JoinerState(enum.Enum):
    AWAIT_OFFER = "await_offer"
    AWAIT_REVEAL = "await_reveal"
    SAS = "sas"
    AWAIT_BUNDLE = "await_bundle"
    AWAIT_DONE = "await_done"
    JOINED = "joined"
    FAILED = "failed"
    ERROR = "error"


class Joiner(CeremonyCore[JoinerState]):
    """One ceremony on the joiner side. The hello is queued at construction.

    ``nonce`` (16 bytes) and ``scalar`` (32 bytes, CPace) are the injected randomness.
    """

    TERMINAL: ClassVar[frozenset[Any]] = frozenset(
        {JoinerState.JOINED, JoinerState.FAILED, JoinerState.ERROR}
    )
    ERROR: ClassVar[Any] = JoinerState.ERROR
    FAILED: ClassVar[Any] = JoinerState.FAILED

    def __init__(
        self,
        *,
        me: PartyInfo,
        code: JoinCode,
        endpoints: tuple[str, ...] = (),
        nonce: bytes,
        scalar: bytes | None = None,
        now: float,
        sas_digits: int = DEFAULT_SAS_DIGITS,
        sas_modulus: int | None = None,
        step_timeout: float = 60.0,
        sas_timeout: float = 120.0,
    ) -> None:
        super().__init__(
            JoinerState.AWAIT_OFFER, now=now, step_timeout=step_timeout, sas_timeout=sas_timeout
        )
        if len(nonce) != m.NONCE:
            raise LocalProtocolError("the joiner nonce is 16 bytes")
        self.me = me
        self.code = code
        self.endpoints = endpoints
        self._nonce = nonce
        self._scalar = scalar
        self._own_digits = sas_digits
        self._sas_modulus = sas_modulus
        self._ad = encode_ad(me)
        self._offer: m.Offer | None = None
        self._sid = b""
        self._cpace: CPace | None = None
        self._isk = b""
        self._peer: PartyInfo | None = None
        self._keys = (b"", b"")
        self._bundle: SponsorBundle | None = None
        self._member: MemberRecord | None = None
        self._sas_deadline = 0.0
        self.digits = sas_digits
        hello = m.Hello(window=code.window, nonce=nonce, sas_digits=sas_digits)
        self._transcript.append(self._send_message(hello))
        self._goto(JoinerState.AWAIT_OFFER, timeout=step_timeout)

    @property
    def peer(self) -> PartyInfo | None:
        """The sponsor's name and keys as bound in CPace (known after its reveal)."""
        return self._peer

    def _code_spent(self) -> bool:
        return self._cpace is not None

    def _unproven(self) -> bool:
        return self.state is JoinerState.AWAIT_REVEAL

    # --- messages from the sponsor ---------------------------------------------------------------

    def _on_offer(self, message: m.Offer, payload: bytes) -> None:
        self._offer = message
        self._transcript.append(payload)
        self.digits = max(self._own_digits, message.sas_digits)
        self._sid = make_sid(self._nonce, message.nonce)
        ci = make_ci(message.mesh, self.code.window)
        self._cpace = CPace(
            Role.RESPONDER, self.code.prs, ci=ci, sid=self._sid, ad=self._ad, scalar=self._scalar
        )
        self._transcript.append(self._send_message(m.Share(y=self._cpace.share, ad=self._ad)))
        self._goto(JoinerState.AWAIT_REVEAL, timeout=self.step_timeout)

    def _on_reveal(self, message: m.Reveal, payload: bytes) -> None:
        assert self._cpace is not None and self._offer is not None
        expected = commitment(self._sid, message.y, message.ad)
        if not hmac.compare_digest(expected, self._offer.commit):
            self._fail(FailureReason.WRONG_CODE, tell_peer=True)
            return
        self._peer = decode_ad(message.ad)
        self._transcript.append(payload)
        try:
            self._isk = self._cpace.finish(message.y, peer_ad=message.ad)
            ok = self._cpace.verify(message.tag)
            tag = self._cpace.tag()
        except CPaceError:
            ok = False
        if not ok:
            self._fail(FailureReason.WRONG_CODE, tell_peer=True)
            return
        self._transcript.append(self._send_message(m.Confirm(tag=tag)))
        th = transcript_hash(self._transcript)
        self._keys = bundle_keys(self._isk, th)
        modulus = self._sas_modulus or 10**self.digits
        sas = render_sas(sas_value(self._isk, th, modulus), len(str(modulus - 1)))
        self._goto(JoinerState.SAS, timeout=self.sas_timeout)
        self._sas_deadline = self._now + self.sas_timeout
        self._events.append(SasReady(sas=sas, digits=self.digits, peer=self._peer))

    def _on_bundle(self, message: m.SponsorBundleBox, payload: bytes) -> None:
        assert self._peer is not None and self._offer is not None
        bundle = SponsorBundle.from_bytes(open_box(self._keys[0], 0, "bundle", message.box))
        self._check_bundle(bundle)
        self._bundle = bundle
        self._member = MemberRecord(
            name=self.me.name,
            identity=self.me.identity,
            wg=self.me.wg,
            address=bundle.address,
            endpoints=self.endpoints,
            roles=bundle.roles,
        )
        box = seal_box(
            self._keys[1], 0, "endpoints", JoinerBundle(endpoints=self.endpoints).to_bytes()
        )
        self._send_message(m.JoinerBundleBox(box=box))
        self._goto(JoinerState.AWAIT_DONE, timeout=self.step_timeout)

    def _check_bundle(self, bundle: SponsorBundle) -> None:
        """The bundle must agree with what CPace bound: the mesh id of CI, the sponsor's keys
        of ADa, and a free address for us inside the CIDR."""
        assert self._peer is not None and self._offer is not None
        if bundle.mesh_id != self._offer.mesh or bundle.sponsor != self._peer.identity:
            raise RemoteProtocolError("the join bundle names another mesh or sponsor")
        sponsors = [r for r in bundle.roster if r.identity == self._peer.identity]
        if len(sponsors) != 1 or sponsors[0].wg != self._peer.wg:
            raise RemoteProtocolError("the join bundle's sponsor keys differ from the ones bound")
        network = ipaddress.ip_network(bundle.cidr)
        address = ipaddress.ip_address(bundle.address)
        if address not in network or address in (
            network.network_address,
            network.broadcast_address,
        ):
            raise RemoteProtocolError("the assigned address is outside the mesh")
        seen: set[Any] = set()
        for record in bundle.roster:
            for key in (
                ("n", record.name),
                ("i", record.identity),
                ("w", record.wg),
                ("a", record.address),
            ):
                if key in seen:
                    raise RemoteProtocolError("the roster repeats a member")
                seen.add(key)
        mine = {
            ("n", self.me.name),
            ("i", self.me.identity),
            ("w", self.me.wg),
            ("a", bundle.address),
        }
        if mine & seen:
            raise RemoteProtocolError("the roster already holds our name, keys or address")

    def _on_done(self, message: m.Done, payload: bytes) -> None:
        assert self._bundle is not None and self._member is not None
        open_box(self._keys[0], 1, "done", message.box)
        self._goto(JoinerState.JOINED, timeout=None)
        self._events.append(
            Joined(
                mesh_id=self._bundle.mesh_id,
                cidr=self._bundle.cidr,
                member=self._member,
                sponsor=self._bundle.sponsor,
                roster=(*self._bundle.roster, self._member),
            )
        )

    # --- application decisions -------------------------------------------------------------------

    def _confirm_sas(self, event: ConfirmSas) -> None:
        if not event.accept:
            self._fail(FailureReason.SAS_REJECTED, tell_peer=True)
            return
        self._send_message(m.Approve())
        # The sponsor's operator may take the rest of the SAS time; then one step for the bundle.
        self.state = JoinerState.AWAIT_BUNDLE
        self._deadline = self._sas_deadline + self.step_timeout

    ON_MESSAGE: ClassVar[dict[tuple[Any, type], Callable[..., None]]] = {
        (JoinerState.AWAIT_OFFER, m.Offer): _on_offer,
        (JoinerState.AWAIT_REVEAL, m.Reveal): _on_reveal,
        (JoinerState.AWAIT_BUNDLE, m.SponsorBundleBox): _on_bundle,
        (JoinerState.AWAIT_DONE, m.Done): _on_done,
    }
    ON_EVENT: ClassVar[dict[tuple[Any, type], Callable[..., None]]] = {
        (JoinerState.SAS, ConfirmSas): _confirm_sas,
    }
