"""The per-socket bounded queue and the frame rate limit, without sockets."""

from __future__ import annotations

import pytest

from shared.runtime.ratelimit import TokenBucket
from shared.runtime.ratelimit import WindowCounter as AbuseCounter
from shared.runtime.socket import Outbox, SlowConsumer

TYPING = "typing"


def test_typing_is_dropped_first_when_behind() -> None:
    box = Outbox(max_frames=10, max_bytes=10_000, droppable=TYPING, drop_after=3)
    for _ in range(3):
        assert box.put("state_update", b"x")
    assert not box.put(TYPING, b"t")
    assert len(box) == 3


def test_queued_typing_is_evicted_before_closing() -> None:
    box = Outbox(max_frames=4, max_bytes=10_000, droppable=TYPING, drop_after=100)
    box.put(TYPING, b"t")
    box.put(TYPING, b"t")
    for _ in range(3):
        box.put("state_update", b"x")
    assert len(box) == 3 and box.queued_bytes == 3


def test_over_frame_limit_is_a_slow_consumer() -> None:
    box = Outbox(max_frames=3, max_bytes=10_000, droppable=TYPING, drop_after=100)
    for _ in range(3):
        box.put("state_update", b"x")
    with pytest.raises(SlowConsumer):
        box.put("state_update", b"x")


def test_over_byte_limit_is_a_slow_consumer() -> None:
    box = Outbox(max_frames=100, max_bytes=1000, droppable=TYPING, drop_after=100)
    box.put("state_update", b"x" * 600)
    with pytest.raises(SlowConsumer):
        box.put("state_update", b"x" * 600)


def test_frames_come_out_in_order() -> None:
    box = Outbox(max_frames=10, max_bytes=1000, droppable=TYPING, drop_after=10)
    box.put("a", b"1")
    box.put("b", b"2")
    assert (box.pop(), box.pop(), box.pop()) == (("a", b"1"), ("b", b"2"), None)
    assert box.queued_bytes == 0


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=30, burst=60, now=0.0)
    assert all(bucket.take(now=0.0) for _ in range(60))
    assert not bucket.take(now=0.0)
    assert bucket.take(now=0.05)  # 1.5 tokens refilled
    assert not bucket.take(now=0.05)


def test_abuse_counts_only_recent_refusals() -> None:
    abuse = AbuseCounter(limit=2, window_s=1.0)
    assert not abuse.record(now=0.0)
    assert not abuse.record(now=0.5)
    assert not abuse.record(now=1.2)  # the first fell out of the window
    assert abuse.record(now=1.3)
