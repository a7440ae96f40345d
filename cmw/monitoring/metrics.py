"""The platform's Prometheus instruments, and the text ``/metrics`` serves.

Under gunicorn's several workers (and with the worker process on the same machine) every
process writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode; ``flask mercato serve`` sets it up, ``cmw.webserver`` marks exited
workers dead) and ``/metrics`` adds them all up, whichever worker answers. Without that
variable a process serves its own figures.

The figures the database holds (deployments by state, stuck ones, outbox lag, the last
billing run, outcomes by cloud account) and the queue depths are read at scrape time by
:mod:`cmw.monitoring.health`, so they are right whatever process answers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

#: latency buckets for requests and provider calls, in seconds
_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SLOW = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

HTTP_REQUESTS = Counter(
    "mercato_http_requests",
    "HTTP requests answered, by route, method and status",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "mercato_http_request_duration_seconds",
    "Time to answer an HTTP request, by route and method",
    ["route", "method"],
    buckets=_FAST,
)
ORDERS = Counter("mercato_orders", "Orders placed (new ones, not idempotent repeats), by kind", ["kind"])
DEPLOYMENT_STEPS = Histogram(
    "mercato_deployment_step_seconds",
    "Time the deployer spent on one step of a machine, by the state it worked in",
    ["state"],
    buckets=_SLOW,
)
DEPLOYMENT_TRANSITIONS = Counter(
    "mercato_deployment_transitions", "Deployments entering a state, by that state", ["state"]
)
PROVIDER_CALLS = Histogram(
    "mercato_provider_call_seconds",
    "Cloud provider (and SSH) calls and their latency, by cloud account and call",
    ["cloud_account", "call"],
    buckets=_FAST,
)
PROVIDER_ERRORS = Counter(
    "mercato_provider_call_errors",
    "Cloud provider (and SSH) calls that failed, by cloud account, call and kind (transient, permanent)",
    ["cloud_account", "call", "kind"],
)
BILLING_RUNS = Histogram(
    "mercato_billing_run_seconds", "Billing runs and their duration, by outcome", ["status"], buckets=_SLOW
)
USAGE_RECORDS = Counter(
    "mercato_usage_records",
    "Usage records received, by source (api, queue) and result (accepted, duplicate, rejected)",
    ["source", "result"],
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_metrics() -> bytes:
    """The instruments' samples in the Prometheus text format: of every process sharing the
    multiprocess folder, or of this process alone."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
