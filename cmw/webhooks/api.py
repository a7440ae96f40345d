"""Vendor webhooks API: endpoints (the secret shown once), their deliveries with every
attempt, replay, and a test event. See :mod:`cmw.webhooks.service` for the signature."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from cmw.accounts.auth import require_identity, roles_required
from cmw.accounts.models import Role
from cmw.api.errors import ApiError, invalid
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.crypto import sealer
from cmw.extensions import current_config, current_session
from cmw.webhooks import service
from cmw.webhooks.models import DeliveryState, WebhookDelivery, WebhookEndpoint

blp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/api/v1",
    description=(
        "Vendor webhooks. Each delivery is a POST of `{id, type, created_at, data}` signed with "
        '`Mercato-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the '
        "endpoint's secret>`; `Mercato-Event` and `Mercato-Delivery` name the type and the delivery. "
        "A non-2xx answer is retried with exponential back-off for a day."
    ),
)


class EndpointSchema(Schema):
    id = fields.UUID(dump_only=True)
    vendor_id = fields.UUID(
        load_default=None, metadata={"description": "needed if you are in several vendors"}
    )
    url = fields.String(
        required=True,
        validate=validate.Length(min=1, max=2000),
        metadata={"example": "https://example.com/hooks"},
    )
    description = fields.String(load_default="", validate=validate.Length(max=200))
    topics = fields.List(
        fields.String(validate=validate.OneOf(service.TOPICS)),
        load_default=list,
        metadata={"description": "event types to receive; empty = all"},
    )
    active = fields.Boolean(dump_only=True)
    created_at = fields.AwareDateTime(dump_only=True)


class EndpointUpdateSchema(Schema):
    url = fields.String(validate=validate.Length(min=1, max=2000))
    description = fields.String(validate=validate.Length(max=200))
    topics = fields.List(fields.String(validate=validate.OneOf(service.TOPICS)))
    active = fields.Boolean()


class EndpointWithSecretSchema(EndpointSchema):
    secret = fields.String(dump_only=True, metadata={"description": "shown this once: keep it"})


class SecretSchema(Schema):
    secret = fields.String(metadata={"description": "shown this once: keep it"})


class AttemptSchema(Schema):
    attempted_at = fields.AwareDateTime()
    status = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    duration_ms = fields.Integer()
    response = fields.String(allow_none=True)


class DeliverySchema(Schema):
    id = fields.UUID()
    endpoint_id = fields.UUID()
    event_id = fields.String()
    topic = fields.String()
    state = fields.String()
    attempts = fields.Integer()
    next_attempt_at = fields.AwareDateTime(allow_none=True)
    retry_until = fields.AwareDateTime()
    last_status = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    created_at = fields.AwareDateTime()
    delivered_at = fields.AwareDateTime(allow_none=True)


class DeliveryDetailSchema(DeliverySchema):
    body = fields.String(metadata={"description": "the exact JSON sent"})
    log = fields.List(fields.Nested(AttemptSchema))


class DeliveryArgs(Schema):
    state = fields.String(validate=validate.OneOf([s.value for s in DeliveryState]), load_default=None)
    topic = fields.String(validate=validate.Length(max=100), load_default=None)


def _vendors() -> frozenset[uuid.UUID]:
    return require_identity().organisations_with(Role.VENDOR)


def _endpoint(endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = current_session().get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.vendor_id not in _vendors():
        raise ApiError(404, "no such webhook endpoint")
    return endpoint


def _delivery(delivery_id: uuid.UUID) -> WebhookDelivery:
    delivery = current_session().get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint.vendor_id not in _vendors():
        raise ApiError(404, "no such delivery")
    return delivery


def _run(action: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return action(*args, **kwargs)
    except service.WebhookError as exc:
        current_session().rollback()
        raise invalid(exc.field, exc.message) from None


@blp.route("/vendor/webhooks")
class Endpoints(MethodView):
    @blp.response(200, EndpointSchema(many=True))
    @roles_required(Role.VENDOR)
    def get(self) -> list[WebhookEndpoint]:
        """Your webhook endpoints."""
        return list(
            current_session().scalars(
                sa.select(WebhookEndpoint)
                .where(WebhookEndpoint.vendor_id.in_(_vendors()))
                .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
            )
        )

    @blp.arguments(EndpointSchema)
    @blp.response(201, EndpointWithSecretSchema)
    @roles_required(Role.VENDOR)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Register an HTTPS endpoint; the answer holds its signing secret, this once."""
        identity = require_identity()
        vendors = _vendors()
        vendor_id = data.pop("vendor_id") or (next(iter(vendors)) if len(vendors) == 1 else None)
        if vendor_id is None:
            raise invalid("vendor_id", "you belong to several vendors: say which one the endpoint is for")
        if vendor_id not in vendors:
            raise invalid("vendor_id", "not one of your vendor organisations")
        endpoint, secret = _run(
            service.create_endpoint,
            current_session(),
            sealer(),
            vendor_id,
            url=data["url"],
            topics=data["topics"],
            description=data["description"],
            created_by=identity.user.id,
            allow_private=current_config().allow_private_targets,
        )
        current_session().commit()
        fields_ = ("id", "vendor_id", "url", "description", "topics", "active", "created_at")
        return {**{name: getattr(endpoint, name) for name in fields_}, "secret": secret}


