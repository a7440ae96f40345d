"""Live costs and budgets on PostgreSQL: a subscription's cost so far reflects a record as
soon as its batch is acknowledged, equals what the billing run invoices for the same
period, projects the rest of the period; a customer's budget alerts at 80 % and 100 %,
once each a month."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from cmw.billing import service as billing
from cmw.billing.models import Invoice, InvoiceLine, LineKind
from cmw.db import utcnow
from cmw.events.consumer import Event
from cmw.events.models import OutboxEvent
from cmw.marketplaces.service import platform
from cmw.notifications.consumers import NotificationConsumer
from cmw.notifications.models import Notification
from cmw.orders.models import Subscription
from cmw.usage import budgets, ingest, live
from tests.test_usage_ingest import _record, _sign_in, metered  # noqa: F401  (the fixture)

Factory = sessionmaker[Session]
D = Decimal


def _ingest(factory: Factory, records: list[dict[str, Any]], now: dt.datetime | None = None) -> None:
    with factory() as session:
        result = ingest.ingest(session, ingest.Scope(platform(session).id), records, source="api", now=now)
        session.commit()
    assert not result.rejected, result.rejected


def _period_end(factory: Factory, subscription_id: Any) -> dt.datetime:
    with factory() as session:
        subscription = session.get(Subscription, subscription_id)
        assert subscription is not None
        return subscription.current_period_end


def test_the_live_cost_is_what_the_billing_run_invoices(
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    sub, since = metered["subscription"], metered["since"]
    end = _period_end(committed_db, sub)
    # usage all over the period, the first record in its first (partial) hour
    # (recorded as if at the period's end: nothing is in the future then)
    _ingest(
        committed_db, [_record(n, sub, since + dt.timedelta(hours=5 * n), "3.3") for n in range(120)], end
    )
    cpu = [
        {**_record(500 + n, sub, since + dt.timedelta(hours=n), "7"), "metric": "cpu.hours"}
        for n in range(30)
    ]
    _ingest(committed_db, cpu, end)
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None
        (cost,) = live.costs(session, [subscription], now=end)
    by_label = {line.label: line.amount for line in cost.lines}
    billing.run(committed_db, since, now=since)
    billing.run(committed_db, end, now=end)
    with committed_db() as session:
        lines = session.scalars(
            sa.select(InvoiceLine)
            .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
            .where(InvoiceLine.subscription_id == sub, InvoiceLine.period_start == cost.period_start)
        ).all()
    invoiced = {line.description.split(" · ")[-1].split(",")[0]: line.amount for line in lines}
    assert invoiced == by_label
    assert cost.total == sum((line.amount for line in lines), D(0))
    # the usage: 396 GB less 10 included: 100 at 0.10 + 286 at 0.05 = 24.30; 210 CPU hours: 4.20
    assert by_label == {"Fee": D("5.00"), "Traffic": D("24.30"), "CPU": D("4.20")}
    assert any(line.kind is LineKind.USAGE for line in lines)


def test_customers_see_live_costs_and_a_projection_through_the_api(
    app: Flask,
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    sub, since = metered["subscription"], metered["since"]
    customer, _ = _sign_in(app, "meter-customer@example.test")
    before = customer.get(f"/api/v1/subscriptions/{sub}/cost").get_json()
    assert before["total"] == "5" and [line["amount"] for line in before["lines"]] == ["5", "0", "0"]

    vendor, vendor_headers = _sign_in(app, "meter-vendor@example.test")
    posted = vendor.post(
        "/api/v1/usage",
        json={"records": [_record(n, sub, since + dt.timedelta(days=n), "50") for n in range(10)]},
        headers=vendor_headers,
    )
    assert posted.get_json()["accepted"] == 10
    # reflected at once: the batch's answer came after its commit
    after = customer.get(f"/api/v1/subscriptions/{sub}/cost").get_json()
    traffic = next(line for line in after["lines"] if line["metric"] == "bandwidth.gb")
    assert traffic["quantity"] == "500" and traffic["amount"] == "29.5"  # 490: 100 at .10 + 390 at .05
    # ten days into a month at this rate: about three times the traffic by its end
    assert D(traffic["projected"]) > D("60") and D(after["projected_total"]) > D(after["total"])
    totals = customer.get("/api/v1/costs").get_json()
    assert totals["totals"] == [
        {"currency": "EUR", "total": "34.5", "projected_total": after["projected_total"]}
    ]
    assert totals["budget"] is None
    assert vendor.get(f"/api/v1/subscriptions/{sub}/cost").status_code == 200  # the vendor's product
    assert vendor.get("/api/v1/costs").status_code == 403  # not a customer
    stranger, _ = _sign_in(app, "meter-admin@example.test")  # a customer of another organisation
    assert stranger.get("/api/v1/costs").get_json()["subscriptions"] == []


def test_a_budget_alerts_at_80_and_100_percent_once_each(
    app: Flask,
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    sub, since = metered["subscription"], metered["since"]
    customer, headers = _sign_in(app, "meter-customer@example.test")
    for body, field in (
        ({"amount": "0", "currency": "EUR"}, "amount"),
        ({"amount": "10", "currency": "EURO"}, "currency"),
        ({"amount": "10.001", "currency": "EUR"}, "amount"),
    ):
        refused = customer.put("/api/v1/budget", json=body, headers=headers)
        assert refused.status_code == 422 and refused.get_json()["errors"][0]["field"] == field, body
    made = customer.put("/api/v1/budget", json={"amount": "20", "currency": "eur"}, headers=headers)
    assert made.status_code == 200, made.get_data(as_text=True)
    assert made.get_json()["spent"] == "5" and made.get_json()["percent"] == 25

    def alerts() -> list[OutboxEvent]:
        with committed_db() as session:
            return list(
                session.scalars(
                    sa.select(OutboxEvent).where(OutboxEvent.topic.like("budget.%")).order_by(OutboxEvent.seq)
                )
            )

    assert budgets.run(committed_db) == 0
    _ingest(committed_db, [_record(n, sub, since + dt.timedelta(hours=n), "25") for n in range(4)])  # 9 EUR
    assert budgets.run(committed_db) == 0  # 5 + (100 - 10 included) x 0.10 = 14 of 20: 70 %
    _ingest(committed_db, [_record(10, sub, since + dt.timedelta(hours=10), "40")])  # 10 + 30 x .05: 16.5
    assert budgets.run(committed_db) == 1
    assert budgets.run(committed_db) == 0  # told once
    _ingest(committed_db, [_record(11, sub, since + dt.timedelta(hours=11), "100")])  # +5: 21.5 EUR
    assert budgets.run(committed_db) == 1
    told = alerts()
    assert [(e.topic, e.payload["percent"]) for e in told] == [
        ("budget.warning", 80),
        ("budget.exceeded", 100),
    ]
    assert told[0].payload["spent"] == "16.5" and told[0].payload["budget"] == "20"
    with committed_db() as session:
        NotificationConsumer().handle(
            session,
            Event(
                id=str(told[0].id),
                topic=told[0].topic,
                payload=told[0].payload,
                marketplace_id=told[0].marketplace_id,
            ),
        )
        session.commit()
        notice = session.scalars(sa.select(Notification).where(Notification.kind == "budget.warning")).one()
        assert notice.title == "80% of your budget is spent"
        assert "16.5 EUR of your 20 EUR budget" in notice.body
    page = customer.get("/api/v1/costs").get_json()
    assert page["budget"]["percent"] == 107 and page["budget"]["amount"] == "20"
    assert customer.delete("/api/v1/budget", headers=headers).status_code == 204
    assert customer.get("/api/v1/costs").get_json()["budget"] is None


def test_the_costs_page_and_the_subscription_page_show_live_costs_and_the_budget(
    app: Flask,
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    import re

    sub, since = metered["subscription"], metered["since"]
    _ingest(committed_db, [_record(n, sub, since + dt.timedelta(hours=n), "30") for n in range(2)])  # 5 EUR
    browser, _ = _sign_in(app, "meter-customer@example.test")
    page = browser.get("/account/costs").get_data(as_text=True)
    assert "Metered" in page and "10.00 EUR" in page and "No budget yet" in page
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    bad = browser.post("/account/costs", data={"csrf_token": token, "amount": "lots", "currency": "EUR"})
    assert bad.status_code == 422 and "a number, such as 250" in bad.get_data(as_text=True)
    wrong = browser.post("/account/costs", data={"csrf_token": token, "amount": "50", "currency": "XYZ"})
    assert wrong.status_code == 422 and "ISO 4217" in wrong.get_data(as_text=True)
    saved = browser.post("/account/costs", data={"csrf_token": token, "amount": "12.50", "currency": "eur"})
    assert saved.status_code == 302
    shown = browser.get("/account/costs").get_data(as_text=True)
    assert "10.00 EUR of your 12.50 EUR monthly budget" in shown and "<strong>80%</strong>" in shown
    detail = browser.get(f"/account/subscriptions/{sub}").get_data(as_text=True)
    assert "Cost this period" in detail and "60 GB" in detail and "5.00 EUR" in detail
    assert f'data-url="/api/v1/subscriptions/{sub}/cost"' in detail
    removed = browser.post(
        "/account/costs", data={"csrf_token": token, "amount": "", "currency": "", "remove": "1"}
    )
    assert removed.status_code == 302 and "No budget yet" in browser.get("/account/costs").get_data(
        as_text=True
    )


def test_a_rebuild_restores_the_roll_up_from_the_records_and_reports_what_a_price_fix_changes(
    app: Flask,
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    from cmw.billing.models import UsageHourly
    from cmw.catalog.models import PriceComponent

    sub, since = metered["subscription"], metered["since"]
    end = _period_end(committed_db, sub)
    _ingest(committed_db, [_record(n, sub, since + dt.timedelta(hours=7 * n), "4") for n in range(50)], end)
    cpu = [
        {**_record(900 + n, sub, since + dt.timedelta(hours=n), "7"), "metric": "cpu.hours"}
        for n in range(30)
    ]
    _ingest(committed_db, cpu, end)
    billing.run(committed_db, since, now=since)
    billing.run(committed_db, end, now=end)
    with committed_db() as session:
        rows = session.scalars(sa.select(UsageHourly).where(UsageHourly.subscription_id == sub)).all()
        original = {(r.metric, r.hour): r.quantity for r in rows}
        # a fault: hours lost and one counted twice; and a pricing fix: CPU hours cost 0.03
        session.execute(
            sa.delete(UsageHourly).where(UsageHourly.metric == "bandwidth.gb", UsageHourly.quantity == 4)
        )
        session.execute(
            sa.update(UsageHourly)
            .where(UsageHourly.metric == "cpu.hours")
            .values(quantity=UsageHourly.quantity * 2)
        )
        session.execute(
            sa.update(PriceComponent).where(PriceComponent.metric == "cpu.hours").values(unit_price=D("0.03"))
        )
        session.commit()
    result = app.test_cli_runner().invoke(
        args=["mercato", "usage", "rebuild", "--from", since.isoformat(), "--to", end.isoformat()]
    )
    assert result.exit_code == 0, result.output
    with committed_db() as session:
        rows = session.scalars(sa.select(UsageHourly).where(UsageHourly.subscription_id == sub)).all()
        assert {(r.metric, r.hour): r.quantity for r in rows} == original
    assert "80 record(s)" in result.output and "2 usage total(s) changed" in result.output
    assert f"usage {sub} bandwidth.gb:" in result.output and "-> 200" in result.output
    # 210 CPU hours were billed 4.20; at the fixed price they are 6.30; the traffic rates the same
    (billed,) = [line for line in result.output.splitlines() if "invoice" in line]
    assert "CPU" in billed and "billed 4.20" in billed and "now 6.30 (+2.10 EUR)" in billed
    bad = app.test_cli_runner().invoke(
        args=["mercato", "usage", "rebuild", "--from", end.isoformat(), "--to", since.isoformat()]
    )
    assert bad.exit_code != 0 and "--to must be after --from" in bad.output


def test_vendors_simulate_a_drafts_prices_on_real_usage(
    app: Flask,
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    from cmw.catalog import service as catalog
    from cmw.catalog.models import Product
    from cmw.catalog.pricing import ComponentSpec, PlanSpec
    from tests.test_usage_ingest import CPU, FEE, PLAN, TRAFFIC

    sub = metered["subscription"]
    recent = utcnow() - dt.timedelta(days=3)
    _ingest(committed_db, [_record(n, sub, recent + dt.timedelta(hours=n), "20") for n in range(3)])  # 60 GB
    cpu = [
        {**_record(50 + n, sub, recent + dt.timedelta(hours=n), "50"), "metric": "cpu.hours"}
        for n in range(2)
    ]
    _ingest(committed_db, cpu)  # 100 hours
    vendor, _ = _sign_in(app, "meter-vendor@example.test")
    with committed_db() as session:
        product = session.scalars(sa.select(Product).where(Product.slug == "metered")).one()
        product_id = product.id
    same = vendor.get(f"/api/v1/vendor/products/{product_id}/price-simulation?days=10").get_json()
    assert same["draft_version"] is None
    # 10 days of a 5 EUR month: 1.67; (60 - 10 included) GB at 0.10: 5.00; 100 CPU hours at 0.02: 2.00
    assert [(b["current"], b["simulated"]) for b in same["bills"]] == [("8.67", "8.67")]
    with committed_db() as session:
        product = session.get(Product, product_id)
        assert product is not None
        dearer_cpu = ComponentSpec(**{**CPU.__dict__, "unit_price": D("0.03")})
        catalog.set_plans(
            session, product, [PlanSpec(**{**PLAN.__dict__, "components": (FEE, TRAFFIC, dearer_cpu)})]
        )
        session.commit()
    found = vendor.get(f"/api/v1/vendor/products/{product_id}/price-simulation?days=10").get_json()
    assert found["draft_version"] == 2
    (bill,) = found["bills"]
    assert (bill["customer"], bill["current"], bill["simulated"], bill["difference"]) == (
        "Customer of meter-customer@example.test", "8.67", "9.67", "1",
    )  # fmt: skip
    assert found["totals"] == [{"currency": "EUR", "total": "8.67", "projected_total": "9.67"}]
    page = vendor.get(f"/vendor/products/{product_id}/simulation?days=10").get_data(as_text=True)
    assert "revision 2" in page and "9.67 EUR" in page and "Customer of meter-customer@example.test" in page
    stranger, _ = _sign_in(app, "meter-customer@example.test")
    assert stranger.get(f"/api/v1/vendor/products/{product_id}/price-simulation").status_code == 403
