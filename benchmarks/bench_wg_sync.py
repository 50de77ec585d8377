"""``ppn wg sync`` against ``wg syncconf``, side by side on the same wireguard-go device.

At 1,000 and 10,000 peers: initial apply (empty device), no-change sync, and 1 % churn
(1 % of the peers replaced by new ones). For ppn three figures: ``agent`` is what a daemon does
each pass (``Reconciler.sync`` of a parsed desired state it holds, in a running process: one
read of the device, plan, apply; the check of the writes, which it runs on the next pass's
read, is timed here on an untimed read and added, so only the second read is saved; the mesh
agent does the same but rebuilds its desired state each pass, for tens of peers);
``lib`` is one file → device pass in a running process with every cache empty (a new
backend: the caches are its own; ``parse_config`` + ``reconcile`` with its immediate read-back
and the collector paused as the command pauses it, i.e. ``ppn wg sync`` without interpreter
start-up); the ``agent`` column keeps one backend, hence its caches, across every pass and
repeat, as a long-lived agent does (a new Reconciler per repeat), with the collector on, as the
library leaves it; ``cli`` is the ``ppn wg sync`` command, a new Python process each time
like ``wg``, run as an installed ``ppn`` runs: a console script in a virtual environment of its
own that holds this source tree as a plain (non-editable) path, from cached bytecode. The
development ``.venv`` installs ppn editable, whose import hook costs every process ~30 ms that
an installed ``ppn`` does not pay; the start-up line shows both. After the table, each figure is held against the goals of issue 4 §6. Medians of a few runs, interleaved; the
"ppn ops" column is the number of operations ppn planned (0 = no write request at all).

The device lives in a network namespace this benchmark creates; the peers' endpoints are in
127.0.0.0/8 inside that namespace, with no keepalive and no traffic, so no packet is sent.
Needs root, wireguard-go and wg; says why and returns otherwise.

``PPN_BENCH_WG_KERNEL=1`` (set by ``python -m interop.kernel_vm --bench``) benchmarks a kernel
interface instead. ``PPN_BENCH_WG_PEERS``, ``PPN_BENCH_WG_TOOLS``, ``PPN_BENCH_WG_REPEATS``
choose sizes, ppn columns and repeats (see below); ``PPN_BENCH_WG_ALL=1`` prints every repeat.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ppn._keys import WireGuardKeyPair

REPEATS = {1000: 3, 10000: 2}
# PPN_BENCH_WG_PEERS=1000 runs one size only (a short run in the emulated kernel VM).
SIZES = tuple(int(n) for n in os.environ.get("PPN_BENCH_WG_PEERS", "1000,10000").split(","))
# PPN_BENCH_WG_TOOLS=agent runs the wg column and the agent's only (wg is always run: every
# figure is a ratio to it), PPN_BENCH_WG_REPEATS=5 more repeats per size: in the emulated VM,
# the lib and cli columns take most of the time, and more repeats steady the medians.
_CHOSEN = os.environ.get("PPN_BENCH_WG_TOOLS", "agent,lib,cli").split(",")
TOOLS = ("wg", *(t for t in ("agent", "lib", "cli") if t in _CHOSEN))
if "PPN_BENCH_WG_REPEATS" in os.environ:
    REPEATS = dict.fromkeys(SIZES, int(os.environ["PPN_BENCH_WG_REPEATS"]))


def _peer_lines(index: int, key: bytes) -> str:
    import base64

    v4 = ipaddress.IPv4Address(0x0A000000 + index)
    ep = ipaddress.IPv4Address(0x7F000000 + (index % 65000) + 2)
    return (
        f"[Peer]\nPublicKey = {base64.b64encode(key).decode()}\n"
        f"AllowedIPs = {v4}/32, fd00::{index:x}/128\nEndpoint = {ep}:51820\n"
    )


def _write_config(path: Path, private_b64: str, peers: list[tuple[int, bytes]]) -> None:
    body = [f"[Interface]\nPrivateKey = {private_b64}\nListenPort = 51820\n"]
    body.extend(_peer_lines(i, k) for i, k in peers)
    path.write_text("\n".join(body))


def _reset(sock_path: str) -> None:
    """Empty the device (untimed): one raw UAPI request removing every peer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    s.sendall(b"set=1\nreplace_peers=true\n\n")
    while not s.recv(4096).endswith(b"\n\n"):
        pass
    s.close()


def _installed_ppn(root: Path) -> str:
    """A virtual environment with ppn installed the plain (non-editable) way; its ``ppn``.

    The source tree and the running environment's site-packages (PyNaCl, msgpack...) are
    plain entries of a ``.pth`` file, which is what a regular install amounts to for imports;
    the console script is the one pip writes.
    """
    venv = root / "installed"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    repo = Path(__file__).resolve().parent.parent
    (site / "ppn.pth").write_text(f"{repo}\n{sysconfig.get_paths()['purelib']}\n")
    script = venv / "bin" / "ppn"
    script.write_text(
        f"#!{venv}/bin/python\nimport sys\nfrom ppn.cli import main\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = sys.argv[0].removesuffix('.exe')\n"
        "    sys.exit(main())\n"
    )
    script.chmod(0o755)
    return str(script)


