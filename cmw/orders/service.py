"""Placing orders and starting subscriptions. Functions flush, never commit.

An order for a published plan is confirmed at once (payment collection comes with
billing): it creates the subscription, records its history, and emits ``order.placed``
and ``subscription.activated`` or ``subscription.trial_started`` in the same transaction.
An order of a product that requires approval waits instead (``awaiting_approval``) until its
auditor approves it (:mod:`cmw.orders.approval`), unless the auditor placed it.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.accounts import keys
from cmw.accounts.models import Membership, Organisation, OrganisationKind, Role, User
from cmw.catalog import cache as catalog_cache
from cmw.catalog import service as catalog
from cmw.catalog.models import BillingPeriod, Plan, Product, ProductVersion
from cmw.db import utcnow
from cmw.events.service import emit, together
from cmw.marketplaces import pricing
from cmw.marketplaces.models import Marketplace
from cmw.monitoring import metrics
from cmw.orders.models import (
    Order,
    OrderKind,
    OrderStatus,
    Subscription,
    SubscriptionChange,
    SubscriptionStatus,
    TrialGrant,
)
from cmw.orders.pricing import QuantityError, breakdown, check_quantity
from deployer.models import CloudAccount


class OrderError(ValueError):
    """Invalid order; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""


@dataclasses.dataclass(frozen=True)
class OrderRequest:
    product: str
    plan: str
    quantity: int = 1
    trial: bool = False
    cloud_account: str | None = None
    region: str | None = None
    ssh_public_key: str | None = None
    #: values of the product's customer-editable setup variables, by name
    variables: dict[str, str] | None = None
    #: the customer's own cloud account to run it in (only the licence is charged)
    own_cloud_account: uuid.UUID | None = None


def add_months(anchor: dt.datetime, months: int) -> dt.datetime:
    """The same day ``months`` later, clamped to the month's last day (31 Jan + 1 = 28/29 Feb)."""
    month_index = anchor.month - 1 + months
    year, month = anchor.year + month_index // 12, month_index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_end(start: dt.datetime, period: BillingPeriod) -> dt.datetime:
    return add_months(start, 1 if period is BillingPeriod.MONTH else 12)


