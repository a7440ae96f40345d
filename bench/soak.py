"""``python -m bench.soak``: load and soak, a mixed workload at a steady rate.

gunicorn (2 workers) and one ``flask mercato worker`` on a fresh PostgreSQL database and
RabbitMQ, with moto's EC2 and a loopback sshd standing in for the VMs (as ``bench.deployer``),
loaded with the demo (its products on Libcloud's dummy cloud) and two products on moto.
For ``BENCH_SOAK_SECONDS`` (600), from loopback, at a steady rate:

- browsing: the catalog API, a product, the home and catalog pages (``BENCH_SOAK_BROWSE``
  requests a second, default 20);
- orders: ``POST /api/v1/orders`` by the demo customers, each with its own
  ``Idempotency-Key`` (``BENCH_SOAK_ORDERS``, one every 2 s); each makes a subscription and
  a deployment the worker runs, every other one on moto (VM, SSH, data disk, setup script);
- usage: batches of 100 records for the metered subscriptions those orders made
  (``BENCH_SOAK_USAGE``, 5 batches a second).

Reported: per endpoint the requests, errors (5xx or no answer) and p50/p99 latency; the
error rate; the resident memory of the web processes (master and workers) and of the
worker every 5 s, and its growth from the first minute after the warm-up (the first fifth
of the run) to the last minute (target: under 10%). ``var/bench/soak.json`` holds the
figures and ``var/bench/soak.png`` plots latency and memory over time.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.__main__ import (
    HOST,
    ROOT,
    BenchError,
    free_port,
    gunicorn,
    wait_healthy,
)

SECONDS = float(os.environ.get("BENCH_SOAK_SECONDS", "600"))
RATES = {
    "browse": float(os.environ.get("BENCH_SOAK_BROWSE", "20")),
    "orders": float(os.environ.get("BENCH_SOAK_ORDERS", "0.5")),
    "usage": float(os.environ.get("BENCH_SOAK_USAGE", "5")),
}
SAMPLE_SECONDS = 5.0
OUTPUT = ROOT / "var" / "bench" / "soak.json"
PLOT = ROOT / "var" / "bench" / "soak.png"


def prepare(shop: Any) -> dict[str, Any]:
    """The demo (on the dummy cloud) next to the moto products, and API tokens for its people."""
    import sqlalchemy as sa

    from cmw import demo
    from cmw.accounts import service as accounts
    from cmw.assets.api import storage
    from cmw.catalog.models import ComponentKind, Plan, Product, ProductVersion
    from cmw.extensions import current_session
    from cmw.marketplaces.service import platform

    with shop.app.app_context():
        session = current_session()
        demo.load(session, storage(), shop.app.extensions["mercato.sealer"])
        session.commit()
        tokens: dict[str, list[str]] = defaultdict(list)
        for login in demo.LOGINS:
            user = accounts.find_user(session, login.email)
            assert user is not None
            _token, plaintext = accounts.create_token(
                session, user, platform(session), name="soak", expires_at=None
            )
            tokens[login.role].append(plaintext)
        plans = []
        rows = session.execute(
            sa.select(Product, Plan)
            .join(ProductVersion, ProductVersion.id == Product.live_version_id)
            .join(Plan, Plan.version_id == ProductVersion.id)
            .order_by(Product.slug, Plan.code)
        ).all()
        for product, plan in rows:
            metrics = [c.metric for c in plan.components if c.metric]
            units = [c.min_quantity or 1 for c in plan.components if c.kind is ComponentKind.PER_UNIT]
            plans.append(
                {
                    "product": product.slug,
                    "plan": plan.code,
                    "metric": metrics[0] if metrics else None,
                    "quantity": max(units, default=1),
                    "moto": product.slug.startswith("bench-"),
                }
            )
        session.commit()
    return {"tokens": tokens, "plans": plans}


class Recorder:
    """Every request's (second since start, endpoint, status, milliseconds)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[float, str, int, float]] = []
        self.started = time.monotonic()

    def add(self, endpoint: str, status: int, ms: float) -> None:
        with self.lock:
            self.rows.append((time.monotonic() - self.started, endpoint, status, ms))


