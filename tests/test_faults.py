"""Fault injection (issue 13), PostgreSQL cutting connections (the test terminates the
backends):

- in the middle of a billing run, which is made again: every customer ends with exactly
  one invoice and the invoice numbers have no gap;
- again and again while usage batches arrive over the API: the sender retries what
  failed, and every record is counted exactly once.

Each prints what was lost and duplicated (0 and 0).

(The broker going away under the outbox relay, and the SMTP server down while e-mails are
due, are in ``tests/test_events.py`` and ``tests/test_notifications.py``; each prints its
own counts.)"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask
from kombu import Connection
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts.models import Organisation, User
from cmw.billing import service as billing
from cmw.billing.models import Invoice
from cmw.config import Config
from cmw.events.models import OutboxEvent
from cmw.marketplaces.service import platform
from cmw.notifications.models import Notification
from cmw.orders import service as orders
from cmw.orders.models import Order, OrderStatus
from cmw.usage.consumer import publish
from cmw.usage.models import UsageRecord
from deployer.models import CloudAccount, Deployment, DeploymentState
from tests import catalog_data
from tests.helpers import wait_until
from tests.servers import SmtpServer, TcpProxy
from tests.test_deployer import (  # noqa: F401
    cloud,
    data_disks,
    ec2,
    image_id,
    live_instances,
    sealer,
    target,
)
from tests.test_pricing import FLAT, _plan
from tests.test_usage_ingest import _hourly, _record, _sign_in, metered  # noqa: F401

Factory = sessionmaker[Session]
ROOT = Path(__file__).resolve().parent.parent
ORDERS = 6
#: ``flask`` with the tests' EC2 driver for moto registered first
WORKER = (
    "from tests.deployer_support import use_moto_driver; use_moto_driver(); "
    "from flask.cli import main; main()"
)
CUSTOMERS = 250  # three chunks of the run's 100


def _notification_of(received: Any) -> str:
    """``<notification-<id>@``: the notification an e-mail tells (its Message-ID)."""
    return str(received.message["Message-ID"]).strip().split("@")[0] + "@"


def _customers(factory: Factory, at: dt.datetime) -> list[Any]:
    """A product and ``CUSTOMERS`` paying customers, each with a subscription from ``at``."""
    with factory() as session:
        catalog_data.publish_product(session, "faulted", [_plan(FLAT)])
        session.commit()
        made = []
        for n in range(CUSTOMERS):
            user, org = catalog_data.add_customer(session, f"fault-{n}@example.test", paying=True)
            made.append((user.id, org.id))
        session.commit()
        for user_id, org_id in made:
            orders.place_order(
                session, platform(session), session.get(User, user_id),  # type: ignore[arg-type]
                session.get(Organisation, org_id),  # type: ignore[arg-type]
                orders.OrderRequest(product="faulted", plan="basic"), now=at,
            )  # fmt: skip
        session.commit()
        return [org_id for _user, org_id in made]


def _invoice_count(factory: Factory) -> int:
    with factory() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(Invoice)) or 0)


def _terminate_the_run(factory: Factory) -> int:
    """End every other backend of this database that is in a query or a transaction: the
    billing run's (nothing else works on the database meanwhile)."""
    with factory() as session:
        ended = session.scalars(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND state IN ('active', 'idle in transaction')"
            )
        ).all()
        return sum(1 for e in ended if e)


