"""`KeyedWindowLimiter`, the `/edge/sync` limiter: pure logic, so tested directly (filling it over
the wire would take 100,000 signed agents)."""

from __future__ import annotations

from shared.runtime.ratelimit import KeyedWindowLimiter

NOW = 1_800_000_000.0


def test_a_key_is_refused_past_its_limit_until_the_next_window() -> None:
    limiter = KeyedWindowLimiter(2, window_s=60)
    assert [limiter.retry_after("a", NOW) for _ in range(3)][:2] == [None, None]
    assert limiter.retry_after("a", NOW + 1) is not None
    assert limiter.retry_after("a", NOW - NOW % 60 + 60) is None


def test_a_full_limiter_still_limits_new_keys() -> None:
    # Was: past `max_keys` a new key was never counted, so it was never refused.
    limiter = KeyedWindowLimiter(3, max_keys=100)
    for i in range(100):
        limiter.retry_after(f"filler-{i}", NOW)
    answers = [limiter.retry_after("newcomer", NOW) for _ in range(5)]
    assert answers[:3] == [None, None, None]
    assert all(a is not None for a in answers[3:])
    assert len(limiter) == 100


def test_a_full_limiter_forgets_the_least_recently_seen_key_first() -> None:
    limiter = KeyedWindowLimiter(1, max_keys=3)
    for key in ("old", "busy", "other"):
        limiter.retry_after(key, NOW)
    assert limiter.retry_after("busy", NOW) is not None  # seen again: now the most recent
    limiter.retry_after("newcomer", NOW)  # evicts "old", not "busy"
    assert limiter.retry_after("busy", NOW) is not None
    assert limiter.retry_after("old", NOW) is None
