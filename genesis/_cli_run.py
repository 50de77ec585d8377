"""What ``ppn genesis``, ``ppn invite`` and ``ppn join`` do: state directory, UI and trio."""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ppn import encode_key
from ppn.cli import CommandError

from . import _cli_reach, _trio
from ._bundle import MemberRecord, lowest_free_address, parse_endpoint
from ._code import CodeFormatError, JoinCode, parse_code
from ._core import SAS_TIMEOUT, STEP_TIMEOUT
from ._derive import PartyInfo, mesh_id_for, valid_name
from ._events import Abort, ConfirmSas, Failed, FailureReason, Grant, Joined, SasReady
from ._io_state import (
    MeshState,
    NodeState,
    StateError,
    add_member,
    load_mesh,
    load_node,
    new_node,
    write_membership,
)
from ._window import AttemptLimiter, WindowBook

STRONG_DIGITS = 13
DEFAULT_DIGITS = 7


def _fail(reason: FailureReason, detail: str | None = None) -> CommandError:
    return CommandError(detail or reason.sentence, reason.status)


def _split_hostport(text: str, what: str) -> tuple[str, int]:
    if what == "listen address" and text.endswith(":0"):
        return _split_hostport(text[:-2] + ":1", what)[0], 0  # port 0: the system picks
    try:
        return parse_endpoint(text)
    except ValueError as exc:
        raise CommandError(f"{what} {text!r}: {exc}", 2) from exc


def _default_name() -> str:
    raw = socket.gethostname().lower()
    name = "".join(ch if ch.isalnum() and ch.isascii() else "-" for ch in raw).strip("-")[:63]
    return name.strip("-") or "node"


def _checked_name(name: str | None) -> str:
    name = name or _default_name()
    if not valid_name(name):
        raise CommandError(f"node name {name!r}: use 1-63 of a-z, 0-9 and '-'", 2)
    return name


def _checked_endpoints(values: list[str]) -> tuple[str, ...]:
    for value in values:
        _split_hostport(value, "endpoint")
    return tuple(values)


def _party(node: NodeState) -> PartyInfo:
    return PartyInfo(name=node.name, identity=node.identity.public, wg=node.wg.public)


def _member_json(member: MemberRecord) -> dict[str, Any]:
    return {
        "name": member.name,
        "address": member.address,
        "identity": encode_key(member.identity),
        "wg": encode_key(member.wg),
        "endpoints": list(member.endpoints),
        "roles": list(member.roles),
    }


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """What a wait longer than a second shows (issue 16): elapsed time and the time left in
    the window or step. On a terminal one line, rewritten every second; otherwise (a log, a
    pipe) a line every 10 s, so a log is not flooded. Text mode only: the JSON events carry
    their own deadlines (``expires_in``) and stay unchanged.

    A thread draws it, not a trio task: the waits are in several places (the sponsor's window,
    the joiner's connect, both SAS steps), some inside the ceremony's callbacks, and a thread
    needs no nursery around them whose exception groups would reach the user."""

    TTY_INTERVAL = 1.0
    LOG_INTERVAL = 10.0

    def __init__(self, *, enabled: bool, tty: bool) -> None:
        self.enabled, self.tty = enabled, tty
        self.interval = self.TTY_INTERVAL if tty else self.LOG_INTERVAL
        self._lock = threading.Lock()
        self._wait: tuple[str, float | None, str, float] | None = None
        self._drawn_at = 0.0
        self._live = False  # a progress line is on the terminal, without its newline
        self._partial = False  # a prompt waits for its answer on the current line
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._thread = threading.Thread(target=self._loop, name="ppn-progress", daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()
            self.hide()

    def show(
        self, what: str, total: float | None, *, left_in: str = "", since: float | None = None
    ) -> None:
        """From now on, draw ``what: M:SS elapsed, M:SS left <left_in>`` (``since`` is a
        ``time.monotonic()`` start when the wait began earlier)."""
        with self._lock:
            now = time.monotonic()
            self._wait = (what, total, left_in, now if since is None else since)
            self._drawn_at = now

    def hide(self) -> None:
        with self._lock:
            self._wait = None
            self._erase()

    def line(self, text: str, *, end: str = "\n") -> None:
        with self._lock:
            self._erase()
            print(text, end=end, file=sys.stderr, flush=True)
            self._partial = not end.endswith("\n")

    def _erase(self) -> None:
        if self._live:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)
            self._live = False

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                now = time.monotonic()
                if self._wait is None or now - self._drawn_at < self.interval:
                    continue
                self._drawn_at = now
                what, total, left_in, since = self._wait
                text = f"  {what}: {_clock(now - since)} elapsed"
                if total is not None:
                    text += f", {_clock(total - (now - since))} left"
                    text += f" {left_in}" if left_in else ""
                if self.tty:
                    print(f"\r\x1b[K{text}", end="", file=sys.stderr, flush=True)
                    self._live = True
                else:
                    # A log line of its own, not glued to an unanswered prompt.
                    print(("\n" if self._partial else "") + text, file=sys.stderr, flush=True)
                    self._partial = False


