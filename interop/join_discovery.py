"""Join by code alone: a LAN of network namespaces on one bridge, a NAT router, an impostor.

Building blocks for ``tests/genesis/test_join_discovery_netns.py``,
``tests/genesis/test_join_reverse_netns.py`` and ``benchmarks/bench_ceremony.py``:

- :func:`lan` — hosts on one bridge (a namespace of its own), so mDNS multicast reaches every
  host and nothing else: zeroconf only ever sees the namespaces' veth addresses.
- :func:`natted_pair` — a sponsor behind a router that masquerades it (nftables), and a public
  joiner that cannot reach the sponsor's network.
- :func:`isolated` — a command in its own mount namespace with a private /var/run/wireguard,
  so two nodes can both use the default interface name ``ppn0`` (wireguard-go's UAPI sockets
  live in that one directory for every network namespace).
- ``python -m interop.join_discovery impostor WINDOW ADDR`` — a fake sponsor: announces WINDOW
  on ADDR like a real one and runs a real Sponsor core with a code it made up for that window
  on the pairing port, the strongest impostor that does not know the code.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from interop.netns import Host, Lab

__all__ = ["isolated", "lan", "natted_pair", "ppn", "read_event", "start"]

LAN_NET = "10.66.0"


def ppn(*args: str) -> list[str]:
    return [sys.executable, "-m", "ppn", *args]


def env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


def isolated(argv: Sequence[str], hostname: str) -> list[str]:
    """``argv`` as on a machine of its own: a private mount namespace whose /var/run/wireguard
    is its own tmpfs, and a UTS namespace with ``hostname`` (the default node name)."""
    os.makedirs("/var/run/wireguard", exist_ok=True)
    script = f'hostname {hostname} && mount -t tmpfs ppn-wg /var/run/wireguard && exec "$@"'
    return ["unshare", "--mount", "--uts", "sh", "-c", script, "sh", *argv]


def start(host: Host, argv: Sequence[str]) -> subprocess.Popen[str]:
    return host.popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )


def read_event(stream: IO[str] | None, deadline: float) -> dict[str, Any]:
    """The next JSON event line (other lines skipped), or an error at the deadline/EOF."""
    assert stream is not None
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError("process ended without another event")
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            return event
    raise TimeoutError("no event in time")


def lan(lab: Lab, names: Sequence[str]) -> list[tuple[Host, str]]:
    """Hosts on one bridge, addressed LAN_NET.1, .2, ... Returns (host, address) pairs."""
    switch = lab.host("sw")
    switch.run(["ip", "link", "add", "br0", "type", "bridge"])
    switch.run(["ip", "link", "set", "br0", "up"])
    hosts = []
    for i, name in enumerate(names, start=1):
        host = lab.host(name)
        address = f"{LAN_NET}.{i}"
        # lab.link addresses both ends; the switch's end is flushed and enslaved to the bridge.
        _, port = lab.link(host, f"{address}/24", switch, f"10.67.{i}.1/32")
        switch.run(["ip", "addr", "flush", "dev", port])
        switch.run(["ip", "link", "set", port, "master", "br0"])
        hosts.append((host, address))
    return hosts


def natted_pair(lab: Lab) -> tuple[Host, Host, str, str]:
    """Sponsor 192.168.50.2 behind router (masquerade to 203.0.113.1), joiner 203.0.113.2.

    The joiner has no route to 192.168.50.0/24: it can reach the sponsor only through the
    mappings the sponsor's own outgoing traffic creates. Returns (sponsor, joiner, sponsor's
    private address, joiner's address)."""
    sponsor, router, joiner = lab.host("nsp"), lab.host("nrt"), lab.host("njo")
    lab.link(sponsor, "192.168.50.2/24", router, "192.168.50.1/24")
    _, public = lab.link(router, "203.0.113.1/24", joiner, "203.0.113.2/24")
    del public
    sponsor.run(["ip", "route", "add", "default", "via", "192.168.50.1"])
    router.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    rules = (
        "table ip ppnnat {\n"
        " chain post { type nat hook postrouting priority 100; ip saddr 192.168.50.0/24"
        ' oifname != "lo" ip daddr != 192.168.50.0/24 masquerade; }\n'
        " chain pass_out { type filter hook forward priority 0; policy drop;"
        " ct state established,related accept; ip saddr 192.168.50.0/24 accept; }\n"
        "}\n"
    )
    router.run(["nft", "-f", "-"], input=rules)
    return sponsor, joiner, "192.168.50.2", "203.0.113.2"


# --- the impostor --------------------------------------------------------------------------------


def impostor(window: int, address: str, port: int) -> None:
    """Announce ``window`` on ``address`` and answer every joiner with a made-up code."""
    import trio

    from genesis import AcceptWindow, PartyInfo, Sponsor, make_code, mesh_id_for
    from genesis._io_discovery import Announcer
    from genesis._trio import run_ceremony
    from ppn import IdentityKey, WireGuardKeyPair

    me = PartyInfo(
        name="impostor",
        identity=IdentityKey.generate().public,
        wg=WireGuardKeyPair.generate().public,
    )

    class App:
        def window_requested(self, event: Any) -> AcceptWindow:
            return AcceptWindow(code=make_code(window, secrets.token_bytes(5)))

        async def decide(self, event: Any) -> Any:
            raise AssertionError("a wrong code never reaches the SAS")

        async def joined(self, event: Any) -> None:
            raise AssertionError("a wrong code never joins")

    async def handle(stream: Any) -> None:
        core = Sponsor(
            me=me,
            mesh_id=mesh_id_for(me.identity),
            nonce=secrets.token_bytes(16),
            now=trio.current_time(),
        )
        result = await run_ceremony(stream, core, App())
        print(json.dumps({"event": "attempt", "result": type(result).__name__}), flush=True)

    async def main() -> None:
        announcer = Announcer([address])
        await announcer.start()
        announcer.announce(window=window, mesh_id=bytes(32), port=port, name="sponsor")
        print(json.dumps({"event": "announcing", "window": window}), flush=True)
        try:
            await trio.serve_tcp(handle, port, host=address)
        finally:
            await announcer.aclose()

    trio.run(main)


if __name__ == "__main__":
    if sys.argv[1:2] == ["impostor"]:
        impostor(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 9205)
    else:
        sys.exit("usage: python -m interop.join_discovery impostor WINDOW ADDR [PORT]")
