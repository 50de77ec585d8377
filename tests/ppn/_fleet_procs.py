"""A fleet of real ``ppn`` processes on loopback for the VM lifecycle tests: one controller and
named vm-hosts, each restartable, each on its own 127.x.y.N address; every process is stopped
by PID at the end."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from interop.fleet_scenario import FleetFiles, NodePlan, ppn, write_fleet_files


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, **kw)


@dataclass
class Service:
    """One ``ppn … serve`` process: start waits until it listens; stop sends SIGTERM."""

    name: str
    argv: list[str]
    log: Path
    ready: Callable[[], bool]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stderr=log)
        deadline = time.monotonic() + 60
        while not self.ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log.read_text()}")
            assert time.monotonic() < deadline, f"{self.name} did not start"
            time.sleep(0.05)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


def _listening(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return False
        return True

    return check


@dataclass
class Fleet:
    tmp: Path
    files: FleetFiles
    net: str
    port: int
    spawn_port: int
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def control(self) -> str:
        return str(self.files.control)

    def address(self, name: str) -> str:
        return f"{self.net}.{['cloud', *self.hosts].index(name) + 1}"

    @property
    def hosts(self) -> list[str]:
        return [n for n in self.files.keys if n != "cloud"]

    def controller(self, *extra: str, config: Path | None = None) -> Service:
        head = ("--config", str(config)) if config else ()
        argv = ppn(
            *head, "fleet", "serve", "--identity", str(self.files.keys["cloud"]),
            "--directory", str(self.files.directory), "--port", str(self.port),
            "--spawn-port", str(self.spawn_port), "--control", self.control, *extra,
        )  # fmt: skip
        service = Service(
            "cloud", argv, self.tmp / "cloud.log", lambda: self.files.control.exists()
        )
        self.services["cloud"] = service
        return service

    def vmhost(self, name: str, *extra: str, provisioner: Path | None = None) -> Service:
        argv = ppn(
            "vmhost", "serve", "--identity", str(self.files.keys[name]),
            "--directory", str(self.files.directory), "--port", str(self.spawn_port),
            "--controller-port", str(self.port),
            "--provisioner", f"python3 {provisioner or self.files.provisioner}", *extra,
        )  # fmt: skip
        ready = _listening(self.address(name), self.spawn_port)
        service = Service(name, argv, self.tmp / f"{name}.log", ready)
        self.services[name] = service
        return service

    def ppn(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(ppn(*args, "--control", self.control), input=input)

    def vm_list(self) -> list[dict[str, Any]]:
        result = self.ppn("vm", "list", "--json")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout)["vms"])

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 60
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            vms = self.vm_list()
            if predicate(vms):
                return vms
            assert time.monotonic() < deadline, f"condition not met; last list: {vms}"
            time.sleep(0.2)

    def wait_live(self, names: Sequence[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = self.ppn("fleet", "status", "--json")
            if result.returncode == 0:
                live = {n["name"] for n in json.loads(result.stdout)["nodes"]}
                if set(names) <= live:
                    return
            assert time.monotonic() < deadline, f"{names} not live; last: {result.stdout}"
            time.sleep(0.2)

    def hook_calls(self) -> list[dict[str, Any]]:
        if not self.files.provisioned.exists():
            return []
        return [json.loads(x) for x in self.files.provisioned.read_text().splitlines()]


def make_fleet(tmp: Path, hosts: Sequence[str]) -> Iterator[Fleet]:
    net = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
    plans = [NodePlan("cloud", f"{net}.1", controller=True)]
    plans += [NodePlan(name, f"{net}.{i + 2}") for i, name in enumerate(hosts)]
    fleet = Fleet(
        tmp=tmp,
        files=write_fleet_files(tmp, plans),
        net=net,
        port=20000 + secrets.randbelow(20000),
        spawn_port=40000 + secrets.randbelow(20000),
    )
    try:
        yield fleet
    finally:
        for service in fleet.services.values():
            service.stop()


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[[Sequence[str]], Fleet]]:
    made: list[Iterator[Fleet]] = []

    def factory(hosts: Sequence[str]) -> Fleet:
        gen = make_fleet(tmp_path, hosts)
        made.append(gen)
        return next(gen)

    yield factory
    for gen in made:
        for _ in gen:  # runs the generator's cleanup
            pass
