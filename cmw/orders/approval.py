"""Orders that wait for approval. A product may require it: its new purchases and trials,
and the changes of plan or quantity its customers ask for, wait as ``awaiting_approval``
for the auditor, the product's vendor on the platform marketplace or the marketplace's
admins on a reseller's, who approves (the order proceeds as if just placed) or rejects it
with a reason. The auditor's own orders (a reseller ordering for its customer) need none.

Events: ``order.awaiting_approval`` (the auditor and the customer are told),
``order.approved`` and ``order.rejected`` (the customer is told). Functions flush, never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, joinedload

from cmw.accounts.models import Membership, Role
from cmw.catalog.models import Plan, Product, ProductVersion
from cmw.db import utcnow
from cmw.marketplaces import pricing
from cmw.marketplaces.models import Marketplace
from cmw.orders import subscriptions
from cmw.orders.models import Order, OrderKind, OrderStatus, Subscription, TrialGrant
from cmw.orders.pricing import breakdown
from cmw.orders.service import _target, confirm, may_decide, tell_approval

MAX_REASON = 1000


class ApprovalError(ValueError):
    """The decision or request cannot be taken; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _parties(session: Session, order: Order) -> tuple[Marketplace, Product]:
    marketplace = session.get(Marketplace, order.marketplace_id)
    product = session.get(Product, order.product_id)
    assert marketplace is not None and product is not None
    return marketplace, product


def can_decide(session: Session, order: Order, memberships: Iterable[Membership]) -> bool:
    """Whether someone with these grants in the order's marketplace is its auditor."""
    return may_decide(*_parties(session, order), memberships)


def queue(marketplace: Marketplace, memberships: Iterable[Membership]) -> sa.Select[tuple[Order]]:
    """The orders of ``marketplace`` waiting for this person's decision, oldest first."""
    stmt = sa.select(Order).where(
        Order.marketplace_id == marketplace.id, Order.status == OrderStatus.AWAITING_APPROVAL
    )
    grants = list(memberships)
    if marketplace.parent_id is None:
        vendors = {m.organisation_id for m in grants if m.role is Role.VENDOR}
        stmt = stmt.where(Order.product_id.in_(sa.select(Product.id).where(Product.vendor_id.in_(vendors))))
    elif not any(m.role is Role.ADMIN for m in grants):
        stmt = stmt.where(sa.false())
    return stmt.order_by(Order.created_at, Order.id)