@dataclass
class UI:
    """Text mode: progress and prompts on stderr, the code on stdout. JSON mode: events on
    stdout, one object per line, and 'yes'/'no' lines on stdin."""

    json_mode: bool
    progress: Progress = field(init=False)

    def __post_init__(self) -> None:
        self.progress = Progress(enabled=not self.json_mode, tty=sys.stderr.isatty())

    def emit(self, event: str, **fields: Any) -> None:
        if self.json_mode:
            print(json.dumps({"event": event, **fields}, sort_keys=True), flush=True)

    def say(self, line: str) -> None:
        if not self.json_mode:
            self.progress.line(line)

    async def ask_sas(self, event: SasReady, role: str) -> bool:
        peer = event.peer
        self.progress.hide()
        sas_started = time.monotonic()  # the SAS step's clock starts with this event
        self.emit(
            "sas",
            sas=event.sas,
            peer={
                "name": peer.name,
                "identity": encode_key(peer.identity),
                "wg": encode_key(peer.wg),
            },
        )
        if not self.json_mode:
            other = "joining node" if role == "sponsor" else "sponsor"
            self.say("")
            self.say(
                f"  Keys confirmed with {other} {peer.name!r}. Compare this with the other screen:"
            )
            self.say("")
            self.say(f"        {event.sas}")
            self.say("")
            self.progress.line(
                f"  Same number on both screens? [y/N] (answer within {_clock(SAS_TIMEOUT)}) ",
                end="",
            )
            if not self.progress.tty:
                # A terminal's prompt is left alone while its operator types; a log gets the
                # clock.
                self.progress.show("waiting for the answer", SAS_TIMEOUT, left_in="in the SAS step")
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        self.progress.hide()
        answer = line.strip().lower()
        accepted = answer in ("y", "yes")
        if not self.json_mode and not sys.stdin.isatty():
            self.say(answer or "(no answer)")  # a piped answer is not echoed by a terminal
        if accepted:
            self.say("  confirmed; waiting for the other operator ...")
            self.progress.show(
                "waiting for the other operator",
                SAS_TIMEOUT,
                left_in="in the SAS step",
                since=sas_started,
            )
        return accepted

    def failed(self, failure: Failed) -> CommandError:
        reason = failure.reason
        sentence = reason.sentence
        if failure.by_peer and reason is FailureReason.CANCELLED:
            sentence = "the other operator cancelled"
        message = f"{sentence}: {failure.detail}" if failure.detail else sentence
        self.emit("failed", reason=reason.token, message=message, status=reason.status)
        return _fail(reason, message)


def run(command: str, args: argparse.Namespace) -> int:
    ui = UI(json_mode=args.events == "json")
    digits = STRONG_DIGITS if args.strong else DEFAULT_DIGITS
    directory = Path(args.state)
    try:
        with ui.progress.running():
            if command == "join":
                status = _join(args, ui, directory, digits)
            else:
                status = _sponsor(command, args, ui, directory, digits)
        if status == 0 and getattr(args, "up", False):
            return _cli_reach.run_up(directory, ui.say)
        return status
    except StateError as exc:
        ui.emit("failed", reason=FailureReason.STATE.token, message=str(exc), status=18)
        raise CommandError(str(exc), FailureReason.STATE.status) from exc