def _call(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        payload = json.dumps(body) if body is not None else None
        all_headers = (
            {"Content-Type": "application/json", **(headers or {})} if payload else dict(headers or {})
        )
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        data = response.read()
        parsed = (
            json.loads(data) if response.getheader("Content-Type", "").endswith("json") and data else None
        )
        return response.status, parsed
    finally:
        connection.close()


def _paced(rate: float, stop: threading.Event, act: Any) -> None:
    """Call ``act()`` ``rate`` times a second until ``stop`` (a steady, open-loop rate)."""
    if rate <= 0:
        return
    interval, due = 1.0 / rate, time.monotonic()
    while not stop.is_set():
        due += interval
        act()
        pause = due - time.monotonic()
        if pause > 0:
            stop.wait(pause)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run() -> int:
    from bench.deployer import moto_shop, rss_mib

    with ExitStack() as stack:
        shop, env, tmp = moto_shop(stack, "mercato-soak-")
        env["MERCATO_OUTBOX_POLL_SECONDS"] = "0.1"
        prepared = prepare(shop)
        customers, admin = prepared["tokens"]["customer"], prepared["tokens"]["admin"][0]
        moto_plans = [p for p in prepared["plans"] if p["moto"]]
        demo_plans = [p for p in prepared["plans"] if not p["moto"]]
        port = free_port()
        base = f"http://{HOST}:{port}"
        worker_log = stack.enter_context((tmp / "worker.log").open("wb"))
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "app", "mercato", "worker"],
            cwd=ROOT,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        recorder = Recorder()
        memory: list[tuple[float, float, float]] = []
        metered: list[tuple[str, str]] = []  # (subscription id, metric)
        counter = {"n": 0, "orders": 0}
        refusals: Counter[str] = Counter()
        lock = threading.Lock()
        try:
            with gunicorn(env, port, Path(tmp) / "gunicorn.log") as web:
                wait_healthy(web, base, Path(tmp) / "gunicorn.log")
                stop = threading.Event()
                recorder.started = time.monotonic()
                browse_paths = [
                    ("GET /api/v1/products?q=", "/api/v1/products?q=backup&per_page=20"),
                    ("GET /api/v1/products/{slug}", f"/api/v1/products/{demo_plans[0]['product']}"),
                    ("GET / (page)", "/"),
                    ("GET /products (page)", "/products?q=data"),
                ]

                def timed(endpoint: str, method: str, path: str, body: Any = None,
                          headers: dict[str, str] | None = None) -> Any:  # fmt: skip
                    started = time.perf_counter()
                    try:
                        status, parsed = _call(port, method, path, body, headers)
                    except OSError:
                        status, parsed = 0, None
                    recorder.add(endpoint, status, (time.perf_counter() - started) * 1000)
                    return status, parsed

                def browse() -> None:
                    with lock:
                        counter["n"] += 1
                        endpoint, path = browse_paths[counter["n"] % len(browse_paths)]
                    timed(endpoint, "GET", path)

                def order() -> None:
                    with lock:
                        counter["orders"] += 1
                        n = counter["orders"]
                    # every other order deploys on moto (a VM, the loopback sshd, a data disk)
                    choices = moto_plans if n % 2 else demo_plans
                    plan = choices[n // 2 % len(choices)]
                    token = customers[n % len(customers)]
                    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"soak-{uuid.uuid4()}"}
                    status, body = timed(
                        "POST /api/v1/orders", "POST", "/api/v1/orders",
                        {k: plan[k] for k in ("product", "plan", "quantity")}, headers,
                    )  # fmt: skip
                    if status >= 400 and body:
                        with lock:
                            refusals[f"{plan['product']}: {body.get('detail')}"[:200]] += 1
                    if status == 201 and plan["metric"] and body:
                        with lock:
                            metered.append((body["subscription_id"], plan["metric"]))

                def usage() -> None:
                    with lock:
                        if not metered:
                            return
                        counter["n"] += 1
                        subscription, metric = metered[counter["n"] % len(metered)]
                    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
                    records = [
                        {"id": f"soak-{uuid.uuid4()}", "subscription": subscription, "metric": metric,
                         "quantity": "0.5", "timestamp": now}
                        for _ in range(100)
                    ]  # fmt: skip
                    timed("POST /api/v1/usage", "POST", "/api/v1/usage", {"records": records},
                          {"Authorization": f"Bearer {admin}"})  # fmt: skip

                def sample() -> None:
                    while not stop.is_set():
                        memory.append(
                            (time.monotonic() - recorder.started, rss_mib(web.pid), rss_mib(worker.pid))
                        )
                        stop.wait(SAMPLE_SECONDS)

                threads = [threading.Thread(target=sample, daemon=True)]
                for name, act, lanes in (("browse", browse, 4), ("orders", order, 1), ("usage", usage, 2)):
                    rate = RATES[name] / lanes
                    threads += [
                        threading.Thread(target=_paced, args=(rate, stop, act), daemon=True)
                        for _ in range(lanes)
                    ]
                print(f"soak: {SECONDS:.0f} s at {RATES} per second ...", file=sys.stderr, flush=True)
                for thread in threads:
                    thread.start()
                stop.wait(SECONDS)
                stop.set()
                for thread in threads:
                    thread.join(60)
                settled_after, states, failures = _settle(shop)
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
    return report(recorder, memory, states, settled_after, failures, refusals)


