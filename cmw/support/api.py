"""Support tickets API: open (``multipart/form-data``, with ``files``), read the thread,
answer, close, download an attachment; the inbound e-mail endpoint a mail gateway posts
replies to; the marketplace's forwarding settings (admins)."""

from __future__ import annotations

import hmac
import uuid
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from cassetto import NotFound, Storage
from cassetto.files import CheckedFile, RefusedFile, check_attachment
from cmw.accounts.auth import Identity, login_required, require_identity, roles_required
from cmw.accounts.models import Role
from cmw.api.errors import ApiError, invalid
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.assets.api import storage
from cmw.crypto import sealer
from cmw.extensions import current_config, current_session
from cmw.outbound import OutboundError
from cmw.support import mail, service
from cmw.support.models import (
    AuthorRole,
    SupportSettings,
    Ticket,
    TicketAttachment,
    TicketMessage,
    TicketStatus,
)

blp = Blueprint("support", __name__, url_prefix="/api/v1", description="Support tickets")


class AttachmentSchema(Schema):
    id = fields.UUID()
    filename = fields.String()
    content_type = fields.String()
    size = fields.Integer()
    url = fields.Method("_url")

    def _url(self, attachment: Any) -> str:
        return f"/api/v1/support/attachments/{attachment.id}"


class MessageSchema(Schema):
    id = fields.UUID()
    author_email = fields.String()
    author_name = fields.String()
    author_role = fields.String()
    body = fields.String()
    via = fields.String(metadata={"description": "api, web or email"})
    created_at = fields.AwareDateTime()
    attachments = fields.List(fields.Nested(AttachmentSchema))


class TicketSchema(Schema):
    id = fields.UUID()
    ref = fields.String(metadata={"example": "T-7KQ2M9XD"})
    subject = fields.String()
    status = fields.String()
    customer_id = fields.UUID()
    vendor_id = fields.UUID(allow_none=True)
    subscription_id = fields.UUID(allow_none=True)
    deployment_id = fields.UUID(allow_none=True)
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()
    closed_at = fields.AwareDateTime(allow_none=True)


class ThreadSchema(TicketSchema):
    messages = fields.List(fields.Nested(MessageSchema))


class TicketArgs(Schema):
    status = fields.String(validate=validate.OneOf([s.value for s in TicketStatus]), load_default=None)


class OpenTicketSchema(Schema):
    subject = fields.String(required=True, validate=validate.Length(min=1, max=200))
    body = fields.String(required=True, validate=validate.Length(min=1, max=service.MAX_BODY))
    subscription_id = fields.UUID(load_default=None)
    deployment_id = fields.UUID(load_default=None)
    organisation_id = fields.UUID(load_default=None, metadata={"description": "needed if you are in several"})


class MessageFormSchema(Schema):
    body = fields.String(required=True, validate=validate.Length(min=1, max=service.MAX_BODY))


class FilesSchema(Schema):
    files = fields.List(
        fields.Raw(metadata={"type": "string", "format": "binary"}),
        load_default=list,
        metadata={
            "description": (
                f"up to {service.MAX_ATTACHMENTS} files, {service.MAX_ATTACHMENT // 1_048_576} MB each"
            )
        },
    )


class ForwardingSchema(Schema):
    forward_url = fields.String(
        allow_none=True,
        load_default=None,
        validate=validate.Length(max=2000),
        metadata={"description": "https://"},
    )
    forward_email = fields.Email(allow_none=True, load_default=None)


class ForwardingOutSchema(Schema):
    forward_url = fields.String(allow_none=True)
    forward_email = fields.String(allow_none=True)
    secret = fields.String(
        metadata={"description": "the forward webhook's signing secret, shown when the URL is set"}
    )


class InboundSchema(Schema):
    ticket_id = fields.UUID()
    message_id = fields.UUID(allow_none=True)
    duplicate = fields.Boolean()
    refused = fields.List(fields.String(), metadata={"description": "attachments not accepted, with why"})