# --- joiner --------------------------------------------------------------------------------------


def _join(args: argparse.Namespace, ui: UI, directory: Path, digits: int) -> int:
    try:
        code = parse_code(args.code)
    except CodeFormatError as exc:
        ui.emit("failed", reason=FailureReason.BAD_CODE.token, message=str(exc), status=10)
        raise CommandError(str(exc), FailureReason.BAD_CODE.status) from exc
    route = _cli_reach.JoinRoute(
        sponsor=_split_hostport(args.sponsor, "sponsor") if args.sponsor else None,
        listen=_split_hostport(args.listen, "listen address") if args.listen else None,
        mdns=tuple(args.mdns),
    )
    mesh = load_mesh(directory)
    if mesh is not None:
        raise StateError(
            f"{directory} is already a member of mesh {mesh.mesh_id.hex()} as {mesh.address}; "
            "use a fresh state directory to join again"
        )
    node = load_node(directory)
    if node is None:
        endpoints = args.endpoint or _cli_reach.default_endpoints()
        node = new_node(_checked_name(args.name), _checked_endpoints(list(endpoints)))
    if args.sponsor:
        ui.say(f"connecting to sponsor {args.sponsor} ...")
        ui.progress.show("connecting to the sponsor", STEP_TIMEOUT, left_in="in this step")
    return trio.run(_join_async, route, node, code, ui, directory, digits)


async def _join_async(
    route: _cli_reach.JoinRoute,
    node: NodeState,
    code: JoinCode,
    ui: UI,
    directory: Path,
    digits: int,
) -> int:
    async def decide(event: SasReady) -> ConfirmSas | Abort:
        return ConfirmSas(accept=await ui.ask_sas(event, "joiner"))

    async def joined(event: Joined) -> None:
        mesh = MeshState(
            mesh_id=event.mesh_id,
            cidr=event.cidr,
            address=event.member.address,
            sponsor=event.sponsor,
            roster=_cli_reach.with_sponsor_endpoint(event.roster, event.sponsor),
        )
        write_membership(directory, node, mesh)

    result = await _cli_reach.join(
        route,
        code,
        ui.say,
        show=ui.progress.show,
        me=_party(node),
        endpoints=node.endpoints,
        decide=decide,
        joined=joined,
        sas_digits=digits,
    )
    ui.progress.hide()
    if isinstance(result, Failed):
        raise ui.failed(result)
    ui.emit(
        "joined",
        name=result.member.name,
        address=result.member.address,
        mesh_id=result.mesh_id.hex(),
        roster=[_member_json(m) for m in result.roster],
    )
    ui.say(f"joined mesh {result.mesh_id.hex()} as {result.member.name} ({result.member.address})")
    return 0


# --- sponsor -------------------------------------------------------------------------------------


def _sponsor(command: str, args: argparse.Namespace, ui: UI, directory: Path, digits: int) -> int:
    host, port = _split_hostport(args.listen, "listen address")
    if command == "genesis":
        if load_mesh(directory) is not None:
            raise StateError(f"{directory} is already a mesh member; use 'ppn invite' there")
        try:
            network = ipaddress.ip_network(args.mesh_cidr, strict=True)
        except ValueError as exc:
            raise CommandError(f"mesh CIDR {args.mesh_cidr!r}: {exc}", 2) from exc
        node = load_node(directory) or new_node(
            _checked_name(args.name), _checked_endpoints(args.endpoint)
        )
        first = next(iter(network.hosts()), None)
        if first is None:
            raise CommandError(f"mesh CIDR {network} has no host addresses", 2)
        me = MemberRecord(
            name=node.name,
            identity=node.identity.public,
            wg=node.wg.public,
            address=str(first),
            endpoints=node.endpoints,
            roles=("genesis",),
        )
        mesh = MeshState(
            mesh_id=mesh_id_for(node.identity.public),
            cidr=str(network),
            address=str(first),
            sponsor=node.identity.public,
            roster=(me,),
        )
        # Written only once the pairing listener is open (in _serve_async): a busy port must
        # not leave a mesh behind that a rerun would refuse ("use 'ppn invite'").
        create: MeshState | None = mesh
    else:
        create = None
        loaded = load_node(directory)
        mesh_loaded = load_mesh(directory)
        if loaded is None or mesh_loaded is None:
            raise StateError(
                f"{directory} is not a mesh member; run 'ppn genesis' or 'ppn join' first"
            )
        node = loaded
    to = _split_hostport(args.to, "joining node's address") if args.to else None
    reach = _SponsorReach(to=to, announce=not args.no_announce, mdns=tuple(args.mdns))
    return trio.run(
        _serve_async, host, port, node, ui, directory, digits, args.keep_open, reach, create
    )


