"""The API foundation: /healthz, the OpenAPI document, problem+json for every error,
validation errors naming their fields, pagination."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient

from cmw.accounts.models import Role, User

PROBLEM = "application/problem+json"


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status
    assert body["type"] == f"urn:mercato:problem:{slug}"
    assert body["title"] and body["detail"]
    return body


def test_healthz_reports_database_and_broker(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    assert body["checks"]["database"]["outbox_lag_seconds"] >= 0


def test_openapi_document_lists_the_operations(client: FlaskClient) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "Mercato API"
    paths = spec["paths"]
    for path, method in [
        ("/api/v1/me", "get"),
        ("/api/v1/me/tokens", "post"),
        ("/api/v1/me/tokens/{token_id}", "delete"),
        ("/api/v1/session", "post"),
        ("/api/v1/users", "post"),
        ("/api/v1/organisations", "get"),
    ]:
        assert method in paths[path], (path, method)
    assert "bearerAuth" in spec["components"]["securitySchemes"]
    # The documented error body is the problem document.
    assert "detail" in spec["components"]["schemas"]["Problem"]["properties"]
    assert list(spec["components"]["responses"]["DEFAULT_ERROR"]["content"]) == [PROBLEM]
    assert list(spec["components"]["responses"]["UNPROCESSABLE_ENTITY"]["content"]) == [PROBLEM]


def test_unknown_api_path_is_a_problem_404(client: FlaskClient) -> None:
    assert_problem(client.get("/api/v1/nothing-here"), 404, "not-found")


def test_wrong_method_is_a_problem_405(client: FlaskClient) -> None:
    body = assert_problem(client.put("/api/v1/me"), 405, "method-not-allowed")
    assert "PUT" in body["detail"]


def test_unknown_page_is_an_html_404(client: FlaskClient) -> None:
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "404" in response.get_data(as_text=True)


def test_malformed_json_is_400(client: FlaskClient) -> None:
    response = client.post("/api/v1/session", data="{not json", content_type="application/json")
    assert_problem(response, 400, "bad-request")


def test_validation_errors_name_each_field(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/users",
        json={"email": "not-an-email", "name": 42, "unexpected": True, "organisation": {"name": "X"}},
    )
    body = assert_problem(response, 422, "validation-error")
    fields = {(e["location"], e["field"]) for e in body["errors"]}
    assert ("json", "email") in fields  # wrong format
    assert ("json", "name") in fields  # wrong type
    assert ("json", "unexpected") in fields  # unknown field
    assert ("json", "password") in fields  # missing
    assert ("json", "organisation.legal_name") in fields  # missing, nested
    assert ("json", "organisation.country") in fields
    assert all(e["message"] for e in body["errors"])


def test_query_validation_names_the_parameter(
    client: FlaskClient, make_user: Callable[..., User], token_for: Callable[..., dict[str, str]]
) -> None:
    admin = make_user(Role.ADMIN)
    response = client.get("/api/v1/users?per_page=1000", headers=token_for(admin))
    body = assert_problem(response, 422, "validation-error")
    assert {"location": "query", "field": "per_page"}.items() <= body["errors"][0].items()


def test_nul_characters_are_refused_before_they_reach_the_database(
    client: FlaskClient, make_user: Callable[..., User], token_for: Callable[..., dict[str, str]]
) -> None:
    """Found by the fuzzer: PostgreSQL cannot compare a text column with a NUL, so the
    audit log's search answered 500."""
    headers = token_for(make_user(Role.ADMIN))
    search = client.get("/api/v1/admin/audit?actor=%C2%89%005&action=x", headers=headers)
    body = assert_problem(search, 422, "validation-error")
    assert body["errors"] == [
        {"location": "query", "field": "actor", "message": "must not contain NUL characters"}
    ]
    posted = client.post("/api/v1/me/tokens", json={"name": "a\u0000b"}, headers=headers)
    assert assert_problem(posted, 422, "validation-error")["errors"][0]["field"] == "body"
    assert client.get("/api/v1/products/wiki%00", headers=headers).status_code == 422
    page = client.get("/products?q=wiki%00")
    assert page.status_code == 400 and "must not contain NUL characters" in page.get_data(as_text=True)
    # the same without the NUL goes through
    assert client.get("/api/v1/admin/audit?actor=x&action=x", headers=headers).status_code == 200
    assert client.post("/api/v1/me/tokens", json={"name": "ab"}, headers=headers).status_code == 201


def test_lists_are_paginated(
    client: FlaskClient, make_user: Callable[..., User], token_for: Callable[..., dict[str, str]]
) -> None:
    admin = make_user(Role.ADMIN)
    for _ in range(4):
        make_user(Role.CUSTOMER)
    headers = token_for(admin)
    first = client.get("/api/v1/users?per_page=2&page=1", headers=headers).get_json()
    second = client.get("/api/v1/users?per_page=2&page=2", headers=headers).get_json()
    third = client.get("/api/v1/users?per_page=2&page=3", headers=headers).get_json()
    assert first["total"] == 5 and first["pages"] == 3 and first["per_page"] == 2
    assert len(first["items"]) == 2 and len(second["items"]) == 2 and len(third["items"]) == 1
    ids = [u["id"] for page in (first, second, third) for u in page["items"]]
    assert len(set(ids)) == 5


def test_a_language_tag_longer_than_its_column_is_refused(
    client: FlaskClient, make_user: Callable[..., User], token_for: Callable[..., dict[str, str]]
) -> None:
    """Found by the fuzzer: a well-formed tag of 39 characters reached the 35-character
    column and the answer was 500."""
    headers = token_for(make_user(Role.CUSTOMER))
    long_tag = "en-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd"
    body = assert_problem(
        client.patch("/api/v1/me", json={"language": long_tag}, headers=headers), 422, "validation-error"
    )
    assert body["errors"][0]["field"] == "language" and "at most 35" in body["errors"][0]["message"]
    assert (
        client.patch("/api/v1/me", json={"language": "it-IT"}, headers=headers).get_json()["user"]["language"]
        == "it-IT"
    )
