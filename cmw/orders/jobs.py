"""Periodic subscription jobs: trial reminders, trial end (convert or expire), period
roll-over (renew, apply a scheduled downgrade, or end a scheduled cancellation).

Each due subscription is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` and handled
in its own transaction, so two workers never act on the same one, and a step that ends
leaves the row no longer due: a job runs at most once per due item. Everything due at
``now`` is handled, however late, so the jobs catch up after downtime.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.accounts.models import Organisation
from cmw.catalog.models import Plan
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.orders.models import Subscription, SubscriptionStatus
from cmw.orders.service import next_period_end, period_end, record
from cmw.orders.subscriptions import quantity_on

log = logging.getLogger(__name__)

TRIAL_REMINDER_BEFORE = dt.timedelta(days=3)
Step = Callable[[Session, Subscription, dt.datetime], None]


def run_due(session_factory: Callable[[], Session], now: dt.datetime | None = None) -> dict[str, int]:
    """Run every job for what is due at ``now``; returns how many items each handled."""
    now = now or utcnow()
    return {
        "trial_reminders": _each(
            session_factory,
            sa.and_(
                Subscription.status == SubscriptionStatus.TRIALING,
                Subscription.trial_reminder_sent_at.is_(None),
                # Nobody is asked to add a payment method for a trial they cancelled.
                Subscription.cancel_at_period_end.is_(False),
                Subscription.trial_end <= now + TRIAL_REMINDER_BEFORE,
                Subscription.trial_end > now,
            ),
            _remind,
            now,
        ),
        "trials_ended": _each(
            session_factory,
            sa.and_(Subscription.status == SubscriptionStatus.TRIALING, Subscription.trial_end <= now),
            _end_trial,
            now,
        ),
        "periods_rolled": _each(
            session_factory,
            sa.and_(
                Subscription.status.in_([SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE]),
                Subscription.current_period_end <= now,
            ),
            _roll,
            now,
        ),
    }


def _each(
    session_factory: Callable[[], Session], due: sa.ColumnElement[bool], step: Step, now: dt.datetime
) -> int:
    handled = 0
    failed: set[uuid.UUID] = set()
    while True:
        with session_factory() as session:
            stmt = sa.select(Subscription).where(due)
            if failed:
                stmt = stmt.where(Subscription.id.not_in(failed))
            subscription = session.scalar(
                stmt.order_by(Subscription.current_period_end).limit(1).with_for_update(skip_locked=True)
            )
            if subscription is None:
                return handled
            try:
                step(session, subscription, now)
                session.commit()
                handled += 1
            except Exception:
                # Logged and left for the next run; the loop moves on to the others.
                log.exception("subscription job %s failed for %s", step.__name__, subscription.id)
                session.rollback()
                failed.add(subscription.id)


def _emit(session: Session, subscription: Subscription, topic: str, **extra: Any) -> None:
    emit(
        session,
        topic,
        {"subscription_id": str(subscription.id), "customer_id": str(subscription.customer_id), **extra},
        marketplace_id=subscription.marketplace_id,
    )


def _remind(session: Session, subscription: Subscription, now: dt.datetime) -> None:
    subscription.trial_reminder_sent_at = now
    assert subscription.trial_end is not None
    days_left = max(0, (subscription.trial_end - now).days)
    record(session, subscription, "trial_reminder", None, {}, {"days_left": days_left}, now)
    _emit(
        session,
        subscription,
        "subscription.trial_ending",
        trial_end=subscription.trial_end.isoformat(),
        days_left=days_left,
    )


def _end_trial(session: Session, subscription: Subscription, now: dt.datetime) -> None:
    customer = session.get(Organisation, subscription.customer_id)
    assert customer is not None and subscription.trial_end is not None
    if subscription.cancel_at_period_end:
        # Cancelled during the trial: it ends with the trial, nothing is charged.
        subscription.status, subscription.cancelled_at = SubscriptionStatus.CANCELLED, subscription.trial_end
        subscription.cancel_at_period_end = False
        session.flush()
        record(session, subscription, "cancelled", None, {"status": "trialing"}, {"status": "cancelled"}, now)
        _emit(session, subscription, "subscription.cancelled", effective=subscription.trial_end.isoformat())
        return
    if customer.has_payment_method:
        _apply_pending_plan(session, subscription, subscription.trial_end, now)
        plan = session.get(Plan, subscription.plan_id)
        assert plan is not None
        start = subscription.trial_end
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.billing_anchor = start
        subscription.current_period_start = start
        subscription.current_period_end = period_end(start, plan.billing_period)
        session.flush()
        record(session, subscription, "converted", None, {"status": "trialing"}, {"status": "active"}, now)
        _emit(session, subscription, "subscription.activated", converted_from_trial=True)
        return
    subscription.status = SubscriptionStatus.EXPIRED
    session.flush()
    record(session, subscription, "expired", None, {"status": "trialing"}, {"status": "expired"}, now)
    _emit(session, subscription, "subscription.expired", reason="trial ended without a payment method")


def _apply_pending_plan(
    session: Session, subscription: Subscription, at: dt.datetime, now: dt.datetime
) -> None:
    """A downgrade scheduled for the end of the period takes effect."""
    if subscription.pending_plan_id is None:
        return
    before = {"plan_id": str(subscription.plan_id), "quantity": subscription.quantity}
    subscription.plan_id, subscription.pending_plan_id = subscription.pending_plan_id, None
    pending = session.get(Plan, subscription.plan_id)
    assert pending is not None
    subscription.quantity = quantity_on(pending, subscription.quantity)
    after = {
        "plan_id": str(subscription.plan_id),
        "quantity": subscription.quantity,
        "effective": at.isoformat(),
    }
    record(session, subscription, "plan_changed", None, before, after, now)
    from deployer import resize

    machine = resize.live_deployment(session, subscription.id)
    if machine is not None and resize.differs(machine, pending) and machine.resize_to is None:
        resize.request(session, machine, pending, None, apply_plan=False)


def _roll(session: Session, subscription: Subscription, now: dt.datetime) -> None:
    ended_at = subscription.current_period_end
    if subscription.cancel_at_period_end:
        before = {"status": subscription.status.value}
        subscription.status, subscription.cancelled_at = SubscriptionStatus.CANCELLED, ended_at
        subscription.cancel_at_period_end = False
        session.flush()
        record(
            session,
            subscription,
            "cancelled",
            None,
            before,
            {"status": "cancelled", "at": ended_at.isoformat()},
            now,
        )
        _emit(session, subscription, "subscription.cancelled", effective=ended_at.isoformat())
        return
    _apply_pending_plan(session, subscription, ended_at, now)
    plan = session.get(Plan, subscription.plan_id)
    assert plan is not None
    # Catch up every period that ended while nobody looked, each recorded for billing.
    while subscription.current_period_end <= now:
        start = subscription.current_period_end
        end = next_period_end(subscription.billing_anchor, start, plan.billing_period)
        subscription.current_period_start, subscription.current_period_end = start, end
        session.flush()
        record(
            session,
            subscription,
            "renewed",
            None,
            {},
            {"period_start": start.isoformat(), "period_end": end.isoformat()},
            now,
        )
        _emit(
            session,
            subscription,
            "subscription.renewed",
            period_start=start.isoformat(),
            period_end=end.isoformat(),
        )
