"""One complete CPace exchange versus python-spake2 0.9, side by side in one run.

Our exchange: both parties compute their shares (generator + X25519 each), both finish
(X25519 + ISK hash each), both make a key-confirmation tag and verify the other's.
The peer: the pure-Python SPAKE2 magic-wormhole uses — SPAKE2_A and SPAKE2_B, start + finish
on both sides (SPAKE2 has no confirmation step of its own; ours is included on our side).

Runs interleaved rounds (a batch of ours, then a batch of theirs) so that load from other
processes on a shared machine hits both alike; reports per-exchange medians over rounds and
the ratio, then a breakdown of where our time goes.

    .venv/bin/python -m benchmarks cpace
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from spake2 import SPAKE2_A, SPAKE2_B

from genesis._cpace_elligator2 import FIELD_PRIME, elligator2_u, jacobi
from genesis._cpace_x25519 import calculate_generator, scalar_mult_vfy
from genesis.cpace import CPace, Role

CODE = b"7KQ3-9XWD"
CI = b"\x0bA_initiator\x0bB_responder"
SID = bytes(range(16))

GOAL_MS = 0.5
GOAL_RATIO = 40.0


def cpace_exchange() -> None:
    a = CPace(Role.INITIATOR, CODE, ci=CI, sid=SID, ad=b"ADa")
    b = CPace(Role.RESPONDER, CODE, ci=CI, sid=SID, ad=b"ADb")
    isk_a = a.finish(b.share, b"ADb")
    isk_b = b.finish(a.share, b"ADa")
    if not (b.verify(a.tag()) and a.verify(b.tag())) or isk_a != isk_b:
        raise AssertionError("CPace exchange did not agree")


def spake2_exchange() -> None:
    a = SPAKE2_A(CODE)
    b = SPAKE2_B(CODE)
    msg_a = a.start()
    msg_b = b.start()
    if a.finish(msg_b) != b.finish(msg_a):
        raise AssertionError("SPAKE2 exchange did not agree")


def _per_call(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def main() -> None:
    p = FIELD_PRIME
    scalar = bytes(range(1, 33))
    g = calculate_generator(CODE, CI, SID)
    d = (1 + 2 * int.from_bytes(g, "little") ** 2) % p
    # (label, function, calls per round); every round runs each once, so that load from other
    # processes on a shared machine hits all of them alike.
    subjects: list[tuple[str, Callable[[], object], int]] = [
        ("cpace", cpace_exchange, 60),
        ("spake2", spake2_exchange, 2),
        (
            "calculate_generator (SHA-512 + Elligator 2)",
            lambda: calculate_generator(CODE, CI, SID),
            100,
        ),
        ("  Elligator 2 map", lambda: elligator2_u(d), 100),
        ("  Jacobi symbol (the square test)", lambda: jacobi(d, p), 100),
        ("  inversion pow(d, -1, p)", lambda: pow(d, -1, p), 100),
        ("  [not used] Euler's criterion pow(d, (p-1)/2, p)", lambda: pow(d, (p - 1) // 2, p), 30),
        ("X25519 (libsodium via PyNaCl)", lambda: scalar_mult_vfy(scalar, g), 100),
    ]
    rounds = 15
    samples: dict[str, list[float]] = {label: [] for label, _, _ in subjects}
    for _, fn, _ in subjects:
        fn()
    for _ in range(rounds):
        for label, fn, number in subjects:
            samples[label].append(_per_call(fn, number))
    us = {label: statistics.median(values) * 1e6 for label, values in samples.items()}
    ours_ms, theirs_ms = us["cpace"] / 1e3, us["spake2"] / 1e3
    ratio = theirs_ms / ours_ms
    n_ours, n_theirs = rounds * subjects[0][2], rounds * subjects[1][2]
    print(f"one complete exchange, both parties (median of {rounds} interleaved rounds)")
    print(f"  genesis.cpace CPACE-X25519-SHA512 + confirmation: {ours_ms:8.3f} ms  ({n_ours} runs)")
    print(
        f"  spake2 0.9 SPAKE2_A/SPAKE2_B start+finish:        {theirs_ms:8.3f} ms  ({n_theirs} runs)"
    )
    print(f"  ratio spake2 / cpace: {ratio:.1f}x")
    print(
        f"  goals: <= {GOAL_MS} ms {'met' if ours_ms <= GOAL_MS else 'MISSED'}; "
        f">= {GOAL_RATIO:.0f}x {'met' if ratio >= GOAL_RATIO else 'MISSED'}"
    )
    print("breakdown (median per call, same rounds):")
    for label, _, _ in subjects[2:]:
        print(f"  {label:52s} {us[label]:8.1f} us")
    gen = us[subjects[2][0]]
    x25519 = us[subjects[-1][0]]
    floor = 2 * gen + 4 * x25519
    print(
        f"  one exchange = 2 generators + 4 X25519 = {floor:.0f} us of {us['cpace']:.0f} us "
        f"({100 * floor / us['cpace']:.0f}%); the rest ({us['cpace'] - floor:.0f} us) is "
        "SHA-512, 4 HMAC-SHA-512 and Python object work"
    )
    print(
        f"  load-independent view: one exchange costs {us['cpace'] / x25519:.1f} X25519 "
        "operations' time (4 is the floor; absolute times here scale with machine load)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