def _waiting(session: Session, order_id: uuid.UUID) -> Order:
    """The order, locked; ApprovalError unless it still waits (two auditors cannot both decide)."""
    # populate_existing: the caller may have loaded the order before the lock; its status
    # must be read again once the lock is held, or two auditors could both decide
    order = session.scalar(
        sa.select(Order)
        .where(Order.id == order_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert order is not None
    if order.status is not OrderStatus.AWAITING_APPROVAL:
        raise ApprovalError("status", f"the order is not waiting for approval: it is {order.status.value}")
    return order


def approve(session: Session, order_id: uuid.UUID, actor_id: uuid.UUID) -> Order:
    """Let the order proceed: a purchase or trial starts its subscription and its machine, a
    change is applied to the subscription (as the customer asked it)."""
    order = _waiting(session, order_id)
    marketplace, product = _parties(session, order)
    now = utcnow()
    if order.kind is OrderKind.CHANGE:
        _apply_change(session, order)
        order.status, order.confirmed_at = OrderStatus.FULFILLED, now
    else:
        live = session.get(ProductVersion, order.version_id)
        plan = session.get(Plan, order.plan_id)
        assert live is not None and plan is not None
        # the version the customer ordered never changes, so its target is still there
        target = _target(live, order.cloud_account, order.region)
        confirm(session, order, live, plan, target, product.vendor_id, now)
    order.decided_by_id, order.decided_at = actor_id, now
    tell_approval(session, "order.approved", marketplace, product, order)
    return order


def reject(session: Session, order_id: uuid.UUID, actor_id: uuid.UUID, reason: str) -> Order:
    """Refuse the order, saying why; the customer is told. A refused trial is not spent."""
    reason = reason.strip()
    if not reason:
        raise ApprovalError("reason", "say why the order is rejected: the customer reads it")
    if len(reason) > MAX_REASON:
        raise ApprovalError("reason", f"at most {MAX_REASON} characters")
    order = _waiting(session, order_id)
    marketplace, product = _parties(session, order)
    order.status, order.rejection_reason = OrderStatus.REJECTED, reason
    order.decided_by_id, order.decided_at = actor_id, utcnow()
    if order.kind is OrderKind.TRIAL:
        grant = session.get(TrialGrant, (order.customer_id, order.product_id))
        if grant is not None:
            session.delete(grant)
    tell_approval(session, "order.rejected", marketplace, product, order, reason=reason)
    return order


def _apply_change(session: Session, order: Order) -> None:
    """The change the order asks for, applied to its subscription as its customer's act."""
    assert order.subscription_id is not None
    subscription = session.scalar(
        sa.select(Subscription)
        .where(Subscription.id == order.subscription_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert subscription is not None
    try:
        if order.plan_id != subscription.plan_id:
            plan = session.get(Plan, order.plan_id)
            assert plan is not None
            subscriptions.change_plan(session, subscription, plan, order.placed_by_id)
        if order.quantity != subscription.quantity:
            subscriptions.change_quantity(session, subscription, order.quantity, order.placed_by_id)
    except subscriptions.ChangeError as exc:
        raise ApprovalError(exc.field, f"the change can no longer be made: {exc.message}") from None


def request_change(
    session: Session,
    subscription: Subscription,
    *,
    plan: Plan | None,
    quantity: int | None,
    user_id: uuid.UUID,
    memberships: Iterable[Membership],
) -> Order | None:
    """A change order waiting for approval, when the product requires it and the requester is
    not its auditor; None when the change may be made at once. The change is checked first
    (and undone), so only a change that could be made waits."""
    marketplace = session.get(Marketplace, subscription.marketplace_id)
    product = session.get(Product, subscription.product_id)
    assert marketplace is not None and product is not None
    live = session.get(
        ProductVersion,
        product.live_version_id,
        options=[joinedload(ProductVersion.plans).joinedload(Plan.components)],
    )
    if live is None or not live.requires_approval or may_decide(marketplace, product, memberships):
        return None
    waiting = session.scalar(
        sa.select(Order.id).where(
            Order.subscription_id == subscription.id, Order.status == OrderStatus.AWAITING_APPROVAL
        )
    )
    if waiting is not None:
        raise ApprovalError(
            "status", f"a change of this subscription already waits for approval (order {waiting})"
        )
    if plan is None and quantity == subscription.quantity:
        return None  # nothing changes: nothing to approve
    current = session.get(Plan, subscription.plan_id)
    assert current is not None
    target_plan = plan or current
    target_quantity = (
        quantity if quantity is not None else subscriptions.quantity_on(target_plan, subscription.quantity)
    )
    # the change as it would be made now, undone: what could not be made is refused here
    with session.begin_nested() as trial:
        try:
            if plan is not None:
                subscriptions.change_plan(session, subscription, plan, user_id)
            if quantity is not None:
                subscriptions.change_quantity(session, subscription, quantity, user_id)
        except subscriptions.ChangeError as exc:
            trial.rollback()
            raise ApprovalError(exc.field, exc.message) from None
        session.flush()  # so that the rollback takes its events and history away too
        trial.rollback()
    session.refresh(subscription)
    before: dict[str, Any] = {"plan_id": str(subscription.plan_id), "quantity": subscription.quantity}
    order = Order(
        id=uuid.uuid4(),
        marketplace_id=marketplace.id,
        customer_id=subscription.customer_id,
        placed_by_id=user_id,
        product_id=product.id,
        version_id=live.id,
        plan_id=target_plan.id,
        kind=OrderKind.CHANGE,
        status=OrderStatus.AWAITING_APPROVAL,
        quantity=target_quantity,
        cloud_account=subscription.cloud_account,
        region=subscription.region,
        currency=target_plan.currency,
        breakdown=breakdown(
            target_plan,
            target_quantity,
            specs=pricing.price_list(session, marketplace, product).specs(target_plan),
        ),
        subscription_id=subscription.id,
        change_from=before,
    )
    session.add(order)
    tell_approval(session, "order.awaiting_approval", marketplace, product, order, change_from=before)
    return order
