"""Usage ingestion on PostgreSQL: ``POST /api/v1/usage`` counts each record once (the same
batch twice, ten clients at once), rejects bad records one by one with the reason while
accepting the rest, refuses malformed (400) and oversized (413) batches, resolves cloud
resources to their subscription, writes the month's partition (made on demand) and the
hourly roll-up, which the billing run rates."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Organisation, Role
from cmw.billing import service as billing
from cmw.billing.models import BilledItem, BilledKind, Invoice, LineKind, UsageHourly
from cmw.catalog.models import BillingPeriod, ComponentKind, PricingModel
from cmw.catalog.pricing import ComponentSpec, PlanSpec, Tier
from cmw.db import utcnow
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from cmw.orders.models import Subscription
from cmw.usage import ingest
from cmw.usage.models import UsageRecord
from tests import catalog_data

Factory = sessionmaker[Session]
D = Decimal

TRAFFIC = ComponentSpec(
    kind=ComponentKind.METERED, label="Traffic", metric="bandwidth.gb", unit="GB",
    pricing_model=PricingModel.GRADUATED, included_quantity=D(10),
    tiers=(Tier(D(0), D(100), D("0.10")), Tier(D(100), None, D("0.05"))),
)  # fmt: skip
CPU = ComponentSpec(
    kind=ComponentKind.METERED, label="CPU", metric="cpu.hours", unit="hour",
    pricing_model=PricingModel.PER_UNIT, unit_price=D("0.02"),
)  # fmt: skip
FEE = ComponentSpec(kind=ComponentKind.FLAT, label="Fee", unit_price=D("5"))
PLAN = PlanSpec(
    code="metered", name="Metered", currency="EUR", billing_period=BillingPeriod.MONTH,
    components=(FEE, TRAFFIC, CPU),
)  # fmt: skip


def _sign_in(app: Flask, email: str) -> tuple[FlaskClient, dict[str, str]]:
    browser = app.test_client()
    signed = browser.post("/api/v1/session", json={"email": email, "password": "long-enough-pw"})
    assert signed.status_code == 200, signed.get_data(as_text=True)
    return browser, {"X-CSRF-Token": browser.get("/api/v1/me").get_json()["csrf_token"]}


@pytest.fixture
def metered(committed_db: Factory) -> dict[str, Any]:
    """A metered product, its vendor's user, an admin, and a customer subscribed 10 days ago."""
    since = utcnow().replace(microsecond=0) - dt.timedelta(days=10)
    with committed_db() as session:
        product = catalog_data.publish_product(session, "metered", [PLAN])
        marketplace = platform(session)
        vendor_user = accounts.create_user(
            session, email="meter-vendor@example.test", name="V", password="long-enough-pw"
        )
        accounts.grant(
            session, vendor_user, marketplace, Role.VENDOR, session.get(Organisation, product.vendor_id)
        )
        admin = catalog_data.add_customer(session, "meter-admin@example.test")[0]
        accounts.grant(session, admin, marketplace, Role.ADMIN)
        user, org = catalog_data.add_customer(session, "meter-customer@example.test", paying=True)
        placed = orders.place_order(
            session, marketplace, user, org, orders.OrderRequest(product="metered", plan="metered"), now=since
        )
        session.flush()
        subscription = session.get(Subscription, placed.subscription_id)
        assert subscription is not None
        subscription.created_at = since  # as if it had been made then
        session.commit()
        return {"subscription": subscription.id, "since": since, "vendor": product.vendor_id}


def _record(
    n: int, subscription: uuid.UUID, at: dt.datetime, quantity: str = "1.5", **extra: Any
) -> dict[str, Any]:
    return {
        "id": f"rec-{n}",
        "subscription": str(subscription),
        "metric": "bandwidth.gb",
        "quantity": quantity,
        "timestamp": at.isoformat(),
        **extra,
    }