@blp.route("/vendor/webhooks/<uuid:endpoint_id>")
class Endpoint(MethodView):
    @blp.response(200, EndpointSchema)
    @roles_required(Role.VENDOR)
    def get(self, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        """One of your endpoints."""
        return _endpoint(endpoint_id)

    @blp.arguments(EndpointUpdateSchema)
    @blp.response(200, EndpointSchema)
    @roles_required(Role.VENDOR)
    def patch(self, data: dict[str, Any], endpoint_id: uuid.UUID) -> WebhookEndpoint:
        """Change its URL, event types or description, or pause it (``active: false``)."""
        endpoint = _run(
            service.update_endpoint,
            current_session(),
            _endpoint(endpoint_id),
            data,
            allow_private=current_config().allow_private_targets,
        )
        current_session().commit()
        return endpoint

    @blp.response(204)
    @roles_required(Role.VENDOR)
    def delete(self, endpoint_id: uuid.UUID) -> None:
        """Remove the endpoint and its delivery log."""
        current_session().delete(_endpoint(endpoint_id))
        current_session().commit()


@blp.route("/vendor/webhooks/<uuid:endpoint_id>/secret")
class RotateSecret(MethodView):
    @blp.response(200, SecretSchema)
    @roles_required(Role.VENDOR)
    def post(self, endpoint_id: uuid.UUID) -> dict[str, str]:
        """A new signing secret, shown this once; the old one stops signing at once."""
        secret = service.rotate_secret(current_session(), sealer(), _endpoint(endpoint_id))
        current_session().commit()
        return {"secret": secret}


@blp.route("/vendor/webhooks/<uuid:endpoint_id>/test")
class TestEvent(MethodView):
    @blp.response(202, DeliverySchema)
    @roles_required(Role.VENDOR)
    def post(self, endpoint_id: uuid.UUID) -> WebhookDelivery:
        """Queue a ``webhook.ping`` event for the endpoint."""
        delivery = service.ping(current_session(), _endpoint(endpoint_id))
        current_session().commit()
        return delivery


@blp.route("/vendor/webhooks/<uuid:endpoint_id>/deliveries")
class Deliveries(MethodView):
    @blp.arguments(DeliveryArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(DeliverySchema))
    @roles_required(Role.VENDOR)
    def get(self, filters: dict[str, Any], args: dict[str, Any], endpoint_id: uuid.UUID) -> dict[str, Any]:
        """The endpoint's deliveries, newest first."""
        endpoint = _endpoint(endpoint_id)
        stmt = sa.select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
        if filters["state"]:
            stmt = stmt.where(WebhookDelivery.state == DeliveryState(filters["state"]))
        if filters["topic"]:
            stmt = stmt.where(WebhookDelivery.topic == filters["topic"])
        stmt = stmt.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
        return paginate(current_session(), stmt, args["page"], args["per_page"])


@blp.route("/vendor/webhooks/deliveries/<uuid:delivery_id>")
class Delivery(MethodView):
    @blp.response(200, DeliveryDetailSchema)
    @roles_required(Role.VENDOR)
    def get(self, delivery_id: uuid.UUID) -> WebhookDelivery:
        """One delivery: the body sent and every attempt with its answer."""
        return _delivery(delivery_id)


@blp.route("/vendor/webhooks/deliveries/<uuid:delivery_id>/replay")
class Replay(MethodView):
    @blp.response(202, DeliverySchema)
    @roles_required(Role.VENDOR)
    def post(self, delivery_id: uuid.UUID) -> WebhookDelivery:
        """Send the delivery again (same body and event id), with a new day of retries."""
        delivery = service.replay(current_session(), _delivery(delivery_id))
        current_session().commit()
        return delivery
