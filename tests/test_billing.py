"""Billing runs on PostgreSQL, with worked examples computed by hand: fees in advance,
setup once, per-unit fees, metered usage with graduated and volume tiers and included
quantities, yearly plans and catch-up, trial conversion, cancellation; idempotence, two
runs racing, gapless numbers, and the invoice.issued event."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts.models import Organisation, OrganisationKind, User
from cmw.billing import service as billing
from cmw.billing import taxes
from cmw.billing.models import BilledItem, Invoice, InvoiceLine, UsageHourly
from cmw.catalog.models import BillingPeriod, ComponentKind, PricingModel
from cmw.catalog.pricing import ComponentSpec, PlanSpec, Tier
from cmw.events.models import OutboxEvent
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from cmw.orders import subscriptions
from cmw.orders.jobs import run_due
from cmw.orders.models import Subscription
from tests import catalog_data

Factory = sessionmaker[Session]
D = Decimal
T0 = dt.datetime(2026, 1, 15, 10, 0, tzinfo=dt.UTC)


def _plan(code: str, *components: ComponentSpec, period: BillingPeriod = BillingPeriod.MONTH) -> PlanSpec:
    return PlanSpec(
        code=code, name=code.title(), currency="EUR", billing_period=period, components=components
    )


FEE = ComponentSpec(kind=ComponentKind.FLAT, label="Fee", unit_price=D("10"))
SETUP = ComponentSpec(kind=ComponentKind.SETUP, label="Setup", unit_price=D("25"))
SEATS = ComponentSpec(kind=ComponentKind.PER_UNIT, label="Seats", unit_price=D("4.50"), unit="seat")
TRAFFIC = ComponentSpec(
    kind=ComponentKind.METERED, label="Traffic", metric="bandwidth.gb", unit="GB",
    pricing_model=PricingModel.GRADUATED, included_quantity=D(100),
    tiers=(Tier(D(0), D(1000), D("0.08")), Tier(D(1000), None, D("0.05"))),
)  # fmt: skip
CPU = ComponentSpec(
    kind=ComponentKind.METERED, label="CPU", metric="cpu.hours", unit="hour",
    pricing_model=PricingModel.VOLUME, tiers=(Tier(D(0), D(500), D("0.02")), Tier(D(500), None, D("0.015"))),
)  # fmt: skip
THIRD = ComponentSpec(kind=ComponentKind.PER_UNIT, label="Thirds", unit_price=D("0.333"), unit="unit")
YEARLY = ComponentSpec(kind=ComponentKind.FLAT, label="Licence", unit_price=D("1200"))
BIG = ComponentSpec(kind=ComponentKind.FLAT, label="Big fee", unit_price=D("40"))


@pytest.fixture
def world(committed_db: Factory) -> dict[str, Any]:
    """One product selling every kind of plan, and a paying customer."""
    with committed_db() as session:
        catalog_data.publish_product(
            session,
            "billed",
            [
                _plan("seats", FEE, SETUP, SEATS),
                _plan("usage", FEE, TRAFFIC, CPU),
                _plan("thirds", THIRD),
                _plan("yearly", YEARLY, period=BillingPeriod.YEAR),
                _plan("big", BIG),
            ],
            trial_days=14,
        )
        user, org = catalog_data.add_customer(session, "payer@example.test", paying=True)
        session.commit()
        return {"user": user.id, "org": org.id}


def subscribe(
    factory: Factory,
    world: dict[str, Any],
    plan: str,
    *,
    quantity: int = 1,
    at: dt.datetime = T0,
    trial: bool = False,
    org: uuid.UUID | None = None,
    user: uuid.UUID | None = None,
) -> uuid.UUID:
    with factory() as session:
        placed = orders.place_order(
            session, platform(session), session.get(User, user or world["user"]),  # type: ignore[arg-type]
            session.get(Organisation, org or world["org"]),  # type: ignore[arg-type]
            orders.OrderRequest(product="billed", plan=plan, quantity=quantity, trial=trial), now=at,
        )  # fmt: skip
        session.commit()
        assert placed.subscription_id is not None
        return placed.subscription_id


def invoices(factory: Factory) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(number, total, [(description, amount)]) of every invoice, in number order."""
    with factory() as session:
        found = session.scalars(sa.select(Invoice).order_by(Invoice.sequence)).all()
        return [
            (
                i.number or "",
                f"{i.total:.2f}",
                [(line.description.split(" · ", 2)[-1], f"{line.amount:.2f}") for line in i.lines],
            )
            for i in found
        ]


