"""Plumbing shared by the Sponsor and Joiner cores: framing, queues, timers and the ERROR rule.

A role subclasses :class:`CeremonyCore`, declares its ``State`` enum and two transition tables —
``(state, message type) -> handler`` for what the peer sends and ``(state, event type) ->
handler`` for what the application sends. A received message with no transition is a
:class:`RemoteProtocolError`; an application event with no transition is a
:class:`LocalProtocolError`; either leaves the core in ERROR (RFC-NOTES §5.5).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from ppn import wire

from . import _messages as m
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import Abort, Failed, FailureReason

__all__ = ["STEP_TIMEOUT", "SAS_TIMEOUT", "CeremonyCore", "Event"]

STEP_TIMEOUT = 60.0
SAS_TIMEOUT = 120.0

Event = Any
S = TypeVar("S", bound=enum.Enum)


class CeremonyCore(Generic[S]):
    """Sans-IO base: feed bytes with :meth:`receive_data`, drain :meth:`next_event` and
    :meth:`data_to_send`; pass the current time as ``now`` and call :meth:`handle_timer` at
    :meth:`get_timer`."""

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
        self._state: S = initial
        self._decoder = wire.FrameDecoder(max_size=m.MAX_FRAME)
        self._outgoing = bytearray()
        self._events: deque[Event] = deque()
        self._deadline: float | None = None
        self._now = now
        self.step_timeout = step_timeout
        self.sas_timeout = sas_timeout
        self._transcript: list[bytes] = []
        self._closed = False

    # --- public sans-IO surface ----------------------------------------------------------------

    @property
    def state(self) -> S:
        return self._state

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    @property
    def wants_close(self) -> bool:
        """True once nothing more will be sent: flush :meth:`data_to_send`, then close."""
        return self._state in self.TERMINAL

    def get_timer(self) -> float | None:
        return None if self._state in self.TERMINAL else self._deadline

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._state in self.TERMINAL or self._deadline is None or now < self._deadline:
            return
        self._fail(FailureReason.TIMEOUT, tell_peer=True)

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the peer (``b""`` = the peer closed). Raises RemoteProtocolError."""
        self._now = now
        if self._state == self.ERROR:
            raise RemoteProtocolError("the ceremony already failed")
        if self._state in self.TERMINAL:
            return  # anything after the end is ignored
        self._decoder.feed(data)
        try:
            while self._state not in self.TERMINAL:
                payload = self._decoder.next_frame()
                if payload is None:
                    break
                self._on_payload(payload)
            if self._state not in self.TERMINAL and self._decoder.at_eof:
                self._fail(FailureReason.PEER_VANISHED, tell_peer=False)
        except wire.FrameError as exc:
            self._protocol_error(FailureReason.PROTOCOL)
            raise RemoteProtocolError(str(exc)) from exc
        except RemoteProtocolError:
            self._protocol_error(FailureReason.PROTOCOL)
            raise

    def send(self, event: Event, now: float) -> None:
        """An application decision (see the role's ON_EVENT table). Raises LocalProtocolError."""
        self._now = now
        if isinstance(event, Abort) and self._state not in self.TERMINAL:
            self._fail(event.reason, tell_peer=True)
            return
        handler = self.ON_EVENT.get((self._state, type(event)))
        if handler is None:
            previous = self._state
            self._state = self.ERROR
            raise LocalProtocolError(f"cannot send {type(event).__name__} in state {previous.name}")
        handler(self, event)

    # --- helpers for the roles -----------------------------------------------------------------

    def _on_payload(self, payload: bytes) -> None:
        message = m.decode_message(payload)
        if isinstance(message, m.Abort):
            self._fail(FailureReason.from_token(message.reason), tell_peer=False, by_peer=True)
            return
        handler = self.ON_MESSAGE.get((self._state, type(message)))
        if handler is None:
            raise RemoteProtocolError(f"unexpected {type(message).__name__} in {self._state.name}")
        handler(self, message, payload)

    def _send_message(self, message: m.Message) -> bytes:
        payload = m.encode_message(message)
        self._outgoing += wire.encode_frame(payload, max_size=m.MAX_FRAME)
        return payload

    def _goto(self, state: S, *, timeout: float | None) -> None:
        self._state = state
        self._deadline = None if timeout is None else self._now + timeout

    def _code_spent(self) -> bool:
        return False

    def _fail(self, reason: FailureReason, *, tell_peer: bool, by_peer: bool = False) -> None:
        if tell_peer:
            self._send_message(m.Abort(reason=reason.token))
        self._state = self.FAILED
        self._deadline = None
        self._events.append(Failed(reason=reason, by_peer=by_peer, code_spent=self._code_spent()))

    def _protocol_error(self, reason: FailureReason) -> None:
        if self._state not in self.TERMINAL:
            self._send_message(m.Abort(reason=reason.token))
            self._events.append(Failed(reason=reason, code_spent=self._code_spent()))
        self._state = self.ERROR
        self._deadline = None
