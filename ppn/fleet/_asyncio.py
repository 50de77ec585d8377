"""The fleet controller and the vm-host on asyncio (RFC-NOTES §8, §12; issue 20).

Each is the trio service with its I/O done on asyncio: the node table, the replay guard,
placement, the spawn cores and every decision (status, advice, what a heartbeat carries, whether
a spawn is accepted) are the trio class's own methods, inherited; only sockets, timers, the
operator's Unix socket and the worker thread are re-done here. The listeners run behind the
asyncio listener guard with the same limits (``HEARTBEAT_LIMITS``, ``SPAWN_LIMITS``, decided by
``ppn._listener_limits``). ``config.connect`` is the trio seam and is not used here (vm-hosts
and the controller are reached with ``asyncio.open_connection``); a configured provisioner
command runs through the same ``run_provisioner`` as under trio, in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import secrets
import socket
import stat
from functools import partial
from pathlib import Path
from typing import Any

from .. import wire
from .._asyncio_listener import Connection, ListenerGuard, open_tcp_listeners
from .._errors import PPNError, RemoteProtocolError
from ._heartbeat import (
    MAX_HEARTBEAT_SIZE,
    decode_heartbeat_reply,
    encode_heartbeat,
    encode_heartbeat_reply,
)
from ._io_host import ProvisionerResult, run_provisioner, save_vm_file
from ._io_state import save_replay_state
from ._operator import MAX_CONTROL_FRAME, decode_control_request
from ._spawn import (
    MAX_SPAWN_FRAME,
    SpawnAnswer,
    SpawnClient,
    SpawnRequested,
    SpawnServer,
    SpawnState,
    VmActionRequested,
)
from ._trio_controller import FleetController, FleetControllerConfig
from ._trio_host import SPAWN_LIMITS, VmHostConfig, VmHostService
from ._vm import VmAction, VmSpec

__all__ = ["AsyncioFleetController", "AsyncioVmHostService"]

log = logging.getLogger("ppn.fleet")


async def _read_frame(reader: asyncio.StreamReader, max_size: int) -> bytes:
    decoder = wire.FrameDecoder(max_size=max_size)
    while True:
        data = await reader.read(65536)
        decoder.feed(data)
        try:
            frame = decoder.next_frame()
        except wire.FrameError as exc:  # an oversized header: the peer's fault, never ours
            raise RemoteProtocolError(str(exc)) from exc
        if frame is not None:
            return frame
        if not data:
            raise RemoteProtocolError("connection closed before a whole frame arrived")


def _abort(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


class AsyncioFleetController(FleetController):
    """The fleet controller on asyncio: ``await controller.start()`` binds and serves in the
    background (``controller.port``), ``await controller.close()`` stops it."""

    def __init__(self, config: FleetControllerConfig) -> None:
        super().__init__(config)
        self.guard = ListenerGuard(config.limits)  # type: ignore[assignment]
        self._wake = asyncio.Event()
        self._save = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._control_server: asyncio.AbstractServer | None = None

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _after_table_change(self) -> None:
        super()._after_table_change()
        self._wake.set()  # the eviction timer re-reads the table's next deadline

    async def eviction_timer(self) -> None:
        """Evict silent nodes on time: sleep until the table's next deadline, forever."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.table.get_timer()
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if deadline is not None and loop.time() >= deadline:
                self.table.handle_timer(loop.time())
                super()._after_table_change()

    async def _save_replay_state(self) -> None:
        path = self.config.replay_path
        if path is None:
            return
        async with self._save:
            try:
                await asyncio.to_thread(save_replay_state, Path(path), self.table.replay)
            except OSError as exc:
                log.warning("cannot save the replay state to %s: %s", path, exc.strerror or exc)

    async def _heartbeat(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _conn: Connection
    ) -> None:
        """One heartbeat connection: one frame in, one reply frame out."""
        try:
            async with asyncio.timeout(self.config.connection_timeout):
                payload = await _read_frame(reader, MAX_HEARTBEAT_SIZE)
                try:
                    self.table.receive_heartbeat(payload, self._now())
                except RemoteProtocolError as exc:
                    self.heartbeats_refused += 1
                    log.warning("heartbeat refused: %s", exc)
                    reply = encode_heartbeat_reply(accepted=False, reason=str(exc))
                else:
                    reply = encode_heartbeat_reply(accepted=True)
                    await self._save_replay_state()
                finally:
                    self._after_table_change()
                writer.write(wire.encode_frame(reply, max_size=1024))
                await writer.drain()
        except (RemoteProtocolError, TimeoutError, OSError) as exc:
            log.info("heartbeat connection dropped: %s", exc or "timed out")
        finally:
            _abort(writer)

    async def _exchange(self, address: str, client: SpawnClient) -> SpawnAnswer | str:
        """One spawn-protocol exchange on asyncio (the trio controller's, re-done)."""
        try:
            async with asyncio.timeout(self.config.connection_timeout):
                reader, writer = await asyncio.open_connection(address, self.config.spawn_port)
                try:
                    while client.state is not SpawnState.DONE:
                        client.receive_data(await reader.read(MAX_SPAWN_FRAME))
                        out = client.data_to_send()
                        if out:
                            writer.write(out)
                            await writer.drain()
                finally:
                    _abort(writer)
        except (PPNError, TimeoutError, OSError) as exc:
            return "timed out" if isinstance(exc, TimeoutError) else str(exc)
        answer = client.next_event()
        if not isinstance(answer, SpawnAnswer):  # pragma: no cover - core invariant
            return "no answer from the vm-host"
        return answer

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(max(self.config.connection_timeout * 2, 30)):
                payload = await _read_frame(reader, MAX_CONTROL_FRAME)
                try:
                    request = decode_control_request(payload)
                except RemoteProtocolError as exc:
                    reply: dict[str, Any] = {"ok": False, "error": "request", "message": str(exc)}
                else:
                    try:
                        reply = await self.handle_control(request)
                    except PPNError as exc:
                        log.exception("control request %s failed", request.op)
                        reply = {"ok": False, "error": "request", "message": str(exc)}
                data = wire.pack_canonical(reply)
                writer.write(wire.encode_frame(data, max_size=MAX_CONTROL_FRAME))
                await writer.drain()
        except (RemoteProtocolError, TimeoutError, OSError) as exc:
            log.info("control connection dropped: %s", exc or "timed out")
        finally:
            _abort(writer)

    async def _open_control(self, path: str) -> asyncio.AbstractServer:
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with probe:
                try:
                    probe.connect(path)
                except OSError:
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.unlink(path)  # a stale socket from a controller that died
                else:
                    raise OSError(errno.EADDRINUSE, f"a controller already serves {path}")
        old_umask = os.umask(0o077)  # the socket is the operator's authority: owner only
        try:
            return await asyncio.start_unix_server(self._control, path)
        finally:
            os.umask(old_umask)

    async def start(self) -> int:
        """Bind and serve in the background; returns the heartbeat port."""
        host = self.config.listen_address or self.member.mesh_address
        listeners = open_tcp_listeners(host, self.config.port)
        self.port = listeners[0].getsockname()[1]
        guard: ListenerGuard = self.guard  # type: ignore[assignment]
        self._tasks.append(asyncio.ensure_future(guard.serve(self._heartbeat, listeners)))
        if self.config.control_path:
            self._control_server = await self._open_control(self.config.control_path)
        self._tasks.append(asyncio.ensure_future(self.eviction_timer()))
        assert self.port is not None
        return self.port

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._control_server is not None:
            self._control_server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.config.control_path or "")


