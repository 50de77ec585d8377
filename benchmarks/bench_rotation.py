"""How long pings fail while a member rotates its WireGuard key (issue 18; RFC-NOTES §7.15).

Three members on real wireguard-go in network namespaces, agents running; three ping streams at
50 ms through the rotating member while ``ppn rotate wireguard`` runs on it, five rotations in a
row. The peer figure is WireGuard's own: one handshake retry (REKEY_TIMEOUT, 5 s) — what a swap
costs when one side initiates to a key the other does not have yet — and the gap is reported as
a ratio to it. Needs root and wireguard-go; says why and returns otherwise. The same scenario
runs as ``python -m interop.rotation_gap [ROTATIONS]``.
"""

from __future__ import annotations

import statistics

from interop.netns import netns_unavailable_reason

ROTATIONS = 5
HANDSHAKE_RETRY = 5.0


def main() -> None:
    reason = netns_unavailable_reason(need_wireguard=True)
    if reason is not None:
        print(f"skipped: {reason}")
        return
    from interop.rotation_gap import measure, report

    results = measure(ROTATIONS)
    print(report(results))
    worst = max(max(r.gap, r.worst_rtt) for r in results)
    median = statistics.median(max(r.gap, r.worst_rtt) for r in results)
    print(
        f"disruption (longest unanswered run or slowest echo) vs one handshake retry: median "
        f"{median / HANDSHAKE_RETRY:.3f}x, max {worst / HANDSHAKE_RETRY:.3f}x"
    )


if __name__ == "__main__":
    main()
