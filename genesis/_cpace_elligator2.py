"""Elligator 2 for Curve25519 over GF(2^255 - 19), in pure Python.

This is the map CPace's ``G_X25519.calculate_generator`` uses (draft-irtf-cfrg-cpace-21
section 8.2 and appendix A.5; RFC 9380 section 6.7.1 with Z = 2): a field element ``r``
becomes the u-coordinate of a point on Curve25519 (never on its twist).

Speed: the map needs one quadratic-character test and one inversion. A Legendre symbol by
Euler's criterion costs a 254-bit exponentiation: over 250 modular squarings in CPython's
``pow``, each a generic long division by p, plus multiplications for the exponent's many set
bits. The Jacobi symbol by the reciprocity-law Euclidean algorithm needs only about 100 cheap
steps on shrinking integers and measures about five times faster here (``python -m benchmarks
cpace`` prints both); for the prime p it *is* the Legendre symbol.
The inversion is CPython's ``pow(x, -1, p)`` (an extended Euclid in C). The character test
is done on a value equivalent to ``g(x1)`` up to a non-zero square, so it needs no inversion
of its own (see :func:`elligator2_u`).

Not constant-time: CPython integers take time that depends on their values, and the
Euclidean loop's step count depends on its input. RFC-NOTES §4 ("Security considerations")
says what that leaks and why it is acceptable for this profile.
"""

from __future__ import annotations

__all__ = ["CURVE25519_A", "FIELD_PRIME", "ELLIGATOR2_Z", "elligator2_u", "jacobi"]

FIELD_PRIME = (1 << 255) - 19
CURVE25519_A = 486662
ELLIGATOR2_Z = 2  # the draft's find_z_ell2 result for GF(2^255 - 19): the smallest non-square

_P = FIELD_PRIME
_A = CURVE25519_A
_NEG_A = _P - _A
_A_SQUARED = _A * _A  # < p, so already reduced

# For odd n, each factor two stripped from a contributes (2/n) = -1 exactly when
# n = 3 or 5 (mod 8). Sign changes are collected in bit 1 of an accumulator (value 2).
_TWO_FLIPS = (0, 0, 0, 2, 0, 2, 0, 0)


def jacobi(a: int, n: int) -> int:
    """The Jacobi symbol (a/n) for odd n > 0 and 0 <= a: 1, -1, or 0 if gcd(a, n) > 1.

    For a prime n this is the Legendre symbol: 1 for a non-zero square mod n, -1 for a
    non-square, 0 for a multiple of n.
    """
    # The loop runs about 100 times for 255-bit inputs, so it is written for CPython: the
    # low three bits of both numbers are kept as small ints (n's are the previous a's), and
    # each sign change is an XOR into bit 1 of ``flips``.
    flips = 0
    n_low = n & 7
    while a:
        a_low = a & 7
        if not a_low & 1:
            twos = (a & -a).bit_length() - 1  # strip every factor two at once
            a >>= twos
            if twos & 1:
                flips ^= _TWO_FLIPS[n_low]
            a_low = a & 7
        # Quadratic reciprocity for odd a, n: swapping flips the sign iff both are 3 mod 4,
        # i.e. iff bit 1 is set in both.
        flips ^= a_low & n_low
        a, n = n % a, a
        n_low = a_low
    if n != 1:
        return 0
    return -1 if flips & 2 else 1


def elligator2_u(r: int) -> int:
    """The draft's ``elligator2(r)``: the u-coordinate (in [0, p)) Elligator 2 maps ``r`` to.

    With d = 1 + Z*r^2 (never 0, since -1/Z is a non-square for Z = 2):
      v = -A/d,  x = v if v^3 + A*v^2 + v is a square, else -v - A.
    That value equals -A*(A^2 - A^2*d + d^2)/d^3, whose quadratic character is the one of
    w = -A*(A^2 - A^2*d + d^2)*d (the two differ by the square d^4), so the test runs on w
    and only v needs the inversion. w is never 0: -A and d are non-zero, and
    A^2 - A^2*d + d^2 = 0 would make A^2 - 4 a square, which it is not for Curve25519.
    """
    r %= _P
    d = (1 + ELLIGATOR2_Z * r * r) % _P
    w = _NEG_A * d % _P * ((_A_SQUARED * (1 - d) + d * d) % _P) % _P
    v = _NEG_A * pow(d, -1, _P) % _P
    if jacobi(w, _P) == 1:
        return v
    return (-v - _A) % _P
