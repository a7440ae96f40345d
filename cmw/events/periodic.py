"""The worker's periodic jobs: each is called on every turn of the worker's periodic
thread, and runs its work at most once every ``interval`` seconds (the first call at
once, so a worker that starts catches up)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Every(Generic[T]):
    """``job()`` at most once every ``interval`` seconds; None when it is not yet time."""

    def __init__(self, interval: float, job: Callable[[], T]) -> None:
        self.interval, self.job = interval, job
        self._last: float | None = None

    def __call__(self) -> T | None:
        if self._last is not None and time.monotonic() - self._last < self.interval:
            return None
        self._last = time.monotonic()
        return self.job()
