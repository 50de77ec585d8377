"""The skeleton every framed protocol core shares, sans-IO: genesis, PPN control, PSP, aggregation.

A core built on :class:`FramedConnection` holds a frame decoder (:mod:`ppn.wire`), an outbox of
framed bytes, a queue of events for the application and an Enum ``state``. The protocol adds
what is its own: how a payload becomes a message (:meth:`_on_frame`), what the end of the
stream means (:meth:`_on_eof`) and its transition tables, read with :meth:`_lookup` and
:meth:`_transition`.

One rule for a broken protocol, the same in all four:

* the **peer** broke it (a bad frame, a malformed message, a message the state does not allow):
  :meth:`_violation` tells the peer if the protocol says how (:meth:`_tell_peer`), puts the core
  in its ERROR state and raises the protocol's RemoteProtocolError;
* the **application** broke it (sent what the state does not allow): :meth:`_misuse` puts the
  core in ERROR and raises its LocalProtocolError;
* a message that is wrong only *now* (no credit yet, an id that is not current) is a violation
  when the peer sent it, and a refusal that leaves the connection usable when the application
  tried it: :meth:`_refuse`.

Once in ERROR, more bytes raise the RemoteProtocolError again (:meth:`_receive_after_stop`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Generic, NoReturn, TypeVar

from . import wire

__all__ = ["ConnectionClosed", "FramedConnection"]

S = TypeVar("S", bound=Enum)
E = TypeVar("E")
V = TypeVar("V")


@dataclass(frozen=True, kw_only=True)
class ConnectionClosed:
    """The peer closed its side at a frame boundary."""


class FramedConnection(Generic[S, E]):
    """Bytes in through :meth:`_receive_frames`, events out with :meth:`next_event`, bytes out
    with :meth:`data_to_send`. Each protocol names its public ``receive_data`` (genesis also
    takes the time) and its ``send``.

    ``stop`` lists the states in which no further frame is read (ERROR always is one): the
    genesis ceremony stops at its end, PPN control when closed, PSP only on error.
    """

    REMOTE_ERROR: ClassVar[type[Exception]]
    LOCAL_ERROR: ClassVar[type[Exception]]
    FRAME_ERROR_PREFIX: ClassVar[str] = ""

    def __init__(self, initial: S, *, error: S, max_frame: int, stop: Iterable[S] = ()) -> None:
        self.state: S = initial
        self._error_state = error
        # A tuple, not a set: ``in`` tests identity first, while a set would hash the member, and
        # Enum.__hash__ is Python code (about 0.3 us against 0.05 us, paid on every frame).
        self._stop: tuple[S, ...] = (error, *(s for s in stop if s is not error))
        self._max_frame = max_frame
        self._decoder = wire.FrameDecoder(max_size=max_frame)
        self._out = bytearray()
        self._events: deque[E] = deque()

    # --- the application's side ----------------------------------------------------------------

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> E | None:
        return self._events.popleft() if self._events else None

    def has_events(self) -> bool:
        """True if :meth:`next_event` has something (adapters peek without taking it)."""
        return bool(self._events)

    # --- for the protocols ---------------------------------------------------------------------

    def _receive_frames(self, data: bytes) -> None:
        """Feed bytes from the peer (``b""`` = it closed) and handle every complete frame."""
        if self.state in self._stop:
            self._receive_after_stop(data)
            return
        decoder = self._decoder
        decoder.feed(data)
        stop = self._stop
        try:
            while self.state not in stop:
                payload = decoder.next_frame()
                if payload is None:
                    break
                self._on_frame(payload)
        except wire.WireError as exc:
            self._violation(self.REMOTE_ERROR(f"{self.FRAME_ERROR_PREFIX}{exc}"))
        except self.REMOTE_ERROR as exc:
            self._violation(exc)
        if decoder.at_eof and self.state not in stop:
            self._on_eof()

    def _on_frame(self, payload: bytes) -> None:
        """Decode one payload and act on it; raise REMOTE_ERROR (or call _violation) if bad."""
        raise NotImplementedError

    def _on_eof(self) -> None:
        """The peer closed at a frame boundary while the core was not stopped."""
        raise NotImplementedError

    def _receive_after_stop(self, data: bytes) -> None:
        """Bytes arrived in a stop state. By default only ERROR refuses them; others ignore."""
        if self.state is self._error_state:
            raise self.REMOTE_ERROR("the connection already failed")

    def _write(self, payload: bytes) -> None:
        """Frame ``payload`` into the outbox (a wire.FrameError if the peer would refuse it)."""
        self._out += wire.encode_frame(payload, max_size=self._max_frame)

    def _tell_peer(self, error: Exception) -> None:
        """Hook: the first violation, before ERROR; queue whatever the protocol sends then."""

    def _violation(self, error: Exception) -> NoReturn:
        """The peer broke the protocol: tell it (once), enter ERROR, raise ``error``."""
        if self.state is not self._error_state:
            self._tell_peer(error)
        self.state = self._error_state
        raise error

    def _misuse(self, why: str) -> NoReturn:
        """The application broke the protocol: enter ERROR and raise LOCAL_ERROR."""
        self.state = self._error_state
        raise self.LOCAL_ERROR(why)

    def _refuse(self, why: str, *, remote: bool, local: str | None = None) -> NoReturn:
        """Wrong only now: a violation from the peer; from the application a refusal (``local``
        if it reads better) that leaves the state as it was."""
        if remote:
            self._violation(self.REMOTE_ERROR(why))
        raise self.LOCAL_ERROR(local or why)

    def _lookup(self, table: Mapping[tuple[S, Any], V], key: Any, *, remote: bool) -> V:
        """``table[(state, key)]``; a missing entry is a violation (remote) or a misuse."""
        found = table.get((self.state, key))
        if found is None:
            self._unexpected(key, remote=remote)
        return found

    def _transition(self, table: Mapping[tuple[S, Any], S], key: Any, *, remote: bool) -> None:
        """Move to ``table[(state, key)]`` (as :meth:`_lookup`; written out, it is per message)."""
        nxt = table.get((self.state, key))
        if nxt is None:
            self._unexpected(key, remote=remote)
        self.state = nxt

    def _unexpected(self, key: Any, *, remote: bool) -> NoReturn:
        name = key.__name__ if isinstance(key, type) else str(key)
        where = f"{name} in state {self.state.value}"
        if remote:
            self._violation(self.REMOTE_ERROR(f"peer sent {where}"))
        self._misuse(f"cannot send {where}")