def use(factory: Factory, subscription_id: uuid.UUID, metric: str, hours: dict[dt.datetime, str]) -> None:
    with factory() as session:
        for hour, quantity in hours.items():
            session.add(
                UsageHourly(subscription_id=subscription_id, metric=metric, hour=hour, quantity=D(quantity))
            )
        session.commit()


def test_fees_in_advance_setup_once_and_the_next_period(committed_db: Factory, world: dict[str, Any]) -> None:
    subscribe(committed_db, world, "seats", quantity=3)
    billing.run(committed_db, T0 + dt.timedelta(hours=2), now=T0 + dt.timedelta(hours=2))
    assert invoices(committed_db) == [
        (
            "PLATFORM-2026-000001",
            "48.50",  # 25 setup + 10 fee + 3 x 4.50 seats
            [
                ("Setup", "25.00"),
                ("Fee, 15 Jan 2026 to 15 Feb 2026", "10.00"),
                ("Seats, 15 Jan 2026 to 15 Feb 2026", "13.50"),
            ],
        )
    ]
    # again: nothing new
    billing.run(committed_db, T0 + dt.timedelta(days=1), now=T0 + dt.timedelta(days=1))
    assert len(invoices(committed_db)) == 1
    # the next period starts on 15 Feb: its fees, and nothing else
    feb = dt.datetime(2026, 2, 15, 10, 0, tzinfo=dt.UTC)
    billing.run(committed_db, feb, now=feb)
    number, total, lines = invoices(committed_db)[1]
    assert number == "PLATFORM-2026-000002" and total == "23.50"
    assert lines == [
        ("Fee, 15 Feb 2026 to 15 Mar 2026", "10.00"),
        ("Seats, 15 Feb 2026 to 15 Mar 2026", "13.50"),
    ]


def test_usage_is_billed_when_its_period_ends_with_tiers_and_included_quantity(
    committed_db: Factory, world: dict[str, Any]
) -> None:
    sub = subscribe(committed_db, world, "usage")
    # 1,500 GB over three hours of the period, one record outside it; 600 CPU hours
    use(
        committed_db,
        sub,
        "bandwidth.gb",
        {T0: "500", T0 + dt.timedelta(days=3): "700", T0 + dt.timedelta(days=20): "300"},
    )
    use(committed_db, sub, "cpu.hours", {T0 + dt.timedelta(hours=5): "600"})
    use(committed_db, sub, "bandwidth.gb", {T0 + dt.timedelta(days=40): "999"})  # next period
    mid = T0 + dt.timedelta(days=10)
    billing.run(committed_db, mid, now=mid)
    assert invoices(committed_db)[0][2] == [("Fee, 15 Jan 2026 to 15 Feb 2026", "10.00")]

    end = dt.datetime(2026, 2, 15, 10, 0, tzinfo=dt.UTC)
    billing.run(committed_db, end, now=end)
    _, total, lines = invoices(committed_db)[1]
    assert lines == [
        # graduated: 1,500 - 100 included = 1,400 GB: 1,000 at 0.08 + 400 at 0.05
        ("Traffic, 15 Jan 2026 to 15 Feb 2026", "100.00"),
        # volume: 600 hours are all in the second tier, at 0.015
        ("CPU, 15 Jan 2026 to 15 Feb 2026", "9.00"),
        ("Fee, 15 Feb 2026 to 15 Mar 2026", "10.00"),
    ]
    assert total == "119.00"


