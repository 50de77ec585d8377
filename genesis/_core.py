"""Plumbing shared by the Sponsor and Joiner cores: queues, timers and the ERROR rule.

A role subclasses :class:`CeremonyCore`, declares its ``State`` enum and two transition tables —
``(state, message type) -> handler`` for what the peer sends and ``(state, event type) ->
handler`` for what the application sends. A received message with no transition is a
:class:`RemoteProtocolError`; an application event with no transition is a
:class:`LocalProtocolError`; either leaves the core in ERROR (RFC-NOTES §5.5). The framing, the
outbox, the event queue and that rule are the base every PPN protocol shares
(:mod:`ppn._framing`); what is the ceremony's own is here: time, the ``abort`` message and the
:class:`Failed` event the application sees on any end but success.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from ppn._framing import FramedConnection

from . import _messages as m
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import Abort, Failed, FailureReason

__all__ = ["STEP_TIMEOUT", "SAS_TIMEOUT", "CeremonyCore", "Event"]

STEP_TIMEOUT = 60.0
SAS_TIMEOUT = 120.0

Event = Any
S = TypeVar("S", bound=enum.Enum)


class CeremonyCore(FramedConnection[S, Event]):
    """Sans-IO base: feed bytes with :meth:`receive_data`, drain :meth:`next_event` and
    :meth:`data_to_send`; pass the current time as ``now`` and call :meth:`handle_timer` at
    :meth:`get_timer`."""

    REMOTE_ERROR = RemoteProtocolError
    LOCAL_ERROR = LocalProtocolError
    ON_MESSAGE: ClassVar[Mapping[tuple[Any, type], Callable[..., None]]]
    ON_EVENT: ClassVar[Mapping[tuple[Any, type], Callable[..., None]]]
    TERMINAL: ClassVar[frozenset[Any]]
    ERROR: ClassVar[Any]
    FAILED: ClassVar[Any]

    def __init__(
        self,
        initial: S,
        *,
        now: float,
        step_timeout: float = STEP_TIMEOUT,
        sas_timeout: float = SAS_TIMEOUT,
    ) -> None:
        # No frame is read once the ceremony has ended, whichever way.
        super().__init__(initial, error=self.ERROR, max_frame=m.MAX_FRAME, stop=self.TERMINAL)
        self._deadline: float | None = None
        self._now = now
        self.step_timeout = step_timeout
        self.sas_timeout = sas_timeout
        self._transcript: list[bytes] = []

    # --- public sans-IO surface ----------------------------------------------------------------

    @property
    def wants_close(self) -> bool:
        """True once nothing more will be sent: flush :meth:`data_to_send`, then close."""
        return self.state in self.TERMINAL

    def get_timer(self) -> float | None:
        return None if self.state in self.TERMINAL else self._deadline

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.state in self.TERMINAL or self._deadline is None or now < self._deadline:
            return
        if self._unproven():
            self._fail(FailureReason.WRONG_CODE, tell_peer=True, detail=self.UNPROVEN_DETAIL)
            return
        self._fail(FailureReason.TIMEOUT, tell_peer=True)

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the peer (``b""`` = the peer closed). Raises RemoteProtocolError."""
        self._now = now
        self._receive_frames(data)

    def send(self, event: Event, now: float) -> None:
        """An application decision (see the role's ON_EVENT table). Raises LocalProtocolError."""
        self._now = now
        if isinstance(event, Abort) and self.state not in self.TERMINAL:
            self._fail(event.reason, tell_peer=True)
            return
        self._lookup(self.ON_EVENT, type(event), remote=False)(self, event)

    # --- the framing base's hooks --------------------------------------------------------------

    def _receive_after_stop(self, data: bytes) -> None:
        if self.state is self.ERROR:
            raise RemoteProtocolError("the ceremony already failed")
        # anything after a successful or failed end is ignored

    def _on_frame(self, payload: bytes) -> None:
        message = m.decode_message(payload)
        if isinstance(message, m.Abort):
            self._fail(FailureReason.from_token(message.reason), tell_peer=False, by_peer=True)
            return
        self._lookup(self.ON_MESSAGE, type(message), remote=True)(self, message, payload)

    def _tell_peer(self, error: Exception) -> None:
        # A protocol error ends the ceremony: tell the peer and the application why.
        self._deadline = None
        if self.state not in self.TERMINAL:
            self._send_message(m.Abort(reason=FailureReason.PROTOCOL.token))
            self._events.append(
                Failed(reason=FailureReason.PROTOCOL, code_spent=self._code_spent())
            )

    # --- helpers for the roles -----------------------------------------------------------------

    def _send_message(self, message: m.Message) -> bytes:
        payload = m.encode_message(message)
        self._write(payload)
        return payload

    def _goto(self, state: S, *, timeout: float | None) -> None:
        self.state = state
        self._deadline = None if timeout is None else self._now + timeout

    def _code_spent(self) -> bool:
        return False

    def _fail(
        self, reason: FailureReason, *, tell_peer: bool, by_peer: bool = False, detail: str = ""
    ) -> None:
        if tell_peer:
            self._send_message(m.Abort(reason=reason.token))
        self.state = self.FAILED
        self._deadline = None
        self._events.append(
            Failed(reason=reason, by_peer=by_peer, code_spent=self._code_spent(), detail=detail)
        )

    # A peer that received our CPace share, then went silent or away before proving the code,
    # looks exactly like a guesser: the operator hears "interference or a wrong code", not
    # "vanished" (issue 14, finding 11; RFC-NOTES §5.8).
    UNPROVEN_DETAIL = (
        "the other side took the code's one guess and left without proving it knew the code"
    )

    def _unproven(self) -> bool:
        """True in the states where the peer holds our share but has not confirmed the key."""
        return False

    def _on_eof(self) -> None:
        if self._unproven():
            self._fail(FailureReason.WRONG_CODE, tell_peer=False, detail=self.UNPROVEN_DETAIL)
            return
        self._fail(FailureReason.PEER_VANISHED, tell_peer=False)
