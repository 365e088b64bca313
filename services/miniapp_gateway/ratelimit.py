"""Per-connection frame rate limit: a token bucket, plus a count of recent refusals."""

from __future__ import annotations

import time
from collections import deque


class TokenBucket:
    """`rate` tokens a second up to `burst`; each frame takes one."""

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class AbuseCounter:
    """True once more than `limit` refusals fall within the last `window_s` seconds."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._stamps: deque[float] = deque()

    def record(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._stamps.append(now)
        while self._stamps and self._stamps[0] <= now - self.window_s:
            self._stamps.popleft()
        return len(self._stamps) > self.limit
