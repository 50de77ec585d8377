"""Logs and metrics of the long-running roles, as real ``ppn`` processes on loopback (issue 17;
RFC-NOTES §1.5, §3.1).

Every role runs with ``--log-format json`` and ``--metrics 127.0.0.1:0``: every line it writes on
stderr must parse as a JSON object with a level and an event, and its metrics endpoint is
scraped over TCP and read with ``prometheus_client``'s own parser, before and after the thing
each metric counts happens (a query, a denial, a fan-out, a refused connection, a heartbeat, an
eviction). The agent's metrics need WireGuard: tests/ppn/test_agent_metrics_netns.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from interop.fleet_scenario import NodePlan, write_fleet_files
from psp import Capability, ErrorCode, Query, VaultError
from psp._capability import invoke_for_vault
from psp._trio import VaultClient

from .psp._orchestration_support import HOLDER, cap_for, make_vault

PPN = [sys.executable, "-m", "ppn"]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    """Every sample of the endpoint, by (name, labels), parsed by prometheus_client."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def json_log(path: Path) -> list[dict[str, Any]]:
    """Every stderr line of a role, each one a JSON object with a level and an event."""
    lines = path.read_text().splitlines()
    records = []
    for line in lines:
        record = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(record, dict) and record["level"] in {
            "debug",
            "info",
            "warning",
            "error",
            "critical",
        }, line
        assert isinstance(record["event"], str) and record["event"], line
        records.append(record)
    return records


