"""Spawn dispatch: the fleet controller asks one vm-host to launch, stop, start or delete a VM
(RFC-NOTES §8.7).

One TCP connection per request, three frames:

1. host -> controller ``{"t": "challenge", "node_id": str, "nonce": bin(16)}``
2. controller -> host ``{"body": bin, "key": bin(32), "sig": bin(64)}`` where ``body`` is the
   canonical map ``{"v": 1, "t": "spawn", "node_id", "nonce", "request_id": bin(16), "vm": spec}``
   (a create) or ``{"v": 1, "t": "stop" | "start" | "delete", "node_id", "nonce",
   "request_id": bin(16), "name": str}`` (an action on an existing VM), and ``sig`` is Ed25519
   by the controller's identity key over ``SPAWN_CONTEXT || body``;
3. host -> controller ``{"t": "accepted" | "refused", "request_id": bin(16), "reason": str}``.

The fresh nonce from the host binds the signed request to this connection, so a recorded request
cannot be replayed; the host accepts only the key its directory names as the fleet controller.
"Accepted" means the provisioner was started; its outcome travels in the host's next heartbeat.

Both sides are sans-IO cores: :class:`SpawnServer` (the vm-host) and :class:`SpawnClient` (the
controller). A missing transition raises LocalProtocolError; bad input RemoteProtocolError; either
leaves the core in ERROR.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .. import wire
from .._errors import LocalProtocolError, RemoteProtocolError
from .._framing import FramedConnection
from .._keys import IdentityKey, verify_signature
from ._codec import expect_map, unpack_message
from ._directory import MemberDirectory
from ._vm import REQUEST_ID_SIZE, VM_NAME, VmAction, VmSpec

__all__ = [
    "MAX_SPAWN_FRAME",
    "NONCE_SIZE",
    "SPAWN_CONTEXT",
    "SpawnAnswer",
    "SpawnAuthError",
    "SpawnClient",
    "SpawnDecision",
    "SpawnRequested",
    "SpawnServer",
    "SpawnState",
    "VmActionRequested",
]

SPAWN_CONTEXT = b"ppn fleet spawn v1\x00"
NONCE_SIZE = 16
MAX_SPAWN_FRAME = 4096
MAX_REASON = 200


class SpawnAuthError(RemoteProtocolError):
    """A spawn request not signed by the fleet controller for this connection. Detail-free."""

    def __init__(self) -> None:
        super().__init__("spawn request authentication failed")


class SpawnState(enum.Enum):
    AWAIT_CHALLENGE = "await-challenge"  # client only
    AWAIT_REQUEST = "await-request"  # server only
    AWAIT_DECISION = "await-decision"  # server: the adapter decides accept/refuse
    AWAIT_ANSWER = "await-answer"  # client only
    DONE = "done"
    ERROR = "error"


@dataclass(frozen=True, kw_only=True)
class SpawnRequested:
    """Server event: the controller asks for ``spec`` under ``request_id``."""

    request_id: bytes
    spec: VmSpec


@dataclass(frozen=True, kw_only=True)
class VmActionRequested:
    """Server event: the controller asks to stop, start or delete the VM named ``name``."""

    request_id: bytes
    action: VmAction
    name: str


@dataclass(frozen=True, kw_only=True)
class SpawnDecision:
    """Server input: accept (provisioner started) or refuse with a reason."""

    request_id: bytes
    accepted: bool
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class SpawnAnswer:
    """Client event: the host's answer."""

    request_id: bytes
    accepted: bool
    reason: str


# The body's "t" for each action: a create is the protocol's original "spawn".
_KINDS = {
    VmAction.CREATE: "spawn",
    VmAction.STOP: "stop",
    VmAction.START: "start",
    VmAction.DELETE: "delete",
}
_ACTIONS = {kind: action for action, kind in _KINDS.items()}