def _settle(shop: Any) -> tuple[float, dict[str, int], Counter[str]]:
    """Wait (up to 5 minutes) until no deployment is between states; how long, and the states."""
    import sqlalchemy as sa

    from cmw.catalog.models import Product
    from cmw.extensions import current_session
    from deployer.models import Deployment, DeploymentState

    done = {DeploymentState.RUNNING, DeploymentState.FAILED, DeploymentState.REMOVED}
    started = time.monotonic()
    while True:
        with shop.app.app_context():
            rows = current_session().execute(
                sa.select(Deployment.state, sa.func.count()).group_by(Deployment.state)
            )
            states = {str(state): int(count) for state, count in rows}
            failures = Counter(
                f"{slug}: {error}"[:200]
                for slug, error in current_session().execute(
                    sa.select(Product.slug, Deployment.last_error)
                    .join(Product, Product.id == Deployment.product_id)
                    .where(Deployment.state == DeploymentState.FAILED)
                )
            )
        if all(state in done for state in states) or time.monotonic() - started > 300:
            return round(time.monotonic() - started, 1), states, failures
        time.sleep(1.0)


def report(
    recorder: Recorder,
    memory: list[tuple[float, float, float]],
    states: dict[str, int],
    settled_after: float,
    failures: Counter[str],
    refusals: Counter[str],
) -> int:
    by_endpoint: dict[str, list[tuple[float, int, float]]] = defaultdict(list)
    for at, endpoint, status, ms in recorder.rows:
        by_endpoint[endpoint].append((at, status, ms))
    endpoints = {}
    total = errors = 0
    for endpoint, rows in sorted(by_endpoint.items()):
        latencies = [ms for _at, _status, ms in rows]
        failed = sum(1 for _at, status, _ms in rows if status == 0 or status >= 500)
        refused = sum(1 for _at, status, _ms in rows if 400 <= status < 500)
        total += len(rows)
        errors += failed
        endpoints[endpoint] = {
            "requests": len(rows),
            "errors": failed,
            "4xx": refused,
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(_percentile(latencies, 0.99), 1),
        }
    warmup = SECONDS / 5
    settled = [m for m in memory if warmup <= m[0] < warmup + 60] or memory[:1]
    last = [m for m in memory if m[0] >= SECONDS - 60] or memory[-1:]

    def growth(index: int) -> float:
        first = statistics.mean(m[index] for m in settled)
        final = statistics.mean(m[index] for m in last)
        return round(100 * (final - first) / first, 1) if first else 0.0

    figures = {
        "seconds": SECONDS,
        "rates_per_second": RATES,
        "requests": total,
        "errors": errors,
        "error_rate_percent": round(100 * errors / total, 3) if total else 0.0,
        "endpoints": endpoints,
        "deployments": states,
        "deployments_settled_after_s": settled_after,
        "deployment_failures": dict(failures.most_common(10)),
        "order_refusals": dict(refusals.most_common(10)),
        "memory_mib": {
            "web_after_warmup": round(statistics.mean(m[1] for m in settled), 1),
            "web_at_end": round(statistics.mean(m[1] for m in last), 1),
            "web_growth_percent": growth(1),
            "worker_after_warmup": round(statistics.mean(m[2] for m in settled), 1),
            "worker_at_end": round(statistics.mean(m[2] for m in last), 1),
            "worker_growth_percent": growth(2),
        },
        "samples": [{"second": round(at, 1), "web_mib": web, "worker_mib": wk} for at, web, wk in memory],
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(figures, indent=2))
    _plot(by_endpoint, memory)
    for endpoint, row in endpoints.items():
        print(
            f"soak {endpoint}: {row['requests']} requests, {row['errors']} errors, {row['4xx']} 4xx, "
            f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms"
        )
    mem = figures["memory_mib"]
    unsettled = sum(n for state, n in states.items() if state not in ("running", "failed", "removed"))
    ok = (
        errors == 0
        and mem["web_growth_percent"] <= 10
        and mem["worker_growth_percent"] <= 10
        and not states.get("failed")
        and not unsettled
    )
    print(
        f"soak deployments: {sum(states.values())} "
        f"({', '.join(f'{n} {state}' for state, n in sorted(states.items()))}), "
        f"all settled {settled_after} s after the load stopped"
    )
    for reason, n in [*failures.most_common(3), *refusals.most_common(3)]:
        print(f"soak   {n} x {reason}")
    print(
        f"soak: {total} requests in {SECONDS:.0f} s, error rate {figures['error_rate_percent']}%; memory "
        f"web {mem['web_after_warmup']} -> {mem['web_at_end']} MiB ({mem['web_growth_percent']:+}%), worker "
        f"{mem['worker_after_warmup']} -> {mem['worker_at_end']} MiB ({mem['worker_growth_percent']:+}%); "
        f"target (no errors, memory growth under 10% after warm-up): {'met' if ok else 'NOT met'}; "
        f"plot: {PLOT.relative_to(ROOT)}"
    )
    return 0 if ok else 1


