"""The customers' control panel pages: a subscription (plan and quantity changes with their
errors, history, instance), API tokens (secret shown once, revoking), the profile."""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from cmw.accounts.models import Role, User
from tests.test_orders import order
from tests.test_pages_storefront import _csrf, _signed_in

PASSWORD = "a-long-password-1"


def _error(page: str, field_id: str) -> str:
    match = re.search(rf'<span class="field-error" id="{re.escape(field_id)}-error">([^<]*)</span>', page)
    assert match, f"no error next to {field_id}"
    return html_lib.unescape(match.group(1))


def test_a_customer_changes_quantity_and_plan_from_the_subscription_page(
    app: Flask,
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Callable[..., dict[str, str]],
    shop: dict[str, Any],
) -> None:
    customer = make_user(Role.CUSTOMER, password=PASSWORD)
    placed = order(client, token_for(customer), quantity=5).get_json()
    url = f"/account/subscriptions/{placed['subscription_id']}"
    _signed_in(client, customer)

    listed = client.get("/account").get_data(as_text=True)
    assert f'href="{url}"' in listed
    page = client.get(url)
    body = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "<dt>Plan</dt><dd>Team (EUR, billed each month)" in body
    assert "Enterprise: 415.83 EUR a month" in body  # 4990 a year, a twelfth a month
    token = _csrf(body)

    below = client.post(f"{url}/quantity", data={"csrf_token": token, "quantity": "3"})
    assert below.status_code == 422
    assert "at least 5" in _error(below.get_data(as_text=True), "quantity")

    more = client.post(f"{url}/quantity", data={"csrf_token": token, "quantity": "7"})
    assert more.status_code == 302
    body = client.get(url).get_data(as_text=True)
    assert "The quantity is now 7." in body
    assert re.search(r"quantity changed: 5 → 7</td><td>Test User</td>", body)

    choices = dict(re.findall(r'<option value="([0-9a-f-]{36})">([^<]+)</option>', body))
    enterprise = next(k for k, v in choices.items() if v.startswith("Enterprise"))
    upgraded = client.post(f"{url}/plan", data={"csrf_token": token, "plan": enterprise})
    assert upgraded.status_code == 302
    body = client.get(url).get_data(as_text=True)
    assert "You are on Enterprise from now on." in body
    assert "<dt>Plan</dt><dd>Enterprise (EUR, billed each year)" in body
    # a plan that is not on offer is refused in words, not with a 500
    refused = client.post(f"{url}/plan", data={"csrf_token": token, "plan": enterprise})
    assert refused.status_code == 422
    assert "Not a valid choice" in _error(refused.get_data(as_text=True), "plan")

    assert client.post(f"{url}/quantity", data={"quantity": "8"}).status_code == 400  # no CSRF token
    other = app.test_client()
    _signed_in(other, make_user(Role.CUSTOMER, password=PASSWORD))
    assert other.get(url).status_code == 404
    assert other.post(f"{url}/quantity", data={"csrf_token": token, "quantity": "8"}).status_code in (
        400,
        404,
    )


def test_an_api_token_is_shown_once_and_revoked_from_the_page(
    app: Flask, client: FlaskClient, make_user: Callable[..., User]
) -> None:
    user = make_user(Role.CUSTOMER, password=PASSWORD)
    _signed_in(client, user)
    page = client.get("/account/tokens").get_data(as_text=True)
    assert "No tokens yet" in page
    missing = client.post(
        "/account/tokens", data={"csrf_token": _csrf(page), "name": "", "expires_in_days": "90"}
    )
    assert missing.status_code == 422 and _error(missing.get_data(as_text=True), "name")

    created = client.post(
        "/account/tokens", data={"csrf_token": _csrf(page), "name": "Nightly export", "expires_in_days": "30"}
    )
    body = created.get_data(as_text=True)
    assert created.status_code == 200 and created.headers["Cache-Control"] == "no-store"
    secret = re.search(r'aria-label="New API token">([^<]+)</code>', body)
    assert secret
    api = app.test_client()
    me = api.get("/api/v1/me", headers={"Authorization": f"Bearer {secret.group(1)}"})
    assert me.status_code == 200 and me.get_json()["user"]["email"] == user.email

    again = client.get("/account/tokens").get_data(as_text=True)
    assert secret.group(1) not in again and "Nightly export" in again
    revoke = re.search(r'action="(/account/tokens/[0-9a-f-]{36}/revoke)"', again)
    assert revoke
    client.post(revoke.group(1), data={"csrf_token": _csrf(again)})
    assert "is revoked" in client.get("/account/tokens").get_data(as_text=True)
    assert api.get("/api/v1/me", headers={"Authorization": f"Bearer {secret.group(1)}"}).status_code == 401

    other = app.test_client()
    _signed_in(other, make_user(Role.CUSTOMER, password=PASSWORD))
    other_page = other.get("/account/tokens").get_data(as_text=True)
    assert "Nightly export" not in other_page
    assert other.post(revoke.group(1), data={"csrf_token": _csrf(other_page)}).status_code == 404


