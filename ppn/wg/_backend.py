"""One interface for every WireGuard backend, and the read → plan → apply → verify loop.

A backend reads a :class:`DeviceState` and applies a list of operations; kernel (netlink),
userspace (UAPI socket), config-only (a file) and the in-memory fake all look the same to
:func:`reconcile` (one pass, verified by reading back at once: what ``ppn wg sync`` does) and
to :class:`Reconciler` (pass after pass in a long-running process, each pass's writes verified
by the read that starts the next: what the mesh agent does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._model import (
    DEFAULT_STALE_AFTER,
    DeviceState,
    Endpoint,
    InterfaceConfig,
    VerifyError,
)
from ._plan import Operation, Ownership, Plan, check_applied, describe, plan

__all__ = ["Backend", "Reconciler", "SyncReport", "reconcile"]


class Backend(Protocol):
    """What every backend offers. ``kind`` is a short name (``kernel``, ``userspace``...)."""

    @property
    def kind(self) -> str: ...

    @property
    def description(self) -> str: ...

    def read(self) -> DeviceState:
        """The device as it is now (private keys already redacted)."""
        ...

    def apply(self, ops: Sequence[Operation]) -> None:
        """Apply ``ops`` in order. May be interrupted half way; re-planning converges."""
        ...


@dataclass(frozen=True, kw_only=True)
class SyncReport:
    """What :func:`reconcile` or :meth:`Reconciler.sync` did.

    ``verified`` is true when the device was read after the writes and matched (or nothing
    needed writing); a :class:`Reconciler` pass that wrote reports ``applied=True,
    verified=False``: its writes are verified by the next pass's read.
    """

    interface: str
    backend: str
    plan: Plan
    applied: bool
    verified: bool


def reconcile(
    backend: Backend,
    desired: InterfaceConfig,
    *,
    now: float,
    owned: Ownership = None,
    previous: Mapping[bytes, Endpoint | None] | None = None,
    stale_after: float = DEFAULT_STALE_AFTER,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
    current: DeviceState | None = None,
) -> SyncReport:
    """Read the device, plan, apply (unless ``dry_run`` or nothing to do) and read back.

    Read-back (:func:`check_applied`) compares the device's whole peer set and, field by field,
    the interface and every peer that was written; a difference is :class:`VerifyError`.
    ``progress`` is told, in a few words, about each step that may take a while. ``current``
    is a state the caller has just read from ``backend`` (it is then not read again).
    """
    return _reconcile(
        backend,
        desired,
        now=now,
        owned=owned,
        previous=previous,
        stale_after=stale_after,
        dry_run=dry_run,
        progress=progress,
        current=current,
    )


def _reconcile(
    backend: Backend,
    desired: InterfaceConfig,
    *,
    now: float,
    owned: Ownership,
    previous: Mapping[bytes, Endpoint | None] | None,
    stale_after: float,
    dry_run: bool,
    progress: Callable[[str], None] | None,
    current: DeviceState | None,
    verify: bool = True,
    prefixes_checked: bool = False,
) -> SyncReport:
    say = progress or (lambda _text: None)
    if current is None:
        current = backend.read()
    the_plan = plan(
        desired,
        current,
        now=now,
        owned=owned,
        previous=previous,
        stale_after=stale_after,
        prefixes_checked=prefixes_checked,
    )
    if dry_run or not the_plan:
        return SyncReport(
            interface=current.name,
            backend=backend.kind,
            plan=the_plan,
            applied=False,
            verified=not the_plan,
        )
    say(f"applying {len(the_plan)} operation(s) to {current.name}")
    backend.apply(the_plan.operations)
    if not verify:
        return SyncReport(
            interface=current.name,
            backend=backend.kind,
            plan=the_plan,
            applied=True,
            verified=False,
        )
    say(f"reading {current.name} back")
    after = backend.read()
    remaining = check_applied(
        desired, after, the_plan, now=now, owned=owned, stale_after=stale_after
    )
    if remaining:
        first = describe(remaining[0])
        raise VerifyError(
            f"read-back of {current.name} differs from the desired state in "
            f"{len(remaining)} place(s), first: {first}"
        )
    return SyncReport(
        interface=current.name, backend=backend.kind, plan=the_plan, applied=True, verified=True
    )


class Reconciler:
    """:func:`reconcile` pass after pass, for a long-running process (the mesh agent).

    The difference is where the read-back happens. A pass reads the device anyway before it
    plans; reading the whole device a second time right after each write doubles the device
    I/O of every pass that changes something (a full dump is ~70 ms at 10,000 peers on
    wireguard-go, more than the write itself under churn). So the writes of one pass are
    verified against the read that starts the next one, before that pass plans: every peer
    written must be there as written (an endpoint it roamed to since counts, as in
    :func:`check_applied`), every peer removed must be gone, the interface as set. A
    difference raises :class:`VerifyError` once (the writes did not take, or something else
    changed those peers in between); the pass after it plans from the device as it is.

    Not thread-safe: one pass at a time (the agent runs them one after another).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        owned: Ownership = None,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        self.backend = backend
        self.owned = owned
        self.stale_after = stale_after
        self._unverified: tuple[InterfaceConfig, Plan] | None = None
        # The last desired state planned without error, hence free of duplicate prefixes: a
        # process that holds its desired state re-plans the same frozen object every pass and
        # need not re-hash every prefix each time (by identity: equality would hash them all).
        self._checked: InterfaceConfig | None = None

    @property
    def unverified(self) -> Plan | None:
        """The last pass's writes, until a read has confirmed them (``None`` = nothing pending)."""
        return None if self._unverified is None else self._unverified[1]

    def sync(
        self,
        desired: InterfaceConfig,
        *,
        now: float,
        current: DeviceState | None = None,
        previous: Mapping[bytes, Endpoint | None] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> SyncReport:
        """Verify the previous pass's writes, then plan and apply this one (not verified yet).

        ``current`` is a state the caller has just read from the backend; otherwise it is read
        here. Raises :class:`VerifyError` if the previous writes are not on the device.
        """
        if current is None:
            current = self.backend.read()
        self.verify(current, now=now)
        report = _reconcile(
            self.backend,
            desired,
            now=now,
            owned=self.owned,
            previous=previous,
            stale_after=self.stale_after,
            dry_run=False,
            progress=progress,
            current=current,
            verify=False,
            prefixes_checked=desired is self._checked,
        )
        self._checked = desired
        if report.applied:
            self._unverified = (desired, report.plan)
        return report

    def verify(self, current: DeviceState, *, now: float) -> None:
        """Check the pending writes against ``current`` (a fresh read); no-op if none pend."""
        if self._unverified is None:
            return
        desired, applied = self._unverified
        self._unverified = None  # reported once; the next pass plans from the device as it is
        remaining = check_applied(
            desired,
            current,
            applied,
            now=now,
            owned=self.owned,
            stale_after=self.stale_after,
            whole_set=False,
        )
        if remaining:
            raise VerifyError(
                f"{current.name} differs from what the last pass wrote in {len(remaining)} "
                f"place(s) (the write did not take, or something else changed those peers "
                f"since), first: {describe(remaining[0])}"
            )
