"""The API object: flask-smorest with problem+json errors and the OpenAPI document at
``/api/v1/openapi.json``."""

from __future__ import annotations

import http
import logging
from typing import Any

import psycopg
import sqlalchemy as sa
from flask import Flask, Response, render_template, request
from flask_smorest import Api
from flask_smorest.utils import prepare_response
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from cmw.accounts.api import blp as accounts_blp
from cmw.api.errors import (
    PROBLEM_MIMETYPE,
    ApiError,
    ProblemSchema,
    from_http_exception,
    is_api_request,
    problem_response,
)
from cmw.audit.api import blp as audit_blp
from cmw.billing.api import blp as billing_blp
from cmw.catalog.api import blp as catalog_blp
from cmw.catalog.reviews_api import blp as reviews_blp
from cmw.marketplaces.api import blp as marketplaces_blp
from cmw.monitoring.api import blp as monitoring_blp
from cmw.notifications.api import blp as notifications_blp
from cmw.orders.api import blp as orders_blp
from cmw.support.api import blp as support_blp
from cmw.usage.api import blp as usage_blp
from cmw.webhooks.api import blp as webhooks_blp
from deployer.api import blp as deployer_blp

log = logging.getLogger(__name__)

API_CONFIG: dict[str, Any] = {
    "API_TITLE": "Mercato API",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/api/v1",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": None,
    "API_SPEC_OPTIONS": {
        "info": {
            "description": (
                "JSON API of the Mercato marketplace. Authenticate with a personal API token "
                "(`Authorization: Bearer mct_...`) or the session cookie plus `X-CSRF-Token` "
                "on unsafe requests. Errors are `application/problem+json` (RFC 9457)."
            )
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "personal API token"},
                "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "session"},
            }
        },
        "security": [{"bearerAuth": []}, {"cookieAuth": []}, {}],
    },
}


class MercatoApi(Api):  # type: ignore[misc]
    """flask-smorest's Api answering every error with a problem document."""

    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self) -> None:
        """Document every error response as ``application/problem+json``, as sent."""
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if not (100 <= status < 200) and status not in (204, 304):
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_MIMETYPE)
            self.spec.components.response(status.name, response, lazy=True)
        default: dict[str, Any] = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(default, self.spec, PROBLEM_MIMETYPE)
        self.spec.components.response("DEFAULT_ERROR", default, lazy=True)

    def _register_error_handlers(self) -> None:
        self._app.register_error_handler(ApiError, handle_api_error)
        self._app.register_error_handler(CSRFError, handle_csrf_error)
        self._app.register_error_handler(HTTPException, handle_http_exception)
        self._app.register_error_handler(Exception, handle_unexpected)


def handle_api_error(error: ApiError) -> Response | tuple[str, int]:
    if not is_api_request():
        return _html_error(error.status, error.detail)
    return problem_response(
        error.status, error.detail, slug=error.slug, errors=error.errors, headers=error.headers, **error.extra
    )


def handle_csrf_error(error: CSRFError) -> Response | tuple[str, int]:
    detail = f"CSRF check failed: {error.description}"
    if not is_api_request():
        return _html_error(400, detail + " Reload the page and try again.")
    return problem_response(
        403, detail + " Send the X-CSRF-Token header from GET /api/v1/me.", slug="csrf-failed"
    )


def handle_http_exception(error: HTTPException) -> Response | tuple[str, int]:
    if not is_api_request():
        return _html_error(error.code or 500, error.description or "")
    return from_http_exception(error)


def handle_unexpected(error: Exception) -> Response | tuple[str, int]:
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    if (
        isinstance(error, sa.exc.OperationalError | psycopg.OperationalError)  # raw: COPY
        or (isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated)
    ):
        # the database ended the connection (a restart, a failover, an administrator) or
        # could not serve the query now: nothing was committed, and the same request made
        # again goes through on a new connection
        log.warning(
            "the database connection was lost during %s %s: %s",
            request.method,
            request.path,
            getattr(error, "orig", error),
        )
        if not is_api_request():
            return _html_error(503, "The database was briefly unavailable; nothing was saved. Try again.")
        return problem_response(
            503,
            "the database connection was lost; nothing was saved: send the request again",
            headers={"Retry-After": "1"},
        )
    log.exception("unhandled error", exc_info=error)
    if not is_api_request():
        return _html_error(500, "Something went wrong on our side; it has been logged.")
    return problem_response(500, "internal error; it has been logged")


def _html_error(status: int, detail: str) -> tuple[str, int]:
    return render_template("error.html", status=status, detail=detail), status


def register(app: Flask) -> MercatoApi:
    for key, value in API_CONFIG.items():
        app.config.setdefault(key, value)
    api = MercatoApi(app)
    api.register_blueprint(accounts_blp)
    api.register_blueprint(marketplaces_blp)
    api.register_blueprint(catalog_blp)
    api.register_blueprint(reviews_blp)
    api.register_blueprint(orders_blp)
    api.register_blueprint(notifications_blp)
    api.register_blueprint(deployer_blp)
    api.register_blueprint(usage_blp)
    api.register_blueprint(billing_blp)
    api.register_blueprint(monitoring_blp)
    api.register_blueprint(audit_blp)
    api.register_blueprint(webhooks_blp)
    api.register_blueprint(support_blp)
    return api