def test_the_password_changes_only_with_the_current_one(
    app: Flask, client: FlaskClient, make_user: Callable[..., User]
) -> None:
    user = make_user(Role.CUSTOMER, password=PASSWORD)
    _signed_in(client, user)
    token = _csrf(client.get("/account/profile").get_data(as_text=True))
    wrong = client.post(
        "/account/profile", data={"csrf_token": token, "current": "not-it-at-all", "new": "another-long-pw-2"}
    )
    assert wrong.status_code == 422
    assert "not your current password" in _error(wrong.get_data(as_text=True), "current")
    weak = client.post("/account/profile", data={"csrf_token": token, "current": PASSWORD, "new": "short"})
    assert weak.status_code == 422 and _error(weak.get_data(as_text=True), "new")
    done = client.post(
        "/account/profile", data={"csrf_token": token, "current": PASSWORD, "new": "another-long-pw-2"}
    )
    assert done.status_code == 302
    fresh = app.test_client()
    refused = fresh.post("/api/v1/session", json={"email": user.email, "password": PASSWORD})
    assert refused.status_code == 401
    accepted = fresh.post("/api/v1/session", json={"email": user.email, "password": "another-long-pw-2"})
    assert accepted.status_code == 200


def test_a_coupon_is_applied_from_the_subscription_page(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Callable[..., dict[str, str]],
    shop: dict[str, Any],
    db_session: Any,
) -> None:
    from cmw.billing import coupons
    from cmw.marketplaces.service import platform

    coupons.create(db_session, platform(db_session).id, {"code": "HELLO", "kind": "percent", "percent": 15})
    db_session.commit()
    customer = make_user(Role.CUSTOMER, password=PASSWORD)
    placed = order(client, token_for(customer), quantity=5).get_json()
    url = f"/account/subscriptions/{placed['subscription_id']}"
    _signed_in(client, customer)
    token = _csrf(client.get(url).get_data(as_text=True))
    client.post(f"{url}/coupon", data={"csrf_token": token, "code": "nope"})
    assert "That coupon cannot be used: no such coupon." in client.get(url).get_data(as_text=True)
    client.post(f"{url}/coupon", data={"csrf_token": token, "code": "hello"})
    page = client.get(url).get_data(as_text=True)
    assert "The coupon is applied" in page and "Coupon <strong>HELLO</strong> applied" in page


def test_lists_are_paged(client: FlaskClient, make_user: Callable[..., User], db_session: Any) -> None:
    admin = make_user(Role.ADMIN, password=PASSWORD)
    for n in range(3):
        make_user(Role.CUSTOMER, email=f"paged-{n}@example.test")
    _signed_in(client, admin)
    first = client.get("/admin/users?q=paged-&per_page=2").get_data(as_text=True)
    assert "Page 1 of 2" in first and "paged-0@" in first and "paged-2@" not in first
    link = re.search(r'<a href="([^"]+)" rel="next">', first)
    assert link, "no link to the next page"
    second = client.get(html_lib.unescape(link.group(1))).get_data(as_text=True)
    assert "paged-2@" in second and 'rel="prev"' in second and "paged-0@" not in second


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl laptop"


def test_saved_ssh_keys_are_offered_when_ordering(
    client: FlaskClient, make_user: Callable[..., User], shop: dict[str, Any], db_session: Any
) -> None:
    from cmw.orders.models import Order

    customer = make_user(Role.CUSTOMER, password=PASSWORD)
    _signed_in(client, customer)
    token = _csrf(client.get("/account/ssh-keys").get_data(as_text=True))
    bad = client.post(
        "/account/ssh-keys", data={"csrf_token": token, "name": "x", "public_key": "ssh-rsa not base64!"}
    )
    assert bad.status_code == 422 and "not an OpenSSH public key" in _error(
        bad.get_data(as_text=True), "public_key"
    )
    saved = client.post("/account/ssh-keys", data={"csrf_token": token, "name": "laptop", "public_key": KEY})
    assert saved.status_code == 302
    page = client.get("/account/ssh-keys").get_data(as_text=True)
    fingerprint = re.search(r"<code class=\"wrap\">(SHA256:[A-Za-z0-9+/]{43})</code>", page)
    assert fingerprint, page
    again = client.post("/account/ssh-keys", data={"csrf_token": token, "name": "twice", "public_key": KEY})
    assert "saved already" in _error(again.get_data(as_text=True), "public_key")

    product = client.get("/products/wiki-server").get_data(as_text=True)
    option = re.search(r'<option value="([0-9a-f-]{36})">laptop \(', product)
    assert option, "the saved key is not offered"
    ordered = client.post(
        "/products/wiki-server",
        data={"csrf_token": _csrf(product), "plan": "team", "quantity": "5", "saved_key": option.group(1)},
    )
    assert ordered.status_code == 302, ordered.get_data(as_text=True)
    placed = db_session.query(Order).filter_by(placed_by_id=customer.id).one()
    assert placed.ssh_public_key == KEY

    remove = re.search(r'action="(/account/ssh-keys/[0-9a-f-]{36}/remove)"', page)
    assert remove
    client.post(remove.group(1), data={"csrf_token": token})
    assert "No key yet" in client.get("/account/ssh-keys").get_data(as_text=True)


def test_the_profile_page_sets_the_name_and_the_language_the_instances_get(
    app: Flask, make_user: Callable[..., User]
) -> None:
    customer = make_user(Role.CUSTOMER, password="a-long-password-1")
    browser = app.test_client()
    _signed_in(browser, customer)
    page = browser.get("/account/profile").get_data(as_text=True)
    assert 'name="language"' in page and 'value="en"' in page
    bad = browser.post(
        "/account/profile/details", data={"csrf_token": _csrf(page), "name": "Ada", "language": "not a tag"}
    )
    assert bad.status_code == 422 and "a language tag such as en, de or it-IT" in bad.get_data(as_text=True)
    saved = browser.post(
        "/account/profile/details",
        data={"csrf_token": _csrf(page), "name": "Ada Lovelace", "language": "it-IT"},
    )
    assert saved.status_code == 302
    me = browser.get("/api/v1/me").get_json()["user"]
    assert (me["name"], me["language"]) == ("Ada Lovelace", "it-IT")
