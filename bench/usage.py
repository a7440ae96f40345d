"""``python -m bench.usage``: usage ingestion throughput, on loopback.

1. A fresh database, migrated; a metered product, 1,000 subscriptions and an admin token
   (``python -m bench.usage --prepare`` in the child environment).
2. HTTP: gunicorn as ``flask mercato serve`` runs it (2 workers), and 4 client threads
   posting batches of 5,000 records (each record new) to ``POST /api/v1/usage`` for
   ``BENCH_USAGE_SECONDS`` (60): records accepted (committed, so queryable) per second.
3. RabbitMQ: the same number of records published as batches of 5,000 to the ``usage``
   queue, then two ``flask mercato worker`` processes started (``BENCH_USAGE_WORKERS``):
   records counted per second from their start until the last is in ``usage_records``,
   and once started (from the first batch's acceptance to the last's, which leaves out
   the processes' start-up). The queue's depth is watched while they work: a count over
   the growing table would take a core from what is measured.
4. Latency: 200 times, one record sent, then its subscription's live cost asked until it
   shows it: from sending to seeing, p50 and p99 (target p99 under 1 s).
5. PostgreSQL's own ``COPY`` of the same rows into an unlogged copy of the table on this
   machine, without indexes or checks: the physical limit, and each path's ratio to it.

Targets: 20,000 records/s through HTTP sustained for 60 s, 30,000/s through RabbitMQ.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from bench.__main__ import (
    HOST,
    ROOT,
    BenchError,
    broker_url,
    child_environment,
    free_port,
    fresh_database,
    gunicorn,
    run_step,
    wait_healthy,
)

SUBSCRIPTIONS = int(os.environ.get("BENCH_USAGE_SUBSCRIPTIONS", "1000"))
SECONDS = float(os.environ.get("BENCH_USAGE_SECONDS", "60"))
BATCH = 5_000
CLIENTS = 4
#: ``flask mercato worker`` processes consuming the queue (workers scale out, one per core)
WORKERS = int(os.environ.get("BENCH_USAGE_WORKERS", "2"))
MARKER = "BENCH_USAGE="
OUTPUT = ROOT / "var" / "bench" / "usage.json"
METRICS = ("bandwidth.gb", "cpu.hours")


def prepare_in_child() -> int:
    from decimal import Decimal

    from app import create_app
    from cmw.accounts import service as accounts
    from cmw.accounts.models import OrganisationKind, Role
    from cmw.catalog import service as catalog
    from cmw.catalog.models import BillingPeriod, ComponentKind, PricingModel, ProductType
    from cmw.catalog.pricing import ComponentSpec, PlanSpec
    from cmw.db import utcnow
    from cmw.extensions import current_session
    from cmw.marketplaces.service import platform
    from cmw.orders import service as orders
    from cmw.orders.models import Subscription

    app = create_app()
    with app.app_context():
        session = current_session()
        marketplace = platform(session)
        admin = accounts.create_user(
            session, email="usage-admin@example.test", name="A", password="bench-pw-123"
        )
        accounts.grant(session, admin, marketplace, Role.ADMIN)
        _, token = accounts.create_token(session, admin, marketplace, name="bench", expires_at=None)
        vendor = accounts.create_organisation(
            session, marketplace, kind=OrganisationKind.VENDOR, name="Meter Vendor",
            billing=accounts.BillingDetails(legal_name="Meter Vendor Ltd", country="DE"),
        )  # fmt: skip
        product = catalog.create_product(
            session, marketplace, vendor, slug="metered-app",
            content={
                "name": "Metered App", "category_slug": "web", "product_type": ProductType.BARE_VM,
                "deployment": [{"cloud_account": "bench", "region": None, "image": "1",
                                "size": {"cores": 1, "ram_mib": 1024, "root_disk_gib": 10},
                                "inbound_ports": []}],
            },
        )  # fmt: skip
        metered = [
            ComponentSpec(kind=ComponentKind.METERED, label=m, metric=m, unit="unit",
                          pricing_model=PricingModel.PER_UNIT, unit_price=Decimal("0.01"))
            for m in METRICS
        ]  # fmt: skip
        catalog.set_plans(
            session, product,
            [PlanSpec(code="metered", name="Metered", currency="EUR", billing_period=BillingPeriod.MONTH,
                      components=tuple(metered))],
        )  # fmt: skip
        catalog.submit(session, product)
        catalog.approve(session, product, admin)
        since = utcnow() - dt.timedelta(days=1)
        ids = []
        for n in range(SUBSCRIPTIONS):
            org = accounts.create_organisation(
                session, marketplace, kind=OrganisationKind.CUSTOMER, name=f"Customer {n}",
                billing=accounts.BillingDetails(legal_name=f"Customer {n} Srl", country="IT"),
            )  # fmt: skip
            placed = orders.place_order(
                session, marketplace, admin, org, orders.OrderRequest(product="metered-app", plan="metered"),
                now=since,
            )  # fmt: skip
            ids.append(str(placed.subscription_id))
        session.flush()
        session.execute(sa.update(Subscription).values(created_at=since))
        # the orders' events are not what is measured: the worker started later relays none
        session.execute(sa.text("DELETE FROM outbox"))
        session.commit()
    print(MARKER + json.dumps({"token": token, "subscriptions": ids}))
    return 0


def _records(prefix: str, count: int, subscriptions: list[str], start: dt.datetime) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{n}",
            "subscription": subscriptions[n % len(subscriptions)],
            "metric": METRICS[n % 2],
            "quantity": "0.5",
            "timestamp": (start + dt.timedelta(seconds=n % 3600)).isoformat(),
        }
        for n in range(count)
    ]


def _http_run(port: int, token: str, subscriptions: list[str], start: dt.datetime) -> tuple[int, float, int]:
    """Posts fresh batches from CLIENTS threads for SECONDS; records accepted, elapsed, errors."""
    accepted = [0] * CLIENTS
    errors = [0] * CLIENTS
    stop_at = time.monotonic() + SECONDS

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=120)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        batch = 0
        # the next body is made while the server works on this one
        body = json.dumps({"records": _records(f"h{index}-{batch}", BATCH, subscriptions, start)}).encode()
        while time.monotonic() < stop_at:
            connection.request("POST", "/api/v1/usage", body=body, headers=headers)
            batch += 1
            following = json.dumps({"records": _records(f"h{index}-{batch}", BATCH, subscriptions, start)})
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                errors[index] += 1
                continue
            accepted[index] += json.loads(data)["accepted"]
            body = following.encode()
        connection.close()

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(accepted), time.monotonic() - began, sum(errors)


def _latency(port: int, token: str, subscription: str, trials: int = 200) -> list[float]:
    """Seconds from sending a record to its subscription's live cost showing it, each trial."""
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def used() -> Decimal:
        connection.request("GET", f"/api/v1/subscriptions/{subscription}/cost", headers=headers)
        response = connection.getresponse()
        cost = json.loads(response.read())
        return sum(
            (Decimal(line["quantity"]) for line in cost["lines"] if line["kind"] == "usage"), Decimal(0)
        )

    found = []
    now = dt.datetime.now(dt.UTC)
    for n in range(trials):
        before = used()
        record = {"id": f"lat-{n}", "subscription": subscription, "metric": METRICS[0], "quantity": "1",
                  "timestamp": now.isoformat()}  # fmt: skip
        began = time.monotonic()
        connection.request("POST", "/api/v1/usage", body=json.dumps({"records": [record]}), headers=headers)
        response = connection.getresponse()
        response.read()
        while used() < before + 1:
            if time.monotonic() - began > 10:
                raise BenchError("a record did not show in the live cost within 10 s")
        found.append(time.monotonic() - began)
    connection.close()
    return found


