"""``GET /api/v1/admin/audit``: the audit log, searchable by admins; nothing changes it."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from cmw.accounts.auth import current_marketplace, roles_required
from cmw.accounts.models import Role
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.audit import service
from cmw.extensions import current_session

blp = Blueprint("audit", __name__, url_prefix="/api/v1", description="Audit log (admins)")


class AuditArgs(Schema):
    actor = fields.String(validate=validate.Length(max=254), metadata={"description": "part of the e-mail"})
    action = fields.String(
        validate=validate.Length(max=200), metadata={"description": 'part of it: "invoice.", "PATCH"'}
    )
    object_id = fields.String(validate=validate.Length(max=120), metadata={"description": "exactly"})


class AuditEntrySchema(Schema):
    id = fields.Integer()
    at = fields.AwareDateTime()
    marketplace_id = fields.UUID(allow_none=True)
    actor_id = fields.UUID(allow_none=True)
    actor = fields.String(metadata={"description": 'the e-mail address, or "system"'})
    action = fields.String()
    object_type = fields.String(allow_none=True)
    object_id = fields.String(allow_none=True)
    detail = fields.Dict()
    ip = fields.String(allow_none=True)


@blp.route("/admin/audit")
class AuditLog(MethodView):
    @blp.arguments(AuditArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(AuditEntrySchema))
    @roles_required(Role.ADMIN)
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Who did what to which object and when, newest first: of this marketplace and those
        under it (the platform's admins: everything). Append-only: no call changes it."""
        marketplace = current_marketplace()
        stmt = service.search(marketplace.id, platform=marketplace.parent_id is None, **filters)
        return paginate(current_session(), stmt, args["page"], args["per_page"])
