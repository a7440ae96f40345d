"""Subscriptions: plan and quantity changes, cancellation and reactivation with their
history, and the periodic jobs (trial reminders, conversion or expiry, roll-over) with a
controllable clock and two workers racing."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts.models import Organisation, Role, User
from cmw.catalog.models import BillingPeriod, ComponentKind, Plan
from cmw.catalog.pricing import ComponentSpec, PlanSpec
from cmw.events.models import OutboxEvent
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from cmw.orders import subscriptions
from cmw.orders.jobs import run_due
from cmw.orders.models import Subscription, SubscriptionChange, SubscriptionStatus
from tests import catalog_data
from tests.test_api_foundation import assert_problem
from tests.test_orders import order

Headers = Callable[..., dict[str, str]]
Factory = sessionmaker[Session]
T0 = dt.datetime(2026, 1, 31, 9, 0, tzinfo=dt.UTC)


def history(session: Session, subscription_id: Any) -> list[str]:
    return list(
        session.scalars(
            sa.select(SubscriptionChange.kind)
            .where(SubscriptionChange.subscription_id == subscription_id)
            .order_by(SubscriptionChange.id)
        )
    )


# ------------------------------------------------------------- API changes
def test_upgrade_at_once_downgrade_at_period_end(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
    db_session: Session,
) -> None:
    customer = token_for(make_user(Role.CUSTOMER))
    placed = order(client, customer).get_json()
    url = f"/api/v1/subscriptions/{placed['subscription_id']}"
    up = client.put(f"{url}/plan", json={"plan": "enterprise"}, headers=customer)
    assert up.status_code == 200, up.get_data(as_text=True)
    body = up.get_json()
    enterprise = body["plan_id"]
    assert (
        body["history"][-1]["kind"] == "plan_changed" and body["history"][-1]["after"]["effective"] == "now"
    )
    down = client.put(f"{url}/plan", json={"plan": "team"}, headers=customer).get_json()
    assert down["plan_id"] == enterprise, "a downgrade waits for the end of the period"
    assert down["history"][-1]["after"]["effective"] == "period_end"
    topics = db_session.scalars(
        sa.select(OutboxEvent.topic).where(OutboxEvent.topic == "subscription.changed")
    ).all()
    assert len(topics) == 2
    assert_problem(
        client.put(f"{url}/plan", json={"plan": "gold"}, headers=customer), 422, "validation-error"
    )


def test_quantity_cancel_and_reactivate(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, shop: dict[str, Any]
) -> None:
    customer = token_for(make_user(Role.CUSTOMER))
    url = f"/api/v1/subscriptions/{order(client, customer).get_json()['subscription_id']}"
    too_few = client.put(f"{url}/quantity", json={"quantity": 3}, headers=customer)
    assert "at least 5" in assert_problem(too_few, 422, "validation-error")["detail"]
    assert client.put(f"{url}/quantity", json={"quantity": 12}, headers=customer).get_json()["quantity"] == 12
    assert_problem(client.post(f"{url}/reactivate", headers=customer), 409, "invalid-transition")
    scheduled = client.post(f"{url}/cancel", json={}, headers=customer).get_json()
    assert scheduled["cancel_at_period_end"] is True and scheduled["status"] == "active"
    assert_problem(client.post(f"{url}/cancel", json={"at_once": True}, headers=customer), 403, "forbidden")
    kept = client.post(f"{url}/reactivate", headers=customer).get_json()
    assert kept["cancel_at_period_end"] is False
    kinds = [h["kind"] for h in kept["history"]]
    assert kinds == ["activated", "quantity_changed", "cancel_scheduled", "reactivated"]
    admin = token_for(shop["admin"])
    ended = client.post(f"{url}/cancel", json={"at_once": True}, headers=admin).get_json()
    assert ended["status"] == "cancelled"
    assert_problem(
        client.put(f"{url}/quantity", json={"quantity": 6}, headers=customer), 409, "invalid-transition"
    )


def test_vendors_and_other_customers_cannot_change_it(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, shop: dict[str, Any]
) -> None:
    placed = order(client, token_for(make_user(Role.CUSTOMER))).get_json()
    url = f"/api/v1/subscriptions/{placed['subscription_id']}/cancel"
    assert_problem(client.post(url, json={}, headers=token_for(shop["vendor"])), 403, "forbidden")
    assert_problem(client.post(url, json={}, headers=token_for(make_user(Role.CUSTOMER))), 404, "not-found")


# -------------------------------------------------------------- periodic jobs
def _world(factory: Factory, *, trial_days: int = 14) -> None:
    """A published product with a 10 and a 5 EUR monthly plan (committed)."""
    fee = (ComponentSpec(kind=ComponentKind.FLAT, label="Fee", unit_price=Decimal("10")),)
    cheap = (ComponentSpec(kind=ComponentKind.FLAT, label="Fee", unit_price=Decimal("5")),)
    with factory() as session:
        catalog_data.publish_product(
            session,
            "jobbed",
            [
                PlanSpec(
                    code="monthly",
                    name="M",
                    currency="EUR",
                    billing_period=BillingPeriod.MONTH,
                    components=fee,
                ),
                PlanSpec(
                    code="cheap",
                    name="C",
                    currency="EUR",
                    billing_period=BillingPeriod.MONTH,
                    components=cheap,
                ),
            ],
            trial_days=trial_days,
        )
        session.commit()


def _customer(factory: Factory, n: int, *, paying: bool = False) -> tuple[Any, Any]:
    with factory() as session:
        user, org = catalog_data.add_customer(session, f"j-{n}@example.test", paying=paying)
        session.commit()
        return user.id, org.id


def _subscribe(
    factory: Factory, user_id: Any, org_id: Any, *, trial: bool = False, at: dt.datetime = T0
) -> Any:
    with factory() as session:
        placed = orders.place_order(
            session, platform(session), session.get(User, user_id), session.get(Organisation, org_id),  # type: ignore[arg-type]
            orders.OrderRequest(product="jobbed", plan="monthly", trial=trial), now=at,
        )  # fmt: skip
        session.commit()
        return placed.subscription_id


def test_trial_reminder_then_expiry_without_a_payment_method(committed_db: Factory) -> None:
    _world(committed_db)
    sub = _subscribe(committed_db, *_customer(committed_db, 1), trial=True)
    assert run_due(committed_db, T0 + dt.timedelta(days=5)) == {
        "trial_reminders": 0,
        "trials_ended": 0,
        "periods_rolled": 0,
    }
    assert run_due(committed_db, T0 + dt.timedelta(days=11, hours=1))["trial_reminders"] == 1
    assert run_due(committed_db, T0 + dt.timedelta(days=12))["trial_reminders"] == 0, "told once"
    assert run_due(committed_db, T0 + dt.timedelta(days=14, seconds=1))["trials_ended"] == 1
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None and subscription.status is SubscriptionStatus.EXPIRED
        assert history(session, sub) == ["trial_started", "trial_reminder", "expired"]
        topics = set(session.scalars(sa.select(OutboxEvent.topic)))
        assert {"subscription.trial_ending", "subscription.expired"} <= topics


def test_a_trial_converts_when_a_payment_method_is_on_file(committed_db: Factory) -> None:
    _world(committed_db)
    sub = _subscribe(committed_db, *_customer(committed_db, 2, paying=True), trial=True)
    run_due(committed_db, T0 + dt.timedelta(days=20))
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None and subscription.status is SubscriptionStatus.ACTIVE
        trial_end = T0 + dt.timedelta(days=14)
        assert subscription.current_period_start == trial_end
        assert subscription.current_period_end == orders.add_months(trial_end, 1)
        # The worker first ran after the trial ended: no late reminder, straight to paid.
        assert history(session, sub) == ["trial_started", "converted"]


def test_roll_over_catches_up_keeps_the_anchor_and_applies_the_downgrade(committed_db: Factory) -> None:
    _world(committed_db)
    user_id, org_id = _customer(committed_db, 3)
    sub = _subscribe(committed_db, user_id, org_id)
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None
        cheap = session.scalar(sa.select(Plan).where(Plan.code == "cheap"))
        assert cheap is not None
        assert subscriptions.change_plan(session, subscription, cheap, user_id, now=T0) == "period_end"
        session.commit()
    # The worker was down from February to mid-April: the periods ending on 28 February
    # and 31 March both roll over, and the anchor day (the 31st) comes back in March.
    counts = run_due(committed_db, dt.datetime(2026, 4, 15, tzinfo=dt.UTC))
    assert counts["periods_rolled"] == 1
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert (
            subscription is not None
            and subscription.plan_id == cheap.id
            and subscription.pending_plan_id is None
        )
        assert subscription.current_period_start == dt.datetime(2026, 3, 31, 9, tzinfo=dt.UTC)
        assert subscription.current_period_end == dt.datetime(2026, 4, 30, 9, tzinfo=dt.UTC)
        assert history(session, sub) == [
            "activated",
            "plan_changed",
            "plan_changed",
            "renewed",
            "renewed",
        ]


def test_cancellation_at_period_end(committed_db: Factory) -> None:
    _world(committed_db)
    user_id, org_id = _customer(committed_db, 4)
    sub = _subscribe(committed_db, user_id, org_id)
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None
        subscriptions.cancel(session, subscription, user_id, at_once=False, now=T0)
        session.commit()
    assert run_due(committed_db, T0 + dt.timedelta(days=10))["periods_rolled"] == 0
    assert run_due(committed_db, dt.datetime(2026, 3, 1, tzinfo=dt.UTC))["periods_rolled"] == 1
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None and subscription.status is SubscriptionStatus.CANCELLED
        assert subscription.cancelled_at == dt.datetime(2026, 2, 28, 9, tzinfo=dt.UTC)


def test_two_workers_racing_handle_each_due_item_once(committed_db: Factory) -> None:
    _world(committed_db)
    subs = [_subscribe(committed_db, *_customer(committed_db, 100 + n)) for n in range(30)]
    now = dt.datetime(2026, 2, 28, 10, tzinfo=dt.UTC)
    results: list[dict[str, int]] = []
    barrier = threading.Barrier(2)

    def worker() -> None:
        barrier.wait(timeout=30)
        results.append(run_due(committed_db, now))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r["periods_rolled"] for r in results) == 30
    with committed_db() as session:
        renewed = session.scalar(
            sa.select(sa.func.count())
            .select_from(SubscriptionChange)
            .where(SubscriptionChange.kind == "renewed", SubscriptionChange.subscription_id.in_(subs))
        )
        assert renewed == 30


def test_a_trial_cancelled_during_the_trial_ends_with_it_even_with_a_payment_method(
    committed_db: Factory,
) -> None:
    _world(committed_db)
    user_id, org_id = _customer(committed_db, 5, paying=True)
    sub = _subscribe(committed_db, user_id, org_id, trial=True)
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None
        subscriptions.cancel(session, subscription, user_id, at_once=False, now=T0 + dt.timedelta(days=2))
        session.commit()
    run_due(committed_db, T0 + dt.timedelta(days=15))
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None and subscription.status is SubscriptionStatus.CANCELLED
        assert subscription.cancelled_at == T0 + dt.timedelta(days=14)
        assert history(session, sub) == ["trial_started", "cancel_scheduled", "cancelled"]


def test_a_downgrade_during_the_trial_applies_when_it_converts(committed_db: Factory) -> None:
    _world(committed_db)
    user_id, org_id = _customer(committed_db, 6, paying=True)
    sub = _subscribe(committed_db, user_id, org_id, trial=True)
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        cheap = session.scalar(sa.select(Plan).where(Plan.code == "cheap"))
        assert subscription is not None and cheap is not None
        assert subscriptions.change_plan(session, subscription, cheap, user_id, now=T0) == "period_end"
        session.commit()
    run_due(committed_db, T0 + dt.timedelta(days=15))
    with committed_db() as session:
        subscription = session.get(Subscription, sub)
        assert subscription is not None and subscription.status is SubscriptionStatus.ACTIVE
        assert subscription.plan_id == cheap.id and subscription.pending_plan_id is None