def next_period_end(anchor: dt.datetime, start: dt.datetime, period: BillingPeriod) -> dt.datetime:
    """The first anchor date after ``start``: periods count from the anchor, so a
    subscription anchored on the 31st ends on the 28th in February and the 31st again in
    March, instead of drifting to the 28th for ever."""
    step = 1 if period is BillingPeriod.MONTH else 12
    months = max(step, ((start.year - anchor.year) * 12 + start.month - anchor.month) // step * step)
    end = add_months(anchor, months)
    while end <= start:
        months += step
        end = add_months(anchor, months)
    return end


def replay(session: Session, user: User, key: str, request_hash: str) -> Order | None:
    """The order an earlier request with this key created, or None; a different request
    with the same key is an IdempotencyConflict."""
    existing = session.scalar(
        sa.select(Order).where(Order.placed_by_id == user.id, Order.idempotency_key == key)
    )
    if existing is None:
        return None
    if existing.request_hash != request_hash:
        raise IdempotencyConflict("this Idempotency-Key was used with a different request")
    return existing


def _product(session: Session, marketplace: Marketplace, ref: str) -> Product:
    """The published product with its plans and prices: a detached copy shared by the
    process's requests until the catalog changes, read and never changed or attached."""
    product = catalog_cache.orderable_product(
        session,
        marketplace,
        ref,
        lambda private: catalog.find_published(private, marketplace, ref, with_plans=True),
    )
    if product is None:
        raise OrderError("product", f"{ref!r} is not a published product of this marketplace")
    return product


def place_order(
    session: Session,
    marketplace: Marketplace,
    user: User,
    customer: Organisation,
    request: OrderRequest,
    *,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    now: dt.datetime | None = None,
    placer_memberships: Iterable[Membership] = (),
) -> Order:
    """The order, confirmed with its subscription, or waiting for approval; ``placer_memberships``
    (the placer's grants in the marketplace) say whether the placer is its own auditor."""
    now = now or utcnow()
    if customer.kind is not OrganisationKind.CUSTOMER or customer.marketplace_id != marketplace.id:
        raise OrderError("organisation_id", "not a customer organisation of this marketplace")
    product = _product(session, marketplace, request.product)
    live = product.live_version  # with its plans and their prices, in the product's query
    assert live is not None
    plan = next((p for p in live.plans if p.code == request.plan or str(p.id) == request.plan), None)
    if plan is None:
        codes = ", ".join(p.code for p in live.plans)
        raise OrderError("plan", f"{request.plan!r} is not a plan of this product; choose one of: {codes}")
    try:
        check_quantity(plan, request.quantity)
    except QuantityError as exc:
        raise OrderError("quantity", str(exc)) from None
    own = _own_account(session, customer, request.own_cloud_account)
    target = (
        _own_target(session, live, own, request.cloud_account)
        if own is not None
        else _target(live, request.cloud_account, request.region)
    )
    ssh_key = _ssh_public_key(request.ssh_public_key)
    variables = check_variables(live, request.variables or {})
    trial_days = 0
    if request.trial:
        if live.trial_days == 0:
            raise OrderError("trial", "this product has no trial")
        if session.get(TrialGrant, (customer.id, product.id)) is not None:
            raise OrderError("trial", "your organisation already had its trial of this product")
        trial_days = live.trial_days

    order = Order(
        id=uuid.uuid4(),
        marketplace_id=marketplace.id,
        customer_id=customer.id,
        placed_by_id=user.id,
        product_id=product.id,
        version_id=live.id,
        plan_id=plan.id,
        kind=OrderKind.TRIAL if request.trial else OrderKind.PURCHASE,
        status=OrderStatus.PENDING,
        quantity=request.quantity,
        cloud_account=target["cloud_account"],
        region=target.get("region"),
        own_cloud_account_id=own.id if own is not None else None,
        ssh_public_key=ssh_key,
        variables=variables or None,
        currency=plan.currency,
        breakdown=breakdown(
            plan,
            request.quantity,
            trial_days=trial_days,
            specs=pricing.price_list(session, marketplace, product).specs(plan),
            licence_only=own is not None,
        ),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    # set now, not at the flush, so that the order can be shown before its transaction commits
    order.created_at = order.updated_at = utcnow()
    if request.trial:
        session.add(TrialGrant(customer_id=customer.id, product_id=product.id, granted_at=now))
    if live.requires_approval and not may_decide(marketplace, product, placer_memberships):
        order.status = OrderStatus.AWAITING_APPROVAL
        session.add(order)
        tell_approval(session, "order.awaiting_approval", marketplace, product, order)
    else:
        confirm(session, order, live, plan, target, product.vendor_id, now)
    metrics.ORDERS.labels(order.kind.value).inc()
    return order


def may_decide(marketplace: Marketplace, product: Product, memberships: Iterable[Membership]) -> bool:
    """Whether someone with these grants in ``marketplace`` is the auditor of its orders of
    ``product``: the product's vendor on the platform marketplace, the marketplace's admins
    on a reseller's."""
    if marketplace.parent_id is None:
        return any(m.role is Role.VENDOR and m.organisation_id == product.vendor_id for m in memberships)
    return any(m.role is Role.ADMIN for m in memberships)


def tell_approval(
    session: Session, topic: str, marketplace: Marketplace, product: Product, order: Order, **extra: Any
) -> None:
    """Write the order as it now stands, and the approval event that says so: the order, and
    who decides on it (the vendor or the reseller)."""
    session.flush()
    payload = {
        **_order_payload(order),
        "subscription_id": str(order.subscription_id) if order.subscription_id else None,
        "vendor_id": str(product.vendor_id),
        "auditor": "vendor" if marketplace.parent_id is None else "reseller",
        **extra,
    }
    emit(session, topic, payload, marketplace_id=marketplace.id)


def confirm(
    session: Session,
    order: Order,
    live: ProductVersion,
    plan: Plan,
    target: dict[str, Any],
    vendor_id: uuid.UUID,
    now: dt.datetime,
) -> Subscription:
    """Accept a new purchase or trial: its subscription starts now, and the machine is asked for."""
    trial_days = live.trial_days if order.kind is OrderKind.TRIAL else 0
    subscription = _start(session, order, plan, trial_days, now, order.placed_by_id)
    # the relationship makes the flush insert the subscription before the order
    order.subscription, order.subscription_id = subscription, subscription.id
    order.status = OrderStatus.CONFIRMED
    order.confirmed_at = now
    session.add(order)
    with together(session):  # the three events and their audit entries: one INSERT each
        emit(session, "order.placed", _order_payload(order), marketplace_id=order.marketplace_id)
        emit(
            session,
            "subscription.trial_started" if trial_days else "subscription.activated",
            {**_order_payload(order), "subscription_id": str(subscription.id)},
            marketplace_id=order.marketplace_id,
        )
        # what the deployer needs to make the machine, as it stands at order time
        emit(
            session,
            "deployment.requested",
            {
                **_order_payload(order),
                "subscription_id": str(subscription.id),
                "vendor_id": str(vendor_id),
                "product_type": str(live.product_type),
                "target": {
                    **target,
                    **plan_machine(plan, target.get("size"), target.get("data_disk_gib")),
                    # the vendor's own, for the machine of another plan later
                    "vendor_size": target.get("size"),
                    "vendor_data_disk_gib": target.get("data_disk_gib"),
                    "variables": setup_environment(live, order.variables),
                    "endpoints": list(live.endpoints or []),
                },
                "ssh_public_key": order.ssh_public_key,
            },
            marketplace_id=order.marketplace_id,
        )
    # One flush for the order, its subscription and history: a concurrent request with the
    # same key (or the same trial) waits on the unique index here, then fails and its
    # transaction rolls back whole.
    session.flush()
    return subscription


def plan_machine(plan: Plan, vendor_size: dict[str, Any] | None, vendor_disk: int | None) -> dict[str, Any]:
    """The VM ``size`` and ``data_disk_gib`` a subscription to ``plan`` gets: the plan's own,
    else the deployment target's (the vendor's)."""
    size = dict(vendor_size or {})
    if plan.vm_size:
        size.update(plan.vm_size)
    return {"size": size, "data_disk_gib": plan.data_disk_gib or vendor_disk}


def check_variables(version: ProductVersion, given: dict[str, str]) -> dict[str, str]:
    """The customer's values, checked: only the product's customer-editable variables."""
    editable = {v["name"] for v in version.setup_variables or [] if v.get("customer_editable")}
    wrong = sorted(set(given) - editable)
    if wrong:
        allowed = ", ".join(sorted(editable)) or "none"
        raise OrderError(
            "variables", f"not a variable you can set: {', '.join(wrong)}; you can set: {allowed}"
        )
    for name, value in given.items():
        if "\0" in value or len(value) > 1000:
            raise OrderError("variables", f"{name}: at most 1,000 characters, no NUL")
    return dict(given)


def setup_environment(version: ProductVersion, chosen: dict[str, str] | None) -> dict[str, str]:
    """The vendor's variables for the setup script: their defaults, then the customer's values."""
    values = {v["name"]: str(v.get("default") or "") for v in version.setup_variables or []}
    values.update(chosen or {})
    return values


def _ssh_public_key(value: str | None) -> str | None:
    """The key line, checked: an OpenSSH public key whose blob names the same type."""
    if value is None or not value.strip():
        return None
    try:
        return keys.check_public_key(value)[0]
    except keys.KeyError_ as exc:
        raise OrderError("ssh_public_key", str(exc)) from None


def _target(version: ProductVersion, cloud_account: str | None, region: str | None) -> dict[str, Any]:
    targets = version.deployment or []
    if cloud_account is None and len(targets) == 1:
        return targets[0]
    for target in targets:
        if target["cloud_account"] == cloud_account and (region is None or target.get("region") == region):
            return target
    offered = ", ".join(f"{t['cloud_account']}/{t.get('region') or '-'}" for t in targets)
    raise OrderError("cloud_account", f"choose one of the product's targets: {offered}")


def _own_account(
    session: Session, customer: Organisation, account_id: uuid.UUID | None
) -> CloudAccount | None:
    if account_id is None:
        return None
    found = session.get(CloudAccount, account_id)
    if found is None or found.owner_id != customer.id or not found.is_active:
        raise OrderError("own_cloud_account", "not a cloud account of your organisation")
    return found


def _own_target(
    session: Session, version: ProductVersion, own: CloudAccount, cloud_account: str | None
) -> dict[str, Any]:
    """The product's target on the same provider (and region) as the customer's own
    account, moved into it: the vendor's image, size and setup, in the customer's cloud."""
    targets = [
        t for t in version.deployment or [] if cloud_account is None or t["cloud_account"] == cloud_account
    ]
    providers = dict(
        session.execute(
            sa.select(CloudAccount.slug, CloudAccount.provider).where(
                CloudAccount.slug.in_({t["cloud_account"] for t in targets})
            )
        ).all()
    )
    for target in targets:
        region = target.get("region")
        if providers.get(target["cloud_account"]) == own.provider and (
            region is None or own.region is None or region == own.region
        ):
            return {**target, "cloud_account": own.slug, "region": own.region or region}
    offered = ", ".join(
        sorted(
            {f"{providers.get(t['cloud_account'], '?')}/{t.get('region') or 'any region'}" for t in targets}
        )
    )
    raise OrderError(
        "own_cloud_account",
        f"this product does not run on {own.provider} in {own.region or 'that region'}; it runs on: "
        + (offered or "no cloud"),
    )


def _start(
    session: Session, order: Order, plan: Plan, trial_days: int, now: dt.datetime, actor_id: uuid.UUID
) -> Subscription:
    if trial_days:
        end = now + dt.timedelta(days=trial_days)
        status, trial_end = SubscriptionStatus.TRIALING, end
    else:
        end = period_end(now, plan.billing_period)
        status, trial_end = SubscriptionStatus.ACTIVE, None
    subscription = Subscription(
        id=uuid.uuid4(),
        marketplace_id=order.marketplace_id,
        customer_id=order.customer_id,
        product_id=order.product_id,
        plan_id=plan.id,
        quantity=order.quantity,
        status=status,
        billing_anchor=trial_end or now,
        current_period_start=now,
        current_period_end=end,
        trial_end=trial_end,
        cloud_account=order.cloud_account,
        region=order.region,
        own_cloud_account_id=order.own_cloud_account_id,
    )
    session.add(subscription)
    record(
        session,
        subscription,
        "trial_started" if trial_days else "activated",
        actor_id,
        {},
        {"status": status.value, "plan_id": str(plan.id), "quantity": order.quantity},
        now,
    )
    return subscription


def record(
    session: Session,
    subscription: Subscription,
    kind: str,
    actor_id: uuid.UUID | None,
    before: dict[str, Any],
    after: dict[str, Any],
    at: dt.datetime | None = None,
) -> SubscriptionChange:
    change = SubscriptionChange(
        subscription_id=subscription.id,
        subscription=subscription,  # inserted after a new subscription by the same flush
        kind=kind,
        actor_id=actor_id,
        before=before,
        after=after,
        at=at or utcnow(),
    )
    session.add(change)  # written with the session's next flush, after its subscription
    return change


def _order_payload(order: Order) -> dict[str, Any]:
    return {
        "order_id": str(order.id),
        "customer_id": str(order.customer_id),
        "product_id": str(order.product_id),
        "plan_id": str(order.plan_id),
        "kind": order.kind.value,
    }


def summary(session: Session, subscription_id: uuid.UUID) -> dict[str, Any] | None:
    """What a CRM deal says of a subscription: customer, product, plan, status, start, and
    the price of a period from its latest order (None when not known)."""
    subscription = session.get(Subscription, subscription_id)
    if subscription is None:
        return None
    plan = session.get(Plan, subscription.plan_id)
    latest = session.scalar(
        sa.select(Order)
        .where(
            Order.subscription_id == subscription.id,
            Order.status.in_([OrderStatus.CONFIRMED, OrderStatus.FULFILLED]),
        )
        .order_by(Order.created_at.desc())
        .limit(1)
    )
    period = (latest.breakdown or {}).get("period_total") if latest is not None else None
    return {
        "customer_id": subscription.customer_id,
        "product_id": subscription.product_id,
        "plan": plan.name if plan else "",
        "status": subscription.status.value,
        "started_at": subscription.created_at,
        "amount": period,
        "currency": latest.currency if latest is not None else None,
    }


def has_subscribed(session: Session, organisation_id: uuid.UUID, product_id: uuid.UUID) -> bool:
    """Whether the organisation has or had a subscription to the product (review rule)."""
    return (
        session.scalar(
            sa.select(sa.literal(True)).where(
                Subscription.customer_id == organisation_id, Subscription.product_id == product_id
            )
        )
        is not None
    )


def deployment_finished(session: Session, subscription_id: uuid.UUID, *, failed_reason: str | None) -> None:
    """The deployer is done with the subscription's machine: its order is fulfilled, or failed."""
    order = session.scalar(
        sa.select(Order).where(
            Order.subscription_id == subscription_id, Order.status == OrderStatus.CONFIRMED
        )
    )
    if order is None:
        return
    if failed_reason is None:
        order.status = OrderStatus.FULFILLED
    else:
        order.status, order.failure_reason = OrderStatus.FAILED, failed_reason
    session.flush()


def placed_by(session: Session, subscription_id: uuid.UUID) -> uuid.UUID | None:
    """The user who placed the order that created the subscription."""
    return session.scalar(
        sa.select(Order.placed_by_id)
        .where(Order.subscription_id == subscription_id)
        .order_by(Order.created_at)
    )


def product_of_subscription(session: Session, subscription_id: uuid.UUID) -> uuid.UUID | None:
    return session.scalar(sa.select(Subscription.product_id).where(Subscription.id == subscription_id))


def of_vendors(
    model: type[Order] | type[Subscription], vendor_ids: frozenset[uuid.UUID]
) -> sa.ColumnElement[bool]:
    """Orders or subscriptions of products sold by ``vendor_ids``."""
    return model.product_id.in_(sa.select(Product.id).where(Product.vendor_id.in_(vendor_ids)))
