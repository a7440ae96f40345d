"""``/metrics`` for Prometheus, and the alerts the platform decides itself for its admins."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue
from flask.views import MethodView
from flask_smorest import Blueprint as ApiBlueprint
from marshmallow import Schema, fields
from prometheus_client import CONTENT_TYPE_LATEST

from cmw.accounts.auth import current_marketplace, roles_required
from cmw.accounts.models import Role
from cmw.api.errors import ApiError
from cmw.config import Config
from cmw.extensions import current_session
from cmw.monitoring import health
from cmw.monitoring.metrics import process_metrics

bp = Blueprint("monitoring", __name__)
blp = ApiBlueprint(
    "monitoring_api", __name__, url_prefix="/api/v1", description="Monitoring (platform admins)"
)


def current_snapshot() -> health.Snapshot:
    config: Config = current_app.config["MERCATO"]
    names = [consumer.name for consumer in current_app.extensions["mercato.consumers"]]
    return health.snapshot(current_session(), config, names)


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Every process's instruments and the platform's figures, in Prometheus's text format."""
    token = current_app.config["MERCATO"].metrics_token
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return Response("a valid bearer token is required\n", 401, {"WWW-Authenticate": "Bearer"})
    body = process_metrics() + health.snapshot_metrics(current_snapshot())
    current_session().rollback()  # read only
    return Response(body, 200, {"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


class AlertSchema(Schema):
    name = fields.String(metadata={"description": "the rule's name, as in docker/prometheus/alerts.yml"})
    severity = fields.String(metadata={"description": "warning or critical"})
    summary = fields.String()
    items = fields.List(fields.String(), metadata={"description": "what it concerns"})


class AlertsSchema(Schema):
    at = fields.AwareDateTime()
    alerts = fields.List(fields.Nested(AlertSchema))


@blp.route("/admin/alerts")
class Alerts(MethodView):
    @blp.response(200, AlertsSchema)
    @roles_required(Role.ADMIN)
    def get(self) -> dict[str, Any]:
        """The platform's alerts firing now: deployments stuck in a state, a cloud account
        whose deployments fail, outbox lag, a failed billing run, the broker down or a queue
        backlog. The platform's admins only."""
        if current_marketplace().parent_id is not None:
            raise ApiError(404, "not found")
        snap = current_snapshot()
        return {"at": snap.at, "alerts": snap.alerts()}
