"""The notification centre: your notifications, the unread count, marking them read."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from cmw.accounts.auth import login_required, require_identity
from cmw.api.errors import ApiError
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.db import utcnow
from cmw.extensions import current_session
from cmw.notifications.consumers import in_marketplace, unread_count
from cmw.notifications.models import Notification

blp = Blueprint("notifications", __name__, url_prefix="/api/v1", description="Notification centre")


class NotificationSchema(Schema):
    id = fields.UUID()
    kind = fields.String()
    title = fields.String()
    body = fields.String()
    link = fields.String(allow_none=True)
    created_at = fields.AwareDateTime()
    read_at = fields.AwareDateTime(allow_none=True)


class NotificationPageSchema(page_of(NotificationSchema)):  # type: ignore[misc]
    unread = fields.Integer(metadata={"description": "unread notifications in all"})


class NotificationArgs(Schema):
    unread = fields.Boolean(load_default=None)


class UnreadSchema(Schema):
    unread = fields.Integer()


@blp.route("/me/notifications")
class MyNotifications(MethodView):
    @blp.arguments(NotificationArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, NotificationPageSchema)
    @login_required
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Your notifications in this marketplace, newest first, with the unread count."""
        identity = require_identity()
        stmt = sa.select(Notification).where(
            Notification.user_id == identity.user.id,
            sa.or_(
                Notification.marketplace_id == identity.marketplace.id, Notification.marketplace_id.is_(None)
            ),
        )
        if filters["unread"] is not None:
            stmt = stmt.where(
                Notification.read_at.is_(None) if filters["unread"] else Notification.read_at.is_not(None)
            )
        page = paginate(
            current_session(),
            stmt.order_by(Notification.created_at.desc(), Notification.id),
            args["page"],
            args["per_page"],
        )
        return {**page, "unread": unread_count(current_session(), identity.user.id, identity.marketplace.id)}


@blp.route("/me/notifications/<uuid:notification_id>/read")
class ReadNotification(MethodView):
    @blp.response(200, UnreadSchema)
    @login_required
    def post(self, notification_id: uuid.UUID) -> dict[str, int]:
        """Mark one notification read; answers the unread count."""
        identity = require_identity()
        notification = current_session().get(Notification, notification_id)
        if notification is None or notification.user_id != identity.user.id:
            raise ApiError(404, "no such notification")
        if notification.read_at is None:
            notification.read_at = utcnow()
            current_session().commit()
        return {"unread": unread_count(current_session(), identity.user.id, identity.marketplace.id)}


@blp.route("/me/notifications/read-all")
class ReadAllNotifications(MethodView):
    @blp.response(200, UnreadSchema)
    @login_required
    def post(self) -> dict[str, int]:
        """Mark every notification read."""
        identity = require_identity()
        current_session().execute(
            sa.update(Notification)
            .where(
                Notification.user_id == identity.user.id,
                Notification.read_at.is_(None),
                in_marketplace(identity.marketplace.id),
            )
            .values(read_at=utcnow())
        )
        current_session().commit()
        return {"unread": 0}
