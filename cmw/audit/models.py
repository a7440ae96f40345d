"""``AuditEntry``: one thing someone (or the platform itself) did. The table takes inserts
only: triggers refuse UPDATE and DELETE (migration 0024), and no endpoint changes it."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from cmw.db import utcnow
from cmw.extensions import db


class AuditEntry(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("ix_audit_log_marketplace_at", "marketplace_id", "at"),
        sa.Index("ix_audit_log_object", "object_id"),
        sa.Index("ix_audit_log_actor", "actor_id"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    #: where it happened; no foreign keys, so the log outlives what it names
    marketplace_id: Mapped[uuid.UUID | None]
    #: who: the user (None: the platform itself, "system")
    actor_id: Mapped[uuid.UUID | None]
    #: the user's e-mail address at the time, or "system"
    actor: Mapped[str] = mapped_column(sa.String(254))
    #: "PATCH /api/v1/marketplace" for a request, the event's topic ("invoice.issued") otherwise
    action: Mapped[str] = mapped_column(sa.String(200), index=True)
    object_type: Mapped[str | None] = mapped_column(sa.String(60))
    object_id: Mapped[str | None] = mapped_column(sa.String(120))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: the client's address, for requests
    ip: Mapped[str | None] = mapped_column(sa.String(45))