# Issue 4 §6: (peers, case) → absolute limit in seconds; every case also ≤ wg syncconf.
GOALS = {(1000, "no-change"): 0.1, (10000, "no-change"): 1.0, (1000, "initial"): 1.0}


def _print_goals(
    medians: dict[tuple[int, str], dict[str, float]], no_change_writes: dict[int, int]
) -> None:
    print("goals (issue 4 §6): no-change <= 100 ms at 1k and <= 1 s at 10k with zero writes,")
    print("initial <= 1 s at 1k, each <= wg syncconf; per ppn column, 'ok' or what was missed:")
    for (n, case), row in medians.items():
        verdicts = []
        for tool in TOOLS[1:]:
            missed = []
            limit = GOALS.get((n, case))
            if limit is not None and row[tool] > limit:
                missed.append(f"> {limit * 1000:.0f} ms")
            if row[tool] > row["wg"]:
                missed.append(f"x{row[tool] / row['wg']:.2f} of wg")
            verdicts.append(f"{tool} {'ok' if not missed else ', '.join(missed)}")
        print(f"  {n:>5} {case:<10} " + "; ".join(verdicts))
    for n, count in no_change_writes.items():
        print(f"  {n:>5} no-change  operations written by ppn: {count} (goal 0)")


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    missing = [t for t in ("wireguard-go", "wg", "ip") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        print(f"skipped: needs root and {', '.join(missing) or 'nothing else'}")
        return
    from interop.netns import Lab
    from ppn.wg import (
        InterfaceConfig,
        Reconciler,
        UAPIBackend,
        WireGuardGo,
        configure_interface,
        parse_config,
        reconcile,
    )

    env = dict(os.environ)
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        # An installed ppn runs from cached bytecode; a session that sets
        # PYTHONDONTWRITEBYTECODE would make every ``ppn`` process compile its modules again
        # (~60 ms). The child processes get a private bytecode cache instead, filled here
        # (nothing is written into the source tree).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        env["PPN_WG_STATE_DIR"] = os.path.join(tmp, "state")
        import ppn

        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", os.path.dirname(ppn.__file__)],
            env=env,
            check=True,
        )
        os.environ["PPN_WG_STATE_DIR"] = env["PPN_WG_STATE_DIR"]
        ppn_command = _installed_ppn(Path(tmp))
        host = lab.host("bench")
        ifname = lab.unique_ifname("wgb")
        if os.environ.get("PPN_BENCH_WG_KERNEL") == "1":  # python -m interop.kernel_vm --bench
            # A kernel interface in this namespace (the VM's root one), so `wg`, `ppn` and the
            # library reach it exactly as they reach wireguard-go's socket: no `ip netns exec`.
            import atexit

            from ppn.wg import KernelBackend

            def device() -> KernelBackend | UAPIBackend:
                return KernelBackend(ifname)

            def reset() -> None:  # untimed: a new, empty link
                subprocess.run(["ip", "link", "del", ifname], capture_output=True)
                subprocess.run(["ip", "link", "add", ifname, "type", "wireguard"], check=True)

            reset()
            atexit.register(subprocess.run, ["ip", "link", "del", ifname], capture_output=True)
        else:
            daemon = WireGuardGo(ifname, netns=host.netns)
            daemon.start()
            assert daemon.process is not None
            lab.processes.append(daemon.process)
            configure_interface(ifname, addresses=["10.255.255.1/32"], netns=host.netns)

            def device() -> KernelBackend | UAPIBackend:
                return UAPIBackend(ifname)

            def reset() -> None:
                _reset(UAPIBackend(ifname).path)

        backend = device()
        me = WireGuardKeyPair.generate()
        import base64

        private_b64 = base64.b64encode(me.private).decode()

        def ppn_cli(path: Path) -> Callable[[], None]:
            def run() -> None:
                done = subprocess.run(
                    [ppn_command, "wg", "sync", ifname, str(path)],
                    env=env,
                    capture_output=True,  # stderr carries progress lines on long syncs
                    text=True,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"ppn wg sync exited {done.returncode}: {done.stderr}")

            return run

        ops_done: dict[str, int] = {}
        parsed: dict[Path, InterfaceConfig] = {}

        def ppn_lib(path: Path) -> Callable[[], None]:
            """One file → device pass in this process, with nothing remembered from earlier
            passes: the caches belong to the backend (and a parse), and this is a new one, as
            in ``ppn wg sync``."""

            def run() -> None:
                import gc

                from ppn.wg._io_state import load_record, save_record

                gc.disable()  # as the command does (ppn/wg/_cli.py); the library does not
                try:
                    cfg = parse_config(path.read_text())
                    record = load_record(ifname)
                    report = reconcile(
                        device(),
                        cfg,
                        now=time.time(),
                        previous=None if record is None else record.endpoints,
                    )
                    save_record(ifname, cfg.peers, unless_equal=record)
                finally:
                    gc.enable()
                ops_done["lib"] = len(report.plan)

            return run

        agent_box: list[Reconciler] = []
        # The agent's caches belong to its backend; a daemon keeps it for its lifetime.
        agent_backend = device()

        def ppn_agent(path: Path) -> Callable[[], None]:
            """What the node agent does each pass: desired state in memory, caches warm, one
            read per pass (the writes are checked against the next pass's read)."""
            cfg = parsed.setdefault(path, parse_config(path.read_text()))

            def run() -> None:
                report = agent_box[0].sync(cfg, now=time.time())
                ops_done["agent"] = len(report.plan)

            return run

        def wg(path: Path) -> Callable[[], None]:
            def run() -> None:
                subprocess.run(["wg", "syncconf", ifname, str(path)], check=True)

            return run

        def startup(argv: list[str]) -> float:
            def run() -> None:
                subprocess.run(argv, stdout=subprocess.DEVNULL, env=env, check=True)

            run()  # fills the bytecode cache
            return statistics.median(_timed(run) for _ in range(5)) * 1000

        bare = startup([os.path.join(os.path.dirname(ppn_command), "python"), "-c", "pass"])
        installed = startup([ppn_command, "wg", "sync", "--help"])
        editable = startup([sys.executable, "-m", "ppn", "wg", "sync", "--help"])
        print(
            f"process start-up: python -c pass {bare:.0f} ms; ppn wg sync --help installed "
            f"{installed:.0f} ms (the 'cli' column), editable dev .venv {editable:.0f} ms"
        )
        print(
            f"{'peers':>6} {'case':<10} {'wg syncconf':>11} {'agent':>8} {'lib':>8} {'cli':>8}"
            f" {'agent/wg':>8} {'lib/wg':>7} {'cli/wg':>7}  ppn ops"
        )
        medians: dict[tuple[int, str], dict[str, float]] = {}
        no_change_writes: dict[int, int] = {}
        for n in SIZES:
            peers = [(i, secrets.token_bytes(32)) for i in range(1, n + 1)]
            churned = list(peers)
            for j in range(n // 100):
                churned[j * 100] = (n + 1 + j, secrets.token_bytes(32))
            base = Path(tmp) / f"c{n}.conf"
            churn = Path(tmp) / f"c{n}-churn.conf"
            _write_config(base, private_b64, peers)
            _write_config(churn, private_b64, churned)
            times: dict[tuple[str, str], list[float]] = {}
            writes: dict[str, int] = {}
            makers = {"wg": wg, "agent": ppn_agent, "lib": ppn_lib, "cli": ppn_cli}
            counted = "lib" if "lib" in TOOLS else "agent"  # whose operations the table shows
            tools = [(tool, makers[tool]) for tool in TOOLS]
            for _ in range(REPEATS.get(n, 2)):
                for tool, make in tools:
                    reset()
                    agent_box[:] = [Reconciler(agent_backend)]
                    record = os.path.join(env["PPN_WG_STATE_DIR"], f"{ifname}.json")
                    if os.path.exists(record):
                        os.unlink(record)
                    for case, path in (("initial", base), ("no-change", base), ("1% churn", churn)):
                        took = _timed(make(path))
                        if tool == "agent":  # the check of these writes, due on the next read
                            # the agent's own read: its backend's caches, as in a daemon
                            after = agent_backend.read()
                            t0 = time.perf_counter()
                            agent_box[0].verify(after, now=time.time())
                            took += time.perf_counter() - t0
                        times.setdefault((case, tool), []).append(took)
                        if tool == counted:
                            writes[case] = ops_done[tool]
                    state = backend.read()
                    assert len(state.peers) == n, (tool, len(state.peers))
            for case in ("initial", "no-change", "1% churn"):
                row = {t: statistics.median(times[(case, t)]) for t in TOOLS}
                medians[(n, case)] = row
                no_change_writes[n] = writes.get("no-change", 0)
                w = row["wg"]
                ms = "".join(
                    f" {row[t] * 1000:>5.0f} ms" if t in row else f" {'-':>8}"
                    for t in ("agent", "lib", "cli")
                )
                ratios = "".join(
                    f" {row[t] / w:>{width}.2f}" if t in row else f" {'-':>{width}}"
                    for t, width in (("agent", 8), ("lib", 7), ("cli", 7))
                )
                print(f"{n:>6} {case:<10} {w * 1000:>8.0f} ms{ms}{ratios}  {writes.get(case, '-')}")
                if os.environ.get("PPN_BENCH_WG_ALL") == "1":  # every repeat, for the notes
                    for t in TOOLS:
                        each = ", ".join(f"{x * 1000:.0f}" for x in times[(case, t)])
                        print(f"{'':>6} {'':<10} {t}: {each} ms")
        _print_goals(medians, no_change_writes)
        parse_check = parse_config(base.read_text())
        assert len(parse_check.peers) == SIZES[-1]