class Role:
    """One ``ppn`` role process: stdout piped, stderr (the JSON log) in a file."""

    def __init__(self, name: str, argv: list[str], cwd: Path) -> None:
        self.log_path = cwd / f"{name}.log"
        self.proc = subprocess.Popen(
            [*PPN, "--log-format", "json", *argv],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self.log_path.open("w"),
            text=True,
        )

    def event(self, wanted: str, timeout: float = 60) -> dict[str, Any]:
        """The first log record with this event (waits for it)."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            for line in self.log_path.read_text().splitlines():
                if line.endswith("}") and json.loads(line).get("event") == wanted:
                    found.append(json.loads(line))
                    return True
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.log_path.read_text()}")
            return False

        wait_until(seen, f"{wanted!r} in {self.log_path.name}", timeout)
        return found[0]

    @property
    def metrics(self) -> str:
        return str(self.event("metrics")["address"])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def roles() -> Iterator[list[Role]]:
    started: list[Role] = []
    yield started
    for role in started:
        role.stop()


def _query(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *PPN,
            "query",
            "--key",
            "holder.key",
            "--collection",
            "people",
            "--count",
            "--json",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_vault_and_orchestration_metrics_and_json_logs(tmp_path: Path, roles: list[Role]) -> None:
    (tmp_path / "holder.key").write_text(base64.b64encode(HOLDER.seed).decode() + "\n")
    addresses, lines = [], []
    for i, size in enumerate((20, 30)):
        vault = make_vault(tmp_path / f"v{i}", 300 + i, [{"name": f"p{j}"} for j in range(size)])
        (tmp_path / f"v{i}.cap").write_text(cap_for(vault).to_text())
        vid = base64.b64encode(vault.vault_id).decode()
        vault.close()
        role = Role(
            f"vault{i}",
            [
                *("vault", "serve", "--store", f"v{i}", "--listen", "127.0.0.1:0"),
                *("--max-connections", "50", "--per-source", "3", "--metrics", "127.0.0.1:0"),
            ],
            tmp_path,
        )
        roles.append(role)
        address = str(role.event("listening")["address"])
        addresses.append(address)
        lines.append(f"{vid}@{address} v{i}.cap\n")
    (tmp_path / "vaults.txt").write_text("".join(lines))
    agg = Role(
        "orchestration",
        [
            *("orchestration", "serve", "--listen", "127.0.0.1:0", "--vaults", "vaults.txt"),
            *("--metrics", "127.0.0.1:0"),
        ],
        tmp_path,
    )
    roles.append(agg)
    agg_address = str(agg.event("listening")["address"])
    vault0 = roles[0]

    # Before any query: the listener against its limit, no query counted.
    before = scrape(vault0.metrics)
    assert value(before, "ppn_listener_max_connections", listener="vault") == 50
    assert value(before, "ppn_listener_connections", listener="vault") == 0
    assert value(before, "psp_vault_queries_total", outcome="ok") == 0
    assert value(before, "psp_vault_query_seconds_count") == 0

    # One query: counted, with its latency.
    done = _query(tmp_path, "--vault", addresses[0], "--cap", "v0.cap")
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[0]) == {"count": 20}
    after = scrape(vault0.metrics)
    assert value(after, "psp_vault_queries_total", outcome="ok") == 1
    assert value(after, "psp_vault_query_seconds_count") == 1
    assert 0 < value(after, "psp_vault_query_seconds_sum") < 30

    # The same signed invocation twice: the vault answers it once and denies the replay.
    replayed = trio.run(_replay, tuple_of(addresses[0]), cap_for_file(tmp_path / "v0.cap"))
    assert replayed == ErrorCode.REPLAYED
    after = scrape(vault0.metrics)
    assert value(after, "psp_vault_queries_total", outcome="ok") == 2
    assert value(after, "psp_vault_denials_total", code="replayed") == 1
    assert value(after, "psp_vault_queries_total", outcome="replayed") == 1
    assert value(after, "psp_vault_query_seconds_count") == 3

    # Connections against the limit: a fourth connection from one source is refused.
    held = [socket.create_connection(tuple_of(addresses[0])) for _ in range(3)]
    try:
        wait_until(
            lambda: (
                value(scrape(vault0.metrics), "ppn_listener_connections", listener="vault") == 3
            ),
            "three held connections",
        )
        extra = socket.create_connection(tuple_of(addresses[0]))
        extra.settimeout(10)
        assert extra.recv(1) == b""  # closed at once
        extra.close()
        refused = scrape(vault0.metrics)
        assert (
            value(refused, "ppn_listener_refusals_total", listener="vault", reason="per_source")
            == 1
        )
        assert value(refused, "ppn_listener_refusals_total", listener="vault", reason="full") == 0
    finally:
        for sock in held:
            sock.close()

    # A fan-out through the aggregator: its size, duration and each vault's status.
    before = scrape(agg.metrics)
    assert value(before, "psp_orchestration_fanout_targets_count") == 0
    done = _query(tmp_path, "--via", agg_address, "--vaults", "vaults.txt")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0]) == {"count": 50}
    after = scrape(agg.metrics)
    assert value(after, "psp_orchestration_fanout_targets_count") == 1
    assert value(after, "psp_orchestration_fanout_targets_sum") == 2
    assert value(after, "psp_orchestration_fanout_seconds_count") == 1
    assert value(after, "psp_orchestration_vault_statuses_total", status="ok") == 2
    assert value(after, "ppn_listener_max_connections", listener="orchestration") > 0
    # ... and each vault answered one more query.
    assert value(scrape(vault0.metrics), "psp_vault_queries_total", outcome="ok") == 3
    assert value(scrape(roles[1].metrics), "psp_vault_queries_total", outcome="ok") == 1

    for role in roles:
        assert role.stop() == 0  # SIGTERM: a clean stop (RFC-NOTES §1.4)
        records = json_log(role.log_path)
        events = {r["event"] for r in records}
        assert {"metrics", "listening", "stopping"} <= events, events
        assert not any("traceback" in r for r in records)


async def _replay(address: tuple[str, int], cap: Capability) -> ErrorCode | None:
    """Send one invocation twice over real TCP; the second answer's error code."""
    query = Query(collection="people", op="count")
    async with await VaultClient.connect(*address) as client:
        hello = await client.hello()
        envelope = invoke_for_vault(
            cap, HOLDER, hello.vault, query.encode(), now=int(time.time()), nonce=b"r" * 16
        )
        await client.fetch(envelope.raw, query.encode())
        try:
            await client.fetch(envelope.raw, query.encode())
        except VaultError as exc:
            return exc.code
    return None


def cap_for_file(path: Path) -> Capability:
    return Capability.from_text(path.read_text().strip())


