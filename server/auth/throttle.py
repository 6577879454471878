"""Failed-login throttling: a sliding window of failures per key (user name, client address).

Password guessing is slowed per account and per client without locking anyone out for
long: a key is refused only while it has ``max_failures`` failures younger than the window.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from server.auth.errors import ThrottledError


class LoginThrottle:
    def __init__(
        self, max_failures: int = 10, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def check(self, keys: Iterable[str]) -> None:
        """Raise ``ThrottledError`` if any key is over its budget."""
        now = self._clock()
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self.max_failures:
                    retry = self.window_s - (now - times[0])
                    raise ThrottledError("too many failed logins; try again later", retry_after_s=max(retry, 1.0))

    def failed(self, keys: Iterable[str]) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)
            if len(self._failures) > 10_000:  # bound memory under a spray of random names
                self._failures = {k: v for k, v in self._failures.items() if v}

    def succeeded(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