_SERVER_TRANSITIONS = {
    (SpawnState.AWAIT_REQUEST, "request"): SpawnState.AWAIT_DECISION,
    (SpawnState.AWAIT_DECISION, "decision"): SpawnState.DONE,
}
_CLIENT_TRANSITIONS = {
    (SpawnState.AWAIT_CHALLENGE, "challenge"): SpawnState.AWAIT_ANSWER,
    (SpawnState.AWAIT_ANSWER, "answer"): SpawnState.DONE,
}


class _Core(FramedConnection[SpawnState, Any]):
    """Both ends on the framing base every PPN protocol shares (:mod:`ppn._framing`). Frames
    are read until ERROR; the exchange must reach DONE before the peer closes."""

    REMOTE_ERROR = RemoteProtocolError
    LOCAL_ERROR = LocalProtocolError
    FRAME_ERROR_PREFIX = "spawn frame: "
    _transitions: dict[tuple[SpawnState, str], SpawnState]

    def __init__(self, state: SpawnState) -> None:
        super().__init__(state, error=SpawnState.ERROR, max_frame=MAX_SPAWN_FRAME)

    def receive_data(self, data: bytes) -> None:
        self._receive_frames(data)

    def _receive_after_stop(self, data: bytes) -> None:
        raise LocalProtocolError("the core is in its ERROR state")

    def _on_eof(self) -> None:
        if self.state is not SpawnState.DONE:
            self._violation(
                RemoteProtocolError("peer closed the connection before the exchange ended")
            )

    def _step(self, what: str) -> None:
        # Out-of-order messages from the peer are refused before this; a missing entry here is
        # this end's mistake.
        self._transition(self._transitions, what, remote=False)

    def _emit(self, message: dict[str, Any]) -> None:
        self._write(wire.pack_canonical(message))


class SpawnServer(_Core):
    """The vm-host side. Sends its challenge at once; yields :class:`SpawnRequested`."""

    _transitions = _SERVER_TRANSITIONS

    def __init__(self, *, node_id: str, directory: MemberDirectory, nonce: bytes) -> None:
        if len(nonce) != NONCE_SIZE:
            raise LocalProtocolError(f"the challenge nonce is {NONCE_SIZE} random bytes")
        super().__init__(SpawnState.AWAIT_REQUEST)
        self.node_id = node_id
        self.directory = directory
        self._nonce = nonce
        self._request_id = b""
        self._emit({"t": "challenge", "node_id": node_id, "nonce": nonce})

    def _on_frame(self, frame: bytes) -> None:
        if self.state is not SpawnState.AWAIT_REQUEST:
            raise RemoteProtocolError("controller sent more than one request")
        outer = unpack_message(frame, what="spawn request", max_size=MAX_SPAWN_FRAME)
        m = expect_map(outer, what="spawn request", required=("body", "key", "sig"))
        body, key, sig = m["body"], m["key"], m["sig"]
        if not isinstance(body, bytes) or not isinstance(key, bytes) or not isinstance(sig, bytes):
            raise RemoteProtocolError("spawn request fields must be bytes")
        controller = self.directory.controller()
        if (
            controller is None
            or key != controller.identity
            or not verify_signature(key, SPAWN_CONTEXT + body, sig)
        ):
            raise SpawnAuthError()
        inner = unpack_message(body, what="spawn body", max_size=MAX_SPAWN_FRAME)
        what = "spawn body"
        kind = inner.get("t") if isinstance(inner, dict) else None
        action = _ACTIONS.get(kind) if isinstance(kind, str) else None
        if action is None:
            raise RemoteProtocolError("spawn body is not a version-1 spawn, stop, start or delete")
        target = "vm" if action is VmAction.CREATE else "name"
        b = expect_map(
            inner, what=what, required=("v", "t", "node_id", "nonce", "request_id", target)
        )
        if b.integer("v", 0, 255) != 1:
            raise RemoteProtocolError("spawn body is not a version-1 request")
        # A valid signature over someone else's nonce or node is a replay: same error as a forgery.
        if b["nonce"] != self._nonce or b["node_id"] != self.node_id:
            raise SpawnAuthError()
        request_id = b.blob("request_id", size=REQUEST_ID_SIZE)
        event: SpawnRequested | VmActionRequested
        if action is VmAction.CREATE:
            event = SpawnRequested(
                request_id=request_id, spec=VmSpec.from_wire(b["vm"], what=f"{what}.vm")
            )
        else:
            name = b.text("name", high=63, pattern=VM_NAME)
            event = VmActionRequested(request_id=request_id, action=action, name=name)
        self._step("request")
        self._request_id = request_id
        self._events.append(event)

    def send(self, decision: SpawnDecision) -> None:
        if decision.request_id != self._request_id:
            self.state = SpawnState.ERROR
            raise LocalProtocolError("decision for a request this connection did not carry")
        self._step("decision")
        self._emit(
            {
                "t": "accepted" if decision.accepted else "refused",
                "request_id": decision.request_id,
                "reason": decision.reason[:MAX_REASON],
            }
        )