def tuple_of(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def test_fleet_controller_and_vmhost_metrics(tmp_path: Path, roles: list[Role]) -> None:
    net = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
    files = write_fleet_files(
        tmp_path, [NodePlan("cloud", f"{net}.1", controller=True), NodePlan("a", f"{net}.2")]
    )
    controller = Role(
        "controller",
        [
            *("fleet", "serve", "--identity", str(files.keys["cloud"]), "--directory"),
            *(str(files.directory), "--port", "0", "--control", str(files.control)),
            *("--eviction-timeout", "3", "--metrics", f"{net}.1:0"),
        ],
        tmp_path,
    )
    roles.append(controller)
    port = tuple_of(str(controller.event("listening")["address"]))[1]
    host = Role(
        "vmhost",
        [
            *("vmhost", "serve", "--identity", str(files.keys["a"]), "--directory"),
            *(str(files.directory), "--port", "0", "--controller-port", str(port)),
            *("--interval", "0.5", "--metrics", f"{net}.2:0"),
        ],
        tmp_path,
    )
    roles.append(host)

    wait_until(
        lambda: (
            value(scrape(controller.metrics), "ppn_fleet_heartbeats_total", result="accepted") >= 2
        ),
        "two heartbeats at the controller",
    )
    seen = scrape(controller.metrics)
    assert value(seen, "ppn_fleet_live_nodes") == 1
    assert value(seen, "ppn_fleet_evictions_total") == 0
    assert value(seen, "ppn_listener_max_connections", listener="heartbeat") > 0
    sent = scrape(host.metrics)
    assert value(sent, "ppn_vmhost_heartbeats_total", result="accepted") >= 2
    assert value(sent, "ppn_listener_max_connections", listener="spawn") > 0

    # The vm-host goes silent: the controller evicts it after 3 s and counts it.
    assert host.stop() == 0
    wait_until(
        lambda: value(scrape(controller.metrics), "ppn_fleet_evictions_total") == 1,
        "the eviction",
    )
    assert value(scrape(controller.metrics), "ppn_fleet_live_nodes") == 0
    assert controller.stop() == 0
    events = [r["event"] for r in json_log(controller.log_path)]
    assert "listening" in events and "metrics" in events and "stopping" in events
    assert any(
        r["level"] == "warning" and "evicted" in r["message"] for r in json_log(controller.log_path)
    )
    json_log(host.log_path)


# --- failures: expected ones are one sentence, an unexpected one one traceback -------------------

_CRASHING = r"""
import sys, types
from ppn.cli import _main

def register(subparsers):
    p = subparsers.add_parser("boom")
    p.set_defaults(handler=lambda args: {}["a bug"])

family = types.ModuleType("crashing_family")
family.register = register
sys.modules["crashing_family"] = family
_main.FAMILIES["crashing_family"] = ("boom",)
sys.exit(_main.main(sys.argv[1:]))
"""


def _version() -> str:
    from importlib.metadata import version

    return version("pointsav-ppn")


def test_an_unexpected_error_prints_one_traceback_with_the_version() -> None:
    text = subprocess.run(
        [sys.executable, "-c", _CRASHING, "boom"], capture_output=True, text=True, timeout=60
    )
    assert text.returncode == 1
    assert text.stderr.count("Traceback (most recent call last)") == 1, text.stderr
    assert f"ppn {_version()}" in text.stderr and "KeyError: 'a bug'" in text.stderr

    as_json = subprocess.run(
        [sys.executable, "-c", _CRASHING, "--log-format", "json", "boom"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 1
    records = [json.loads(line) for line in as_json.stderr.splitlines()]
    (crash,) = records
    assert crash["event"] == "crash" and crash["level"] == "critical"
    assert crash["version"] == _version()
    assert crash["traceback"].count("Traceback (most recent call last)") == 1
    assert "KeyError: 'a bug'" in crash["traceback"]


def test_expected_failures_of_a_role_are_one_sentence(tmp_path: Path) -> None:
    # A port in use: one sentence and the documented status (the nursery's exception group
    # used to escape as a traceback).
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    vault = make_vault(tmp_path / "v", 400, [])
    vault.close()
    try:
        serve = ["vault", "serve", "--store", "v"]
        for argv, status in (
            ([*serve, "--listen", f"127.0.0.1:{port}"], 43),
            ([*serve, "--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{port}"], 43),
        ):
            text = subprocess.run(
                [*PPN, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
            assert text.returncode == status, text.stderr
            assert text.stderr.startswith("ppn: cannot ") and "Traceback" not in text.stderr
            assert len(text.stderr.strip().splitlines()) == 1, text.stderr
            as_json = subprocess.run(
                [*PPN, "--log-format", "json", *argv],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert as_json.returncode == status
            records = [json.loads(line) for line in as_json.stderr.splitlines()]
            assert records[-1]["event"] == "failed" and records[-1]["status"] == status
            assert re.match(
                r"cannot (listen|serve metrics) on 127\.0\.0\.1:", records[-1]["message"]
            )
            assert not any("traceback" in r for r in records)
    finally:
        busy.close()


def test_log_settings_come_from_the_config_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "ppn.toml").write_text('log-format = "json"\nlog-level = "warning"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPN_")}
    shown = subprocess.run(
        [*PPN, "--config", str(tmp_path / "ppn.toml"), "config", "show", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    rows = {(r["command"], r["flag"]): r for r in json.loads(shown.stdout)["values"]}
    assert rows[("", "log-format")]["value"] == "json"
    assert rows[("", "log-level")]["source"].endswith("ppn.toml line 2")
    # --config after another global option is still found.
    after = subprocess.run(
        [*PPN, "--log-level", "info", "--config", str(tmp_path / "ppn.toml"), "config", "show"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert f"# file: {tmp_path / 'ppn.toml'}" in after.stdout, after.stderr
    failed = subprocess.run(
        [*PPN, "status", "--state", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env={**env, "PPN_LOG_FORMAT": "json"},
        timeout=60,
    )
    (record,) = [json.loads(line) for line in failed.stderr.splitlines()]
    assert record["event"] == "failed" and record["status"] == failed.returncode == 30
    bad = subprocess.run(
        [*PPN, "status"], capture_output=True, text=True, env={**env, "PPN_LOG_LEVEL": "loud"}
    )
    assert bad.returncode == 73 and "PPN_LOG_LEVEL=loud" in bad.stderr


# --- start-up: what a plain start loads ---------------------------------------------------------

_LOADED = r"""
import sys
from ppn.cli import _main
status = _main.main(sys.argv[1:])
print(sorted(m for m in sys.modules if m.startswith(("ppn.", "psp", "genesis", "logging"))))
"""


def test_version_and_plain_commands_skip_the_config_layers_and_logging(tmp_path: Path) -> None:
    from ppn.cli import _config, _main

    assert str(_config.DEFAULT_FILE) == _main.DEFAULT_CONFIG
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPN_")}
    # A host with a real /etc/ppn/ppn.toml reads it at every start: there (as root) the commands
    # run in a private mount namespace with an empty tmpfs over /etc/ppn, so the check still runs.
    prefix: list[str] = []
    if Path(_main.DEFAULT_CONFIG).exists():
        if os.geteuid() != 0:
            pytest.skip(f"{_main.DEFAULT_CONFIG} exists and hiding it needs root")
        hide = f'mount -t tmpfs ppn-etc {Path(_main.DEFAULT_CONFIG).parent} && exec "$@"'
        prefix = ["unshare", "--mount", "sh", "-c", hide, "sh"]
    version = subprocess.run(
        [*prefix, sys.executable, "-c", _LOADED, "--version"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert version.stdout.startswith(f"ppn {_version()}\n")
    loaded = version.stdout.splitlines()[1]
    # --version loads no command family, no configuration layers and no logging.
    for module in ("ppn.cli._config", "psp._cli", "ppn.mesh._cli", "logging", "ppn.cli._logging"):
        assert f"'{module}'" not in loaded, loaded
    status = subprocess.run(
        [*prefix, sys.executable, "-c", _LOADED, "status", "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    loaded = status.stdout.splitlines()[-1]
    assert "'ppn.mesh._cli'" in loaded and "'ppn.cli._config'" not in loaded, loaded
    assert "'ppn.cli._logging'" not in loaded, loaded


def test_text_log_lines_and_the_level_filter(tmp_path: Path) -> None:
    vault = make_vault(tmp_path / "v", 401, [])
    vault.close()
    serve = ["vault", "serve", "--store", "v", "--listen", "127.0.0.1:0"]
    for extra, shown in (([], True), (["--log-level", "warning"], False)):
        proc = subprocess.Popen(
            [*PPN, *extra, *serve], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert "listening on 127.0.0.1:" in proc.stdout.readline()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
        lines = err.splitlines()
        pattern = (
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info psp\.vault: vault v401 listening on "
            r"127\.0\.0\.1:\d+ address=127\.0\.0\.1:\d+"
        )
        assert any(re.fullmatch(pattern, line) for line in lines) is shown, err
        assert "Traceback" not in err
