"""Changing a subscription: plan (upgrades at once, downgrades at the period's end),
quantity, cancellation (at period end, or at once by an admin) and reactivation. Every
change is a history row and an event; billing prorates from the history."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.catalog.models import BillingPeriod, ComponentKind, Plan, Product
from cmw.crypto import sealer
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.orders.models import Subscription, SubscriptionChange, SubscriptionStatus
from cmw.orders.pricing import QuantityError, check_quantity
from cmw.orders.service import record
from deployer.models import Deployment

LIVE = (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


class ChangeError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def monthly_price(plan: Plan, quantity: int) -> Decimal:
    """Recurring price a month, to tell an upgrade from a downgrade."""
    total = Decimal(0)
    for c in plan.components:
        if c.kind is ComponentKind.FLAT:
            total += c.unit_price or 0
        elif c.kind is ComponentKind.PER_UNIT:
            total += (c.unit_price or 0) * quantity
    return total / 12 if plan.billing_period is BillingPeriod.YEAR else total


def quantity_on(plan: Plan, quantity: int) -> int:
    """The quantity a subscription has on ``plan``: 1 where the plan sells no units,
    otherwise the current quantity raised to the plan's minimum."""
    minimums = [c.min_quantity or 1 for c in plan.components if c.kind is ComponentKind.PER_UNIT]
    return max(quantity, *minimums) if minimums else 1


def _live(subscription: Subscription) -> None:
    if subscription.status not in LIVE:
        raise ChangeError("status", f"a {subscription.status.value} subscription cannot change")


def _event(session: Session, subscription: Subscription, topic: str, **extra: object) -> None:
    emit(
        session,
        topic,
        {"subscription_id": str(subscription.id), "customer_id": str(subscription.customer_id), **extra},
        marketplace_id=subscription.marketplace_id,
    )


def change_plan(
    session: Session,
    subscription: Subscription,
    plan: Plan,
    actor_id: uuid.UUID | None,
    now: dt.datetime | None = None,
) -> str:
    """Returns ``"now"`` for an upgrade (applied at once), ``"on_resize"`` for an upgrade to
    a plan with another machine (applied when the VM has been resized, and billed from
    then), or ``"period_end"`` for a downgrade (its machine resized then)."""
    _live(subscription)
    now = now or utcnow()
    current = session.get(Plan, subscription.plan_id)
    product = session.get(Product, subscription.product_id)
    assert current is not None and product is not None
    if plan.id == current.id:
        raise ChangeError("plan", "this is already the subscription's plan")
    if plan.version_id != product.live_version_id:
        raise ChangeError("plan", "choose a plan the product sells now")
    if plan.currency != current.currency:
        raise ChangeError(
            "plan", f"the new plan is in {plan.currency}, the subscription in {current.currency}"
        )
    quantity = quantity_on(plan, subscription.quantity)
    try:
        check_quantity(plan, quantity)
    except QuantityError as exc:
        raise ChangeError("quantity", str(exc)) from None
    upgrade = monthly_price(plan, quantity) >= monthly_price(current, subscription.quantity)
    machine = _machine_change(session, subscription, plan)
    if machine is not None and upgrade:
        from deployer import resize

        resize.request(session, machine, plan, actor_id, apply_plan=True)
        _event(session, subscription, "subscription.changed", change="plan", effective="on_resize")
        return "on_resize"
    if upgrade:
        _move_to(session, subscription, plan, actor_id, now)
        return "now"
    before = _plan_state(subscription)
    subscription.pending_plan_id = plan.id
    session.flush()
    after = {**_plan_state(subscription), "effective": "period_end"}
    record(session, subscription, "plan_changed", actor_id, before, after, now)
    _event(session, subscription, "subscription.changed", change="plan", effective="period_end")
    return "period_end"


def _plan_state(subscription: Subscription) -> dict[str, object]:
    """The subscription's plan, quantity and scheduled plan, as its history records them."""
    return {
        "plan_id": str(subscription.plan_id),
        "quantity": subscription.quantity,
        "pending_plan_id": str(subscription.pending_plan_id) if subscription.pending_plan_id else None,
    }


def _move_to(
    session: Session,
    subscription: Subscription,
    plan: Plan,
    actor_id: uuid.UUID | None,
    now: dt.datetime,
    **extra: object,
) -> None:
    """The subscription is on ``plan`` from ``now`` (billing prorates from then)."""
    before = _plan_state(subscription)
    subscription.plan_id, subscription.pending_plan_id = plan.id, None
    subscription.quantity = quantity_on(plan, subscription.quantity)
    session.flush()
    record(
        session,
        subscription,
        "plan_changed",
        actor_id,
        before,
        {**_plan_state(subscription), "effective": "now"},
        now,
    )
    _event(session, subscription, "subscription.changed", change="plan", effective="now", **extra)


def _machine_change(session: Session, subscription: Subscription, plan: Plan) -> Deployment | None:
    """The subscription's machine if ``plan`` gives it another size or a bigger disk, after
    checking its cloud offers one (``ChangeError`` otherwise: nothing is changed)."""
    from deployer import resize

    deployment = resize.live_deployment(session, subscription.id)
    if deployment is None or not resize.differs(deployment, plan):
        return None
    try:
        resize.check(session, sealer(), deployment, plan)
    except resize.ResizeError as exc:
        raise ChangeError("plan", str(exc)) from None
    return deployment


def apply_resized_plan(
    session: Session,
    subscription_id: uuid.UUID,
    plan_id: uuid.UUID,
    actor_id: uuid.UUID | None,
    now: dt.datetime,
) -> None:
    """An upgrade whose machine has just been resized takes effect now (billing prorates
    from this moment); nothing happens to a subscription that has ended meanwhile."""
    subscription = session.get(Subscription, subscription_id, with_for_update=True)
    plan = session.get(Plan, plan_id)
    if (
        subscription is None
        or plan is None
        or subscription.status not in LIVE
        or subscription.plan_id == plan.id
    ):
        return
    _move_to(session, subscription, plan, actor_id, now, resized=True)


