"""Accepting an image upload: validate and process it (cassetto), store each distinct file
once, and record it. Nothing is recorded when the image is refused."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cassetto import InvalidImage, ProcessedImage, S3Storage, Storage, StoredBlob, process_image, store_image
from cmw.assets.models import Image, StoredFile

__all__ = ["InvalidImage", "image_view", "save_image", "url_for_file"]

RENDITIONS = ("thumb", "card", "large")


def _backend(storage: Storage) -> str:
    return "s3" if isinstance(storage, S3Storage) else "file"


def _record(session: Session, storage: Storage, blob: StoredBlob) -> StoredFile:
    """The row for ``blob``'s key, created the first time that content is stored."""
    existing = session.scalar(sa.select(StoredFile).where(StoredFile.key == blob.key))
    if existing is not None:
        return existing
    row = StoredFile(
        key=blob.key,
        backend=_backend(storage),
        size=blob.size,
        sha256=blob.sha256,
        content_type=blob.content_type,
        width=blob.width,
        height=blob.height,
    )
    session.add(row)
    session.flush()
    return row


def save_image(
    session: Session,
    storage: Storage,
    data: bytes,
    *,
    marketplace_id: uuid.UUID,
    uploaded_by_id: uuid.UUID | None,
    max_bytes: int = 5 * 1024 * 1024,
) -> Image:
    """Process, store and record an uploaded image; raises InvalidImage with the reason."""
    processed: ProcessedImage = process_image(data, max_bytes=max_bytes)
    # Bytes first, rows second: a row never points at a file that is not there. A file
    # stored for a transaction that then rolls back is harmless (content-addressed).
    store_image(storage, processed)
    files = {name: _record(session, storage, processed.renditions[name]) for name in RENDITIONS}
    image = Image(
        marketplace_id=marketplace_id,
        uploaded_by_id=uploaded_by_id,
        original_id=_record(session, storage, processed.original).id,
        thumb_id=files["thumb"].id,
        card_id=files["card"].id,
        large_id=files["large"].id,
        background_colour=processed.background_colour,
        width=processed.width,
        height=processed.height,
    )
    session.add(image)
    session.flush()
    return image


def url_for_file(storage: Storage, key: str, route_prefix: str = "/assets/") -> str:
    """A browser URL: presigned and time-limited on S3, the streaming route otherwise."""
    return storage.url(key) or f"{route_prefix}{key}"


def image_view(storage: Storage, image: Image | None) -> dict[str, Any] | None:
    if image is None:
        return None
    return {
        "id": image.id,
        "width": image.width,
        "height": image.height,
        "background_colour": image.background_colour,
        "urls": {
            "original": url_for_file(storage, image.original.key),
            **{name: url_for_file(storage, getattr(image, name).key) for name in RENDITIONS},
        },
    }
