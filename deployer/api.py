"""The deployer API: cloud accounts (admins; credentials go in and never come out) and
deployments (customers see theirs, vendors those of their products, admins all of the
marketplace; admins retry a failed one or force its removal)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from cmw.accounts.auth import Identity, current_marketplace, require_identity, roles_required, visible_rows
from cmw.accounts.models import Role
from cmw.api.errors import ApiError
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.crypto import sealer
from cmw.db import utcnow
from cmw.extensions import current_config, current_session
from deployer import clouds, engine, own, service, telemetry
from deployer.models import CloudAccount, Deployment, DeploymentState

blp = Blueprint("deployer", __name__, url_prefix="/api/v1", description="Cloud accounts and deployments")


# ------------------------------------------------------------------ schemas
class CloudAccountSchema(Schema):
    id = fields.UUID(dump_only=True)
    slug = fields.String(required=True, validate=validate.Length(min=1, max=63))
    name = fields.String(required=True, validate=validate.Length(min=1, max=120))
    provider = fields.String(
        required=True,
        metadata={"description": "a Libcloud compute provider: ec2, openstack, gce, dummy, ..."},
    )
    credentials = fields.Dict(
        keys=fields.String(),
        values=fields.Raw(),
        required=True,
        load_only=True,
        metadata={
            "description": "key, secret and the provider's other credentials; stored sealed, never shown"
        },
    )
    region = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    driver_options = fields.Dict(
        keys=fields.String(),
        values=fields.Raw(),
        load_default=dict,
        metadata={"description": "driver keyword arguments, such as host, port, secure"},
    )
    default_network = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    ssh_host = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=255),
        metadata={"description": "connect SSH here instead of the VM's address"},
    )
    ssh_port = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=65535))
    ssh_username = fields.String(load_default="ubuntu", validate=validate.Length(min=1, max=64))
    authorized_keys_file = fields.String(
        load_default=".ssh/authorized_keys", validate=validate.Length(min=1, max=255)
    )
    data_mount_point = fields.String(load_default="/srv/data", validate=validate.Length(min=1, max=255))
    disk_script = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=20_000))
    is_active = fields.Boolean(load_default=True)
    key_name = fields.String(dump_only=True, allow_none=True)
    public_key = fields.String(dump_only=True, allow_none=True)
    created_at = fields.AwareDateTime(dump_only=True)
    updated_at = fields.AwareDateTime(dump_only=True)


class CloudAccountPatchSchema(CloudAccountSchema):
    """Any of an account's settings; those left out stay (loaded with ``partial=True``)."""


class CloudTestSchema(Schema):
    images = fields.List(
        fields.String(validate=validate.Length(min=1, max=255)),
        load_default=list,
        validate=validate.Length(max=20),
        metadata={"description": "image ids to look up instead of listing every image"},
    )


class CloudTestResultSchema(Schema):
    sizes = fields.List(fields.Dict())
    images = fields.List(fields.Dict())
    seconds = fields.Float()


class DeploymentEventSchema(Schema):
    at = fields.AwareDateTime()
    from_state = fields.String(allow_none=True)
    to_state = fields.String()
    attempt = fields.Integer()
    message = fields.String()
    error = fields.String(allow_none=True)


class DeploymentSchema(Schema):
    id = fields.UUID()
    subscription_id = fields.UUID()
    customer_id = fields.UUID()
    product_id = fields.UUID()
    cloud_account_id = fields.UUID(allow_none=True)
    product_type = fields.String()
    state = fields.Enum(DeploymentState, by_value=True)
    desired = fields.String()
    attempt = fields.Integer()
    last_error = fields.String(allow_none=True)
    node_id = fields.String(allow_none=True)
    volume_id = fields.String(allow_none=True)
    address = fields.String(allow_none=True)
    url = fields.String(allow_none=True)
    endpoints = fields.List(
        fields.Dict(keys=fields.String(), values=fields.String()),
        metadata={"description": "the product's access URLs on this instance: name and url"},
    )
    login = fields.String(allow_none=True)
    ready_at = fields.AwareDateTime(allow_none=True)
    removed_at = fields.AwareDateTime(allow_none=True)
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()


class DeploymentDetailSchema(DeploymentSchema):
    history = fields.List(fields.Nested(DeploymentEventSchema))


class DeploymentListArgs(Schema):
    subscription_id = fields.UUID(load_default=None)
    state = fields.Enum(DeploymentState, by_value=True, load_default=None)


