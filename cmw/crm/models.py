"""``CrmLink``: which HubSpot object stands for which of ours. ``CrmCall``: the record of
every request sent to the CRM and what came back."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from cmw.db import utcnow
from cmw.extensions import db


class CrmLink(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "crm_links"

    #: ``company`` (an organisation), ``contact`` (a user) or ``deal`` (a subscription)
    object_type: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    local_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    #: the CRM's id of the object
    remote_id: Mapped[str] = mapped_column(sa.String(100))
    synced_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CrmCall(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "crm_calls"
    __table_args__ = (sa.Index("ix_crm_calls_object", "object_type", "local_id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    object_type: Mapped[str] = mapped_column(sa.String(20))
    local_id: Mapped[uuid.UUID | None]
    method: Mapped[str] = mapped_column(sa.String(10))
    path: Mapped[str] = mapped_column(sa.String(300))
    #: the JSON body sent
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: the HTTP status; NULL when no answer came
    status: Mapped[int | None]
    #: the first 1,000 characters of the answer, or why there was none
    response: Mapped[str] = mapped_column(sa.Text, default="")
