"""What a vendor declares for its instances beyond the machine: access URLs and the setup
script's variables, checked when written; customers see only the variables they may set,
and never the setup script."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient

from cmw.accounts.models import Role, User
from tests import catalog_data

Headers = Callable[..., dict[str, str]]

VARIABLES = [
    {"name": "APP_TITLE", "label": "Site title", "default": "Wiki", "customer_editable": True},
    {"name": "APP_LICENCE_KEY", "default": "vendor-secret-key"},
]
ENDPOINTS = [{"name": "Wiki", "path": "/"}, {"name": "Admin", "path": "/admin"}]


def test_endpoints_and_variables_are_checked_and_the_secret_ones_stay_with_the_vendor(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers
) -> None:
    vendor_h, admin_h = token_for(make_user(Role.VENDOR)), token_for(make_user(Role.ADMIN))
    for bad, field, message in [
        ([{"name": "MERCATO_DATA_DIR", "default": "/"}], "setup_variables", "not MERCATO_"),
        ([{"name": "app title"}], "setup_variables", "environment variable name"),
        ([{"name": "A"}, {"name": "A"}], "setup_variables", "repeated: A"),
    ]:
        answer = client.post(
            "/api/v1/vendor/products",
            json=catalog_data.product(slug="bad-vars", setup_variables=bad),
            headers=vendor_h,
        )
        assert answer.status_code == 422, answer.json
        assert any(e["field"].startswith(field) and message in e["message"] for e in answer.json["errors"]), (
            answer.json
        )
    bad_path = client.post(
        "/api/v1/vendor/products",
        json=catalog_data.product(slug="bad-path", endpoints=[{"name": "Admin", "path": "admin"}]),
        headers=vendor_h,
    )
    assert bad_path.status_code == 422 and "under the instance's address" in str(bad_path.json["errors"])

    published = catalog_data.publish(
        client, vendor_h, admin_h, setup_variables=VARIABLES, endpoints=ENDPOINTS
    )
    seen_by_vendor = client.get(f"/api/v1/vendor/products/{published['id']}", headers=vendor_h).json
    assert seen_by_vendor["live_version"]["setup_variables"][1]["default"] == "vendor-secret-key"
    public: dict[str, Any] = client.get("/api/v1/products/wiki-server").json
    assert public["endpoints"] == ENDPOINTS
    assert [v["name"] for v in public["setup_variables"]] == ["APP_TITLE"]
    text = client.get("/api/v1/products/wiki-server").get_data(as_text=True)
    assert "vendor-secret-key" not in text and "apt-get" not in text  # nor the setup script
    assert all("setup_script" not in t for t in public["deployment"])


def test_people_set_their_language_for_the_instances_they_order(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers
) -> None:
    headers = token_for(make_user(Role.CUSTOMER))
    assert client.get("/api/v1/me", headers=headers).json["user"]["language"] == "en"
    bad = client.patch("/api/v1/me", json={"language": "english please"}, headers=headers)
    assert bad.status_code == 422 and bad.json["errors"][0]["field"] == "language"
    changed = client.patch("/api/v1/me", json={"language": "it-IT", "name": "Giulia"}, headers=headers)
    assert changed.status_code == 200
    assert (changed.json["user"]["language"], changed.json["user"]["name"]) == ("it-IT", "Giulia")
    assert client.get("/api/v1/me", headers=headers).json["user"]["language"] == "it-IT"
