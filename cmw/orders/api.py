"""The orders API: place an order (idempotent with ``Idempotency-Key``; an admin may order
for a customer of the marketplace), see orders and subscriptions (customers their own,
vendors those of their products, admins all of the marketplace), and approve or reject the
orders of products that require approval."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import sqlalchemy as sa
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate
from sqlalchemy.exc import IntegrityError

from cmw.accounts.auth import Identity, require_identity, roles_required, visible_rows
from cmw.accounts.models import Organisation, OrganisationKind, Role
from cmw.api.errors import ApiError, invalid
from cmw.api.pagination import PageArgs, page_of, paginate, paginate_rows
from cmw.api.views import attributes
from cmw.audit import service as audit
from cmw.catalog.models import Plan, Product
from cmw.events.service import together
from cmw.extensions import current_session
from cmw.orders import approval, service, subscriptions
from cmw.orders.models import (
    Order,
    OrderKind,
    OrderStatus,
    Subscription,
    SubscriptionStatus,
)
from deployer import variables
from deployer.models import Deployment

blp = Blueprint("orders", __name__, url_prefix="/api/v1", description="Orders and subscriptions")


class OrderCreateSchema(Schema):
    product = fields.String(
        required=True, validate=validate.Length(min=1, max=80), metadata={"description": "slug or id"}
    )
    plan = fields.String(
        required=True, validate=validate.Length(min=1, max=50), metadata={"description": "plan code"}
    )
    quantity = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))
    trial = fields.Boolean(load_default=False)
    cloud_account = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=63))
    region = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    own_cloud_account = fields.UUID(
        load_default=None,
        allow_none=True,
        metadata={
            "description": "id of one of your organisation's own cloud accounts "
            "(/api/v1/customer/cloud-accounts) to run it in: only the licence is charged, not the "
            "plan's infrastructure components"
        },
    )
    ssh_public_key = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=16_384),
        metadata={"description": "OpenSSH public key line installed for the machine's login user"},
    )
    variables = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=63)),
        values=fields.String(validate=validate.Length(max=1000)),
        load_default=None,
        validate=validate.Length(max=50),
        metadata={"description": "values of the product's customer-editable setup variables"},
    )
    organisation_id = fields.UUID(
        load_default=None,
        metadata={
            "description": "needed if you buy for several customers; an admin names the customer "
            "organisation of the marketplace it orders for"
        },
    )


class OrderSchema(Schema):
    id = fields.UUID()
    kind = fields.Enum(OrderKind, by_value=True)
    status = fields.Enum(OrderStatus, by_value=True)
    customer_id = fields.UUID()
    product_id = fields.UUID()
    plan_id = fields.UUID()
    quantity = fields.Integer()
    cloud_account = fields.String()
    region = fields.String(allow_none=True)
    own_cloud_account_id = fields.UUID(allow_none=True)
    ssh_public_key = fields.String(allow_none=True)
    variables = fields.Dict(allow_none=True)
    currency = fields.String()
    breakdown = fields.Dict(
        metadata={"description": "lines, setup_total, period_total, due_now (decimal strings)"}
    )
    subscription_id = fields.UUID(allow_none=True)
    created_at = fields.AwareDateTime()
    confirmed_at = fields.AwareDateTime(allow_none=True)
    failure_reason = fields.String(allow_none=True)
    change_from = fields.Dict(
        allow_none=True, metadata={"description": "a change order's plan_id and quantity before"}
    )
    decided_at = fields.AwareDateTime(allow_none=True)
    rejection_reason = fields.String(allow_none=True)


ORDER_SCHEMA = OrderSchema()


class RejectOrderSchema(Schema):
    reason = fields.String(
        required=True,
        validate=validate.Length(min=1, max=approval.MAX_REASON),
        metadata={"description": "why not; the customer is told"},
    )


class ChangeSchema(Schema):
    kind = fields.String()
    actor_id = fields.UUID(allow_none=True)
    at = fields.AwareDateTime()
    before = fields.Dict()
    after = fields.Dict()


class SubscriptionSchema(Schema):
    id = fields.UUID()
    status = fields.Enum(SubscriptionStatus, by_value=True)
    customer_id = fields.UUID()
    product_id = fields.UUID()
    plan_id = fields.UUID()
    quantity = fields.Integer()
    billing_anchor = fields.AwareDateTime()
    current_period_start = fields.AwareDateTime()
    current_period_end = fields.AwareDateTime()
    trial_end = fields.AwareDateTime(allow_none=True)
    cancel_at_period_end = fields.Boolean()
    cloud_account = fields.String()
    region = fields.String(allow_none=True)
    own_cloud_account_id = fields.UUID(allow_none=True)
    licence_only = fields.Boolean(
        metadata={"description": "runs in the customer's own cloud: infrastructure components not charged"}
    )
    created_at = fields.AwareDateTime()


class SubscriptionDetailSchema(SubscriptionSchema):
    history = fields.List(fields.Nested(ChangeSchema))
    resizing_to_plan_id = fields.UUID(
        allow_none=True,
        metadata={
            "description": "an upgrade to a plan with another machine, waiting for the VM's resize: "
            "the subscription moves to this plan (and is billed for it) once that is done"
        },
    )


class OrderListArgs(Schema):
    status = fields.Enum(OrderStatus, by_value=True, load_default=None)
    product_id = fields.UUID(load_default=None)


class SubscriptionListArgs(Schema):
    status = fields.Enum(SubscriptionStatus, by_value=True, load_default=None)
    product_id = fields.UUID(load_default=None)


def _visible(identity: Identity, model: type[Order] | type[Subscription]) -> sa.ColumnElement[bool]:
    """Orders or subscriptions of this marketplace the caller may see."""
    return visible_rows(
        identity,
        model.marketplace_id,
        model.customer_id,
        lambda vendors: service.of_vendors(model, vendors),
    )


def _list(
    model: type[Order] | type[Subscription], filters: dict[str, Any], args: dict[str, Any]
) -> dict[str, Any]:
    """A page of the orders or subscriptions the caller may see, filtered, newest first."""
    stmt = sa.select(model).where(_visible(require_identity(), model))
    if filters["status"]:
        stmt = stmt.where(model.status == filters["status"])
    if filters["product_id"]:
        stmt = stmt.where(model.product_id == filters["product_id"])
    ordered = stmt.order_by(model.created_at.desc(), model.id)
    return paginate(current_session(), ordered, args["page"], args["per_page"])


def _buyer(identity: Identity, organisation_id: uuid.UUID | None) -> uuid.UUID:
    """The customer organisation the order is for: the caller's own, or, for an admin, the
    named customer organisation of the marketplace."""
    if organisation_id is None or not identity.is_admin:
        return identity.customer(organisation_id)
    found = current_session().get(Organisation, organisation_id)
    if (
        found is None
        or found.marketplace_id != identity.marketplace.id
        or found.kind is not OrganisationKind.CUSTOMER
    ):
        raise invalid("organisation_id", "name a customer organisation of this marketplace")
    return found.id


def _request_hash(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@blp.route("/orders")
class Orders(MethodView):
    @blp.arguments(OrderCreateSchema)
    @blp.response(201, OrderSchema)
    @blp.alt_response(409, description="the Idempotency-Key was used with a different request")
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def post(self, data: dict[str, Any]) -> Any:
        """Order a plan, or start a trial. Send an ``Idempotency-Key`` header to make retries
        safe: the same key with the same body answers the first order again. An order of a
        product that requires approval is ``awaiting_approval`` until its auditor decides,
        unless the auditor places it (a reseller's admin ordering for its customer)."""
        identity = require_identity()
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise ApiError(
                422,
                "invalid input: Idempotency-Key",
                errors=[
                    {"location": "headers", "field": "Idempotency-Key", "message": "1 to 255 characters"}
                ],
            )
        customer_id = _buyer(identity, data.pop("organisation_id"))
        digest = _request_hash({**data, "organisation_id": str(customer_id)})
        session = current_session()
        # A key is new far more often than not: the first attempt does not look for an earlier
        # order, and the unique index on the key refuses a second one at the flush. Only then
        # (or when the order is refused) is the earlier one looked for and answered again.
        for attempt in range(2):
            try:
                if key is not None and attempt:
                    earlier = service.replay(session, identity.user, key, digest)
                    if earlier is not None:
                        return earlier, 201, {"Idempotent-Replayed": "true"}
                customer = session.get(Organisation, customer_id)
                assert customer is not None
                # the request's audit entry is written with the order's events, one INSERT
                with together(session):
                    audit.with_the_change(session)
                    order = service.place_order(
                        session,
                        identity.marketplace,
                        identity.user,
                        customer,
                        service.OrderRequest(**data),
                        idempotency_key=key,
                        request_hash=digest if key else None,
                        placer_memberships=identity.memberships,
                    )
                # serialised before the commit expires it: no reload on the busiest write
                response = current_app.json.response(ORDER_SCHEMA.dump(order))
                session.commit()
                response.status_code = 201
                return response
            except service.IdempotencyConflict as exc:
                session.rollback()
                raise ApiError(409, str(exc), slug="idempotency-key-reused") from None
            except service.OrderError as exc:
                session.rollback()
                if key is not None and not attempt:
                    continue  # an earlier order with this key is answered again, as it was then
                raise ApiError(
                    422,
                    f"invalid order: {exc.message}",
                    errors=[{"location": "json", "field": exc.field, "message": exc.message}],
                ) from None
            except IntegrityError:
                # A concurrent request won the race (same key, or the one trial): look again.
                session.rollback()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    @blp.arguments(OrderListArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(OrderSchema))
    @roles_required(Role.CUSTOMER, Role.VENDOR, Role.ADMIN)
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Orders you may see, newest first."""
        return _list(Order, filters, args)


@blp.route("/orders/<uuid:order_id>")
class OrderResource(MethodView):
    @blp.response(200, OrderSchema)
    @roles_required(Role.CUSTOMER, Role.VENDOR, Role.ADMIN)
    def get(self, order_id: uuid.UUID) -> Order:
        """One order you may see."""
        order = current_session().scalar(
            sa.select(Order).where(Order.id == order_id, _visible(require_identity(), Order))
        )
        if order is None:
            raise ApiError(404, "no such order")
        return order


@blp.route("/orders/approvals")
class Approvals(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(OrderSchema))
    @roles_required(Role.VENDOR, Role.ADMIN)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Orders waiting for your decision, oldest first: of your products on the platform
        marketplace (vendors), of the marketplace on a reseller's (its admins)."""
        identity = require_identity()
        stmt = approval.queue(identity.marketplace, identity.memberships)
        return paginate(current_session(), stmt, args["page"], args["per_page"])


def _decide(order_id: uuid.UUID, decision: Any, *args: Any) -> Order:
    """Approve or reject the order, as its auditor."""
    identity = require_identity()
    session = current_session()
    order = session.get(Order, order_id)
    if order is None or order.marketplace_id != identity.marketplace.id:
        raise ApiError(404, "no such order")
    if not approval.can_decide(session, order, identity.memberships):
        raise ApiError(403, "only the order's auditor decides: the product's vendor, or the reseller")
    try:
        decision(session, order.id, identity.user.id, *args)
    except approval.ApprovalError as exc:
        raise _approval_error(exc) from None
    session.commit()
    return order


@blp.route("/orders/<uuid:order_id>/approve")
class ApproveOrder(MethodView):
    @blp.response(200, OrderSchema)
    @roles_required(Role.VENDOR, Role.ADMIN)
    def post(self, order_id: uuid.UUID) -> Order:
        """Approve an order waiting for approval: a purchase or trial starts (subscription and
        deployment), a change is made. 422 if it no longer waits or the change cannot be made."""
        return _decide(order_id, approval.approve)


@blp.route("/orders/<uuid:order_id>/reject")
class RejectOrder(MethodView):
    @blp.arguments(RejectOrderSchema)
    @blp.response(200, OrderSchema)
    @roles_required(Role.VENDOR, Role.ADMIN)
    def post(self, data: dict[str, Any], order_id: uuid.UUID) -> Order:
        """Reject an order waiting for approval, with the reason the customer is told."""
        return _decide(order_id, approval.reject, data["reason"])


@blp.route("/subscriptions")
class Subscriptions(MethodView):
    @blp.arguments(SubscriptionListArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(SubscriptionSchema))
    @roles_required(Role.CUSTOMER, Role.VENDOR, Role.ADMIN)
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Subscriptions you may see, newest first."""
        return _list(Subscription, filters, args)


def _detail(subscription: Subscription) -> dict[str, Any]:
    session = current_session()
    history = subscriptions.changes(session, subscription.id)
    resizing = session.scalar(
        sa.select(Deployment.resize_to).where(Deployment.subscription_id == subscription.id)
    )
    return {
        **attributes(subscription, SubscriptionSchema),
        "history": history,
        "resizing_to_plan_id": (resizing or {}).get("plan_id")
        if not (resizing or {}).get("rolling_back")
        else None,
    }


@blp.route("/subscriptions/<uuid:subscription_id>")
class SubscriptionResource(MethodView):
    @blp.response(200, SubscriptionDetailSchema)
    @roles_required(Role.CUSTOMER, Role.VENDOR, Role.ADMIN)
    def get(self, subscription_id: uuid.UUID) -> dict[str, Any]:
        """One subscription with its history of changes."""
        subscription = current_session().scalar(
            sa.select(Subscription).where(
                Subscription.id == subscription_id, _visible(require_identity(), Subscription)
            )
        )
        if subscription is None:
            raise ApiError(404, "no such subscription")
        return _detail(subscription)


class ChangePlanSchema(Schema):
    plan = fields.String(
        required=True, validate=validate.Length(min=1, max=50), metadata={"description": "plan code"}
    )


class ChangeQuantitySchema(Schema):
    quantity = fields.Integer(required=True, validate=validate.Range(min=1, max=100_000))


class CancelSchema(Schema):
    at_once = fields.Boolean(
        load_default=False, metadata={"description": "admins only; default: at period end"}
    )


def _changeable(subscription_id: uuid.UUID) -> Subscription:
    """A subscription the caller may change: its customer's members, or an admin."""
    identity = require_identity()
    # Locked: the periodic jobs skip it until this change commits, and two changes queue.
    subscription = current_session().scalar(
        sa.select(Subscription)
        .where(Subscription.id == subscription_id, _visible(identity, Subscription))
        .with_for_update(of=Subscription)
    )
    if subscription is None:
        raise ApiError(404, "no such subscription")
    if not identity.is_admin and subscription.customer_id not in identity.organisations_with(Role.CUSTOMER):
        raise ApiError(403, "only the customer or an admin can change a subscription")
    return subscription


WAITS = "the product requires approval: the change waits for it as this change order"


def _approval_error(exc: approval.ApprovalError) -> ApiError:
    current_session().rollback()
    return ApiError(
        422,
        exc.message,
        errors=[{"location": "json", "field": exc.field, "message": exc.message}],
    )


def _request_or_apply(
    subscription: Subscription, *, plan: Plan | None = None, quantity: int | None = None
) -> Any:
    """The change made now, or, for a product that requires approval, a change order (202)."""
    identity = require_identity()
    session = current_session()
    try:
        order = approval.request_change(
            session,
            subscription,
            plan=plan,
            quantity=quantity,
            user_id=identity.user.id,
            memberships=identity.memberships,
        )
    except approval.ApprovalError as exc:
        raise _approval_error(exc) from None
    if order is None:
        if plan is not None:
            return _apply(subscription, subscriptions.change_plan, plan, identity.user.id)
        return _apply(subscription, subscriptions.change_quantity, quantity, identity.user.id)
    response = current_app.json.response(ORDER_SCHEMA.dump(order))
    session.commit()
    response.status_code = 202
    return response


def _apply(subscription: Subscription, change: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    session = current_session()
    try:
        change(session, subscription, *args, **kwargs)
    except subscriptions.ChangeError as exc:
        session.rollback()
        raise ApiError(
            422 if exc.field != "status" else 409,
            exc.message,
            slug="validation-error" if exc.field != "status" else "invalid-transition",
            errors=[{"location": "json", "field": exc.field, "message": exc.message}]
            if exc.field != "status"
            else None,
        ) from None
    session.commit()
    return _detail(subscription)


@blp.route("/subscriptions/<uuid:subscription_id>/plan")
class SubscriptionPlan(MethodView):
    @blp.arguments(ChangePlanSchema)
    @blp.response(200, SubscriptionDetailSchema)
    @blp.alt_response(202, schema=OrderSchema, description=WAITS)
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def put(self, data: dict[str, Any], subscription_id: uuid.UUID) -> Any:
        """Change plan: an upgrade applies at once (or, to a plan with another VM size or data
        disk, once the machine has been resized: see ``resizing_to_plan_id``), a downgrade at
        the end of the period. 422 when the machine's cloud offers no size for the plan."""
        subscription = _changeable(subscription_id)
        product = current_session().get(Product, subscription.product_id)
        plan = current_session().scalar(
            sa.select(Plan).where(
                Plan.version_id == (product.live_version_id if product else None), Plan.code == data["plan"]
            )
        )
        if plan is None:
            raise ApiError(
                422,
                "invalid input: plan",
                errors=[
                    {
                        "location": "json",
                        "field": "plan",
                        "message": f"{data['plan']!r} is not a plan this product sells",
                    }
                ],
            )
        return _request_or_apply(subscription, plan=plan)


@blp.route("/subscriptions/<uuid:subscription_id>/quantity")
class SubscriptionQuantity(MethodView):
    @blp.arguments(ChangeQuantitySchema)
    @blp.response(200, SubscriptionDetailSchema)
    @blp.alt_response(202, schema=OrderSchema, description=WAITS)
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def put(self, data: dict[str, Any], subscription_id: uuid.UUID) -> Any:
        """Change the number of seats (or other units), from now."""
        subscription = _changeable(subscription_id)
        return _request_or_apply(subscription, quantity=data["quantity"])


@blp.route("/subscriptions/<uuid:subscription_id>/cancel")
class SubscriptionCancel(MethodView):
    @blp.arguments(CancelSchema)
    @blp.response(200, SubscriptionDetailSchema)
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def post(self, data: dict[str, Any], subscription_id: uuid.UUID) -> dict[str, Any]:
        """Cancel at the end of the current period (or at once, for admins)."""
        subscription = _changeable(subscription_id)
        if data["at_once"] and not require_identity().is_admin:
            raise ApiError(403, "only an admin can end a subscription at once; cancel at period end instead")
        return _apply(subscription, subscriptions.cancel, require_identity().user.id, at_once=data["at_once"])


@blp.route("/subscriptions/<uuid:subscription_id>/reactivate")
class SubscriptionReactivate(MethodView):
    @blp.response(200, SubscriptionDetailSchema)
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def post(self, subscription_id: uuid.UUID) -> dict[str, Any]:
        """Keep a subscription that was scheduled to end, before its period ends."""
        subscription = _changeable(subscription_id)
        return _apply(subscription, subscriptions.reactivate, require_identity().user.id)


class SubscriptionVariableSchema(Schema):
    name = fields.String()
    label = fields.String()
    description = fields.String()
    default = fields.String(metadata={"description": "the vendor's default"})
    value = fields.String(metadata={"description": "the value the setup script gets"})


class SetupVariablesSchema(Schema):
    variables = fields.List(
        fields.Nested(SubscriptionVariableSchema), metadata={"description": "the variables you may set"}
    )
    deployment_id = fields.UUID(allow_none=True)
    applying = fields.Boolean(
        metadata={"description": "the setup script is about to run, or running, with changed values"}
    )
    error = fields.String(
        allow_none=True,
        metadata={"description": "why the last run with changed values failed (the instance kept running)"},
    )


class SetupVariablesInput(Schema):
    variables = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        values=fields.String(validate=validate.Length(max=1000)),
        required=True,
        metadata={"description": "new values of some of the product's customer-editable setup variables"},
    )


@blp.route("/subscriptions/<uuid:subscription_id>/variables")
class SubscriptionVariables(MethodView):
    @blp.response(200, SetupVariablesSchema)
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def get(self, subscription_id: uuid.UUID) -> dict[str, Any]:
        """The product's setup variables the customer may set, with their values now."""
        identity = require_identity()
        subscription = current_session().scalar(
            sa.select(Subscription).where(
                Subscription.id == subscription_id, _visible(identity, Subscription)
            )
        )
        if subscription is None or not (
            identity.is_admin or subscription.customer_id in identity.organisations_with(Role.CUSTOMER)
        ):
            raise ApiError(404, "no such subscription")
        return variables.view(current_session(), subscription)

    @blp.arguments(SetupVariablesInput)
    @blp.response(200, SetupVariablesSchema)
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def put(self, data: dict[str, Any], subscription_id: uuid.UUID) -> dict[str, Any]:
        """Change setup variables after ordering: the vendor's setup script runs again on the
        instance with the new values (``applying`` until it has; ``error`` if it failed: the
        instance keeps running as it was). The same values again change nothing. 422 for a
        variable the product does not let customers set, or an instance being removed."""
        subscription = _changeable(subscription_id)
        session = current_session()
        try:
            variables.change(session, subscription, data["variables"], require_identity().user.id)
        except variables.VariablesError as exc:
            session.rollback()
            raise ApiError(
                422, exc.message, errors=[{"location": "json", "field": exc.field, "message": exc.message}]
            ) from None
        session.commit()
        return variables.view(session, subscription)


class CustomerSchema(Schema):
    id = fields.UUID()
    name = fields.String()
    country = fields.String()
    subscriptions = fields.Integer(metadata={"description": "subscriptions to your products, any status"})
    active = fields.Integer(metadata={"description": "of which trialing, active or past due"})
    first_subscribed_at = fields.AwareDateTime()


@blp.route("/vendor/customers")
class VendorCustomers(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(CustomerSchema))
    @roles_required(Role.VENDOR)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Customer organisations subscribed (now or before) to your products."""
        identity = require_identity()
        live = [SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE]
        mine = sa.select(Product.id).where(Product.vendor_id.in_(identity.organisations_with(Role.VENDOR)))
        stmt = (
            sa.select(
                Organisation.id,
                Organisation.name,
                Organisation.country,
                sa.func.count(Subscription.id).label("subscriptions"),
                sa.func.count(Subscription.id).filter(Subscription.status.in_(live)).label("active"),
                sa.func.min(Subscription.created_at).label("first_subscribed_at"),
            )
            .join(Subscription, Subscription.customer_id == Organisation.id)
            .where(Subscription.marketplace_id == identity.marketplace.id, Subscription.product_id.in_(mine))
            .group_by(Organisation.id, Organisation.name, Organisation.country)
        )
        return paginate_rows(
            current_session(),
            stmt.order_by(Organisation.name, Organisation.id),
            args["page"],
            args["per_page"],
            lambda row: dict(row._mapping),
        )