def checked_files(uploads: list[Any]) -> list[CheckedFile]:
    """The uploads, each checked; 422 naming the first refused one and why."""
    if len(uploads) > service.MAX_ATTACHMENTS:
        raise invalid("files", f"at most {service.MAX_ATTACHMENTS} attachments a message", "files")
    checked = []
    for upload in uploads:
        data = upload.read(service.MAX_ATTACHMENT + 1)
        try:
            checked.append(check_attachment(upload.filename, data, max_bytes=service.MAX_ATTACHMENT))
        except RefusedFile as exc:
            raise ApiError(
                413 if len(data) > service.MAX_ATTACHMENT else 422,
                f"attachment refused: {exc.reason}",
                errors=[{"location": "files", "field": "files", "message": exc.reason}],
            ) from None
    return checked


def _author(identity: Identity, ticket: Ticket) -> service.Author:
    role = service.participant(ticket, identity.memberships)
    if role is None:
        raise ApiError(404, "no such ticket")
    return service.Author.of(identity.user, role)


def _ticket(ticket_id: uuid.UUID) -> tuple[Ticket, service.Author]:
    identity = require_identity()
    ticket = current_session().get(Ticket, ticket_id)
    if ticket is None or ticket.marketplace_id != identity.marketplace.id:
        raise ApiError(404, "no such ticket")
    return ticket, _author(identity, ticket)


