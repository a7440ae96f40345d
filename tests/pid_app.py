"""A WSGI application for tests/test_webserver.py: answers with the serving process's id
after ``?<ms>`` milliseconds of work that holds the interpreter, as rendering a page does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    until = time.thread_time() + float(environ.get("QUERY_STRING") or 0) / 1000
    while time.thread_time() < until:
        pass
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
