"""Rate limits on client input: a token bucket per socket, a count of recent offences, and a
per-key fixed window for HTTP callers. All three are O(1) memory per key and bounded in keys."""

from __future__ import annotations

import math
import time
from collections import deque


class TokenBucket:
    """`rate` tokens a second up to `burst`; each frame takes one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

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


class WindowCounter:
    """True once more than `limit` offences fall within the last `window_s` seconds."""

    __slots__ = ("_stamps", "limit", "window_s")

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        # Only the last limit + 1 stamps can matter, so the memory is bounded however fast they come.
        self._stamps: deque[float] = deque(maxlen=limit + 1)

    def record(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._stamps.append(now)
        return len(self._stamps) > self.limit and now - self._stamps[0] < self.window_s


class KeyedWindowLimiter:
    """At most `per_window` requests per key per fixed window of `window_s`, in bounded memory.

    Past `max_keys` keys in one window the least recently seen key is forgotten (it starts its count
    again): a flood of new keys costs the oldest ones a fresh window, it never turns the limit off.
    """

    def __init__(self, per_window: int, window_s: float = 60.0, max_keys: int = 100_000) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self.max_keys = max_keys
        self._window = -1
        # Insertion order is recency order: each count is moved to the end when it is touched.
        self._counts: dict[str, int] = {}

    def retry_after(self, key: str, now: float | None = None) -> int | None:
        """Count a request; None when allowed, else whole seconds until the next window."""
        now = time.time() if now is None else now
        window = int(now // self.window_s)
        if window != self._window:
            self._window, self._counts = window, {}
        count = self._counts.pop(key, 0) + 1
        if len(self._counts) >= self.max_keys:
            del self._counts[next(iter(self._counts))]
        self._counts[key] = count
        if count > self.per_window:
            return max(1, math.ceil((window + 1) * self.window_s - now))
        return None

    def __len__(self) -> int:
        return len(self._counts)
