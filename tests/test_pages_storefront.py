"""The storefront pages, rendered by the app: home, catalog search with its filters and
errors, and the product page with its plans and reviews."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts.models import Role, User
from cmw.notifications.models import Notification
from tests import catalog_data
from tests.catalog_data import publish

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def published(client: FlaskClient, make_user: Callable[..., User], token_for: Headers) -> dict[str, Any]:
    vendor_h, admin_h = token_for(make_user(Role.VENDOR)), token_for(make_user(Role.ADMIN))
    first = publish(client, vendor_h, admin_h)
    second = publish(
        client,
        vendor_h,
        admin_h,
        slug="backup-vault",
        name="Backup Vault",
        short_description="Backups, kept safe.",
    )
    return {"wiki": first, "backup": second}


def test_home_shows_the_newest_products_and_the_categories(
    client: FlaskClient, published: dict[str, Any]
) -> None:
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'href="/products/wiki-server"' in html and 'href="/products/backup-vault"' in html
    assert 'href="/products?category=collaboration"' in html
    assert "from 71.50 EUR a month" in html  # the cheapest plan, its minimum seats included


def test_the_catalog_searches_like_the_api(client: FlaskClient, published: dict[str, Any]) -> None:
    page = client.get("/products?q=backup")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Backup Vault" in html and "Wiki Server" not in html
    assert "1 product" in html
    api = client.get("/api/v1/products?q=backup").get_json()
    assert [i["slug"] for i in api["items"]] == ["backup-vault"]

    empty = client.get("/products?q=nothing-like-this").get_data(as_text=True)
    assert "No product matches" in empty and "0 products" in empty


def test_a_bad_filter_is_shown_next_to_its_field(client: FlaskClient, published: dict[str, Any]) -> None:
    page = client.get("/products?max_price=lots")
    html = page.get_data(as_text=True)
    assert page.status_code == 422
    assert 'id="max_price-error"' in html and 'aria-invalid="true"' in html
    assert "Some search settings are not valid" in html


def test_the_product_page_shows_plans_prices_and_reviews(
    client: FlaskClient, published: dict[str, Any]
) -> None:
    page = client.get("/products/wiki-server")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "<h1>Wiki Server</h1>" in html
    assert "Team" in html and "Enterprise" in html  # the plans table
    assert "<strong>simple</strong>" in html  # the Markdown description, rendered
    assert "No reviews yet" in html
    missing = client.get("/products/no-such-product")
    assert missing.status_code == 404 and "<h1>404</h1>" in missing.get_data(as_text=True)


def test_compare_shows_two_to_four_products_side_by_side(
    client: FlaskClient, published: dict[str, Any]
) -> None:
    page = client.get("/compare?products=wiki-server,backup-vault")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Wiki Server" in html and "Backup Vault" in html
    assert html.count("2 cores, 4.0 GiB RAM, 50 GiB data disk") == 2
    one = client.get("/compare?products=wiki-server")
    assert one.status_code == 422 and "Name 2 to 4 published products" in one.get_data(as_text=True)


def test_page_forms_are_refused_without_their_csrf_token(
    client: FlaskClient, published: dict[str, Any]
) -> None:
    for url, data in (
        ("/products/wiki-server/review", {"rating": "5"}),
        ("/products/wiki-server", {"plan": "team"}),
        ("/sign-in", {"email": "a@example.test", "password": "x" * 12}),
    ):
        refused = client.post(url, data=data)
        assert refused.status_code == 400, url
        assert "CSRF" in refused.get_data(as_text=True), url


def _signed_in(client: FlaskClient, user: User) -> None:
    response = client.post("/api/v1/session", json={"email": user.email, "password": "a-long-password-1"})
    assert response.status_code == 200, response.get_data(as_text=True)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_the_review_queue_approves_or_sends_back_with_a_reason(
    app: Flask, client: FlaskClient, make_user: Callable[..., User], token_for: Headers
) -> None:
    vendor_h = token_for(make_user(Role.VENDOR))
    made = catalog_data.create(client, vendor_h)
    catalog_data.set_plans(client, vendor_h, made["id"])
    assert (
        catalog_data.post(client, f"/api/v1/vendor/products/{made['id']}/submit", vendor_h).status_code == 200
    )

    customer, browser = make_user(Role.CUSTOMER, password="a-long-password-1"), app.test_client()
    _signed_in(browser, customer)
    assert browser.get("/admin/review").status_code == 403

    admin = make_user(Role.ADMIN, password="a-long-password-1")
    _signed_in(client, admin)
    queue = client.get("/admin/review")
    html = queue.get_data(as_text=True)
    assert queue.status_code == 200 and "Wiki Server" in html and "new product" in html
    token = _csrf(html)
    # sending back needs a reason, said in words
    back = client.post(f"/admin/review/{made['id']}/reject", data={"csrf_token": token, "reason": ""})
    assert back.status_code == 302
    assert "say what the vendor has to change" in client.get("/admin/review").get_data(as_text=True)
    back = client.post(
        f"/admin/review/{made['id']}/reject", data={"csrf_token": token, "reason": "Add a logo"}
    )
    after = client.get("/admin/review").get_data(as_text=True)
    assert "went back to its vendor" in after and "Nothing waits for review" in after
    assert (
        client.get(f"/api/v1/vendor/products/{made['id']}", headers=vendor_h).get_json()["status"] == "draft"
    )

    assert (
        catalog_data.post(client, f"/api/v1/vendor/products/{made['id']}/submit", vendor_h).status_code == 200
    )
    approved = client.post(
        f"/admin/review/{made['id']}/approve",
        data={"csrf_token": _csrf(client.get("/admin/review").get_data(as_text=True))},
    )
    assert approved.status_code == 302
    assert "Wiki Server is published" in client.get("/admin/review").get_data(as_text=True)
    assert client.get("/products/wiki-server").status_code == 200


def test_a_vendor_sees_the_reason_and_submits_again(
    app: Flask, client: FlaskClient, make_user: Callable[..., User], token_for: Headers
) -> None:
    vendor = make_user(Role.VENDOR, password="a-long-password-1")
    vendor_h, admin_h = token_for(vendor), token_for(make_user(Role.ADMIN))
    made = catalog_data.create(client, vendor_h)
    catalog_data.set_plans(client, vendor_h, made["id"])
    assert (
        catalog_data.post(client, f"/api/v1/vendor/products/{made['id']}/submit", vendor_h).status_code == 200
    )
    sent_back = catalog_data.post(
        client, f"/api/v1/admin/products/{made['id']}/reject", admin_h, json={"reason": "Add a logo"}
    )
    assert sent_back.status_code == 200, sent_back.get_data(as_text=True)

    browser = app.test_client()
    _signed_in(browser, vendor)
    page = browser.get("/vendor/products").get_data(as_text=True)
    assert "Sent back: Add a logo" in page and "Submit for review" in page
    browser.post(f"/vendor/products/{made['id']}/submit", data={"csrf_token": _csrf(page)})
    after = browser.get("/vendor/products").get_data(as_text=True)
    assert "is submitted; an administrator reviews it next" in after and "in review" in after
    assert "Submit for review" not in after
    # a customer has no vendor panel
    other = app.test_client()
    _signed_in(other, make_user(Role.CUSTOMER, password="a-long-password-1"))
    assert other.get("/vendor/products").status_code == 403


def test_notifications_page_lists_and_marks_read(
    app: Flask, db_session: Session, make_user: Callable[..., User]
) -> None:
    user = make_user(Role.CUSTOMER, password="a-long-password-1")
    marketplace_id = user.memberships[0].marketplace_id
    for n in range(3):
        db_session.add(
            Notification(
                user_id=user.id, marketplace_id=marketplace_id, event_id=f"e{n}", kind="order.placed",
                title=f"Order {n} confirmed", body="We are preparing your instance.", link=None,
                created_at=dt.datetime(2026, 11, 1, 9, n, tzinfo=dt.UTC),
            )
        )  # fmt: skip
    db_session.commit()
    browser = app.test_client()
    assert browser.get("/account/notifications").status_code == 302  # sign in first
    _signed_in(browser, user)
    page = browser.get("/account/notifications").get_data(as_text=True)
    assert "3 unread" in page and "Order 2 confirmed" in page and "Mark all read" in page
    assert page.index("Order 2 confirmed") < page.index("Order 0 confirmed")  # newest first
    browser.post("/account/notifications/read-all", data={"csrf_token": _csrf(page)})
    after = browser.get("/account/notifications").get_data(as_text=True)
    assert "0 unread" in after and "Mark all read" not in after