def _hourly(factory: Factory, subscription: uuid.UUID) -> dict[tuple[str, dt.datetime], Decimal]:
    with factory() as session:
        return {
            (u.metric, u.hour): u.quantity
            for u in session.scalars(
                sa.select(UsageHourly).where(UsageHourly.subscription_id == subscription)
            )
        }


def test_a_batch_is_counted_once_and_rolled_up_by_hour(
    app: Flask, committed_db: Factory, metered: dict[str, Any]
) -> None:
    vendor, headers = _sign_in(app, "meter-vendor@example.test")
    sub = metered["subscription"]
    hour = (metered["since"] + dt.timedelta(days=2)).replace(minute=0, second=0)
    batch = {
        "records": [
            _record(1, sub, hour + dt.timedelta(minutes=5), "1.5", attributes={"nic": "eth0"}),
            _record(2, sub, hour + dt.timedelta(minutes=50), "2.25"),
            _record(3, sub, hour + dt.timedelta(hours=1, minutes=1), "4"),
            {**_record(4, sub, hour + dt.timedelta(minutes=7), "3"), "metric": "cpu.hours"},
        ]
    }
    first = vendor.post("/api/v1/usage", json=batch, headers=headers)
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.get_json() == {"accepted": 4, "duplicates": [], "rejected": []}
    expected = {
        ("bandwidth.gb", hour): D("3.75"),
        ("bandwidth.gb", hour + dt.timedelta(hours=1)): D("4"),
        ("cpu.hours", hour): D("3"),
    }
    assert _hourly(committed_db, sub) == expected
    # sent again (a retry after a timeout, say): acknowledged, counted nowhere
    again = vendor.post("/api/v1/usage", json=batch, headers=headers)
    assert again.get_json() == {
        "accepted": 0,
        "duplicates": ["rec-1", "rec-2", "rec-3", "rec-4"],
        "rejected": [],
    }
    assert _hourly(committed_db, sub) == expected
    with committed_db() as session:
        kept = session.scalars(sa.select(UsageRecord).order_by(UsageRecord.record_id)).all()
        assert [(r.record_id, r.quantity, r.source) for r in kept] == [
            ("rec-1", D("1.5"), "api"), ("rec-2", D("2.25"), "api"), ("rec-3", D("4"), "api"),
            ("rec-4", D("3"), "api"),
        ]  # fmt: skip
        assert kept[0].attributes == {"nic": "eth0"}
        # the raw records live in the month's partition
        partition = f"usage_records_y{hour:%Y}m{hour:%m}"
        assert session.scalar(sa.text(f"SELECT count(*) FROM {partition}")) == 4