def _plot(
    by_endpoint: dict[str, list[tuple[float, int, float]]], memory: list[tuple[float, float, float]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, rss) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    window = 10.0
    for endpoint, rows in sorted(by_endpoint.items()):
        buckets: dict[int, list[float]] = defaultdict(list)
        for at, _status, ms in rows:
            buckets[int(at // window)].append(ms)
        xs = sorted(buckets)
        latency.plot([x * window for x in xs], [_percentile(buckets[x], 0.99) for x in xs], label=endpoint)
    latency.set_ylabel("p99 latency (ms), 10 s windows")
    latency.set_yscale("log")
    latency.legend(fontsize="small")
    latency.grid(True, alpha=0.3)
    rss.plot([m[0] for m in memory], [m[1] for m in memory], label="web (gunicorn master + workers)")
    rss.plot([m[0] for m in memory], [m[2] for m in memory], label="worker")
    rss.axvline(SECONDS / 5, color="grey", linestyle="--", label="end of warm-up")
    rss.set_ylabel("resident memory (MiB)")
    rss.set_xlabel("seconds")
    rss.legend(fontsize="small")
    rss.grid(True, alpha=0.3)
    figure.suptitle(f"Mercato soak: {SECONDS:.0f} s at {RATES} per second")
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=100)
    plt.close(figure)


def main(argv: list[str]) -> int:
    try:
        return run()
    except BenchError as exc:
        print(f"bench.soak: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
