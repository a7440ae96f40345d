"""A WSGI application for tests/test_webserver.py: answers with the serving process's id
after ``?cpu=<ms>`` milliseconds of work that holds the interpreter, as rendering a page
does, or ``?sleep=<ms>`` milliseconds of waiting that leaves it free, as a slow query does
(``&mark=<path>``: a file holding the process id, written when the wait begins)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING") or "").items()}
    if "mark" in query:
        Path(query["mark"]).write_text(str(os.getpid()))
    if "sleep" in query:
        time.sleep(float(query["sleep"]) / 1000)
    until = time.thread_time() + float(query.get("cpu", 0)) / 1000
    while time.thread_time() < until:
        pass
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