class AsyncioVmHostService(VmHostService):
    """The vm-host on asyncio: ``await service.start()`` (returns the spawn port) serves spawn
    requests and sends heartbeats in the background; ``await service.close()`` stops it."""

    def __init__(self, config: VmHostConfig) -> None:
        super().__init__(config)
        self.guard = ListenerGuard(SPAWN_LIMITS)  # type: ignore[assignment]
        self._tasks: list[asyncio.Task[Any]] = []
        self._save = asyncio.Lock()

    async def send_heartbeat(self) -> bool:
        """Send one heartbeat; True if the controller accepted it. Never raises for I/O trouble."""
        try:
            address = self._controller_address()
            payload = encode_heartbeat_frame(self)
            async with asyncio.timeout(self.config.send_timeout):
                reader, writer = await asyncio.open_connection(address, self.config.controller_port)
                try:
                    writer.write(payload)
                    await writer.drain()
                    reply = await _read_frame(reader, 1024)
                finally:
                    _abort(writer)
            accepted, reason = decode_heartbeat_reply(reply)
        except (OSError, TimeoutError, PPNError, ValueError) as exc:
            self.heartbeats_missed += 1
            what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            log.warning("heartbeat not delivered (%s); will retry on schedule", what)
            return False
        if not accepted:
            self.heartbeats_missed += 1
            log.warning("controller refused our heartbeat: %s", reason)
            return False
        self.heartbeats_sent += 1
        return True

    async def heartbeat_loop(self) -> None:
        """Send on a fixed schedule (start + k * interval), skipping slots already past."""
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        start = loop.time()
        slot = 0
        while True:
            if self._unsaved:
                await self._persist()  # a disk that refused earlier may take it now
            await self.send_heartbeat()
            now = loop.time()
            slot = max(slot + 1, math.floor((now - start) / interval) + 1)
            await asyncio.sleep(max(0.0, start + slot * interval - loop.time()))

    async def _persist(self) -> bool:
        path = self.config.vm_state_path
        if path is None:
            return True
        async with self._save:
            try:
                await asyncio.to_thread(save_vm_file, Path(path), self._host_vms())
            except OSError as exc:
                return self._save_failed(exc)
        self._unsaved = False
        return True

    async def _run_hook(
        self, spec: VmSpec, request_id: bytes, action: VmAction
    ) -> ProvisionerResult:
        if self.config.provision is not None:
            return await self.config.provision(spec, request_id, action)
        return await asyncio.to_thread(_provision_in_thread, self.config, spec, request_id,
                                       action)  # fmt: skip

    async def _spawn(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _conn: Connection
    ) -> None:
        """One spawn connection; if accepted, run the provisioner after answering."""
        job: tuple[bytes, VmAction] | None = None
        core = SpawnServer(
            node_id=self.member.node_id,
            directory=self.config.directory,
            nonce=secrets.token_bytes(16),
        )
        try:
            async with asyncio.timeout(10):
                writer.write(core.data_to_send())
                await writer.drain()
                while core.state is SpawnState.AWAIT_REQUEST:
                    core.receive_data(await reader.read(MAX_SPAWN_FRAME))
                event = core.next_event()
                if not isinstance(event, SpawnRequested | VmActionRequested):  # pragma: no cover
                    raise PPNError("spawn core advanced without a request")
                decision, job = await self._accept(event)
                core.send(decision)
                writer.write(core.data_to_send())
                await writer.drain()
        except (PPNError, TimeoutError, OSError) as exc:
            log.warning("spawn connection dropped: %s", exc or "timed out")
        finally:
            _abort(writer)
        if job is not None:
            await self._provision(*job)

    async def start(self) -> int:
        """Bind the spawn listener, start heartbeating; returns the spawn port."""
        host = self.config.listen_address or self.member.mesh_address
        listeners = open_tcp_listeners(host, self.config.spawn_port)
        self.spawn_port = listeners[0].getsockname()[1]
        guard: ListenerGuard = self.guard  # type: ignore[assignment]
        self._tasks.append(asyncio.ensure_future(guard.serve(self._spawn, listeners)))
        self._tasks.append(asyncio.ensure_future(self.heartbeat_loop()))
        assert self.spawn_port is not None
        return self.spawn_port

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def encode_heartbeat_frame(service: VmHostService) -> bytes:
    payload = encode_heartbeat(service.build_heartbeat(), service.config.identity)
    return wire.encode_frame(payload, max_size=len(payload))


def _provision_in_thread(
    config: VmHostConfig, spec: VmSpec, request_id: bytes, action: VmAction
) -> ProvisionerResult:
    # The one provisioner runner (a trio subprocess with its timeout), on a loop of its own.
    import trio

    run = partial(run_provisioner, config.provisioner, spec, request_id, action=action,
                  timeout=config.provisioner_timeout)  # fmt: skip
    return trio.run(run)
