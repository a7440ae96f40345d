"""Mark-ups and the revenue split (issue 10): a distributor prices over the platform's
prices and a reseller over its distributor's, by a percentage, an amount or an explicit
price per component, never below the parent's price; each customer sees and pays its own
marketplace's prices; invoice lines record what is owed up the tree, and every level's
part adds up to what the customer was invoiced."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Role, User
from cmw.billing import revenue
from cmw.billing import service as billing
from cmw.billing.models import Invoice, InvoiceLine, UsageHourly
from cmw.marketplaces import pricing
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from tests import catalog_data
from tests.test_billing import CPU, FEE, SEATS, SETUP, T0, TRAFFIC
from tests.test_billing import _plan as plan_of
from tests.test_catalog_selection import select, tree  # noqa: F401  (the tree fixture)

Headers = Callable[..., dict[str, str]]
D = Decimal


def prices(client: FlaskClient, host: str, headers: dict[str, str], slug: str = "first-app") -> Any:
    return client.get(f"/api/v1/marketplace/prices/{slug}", headers=headers, base_url=f"http://{host}")


def set_prices(
    client: FlaskClient, host: str, headers: dict[str, str], body: Any, slug: str = "first-app"
) -> Any:
    return client.put(
        f"/api/v1/marketplace/prices/{slug}", json=body, headers=headers, base_url=f"http://{host}"
    )


def team_prices(client: FlaskClient, host: str) -> list[Any]:
    """The unit prices (or tiers' unit prices) of the team plan as the host's customers see them."""
    answer = client.get("/api/v1/products/first-app", base_url=f"http://{host}")
    assert answer.status_code == 200, answer.json
    team = next(p for p in answer.json["plans"] if p["code"] == "team")
    return [
        D(c["unit_price"]) if c["unit_price"] is not None else [D(t["unit_price"]) for t in c["tiers"]]
        for c in team["components"]
    ]


@pytest.fixture
def sold_everywhere(client: FlaskClient, tree: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    for host in ("distri.test", "resel.test"):
        assert select(client, tree, host, [tree["first"]["id"]]).status_code == 200
    return tree


def test_each_marketplace_sells_at_its_own_prices(
    client: FlaskClient,
    sold_everywhere: dict[str, Any],
    make_user: Callable[..., User],
    token_for: Headers,
) -> None:
    world = sold_everywhere
    distri, resel = world["admin"]["distri.test"], world["admin"]["resel.test"]
    # the distributor: 10% over the platform, and its own price for seats
    answer = set_prices(
        client,
        "distri.test",
        distri,
        {"markup": {"percent": "10"}, "plans": {"team": {"components": {"2": {"unit_price": "5.00"}}}}},
    )
    assert answer.status_code == 200, answer.json
    team = answer.json["plans"][0]
    assert team["code"] == "team"
    seats = team["components"][2]
    assert seats["parent_price"]["unit_price"] == "4.5" and seats["price"]["unit_price"] == "5"
    assert team["components"][0]["price"]["unit_price"] == "53.9"  # 49 + 10%
    # the reseller: 20% over the distributor on everything it sells
    answer = client.put(
        "/api/v1/marketplace/pricing",
        json={"default_markup_percent": "20"},
        headers=resel,
        base_url="http://resel.test",
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["default_markup_percent"] == "20"

    # each marketplace's customers see its own prices, and only them
    assert team_prices(client, "localhost") == [
        D("49"), D("99"), D("4.5"), [D("0.08"), D("0.05")], [D("0.02"), D("0.015")]
    ]  # fmt: skip
    assert team_prices(client, "distri.test") == [
        D("53.9"), D("108.9"), D("5"), [D("0.088"), D("0.055")], [D("0.022"), D("0.0165")]
    ]  # fmt: skip
    assert team_prices(client, "resel.test") == [
        D("64.68"), D("130.68"), D("6"), [D("0.1056"), D("0.066")], [D("0.0264"), D("0.0198")]
    ]  # fmt: skip

    # what is not a price is the vendor's plan, wherever it is sold (machine size, disk, ...)
    def besides_prices(host: str) -> list[Any]:
        plans = client.get("/api/v1/products/first-app", base_url=f"http://{host}").json["plans"]
        for plan in plans:
            for c in plan["components"]:
                del c["unit_price"], c["tiers"]
        return plans

    assert besides_prices("resel.test") == besides_prices("localhost")
    assert "infrastructure" in besides_prices("resel.test")[0]["components"][0]
    card = client.get("/api/v1/products/first-app", base_url="http://resel.test").json["price_from"]
    assert card == {"amount": "94.68", "currency": "EUR", "period": "month"}  # 64.68 + 5 seats x 6
    # the catalog's cards, price filters and sort use them too
    for host, shown in (("localhost", set()), ("resel.test", {"first-app"})):
        found = client.get("/api/v1/products?min_price=90&sort=price", base_url=f"http://{host}").json[
            "items"
        ]
        assert {c["slug"] for c in found} == shown, host
    (listed,) = client.get("/api/v1/products?max_price=95", base_url="http://resel.test").json["items"]
    assert listed["price_from"]["amount"] == "94.68"
    page = client.get("/products/first-app", base_url="http://resel.test").get_data(as_text=True)
    assert "64.68" in page and "49.00" not in page

    # an order in the reseller's marketplace pays the reseller's prices
    customer = token_for(
        make_user(Role.CUSTOMER, marketplace=world["reseller"]), marketplace=world["reseller"]
    )
    placed = client.post(
        "/api/v1/orders",
        json={"product": "first-app", "plan": "team", "quantity": 5},
        headers={**customer, "Idempotency-Key": "resel-1"},
        base_url="http://resel.test",
    )
    assert placed.status_code == 201, placed.json
    breakdown = placed.json["breakdown"]
    assert (breakdown["setup_total"], breakdown["period_total"], breakdown["due_now"]) == (
        "130.68",
        "94.68",
        "225.36",
    )


def test_no_price_below_the_parents(client: FlaskClient, sold_everywhere: dict[str, Any]) -> None:
    world = sold_everywhere
    distri, resel = world["admin"]["distri.test"], world["admin"]["resel.test"]
    assert set_prices(
        client, "distri.test", distri, {"plans": {"team": {"components": {"2": {"unit_price": "5.00"}}}}}
    ).status_code == 200  # fmt: skip

    def refused(host: str, headers: dict[str, str], body: Any, field: str, words: str) -> None:
        answer = set_prices(client, host, headers, body)
        assert answer.status_code == 422, answer.json
        error = answer.json["errors"][0]
        assert error["field"] == field and words in error["message"], error

    refused("distri.test", distri, {"markup": {"percent": "-5"}}, "markup.percent", "below the parent")
    refused("distri.test", distri, {"markup": {"amount": "-1"}}, "markup.amount", "below the parent")
    refused(
        "distri.test", distri, {"plans": {"team": {"components": {"2": {"unit_price": "4.00"}}}}},
        "plans.team.components.2.unit_price", "below the parent's price of 4.5 EUR",
    )  # fmt: skip
    # above the platform's 4.50 but below the distributor's 5.00
    refused(
        "resel.test", resel, {"plans": {"team": {"components": {"2": {"unit_price": "4.80"}}}}},
        "plans.team.components.2.unit_price", "below the parent's price of 5 EUR",
    )  # fmt: skip
    refused(
        "resel.test", resel,
        {"plans": {"team": {"components": {"3": {"tiers": [{"up_to": None, "unit_price": "1"}]}}}}},
        "plans.team.components.3.tiers", "use the parent's tier bounds: 0-1000, 1000-∞",
    )  # fmt: skip
    refused(
        "resel.test", resel,
        {"plans": {"team": {"components": {"3": {"tiers": [
            {"from": "0", "up_to": "1000", "unit_price": "0.07"},
            {"from": "1000", "up_to": None, "unit_price": "0.09"},
        ]}}}}},
        "plans.team.components.3.tiers.0", "below the parent's price of 0.08 EUR",
    )  # fmt: skip
    refused(
        "resel.test",
        resel,
        {"plans": {"gold": {"markup": {"percent": "5"}}}},
        "plans.gold",
        "team, enterprise",
    )
    refused(
        "resel.test", resel, {"plans": {"team": {"components": {"9": {"percent": "5"}}}}},
        "plans.team.components.9", "5 price components",
    )  # fmt: skip
    refused("resel.test", resel, {"markup": {"percent": "5", "amount": "1"}}, "markup", "exactly one")
    refused("resel.test", resel, {"markup": {"unit_price": "5"}}, "markup.unit_price", "not a kind of price")
    refused("resel.test", resel, {"markup": {"percent": "abc"}}, "markup.percent", "must be a number")
    # nothing of a refused change is kept
    assert prices(client, "resel.test", resel).json["markup"] is None

    refused_default = client.put(
        "/api/v1/marketplace/pricing", json={"default_markup_percent": "-1"}, headers=distri,
        base_url="http://distri.test",
    )  # fmt: skip
    assert refused_default.status_code == 422
    assert refused_default.json["errors"][0]["field"] == "default_markup_percent"
    # a product the parent does not sell cannot be priced
    other = world["publish"]("third-app")
    missing = set_prices(client, "resel.test", resel, {"markup": {"percent": "5"}}, slug=other["slug"])
    assert missing.status_code == 404


def test_the_platform_has_no_parent_to_mark_up(
    client: FlaskClient, shop: dict[str, Any], token_for: Headers
) -> None:
    admin = token_for(shop["admin"])
    answer = client.put("/api/v1/marketplace/pricing", json={"default_markup_percent": "5"}, headers=admin)
    assert answer.status_code == 422 and answer.json["errors"][0]["field"] == "default_markup_percent"
    answer = client.put(
        f"/api/v1/marketplace/prices/{shop['product']['slug']}",
        json={"markup": {"percent": "5"}},
        headers=admin,
    )
    assert answer.status_code == 422 and "vendor sets the prices" in answer.json["errors"][0]["message"]
    answer = client.put("/api/v1/marketplace/pricing", json={"commission_percent": "120"}, headers=admin)
    assert answer.status_code == 422 and answer.json["errors"][0]["field"] == "commission_percent"
    answer = client.put("/api/v1/marketplace/pricing", json={"commission_percent": "12.5"}, headers=admin)
    assert answer.status_code == 200 and answer.json["commission_percent"] == "12.5"


def test_a_parents_rise_above_an_explicit_price_wins(
    client: FlaskClient, sold_everywhere: dict[str, Any]
) -> None:
    world = sold_everywhere
    distri, resel = world["admin"]["distri.test"], world["admin"]["resel.test"]
    assert set_prices(client, "distri.test", distri, {"markup": {"percent": "10"}}).status_code == 200
    body = {"plans": {"team": {"components": {"0": {"unit_price": "55.00"}}}}}
    assert set_prices(client, "resel.test", resel, body).status_code == 200
    assert team_prices(client, "resel.test")[0] == D("55")
    # the distributor now asks 20%: 58.80, above the reseller's 55.00, which gives way
    assert set_prices(client, "distri.test", distri, {"markup": {"percent": "20"}}).status_code == 200
    assert team_prices(client, "resel.test")[0] == D("58.8")
    view = prices(client, "resel.test", resel).json["plans"][0]["components"][0]
    assert view["rule"] == {"unit_price": "55"} and view["price"]["unit_price"] == "58.8"
    # removing the reseller's rules: the distributor's prices again
    assert client.delete(
        "/api/v1/marketplace/prices/first-app", headers=resel, base_url="http://resel.test"
    ).status_code == 204  # fmt: skip
    assert team_prices(client, "resel.test")[0] == D("58.8")
    assert prices(client, "resel.test", resel).json["plans"][0]["components"][0]["rule"] is None


# ---------------------------------------------------------------- the revenue split
def test_three_levels_each_customer_pays_its_price_and_the_split_adds_up(
    committed_db: sessionmaker[Session], app: Flask
) -> None:
    """The platform keeps 15% of the vendor's prices; the distributor asks 20% more, and its
    own 6.00 a seat; the reseller 10% over the distributor, and one cent more a GB."""
    with committed_db() as session:
        product = catalog_data.publish_product(
            session, "split", [plan_of("seats", FEE, SETUP, SEATS), plan_of("usage", FEE, TRAFFIC, CPU)]
        )
        top = platform(session)
        top.commission_percent = D(15)
        distributor = Marketplace(
            kind=MarketplaceKind.DISTRIBUTOR, parent_id=top.id, name="Distri", slug="distri",
            domain="distri.test", sells_all_of_parent=True,
        )  # fmt: skip
        session.add(distributor)
        session.flush()
        reseller = Marketplace(
            kind=MarketplaceKind.RESELLER, parent_id=distributor.id, name="Resel", slug="resel",
            domain="resel.test", sells_all_of_parent=True, default_markup_percent=D(10),
        )  # fmt: skip
        session.add(reseller)
        session.flush()
        pricing.set_prices(
            session, distributor, product,
            {"markup": {"percent": "20"}, "plans": {"seats": {"components": {"2": {"unit_price": "6.00"}}}}},
            None, T0,
        )  # fmt: skip
        pricing.set_prices(
            session,
            reseller,
            product,
            {"plans": {"usage": {"components": {"1": {"amount": "0.01"}}}}},
            None,
            T0,
        )
        subscriptions: dict[str, list[uuid.UUID]] = {}
        for marketplace in (top, distributor, reseller):
            user, org = catalog_data.add_customer(
                session, f"buyer@{marketplace.slug}.test", paying=True, marketplace=marketplace
            )
            subscriptions[marketplace.slug] = []
            for plan, quantity in (("seats", 3), ("usage", 1)):
                placed = orders.place_order(
                    session, marketplace, user, org,
                    orders.OrderRequest(product="split", plan=plan, quantity=quantity), now=T0,
                )  # fmt: skip
                assert placed.subscription_id is not None
                subscriptions[marketplace.slug].append(placed.subscription_id)
            usage = subscriptions[marketplace.slug][1]
            session.add(UsageHourly(subscription_id=usage, metric="bandwidth.gb", hour=T0, quantity=D(600)))
            session.add(UsageHourly(subscription_id=usage, metric="cpu.hours", hour=T0, quantity=D(100)))
        session.commit()
        ids = {m.slug: m.id for m in (top, distributor, reseller)}
        vendor_id = product.vendor_id

    at = T0 + dt.timedelta(days=32)
    billing.run(committed_db, at, now=at)

    with committed_db() as session:
        issued = {i.marketplace_id: i for i in session.scalars(sa.select(Invoice))}
        assert len(issued) == 3
        # worked by hand: two periods of fees, the setup once, the first period's usage
        # platform: 25 + 2 x (10 + 3 x 4.50) + 2 x 10 + 500 GB x 0.08 + 100 h x 0.02
        # distributor: 30 + 2 x (12 + 3 x 6) + 2 x 12 + 500 x 0.096 + 100 x 0.024
        # reseller: 33 + 2 x (13.20 + 3 x 6.60) + 2 x 13.20 + 500 x 0.106 + 100 x 0.0264
        expected = {"platform": D("134.00"), "distri": D("164.40"), "resel": D("181.04")}
        for slug, subtotal in expected.items():
            invoice = issued[ids[slug]]
            assert invoice.subtotal == subtotal, slug
            assert invoice.total == invoice.subtotal + invoice.tax_total
        # every line: what each party earns adds up to the line, and nobody earns below zero
        owed_up: dict[str, dict[str, Decimal]] = {slug: {} for slug in expected}
        for slug in expected:
            for line in session.scalars(
                sa.select(InvoiceLine).where(InvoiceLine.invoice_id == issued[ids[slug]].id)
            ):
                assert line.revenue_split is not None
                parties = [p.get("marketplace_id") or f"vendor:{p['vendor_id']}" for p in line.revenue_split]
                received = [line.amount, *(D(p["amount"]) for p in line.revenue_split)]
                earned = [received[i] - received[i + 1] for i in range(len(parties))] + [received[-1]]
                assert sum(earned) == line.amount
                assert all(e >= 0 for e in earned), (line.description, earned)
                for party, amount in zip(parties, received[1:], strict=True):
                    owed_up[slug][party] = owed_up[slug].get(party, D(0)) + amount
        vendor = f"vendor:{vendor_id}"
        # the reseller's sale: 181.04 = reseller 16.64 + distributor 30.40 + platform 20.09 + vendor 113.91
        assert owed_up["resel"] == {
            str(ids["distri"]): D("164.40"),
            str(ids["platform"]): D("134.00"),
            vendor: D("113.91"),
        }
        assert owed_up["distri"] == {str(ids["platform"]): D("134.00"), vendor: D("113.91")}
        assert owed_up["platform"] == {vendor: D("113.91")}

        # each level's report: sold + received - owes = earned, and together the invoices' net
        def report(slug: str) -> dict[str, Any]:
            (row,) = revenue.marketplace_revenue(session, ids[slug], now=at)
            assert row["sold"] + row["received"] - row["owes"] == row["earned"]
            return row

        resel, distri, plat = report("resel"), report("distri"), report("platform")
        assert (resel["sold"], resel["received"], resel["owes"], resel["earned"]) == (
            D("181.04"),
            0,
            D("164.40"),
            D("16.64"),
        )
        assert (distri["sold"], distri["received"], distri["owes"], distri["earned"]) == (
            D("164.40"), D("164.40"), D("268.00"), D("60.80"),
        )  # fmt: skip
        assert (plat["sold"], plat["received"], plat["owes"], plat["earned"]) == (
            D("134.00"), D("268.00"), D("341.73"), D("60.27"),
        )  # fmt: skip
        (vendor_row,) = revenue.vendor_revenue(session, ids["platform"], [vendor_id], now=at)
        assert vendor_row["invoiced"] == sum(expected.values()) and vendor_row["earned"] == D("341.73")
        assert resel["earned"] + distri["earned"] + plat["earned"] + vendor_row["earned"] == sum(
            expected.values()
        )

        # the API tells a distributor's admin the same figures, in its own marketplace only
        admin = accounts.create_user(
            session, email="boss@distri.test", name="Boss", password="long-enough-pw"
        )
        accounts.grant(session, admin, session.get(Marketplace, ids["distri"]), Role.ADMIN)  # type: ignore[arg-type]
        _, token = accounts.create_token(
            session, admin, session.get(Marketplace, ids["distri"]), name="t", expires_at=None
        )  # type: ignore[arg-type]
        session.commit()
    answer = app.test_client().get(
        "/api/v1/marketplace/revenue",
        headers={"Authorization": f"Bearer {token}"},
        base_url="http://distri.test",
    )
    assert answer.status_code == 200, answer.json
    assert answer.json == [
        {"month": f"{at:%Y-%m}", "currency": "EUR", "sold": "164.4", "tax": answer.json[0]["tax"],
         "received": "164.4", "owes": "268", "earned": "60.8"}
    ]  # fmt: skip
