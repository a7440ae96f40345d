"""Checks every request passes before it reaches a view.

``refuse_nul``: a NUL character in the path, a query parameter, a form field or a JSON
string is refused (422 in the API, 400 on the pages). PostgreSQL cannot store or compare
one in a text column, so it would otherwise fail deep inside a query; no field of
Mercato's takes one.

``security_headers``: every answer says ``nosniff`` and keeps the referrer to the origin
across sites; every page also gets a ``Content-Security-Policy`` that runs only the
platform's own script file (no inline script, so an injected ``<script>`` does nothing),
and may not be framed by another site (clickjacking). Answers with their own policy (an
uploaded file, a ticket attachment) keep it."""

from __future__ import annotations

from typing import Any

from flask import Response, abort, request

from cmw.api.errors import invalid, is_api_request

NUL = "\x00"


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _refuse(location: str, field: str) -> None:
    message = "must not contain NUL characters"
    if is_api_request():
        raise invalid(field, message, location=location)
    abort(400, description=f"{field}: {message}")


def refuse_nul() -> None:
    """``before_request``: refuse NUL characters in what the request says."""
    if NUL in request.path:
        _refuse("path", "path")
    for name, value in request.args.items(multi=True):
        if NUL in name or NUL in value:
            _refuse("query", name.replace(NUL, "\\0"))
    if request.mimetype == "application/json":
        raw = request.get_data(cache=True)
        # cheap first: only then is the body read as JSON here
        if (b"\\u0000" in raw or b"\x00" in raw) and _has_nul(request.get_json(silent=True)):
            _refuse("json", "body")
    elif request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for name, value in request.form.items(multi=True):
            if NUL in name or NUL in value:
                _refuse("form", name.replace(NUL, "\\0"))


#: the pages' policy: scripts, styles, connections and frames from the platform only
#: (inline styles allowed: a marketplace's colours); images also from the asset store
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: http: https:; connect-src 'self'; object-src 'none'; "
    "base-uri 'self'; frame-ancestors 'none'"
)


def security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
    return response
