"""The join code: format, reading rules, and an exhaustive proof of the typo check."""

from __future__ import annotations

import itertools
import secrets

import pytest

from genesis import CodeFormatError, make_code, parse_code
from genesis._code import ALPHABET, SECRET_BITS, gf32_mul, syndrome


def test_format_and_round_trip() -> None:
    code = make_code(7, bytes.fromhex("0123456789"))
    text = str(code)
    window, first, second, check = text.split("-")
    assert window == "7" and len(first) == len(second) == 4 and len(check) == 1
    assert parse_code(text) == code
    assert code.prs == (first + second).encode()
    assert SECRET_BITS == 40
    # 40 bits map onto the 8 symbols one-to-one.
    values = {make_code(1, i.to_bytes(5, "big")).secret for i in (0, 1, 2**40 - 1, 12345)}
    assert len(values) == 4


def test_reading_rules_case_separators_and_lookalikes() -> None:
    for _ in range(50):
        code = make_code(3, secrets.token_bytes(5))
        text = str(code)
        assert parse_code(text.lower()) == code
        assert parse_code(text.replace("-", " ")) == code
        assert parse_code(text.replace("-", "")) == code
        typed = text.replace("1", "l").replace("0", "O")
        assert parse_code(typed) == code
        assert parse_code(text.replace("1", "I").lower()) == code


@pytest.mark.parametrize(
    "bad", ["", "7-ABCD", "7-ABCD-EFGH-U", "X-ABCD-EFGH-J", "1234-ABCD-EFGH-J"]
)
def test_malformed_codes_are_rejected(bad: str) -> None:
    with pytest.raises(CodeFormatError):
        parse_code(bad)


def test_field_is_gf32() -> None:
    # Every non-zero element has an inverse: multiplication by it is a permutation.
    for a in range(1, 32):
        assert sorted(gf32_mul(a, b) for b in range(32)) == list(range(32))


def test_check_catches_every_substitution_and_transposition_exhaustively() -> None:
    """Proof by exhaustion over the linear syndrome: a typo changes the syndrome by an amount
    that depends only on where it is and which symbols it swaps, never on the rest of the
    code. So enumerating every position (up to the longest code: 3 window digits, 8 secret
    symbols, 1 check) and every pair of distinct symbols covers every code there is."""
    length = 12
    for position in range(length):
        for a, b in itertools.permutations(range(32), 2):
            base = [0] * length
            typo = [0] * length
            base[position], typo[position] = a, b
            assert syndrome(base) != syndrome(typo), (position, a, b)
    for position in range(length - 1):
        for a, b in itertools.permutations(range(32), 2):
            base = [0] * length
            base[position], base[position + 1] = a, b
            swapped = [0] * length
            swapped[position], swapped[position + 1] = b, a
            assert syndrome(base) != syndrome(swapped), (position, a, b)


def test_real_codes_reject_every_single_typo_in_the_secret() -> None:
    """And through the parser, on real codes: every single substitution and every adjacent
    transposition of the secret part (and of the check symbol) is refused before any I/O."""
    for window in (1, 42, 999):
        code = make_code(window, secrets.token_bytes(5))
        symbols = code.secret + code.check
        for i in range(len(symbols)):
            for replacement in ALPHABET:
                if replacement == symbols[i]:
                    continue
                typo = symbols[:i] + replacement + symbols[i + 1 :]
                with pytest.raises(CodeFormatError):
                    parse_code(f"{window}-{typo}")
        for i in range(len(symbols) - 1):
            if symbols[i] == symbols[i + 1]:
                continue
            typo = symbols[:i] + symbols[i + 1] + symbols[i] + symbols[i + 2 :]
            with pytest.raises(CodeFormatError):
                parse_code(f"{window}-{typo}")
