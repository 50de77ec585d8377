"""Two namespaces, two wireguard-go devices, configured only with ``ppn wg sync``; then a ping
through the tunnel, a no-op resync and ``ppn wg show``. Everything is removed at the end.

    sudo .venv/bin/python -m interop.wg_demo

Needs root, iproute2 and wireguard-go (ARCHITECTURE §6).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from interop.netns import Host, Lab, netns_unavailable_reason
from ppn._keys import WireGuardKeyPair, encode_key
from ppn.wg import WireGuardGo, configure_interface


def _conf(me: WireGuardKeyPair, peer: WireGuardKeyPair, endpoint: str, allowed: str) -> str:
    return (
        f"[Interface]\nPrivateKey = {encode_key(me.private)}\nListenPort = 51820\n\n"
        f"[Peer]\nPublicKey = {peer.public_b64}\nAllowedIPs = {allowed}\nEndpoint = {endpoint}\n"
    )


def _ppn(host: Host, *args: str, env: dict[str, str]) -> str:
    shown = "ppn " + " ".join(args)
    print(f"[{host.name}]$ {shown}")
    result = host.run([sys.executable, "-m", "ppn", *args], env=env, check=False)
    out = (result.stdout + result.stderr).rstrip()
    print(out)
    return out


def main() -> int:
    reason = netns_unavailable_reason(need_wireguard=True)
    if reason is not None:
        print(f"wg_demo: {reason}", file=sys.stderr)
        return 1
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PPN_WG_STATE_DIR": os.path.join(tmp, "state")}
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, "192.168.77.1/24", b, "192.168.77.2/24")
        keys = {"a": WireGuardKeyPair.generate(), "b": WireGuardKeyPair.generate()}
        names = {"a": lab.unique_ifname("wg"), "b": lab.unique_ifname("wg")}
        for host, mesh, peer, endpoint in (
            (a, "10.8.0.1/24", "b", "192.168.77.2:51820"),
            (b, "10.8.0.2/24", "a", "192.168.77.1:51820"),
        ):
            daemon = WireGuardGo(names[host.name], netns=host.netns)
            daemon.start()
            assert daemon.process is not None
            lab.processes.append(daemon.process)
            path = Path(tmp) / f"{host.name}.conf"
            allowed = "10.8.0.2/32" if peer == "b" else "10.8.0.1/32"
            path.write_text(_conf(keys[host.name], keys[peer], endpoint, allowed))
            _ppn(host, "wg", "sync", names[host.name], str(path), env=env)
            configure_interface(names[host.name], addresses=[mesh], netns=host.netns)
        ok = a.ping("10.8.0.2", count=2, timeout=3)
        print(f"[a]$ ping 10.8.0.2 through the tunnel: {'ok' if ok else 'FAILED'}")
        _ppn(a, "wg", "sync", names["a"], str(Path(tmp) / "a.conf"), env=env)
        _ppn(a, "wg", "show", names["a"], env=env)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