@dataclass(frozen=True, kw_only=True)
class _SponsorReach:
    to: tuple[str, int] | None
    announce: bool
    mdns: tuple[str, ...]


def grant_for(directory: Path, peer: PartyInfo) -> Grant | None:
    """What the sponsor grants a joiner, or None to refuse it (RFC-NOTES §5.6, §7.5, §7.13).

    The joiner must not repeat a name, identity or WireGuard key of the ceremony's roster or of
    the signed roster the node agent keeps (``roster.bin``, when it has run: it also knows the
    members other sponsors admitted, and removed identities), and gets the lowest host address
    neither holds, so two sponsors collide only when they admit at the same time.

    A member the signed roster says was removed keeps only its identity (refused for ever): its
    name is free again, and a joiner under that name gets the removed member's address back
    when no live member holds it (rejoin after disk loss); other joiners do not get that
    address while ``mesh.json`` lists the removed member.
    """
    current = load_mesh(directory)
    if current is None:
        raise StateError(f"{directory} is no longer a mesh member")
    signed = _signed_claims(directory, current)
    removed = signed.removed if signed else frozenset()
    live = tuple(m for m in current.roster if m.identity not in removed)
    clash = any(m.name == peer.name for m in live) or any(
        m.identity == peer.identity or m.wg == peer.wg for m in current.roster
    )
    if signed is not None:
        clash = clash or (
            peer.name in signed.names
            or peer.identity in signed.identities
            or peer.wg in signed.wg_keys
        )
    taken = signed.addresses if signed else frozenset()
    address = _former_address(current, removed, peer.name, live, taken)
    if address is None:
        # A removed member's address is kept for its name: mesh.json still lists it until a
        # member rejoins under that name (then add_member drops the old entry).
        address = lowest_free_address(current.cidr, current.roster, also_taken=taken)
    if clash or address is None:
        return None
    # Members removed since the ceremony listed them are not handed on as peers to bootstrap.
    return Grant(cidr=current.cidr, address=address, roster=live)


def _signed_claims(directory: Path, current: MeshState) -> Any:
    """The signed roster's claims (``ppn.mesh``'s ``SignedClaims``), or None when the agent
    never saved one or its file is unreadable (the ceremony's roster alone decides then)."""
    from ppn.mesh._io_state import StateDirError, load_signed_claims

    try:
        return load_signed_claims(directory, mesh=current.mesh_id, cidr=current.cidr)
    except StateDirError:
        return None


def _former_address(
    current: MeshState,
    removed: frozenset[bytes],
    name: str,
    live: tuple[MemberRecord, ...],
    taken: frozenset[str],
) -> str | None:
    """The address a removed member called ``name`` held, when no live member holds it now."""
    held = {m.address for m in live} | set(taken)
    for member in reversed(current.roster):
        if member.identity in removed and member.name == name and member.address not in held:
            return member.address
    return None


def _removed_identities(directory: Path) -> frozenset[bytes]:
    current = load_mesh(directory)
    signed = _signed_claims(directory, current) if current is not None else None
    return signed.removed if signed is not None else frozenset()


