"""Counting and timing every HTTP request, by route (the URL rule, not the path, so the
labels stay few) and status."""

from __future__ import annotations

import time

from flask import Response, g, request

from cmw.monitoring.metrics import HTTP_LATENCY, HTTP_REQUESTS


def start_timing() -> None:
    g.request_started = time.perf_counter()


def record_request(response: Response) -> Response:
    started = g.get("request_started")
    rule = request.url_rule
    route = rule.rule if rule is not None else "unmatched"
    method = request.method
    HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
    if started is not None:
        HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - started)
    return response
