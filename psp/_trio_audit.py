"""Group commit of the audit log on trio (RFC-NOTES §9.4.5; the logic is
``psp._io_audit.GroupCommit``).

A connection about to send an answer's last frame waits for its entry's ticket. The first
waiter to find no commit running becomes the committer: it takes every pending entry, commits
them on a worker thread, and wakes everyone; those who arrived meanwhile are in the next batch.
So a lone client pays one fsync per answer and many concurrent clients share one.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import trio

from ._io_audit import AuditBatch, AuditLog, GroupCommit

__all__ = ["AuditCommitter", "commit_denials", "committer_for"]


class AuditCommitter(GroupCommit):
    def _event(self) -> trio.Event:
        return trio.Event()

    async def _run(self, batch: AuditBatch) -> None:
        try:
            # Not abandoned on cancel: the thread finishes and the batch is settled either way.
            await trio.to_thread.run_sync(self.log.commit, batch)
        finally:
            self._finish(batch)


_committers: weakref.WeakKeyDictionary[AuditLog, AuditCommitter] = weakref.WeakKeyDictionary()


def committer_for(log: AuditLog) -> AuditCommitter:
    committer = _committers.get(log)
    if committer is None:
        committer = _committers[log] = AuditCommitter(log)
    return committer


async def commit_denials(log: AuditLog, clock: Callable[[], int]) -> None:
    """Denial counts reach the store within ``COUNTER_FLUSH`` seconds, also when no answer's
    commit carries them (a vault that only refuses)."""
    while True:
        await trio.sleep(1)
        if log.denials.due(now := clock()) and not log.committing:
            await committer_for(log).commit(now)
