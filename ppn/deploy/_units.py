"""systemd units for the long-running roles (issue 17): what each role runs, and its unit text.

A core: roles in, unit text out; writing the file and calling systemctl is
:mod:`ppn.deploy._io_systemd`. Every role is ``Type=notify`` (the command sends ``READY=1``
through :mod:`ppn._io_sdnotify` once its listener is bound), restarts on failure and runs with
the least it needs: no capability at all, except ``CAP_NET_ADMIN`` for the two roles that
configure WireGuard and links (the node agent and the vm-host); a read-only system
(``ProtectSystem=strict``) but for the state directory ``/var/lib/ppn`` (0700).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "LIMIT_NOFILE",
    "LISTENER_CAP",
    "ROLES",
    "Role",
    "UnitError",
    "render_unit",
    "role_argv",
    "role_named",
    "unit_name",
]

# default_max_connections() (the listener guard's, ppn/_trio_listener.py) allows at most this
# many connections per listener and keeps FD_RESERVE (64) descriptors for the service itself; a
# unit's descriptor limit is exactly what lets a listener reach its cap. Written out rather than
# imported, so this core loads no listener; tests/deploy/test_units.py runs the function under
# this limit, so the two cannot drift apart.
LISTENER_CAP = 4096
FD_RESERVE = 64
LIMIT_NOFILE = LISTENER_CAP + FD_RESERVE

STATE_DIR = "/var/lib/ppn"
CONFIG_FILE = "/etc/ppn/ppn.toml"

_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class UnitError(ValueError):
    """A role or instance name that no unit can be made for."""


@dataclass(frozen=True, kw_only=True)
class Role:
    name: str  # what `ppn service install NAME` takes
    unit: str  # the unit's name without ".service"; a template ends in "@"
    description: str
    command: tuple[str, ...]  # the ppn arguments; "%i" is the template's instance
    net_admin: bool = False
    runtime_dirs: tuple[str, ...] = ()
    after_agent: bool = False  # needs the mesh (the agent's addresses) before it can serve

    @property
    def template(self) -> bool:
        return self.unit.endswith("@")


ROLES: tuple[Role, ...] = (
    Role(
        name="agent",
        unit="ppn-agent",
        description="PPN node agent (WireGuard mesh, roster sync)",
        command=("up", "--state", STATE_DIR),
        net_admin=True,
        # wireguard-go's UAPI sockets live in /run/wireguard, which ProtectSystem=strict would
        # otherwise make read-only; keep it across restarts so the tunnel outlives the agent.
        runtime_dirs=("wireguard",),
    ),
    Role(
        name="vault",
        unit="ppn-vault@",
        description="PPN vault %i (PSP over one WORM store)",
        command=("vault", "serve", "--store", f"{STATE_DIR}/vaults/%i"),
        after_agent=True,
    ),
    Role(
        name="orchestration",
        unit="ppn-orchestration",
        description="PPN VM-Orchestration (PSP aggregator)",
        command=("orchestration", "serve"),
        after_agent=True,
    ),
    Role(
        name="fleet",
        unit="ppn-fleet",
        description="PPN fleet controller",
        command=("fleet", "serve", "--state", STATE_DIR),
        runtime_dirs=("ppn",),
        after_agent=True,
    ),
    Role(
        name="vmhost",
        unit="ppn-vmhost",
        description="PPN vm-host (heartbeats, VM provisioning)",
        command=("vmhost", "serve", "--state", STATE_DIR),
        net_admin=True,
        after_agent=True,
    ),
)


def role_named(name: str) -> Role:
    for role in ROLES:
        if role.name == name:
            return role
    known = ", ".join(r.name for r in ROLES)
    raise UnitError(f"no role {name!r} (one of: {known})")


def unit_name(role: Role, instance: str | None = None) -> str:
    """``ppn-agent.service``, or ``ppn-vault@NAME.service`` for a template's instance."""
    if role.template:
        if instance is None:
            raise UnitError(f"the {role.name} role runs one unit per store: give --instance NAME")
        if not _INSTANCE.fullmatch(instance):
            raise UnitError(
                f"instance {instance!r}: use letters, digits, '.', '_' and '-' (at most 64)"
            )
        return f"{role.unit}{instance}.service"
    if instance is not None:
        raise UnitError(f"the {role.name} role has one unit per host; --instance is for vault")
    return f"{role.unit}.service"


def role_argv(role: Role, *, state: str = STATE_DIR, instance: str | None = None) -> list[str]:
    """The ppn arguments of ``role`` outside systemd: its state directory, its instance."""
    unit_name(role, instance)  # the same checks as a unit's name
    argv = [a.replace(STATE_DIR, state, 1) if a.startswith(STATE_DIR) else a for a in role.command]
    return [a.replace("%i", instance or "") for a in argv]


def _quote(arg: str) -> str:
    # systemd splits ExecStart= like a shell, without expansion; quote only what needs it.
    if arg and re.fullmatch(r"[A-Za-z0-9_./:%@=+,-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(role: Role, executable: str, *, config: str = CONFIG_FILE) -> str:
    """The unit file text for ``role``, running ``executable`` (an absolute path to ``ppn``)."""
    if not executable.startswith("/"):
        raise UnitError(f"ExecStart= needs an absolute path, not {executable!r}")
    # ppn reads /etc/ppn/ppn.toml by itself when it exists; name another file explicitly.
    given = () if config == CONFIG_FILE else ("--config", config)
    exec_start = " ".join(_quote(a) for a in (executable, *given, *role.command))
    caps = "CAP_NET_ADMIN" if role.net_admin else ""
    after = "network-online.target" + (" ppn-agent.service" if role.after_agent else "")
    lines = [
        "# Written by 'ppn service install'; 'ppn service remove' deletes it.",
        "[Unit]",
        f"Description={role.description}",
        f"After={after}",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        # Stopped with systemd's default SIGTERM, which every role answers by committing what
        # is pending and exiting 0 (RFC-NOTES §1.4): no KillSignal= or SuccessExitStatus=.
        "Restart=on-failure",
        "RestartSec=2s",
        # A usage error (2) or a bad configuration (73) stays bad on every restart: fail the
        # unit at once (ppn doctor then says so) instead of restarting it every 2 s forever.
        "RestartPreventExitStatus=2 73",
        # Per-instance settings (a vault's --listen) go in the environment (PPN_<ROLE>_<FLAG>),
        # which 'ppn --config' reads after the file.
        f"EnvironmentFile=-/etc/ppn/{role.unit.rstrip('@')}{'-%i' if role.template else ''}.env",
        f"LimitNOFILE={LIMIT_NOFILE}",
        f"CapabilityBoundingSet={caps}",
        f"AmbientCapabilities={caps}",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        # read-only, not "yes": an interpreter installed under a home directory (pyenv) must
        # still run; nothing of ppn writes there.
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "StateDirectory=ppn",
        "StateDirectoryMode=0700",
    ]
    if role.runtime_dirs:
        lines += [
            f"RuntimeDirectory={' '.join(role.runtime_dirs)}",
            "RuntimeDirectoryMode=0700",
            "RuntimeDirectoryPreserve=yes",
        ]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)