def test_a_yearly_plan_catches_up_and_lines_are_rounded_one_by_one(
    committed_db: Factory, world: dict[str, Any]
) -> None:
    subscribe(committed_db, world, "yearly", at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    subscribe(committed_db, world, "thirds", quantity=3, at=dt.datetime(2027, 2, 20, tzinfo=dt.UTC))
    # nobody ran billing for a year: both yearly periods that started are billed
    late = dt.datetime(2027, 3, 1, 0, 0, tzinfo=dt.UTC)
    billing.run(committed_db, late, now=late)
    ((number, total, lines),) = invoices(committed_db)
    assert number == "PLATFORM-2027-000001"
    assert lines == [
        ("Licence, 01 Mar 2026 to 01 Mar 2027", "1200.00"),
        ("Licence, 01 Mar 2027 to 01 Mar 2028", "1200.00"),
        ("Thirds, 20 Feb 2027 to 20 Mar 2027", "1.00"),  # 3 x 0.333 = 0.999, rounded once, on its line
    ]
    assert total == "2401.00"


def test_a_trial_is_free_and_billing_starts_at_its_conversion(
    committed_db: Factory, world: dict[str, Any]
) -> None:
    subscribe(committed_db, world, "seats", quantity=2, trial=True)
    during = T0 + dt.timedelta(days=5)
    billing.run(committed_db, during, now=during)
    assert invoices(committed_db) == []
    converted = T0 + dt.timedelta(days=14, hours=1)
    run_due(committed_db, converted)
    billing.run(committed_db, converted, now=converted)
    ((_, total, lines),) = invoices(committed_db)
    assert lines == [
        ("Setup", "25.00"),
        ("Fee, 29 Jan 2026 to 28 Feb 2026", "10.00"),  # anchored on the conversion; February is short
        ("Seats, 29 Jan 2026 to 28 Feb 2026", "9.00"),
    ]
    assert total == "44.00"


def test_a_cancelled_subscription_pays_its_last_usage_and_no_new_period(
    committed_db: Factory, world: dict[str, Any]
) -> None:
    sub = subscribe(committed_db, world, "usage")
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None
        subscriptions.cancel(
            session, subscription, world["user"], at_once=False, now=T0 + dt.timedelta(days=2)
        )
        session.commit()
    use(committed_db, sub, "cpu.hours", {T0 + dt.timedelta(days=3): "100"})
    end = dt.datetime(2026, 2, 15, 11, 0, tzinfo=dt.UTC)
    run_due(committed_db, end)  # the period ends: the subscription is cancelled
    billing.run(committed_db, end, now=end)
    lines = [line for _, _, ls in invoices(committed_db) for line in ls]
    assert lines == [
        ("Fee, 15 Jan 2026 to 15 Feb 2026", "10.00"),
        ("Traffic, 15 Jan 2026 to 15 Feb 2026", "0.00"),
        ("CPU, 15 Jan 2026 to 15 Feb 2026", "2.00"),  # 100 hours in the first volume tier
    ]


def test_two_runs_racing_bill_everything_once_with_gapless_numbers(
    committed_db: Factory, world: dict[str, Any]
) -> None:
    customers = []
    with committed_db() as session:
        for n in range(12):
            user, org = catalog_data.add_customer(session, f"racer-{n}@example.test", paying=True)
            customers.append((user.id, org.id))
        session.commit()
    for user_id, org_id in customers:
        subscribe(committed_db, world, "seats", quantity=2, user=user_id, org=org_id)
    at = T0 + dt.timedelta(hours=1)
    errors: list[BaseException] = []

    def race() -> None:
        try:
            billing.run(committed_db, at, now=at)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    billing.run(committed_db, at, now=at)  # and a third, afterwards
    found = invoices(committed_db)
    assert len(found) == 12
    assert [n for n, _, _ in found] == [f"PLATFORM-2026-{i:06d}" for i in range(1, 13)]
    with committed_db() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(InvoiceLine)) == 36
        assert (
            session.scalar(sa.select(sa.func.count()).select_from(BilledItem)) == 24
        )  # setup + advance each
        issued = session.scalars(sa.select(OutboxEvent).where(OutboxEvent.topic == "invoice.issued")).all()
        assert sorted(e.payload["number"] for e in issued) == [n for n, _, _ in found]


