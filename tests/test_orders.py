"""Orders: placing them (price breakdown, trials, bad input), idempotency including 20
concurrent requests on PostgreSQL, who sees what, and the subscription they create."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Organisation, Role, User
from cmw.audit.models import AuditEntry
from cmw.catalog.models import Product
from cmw.events.models import OutboxEvent
from cmw.marketplaces.models import Marketplace
from cmw.marketplaces.service import platform
from cmw.orders.models import Order, Subscription, SubscriptionChange
from cmw.orders.service import OrderRequest, add_months, place_order
from tests import catalog_data
from tests.catalog_data import create, publish
from tests.helpers import index_plan
from tests.test_api_foundation import assert_problem
from tests.test_pricing import FLAT, _plan

Headers = Callable[..., dict[str, str]]
UTC = dt.UTC


def order(client: FlaskClient, headers: dict[str, str], **body: Any) -> Any:
    payload = {"product": "wiki-server", "plan": "team", "quantity": 5, **body}
    return client.post("/api/v1/orders", json=payload, headers=headers)


def test_an_order_confirms_with_its_breakdown_and_starts_a_subscription(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
    db_session: Session,
) -> None:
    customer = make_user(Role.CUSTOMER)
    response = order(client, token_for(customer), quantity=6)
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "confirmed" and body["kind"] == "purchase"
    b = body["breakdown"]
    # Flat 49 + 6 seats x 4.50 = 76 a month; setup 99 once; 175 due now.
    assert (b["period_total"], b["setup_total"], b["due_now"], b["currency"]) == ("76", "99", "175", "EUR")
    kinds = [line["kind"] for line in b["lines"]]
    assert kinds == ["flat", "setup", "per_unit", "metered", "metered"]
    assert b["lines"][3]["amount"] is None and b["lines"][3]["when"] == "on usage"
    assert b["lines"][3]["tiers"][1] == {"from": "1000", "up_to": None, "unit_price": "0.05", "flat_fee": "0"}

    subscription = db_session.get(Subscription, body["subscription_id"])
    assert subscription is not None and subscription.status.value == "active" and subscription.quantity == 6
    assert subscription.current_period_end == add_months(subscription.current_period_start, 1)
    history = db_session.scalars(
        sa.select(SubscriptionChange.kind).where(SubscriptionChange.subscription_id == subscription.id)
    ).all()
    assert history == ["activated"]
    topics = db_session.scalars(
        sa.select(OutboxEvent.topic).where(OutboxEvent.topic.in_(["order.placed", "subscription.activated"]))
    ).all()
    assert sorted(topics) == ["order.placed", "subscription.activated"]


def test_one_trial_per_organisation_and_product(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
    db_session: Session,
) -> None:
    customer = make_user(Role.CUSTOMER)
    headers = token_for(customer)
    trial = order(client, headers, trial=True)
    assert trial.status_code == 201
    assert trial.get_json()["kind"] == "trial" and trial.get_json()["breakdown"]["due_now"] == "0"
    subscription = db_session.get(Subscription, trial.get_json()["subscription_id"])
    assert subscription is not None and subscription.status.value == "trialing"
    assert subscription.trial_end == subscription.current_period_start + dt.timedelta(days=14)
    again = order(client, headers, trial=True)
    assert "already had its trial" in assert_problem(again, 422, "validation-error")["errors"][0]["message"]
    # A colleague in the same organisation cannot start another one either.
    colleague = make_user(Role.CUSTOMER, organisation=customer.memberships[0].organisation)
    assert_problem(order(client, token_for(colleague), trial=True), 422, "validation-error")


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"product": "nothing-here"}, "product", "not a published product"),
        ({"plan": "platinum"}, "plan", "choose one of: team, enterprise"),
        ({"quantity": 2}, "quantity", "at least 5"),
        ({"plan": "enterprise", "quantity": 3}, "quantity", "quantity of 1"),
        ({"cloud_account": "gcp-us"}, "cloud_account", "aws-eu/eu-west-1"),
        ({"quantity": 0}, "quantity", ""),
    ],
)
def test_bad_orders_are_422_with_the_reason(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
    db_session: Session,
    body: dict[str, Any],
    field: str,
    message: str,
) -> None:
    response = order(client, token_for(make_user(Role.CUSTOMER)), **body)
    errors = assert_problem(response, 422, "validation-error")["errors"]
    assert errors[0]["field"] == field and message in errors[0]["message"]
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Order)) == 0


def test_a_draft_product_and_a_product_without_trial_cannot_be_ordered(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, shop: dict[str, Any]
) -> None:
    vh = token_for(shop["vendor"])
    create(client, vh, slug="drafty")
    customer = token_for(make_user(Role.CUSTOMER))
    assert_problem(order(client, customer, product="drafty"), 422, "validation-error")
    no_trial = publish(client, vh, token_for(shop["admin"]), slug="no-trial", trial_days=0)
    response = order(client, customer, product=no_trial["slug"], trial=True)
    assert (
        assert_problem(response, 422, "validation-error")["errors"][0]["message"]
        == "this product has no trial"
    )


def test_only_customers_order(client: FlaskClient, shop: dict[str, Any], token_for: Headers) -> None:
    assert_problem(order(client, token_for(shop["vendor"])), 403, "forbidden")
    assert_problem(order(client, {}), 401, "unauthenticated")


# --------------------------------------------------------------- idempotency
def test_the_same_key_and_body_answer_the_first_order(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
    db_session: Session,
) -> None:
    headers = {**token_for(make_user(Role.CUSTOMER)), "Idempotency-Key": "checkout-7f3a"}
    first, second = order(client, headers), order(client, headers)
    assert first.status_code == second.status_code == 201
    assert second.get_json()["id"] == first.get_json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Order)) == 1
    conflict = order(client, headers, quantity=7)
    assert "different request" in assert_problem(conflict, 409, "idempotency-key-reused")["detail"]
    # Keys belong to their user: someone else may use the same string.
    other = {**token_for(make_user(Role.CUSTOMER)), "Idempotency-Key": "checkout-7f3a"}
    assert order(client, other).get_json()["id"] != first.get_json()["id"]


def test_a_key_answers_its_order_even_once_the_product_can_no_longer_be_ordered(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
    db_session: Session,
) -> None:
    """A new key's order is placed without looking for an earlier one (the key's unique
    index guards it); a refused order still looks, so a retry is answered as before."""
    headers = {**token_for(make_user(Role.CUSTOMER)), "Idempotency-Key": "retry-after-retire"}
    first = order(client, headers)
    assert first.status_code == 201, first.get_data(as_text=True)
    retired = client.post(
        f"/api/v1/vendor/products/{shop['product']['id']}/retire", headers=token_for(shop["vendor"])
    )
    assert retired.status_code == 200, retired.get_data(as_text=True)

    again = order(client, headers)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    # the same key with another body that would be refused anyway is a reuse of the key
    reused = order(client, headers, quantity=2)
    assert "different request" in assert_problem(reused, 409, "idempotency-key-reused")["detail"]
    # a new key is refused with the reason, and nothing is written
    refused = order(client, {**headers, "Idempotency-Key": "after-retire"})
    assert "not a published product" in assert_problem(refused, 422, "validation-error")["detail"]
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Order)) == 1


def test_orders_see_the_plans_and_prices_as_they_are_now(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
) -> None:
    """Products are kept in memory for orders until the catalog changes: a new price is
    charged from the next order on, and a retired product is no longer sold."""
    customer, vendor = token_for(make_user(Role.CUSTOMER)), token_for(shop["vendor"])
    assert order(client, customer).get_json()["breakdown"]["period_total"] == "71.5"  # 49 + 5 x 4.50
    product_id = shop["product"]["id"]
    cheaper = catalog_data.plans()
    cheaper[0]["components"][0]["unit_price"] = "39.00"
    response = client.put(
        f"/api/v1/vendor/products/{product_id}/plans", json={"plans": cheaper}, headers=vendor
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert client.post(f"/api/v1/vendor/products/{product_id}/submit", headers=vendor).status_code == 200
    approved = client.post(f"/api/v1/admin/products/{product_id}/approve", headers=token_for(shop["admin"]))
    assert approved.status_code == 200, approved.get_data(as_text=True)
    assert order(client, customer).get_json()["breakdown"]["period_total"] == "61.5"
    assert client.post(f"/api/v1/vendor/products/{product_id}/retire", headers=vendor).status_code == 200
    assert_problem(order(client, customer), 422, "validation-error")


def test_an_order_in_a_transaction_that_changes_the_catalog_sees_that_change_alone(
    committed_db: sessionmaker[Session],
) -> None:
    """Products kept in memory for orders are never read from or into a transaction that
    changes the catalog itself: it sees its own prices, and no one else does."""
    with committed_db() as session:
        product = catalog_data.publish_product(session, "repriced", [_plan(FLAT)])
        buyer, org = catalog_data.add_customer(session, "repriced-buyer@example.test")
        session.commit()
        ids = product.id, buyer.id, org.id

    def place(session: Session) -> str:
        placed = place_order(
            session,
            platform(session),
            session.get_one(User, ids[1]),
            session.get_one(Organisation, ids[2]),
            OrderRequest(product="repriced", plan="basic"),
        )
        return str(placed.breakdown["period_total"])

    with committed_db() as session:
        assert place(session) == "10"  # kept in memory now
        session.rollback()
    with committed_db() as session:
        version = session.get_one(Product, ids[0]).live_version
        assert version is not None
        version.plans[0].components[0].unit_price = Decimal("12")  # not committed
        assert place(session) == "12"
        session.rollback()
    with committed_db() as session:
        assert place(session) == "10"
        session.rollback()


def test_twenty_concurrent_requests_with_one_key_create_one_order(
    app: Flask, committed_db: sessionmaker[Session]
) -> None:
    with committed_db() as session:
        catalog_data.publish_product(session, "racy", [_plan(FLAT)])
        buyer, _ = catalog_data.add_customer(session, "c-buyer@example.test")
        _, token = accounts.create_token(session, buyer, platform(session), name="t", expires_at=None)
        session.commit()

    barrier = threading.Barrier(20)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "one-click"}

    def place(_: int) -> tuple[int, str]:
        client = app.test_client()
        barrier.wait(timeout=30)
        response = client.post("/api/v1/orders", json={"product": "racy", "plan": "basic"}, headers=headers)
        return response.status_code, response.get_json().get("id", response.get_data(as_text=True))

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(place, range(20)))
    assert {status for status, _ in results} == {201}, results
    assert len({order_id for _, order_id in results}) == 1
    with committed_db() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Order)) == 1
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 1
        # every request has its audit entry, those whose first commit lost the race too
        placing = AuditEntry.action == "POST /api/v1/orders"
        requests = session.scalar(sa.select(sa.func.count()).select_from(AuditEntry).where(placing))
        assert requests == 20


# ---------------------------------------------------------------- visibility
def test_who_sees_which_orders_and_subscriptions(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
    make_marketplace: Callable[..., Marketplace],
) -> None:
    alice, bob = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    mine = order(client, token_for(alice)).get_json()
    theirs = order(client, token_for(bob)).get_json()
    alice_view = client.get("/api/v1/orders", headers=token_for(alice)).get_json()
    assert [o["id"] for o in alice_view["items"]] == [mine["id"]]
    assert_problem(client.get(f"/api/v1/orders/{theirs['id']}", headers=token_for(alice)), 404, "not-found")
    vendor_view = client.get("/api/v1/orders", headers=token_for(shop["vendor"])).get_json()
    assert {o["id"] for o in vendor_view["items"]} == {mine["id"], theirs["id"]}
    other_vendor = token_for(make_user(Role.VENDOR))
    assert client.get("/api/v1/orders", headers=other_vendor).get_json()["total"] == 0
    admin_view = client.get("/api/v1/subscriptions", headers=token_for(shop["admin"])).get_json()
    assert admin_view["total"] == 2
    detail = client.get(
        f"/api/v1/subscriptions/{mine['subscription_id']}", headers=token_for(alice)
    ).get_json()
    assert detail["history"][0]["kind"] == "activated" and detail["history"][0]["after"]["quantity"] == 5
    # Another marketplace's admin sees none of it.
    elsewhere = make_marketplace(slug="far-away")
    far_admin = token_for(make_user(Role.ADMIN, marketplace=elsewhere), elsewhere)
    far = client.get(f"/api/v1/orders/{mine['id']}", headers=far_admin, base_url="http://far-away.test")
    assert_problem(far, 404, "not-found")


def test_subscribers_may_review(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, shop: dict[str, Any]
) -> None:
    customer = token_for(make_user(Role.CUSTOMER))
    before = client.put("/api/v1/products/wiki-server/reviews/mine", json={"rating": 5}, headers=customer)
    assert_problem(before, 403, "not-a-subscriber")
    order(client, customer)
    after = client.put("/api/v1/products/wiki-server/reviews/mine", json={"rating": 5}, headers=customer)
    assert after.status_code == 200


@pytest.mark.parametrize(
    ("anchor", "months", "expected"),
    [
        (dt.datetime(2026, 1, 31, 12, tzinfo=UTC), 1, dt.datetime(2026, 2, 28, 12, tzinfo=UTC)),
        (dt.datetime(2028, 1, 31, tzinfo=UTC), 1, dt.datetime(2028, 2, 29, tzinfo=UTC)),
        (dt.datetime(2026, 11, 15, tzinfo=UTC), 2, dt.datetime(2027, 1, 15, tzinfo=UTC)),
        (dt.datetime(2026, 3, 31, tzinfo=UTC), 12, dt.datetime(2027, 3, 31, tzinfo=UTC)),
    ],
)
def test_periods_keep_the_anchor_day(anchor: dt.datetime, months: int, expected: dt.datetime) -> None:
    assert add_months(anchor, months) == expected


def test_vendors_see_their_customers(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, shop: dict[str, Any]
) -> None:
    alice, bob = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    order(client, token_for(alice))
    order(client, token_for(bob), trial=True)
    body = client.get("/api/v1/vendor/customers", headers=token_for(shop["vendor"])).get_json()
    assert body["total"] == 2
    assert {c["id"] for c in body["items"]} == {
        str(alice.memberships[0].organisation_id),
        str(bob.memberships[0].organisation_id),
    }
    assert all(c["subscriptions"] == 1 and c["active"] == 1 for c in body["items"])
    other_vendor = token_for(make_user(Role.VENDOR))
    assert client.get("/api/v1/vendor/customers", headers=other_vendor).get_json()["total"] == 0
    assert_problem(client.get("/api/v1/vendor/customers", headers=token_for(alice)), 403, "forbidden")


def test_orders_are_found_by_their_subscription_through_an_index(db_session: Session) -> None:
    """Who placed a subscription's order, and which order a finished deployment fulfils, are
    asked once or twice for every order: without an index each read every order."""
    lookup = sa.select(Order.placed_by_id).where(Order.subscription_id == uuid.uuid4())
    plan = index_plan(db_session, lookup)
    assert "ix_orders_subscription_id" in plan, plan
