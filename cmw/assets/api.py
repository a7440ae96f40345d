"""Serving stored files from the local folder backend (S3 files are fetched from S3
through presigned URLs instead). Only files recorded in ``stored_files`` are served."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue

from cassetto import ACCEPTED_CONTENT_TYPES, IMMUTABLE_CACHE_CONTROL, NotFound, Storage
from cmw.api.errors import ApiError
from cmw.assets.models import StoredFile
from cmw.extensions import current_session

bp = Blueprint("assets", __name__)

#: what uploads become (cassetto re-encodes every image to one of these): shown inline
SERVED_INLINE = frozenset(ACCEPTED_CONTENT_TYPES.values())
ASSET_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


def storage() -> Storage:
    store: Storage = current_app.extensions["mercato.storage"]
    return store


@bp.get("/assets/<path:key>")
def stored_file(key: str) -> ResponseReturnValue:
    row = current_session().scalar(sa.select(StoredFile).where(StoredFile.key == key))
    if row is None:
        raise ApiError(404, "no such file")
    etag = row.sha256
    if request.if_none_match.contains(etag):
        return Response(status=304, headers={"ETag": f'"{etag}"', "Cache-Control": IMMUTABLE_CACHE_CONTROL})
    try:
        chunks = storage().open_stream(key)
    except NotFound:
        raise ApiError(404, "the file is missing from storage") from None
    headers = {
        "Content-Length": str(row.size),
        "ETag": f'"{etag}"',
        "Cache-Control": IMMUTABLE_CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
        # opened on its own, a file is a picture in a sandbox: no script, no form, no frame
        "Content-Security-Policy": ASSET_CSP,
    }
    if row.content_type not in SERVED_INLINE:  # never rendered by a browser: a download
        headers["Content-Disposition"] = "attachment"
    return Response(
        chunks,
        mimetype=row.content_type if row.content_type in SERVED_INLINE else "application/octet-stream",
        headers=headers,
        direct_passthrough=True,
    )
