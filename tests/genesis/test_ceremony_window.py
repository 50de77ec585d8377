"""Join windows (one guess per code, crowded, lifetime) and the hourly failure limit."""

from __future__ import annotations

import pytest

from genesis import AttemptLimiter, RateLimited, WindowBook, WindowStatus


def test_windows_number_from_one_and_reuse_the_lowest() -> None:
    book = WindowBook()
    a = book.open(0, bytes(5))
    b = book.open(0, bytes(5))
    assert (a.window, b.window) == (1, 2)
    book.release(1, 1, joined=True, code_spent=True)
    assert book.open(2, bytes(5)).window == 1


def test_one_ceremony_at_a_time_and_one_guess_per_code() -> None:
    book = WindowBook()
    code = book.open(0, b"\x01" * 5)
    assert book.claim(code.window, 1) == (WindowStatus.OPEN, code)
    assert book.claim(code.window, 1) == (WindowStatus.BUSY, None)  # crowded
    book.release(code.window, 2, joined=False, code_spent=True)
    assert book.claim(code.window, 3) == (WindowStatus.MISSING, None)  # burned
    assert book.limiter.failures(3) == 1


def test_a_ceremony_that_made_no_guess_leaves_the_window_open() -> None:
    book = WindowBook()
    code = book.open(0, bytes(5))
    book.claim(code.window, 1)
    book.release(code.window, 2, joined=False, code_spent=False)
    assert book.claim(code.window, 3)[0] is WindowStatus.OPEN
    assert book.limiter.failures(3) == 0


def test_windows_expire_after_ten_minutes_unless_in_use() -> None:
    book = WindowBook()
    a = book.open(0, bytes(5))
    b = book.open(0, bytes(5))
    book.claim(b.window, 10)
    assert book.next_expiry() == 600
    assert book.expire(599.9) == []
    assert book.expire(600) == [a.window]
    assert book.claim(a.window, 601) == (WindowStatus.MISSING, None)
    assert book.is_open(b.window)  # busy windows finish their ceremony


def test_failed_guesses_limit_new_windows_per_hour_without_permanent_lockout() -> None:
    book = WindowBook(limiter=AttemptLimiter(max_failures=5))
    for t in range(5):
        code = book.open(t * 60, bytes(5))
        book.claim(code.window, t * 60)
        book.release(code.window, t * 60 + 1, joined=False, code_spent=True)
    with pytest.raises(RateLimited) as refused:
        book.open(400, bytes(5))
    assert refused.value.retry_at == 1 + 3600
    with pytest.raises(RateLimited):
        book.open(3600, bytes(5))
    assert book.open(3601, bytes(5)).window == 1  # an hour after the oldest failure


def test_limiter_sliding_hour() -> None:
    limiter = AttemptLimiter(max_failures=2, period=100)
    limiter.record_failure(0)
    limiter.record_failure(50)
    assert not limiter.allowed(60) and limiter.retry_at(60) == 100
    assert limiter.allowed(100) and limiter.failures(100) == 1
