"""``StoredFile``: one row per file in the asset store. ``Image``: an accepted upload with
its renditions and, for logos, the background colour to show it on."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cmw.db import Timestamps, UUIDPrimaryKey
from cmw.extensions import db


class StoredFile(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "stored_files"

    #: key in the store, content-addressed: ``sha256/ab/cd/<hex>.<ext>``
    key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    #: ``file`` or ``s3``: where the bytes are
    backend: Mapped[str] = mapped_column(sa.String(10))
    #: bytes
    size: Mapped[int] = mapped_column(sa.BigInteger)
    #: hex SHA-256 of the content
    sha256: Mapped[str] = mapped_column(sa.String(64))
    #: MIME type served with it
    content_type: Mapped[str] = mapped_column(sa.String(100))
    #: pixels, for images
    width: Mapped[int | None]
    height: Mapped[int | None]


class Image(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "images"

    #: tenant of the uploader
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"))
    uploaded_by_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    #: the upload, metadata stripped, in its own format
    original_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("stored_files.id", ondelete="RESTRICT"))
    #: WebP renditions: 160x160, 480x360 and 1280x960 boxes
    thumb_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("stored_files.id", ondelete="RESTRICT"))
    card_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("stored_files.id", ondelete="RESTRICT"))
    large_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("stored_files.id", ondelete="RESTRICT"))
    #: ``#rrggbb`` that the image reads well on (used behind logos)
    background_colour: Mapped[str] = mapped_column(sa.String(7))
    #: displayed size of the original
    width: Mapped[int]
    height: Mapped[int]

    original: Mapped[StoredFile] = relationship(foreign_keys=[original_id], lazy="joined")
    thumb: Mapped[StoredFile] = relationship(foreign_keys=[thumb_id], lazy="joined")
    card: Mapped[StoredFile] = relationship(foreign_keys=[card_id], lazy="joined")
    large: Mapped[StoredFile] = relationship(foreign_keys=[large_id], lazy="joined")
