"""Serving stored files from the local folder backend (S3 files are fetched from S3
through presigned URLs instead). Only files recorded in ``stored_files`` are served."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue

from cassetto import IMMUTABLE_CACHE_CONTROL, NotFound, Storage
from cmw.api.errors import ApiError
from cmw.assets.models import StoredFile
from cmw.extensions import current_session

bp = Blueprint("assets", __name__)


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
    return Response(
        chunks,
        mimetype=row.content_type,
        headers={
            "Content-Length": str(row.size),
            "ETag": f'"{etag}"',
            "Cache-Control": IMMUTABLE_CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
        },
        direct_passthrough=True,
    )
