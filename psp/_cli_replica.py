"""``ppn vault follow``: keep a replica of a vault over PSP (RFC-NOTES §9.5.1, §9.7).

Registered by :mod:`psp._cli` under ``ppn vault``. Exit statuses: 0 (``--once``: caught up; or
stopped by SIGTERM), 41 the primary refused the capability or is not the vault it names, 43 the
replica's or the metrics' address cannot be served, 44 the primary broke the protocol, 45 an
answer did not verify (nothing of it written) or the chains diverged, 46 the store is not a
replica or refused the write, 47 bad key or capability, 130 interrupted. An unreachable primary is retried, never an exit. Heavy imports
happen inside the handler.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from ppn.ports import REPLICA_METRICS_PORT, VAULT_PORT

from ._cli_common import (
    EXIT_CHAIN_BROKEN,
    EXIT_STORE,
    EXIT_UNAVAILABLE,
    error,
    fail_code,
    hostport,
    load_holder,
    parse_pubkey,
    print_json,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    from ._trio_replica import FollowStatus

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_vault_follow"]

log = logging.getLogger("psp.replica")


class _Progress:
    """Progress as a log line on stderr at most once a second, and a line on stdout each time
    the replica catches up (or JSON lines on stdout with ``--json``)."""

    def __init__(self, *, json: bool, source: str) -> None:
        self.json = json
        self.source = source
        self.last = -1.0
        self.caught_up = False
        self.connected = True

    def __call__(self, status: FollowStatus) -> None:
        rate = status.written / status.elapsed if status.elapsed > 0 else 0.0
        fields = {
            "seq": status.seq,
            "head": status.head.hex(),
            "primary_head": status.primary_head,
            "written": status.written,
            "rate": round(rate, 1),
        }
        if not status.connected:
            if self.connected:
                self._say("disconnected", fields, f"lost {self.source}; retrying")
            self.connected, self.caught_up = False, False
            return
        self.connected = True
        if status.caught_up and not self.caught_up:
            self.caught_up = True
            self.last = status.elapsed
            if self.json:
                print_json({"event": "caught_up", **fields})
            else:
                print(f"caught up: entry {status.seq}, chain head {status.head.hex()}", flush=True)
            return
        self.caught_up = status.caught_up
        if not status.caught_up and status.elapsed - self.last >= 1.0:
            self.last = status.elapsed
            self._say(
                "progress",
                fields,
                f"replica at entry {status.seq} of {status.primary_head} ({rate:,.0f} entries/s)",
            )

    def _say(self, event: str, fields: dict[str, Any], text: str) -> None:
        if self.json:
            print_json({"event": event, **fields})
        elif event == "disconnected":
            log.warning(text, extra={"event": event, **fields})
        else:
            log.info(text, extra={"event": event, **fields})


def _vault_follow(args: argparse.Namespace) -> int:
    import trio

    from ppn import encode_key
    from ppn.cli._main import trio_run_until_sigterm

    from ._errors import ErrorCode
    from ._io_store import StoreError
    from ._replication import ReplicationError
    from ._trio_replica import FollowerError, ReplicaFollower, follow_and_serve

    key, cap = load_holder(args.key, args.cap)
    host, port = args.source
    progress = _Progress(json=args.json, source=f"{host}:{port}")
    follower = ReplicaFollower(
        args.store,
        host=host,
        port=port,
        key=key,
        capability=cap,
        vault_id=parse_pubkey(args.vault_id) if args.vault_id else None,
        poll=args.poll,
        report=progress,
    )

    guard, observer = None, None
    if args.metrics:
        from ppn._trio_listener import ListenerGuard
        from ppn.cli._metrics import Metrics, ReplicaCollector, VaultMetrics

        metrics = Metrics(EXIT_UNAVAILABLE)
        ReplicaCollector(follower, metrics.registry)
        if args.serve:
            guard = ListenerGuard()  # serve_vault's default limits, observed
            metrics.listener("vault", guard)
            observer = VaultMetrics(metrics.registry)

    def listening(listeners: list[trio.SocketListener]) -> None:
        for listener in listeners:
            h, p = listener.socket.getsockname()[:2]
            assert follower.vault_id is not None
            log.info(
                "replica of %s listening on %s:%d",
                encode_key(follower.vault_id),
                h,
                p,
                extra={"event": "listening", "address": f"{h}:{p}"},
            )

    if not args.json:
        log.info(
            "following %s:%d into %s",
            host,
            port,
            args.store,
            extra={"event": "following", "source": f"{host}:{port}"},
        )
    serve_options = {} if guard is None else {"guard": guard, "observer": observer}

    async def run() -> FollowStatus | None:
        async with trio.open_nursery() as nursery:
            if args.metrics:
                await nursery.start(metrics.serve, args.metrics)
            status = await follow_and_serve(
                follower,
                serve=args.serve,
                once=args.once,
                on_listening=listening,
                **serve_options,
            )
            nursery.cancel_scope.cancel()  # --once: caught up; the endpoint ends with it
        return status

    try:
        status = trio_run_until_sigterm(run, "replica")
    except ReplicationError as exc:
        raise error(
            f"refused an answer from {host}:{port}: {exc}; nothing of it was written",
            EXIT_CHAIN_BROKEN,
        ) from None
    except FollowerError as exc:
        if exc.code is ErrorCode.DIVERGED:
            raise error(
                f"{exc} (the replica is not a prefix of the primary)", EXIT_CHAIN_BROKEN
            ) from None
        if exc.code is None:
            raise error(str(exc), EXIT_STORE) from None
        raise fail_code(exc.code, str(exc)) from None
    except StoreError as exc:
        raise error(str(exc), EXIT_STORE) from None
    except OSError as exc:
        raise error(f"cannot serve the replica: {exc.strerror or exc}", EXIT_UNAVAILABLE) from None
    finally:
        follower.close()
    if status is not None:
        rate = status.written / status.elapsed if status.elapsed > 0 else 0.0
        if args.json:
            print_json(
                {
                    "event": "done",
                    "seq": status.seq,
                    "head": status.head.hex(),
                    "primary_head": status.primary_head,
                    "written": status.written,
                    "seconds": round(status.elapsed, 3),
                    "rate": round(rate, 1),
                }
            )
        else:
            print(
                f"replica at entry {status.seq} (chain head {status.head.hex()}); wrote "
                f"{status.written} entries in {status.elapsed:.1f} s ({rate:,.0f} entries/s)"
            )
    return 0


def add_vault_follow(vsub: Subparsers) -> None:
    p = vsub.add_parser(
        "follow",
        help="keep a replica of another vault, over PSP",
        description=(
            "Copy a primary vault's chain into the replica store --store and keep it up to date. "
            "Each answer is checked before anything is written: consecutive entries, canonical "
            "records, every hash-chain link, and the primary's signature (seal) over where the "
            "answer leads. While the primary is ahead the follower asks again at once, else every "
            "--poll seconds; a lost primary is retried with a growing pause (up to 5 s), so a "
            "restarted primary is picked up where the replica stands. The replica refuses local "
            "appends (exit 55) and, with --serve, answers queries itself, each answer marked as "
            "from a replica with its as_of (RFC-NOTES §9.5.1)."
        ),
        epilog=(
            "the capability must grant 'replicate' over the whole vault:\n"
            "  ppn cap mint --store primary --to $(ppn key show follower.key) --ops replicate "
            "--ttl 365d --out follower.cap\n"
            "  ppn vault follow --from 10.0.0.5:9210 --cap follower.cap --key follower.key "
            "--store replica --serve 127.0.0.1:9212\n"
            "exit statuses: 0 caught up (--once) or stopped by SIGTERM, 41 refused by the primary, 43 the --serve or "
            "--metrics address cannot be bound, 45 an answer did not "
            "verify (nothing written) or the chains diverged, 46 not a replica of this primary, "
            "47 bad key or capability, 130 interrupted"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        type=hostport,
        metavar="HOST:PORT",
        help=f"the primary vault's PSP address (vaults listen on {VAULT_PORT} by default)",
    )
    p.add_argument(
        "--cap",
        required=True,
        metavar="CAP",
        help="a capability granting 'replicate' (text or file)",
    )
    p.add_argument(
        "--key", required=True, metavar="FILE", help="the holder key the capability was issued to"
    )
    p.add_argument(
        "--store",
        required=True,
        metavar="DIR",
        help="the replica store (created on first contact; later runs resume from its head)",
    )
    p.add_argument(
        "--vault-id",
        metavar="PUBKEY",
        help="the primary's vault id (default: the id the replica store holds, or for a new "
        "store the one the primary gives, which the capability must name)",
    )
    p.add_argument(
        "--serve",
        type=hostport,
        metavar="HOST:PORT",
        help="also answer PSP queries on this address from the replica (port 0 picks one)",
    )
    p.add_argument(
        "--poll",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between requests once caught up (default 1)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="stop once the replica has the primary's head (a catch-up, not a follower)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines: progress, caught_up, done")
    from ppn.cli._main import add_metrics_flag

    add_metrics_flag(p, REPLICA_METRICS_PORT)
    p.set_defaults(handler=_vault_follow, daemon=True)
