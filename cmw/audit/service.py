"""Writing the audit log: what people do through the API and the pages (every successful
change they ask for), and what changes money or machines, from the events that say so
(in the same transaction as the change)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import sqlalchemy as sa
from flask import Response, g, has_request_context, request
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from cmw.accounts.auth import current_identity
from cmw.audit.models import AuditEntry
from cmw.db import utcnow
from cmw.events import service as events
from cmw.extensions import current_session
from cmw.marketplaces.service import subtree

log = logging.getLogger(__name__)

#: set on ``g`` once the request's entry is in a transaction
_WRITTEN = "audit_entry_written"
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: requests not worth an entry: signing in and out, and usage records (kept themselves)
NOT_AUDITED = frozenset(
    {
        "accounts.SessionResource",
        "pages.sign_in",
        "pages.sign_out",
        "pages.sign_up",
        "usage.UsageBatches",
        "usage.CostEstimates",
        "usage.PriceSimulation",
        "notifications.ReadNotification",
        "notifications.ReadAllNotifications",
        "pages.notifications_read",
    }
)


def _request_entry(status: int | None) -> dict[str, Any] | None:
    """The entry (column values) for this request, if it is a change a signed-in person asked for."""
    if request.method not in CHANGES or request.endpoint in NOT_AUDITED:
        return None
    identity = current_identity()
    if identity is None:
        return None
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    args = {k: str(v) for k, v in (request.view_args or {}).items()}
    object_key = next(iter(args), None)
    detail: dict[str, object] = {"endpoint": request.endpoint, **args}
    if status is not None:
        detail["status"] = status
    return {
        "at": utcnow(),
        "marketplace_id": identity.marketplace.id,
        "actor_id": identity.user.id,
        "actor": identity.user.email,
        "action": f"{request.method} {rule}",
        "object_type": object_key.removesuffix("_id") if object_key else None,
        "object_id": args[object_key][:120] if object_key else None,
        "detail": detail,
        "ip": request.remote_addr,
    }


@event.listens_for(Session, "before_commit", insert=True)  # before the flush of cmw.catalog.cache
def with_the_change(session: Session) -> None:
    """The request's entry goes into the transaction that commits the change it asked for:
    written with it or not at all, and with no transaction of its own after the answer.
    Only the request's own session, only its outermost transaction; a commit that fails
    (a view that retries after a conflict) takes the entry with it, and the next one adds
    it again. Added as the transaction commits, or earlier by a view that calls this before
    the flush writing its change, so that one flush writes both."""
    if (
        not has_request_context()
        or g.get(_WRITTEN)
        or session.info.get(_WRITTEN)
        or session.in_nested_transaction()
        or session is not current_session()
    ):
        return
    entry = _request_entry(None)
    if entry is not None:
        session.info[_WRITTEN] = True
        if not events.add_audit_row(session, entry):  # written with the events of a together() block
            session.add(AuditEntry(**entry))


@event.listens_for(Session, "after_commit")
def _written(session: Session) -> None:
    if session.info.pop(_WRITTEN, False) and has_request_context():
        g.setdefault(_WRITTEN, True)


@event.listens_for(Session, "after_soft_rollback")
def _not_written(session: Session, previous: SessionTransaction) -> None:
    # the entry is added to the outermost transaction only: a savepoint's rollback keeps it
    if not previous.nested:
        session.info.pop(_WRITTEN, None)


def record_request(response: Response) -> Response:
    """``after_request``: an entry for every change a signed-in person asked for and got,
    when the request did not commit one with its change (a view that changes nothing in
    the database, or writes through a connection of its own)."""
    if response.status_code >= 400 or g.get(_WRITTEN):
        return response
    entry = _request_entry(response.status_code)
    if entry is None:
        return response
    g.setdefault(_WRITTEN, True)
    session = current_session()
    try:
        session.add(AuditEntry(**entry))
        session.commit()
    except Exception:
        session.rollback()
        log.exception("could not write the audit entry for %s", entry["action"])
    return response


def search(
    marketplace_id: uuid.UUID,
    *,
    platform: bool,
    actor: str | None = None,
    action: str | None = None,
    object_id: str | None = None,
) -> sa.Select[tuple[AuditEntry]]:
    """Entries of the marketplace and those under it (the platform's admins: every one),
    newest first."""
    stmt = sa.select(AuditEntry)
    if not platform:
        stmt = stmt.where(AuditEntry.marketplace_id.in_(subtree(marketplace_id)))
    if actor:
        stmt = stmt.where(AuditEntry.actor.icontains(actor, autoescape=True))
    if action:
        stmt = stmt.where(AuditEntry.action.icontains(action, autoescape=True))
    if object_id:
        stmt = stmt.where(AuditEntry.object_id == object_id)
    return stmt.order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
