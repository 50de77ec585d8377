"""The join code: a public window number, 40 secret bits and one check symbol.

Rendered ``W-XXXX-XXXX-C`` — the window number in decimal, eight Crockford base32 symbols of
secret (40 bits from ``secrets``, passed in as bytes so this module stays free of randomness),
and one Crockford check symbol. Reading follows Crockford: case-insensitive, separators ignored,
I and L read as 1, O as 0 (RFC-NOTES §5.1).

The check symbol makes the weighted sum ``Σ α^p · s_p`` over GF(32) vanish, where ``s_p`` is the
symbol at position ``p`` counted from the right (the check itself is position 0) and ``α`` is a
primitive element. Because every weight is a distinct non-zero field element and the map is
linear, a single substitution (adds ``α^p·e``, ``e ≠ 0``) and an adjacent transposition of two
different symbols (adds ``(α^p + α^(p+1))·(a + b)``, both factors non-zero) always change the sum:
every such typo is caught locally, before any network traffic spends the code's one guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._errors import GenesisError

__all__ = [
    "ALPHABET",
    "SECRET_BITS",
    "SECRET_SYMBOLS",
    "CodeFormatError",
    "JoinCode",
    "check_symbol",
    "gf32_mul",
    "make_code",
    "parse_code",
    "syndrome",
]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SECRET_SYMBOLS = 8
SECRET_BITS = 5 * SECRET_SYMBOLS
MAX_WINDOW = 999
_VALUE = {ch: i for i, ch in enumerate(ALPHABET)}
_READ_AS = {"I": "1", "L": "1", "O": "0"}
_SEPARATORS = frozenset(" -_.\t")
# GF(2^5) modulo x^5 + x^2 + 1 (primitive, so x generates all 31 non-zero elements).
_POLY = 0b100101
_ALPHA = 0b00010


class CodeFormatError(GenesisError, ValueError):
    """A typed code that is malformed or fails the typo check; nothing was sent anywhere."""


def gf32_mul(a: int, b: int) -> int:
    """Multiply two elements of GF(32) (integers 0..31)."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        b >>= 1
        a <<= 1
        if a & 0b100000:
            a ^= _POLY
    return product


def _weight(position: int) -> int:
    w = 1
    for _ in range(position):
        w = gf32_mul(w, _ALPHA)
    return w


_WEIGHTS = tuple(_weight(p) for p in range(31))


def syndrome(symbols: list[int]) -> int:
    """``Σ α^p · s_p`` with ``p`` counted from the right; zero for a well-formed code."""
    if len(symbols) > len(_WEIGHTS):
        raise CodeFormatError("code too long")
    total = 0
    for position, value in enumerate(reversed(symbols)):
        total ^= gf32_mul(_WEIGHTS[position], value)
    return total


def check_symbol(window: int, secret: str) -> str:
    """The check symbol for a window number and an 8-symbol normalized secret."""
    symbols = [int(d) for d in str(window)] + [_VALUE[ch] for ch in secret] + [0]
    # Position 0 has weight 1, so the check value is the syndrome of the rest (char. 2: -x = x).
    return ALPHABET[syndrome(symbols)]


@dataclass(frozen=True, kw_only=True)
class JoinCode:
    """A parsed code. ``secret`` is the normalized 8-symbol secret part (the CPace PRS)."""

    window: int
    secret: str = field(repr=False)

    @property
    def check(self) -> str:
        return check_symbol(self.window, self.secret)

    @property
    def prs(self) -> bytes:
        """The CPace password: the normalized secret symbols as ASCII."""
        return self.secret.encode("ascii")

    def __str__(self) -> str:
        return f"{self.window}-{self.secret[:4]}-{self.secret[4:]}-{self.check}"


def make_code(window: int, secret_bytes: bytes) -> JoinCode:
    """A code for ``window`` from 5 random bytes (40 bits; the caller draws them from secrets)."""
    if not 1 <= window <= MAX_WINDOW:
        raise CodeFormatError(f"window number must be 1..{MAX_WINDOW}")
    if len(secret_bytes) != SECRET_BITS // 8:
        raise CodeFormatError("a code secret is 5 random bytes")
    value = int.from_bytes(secret_bytes, "big")
    secret = "".join(ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(SECRET_SYMBOLS)))
    return JoinCode(window=window, secret=secret)


def _normalize(text: str) -> str:
    out = []
    for ch in text.upper():
        if ch in _SEPARATORS:
            continue
        ch = _READ_AS.get(ch, ch)
        if ch not in _VALUE:
            raise CodeFormatError(f"{ch!r} is not a code symbol (codes use 0-9 and A-Z without U)")
        out.append(ch)
    return "".join(out)


def parse_code(text: str) -> JoinCode:
    """Read a typed code. Raises :class:`CodeFormatError` for anything but a well-formed code.

    The last nine symbols are the secret and the check; what precedes them is the window number.
    """
    symbols = _normalize(text)
    if len(symbols) < SECRET_SYMBOLS + 2:
        raise CodeFormatError("a code looks like 7-K3QF-M2XD-R (window, 8 symbols, check)")
    window_part = symbols[: -(SECRET_SYMBOLS + 1)]
    if not window_part.isdigit() or len(window_part) > len(str(MAX_WINDOW)):
        raise CodeFormatError("a code starts with its window number (1 to 3 digits)")
    window = int(window_part)
    if not 1 <= window <= MAX_WINDOW:
        raise CodeFormatError("the window number must be between 1 and 999")
    if syndrome([_VALUE[ch] for ch in symbols]) != 0:
        raise CodeFormatError("the code has a typo (its check symbol does not match); retype it")
    return JoinCode(window=window, secret=symbols[-(SECRET_SYMBOLS + 1) : -1])
