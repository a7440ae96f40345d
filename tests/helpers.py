"""Small helpers shared by tests."""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)


def tag(length: int = 10) -> str:
    """A random lowercase word, usable in topics and queue names."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(length))