def test_a_run_cannot_bill_the_future(app: Flask, committed_db: Factory, world: dict[str, Any]) -> None:
    now = T0
    with pytest.raises(billing.BillingError, match="cannot bill the future"):
        billing.run(committed_db, now + dt.timedelta(seconds=1), now=now)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["mercato", "billing", "run", "--at", "2999-01-01T00:00:00Z"])
    assert result.exit_code != 0 and "cannot bill the future" in result.output
    result = runner.invoke(args=["mercato", "billing", "run", "--at", "yesterday"])
    assert result.exit_code != 0 and "not an ISO 8601 time" in result.output
    subscribe(committed_db, world, "seats", at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    result = runner.invoke(args=["mercato", "billing", "run", "--at", "2026-01-02T00:00:00"])
    assert result.exit_code == 0, result.output
    assert "1 invoice(s), 3 line(s)" in result.output and "PLATFORM-2026-000001" in result.output


def test_customers_see_their_invoices_in_the_api_and_the_pages(
    app: Flask, committed_db: Factory, world: dict[str, Any]
) -> None:
    subscribe(committed_db, world, "seats", quantity=3)
    with committed_db() as session:
        catalog_data.add_customer(session, "stranger@example.test")
        session.commit()
    billing.run(committed_db, T0 + dt.timedelta(hours=1), now=T0 + dt.timedelta(hours=1))

    owner, stranger = app.test_client(), app.test_client()
    for browser, email in ((owner, "payer@example.test"), (stranger, "stranger@example.test")):
        signed = browser.post("/api/v1/session", json={"email": email, "password": "long-enough-pw"})
        assert signed.status_code == 200
    listed = owner.get("/api/v1/invoices").get_json()
    (summary,) = listed["items"]
    assert summary["number"] == "PLATFORM-2026-000001" and summary["total"] == "48.5"
    assert summary["buyer"]["legal_name"] == "Customer Srl"
    detail = owner.get(f"/api/v1/invoices/{summary['id']}").get_json()
    assert [(line["kind"], line["amount"]) for line in detail["lines"]] == [
        ("setup", "25"),
        ("fee", "10"),
        ("per_unit", "13.5"),
    ]
    assert stranger.get("/api/v1/invoices").get_json()["items"] == []
    assert stranger.get(f"/api/v1/invoices/{summary['id']}").status_code == 404
    assert stranger.get(f"/account/invoices/{summary['id']}").status_code == 404

    page = owner.get("/account/invoices").get_data(as_text=True)
    assert "PLATFORM-2026-000001" in page and "48.50 EUR" in page
    shown = owner.get(f"/account/invoices/{summary['id']}").get_data(as_text=True)
    assert "Seats, 15 Jan 2026 to 15 Feb 2026" in shown and "13.50 EUR" in shown and "Customer Srl" in shown


MARCH = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
DAY_11 = dt.datetime(2026, 3, 11, tzinfo=dt.UTC)  # 10 days of March's 31 gone, 21 left


def _change(factory: Factory, subscription_id: uuid.UUID, action: Any) -> None:
    with factory() as session:
        subscription = session.get(Subscription, subscription_id)
        assert subscription is not None
        action(session, subscription)
        session.commit()


def _plan_id(factory: Factory, code: str) -> Any:
    with factory() as session:
        from cmw.catalog.models import Plan

        return session.scalar(sa.select(Plan).where(Plan.code == code))


def test_an_upgrade_on_day_10_is_prorated_by_the_second(committed_db: Factory, world: dict[str, Any]) -> None:
    sub = subscribe(committed_db, world, "seats", quantity=2, at=MARCH)
    billing.run(committed_db, MARCH, now=MARCH)
    big = _plan_id(committed_db, "big")
    _change(committed_db, sub, lambda s, x: subscriptions.change_plan(s, x, s.merge(big), None, now=DAY_11))
    billing.run(committed_db, DAY_11, now=DAY_11)
    (first, second) = invoices(committed_db)
    assert first[1] == "44.00"  # setup 25 + fee 10 + 2 seats at 4.50
    assert second[2] == [
        # the unused 21 of 31 days of the old plan: 19 x 21/31 = 12.8709... -> 12.87
        ("Seats, quantity 2, unused 11 Mar 2026 00:00 to 01 Apr 2026", "-12.87"),
        # the rest of the period on the new plan: 40 x 21/31 = 27.0967... -> 27.10
        ("Big, quantity 1, 11 Mar 2026 00:00 to 01 Apr 2026", "27.10"),
    ]
    assert second[1] == "14.23"
    # April is billed on the new plan, with no proration again
    april = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    billing.run(committed_db, april, now=april)
    assert invoices(committed_db)[2][2] == [("Big fee, 01 Apr 2026 to 01 May 2026", "40.00")]


def test_more_seats_mid_period_and_a_cancellation_at_once(
    committed_db: Factory, world: dict[str, Any]
) -> None:
    sub = subscribe(committed_db, world, "seats", quantity=2, at=MARCH)
    billing.run(committed_db, MARCH, now=MARCH)
    _change(committed_db, sub, lambda s, x: subscriptions.change_quantity(s, x, 5, None, now=DAY_11))
    later = DAY_11 + dt.timedelta(days=7)  # 14 of 31 days left
    _change(committed_db, sub, lambda s, x: subscriptions.cancel(s, x, None, at_once=True, now=later))
    billing.run(committed_db, later, now=later)
    assert invoices(committed_db)[1][2] == [
        ("Seats, quantity 2, unused 11 Mar 2026 00:00 to 01 Apr 2026", "-12.87"),
        # 10 + 5 x 4.50 = 32.50 for 21/31 of the period
        ("Seats, quantity 5, 11 Mar 2026 00:00 to 01 Apr 2026", "22.02"),
        # cancelled with 14 of 31 days left: 32.50 x 14/31 = 14.677... back
        ("Seats, quantity 5, unused 18 Mar 2026 00:00 to 01 Apr 2026", "-14.68"),
    ]
    assert invoices(committed_db)[1][1] == "-5.53"
    # nothing more, ever: the subscription ended
    billing.run(
        committed_db, dt.datetime(2026, 5, 1, tzinfo=dt.UTC), now=dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    )
    assert len(invoices(committed_db)) == 2


def test_proration_properties() -> None:
    start, end = MARCH, dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    assert billing.prorate(D("19"), start, end, start) == D("19")  # over the full period: the full price
    assert billing.prorate(D("19"), start, end, end) == 0
    half = start + (end - start) / 2
    assert billing.prorate(D("10"), start, end, half) == D("5")


def _buyer(factory: Factory, email: str, country: str, vat: str | None = None) -> tuple[uuid.UUID, uuid.UUID]:
    from cmw.accounts import service as accounts
    from cmw.accounts.models import OrganisationKind

    with factory() as session:
        org = accounts.create_organisation(
            session,
            platform(session),
            kind=OrganisationKind.CUSTOMER,
            name=f"Buyer in {country}",
            billing=accounts.BillingDetails(
                legal_name=f"Müller & Søn {country}", country=country, vat_number=vat
            ),
        )
        org.has_payment_method = True
        user, _ = catalog_data.add_customer(session, email, organisation=org)
        session.commit()
        return user.id, org.id


def test_taxes_by_country_and_the_eu_reverse_charge(
    app: Flask, committed_db: Factory, world: dict[str, Any]
) -> None:
    with committed_db() as session:
        admin = catalog_data.add_customer(session, "tax-admin@example.test")[0]
        from cmw.accounts import service as accounts
        from cmw.accounts.models import Role

        accounts.grant(session, admin, platform(session), Role.ADMIN)
        session.commit()
    browser = app.test_client()
    assert (
        browser.post(
            "/api/v1/session", json={"email": "tax-admin@example.test", "password": "long-enough-pw"}
        ).status_code
        == 200
    )
    me = browser.get("/api/v1/me").get_json()
    headers = {"X-CSRF-Token": me["csrf_token"]}
    bad = browser.patch("/api/v1/admin/billing-settings", json={"seller_country": "XX"}, headers=headers)
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "seller_country"
    settings = browser.patch(
        "/api/v1/admin/billing-settings",
        json={
            "seller_legal_name": "Mercato S.r.l.",
            "seller_country": "it",
            "seller_vat_number": "IT 123 456 789 01",
            "seller_address": ["Via Roma 1", "00100 Roma"],
            "payment_terms_days": 30,
        },
        headers=headers,
    )
    assert settings.status_code == 200, settings.get_data(as_text=True)
    assert settings.get_json()["seller_vat_number"] == "IT12345678901"
    for seller, buyer, rate, name in (
        ("IT", "IT", "22", "VAT"),
        ("IT", "DE", "19", "VAT (OSS)"),
        ("IT", "*", "0", "Outside the scope of EU VAT"),
    ):
        made = browser.post(
            "/api/v1/admin/tax-rates",
            json={"seller_country": seller, "buyer_country": buyer, "rate": rate, "name": name},
            headers=headers,
        )
        assert made.status_code == 201, made.get_data(as_text=True)
    again = browser.post(
        "/api/v1/admin/tax-rates",
        json={"seller_country": "IT", "buyer_country": "DE", "rate": "7"},
        headers=headers,
    )
    assert again.status_code == 422 and "exists" in again.get_json()["errors"][0]["message"]

    buyers = {
        "italian": (world["user"], world["org"]),
        "german business": _buyer(committed_db, "gmbh@example.test", "DE", "DE123456789"),
        "german consumer": _buyer(committed_db, "privat@example.test", "DE"),
        "american": _buyer(committed_db, "inc@example.test", "US"),
    }
    for user, org in buyers.values():
        subscribe(committed_db, world, "seats", quantity=3, user=user, org=org)
    billing.run(committed_db, T0 + dt.timedelta(hours=1), now=T0 + dt.timedelta(hours=1))
    with committed_db() as session:
        by_org = {i.customer_id: i for i in session.scalars(sa.select(Invoice))}
        summary = {
            name: (
                f"{by_org[org].subtotal:.2f}",
                f"{by_org[org].tax_total:.2f}",
                f"{by_org[org].total:.2f}",
                by_org[org].tax_rule,
            )
            for name, (_, org) in buyers.items()
        }
        italian = by_org[world["org"]]
        assert italian.seller["vat_number"] == "IT12345678901" and italian.seller["address"] == [
            "Via Roma 1",
            "00100 Roma",
        ]
        assert italian.due_at - italian.issued_at == dt.timedelta(days=30)  # type: ignore[operator]
    assert summary == {
        "italian": ("48.50", "10.67", "59.17", "VAT 22%"),  # 48.50 x 22% = 10.67
        "german business": ("48.50", "0.00", "48.50", taxes.REVERSE_CHARGE),
        "german consumer": ("48.50", "9.22", "57.72", "VAT (OSS) 19%"),  # 9.215, rounded half up
        "american": ("48.50", "0.00", "48.50", "Outside the scope of EU VAT 0%"),
    }


def test_the_admins_billing_page(app: Flask, committed_db: Factory, world: dict[str, Any]) -> None:
    import re

    from cmw.accounts import service as accounts
    from cmw.accounts.models import Role

    with committed_db() as session:
        admin = catalog_data.add_customer(session, "billing-admin@example.test")[0]
        accounts.grant(session, admin, platform(session), Role.ADMIN)
        session.commit()
    browser = app.test_client()
    assert (
        browser.post(
            "/api/v1/session", json={"email": "billing-admin@example.test", "password": "long-enough-pw"}
        ).status_code
        == 200
    )
    page = browser.get("/admin/billing").get_data(as_text=True)
    assert "No billing run yet" in page and "No tax rate yet" in page
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]

    seller = {
        "seller_legal_name": "Mercato S.r.l.",
        "seller_country": "ZZ",
        "payment_terms_days": "30",
        "csrf_token": token,
    }
    refused = browser.post("/admin/billing", data=seller)
    assert refused.status_code == 422 and "not an ISO 3166-1" in refused.get_data(as_text=True)
    disordered = browser.post(
        "/admin/billing", data={**seller, "seller_country": "IT", "past_due_after_days": "20"}
    )  # after the suspension (14)
    assert disordered.status_code == 422 and "then suspends, then cancels" in disordered.get_data(
        as_text=True
    )
    bad_days = browser.post(
        "/admin/billing", data={**seller, "seller_country": "IT", "reminder_days": "1, x"}
    )
    assert bad_days.status_code == 422 and "whole numbers of days" in bad_days.get_data(as_text=True)
    dunning = {"reminder_days": "10, 2", "suspend_after_days": "9", "cancel_after_days": "45"}
    assert (
        browser.post("/admin/billing", data={**seller, "seller_country": "IT", **dunning}).status_code == 302
    )
    with committed_db() as session:
        saved = taxes.settings_of(session, platform(session).id)
        assert (saved.reminder_days, saved.past_due_after_days, saved.suspend_after_days) == ([2, 10], 3, 9)
        assert saved.cancel_after_days == 45
    assert 'value="2, 10"' in browser.get("/admin/billing").get_data(as_text=True)
    rate = {
        "rate-seller_country": "IT", "rate-buyer_country": "IT", "rate-rate": "22", "rate-name": "VAT",
        "rate-csrf_token": token,
    }  # fmt: skip
    assert browser.post("/admin/billing/tax-rates", data=rate).status_code == 302
    again = browser.post("/admin/billing/tax-rates", data=rate)
    assert again.status_code == 422 and "exists" in again.get_data(as_text=True)

    subscribe(committed_db, world, "seats", quantity=3, at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    ran = browser.post("/admin/billing/run", data={"csrf_token": token})
    assert ran.status_code == 302
    page = browser.get("/admin/billing").get_data(as_text=True)
    assert "Billing run done: 1 invoice(s) issued" in page and "<td>finished</td>" in page
    assert "22%" in page and 'value="Mercato S.r.l."' in page
    with committed_db() as session:
        (invoice,) = session.scalars(sa.select(Invoice)).all()
        assert invoice.tax_rule == "VAT 22%" and invoice.total > invoice.subtotal
    # coupons: errors next to their fields, then one created and listed
    coupon = {"code": "SPRING", "kind": "percent", "value": "150", "duration": "once", "csrf_token": token}
    refused = browser.post("/admin/billing/coupons", data=coupon)
    assert refused.status_code == 422 and "at most 100 percent" in refused.get_data(as_text=True)
    assert browser.post("/admin/billing/coupons", data={**coupon, "value": "15"}).status_code == 302
    page = browser.get("/admin/billing").get_data(as_text=True)
    assert "The coupon is created" in page and '<th scope="row">SPRING</th><td>15%</td>' in page
    remove = re.search(r'action="(/admin/billing/tax-rates/[0-9a-f-]{36}/remove)"', page)
    assert remove
    browser.post(remove.group(1), data={"csrf_token": token})
    assert "No tax rate yet" in browser.get("/admin/billing").get_data(as_text=True)


def test_vendors_see_their_revenue_by_month(app: Flask, committed_db: Factory, world: dict[str, Any]) -> None:
    from cmw.accounts import service as accounts
    from cmw.accounts.models import Role
    from cmw.db import utcnow

    now = utcnow()
    subscribe(committed_db, world, "seats", quantity=3, at=now - dt.timedelta(hours=1))
    billing.run(committed_db, now, now=now)
    with committed_db() as session:
        vendor_org = session.scalar(sa.select(Organisation).where(Organisation.name == "billed vendor"))
        assert vendor_org is not None
        seller = accounts.create_user(
            session, email="seller@example.test", name="Sel", password="long-enough-pw"
        )
        accounts.grant(session, seller, platform(session), Role.VENDOR, vendor_org)
        other_org = accounts.create_organisation(
            session, platform(session), kind=OrganisationKind.VENDOR, name="Other vendor",
            billing=accounts.BillingDetails(legal_name="Other", country="FR"),
        )  # fmt: skip
        other = accounts.create_user(
            session, email="other-seller@example.test", name="O", password="long-enough-pw"
        )
        accounts.grant(session, other, platform(session), Role.VENDOR, other_org)
        session.commit()
    browser, stranger = app.test_client(), app.test_client()
    for client, email in ((browser, "seller@example.test"), (stranger, "other-seller@example.test")):
        assert (
            client.post("/api/v1/session", json={"email": email, "password": "long-enough-pw"}).status_code
            == 200
        )
    assert browser.get("/api/v1/vendor/revenue").get_json() == [
        {"month": f"{now:%Y-%m}", "currency": "EUR", "invoiced": "48.5", "paid": "0", "earned": "48.5"}
    ]
    assert stranger.get("/api/v1/vendor/revenue").get_json() == []
    page = browser.get("/vendor/sales").get_data(as_text=True)
    assert f"{now:%Y-%m}: 48.50 EUR" in page and "<svg" in page
    assert "Nothing invoiced yet" in stranger.get("/vendor/sales").get_data(as_text=True)
