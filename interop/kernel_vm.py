"""Run the kernel-WireGuard suite (tests/kernel/) in a Debian kernel booted under qemu.

The machines this project builds on run a kernel without the WireGuard module, and cannot load
one. A distribution kernel can be booted under software emulation, though, with the host's
filesystem shared read-only (virtme-ng), and the module works there. This harness boots it once
and runs every kernel test in one pytest inside (importing pyroute2 alone takes seconds under
emulation)::

    python -m interop.kernel_vm                    # tests/kernel/ in the VM (make test-kernel)
    python -m interop.kernel_vm -- -k mesh -x      # pytest arguments after --
    python -m interop.kernel_vm --bench            # benchmarks wg_sync on a kernel interface

Where the host itself has the module, the suite runs on the host (no VM). Where neither works,
it says why and exits 0, unless ``PPN_REQUIRE_KERNEL=1`` (CI): then a missing tool, a VM that
does not boot or a module that does not load is a failure (exit 1).

Pitfalls this works around (issue 15): nested KVM fails here, so the VM runs with
``--disable-kvm`` (a guest that dies early leaves qemu hanging: everything is under a timeout);
qemu reopens stdout and stderr, so its output is piped, never redirected to one file; the guest
gets none of our environment and its command line is short, so the command is a script file in
a read-write directory shared with the guest, where the guest also leaves its exit status.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["find_kernel", "find_vng", "host_has_module", "main", "vm_unavailable_reason"]

REPO = Path(__file__).resolve().parent.parent
VIRTME_NG_VERSION = "1.42"  # the version tried (issue 15); the Makefile installs it
_STATUS_FILE = "guest-status"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def find_kernel() -> Path | None:
    """The newest kernel image in /boot whose modules include WireGuard.

    Non-realtime kernels first: ``linux-image-amd64`` is what .ci/run installs; a realtime
    kernel some other package pulled in also works but boots slower.
    """
    found: list[tuple[bool, tuple[int, ...], Path]] = []
    for image in Path("/boot").glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        wg_dir = Path("/lib/modules") / version / "kernel" / "drivers" / "net" / "wireguard"
        if os.access(image, os.R_OK) and any(wg_dir.glob("wireguard.ko*")):
            found.append(("-rt-" not in version, _version_key(version), image))
    return max(found)[2] if found else None


def find_vng() -> str | None:
    """virtme-ng's ``vng``: on PATH, or in the venv the Makefile makes for it (.venv/vng)."""
    for candidate in (
        REPO / ".venv" / "vng" / "bin" / "vng",
        Path(sys.prefix) / "vng" / "bin" / "vng",  # the same, run from a copy of the tree
    ):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("vng")


def vm_unavailable_reason() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "needs qemu-system-x86_64 (Debian package qemu-system-x86)"
    if find_vng() is None:
        return f"needs virtme-ng {VIRTME_NG_VERSION} ('make test-kernel' installs it in .venv/vng)"
    if shutil.which("busybox") is None:
        return "needs busybox (Debian package busybox-static)"
    if find_kernel() is None:
        return "needs a kernel image with the WireGuard module in /boot (linux-image-amd64)"
    return None


