"""Setup variables the customer changes after ordering: the values are checked against the
customer-editable variables of the product version the subscription was ordered with,
kept in the deployment's spec, and the vendor's setup script runs again with them
(``reconfiguring``). A change made while the machine is still being made needs no second
run: its first setup reads them. The same values again change nothing."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.catalog.models import ProductVersion
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.orders import service as orders
from cmw.orders.models import Order, Subscription
from cmw.orders.subscriptions import LIVE
from deployer import service
from deployer.models import Deployment, DeploymentState

S = DeploymentState
#: the first setup has not run yet: it will read the new values
BEFORE_SETUP = frozenset(
    {
        S.REQUESTED,
        S.PREPARING,
        S.CREATING_VM,
        S.STARTING_VM,
        S.CONFIGURING_ACCESS,
        S.CREATING_DISK,
        S.ATTACHING_DISK,
        S.PREPARING_DISK,
        S.RUNNING_SETUP,
    }
)
#: the machine is going or gone: nothing to configure
GONE = frozenset({S.ROLLING_BACK, S.FAILED, S.STOPPING, S.DESTROYING, S.REMOVED})


class VariablesError(ValueError):
    """The change cannot be made; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _version(session: Session, subscription: Subscription) -> ProductVersion | None:
    """The product version the subscription was ordered with (its setup script's)."""
    version_id = session.scalar(
        sa.select(Order.version_id).where(Order.subscription_id == subscription.id).order_by(Order.created_at)
    )
    return session.get(ProductVersion, version_id) if version_id else None


def editable(session: Session, subscription: Subscription) -> list[dict[str, Any]]:
    """The variables the customer may set, as the vendor declared them."""
    version = _version(session, subscription)
    return [
        dict(v) for v in (version.setup_variables if version else None) or [] if v.get("customer_editable")
    ]


def view(session: Session, subscription: Subscription) -> dict[str, Any]:
    """The customer's variables with their current values, and how the last change went."""
    deployment = service.of_subscriptions(session, [subscription.id]).get(subscription.id)
    values = dict((deployment.spec.get("variables") if deployment else None) or {})
    return {
        "variables": [
            {
                "name": v["name"],
                "label": v.get("label") or v["name"],
                "description": v.get("description") or "",
                "default": str(v.get("default") or ""),
                "value": str(values.get(v["name"], v.get("default") or "")),
            }
            for v in editable(session, subscription)
        ],
        "deployment_id": deployment.id if deployment else None,
        "applying": bool(deployment and (deployment.setup_due or deployment.state is S.RECONFIGURING)),
        "error": deployment.setup_error if deployment else None,
    }


def change(
    session: Session,
    subscription: Subscription,
    given: dict[str, str],
    actor_id: uuid.UUID | None,
    now: dt.datetime | None = None,
) -> list[str]:
    """Set the customer's ``given`` values; the names that changed (none: nothing to do).
    Raises :class:`VariablesError` with nothing changed."""
    now = now or utcnow()
    if subscription.status not in LIVE:
        raise VariablesError("subscription", f"the subscription is {subscription.status.value}")
    version = _version(session, subscription)
    if version is None:
        raise VariablesError("subscription", "the subscription has no order to read its product from")
    try:
        given = orders.check_variables(version, given)
    except orders.OrderError as exc:
        raise VariablesError(exc.field, exc.message) from None
    # locked: the deployer's step on this machine finishes first, and two changes queue
    deployment = session.scalar(
        sa.select(Deployment).where(Deployment.subscription_id == subscription.id).with_for_update()
    )
    if deployment is None:
        raise VariablesError("subscription", "the subscription has no instance")
    if deployment.state in GONE or deployment.desired == service.REMOVED:
        raise VariablesError("subscription", f"the instance is {deployment.state.value.replace('_', ' ')}")
    values = dict(deployment.spec.get("variables") or {})
    changed = sorted(name for name, value in given.items() if values.get(name) != value)
    if not changed:
        return []
    before = {name: values.get(name) for name in changed}
    values.update(given)
    deployment.spec = {**deployment.spec, "variables": values}
    deployment.setup_generation += 1
    deployment.setup_error = None
    if deployment.state not in BEFORE_SETUP:
        deployment.setup_due = True
        if service.wants_change(deployment):  # running: now; suspended: once it runs again
            deployment.active = True
            deployment.next_attempt_at = now
    service.record(
        session,
        deployment,
        deployment.state,
        "setup variables changed: "
        + ", ".join(changed)
        + ("; the setup script runs again" if deployment.setup_due else "; the first setup reads them"),
        detail={"variables": changed, "generation": deployment.setup_generation},
        now=now,
    )
    orders.record(
        session,
        subscription,
        "setup_variables",
        actor_id,
        before,
        {name: given[name] for name in changed},
        now,
    )
    emit(
        session,
        "subscription.variables_changed",
        {
            "subscription_id": str(subscription.id),
            "deployment_id": str(deployment.id),
            "customer_id": str(subscription.customer_id),
            "product_id": str(subscription.product_id),
            "variables": changed,
        },
        marketplace_id=subscription.marketplace_id,
    )
    return changed