class SpawnClient(_Core):
    """The controller side: answers the host's challenge with a signed request.

    A create carries ``spec``; a stop, start or delete (``action``) carries the VM's ``name``.
    """

    _transitions = _CLIENT_TRANSITIONS

    def __init__(
        self,
        *,
        key: IdentityKey,
        node_id: str,
        request_id: bytes,
        spec: VmSpec | None = None,
        action: VmAction = VmAction.CREATE,
        name: str = "",
    ) -> None:
        if len(request_id) != REQUEST_ID_SIZE:
            raise LocalProtocolError(f"a request id is {REQUEST_ID_SIZE} random bytes")
        if (action is VmAction.CREATE) != (spec is not None) or (spec is not None and name):
            raise LocalProtocolError("a create carries a spec; a stop, start or delete a name")
        if action is not VmAction.CREATE and not VM_NAME.match(name):
            raise LocalProtocolError("a VM name is 1-63 lower-case letters, digits and '-'")
        super().__init__(SpawnState.AWAIT_CHALLENGE)
        self._key = key
        self.node_id = node_id
        self.request_id = request_id
        self.spec = spec
        self.action = action
        self.name = spec.name if spec is not None else name

    def _on_frame(self, frame: bytes) -> None:
        message = unpack_message(frame, what="spawn message", max_size=MAX_SPAWN_FRAME)
        if self.state is SpawnState.AWAIT_CHALLENGE:
            what = "challenge"
            m = expect_map(message, what=what, required=("t", "node_id", "nonce"))
            if m["t"] != "challenge":
                raise RemoteProtocolError("expected the host's challenge")
            node_id = m.text("node_id", high=64)
            if node_id != self.node_id:
                raise RemoteProtocolError(f"reached node {node_id!r}, not {self.node_id!r}")
            nonce = m.blob("nonce", size=NONCE_SIZE)
            self._step("challenge")
            request: dict[str, Any] = {
                "v": 1,
                "t": _KINDS[self.action],
                "node_id": self.node_id,
                "nonce": nonce,
                "request_id": self.request_id,
            }
            if self.spec is not None:
                request["vm"] = self.spec.to_wire()
            else:
                request["name"] = self.name
            body = wire.pack_canonical(request)
            signature = self._key.sign(SPAWN_CONTEXT + body)
            self._emit({"body": body, "key": self._key.public, "sig": signature})
        elif self.state is SpawnState.AWAIT_ANSWER:
            what = "spawn answer"
            m = expect_map(message, what=what, required=("t", "request_id", "reason"))
            if m["t"] not in ("accepted", "refused"):
                raise RemoteProtocolError("spawn answer is neither accepted nor refused")
            if m.blob("request_id", size=REQUEST_ID_SIZE) != self.request_id:
                raise RemoteProtocolError("spawn answer is for another request")
            reason = m.text("reason", high=MAX_REASON)
            self._step("answer")
            self._events.append(
                SpawnAnswer(
                    request_id=self.request_id, accepted=m["t"] == "accepted", reason=reason
                )
            )
        else:
            raise RemoteProtocolError("host sent a frame after its answer")