# ------------------------------------------------------------------ cloud accounts
def _account(account_id: uuid.UUID) -> CloudAccount:
    found = current_session().get(CloudAccount, account_id)
    if found is None or found.owner_id is not None:  # a customer's own is theirs alone
        raise ApiError(404, "no such cloud account")
    return found


def _invalid(exc: service.CloudAccountError) -> ApiError:
    return ApiError(
        422,
        f"invalid cloud account: {exc}",
        errors=[{"location": "json", "field": exc.field, "message": str(exc)}],
    )


def platform_only() -> None:
    """Cloud accounts are the platform's: its admins manage them, and for the admins of the
    marketplaces under it they do not exist (404)."""
    if current_marketplace().parent_id is not None:
        raise ApiError(404, "cloud accounts are managed in the platform marketplace")


@blp.route("/admin/cloud-accounts")
class CloudAccounts(MethodView):
    @blp.response(200, CloudAccountSchema(many=True))
    @roles_required(Role.ADMIN)
    def get(self) -> list[CloudAccount]:
        """Cloud accounts deployments go to (credentials are never shown)."""
        platform_only()
        return list(
            current_session().scalars(
                sa.select(CloudAccount).where(CloudAccount.owner_id.is_(None)).order_by(CloudAccount.slug)
            )
        )

    @blp.arguments(CloudAccountSchema)
    @blp.response(201, CloudAccountSchema)
    @roles_required(Role.ADMIN)
    def post(self, data: dict[str, Any]) -> CloudAccount:
        """Add a cloud account: a Libcloud provider, its credentials (sealed at rest), region and options."""
        platform_only()
        session = current_session()
        try:
            account = service.create_cloud_account(session, sealer(), service.CloudAccountInput(**data))
        except service.CloudAccountError as exc:
            session.rollback()
            raise _invalid(exc) from None
        session.commit()
        return account


@blp.route("/admin/cloud-accounts/<uuid:account_id>")
class CloudAccountResource(MethodView):
    @blp.response(200, CloudAccountSchema)
    @roles_required(Role.ADMIN)
    def get(self, account_id: uuid.UUID) -> CloudAccount:
        """One cloud account."""
        platform_only()
        return _account(account_id)

    @blp.arguments(CloudAccountPatchSchema(partial=True))
    @blp.response(200, CloudAccountSchema)
    @roles_required(Role.ADMIN)
    def patch(self, data: dict[str, Any], account_id: uuid.UUID) -> CloudAccount:
        """Change settings or credentials; running deployments keep their machines."""
        platform_only()
        session = current_session()
        account = _account(account_id)
        try:
            service.update_cloud_account(session, sealer(), account, data)
        except service.CloudAccountError as exc:
            session.rollback()
            raise _invalid(exc) from None
        session.commit()
        clouds.forget_drivers()
        return account


@blp.route("/admin/cloud-accounts/<uuid:account_id>/test")
class CloudAccountTest(MethodView):
    @blp.arguments(CloudTestSchema)
    @blp.response(200, CloudTestResultSchema)
    @roles_required(Role.ADMIN)
    def post(self, data: dict[str, Any], account_id: uuid.UUID) -> dict[str, Any]:
        """Try the account: list its sizes, and its images (or look up the ones named)."""
        platform_only()
        account = _account(account_id)
        try:
            return service.test_cloud_account(sealer(), account, data["images"])
        except clouds.DeployError as exc:
            raise ApiError(
                422, f"the cloud account does not work: {exc}", slug="cloud-account-failed"
            ) from None


# ------------------------------------------------------------------ customers' own accounts
class OwnCloudAccountSchema(CloudAccountSchema):
    class Meta:
        exclude = ("slug", "is_active", "key_name")

    organisation_id = fields.UUID(
        load_default=None, load_only=True, metadata={"description": "needed if you act for several customers"}
    )
    owner_id = fields.UUID(dump_only=True)


class OwnerArgs(Schema):
    organisation_id = fields.UUID(load_default=None)


def _own(identity: Identity, account_id: uuid.UUID, organisation_id: uuid.UUID | None) -> CloudAccount:
    found = own.find(current_session(), identity.customer(organisation_id, "query"), account_id)
    if found is None:
        raise ApiError(404, "no such cloud account")
    return found