async def _serve_async(
    host: str,
    port: int,
    node: NodeState,
    ui: UI,
    directory: Path,
    digits: int,
    keep_open: bool,
    reach: _SponsorReach,
    create: MeshState | None = None,
) -> int:
    mesh = create or load_mesh(directory)
    assert mesh is not None
    listeners: list[Any]
    dial: _cli_reach.DialOut | None = None
    if reach.to is not None:
        dial = _cli_reach.DialOut(*reach.to, say=ui.say)
        listeners = [dial]
        address = _cli_reach.format_hostport(*reach.to)
        hints: list[str] = []
        mdns: list[str] = []
    else:
        try:
            sockets = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1) from exc
        listeners = [_cli_reach.SeenListener(s) for s in sockets]
        bound = sockets[0].socket.getsockname()
        hints = _cli_reach.hint_addresses(bound[0], bound[1], exclude_network=mesh.cidr)
        address = hints[0]  # a wildcard bind is reported as an address others can dial
        from ._io_discovery import mdns_interfaces

        mdns = list(reach.mdns) or mdns_interfaces(bound[0], exclude_network=mesh.cidr)
        port = bound[1]
    if create is not None:
        try:
            write_membership(directory, node, create)
        except StateError:
            for listener in listeners:
                await listener.aclose()
            raise
        ui.say(
            f"created mesh {create.mesh_id.hex()} ({create.cidr}); "
            f"this node is {node.name} ({create.address})"
        )
    book = WindowBook(limiter=AttemptLimiter())

    async def show_code(code: JoinCode) -> None:
        lifetime = int(book.lifetime)
        announce(code)
        if dial is not None:
            dial.rearm()
        ui.emit(
            "code",
            code=str(code),
            window=code.window,
            address=address,
            addresses=hints,
            announced=bool(mdns and reach.announce),
            expires_in=lifetime,
        )
        if ui.json_mode:
            return
        print(str(code), flush=True)
        if dial is not None:
            how = f"  ppn join {code} --listen HOST:PORT --state DIR   (this node dials {address})"
        else:
            how = "\n".join(f"  ppn join {code} --sponsor {h} --state DIR" for h in hints)
            if mdns and reach.announce:
                how = f"  ppn join {code} --state DIR   (on this network), or\n" + how
        ui.say(
            f"join window {code.window} open for {lifetime // 60} min; read the code "
            f"above to the new node's operator, who runs:\n{how}\n"
            "waiting for the joining node ..."
        )
        ui.progress.show("waiting for the joining node", book.lifetime, left_in="in the window")

    async def decide(event: SasReady) -> ConfirmSas | Abort:
        grant = grant_for(directory, event.peer)
        if grant is None:
            return Abort(reason=FailureReason.REFUSED)
        accepted = await ui.ask_sas(event, "sponsor")
        return ConfirmSas(accept=accepted, grant=grant if accepted else None)

    async def joined(event: Joined) -> None:
        member = _cli_reach.with_seen_endpoint(event.member)
        add_member(directory, node, member, drop=_removed_identities(directory))

    async with _cli_reach.announcing(
        reach.announce, mdns, mesh_id=mesh.mesh_id, port=port, name=node.name
    ) as announce:
        outcome = await _trio.serve_windows(
            listeners,
            me=_party(node),
            mesh_id=mesh.mesh_id,
            book=book,
            decide=decide,
            joined=joined,
            show_code=show_code,
            keep_open=keep_open,
            sas_digits=digits,
        )
    ui.progress.hide()
    if outcome.joined is None:
        reason = outcome.failure or FailureReason.TIMEOUT
        last = outcome.failures[-1] if outcome.failures else None
        raise ui.failed(last if last and last.reason is reason else Failed(reason=reason))
    member = outcome.joined.member
    ui.emit(
        "joined",
        name=member.name,
        address=member.address,
        mesh_id=outcome.joined.mesh_id.hex(),
        roster=[_member_json(m) for m in outcome.joined.roster],
    )
    ui.say(f"{member.name} joined the mesh as {member.address}")
    return 0