def host_has_module() -> bool:
    """True when this very kernel can make a WireGuard link (then no VM is needed)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    if not Path("/sys/module/wireguard").exists():
        probe = subprocess.run(["modprobe", "-q", "wireguard"], capture_output=True)
        if probe.returncode != 0:
            return False
    return Path("/sys/module/wireguard").exists()


def _guest_script(
    rwdir: Path, command: list[str], env: dict[str, str], then: list[str] | None = None
) -> str:
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    return f"""#!/bin/sh
# Written by interop/kernel_vm.py; runs as root inside the guest.
cd {shlex.quote(str(REPO))} || exit 90
{exports}export HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PPN_IN_KERNEL_VM=1
echo "kernel-vm: guest $(uname -r) up"
modprobe wireguard || {{ echo "kernel-vm: modprobe wireguard failed"; echo 91 > {rwdir}/{_STATUS_FILE}; exit 91; }}
modprobe tun || {{ echo "kernel-vm: modprobe tun failed"; echo 92 > {rwdir}/{_STATUS_FILE}; exit 92; }}
{shlex.join(command)}
status=$?
{"" if then is None else shlex.join(then) + " || status=$((status ? status : 1))"}
echo $status > {rwdir}/{_STATUS_FILE}
exit $status
"""


def _compile_on_host() -> None:
    """Bytecode for every package the guest imports, written on the host beforehand.

    The guest sees this tree read-only (and runs with PYTHONDONTWRITEBYTECODE), so without it
    every Python process in the guest compiles the modules it imports, under emulation, again.
    """
    dirs = [str(REPO / d) for d in ("genesis", "ppn", "psp", "interop", "benchmarks", "tests")]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *[d for d in dirs if os.path.isdir(d)]],
        stdout=subprocess.DEVNULL,
        check=False,  # a read-only checkout still runs, only slower
    )


def run_in_vm(
    command: list[str],
    *,
    timeout: float,
    memory: str,
    cpus: int,
    env: dict[str, str],
    then: list[str] | None = None,
) -> int:
    """Boot the kernel, run ``command`` (argv, in the repository) as root, return its status.

    A guest that never reports a status (no boot, a crash, the timeout) is status 1.
    """
    kernel = find_kernel()
    vng = find_vng()
    assert kernel is not None and vng is not None
    passed = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("PPN_", "PYTEST_", "HYPOTHESIS_")) or k in ("PATH", "TERM", "LANG")
    } | env
    _compile_on_host()
    with tempfile.TemporaryDirectory(prefix="ppn-kernel-vm-") as tmp:
        rwdir = Path(tmp)
        script = rwdir / "guest.sh"
        script.write_text(_guest_script(rwdir, command, passed, then))
        script.chmod(0o755)
        argv = [
            vng, "--run", str(kernel), "--disable-kvm", "--memory", memory,
            "--cpus", str(cpus), "--rwdir", str(rwdir), "--", str(script),
        ]  # fmt: skip
        print(f"kernel-vm: booting {kernel.name} under qemu (TCG, {cpus} cpus, {memory})",
              flush=True)  # fmt: skip
        started = time.monotonic()
        env = dict(os.environ)
        env["PATH"] = f"{Path(vng).parent}{os.pathsep}{env.get('PATH', '')}"
        # Piped, not redirected (qemu reopens its stdout and stderr); its own process group so a
        # timeout ends qemu and everything under it, by this PID only.
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stdout is not None
        deadline = started + timeout
        timed_out = False
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode(errors="replace")
                if line.startswith("kernel-vm: guest ") and line.rstrip().endswith(" up"):
                    line = f"{line.rstrip()} after {time.monotonic() - started:.0f} s\n"
                sys.stdout.write(line)
                sys.stdout.flush()
                if time.monotonic() > deadline:
                    timed_out = True
                    break
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        elapsed = time.monotonic() - started
        status_file = rwdir / _STATUS_FILE
        if timed_out:
            print(f"kernel-vm: FAILED: no result after {timeout:.0f} s (guest hung or too slow)")
            return 1
        if not status_file.exists():
            print(f"kernel-vm: FAILED: the guest did not report (vng exited {proc.returncode})")
            return 1
        status = int(status_file.read_text().strip() or "1")
        print(f"kernel-vm: guest exited {status} after {elapsed:.0f} s (boot included)")
        return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.kernel_vm", description=__doc__)
    parser.add_argument("--timeout", type=float, default=2700, help="whole VM run, seconds")
    parser.add_argument("--memory", default="2G")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--bench", action="store_true", help="run benchmarks wg_sync instead")
    parser.add_argument(
        "--then-bench", action="store_true", help="the tests, then the benchmark, in one boot"
    )
    parser.add_argument(
        "--vm", action="store_true", help="boot a VM even if the host has the module"
    )
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args(argv)
    require = os.environ.get("PPN_REQUIRE_KERNEL") == "1"

    if args.bench:
        # benchmarks/bench_wg_sync.py reads this: a kernel interface instead of wireguard-go
        extra_env = {"PPN_BENCH_WG_KERNEL": "1"}
        command = [sys.executable, "-m", "benchmarks", "wg_sync"]
    else:
        extra_env = {}
        command = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "kernel",
            *(args.pytest_args or ["tests/kernel"]),
        ]  # fmt: skip
    if host_has_module() and not args.vm:
        print("kernel-vm: this kernel has the WireGuard module; running on the host", flush=True)
        return subprocess.run(command, cwd=REPO, env={**os.environ, **extra_env}).returncode
    reason = vm_unavailable_reason()
    if reason is not None:
        if require:
            print(f"kernel-vm: FAILED: PPN_REQUIRE_KERNEL=1 but no kernel VM can run: {reason}")
            return 1
        print(f"kernel-vm: skipped: no WireGuard module here and no VM: {reason}")
        return 0
    then = None
    if args.then_bench and not args.bench:
        then = ["env", "PPN_BENCH_WG_KERNEL=1", sys.executable, "-m", "benchmarks", "wg_sync"]
    return run_in_vm(
        command,
        timeout=args.timeout,
        memory=args.memory,
        cpus=args.cpus,
        env=extra_env,
        then=then,
    )


if __name__ == "__main__":
    sys.exit(main())