@blp.route("/customer/cloud-accounts")
class OwnCloudAccounts(MethodView):
    @blp.arguments(OwnerArgs, location="query")
    @blp.response(200, OwnCloudAccountSchema(many=True))
    @roles_required(Role.CUSTOMER)
    def get(self, args: dict[str, Any]) -> list[CloudAccount]:
        """Your organisation's own cloud accounts (credentials are never shown)."""
        identity = require_identity()
        return own.owned(current_session(), identity.customer(args["organisation_id"], "query"))

    @blp.arguments(OwnCloudAccountSchema)
    @blp.response(201, OwnCloudAccountSchema)
    @roles_required(Role.CUSTOMER)
    def post(self, data: dict[str, Any]) -> CloudAccount:
        """Add a cloud account of your own (AWS: ``ec2`` with ``key`` and ``secret``; Azure:
        ``azure_arm`` with ``tenant_id``, ``subscription_id``, ``key`` (application id) and
        ``secret``; or any Libcloud provider's fields). The credentials are tried with one
        call to the cloud first: if it fails, 422 with the cloud's answer, and nothing is
        kept. Order with ``own_cloud_account`` to run a product there; you are then charged
        for its licence only."""
        identity = require_identity()
        owner_id = identity.customer(data.pop("organisation_id"))
        session = current_session()
        try:
            account = own.add(
                session, sealer(), owner_id, data, allow_private=current_config().allow_private_targets
            )
        except service.CloudAccountError as exc:
            session.rollback()
            raise _invalid(exc) from None
        session.commit()
        return account


@blp.route("/customer/cloud-accounts/<uuid:account_id>")
class OwnCloudAccountResource(MethodView):
    @blp.arguments(OwnerArgs, location="query")
    @blp.response(200, OwnCloudAccountSchema)
    @roles_required(Role.CUSTOMER)
    def get(self, args: dict[str, Any], account_id: uuid.UUID) -> CloudAccount:
        """One of your own cloud accounts."""
        return _own(require_identity(), account_id, args["organisation_id"])

    @blp.arguments(OwnerArgs, location="query")
    @blp.response(204)
    @roles_required(Role.CUSTOMER)
    def delete(self, args: dict[str, Any], account_id: uuid.UUID) -> None:
        """Forget the account and its credentials: refused (422) while an instance runs in it."""
        session = current_session()
        account = _own(require_identity(), account_id, args["organisation_id"])
        try:
            own.remove(session, sealer(), account)
        except own.InUse as exc:
            session.rollback()
            raise ApiError(422, str(exc), slug="cloud-account-in-use") from None
        session.commit()


# ------------------------------------------------------------------ deployments
def _visible(identity: Identity) -> sa.ColumnElement[bool]:
    return visible_rows(
        identity,
        Deployment.marketplace_id,
        Deployment.customer_id,
        lambda vendors: Deployment.vendor_id.in_(vendors),
    )


def _deployment(deployment_id: uuid.UUID) -> Deployment:
    found = current_session().scalar(
        sa.select(Deployment).where(Deployment.id == deployment_id, _visible(require_identity()))
    )
    if found is None:
        raise ApiError(404, "no such deployment")
    return found


