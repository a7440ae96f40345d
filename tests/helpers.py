"""Small helpers shared by tests."""

from __future__ import annotations

import functools
import secrets
import string
import time
from collections.abc import Callable
from typing import TypeVar

from flask.testing import FlaskClient

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


def on_host(client: FlaskClient, host: str | None) -> None:
    """Send the client's next requests to ``host`` (None: back to its default)."""
    if host is None:
        vars(client).pop("open", None)
    else:
        client.open = functools.partial(type(client).open, client, base_url=f"http://{host}")  # type: ignore[method-assign]