def change_quantity(
    session: Session,
    subscription: Subscription,
    quantity: int,
    actor_id: uuid.UUID | None,
    now: dt.datetime | None = None,
) -> None:
    _live(subscription)
    plan = session.get(Plan, subscription.plan_id)
    assert plan is not None
    try:
        check_quantity(plan, quantity)
    except QuantityError as exc:
        raise ChangeError("quantity", str(exc)) from None
    if quantity == subscription.quantity:
        return
    before = {"quantity": subscription.quantity}
    subscription.quantity = quantity
    session.flush()
    record(session, subscription, "quantity_changed", actor_id, before, {"quantity": quantity}, now)
    _event(session, subscription, "subscription.changed", change="quantity")


def cancel(
    session: Session,
    subscription: Subscription,
    actor_id: uuid.UUID | None,
    *,
    at_once: bool,
    now: dt.datetime | None = None,
) -> None:
    """At the period's end (the customer), or at once (an admin)."""
    _live(subscription)
    now = now or utcnow()
    if at_once:
        before = {"status": subscription.status.value}
        subscription.status, subscription.cancelled_at = SubscriptionStatus.CANCELLED, now
        subscription.cancel_at_period_end = False
        session.flush()
        record(session, subscription, "cancelled", actor_id, before, {"status": "cancelled"}, now)
        _event(session, subscription, "subscription.cancelled", effective="now")
        return
    if subscription.cancel_at_period_end:
        return
    subscription.cancel_at_period_end = True
    session.flush()
    record(
        session, subscription, "cancel_scheduled", actor_id, {"cancel_at_period_end": False},
        {"cancel_at_period_end": True, "at": subscription.current_period_end.isoformat()}, now,
    )  # fmt: skip
    _event(session, subscription, "subscription.changed", change="cancel_scheduled")


def reactivate(
    session: Session, subscription: Subscription, actor_id: uuid.UUID | None, now: dt.datetime | None = None
) -> None:
    """Undo a scheduled cancellation before the period ends."""
    _live(subscription)
    now = now or utcnow()
    if not subscription.cancel_at_period_end:
        raise ChangeError("status", "the subscription is not scheduled to end")
    if now >= subscription.current_period_end:
        raise ChangeError("status", "the period has ended")
    subscription.cancel_at_period_end = False
    session.flush()
    record(
        session,
        subscription,
        "reactivated",
        actor_id,
        {"cancel_at_period_end": True},
        {"cancel_at_period_end": False},
        now,
    )
    _event(session, subscription, "subscription.changed", change="reactivated")


def changes(session: Session, subscription_id: uuid.UUID) -> list[SubscriptionChange]:
    """The subscription's history of changes, oldest first."""
    return list(
        session.scalars(
            sa.select(SubscriptionChange)
            .where(SubscriptionChange.subscription_id == subscription_id)
            .order_by(SubscriptionChange.id)
        )
    )


def plans_to_change_to(session: Session, subscription: Subscription) -> list[Plan]:
    """The plans the product sells now in the subscription's currency, its own excepted."""
    product = session.get(Product, subscription.product_id)
    current = session.get(Plan, subscription.plan_id)
    if product is None or current is None or product.live_version_id is None:
        return []
    return list(
        session.scalars(
            sa.select(Plan)
            .where(
                Plan.version_id == product.live_version_id,
                Plan.currency == current.currency,
                Plan.id != current.id,
            )
            .order_by(Plan.position)
        )
    )


def mark_past_due(session: Session, subscription: Subscription, reason: str, now: dt.datetime) -> bool:
    """An invoice of an active subscription is overdue; False if it was not active."""
    if subscription.status is not SubscriptionStatus.ACTIVE:
        return False
    subscription.status = SubscriptionStatus.PAST_DUE
    session.flush()
    record(
        session,
        subscription,
        "past_due",
        None,
        {"status": "active"},
        {"status": "past_due", "reason": reason},
        now,
    )
    _event(session, subscription, "subscription.past_due", reason=reason)
    return True


def mark_paid_up(session: Session, subscription: Subscription, now: dt.datetime) -> bool:
    """What was overdue is paid: a past-due subscription is active again."""
    if subscription.status is not SubscriptionStatus.PAST_DUE:
        return False
    subscription.status = SubscriptionStatus.ACTIVE
    session.flush()
    record(session, subscription, "paid_up", None, {"status": "past_due"}, {"status": "active"}, now)
    _event(session, subscription, "subscription.changed", change="paid_up")
    if subscription.suspended_at is not None:
        # its machine was stopped for the unpaid invoice: it runs again
        record(
            session,
            subscription,
            "resumed",
            None,
            {"suspended_at": subscription.suspended_at.isoformat()},
            {"suspended_at": None},
            now,
        )
        subscription.suspended_at = None
        _event(session, subscription, "subscription.resumed")
    return True


def suspend(session: Session, subscription: Subscription, reason: str, now: dt.datetime) -> bool:
    """A past-due subscription's invoice is still unpaid: its machine is stopped (kept, with
    its data) until the invoice is paid. False if it was not past due or is suspended already."""
    if subscription.status is not SubscriptionStatus.PAST_DUE or subscription.suspended_at is not None:
        return False
    subscription.suspended_at = now
    session.flush()
    record(session, subscription, "suspended", None, {"suspended_at": None}, {"reason": reason}, now)
    _event(session, subscription, "subscription.suspended", reason=reason)
    return True