def _run(action: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return action(*args, **kwargs)
    except service.TicketError as exc:
        current_session().rollback()
        raise invalid(exc.field, exc.message, "form") from None


@blp.route("/support/tickets")
class Tickets(MethodView):
    @blp.arguments(TicketArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(TicketSchema))
    @login_required
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Tickets you take part in (a customer's, a vendor's; an admin: all of the marketplace),
        the latest activity first."""
        identity = require_identity()
        stmt = service.visible(identity.marketplace.id, identity.memberships)
        if filters["status"]:
            stmt = stmt.where(Ticket.status == TicketStatus(filters["status"]))
        stmt = stmt.order_by(Ticket.updated_at.desc(), Ticket.id)
        return paginate(current_session(), stmt, args["page"], args["per_page"])

    @blp.arguments(OpenTicketSchema, location="form")
    @blp.arguments(FilesSchema, location="files")
    @blp.response(201, ThreadSchema)
    @roles_required(Role.CUSTOMER)
    def post(self, data: dict[str, Any], files: dict[str, Any]) -> Ticket:
        """Open a ticket, about a subscription or an instance of yours or about nothing in
        particular, with attachments (images, PDF, text and logs, ZIP; no programs)."""
        identity = require_identity()
        customer_id = identity.customer(data["organisation_id"], "form")
        checked = checked_files(request.files.getlist("files"))
        ticket = _run(
            service.open_ticket,
            current_session(),
            storage(),
            marketplace_id=identity.marketplace.id,
            customer_id=customer_id,
            author=service.Author.of(identity.user, AuthorRole.CUSTOMER),
            subject=data["subject"],
            body=data["body"],
            subscription_id=data["subscription_id"],
            deployment_id=data["deployment_id"],
            files=checked,
        )
        current_session().commit()
        return ticket


@blp.route("/support/tickets/<uuid:ticket_id>")
class TicketThread(MethodView):
    @blp.response(200, ThreadSchema)
    @login_required
    def get(self, ticket_id: uuid.UUID) -> Ticket:
        """The ticket and its whole thread, oldest message first."""
        return _ticket(ticket_id)[0]


@blp.route("/support/tickets/<uuid:ticket_id>/messages")
class TicketMessages(MethodView):
    @blp.arguments(MessageFormSchema, location="form")
    @blp.arguments(FilesSchema, location="files")
    @blp.response(201, MessageSchema)
    @login_required
    def post(self, data: dict[str, Any], files: dict[str, Any], ticket_id: uuid.UUID) -> Any:
        """Answer in the thread (``multipart/form-data``: ``body``, ``files``). The customer's
        answer opens a closed ticket again."""
        ticket, author = _ticket(ticket_id)
        checked = checked_files(request.files.getlist("files"))
        message = _run(
            service.add_message, current_session(), storage(), ticket, author, data["body"], files=checked
        )
        current_session().commit()
        return message


@blp.route("/support/tickets/<uuid:ticket_id>/close")
class CloseTicket(MethodView):
    @blp.response(200, TicketSchema)
    @login_required
    def post(self, ticket_id: uuid.UUID) -> Ticket:
        """Close the ticket; a later message from the customer opens it again."""
        ticket, author = _ticket(ticket_id)
        service.close(current_session(), ticket, author)
        current_session().commit()
        return ticket


def serve_attachment(storage: Storage, attachment: Any) -> Response:
    """The file as a download that no browser renders or runs."""
    try:
        chunks = storage.open_stream(attachment.key)
    except NotFound:
        raise ApiError(404, "the file is missing from storage") from None
    return Response(
        chunks,
        mimetype=attachment.content_type,
        headers={
            "Content-Length": str(attachment.size),
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(attachment.filename)}",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-cache",
        },
        direct_passthrough=True,
    )


@blp.route("/support/inbound-email")
class InboundEmail(MethodView):
    @blp.response(200, InboundSchema)
    def post(self) -> dict[str, Any]:
        """A reply e-mail (the raw RFC 5322 message as the body, ``message/rfc822``), posted by
        the mail gateway with ``Authorization: Bearer <MERCATO_INBOUND_EMAIL_TOKEN>``; it is
        added to its ticket's thread. 422 with the reason when it belongs to none."""
        expected = current_config().inbound_email_token
        if not expected:
            raise ApiError(404, "inbound e-mail is not enabled (set MERCATO_INBOUND_EMAIL_TOKEN)")
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(
                401, "a wrong or missing inbound e-mail token", headers={"WWW-Authenticate": "Bearer"}
            )
        raw = request.get_data(cache=False)
        if not raw:
            raise invalid("body", "send the e-mail's raw bytes as the body", "body")
        try:
            received = mail.receive(current_session(), storage(), raw, max_attachment=service.MAX_ATTACHMENT)
        except mail.InboundError as exc:
            current_session().rollback()
            raise ApiError(422, str(exc), slug="inbound-email-refused") from None
        current_session().commit()
        return {
            "ticket_id": received.ticket.id,
            "message_id": received.message.id if received.message else None,
            "duplicate": received.duplicate,
            "refused": received.refused,
        }


@blp.route("/admin/support/forwarding")
class Forwarding(MethodView):
    @blp.response(200, ForwardingOutSchema)
    @roles_required(Role.ADMIN)
    def get(self) -> dict[str, Any]:
        """Where this marketplace's tickets are forwarded."""
        found = current_session().get(SupportSettings, require_identity().marketplace.id)
        return {
            "forward_url": found.forward_url if found else None,
            "forward_email": found.forward_email if found else None,
        }

    @blp.arguments(ForwardingSchema)
    @blp.response(200, ForwardingOutSchema)
    @roles_required(Role.ADMIN)
    def put(self, data: dict[str, Any]) -> dict[str, Any]:
        """Forward customers' ticket messages to an external ticket system: an HTTPS webhook
        (signed like vendor webhooks; a new secret is made, and shown, whenever the URL
        changes) and/or an e-mail address, whose replies come back into the thread."""
        session = current_session()
        try:
            found, secret = service.set_forwarding(
                session,
                sealer(),
                require_identity().marketplace.id,
                url=data["forward_url"],
                email=data["forward_email"],
                allow_private=current_config().allow_private_targets,
            )
        except OutboundError as exc:
            session.rollback()
            raise invalid("forward_url", f"the URL {exc}") from None
        session.commit()
        answer = {"secret": secret} if secret else {}
        return {**answer, "forward_url": found.forward_url, "forward_email": found.forward_email}


@blp.route("/support/attachments/<uuid:attachment_id>")
class AttachmentFile(MethodView):
    @blp.response(200, {"format": "binary", "type": "string"}, content_type="application/octet-stream")
    @login_required
    def get(self, attachment_id: uuid.UUID) -> Response:
        """Download an attachment by its id (to the ticket's participants only)."""
        session = current_session()
        ticket = session.scalar(
            sa.select(Ticket)
            .join(TicketMessage, TicketMessage.ticket_id == Ticket.id)
            .join(TicketAttachment, TicketAttachment.message_id == TicketMessage.id)
            .where(TicketAttachment.id == attachment_id)
        )
        if ticket is None:
            raise ApiError(404, "no such attachment")
        ticket, _ = _ticket(ticket.id)
        attachment = service.attachment_of(session, ticket, attachment_id)
        assert attachment is not None
        return serve_attachment(storage(), attachment)