def test_a_billing_run_cut_off_by_postgresql_is_made_again_without_loss_or_duplicate(
    committed_db: Factory,
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    customers = _customers(committed_db, now - dt.timedelta(hours=1))
    failures: list[BaseException] = []

    def first_run() -> None:
        try:
            billing.run(committed_db, now, now=now)
        except BaseException as exc:  # noqa: BLE001 - the cut is what this test makes
            failures.append(exc)

    thread = threading.Thread(target=first_run, daemon=True)
    thread.start()
    wait_until(lambda: _invoice_count(committed_db) > 0 or not thread.is_alive(), 60, "the run's first chunk")
    ended = 0
    while thread.is_alive() and not ended:
        ended = _terminate_the_run(committed_db)
    thread.join(60)
    cut_after = _invoice_count(committed_db)
    assert ended and failures, "the run finished before it could be cut: make it longer"
    assert 0 < cut_after < CUSTOMERS, cut_after

    # the operator (or the next scheduled run) runs it again
    report = billing.run(committed_db, now, now=now)
    with committed_db() as session:
        rows = session.execute(sa.select(Invoice.customer_id, Invoice.sequence)).all()
        run_status = (
            session.execute(sa.text("SELECT status FROM billing_runs ORDER BY started_at")).scalars().all()
        )
    per_customer = Counter(customer for customer, _sequence in rows)
    lost = [c for c in customers if per_customer[c] == 0]
    duplicated = [c for c, count in per_customer.items() if count > 1]
    sequences = sorted(sequence for _customer, sequence in rows)
    print(
        f"\nbilling run cut by PostgreSQL after {cut_after} of {CUSTOMERS} invoices ({ended} backend ended): "
        f"the second run made {len(report.invoices)}; lost {len(lost)}, duplicated {len(duplicated)}"
    )
    assert lost == [] and duplicated == []
    assert len(report.invoices) == CUSTOMERS - cut_after
    assert sequences == list(range(sequences[0], sequences[0] + CUSTOMERS)), "a gap in the invoice numbers"
    assert run_status == ["failed", "finished"], run_status


def test_usage_batches_cut_off_by_postgresql_are_counted_once_when_sent_again(
    app: Flask,
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    sender, headers = _sign_in(app, "meter-vendor@example.test")
    subscription = metered["subscription"]
    hour = (metered["since"] + dt.timedelta(days=1)).replace(minute=0, second=0)
    batches = [
        {
            "records": [
                _record(b * 100 + n, subscription, hour + dt.timedelta(minutes=n % 60), "0.5")
                for n in range(100)
            ]
        }
        for b in range(60)
    ]
    sending = threading.Event()
    sending.set()
    cuts: list[int] = []

    def cut_again_and_again() -> None:
        while sending.is_set():
            cuts.append(_terminate_the_run(committed_db))
            time.sleep(0.05)

    killer = threading.Thread(target=cut_again_and_again, daemon=True)
    killer.start()
    answers = Counter()
    try:
        for batch in batches:
            for _attempt in range(20):
                response = sender.post("/api/v1/usage", json=batch, headers=headers)
                answers[response.status_code] += 1
                if response.status_code == 200:
                    break
                # the connection was cut under the request: nothing saved, send it again
                assert response.status_code == 503, response.get_data(as_text=True)
                assert response.headers["Retry-After"] == "1"
            else:
                raise AssertionError("a batch never went through")
    finally:
        sending.clear()
        killer.join(10)

    with committed_db() as session:
        ids = session.scalars(
            sa.select(UsageRecord.record_id).where(UsageRecord.subscription_id == subscription)
        ).all()
    sent = {r["id"] for batch in batches for r in batch["records"]}
    lost, duplicated = sent - set(ids), len(ids) - len(set(ids))
    retried = sum(count for status, count in answers.items() if status != 200)
    print(
        f"\nusage under PostgreSQL cuts: {len(batches)} batches of 100, {sum(1 for c in cuts if c)} cuts, "
        f"{retried} answers to retry ({dict(answers)}); lost {len(lost)}, duplicated {duplicated}"
    )
    assert lost == set() and duplicated == 0 and len(ids) == len(sent)
    # and the hourly roll-up billing reads holds each record once
    assert sum(_hourly(committed_db, subscription).values()) == Decimal("0.5") * len(sent)
    assert sum(1 for c in cuts if c) > 0, "no connection was ever cut"


@pytest.mark.parametrize("fault", ["worker killed", "broker cut"])
def test_orders_usage_and_mail_converge_through_a_fault_without_loss_or_duplicate(
    fault: str,
    app: Flask,
    committed_db: Factory,
    config: Config,
    metered: dict[str, Any],  # noqa: F811
    smtp_server: SmtpServer,
    tmp_path: Path,
    cloud: CloudAccount,  # noqa: F811
    ec2: Any,  # noqa: F811
    image_id: str,  # noqa: F811
) -> None:
    """Orders to deploy (on moto's EC2, set up over SSH on the loopback sshd) and to tell by
    e-mail, and usage over RabbitMQ, go through real ``flask mercato worker`` processes
    while

    - ``worker killed``: the worker is killed with SIGKILL at random moments and started
      again;
    - ``broker cut``: every connection to RabbitMQ is cut at random moments, and new ones
      are refused for a while (a proxy stands between the worker and the broker).

    At the end every order is fulfilled with one running machine (one VM and one disk in
    the cloud), every record is counted once, and every notification's e-mail is
    delivered. (An e-mail sent just before a kill, before it was recorded as sent, is sent
    again with the same Message-ID: the test counts those apart.)"""
    smtp_server.clear()
    with committed_db() as session:
        product_id = catalog_data.publish_product(
            session, "faulted-app", [_plan(FLAT)], targets=[target(image_id)]
        ).id
        buyers = [
            catalog_data.add_customer(session, f"buyer-{n}@example.test", paying=True) for n in range(ORDERS)
        ]
        session.commit()
        marketplace_id = platform(session).id
        for user, org in buyers:
            orders.place_order(
                session,
                platform(session),
                user,
                org,
                orders.OrderRequest(product="faulted-app", plan="basic"),
            )
        session.commit()
    sub = metered["subscription"]
    at = metered["since"] + dt.timedelta(days=1, minutes=30)
    records = [_record(n, sub, at, "0.25") for n in range(1000)]
    consumers = app.extensions["mercato.consumers"]
    with Connection(config.broker_url) as conn:
        for consumer in consumers:  # this test's queues, empty (the suite's own have suffixes)
            queue = consumer.queue()(conn.default_channel)
            queue.declare()
            queue.purge()
        for offset in range(0, len(records), 100):
            publish(conn, marketplace_id, records[offset : offset + 100])

    broker = urlsplit(config.broker_url)
    proxy = TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    env = {
        **os.environ,
        "MERCATO_DATABASE_URL": config.database_url,
        "MERCATO_BROKER_URL": broker._replace(
            netloc=f"{broker.username}:{broker.password}@127.0.0.1:{proxy.port}"
        ).geturl(),
        "MERCATO_DATA_DIR": str(tmp_path / "var"),
        "MERCATO_SECRET_KEY": config.secret_key,
        "MERCATO_ENCRYPTION_KEY": ",".join(config.effective_encryption_keys()),
        "MERCATO_SMTP_URL": f"smtp://127.0.0.1:{smtp_server.port}",
        "MERCATO_OUTBOX_POLL_SECONDS": "0.05",
        "MERCATO_ALLOW_PRIVATE_TARGETS": "true",
    }

    # the worker as `flask mercato worker` runs it, with the tests' EC2 driver for moto
    command = [sys.executable, "-c", WORKER, "--app", "app", "mercato", "worker"]

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / "worker.log").open("ab")
        return subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=ROOT)

    def state() -> tuple[int, int, int]:
        with committed_db() as session:
            running = session.scalar(
                sa.select(sa.func.count())
                .select_from(Deployment)
                .where(Deployment.state == DeploymentState.RUNNING)
            )
            fulfilled = session.scalar(
                sa.select(sa.func.count()).select_from(Order).where(Order.status == OrderStatus.FULFILLED)
            )
            counted = session.scalar(sa.select(sa.func.count()).select_from(UsageRecord))
            return int(running or 0), int(fulfilled or 0), int(counted or 0)

    chance = random.Random(13)
    faults = 0
    worker = start()
    try:
        for _ in range(6):  # at random moments, as an OOM killer, a host or a network would
            time.sleep(chance.uniform(1.0, 4.0))
            if fault == "worker killed":
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
                worker = start()
            else:
                proxy.cut()
                time.sleep(chance.uniform(0.5, 3.0))  # the broker stays away a while
                proxy.restore()
            faults += 1
        wait_until(lambda: state() == (ORDERS, ORDERS, 1000), 240, "orders, machines and usage to converge")

        def mailed() -> set[str] | None:
            with committed_db() as session:
                unrelayed = session.scalar(
                    sa.select(sa.func.count())
                    .select_from(OutboxEvent)
                    .where(OutboxEvent.published_at.is_(None))
                )
                wanted = {f"<notification-{i}@" for i in session.scalars(sa.select(Notification.id))}
            got = {_notification_of(m) for m in smtp_server.messages}
            seen["last"] = (unrelayed, len(wanted), len(got), len(wanted - got))
            return wanted if not unrelayed and wanted and wanted <= got else None

        seen: dict[str, Any] = {}
        try:
            wanted = wait_until(mailed, 120, "every notification's e-mail")
        except AssertionError:
            raise AssertionError(f"(unrelayed, notifications, e-mailed, missing): {seen['last']}") from None
    finally:
        worker.terminate()
        worker.wait(20)
        proxy.close()
    with committed_db() as session:
        ids = session.scalars(sa.select(UsageRecord.record_id)).all()
        machines = session.scalars(
            sa.select(Deployment.subscription_id).where(Deployment.product_id == product_id)
        ).all()
    per_notification = Counter(_notification_of(m) for m in smtp_server.messages)
    resent = sum(count - 1 for count in per_notification.values())
    vms, disks = [i["InstanceId"] for i in live_instances(ec2)], [v["VolumeId"] for v in data_disks(ec2)]
    lost = (ORDERS - len(set(machines))) + (1000 - len(set(ids))) + len(wanted - set(per_notification))
    duplicated = (len(machines) - ORDERS) + (len(ids) - 1000) + (len(vms) - ORDERS) + (len(disks) - ORDERS)
    print(
        f"\n{fault} {faults} times: {ORDERS} orders, {len(machines)} deployments ({len(vms)} VMs and "
        f"{len(disks)} disks in the cloud), {len(ids)} usage records, "
        f"{len(wanted)} notifications e-mailed in {len(smtp_server.messages)} messages ({resent} resent with "
        f"the same Message-ID); lost {lost}, duplicated {duplicated}"
    )
    assert lost == 0 and duplicated == 0
    assert set(per_notification) == wanted  # no e-mail but the notifications'