def _copy_rate(database_url: str, rows: int, subscriptions: list[str], start: dt.datetime) -> float:
    """PostgreSQL's COPY of the same rows into an unlogged table without indexes."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE UNLOGGED TABLE copy_probe (marketplace_id uuid, record_id text, at timestamptz,"
            " subscription_id uuid, metric text, quantity numeric(24,8), attributes jsonb, source text,"
            " received_at timestamptz)"
        )
        marketplace = uuid.uuid4()
        now = dt.datetime.now(dt.UTC)
        records = _records("c", rows, subscriptions, start)
        began = time.monotonic()
        with conn.cursor() as cursor, cursor.copy("COPY copy_probe FROM STDIN") as copy:
            for r in records:
                row = (r["id"], r["timestamp"], r["subscription"], r["metric"], r["quantity"])
                copy.write_row((marketplace, *row, "{}", "api", now))
        elapsed = time.monotonic() - began
        conn.execute("DROP TABLE copy_probe")
    return rows / elapsed


def run() -> int:
    with fresh_database() as database_url, tempfile.TemporaryDirectory(prefix="mercato-usage-") as tmp:
        env = child_environment(database_url, Path(tmp) / "var")
        env["MERCATO_OUTBOX_POLL_SECONDS"] = "0.05"
        run_step([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"], env, "flask db upgrade")
        out = run_step([sys.executable, "-m", "bench.usage", "--prepare"], env, "preparing subscriptions")
        prepared = json.loads(
            next(line for line in out.splitlines() if line.startswith(MARKER))[len(MARKER) :]
        )
        token, subscriptions = prepared["token"], prepared["subscriptions"]
        start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=2)
        engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))

        def counted() -> int:
            with engine.connect() as conn:
                return int(conn.scalar(sa.text("SELECT count(*) FROM usage_records")) or 0)

        port = free_port()
        print(
            f"HTTP: {CLIENTS} clients posting {BATCH:,}-record batches for {SECONDS:.0f} s ...",
            file=sys.stderr,
        )
        with gunicorn(env, port, Path(tmp) / "gunicorn.log") as proc:
            wait_healthy(proc, f"http://{HOST}:{port}", Path(tmp) / "gunicorn.log")
            http_accepted, http_seconds, http_errors = _http_run(port, token, subscriptions, start)
            print("latency: a record, then its live cost, 200 times ...", file=sys.stderr)
            latencies = sorted(_latency(port, token, subscriptions[0]))
        stored = counted()
        http_rate = http_accepted / http_seconds

        # RabbitMQ: the same number of records, queued first, then one worker
        from kombu import Connection

        from cmw.events.topology import EVENTS
        from cmw.usage.consumer import UsageRecords, publish

        total = max(BATCH, int(http_accepted // BATCH * BATCH))
        print(f"RabbitMQ: queueing {total:,} records ...", file=sys.stderr)
        with Connection(broker_url()) as conn:
            queue = UsageRecords().queue()(conn.default_channel)
            EVENTS(conn.default_channel).declare()
            queue.declare()
            queue.purge()
            with engine.connect() as db:
                marketplace_id = db.scalar(sa.text("SELECT id FROM marketplaces WHERE kind = 'platform'"))
            for batch in range(total // BATCH):
                publish(conn, marketplace_id, _records(f"q{batch}", BATCH, subscriptions, start))
        before = counted()
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "app", "mercato", "worker"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                stderr=open(Path(tmp) / f"worker-{n}.log", "w"),  # noqa: SIM115
            )
            for n in range(WORKERS)
        ]  # fmt: skip
        began = time.monotonic()
        try:
            deadline = began + 600
            # the queue's depth first (cheap); a count over the growing table only at the end,
            # where it would otherwise take a core from what is measured
            with Connection(broker_url()) as conn:
                queue = UsageRecords().queue()(conn.default_channel)
                while queue.queue_declare(passive=True).message_count and time.monotonic() < deadline:
                    time.sleep(0.1)
            while counted() < before + total and time.monotonic() < deadline:
                time.sleep(0.05)
            queue_seconds = time.monotonic() - began
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=30)
        queue_counted = counted() - before
        queue_rate = queue_counted / queue_seconds
        # without the workers' start-up: from the first batch's start to the last one's
        with engine.connect() as db:
            first, last = db.execute(
                sa.text("SELECT min(received_at), max(received_at) FROM usage_records WHERE source = 'queue'")
            ).one()
        steady_rate = (queue_counted - BATCH) / max((last - first).total_seconds(), 1e-6)
        copy_rate = _copy_rate(database_url, min(total, 500_000), subscriptions, start)
        engine.dispose()

    report = {
        "http": {"records": http_accepted, "seconds": round(http_seconds, 1), "per_second": round(http_rate),
                 "errors": http_errors, "stored": stored},
        "rabbitmq": {"records": queue_counted, "seconds": round(queue_seconds, 1),
                     "per_second": round(queue_rate), "per_second_once_started": round(steady_rate)},
        "postgresql_copy_per_second": round(copy_rate),
        "live_cost_latency_ms": {"p50": round(latencies[len(latencies) // 2] * 1000, 1),
                                 "p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1)},
    }  # fmt: skip
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(report, indent=2))
    verdict = "met" if http_rate >= 20_000 else "NOT met"
    print(
        f"usage over HTTP: {http_accepted:,} records in {http_seconds:.1f} s = {http_rate:,.0f}/s"
        f" ({http_errors} failed batches); target 20,000/s: {verdict}"
    )
    verdict = "met" if steady_rate >= 30_000 else "NOT met"
    print(
        f"usage over RabbitMQ ({WORKERS} workers): {queue_counted:,} records in {queue_seconds:.1f} s"
        f" from the workers' start = {queue_rate:,.0f}/s; once started {steady_rate:,.0f}/s;"
        f" target 30,000/s: {verdict}"
    )
    print(
        f"PostgreSQL COPY of the same rows (unlogged, no index): {copy_rate:,.0f}/s;"
        f" HTTP is {http_rate / copy_rate:.0%} of it, RabbitMQ {steady_rate / copy_rate:.0%}"
    )
    p50, p99 = report["live_cost_latency_ms"]["p50"], report["live_cost_latency_ms"]["p99"]  # type: ignore[index]
    verdict = "met" if p99 < 1000 else "NOT met"
    print(
        f"from sending a record to its live cost showing it: p50 {p50} ms, p99 {p99} ms;"
        f" target p99 < 1 s: {verdict}"
    )
    return 0 if stored >= http_accepted and not http_errors and queue_counted == total else 1


def main(argv: list[str]) -> int:
    if argv[1:] == ["--prepare"]:
        return prepare_in_child()
    try:
        return run()
    except BenchError as exc:
        print(f"bench.usage: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main(sys.argv))