@blp.route("/deployments")
class Deployments(MethodView):
    @blp.arguments(DeploymentListArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(DeploymentSchema))
    @roles_required(Role.CUSTOMER, Role.VENDOR, Role.ADMIN)
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Deployments you may see, newest first."""
        stmt = sa.select(Deployment).where(_visible(require_identity()))
        if filters["subscription_id"]:
            stmt = stmt.where(Deployment.subscription_id == filters["subscription_id"])
        if filters["state"]:
            stmt = stmt.where(Deployment.state == filters["state"])
        stmt = stmt.order_by(Deployment.created_at.desc(), Deployment.id)
        return paginate(current_session(), stmt, args["page"], args["per_page"])


@blp.route("/deployments/<uuid:deployment_id>")
class DeploymentResource(MethodView):
    @blp.response(200, DeploymentDetailSchema)
    @roles_required(Role.CUSTOMER, Role.VENDOR, Role.ADMIN)
    def get(self, deployment_id: uuid.UUID) -> dict[str, Any]:
        """A deployment with its history: every transition and failed attempt."""
        deployment = _deployment(deployment_id)
        return {
            **{k: getattr(deployment, k) for k in DeploymentSchema().fields},
            "history": service.history(current_session(), deployment.id),
        }


@blp.route("/admin/deployments/<uuid:deployment_id>/retry")
class DeploymentRetry(MethodView):
    @blp.response(200, DeploymentSchema)
    @roles_required(Role.ADMIN)
    def post(self, deployment_id: uuid.UUID) -> Deployment:
        """Start a failed deployment again from the beginning (it made nothing that is left)."""
        session = current_session()
        deployment = _deployment(deployment_id)
        try:
            service.retry(session, deployment)
        except service.NotRetryable as exc:
            session.rollback()
            raise ApiError(409, str(exc)) from None
        session.commit()
        engine.WAKE.set()
        return deployment


@blp.route("/admin/deployments/<uuid:deployment_id>/remove")
class DeploymentRemove(MethodView):
    @blp.response(200, DeploymentSchema)
    @roles_required(Role.ADMIN)
    def post(self, deployment_id: uuid.UUID) -> Deployment:
        """Remove the machine now, whatever its state (its subscription is not changed)."""
        session = current_session()
        deployment = _deployment(deployment_id)
        service.request_removal(session, deployment.subscription_id)
        session.commit()
        engine.WAKE.set()
        return deployment


# ------------------------------------------------------------------ statistics and logs
class StatsArgs(Schema):
    hours = fields.Integer(load_default=24, validate=validate.Range(min=1, max=24 * 31))


class StatsPointSchema(Schema):
    at = fields.AwareDateTime()
    reachable = fields.Boolean()
    cpu_percent = fields.Float(allow_none=True)
    memory_percent = fields.Float(allow_none=True)
    disk_percent = fields.Float(allow_none=True)
    received_per_second = fields.Float(allow_none=True, metadata={"description": "bytes"})
    sent_per_second = fields.Float(allow_none=True, metadata={"description": "bytes"})
    load1 = fields.Float(allow_none=True)


class StatsSchema(Schema):
    deployment_id = fields.UUID()
    reachable = fields.Boolean(allow_none=True, metadata={"description": "null: not collected yet"})
    unreachable_since = fields.AwareDateTime(allow_none=True)
    last_collected_at = fields.AwareDateTime(allow_none=True)
    points = fields.List(fields.Nested(StatsPointSchema))


class LogArgs(Schema):
    q = fields.String(
        load_default=None, validate=validate.Length(max=200), metadata={"description": "substring"}
    )
    path = fields.String(load_default=None, validate=validate.Length(max=500))
    since = fields.AwareDateTime(load_default=None)
    until = fields.AwareDateTime(load_default=None)


class LogLineSchema(Schema):
    id = fields.Integer()
    path = fields.String()
    at = fields.AwareDateTime()
    text = fields.String()
    escaped = fields.Boolean(metadata={"description": "the line was not UTF-8: bytes kept as \\xNN"})


@blp.route("/deployments/<uuid:deployment_id>/stats")
class DeploymentStats(MethodView):
    @blp.arguments(StatsArgs, location="query")
    @blp.response(200, StatsSchema)
    @roles_required(Role.CUSTOMER, Role.VENDOR, Role.ADMIN)
    def get(self, args: dict[str, Any], deployment_id: uuid.UUID) -> dict[str, Any]:
        """CPU, memory, disk and network of the instance over the last ``hours``."""
        deployment = _deployment(deployment_id)
        session = current_session()
        health = session.get(telemetry.InstanceHealth, deployment.id)
        since = utcnow() - dt.timedelta(hours=args["hours"])
        return {
            "deployment_id": deployment.id,
            "reachable": health.reachable if health else None,
            "unreachable_since": health.unreachable_since if health else None,
            "last_collected_at": health.last_collected_at if health else None,
            "points": telemetry.series(session, deployment.id, since),
        }


@blp.route("/deployments/<uuid:deployment_id>/logs")
class DeploymentLogs(MethodView):
    @blp.arguments(LogArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(LogLineSchema))
    @roles_required(Role.CUSTOMER, Role.VENDOR, Role.ADMIN)
    def get(self, filters: dict[str, Any], args: dict[str, Any], deployment_id: uuid.UUID) -> dict[str, Any]:
        """The instance's collected log lines, newest first, searchable."""
        deployment = _deployment(deployment_id)
        stmt = telemetry.search_logs(deployment.id, **filters)
        return paginate(current_session(), stmt, args["page"], args["per_page"])
