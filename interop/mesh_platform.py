"""The platform's mesh in three network namespaces, built with ``ppn genesis``, ``ppn join``,
``ppn invite`` and ``ppn up`` alone, on real wireguard-go.

Shape: genesis (laptop A) and the relay hub (laptop B) share underlay net 1; the relay and the
cloud node share underlay net 2. A and the cloud node cannot reach each other's underlay, so
their mesh traffic goes through the hub. Run directly for a demo (root)::

    .venv/bin/python -m interop.mesh_platform
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from interop.netns import Host, Lab

PPN = [sys.executable, "-m", "ppn"]
NET1 = "10.77.1"
NET2 = "10.77.2"


@dataclass
class Node:
    host: Host
    name: str
    state: Path
    interface: str
    agent: subprocess.Popen[str] | None = None
    up_info: dict[str, Any] = field(default_factory=dict)

    def ppn(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return self.host.run([*PPN, *args], check=check, timeout=timeout, env=_env())

    def status(self) -> dict[str, Any]:
        out = self.ppn("status", "--state", str(self.state), "--json").stdout
        return json.loads(out)  # type: ignore[no-any-return]


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


def _read_event(stream: IO[str], wanted: str, deadline: float) -> dict[str, Any]:
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError(f"process ended before the {wanted!r} event")
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == wanted:
            return event  # type: ignore[no-any-return]
        if event.get("event") == "failed":
            raise RuntimeError(f"ceremony failed: {event}")
    raise TimeoutError(f"no {wanted!r} event in time")


def ceremony(
    sponsor: Node,
    joiner: Node,
    *,
    listen: str,
    joiner_endpoints: list[str],
    first: bool,
    sponsor_endpoint: str | None = None,
    timeout: float = 60,
) -> float:
    """Run genesis (first=True) or invite on ``sponsor`` and join on ``joiner``, answering yes
    to both comparison prompts. Returns the seconds from start to both processes exiting.
    ``timeout`` bounds the whole ceremony (longer under emulation: tests/kernel/)."""
    start = time.monotonic()
    deadline = start + timeout
    if first:
        args = [
            "genesis",
            "--state",
            str(sponsor.state),
            "--name",
            sponsor.name,
            "--listen",
            listen,
            "--events",
            "json",
        ]
        if sponsor_endpoint:
            args += ["--endpoint", sponsor_endpoint]
    else:
        args = ["invite", "--state", str(sponsor.state), "--listen", listen, "--events", "json"]
    sp = sponsor.host.popen(
        [*PPN, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    assert sp.stdout is not None and sp.stdin is not None
    code = _read_event(sp.stdout, "code", deadline)
    jargs = [
        "join",
        code["code"],
        "--sponsor",
        code["address"],
        "--state",
        str(joiner.state),
        "--name",
        joiner.name,
        "--events",
        "json",
    ]
    for endpoint in joiner_endpoints:
        jargs += ["--endpoint", endpoint]
    jp = joiner.host.popen(
        [*PPN, *jargs],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    assert jp.stdout is not None and jp.stdin is not None
    for proc in (sp, jp):
        assert proc.stdout is not None and proc.stdin is not None
        _read_event(proc.stdout, "sas", deadline)
        proc.stdin.write("yes\n")
        proc.stdin.flush()
    for proc in (sp, jp):
        proc.wait(timeout=max(1, deadline - time.monotonic()))
        if proc.returncode != 0:
            raise RuntimeError(f"ceremony process exited {proc.returncode}")
    return time.monotonic() - start


def start_agent(node: Node, *extra: str) -> None:
    args = [*PPN, "up", "--state", str(node.state), "--interface", node.interface, "--json", *extra]
    node.agent = node.host.popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    assert node.agent.stdout is not None
    line = node.agent.stdout.readline()
    if not line:
        err = node.agent.stderr.read() if node.agent.stderr else ""
        raise RuntimeError(f"ppn up on {node.name} failed: {err.strip()}")
    node.up_info = json.loads(line)


def stop_agent(node: Node, timeout: float = 120) -> int:
    """SIGTERM the agent and wait for its exit status. The deadline is generous: an agent
    stops in well under a second natively, but took more than 10 s inside the emulated kernel
    VM on a loaded build box (tests/kernel), and waiting returns as soon as it has exited."""
    assert node.agent is not None
    node.agent.terminate()
    code = node.agent.wait(timeout=timeout)
    node.agent = None
    return code


def quick_ping(host: Host, address: str) -> bool:
    """One echo request with a 0.2 s wait, so polling does not add whole seconds."""
    result = host.run(["ping", "-n", "-q", "-c", "1", "-W", "0.2", address], check=False)
    return result.returncode == 0


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def build(lab: Lab, workdir: Path) -> dict[str, Node]:
    a, b, c = lab.host("gen"), lab.host("relay"), lab.host("cloud")
    lab.link(a, f"{NET1}.1/24", b, f"{NET1}.2/24")
    lab.link(b, f"{NET2}.2/24", c, f"{NET2}.3/24")
    nodes = {
        "genesis": Node(a, "genesis", workdir / "genesis", lab.unique_ifname("ppn")),
        "relay": Node(b, "relay", workdir / "relay", lab.unique_ifname("ppn")),
        "cloud": Node(c, "cloud", workdir / "cloud", lab.unique_ifname("ppn")),
    }
    return nodes


def form_mesh(lab: Lab, workdir: Path) -> tuple[dict[str, Node], dict[str, float]]:
    """Genesis; relay joins via genesis; both up; cloud joins via the relay; cloud up."""
    timings: dict[str, float] = {}
    nodes = build(lab, workdir)
    g, r, c = nodes["genesis"], nodes["relay"], nodes["cloud"]
    timings["ceremony_relay"] = ceremony(
        g,
        r,
        listen=f"{NET1}.1:0",
        first=True,
        sponsor_endpoint=f"{NET1}.1:51820",
        joiner_endpoints=[f"{NET1}.2:51820", f"{NET2}.2:51820"],
    )
    start_agent(g)
    start_agent(r, "--role", "relay")
    timings["ceremony_cloud"] = ceremony(
        r, c, listen=f"{NET2}.2:0", first=False, joiner_endpoints=[f"{NET2}.3:51820"]
    )
    joined = time.monotonic()
    start_agent(c, "--role", "cloud")
    timings["joined_to_up"] = time.monotonic() - joined
    wait_for(
        lambda: quick_ping(g.host, "10.8.0.3") and quick_ping(r.host, "10.8.0.3"),
        60,
        "genesis and relay to reach cloud",
    )
    timings["joined_to_pingable"] = time.monotonic() - joined
    timings["up_to_pingable"] = timings["joined_to_pingable"] - timings["joined_to_up"]
    wait_for(lambda: quick_ping(c.host, "10.8.0.1"), 30, "cloud to reach genesis")
    return nodes, timings


def main() -> None:
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        nodes, timings = form_mesh(lab, Path(tmp))
        for name, node in nodes.items():
            print(f"== ppn status on {name}")
            print(node.ppn("status", "--state", str(node.state)).stdout)
        print("timings:", {k: round(v, 2) for k, v in timings.items()})
        for node in nodes.values():
            stop_agent(node)


if __name__ == "__main__":
    main()


def concurrent_sponsors(lab: Lab, workdir: Path) -> dict[str, Node]:
    """Genesis and relay each admit a new node at the same time; both sponsors hand out the same
    lowest free address, and the mesh's conflict rule must re-address one of them.

    The sponsors' agents start only after both ceremonies: a running agent's signed roster
    would let the later ceremony see the earlier admission and avoid the clash (§7.5)."""
    import threading

    g_host, r_host, x_host, y_host = (lab.host(n) for n in ("gen", "relay", "x", "y"))
    lab.link(g_host, f"{NET1}.1/24", r_host, f"{NET1}.2/24")
    lab.link(g_host, "10.77.3.1/24", x_host, "10.77.3.3/24")
    lab.link(r_host, "10.77.4.2/24", y_host, "10.77.4.4/24")
    nodes = {
        name: Node(host, name, workdir / name, lab.unique_ifname("ppn"))
        for name, host in (
            ("genesis", g_host),
            ("relay", r_host),
            ("xray", x_host),
            ("yankee", y_host),
        )
    }
    g, r, x, y = nodes["genesis"], nodes["relay"], nodes["xray"], nodes["yankee"]
    ceremony(
        g,
        r,
        listen=f"{NET1}.1:0",
        first=True,
        sponsor_endpoint=f"{NET1}.1:51820",
        joiner_endpoints=[f"{NET1}.2:51820", "10.77.4.2:51820"],
    )
    errors: list[BaseException] = []

    def run(sponsor: Node, joiner: Node, listen: str, endpoint: str) -> None:
        try:
            ceremony(sponsor, joiner, listen=listen, first=False, joiner_endpoints=[endpoint])
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(g, x, "10.77.3.1:0", "10.77.3.3:51820")),
        threading.Thread(target=run, args=(r, y, "10.77.4.2:0", "10.77.4.4:51820")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    if errors:
        raise errors[0]
    start_agent(g, "--endpoint", f"{NET1}.1:51820", "--endpoint", "10.77.3.1:51820")
    start_agent(r, "--role", "relay")
    start_agent(x)
    start_agent(y)
    return nodes