def test_bad_records_are_rejected_one_by_one_and_the_rest_accepted(
    app: Flask, committed_db: Factory, metered: dict[str, Any]
) -> None:
    admin, headers = _sign_in(app, "meter-admin@example.test")
    sub, since = metered["subscription"], metered["since"]
    with committed_db() as session:
        # usage is billed up to 3 days after the start: records before that are too late
        session.add(
            BilledItem(
                subscription_id=sub,
                kind=BilledKind.USAGE,
                period_start=since - dt.timedelta(days=28),
                invoice_id=uuid.uuid4(),
            )
        )
        subscription = session.get(Subscription, sub)
        assert subscription is not None
        subscription.billing_anchor = since + dt.timedelta(days=3) - dt.timedelta(days=31)
        session.commit()
    ok_at = since + dt.timedelta(days=5)
    records: list[Any] = [
        _record(1, sub, ok_at),
        _record(2, uuid.uuid4(), ok_at),
        {**_record(3, sub, ok_at), "subscription": None, "resource": "i-nowhere"},
        {**_record(4, sub, ok_at), "metric": "gpu.hours"},
        _record(5, sub, ok_at, "-1"),
        _record(6, sub, utcnow() + dt.timedelta(hours=2)),
        _record(7, sub, since - dt.timedelta(days=1)),
        _record(8, sub, since + dt.timedelta(days=1)),
        "not a record",
        {**_record(10, sub, ok_at), "id": None},
        {**_record(11, sub, ok_at), "timestamp": "yesterday"},
        {**_record(12, sub, ok_at), "timestamp": "2026-11-20T10:00:00"},
        {**_record(13, sub, ok_at), "quantity": "lots"},
        {**_record(14, sub, ok_at), "quantity": "0.123456789"},
        _record(15, sub, ok_at, "2"),
        _record(1, sub, ok_at, "99"),  # the same id twice in one batch
    ]
    response = admin.post("/api/v1/usage", json={"records": records}, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["accepted"] == 2 and body["duplicates"] == ["rec-1"]
    reasons = {r["index"]: (r["id"], r["reason"]) for r in body["rejected"]}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert reasons[1][1].startswith("unknown subscription")
    assert reasons[2][1] == "unknown resource 'i-nowhere'"
    assert "unknown metric 'gpu.hours'" in reasons[3][1] and "bandwidth.gb, cpu.hours" in reasons[3][1]
    assert reasons[4][1] == "quantity must not be negative"
    assert "in the future" in reasons[5][1]
    assert "before the subscription began" in reasons[6][1]
    assert "already billed" in reasons[7][1]
    assert reasons[8] == (None, "a record is a JSON object")
    assert reasons[9][0] is None and "id is required" in reasons[9][1]
    assert "not ISO 8601" in reasons[10][1] and "time zone" in reasons[11][1]
    assert reasons[12][1] == "quantity must be a number" and "8 decimals" in reasons[13][1]
    assert sum(_hourly(committed_db, sub).values()) == D("3.5")  # 1.5 + 2: the first rec-1 only


def test_malformed_oversized_and_unauthorised_batches(
    app: Flask, committed_db: Factory, metered: dict[str, Any]
) -> None:
    admin, headers = _sign_in(app, "meter-admin@example.test")
    not_json = admin.post(
        "/api/v1/usage", data="{records:", headers={**headers, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 400 and "not JSON" in not_json.get_json()["detail"]
    wrong = admin.post("/api/v1/usage", json={"records": {"id": "x"}}, headers=headers)
    assert wrong.status_code == 400 and "a list of usage records" in wrong.get_json()["detail"]
    at = metered["since"] + dt.timedelta(days=1)
    too_many = [_record(n, metered["subscription"], at) for n in range(ingest.MAX_BATCH + 1)]
    big = admin.post("/api/v1/usage", json={"records": too_many}, headers=headers)
    assert big.status_code == 413 and "at most 10,000" in big.get_json()["detail"]
    assert _hourly(committed_db, metered["subscription"]) == {}  # nothing of either was counted

    customer, customer_headers = _sign_in(app, "meter-customer@example.test")
    refused = customer.post("/api/v1/usage", json={"records": []}, headers=customer_headers)
    assert refused.status_code == 403
    # another vendor's user cannot send usage for this vendor's subscription
    with committed_db() as session:
        catalog_data.publish_product(session, "other-metered", [PLAN])
        other = accounts.create_user(
            session, email="other-vendor@example.test", name="O", password="long-enough-pw"
        )
        vendor_org = session.scalars(
            sa.select(Organisation).where(Organisation.name == "other-metered vendor")
        ).one()
        accounts.grant(session, other, platform(session), Role.VENDOR, vendor_org)
        session.commit()
    stranger, stranger_headers = _sign_in(app, "other-vendor@example.test")
    foreign = stranger.post(
        "/api/v1/usage", json={"records": [_record(1, metered["subscription"], at)]}, headers=stranger_headers
    )
    assert foreign.status_code == 200
    assert foreign.get_json()["rejected"][0]["reason"].startswith("unknown subscription")


def test_ten_clients_sending_the_same_records_at_once_count_them_once(
    app: Flask, committed_db: Factory, metered: dict[str, Any]
) -> None:
    sub = metered["subscription"]
    start = metered["since"] + dt.timedelta(days=1)
    records = [_record(n, sub, start + dt.timedelta(minutes=7 * n), "0.5") for n in range(300)]
    clients = [_sign_in(app, "meter-admin@example.test") for _ in range(10)]
    barrier = threading.Barrier(len(clients))
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def send(client: FlaskClient, headers: dict[str, str], offset: int) -> None:
        try:
            # each client sends all the records, in its own order
            mine = records[offset * 30 :] + records[: offset * 30]
            barrier.wait(timeout=30)
            response = client.post("/api/v1/usage", json={"records": mine}, headers=headers)
            assert response.status_code == 200, response.get_data(as_text=True)
            results.append(response.get_json())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(c, h, i)) for i, (c, h) in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sum(r["accepted"] for r in results) == 300
    assert sum(len(r["duplicates"]) for r in results) == 9 * 300
    assert sum(_hourly(committed_db, sub).values()) == D("150")
    with committed_db() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(UsageRecord)) == 300


def test_a_cloud_resource_finds_its_subscription_and_old_months_get_a_partition(
    app: Flask, committed_db: Factory, metered: dict[str, Any]
) -> None:
    from deployer.models import Deployment, DeploymentState

    sub = metered["subscription"]
    long_ago = utcnow().replace(microsecond=0) - dt.timedelta(days=200)
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None
        subscription.created_at = long_ago
        found = session.get(Subscription, sub)
        assert found is not None
        session.add(
            Deployment(
                id=uuid.uuid4(), subscription_id=sub, marketplace_id=found.marketplace_id,
                customer_id=found.customer_id, product_id=found.product_id, vendor_id=metered["vendor"],
                product_type="bare_vm", spec={}, state=DeploymentState.RUNNING, active=False,
                node_id="i-0abc123", volume_id="vol-0def456", next_attempt_at=utcnow(),
            )
        )  # fmt: skip
        session.commit()
    admin, headers = _sign_in(app, "meter-admin@example.test")
    at = long_ago + dt.timedelta(days=3)
    records = [
        {**_record(1, sub, at), "subscription": None, "resource": "i-0abc123"},
        {**_record(2, sub, at), "subscription": None, "resource": "vol-0def456", "metric": "cpu.hours"},
    ]
    response = admin.post("/api/v1/usage", json={"records": records}, headers=headers)
    assert response.get_json() == {"accepted": 2, "duplicates": [], "rejected": []}
    hour = at.replace(minute=0, second=0)
    assert _hourly(committed_db, sub) == {("bandwidth.gb", hour): D("1.5"), ("cpu.hours", hour): D("1.5")}
    with committed_db() as session:
        partition = f"usage_records_y{at:%Y}m{at:%m}"
        assert session.scalar(sa.text(f"SELECT count(*) FROM {partition}")) == 2


def test_the_billing_run_rates_the_ingested_usage(
    app: Flask, committed_db: Factory, metered: dict[str, Any]
) -> None:
    sub, since = metered["subscription"], metered["since"]
    with committed_db() as session:
        marketplace_id = platform(session).id
        records = [
            _record(n, sub, since + dt.timedelta(hours=3 * n), "12.5")
            for n in range(12)  # 150 GB
        ] + [
            {**_record(100 + n, sub, since + dt.timedelta(hours=n), "10"), "metric": "cpu.hours"}
            for n in range(5)
        ]
        result = ingest.ingest(session, ingest.Scope(marketplace_id), records, source="queue")
        session.commit()
    assert len(result.accepted) == 17 and not result.rejected
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None
        end = subscription.current_period_end
    billing.run(committed_db, end, now=end)
    with committed_db() as session:
        lines = {
            line.description.split(" · ")[-1].split(",")[0]: line.amount
            for invoice in session.scalars(sa.select(Invoice))
            for line in invoice.lines
            if line.kind is LineKind.USAGE
        }
    # 150 GB - 10 included = 140: 100 at 0.10 + 40 at 0.05; 50 CPU hours at 0.02
    assert lines == {"Traffic": D("12.00"), "CPU": D("1.00")}


def test_records_over_rabbitmq_are_counted_once_and_bad_ones_kept_as_dead_letters(
    app: Flask, committed_db: Factory, metered: dict[str, Any]
) -> None:
    from kombu import Connection

    from cmw.events.worker import Worker
    from cmw.usage.consumer import UsageRecords, publish
    from cmw.usage.models import UsageDeadLetter
    from tests.conftest import broker_url
    from tests.helpers import wait_until

    sub = metered["subscription"]
    at = metered["since"] + dt.timedelta(days=1, minutes=30)
    with committed_db() as session:
        marketplace_id = platform(session).id
    consumer = UsageRecords()

    def connect() -> Connection:
        return Connection(broker_url(), transport_options={"confirm_publish": True}, heartbeat=30)

    records = [_record(n, sub, at, "0.25") for n in range(400)]
    records[7] = {**records[7], "metric": "gpu.hours"}
    records[8] = {**records[8], "quantity": 0.1}  # a float, as other JSON encoders send it
    with connect() as conn:  # the queue exists before anything is sent to it, as in production
        consumer.queue()(conn.default_channel).declare()
    runner = Worker(connect, committed_db, [consumer], relay_poll_seconds=0.05)
    thread = threading.Thread(target=runner.run_forever, daemon=True)
    thread.start()
    try:
        with connect() as conn:
            publish(conn, marketplace_id, records)
            publish(conn, marketplace_id, records[:100])  # a source that sent a part again

        def counted() -> list[UsageDeadLetter] | None:
            with committed_db() as session:
                letters = session.scalars(sa.select(UsageDeadLetter)).all()
                done = session.scalar(sa.select(sa.func.count()).select_from(UsageRecord))
                return list(letters) if done == 399 and len(letters) >= 2 else None

        letters = wait_until(counted, 30, "the records counted")
    finally:
        runner.stop()
        thread.join(15)
        with connect() as conn:
            consumer.queue()(conn.default_channel).delete()
    # 398 records of 0.25 and one of 0.1; the rejected one kept with its reason, once per message
    assert sum(_hourly(committed_db, sub).values()) == D("99.6")
    assert [(letter.source, letter.payload["index"]) for letter in letters] == [("queue", 7), ("queue", 7)]
    assert "unknown metric 'gpu.hours'" in letters[0].reason
    assert letters[0].payload["record"]["id"] == "rec-7"


def test_each_vendor_has_its_own_record_ids_and_odd_values_are_handled(
    app: Flask, committed_db: Factory, metered: dict[str, Any]
) -> None:
    since = metered["since"]
    with committed_db() as session:
        catalog_data.publish_product(session, "other-metered", [PLAN])
        user, org = catalog_data.add_customer(session, "other-customer@example.test", paying=True)
        wanted = orders.OrderRequest(product="other-metered", plan="metered")
        placed = orders.place_order(session, platform(session), user, org, wanted, now=since)
        session.flush()
        other = session.get(Subscription, placed.subscription_id)
        assert other is not None
        other.created_at = since
        session.commit()
        other_id = other.id
    admin, headers = _sign_in(app, "meter-admin@example.test")
    at = since + dt.timedelta(days=1)
    # two vendors' sources both number their records from 1: neither is the other's duplicate
    batch = {"records": [_record(1, metered["subscription"], at), _record(1, other_id, at)]}
    first = admin.post("/api/v1/usage", json=batch, headers=headers).get_json()
    assert first == {"accepted": 2, "duplicates": [], "rejected": []}
    assert admin.post("/api/v1/usage", json=batch, headers=headers).get_json()["duplicates"] == [
        "rec-1",
        "rec-1",
    ]
    odd = admin.post(
        "/api/v1/usage",
        json={"records": [
            {**_record(2, other_id, at), "attributes": {"rate": 1.5, "count": 3, "nested": {"x": 0.25}}},
            _record(3, other_id, at, "1e30"),
        ]},
        headers=headers,
    )  # fmt: skip
    assert odd.status_code == 200, odd.get_data(as_text=True)
    body = odd.get_json()
    assert body["accepted"] == 1 and "below 10^16" in body["rejected"][0]["reason"]
    with committed_db() as session:
        kept = session.scalars(sa.select(UsageRecord).where(UsageRecord.record_id == "rec-2")).one()
        assert kept.attributes == {"rate": 1.5, "count": 3, "nested": {"x": 0.25}}


def test_ids_and_attributes_with_any_characters_are_stored_as_sent(
    app: Flask, committed_db: Factory, metered: dict[str, Any]
) -> None:
    """Records go to PostgreSQL as COPY text rows: tabs, newlines, backslashes and COPY's
    own markers in an id, a metric or the attributes are data, not row or field breaks;
    NUL, which PostgreSQL cannot store, is refused by the record (from the queue)."""
    sub, at = metered["subscription"], metered["since"] + dt.timedelta(days=1)
    admin, headers = _sign_in(app, "meter-admin@example.test")
    odd_ids = ["tab\there", "line\nbreak\rend", "back\\slash\\N", "\\N", "\\.", "ünï \"quoted\" 'x'"]
    attributes = {"path": "C:\\temp\\new", "text": "a\tb\nc", "none": None, "emoji": "☁", "x": "\\u0000"}
    records: list[Any] = [
        {**_record(0, sub, at), "id": record_id, "attributes": attributes} for record_id in odd_ids
    ]
    records.append({**_record(0, sub, at, "1E+2"), "id": "exponent"})
    response = admin.post("/api/v1/usage", json={"records": records}, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body == {"accepted": len(odd_ids) + 1, "duplicates": [], "rejected": []}
    with committed_db() as session:
        kept = {
            r.record_id: r
            for r in session.scalars(sa.select(UsageRecord).where(UsageRecord.subscription_id == sub))
        }
    assert set(kept) == {*odd_ids, "exponent"}
    assert all(kept[i].attributes == attributes and kept[i].quantity == Decimal("1.5") for i in odd_ids)
    assert kept["exponent"].quantity == 100 and kept["exponent"].metric == "bandwidth.gb"
    assert sum(_hourly(committed_db, sub).values()) == Decimal("1.5") * len(odd_ids) + 100
    # the API refuses a body with NUL whole; a queued batch's record alone
    for record, reason in (
        ({**_record(0, sub, at), "id": "nul\0id"}, "id must not contain NUL characters"),
        (
            {**_record(0, sub, at), "attributes": {"x": ["a\0b"]}},
            "attributes must not contain NUL characters",
        ),
    ):
        rejected = ingest._candidate(3, record)
        assert isinstance(rejected, ingest.Rejection) and (rejected.index, rejected.reason) == (3, reason)


def test_a_batch_waits_for_a_billing_chunk_in_progress(
    committed_db: Factory, metered: dict[str, Any]
) -> None:
    """Billing reads a chunk's usage under the exclusive usage lock: a batch arriving then
    waits until the chunk commits (and then sees what it billed), so no accepted record is
    left out of an invoice."""
    from cmw.billing.service import usage_lock
    from tests.helpers import wait_until

    billing_session = committed_db()
    usage_lock(billing_session, exclusive=True)  # as a billing chunk holds it
    done: list[ingest.Result] = []

    def send() -> None:
        with committed_db() as session:
            record = _record(1, metered["subscription"], metered["since"] + dt.timedelta(days=1))
            done.append(ingest.ingest(session, ingest.Scope(platform(session).id), [record], source="api"))
            session.commit()

    thread = threading.Thread(target=send)
    thread.start()
    try:

        def waiting() -> bool:
            with committed_db() as session:
                return bool(
                    session.scalar(
                        sa.text(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
                        )
                    )
                )

        wait_until(waiting, 10, "the batch waiting on the billing chunk")
        assert not done
    finally:
        billing_session.commit()
        billing_session.close()
        thread.join(30)
    assert [r.accepted for r in done] == [["rec-1"]]
