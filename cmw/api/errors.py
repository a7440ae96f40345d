"""``application/problem+json`` (RFC 9457) errors for every 4xx and 5xx of the API.

Each problem has a stable ``type`` (``urn:mercato:problem:<slug>``), a ``title``, the
HTTP ``status``, a human ``detail``, and for validation errors ``errors``: one entry per
offending field with where it was (json, query, path, headers), its dotted name and why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Response, json, request
from marshmallow import Schema, fields
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"
TYPE_PREFIX = "urn:mercato:problem:"

#: slug per HTTP status for errors raised without an explicit type
DEFAULT_SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    410: "gone",
    412: "precondition-failed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    428: "precondition-required",
    429: "too-many-requests",
    500: "internal-error",
    503: "service-unavailable",
}


class ApiError(Exception):
    """Raise from a view or a service boundary to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or DEFAULT_SLUGS.get(status, "error")
        self.errors = errors
        self.headers = dict(headers or {})
        self.extra = extra


def invalid(field: str, message: str, location: str = "json") -> ApiError:
    """422: one field of the request is wrong, and why."""
    return ApiError(
        422, f"invalid input: {field}", errors=[{"location": location, "field": field, "message": message}]
    )


class FieldErrorSchema(Schema):
    location = fields.String(metadata={"description": "json, query, path, headers, form"})
    field = fields.String(metadata={"description": "dotted name of the field"})
    message = fields.String()


class ProblemSchema(Schema):
    """RFC 9457 problem details."""

    type = fields.String(required=True, metadata={"example": TYPE_PREFIX + "validation-error"})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    instance = fields.String()
    errors = fields.List(fields.Nested(FieldErrorSchema))


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    from http import HTTPStatus

    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + (slug or DEFAULT_SLUGS.get(status, "error")),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
    }
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def flatten_messages(messages: Any, location: str, prefix: str = "") -> Iterator[dict[str, str]]:
    """Turn marshmallow's nested error dict into one entry per field and message."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                name = prefix
            yield from flatten_messages(value, location, name)
    elif isinstance(messages, list | tuple):
        for item in messages:
            if isinstance(item, Mapping | list | tuple):
                yield from flatten_messages(item, location, prefix)
            else:
                yield {"location": location, "field": prefix, "message": str(item)}
    else:
        yield {"location": location, "field": prefix, "message": str(messages)}


def from_http_exception(error: HTTPException) -> Response:
    """Problem document for a werkzeug exception (including webargs' 422 and 400)."""
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    messages = data.get("messages")
    if status == 422 and isinstance(messages, Mapping):
        errors = [entry for location, msgs in messages.items() for entry in flatten_messages(msgs, location)]
        names = ", ".join(sorted({e["field"] or e["location"] for e in errors}))
        return problem_response(422, f"invalid input: {names}", errors=errors, headers=data.get("headers"))
    detail = data.get("message") or error.description or "error"
    if status == 405 and request.url_rule is None:
        detail = f"{request.method} is not allowed on {request.path}"
    headers = dict(error.get_headers())
    headers.pop("Content-Type", None)
    headers.update(data.get("headers") or {})
    return problem_response(status, str(detail), headers=headers)


def is_api_request() -> bool:
    return request.path.startswith(("/api/", "/assets/"))
