"""Accounts: sign-in and sign-out (API and page), CSRF, API tokens, sign-up, roles per
marketplace and tenant isolation."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import ApiToken, Membership, Organisation, OrganisationKind, Role, User
from cmw.db import utcnow
from cmw.events.models import OutboxEvent
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from cmw.marketplaces.service import platform
from tests.conftest import PASSWORD
from tests.test_api_foundation import assert_problem

Headers = Callable[..., dict[str, str]]


def sign_in(client: FlaskClient, email: str, password: str = PASSWORD, host: str | None = None) -> str:
    """Sign in through the API; returns the CSRF token for later unsafe requests."""
    kwargs = {"base_url": f"http://{host}"} if host else {}
    response = client.post("/api/v1/session", json={"email": email, "password": password}, **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    token: str = response.get_json()["csrf_token"]
    return token


# ------------------------------------------------------------------ sign-in
def test_sign_in_sets_a_session_and_me_answers(client: FlaskClient, make_user: Callable[..., User]) -> None:
    user = make_user(Role.CUSTOMER)
    sign_in(client, user.email.upper())  # e-mail is case-insensitive
    me = client.get("/api/v1/me").get_json()
    assert me["user"]["email"] == user.email
    assert me["roles"] == ["customer"]
    assert me["authenticated_by"] == "session"
    assert len(me["organisations"]) == 1


def test_wrong_password_is_401_and_no_session(client: FlaskClient, make_user: Callable[..., User]) -> None:
    user = make_user(Role.CUSTOMER)
    response = client.post("/api/v1/session", json={"email": user.email, "password": "wrong-password-1"})
    body = assert_problem(response, 401, "invalid-credentials")
    assert "password" in body["detail"]
    assert_problem(client.get("/api/v1/me"), 401, "unauthenticated")


def test_unknown_email_gets_the_same_answer_as_a_wrong_password(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/session", json={"email": "nobody@example.test", "password": "whatever-1234"}
    )
    assert assert_problem(response, 401, "invalid-credentials")["detail"] == "wrong e-mail or password"


def test_disabled_user_cannot_sign_in(
    client: FlaskClient, make_user: Callable[..., User], db_session: Session
) -> None:
    user = make_user(Role.CUSTOMER)
    accounts.set_active(db_session, user, False)
    response = client.post("/api/v1/session", json={"email": user.email, "password": PASSWORD})
    assert assert_problem(response, 401, "invalid-credentials")["detail"] == "this account is disabled"


def test_sign_out_ends_the_session(client: FlaskClient, make_user: Callable[..., User]) -> None:
    user = make_user(Role.CUSTOMER)
    csrf = sign_in(client, user.email)
    assert client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert_problem(client.get("/api/v1/me"), 401, "unauthenticated")


def test_passwords_are_stored_as_argon2id(make_user: Callable[..., User]) -> None:
    user = make_user(Role.CUSTOMER)
    assert user.password_hash is not None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash


def test_session_sign_in_requires_a_json_body(client: FlaskClient, make_user: Callable[..., User]) -> None:
    """A cross-site HTML form cannot post JSON, so it cannot sign a browser in."""
    user = make_user(Role.CUSTOMER)
    response = client.post("/api/v1/session", data={"email": user.email, "password": PASSWORD})
    assert response.status_code in (415, 422)
    assert_problem(client.get("/api/v1/me"), 401, "unauthenticated")


def page_csrf(client: FlaskClient, path: str) -> str:
    """The CSRF token of the form on a page, as a browser would submit it."""
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert found is not None, f"no CSRF field on {path}"
    return found.group(1)


# --------------------------------------------------------------------- CSRF
def test_unsafe_request_with_session_needs_the_csrf_token(
    client: FlaskClient, make_user: Callable[..., User]
) -> None:
    user = make_user(Role.CUSTOMER)
    csrf = sign_in(client, user.email)
    response = client.post("/api/v1/me/tokens", json={"name": "ci"})
    body = assert_problem(response, 403, "csrf-failed")
    assert "X-CSRF-Token" in body["detail"]
    wrong = client.post("/api/v1/me/tokens", json={"name": "ci"}, headers={"X-CSRF-Token": "forged"})
    assert_problem(wrong, 403, "csrf-failed")
    ok = client.post("/api/v1/me/tokens", json={"name": "ci"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201


def test_page_sign_in_form_rejects_a_missing_csrf_token(
    client: FlaskClient, make_user: Callable[..., User]
) -> None:
    user = make_user(Role.CUSTOMER)
    response = client.post("/sign-in", data={"email": user.email, "password": PASSWORD})
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)
    assert client.get("/account").status_code == 302  # still signed out


def test_page_sign_in_and_sign_out(client: FlaskClient, make_user: Callable[..., User]) -> None:
    user = make_user(Role.CUSTOMER)
    csrf = page_csrf(client, "/sign-in")
    response = client.post(
        "/sign-in?next=/account",
        data={"email": user.email, "password": PASSWORD, "csrf_token": csrf},
    )
    assert response.status_code == 302 and response.headers["Location"] == "/account"
    account = client.get("/account").get_data(as_text=True)
    assert user.email in account and "customer" in account
    assert client.post("/sign-out", data={"csrf_token": page_csrf(client, "/account")}).status_code == 302
    assert client.get("/account").status_code == 302


def test_page_sign_in_never_redirects_off_site(client: FlaskClient, make_user: Callable[..., User]) -> None:
    user = make_user(Role.CUSTOMER)
    csrf = page_csrf(client, "/sign-in")
    response = client.post(
        "/sign-in?next=//evil.example/",
        data={"email": user.email, "password": PASSWORD, "csrf_token": csrf},
    )
    assert response.headers["Location"] == "/"


def test_page_sign_in_with_a_wrong_password_says_so(
    client: FlaskClient, make_user: Callable[..., User]
) -> None:
    user = make_user(Role.CUSTOMER)
    csrf = page_csrf(client, "/sign-in")
    response = client.post(
        "/sign-in", data={"email": user.email, "password": "nope-nope-nope", "csrf_token": csrf}
    )
    assert response.status_code == 401
    assert "wrong e-mail or password" in response.get_data(as_text=True)


# ------------------------------------------------------------------- tokens
def test_token_is_shown_once_stored_hashed_and_works(
    client: FlaskClient, make_user: Callable[..., User], db_session: Session
) -> None:
    user = make_user(Role.VENDOR)
    csrf = sign_in(client, user.email)
    created = client.post("/api/v1/me/tokens", json={"name": "deploy bot"}, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201
    body = created.get_json()
    plaintext = body["token"]
    assert plaintext.startswith("mct_") and body["prefix"] == plaintext[:10]
    assert body["expires_at"] is not None  # the platform default applies
    stored = db_session.get(ApiToken, body["id"])
    assert stored is not None and plaintext not in (stored.token_hash, stored.prefix)

    listed = client.get("/api/v1/me/tokens").get_json()
    assert [t["id"] for t in listed["items"]] == [body["id"]]
    assert "token" not in listed["items"][0]

    client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {plaintext}"})
    assert me.status_code == 200
    assert me.get_json()["user"]["id"] == str(user.id)
    assert me.get_json()["authenticated_by"] == "token"
    assert me.get_json()["csrf_token"] is None


def test_revoked_token_is_refused(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers
) -> None:
    user = make_user(Role.CUSTOMER)
    headers = token_for(user)
    created = client.post(
        "/api/v1/me/tokens", json={"name": "to revoke", "expires_in_days": None}, headers=headers
    )
    assert created.get_json()["expires_at"] is None
    second = {"Authorization": f"Bearer {created.get_json()['token']}"}
    assert client.get("/api/v1/me", headers=second).status_code == 200
    assert client.delete(f"/api/v1/me/tokens/{created.get_json()['id']}", headers=headers).status_code == 204
    body = assert_problem(client.get("/api/v1/me", headers=second), 401, "unauthenticated")
    assert body["detail"] == "token revoked"
    assert client.get("/api/v1/me", headers=headers).status_code == 200  # the other token still works


def test_expired_wrong_and_malformed_tokens_are_401(
    client: FlaskClient,
    make_user: Callable[..., User],
    db_session: Session,
    platform_marketplace: Marketplace,
) -> None:
    user = make_user(Role.CUSTOMER)
    token, plaintext = accounts.create_token(
        db_session, user, platform_marketplace, name="short", expires_at=utcnow() + dt.timedelta(seconds=30)
    )
    token.expires_at = utcnow() - dt.timedelta(seconds=1)
    db_session.flush()
    cases = {
        f"Bearer {plaintext}": "token expired",
        "Bearer mct_" + "x" * 43: "unknown token",
        "Bearer not-a-token": "malformed token",
        f"Basic {plaintext}": "use 'Authorization: Bearer <token>'",
    }
    for header, detail in cases.items():
        response = client.get("/api/v1/me", headers={"Authorization": header})
        body = assert_problem(response, 401, "unauthenticated")
        assert body["detail"] == detail
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_disabled_users_tokens_stop_working(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, db_session: Session
) -> None:
    user = make_user(Role.CUSTOMER)
    headers = token_for(user)
    accounts.set_active(db_session, user, False)
    assert assert_problem(client.get("/api/v1/me", headers=headers), 401, "unauthenticated")["detail"] == (
        "account disabled"
    )


def test_someone_elses_token_cannot_be_revoked(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, db_session: Session
) -> None:
    alice, bob = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    token_for(alice)
    alice_token = db_session.scalars(sa.select(ApiToken).where(ApiToken.user_id == alice.id)).one()
    assert_problem(
        client.delete(f"/api/v1/me/tokens/{alice_token.id}", headers=token_for(bob)), 404, "not-found"
    )
    assert alice_token.revoked_at is None


# ------------------------------------------------------------------ sign-up
def test_sign_up_creates_user_company_and_customer_role(client: FlaskClient, db_session: Session) -> None:
    response = client.post(
        "/api/v1/users",
        json={
            "email": "New.Customer@Example.test",
            "name": "New Customer",
            "password": "a-good-long-password",
            "organisation": {
                "name": "Newco",
                "legal_name": "Newco S.r.l.",
                "country": "it",
                "vat_number": "IT 123 456 78901",
            },
        },
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["email"] == "new.customer@example.test"
    assert [m["role"] for m in body["memberships"]] == ["customer"]
    assert "password" not in body and "password_hash" not in body
    user = db_session.get(User, body["id"])
    assert user is not None
    organisation = db_session.get(Organisation, body["memberships"][0]["organisation_id"])
    assert organisation is not None
    assert organisation.country == "IT" and organisation.vat_number == "IT12345678901"
    topics = db_session.scalars(sa.select(OutboxEvent.topic)).all()
    assert "user.signed_up" in topics and "organisation.created" in topics
    sign_in(client, "new.customer@example.test", "a-good-long-password")


def test_sign_up_twice_with_one_email_is_409(client: FlaskClient, make_user: Callable[..., User]) -> None:
    user = make_user(Role.CUSTOMER)
    response = client.post(
        "/api/v1/users",
        json={
            "email": user.email,
            "name": "Again",
            "password": "a-good-long-password",
            "organisation": {"name": "X", "legal_name": "X Ltd", "country": "GB"},
        },
    )
    assert_problem(response, 409, "email-taken")


@pytest.mark.parametrize(
    ("organisation", "password", "field"),
    [
        (
            {"name": "X", "legal_name": "X Ltd", "country": "XX"},
            "a-good-long-password",
            "organisation.country",
        ),
        (
            {"name": "X", "legal_name": "X Ltd", "country": "GB", "vat_number": "!!"},
            "a-good-long-password",
            "organisation.vat_number",
        ),
        ({"name": "X", "legal_name": "X Ltd", "country": "GB"}, "aaaaaaaaaaaa", "password"),
    ],
)
def test_sign_up_rejects_bad_details_and_writes_nothing(
    client: FlaskClient, db_session: Session, organisation: dict[str, str], password: str, field: str
) -> None:
    before = db_session.scalar(sa.select(sa.func.count()).select_from(User))
    response = client.post(
        "/api/v1/users",
        json={
            "email": "half@example.test",
            "name": "Half",
            "password": password,
            "organisation": organisation,
        },
    )
    body = assert_problem(response, 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == [field]
    assert db_session.scalar(sa.select(sa.func.count()).select_from(User)) == before


# ------------------------------------------------------------- role matrix
ROLE_MATRIX = [
    # (role, method, path, expected status)
    (None, "GET", "/api/v1/me", 401),
    (Role.CUSTOMER, "GET", "/api/v1/me", 200),
    (None, "GET", "/api/v1/users", 401),
    (Role.CUSTOMER, "GET", "/api/v1/users", 403),
    (Role.VENDOR, "GET", "/api/v1/users", 403),
    (Role.RESELLER, "GET", "/api/v1/users", 403),
    (Role.ADMIN, "GET", "/api/v1/users", 200),
    (Role.CUSTOMER, "GET", "/api/v1/marketplaces", 403),
    (Role.ADMIN, "GET", "/api/v1/marketplaces", 200),
    (None, "GET", "/api/v1/marketplace", 200),
    (Role.CUSTOMER, "GET", "/api/v1/organisations", 200),
    (Role.VENDOR, "POST", "/api/v1/organisations", 403),
    (Role.ADMIN, "POST", "/api/v1/organisations", 201),
]


@pytest.mark.parametrize(("role", "method", "path", "expected"), ROLE_MATRIX)
def test_role_matrix(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    role: Role | None,
    method: str,
    path: str,
    expected: int,
) -> None:
    headers = token_for(make_user(role)) if role is not None else {}
    payload = {"name": "Vendorco", "kind": "vendor", "legal_name": "Vendorco GmbH", "country": "DE"}
    response = client.open(path, method=method, headers=headers, json=payload if method == "POST" else None)
    assert response.status_code == expected, response.get_data(as_text=True)
    if expected >= 400:
        assert response.mimetype == "application/problem+json"
    if expected == 403:
        assert "role" in response.get_json()["detail"]


def test_admin_grants_and_removes_a_role(
    client: FlaskClient,
    make_user: Callable[..., User],
    make_organisation: Callable[..., object],
    token_for: Headers,
    db_session: Session,
) -> None:
    admin = make_user(Role.ADMIN)
    customer = make_user(Role.CUSTOMER)
    vendor_org = make_organisation(OrganisationKind.VENDOR)
    headers = token_for(admin)
    url = f"/api/v1/users/{customer.id}/memberships"
    granted = client.post(
        url, json={"role": "vendor", "organisation_id": str(vendor_org.id)}, headers=headers
    )  # type: ignore[attr-defined]
    assert granted.status_code == 201
    again = client.post(url, json={"role": "vendor", "organisation_id": str(vendor_org.id)}, headers=headers)  # type: ignore[attr-defined]
    assert again.get_json()["id"] == granted.get_json()["id"]
    wrong_kind = client.post(
        url, json={"role": "customer", "organisation_id": str(vendor_org.id)}, headers=headers
    )  # type: ignore[attr-defined]
    assert_problem(wrong_kind, 422, "validation-error")
    me = client.get("/api/v1/me", headers=token_for(customer)).get_json()
    assert set(me["roles"]) == {"customer", "vendor"}
    removed = client.delete(f"{url}/{granted.get_json()['id']}", headers=headers)
    assert removed.status_code == 204
    assert db_session.get(Membership, granted.get_json()["id"]) is None


def test_the_last_admin_cannot_be_removed(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, db_session: Session
) -> None:
    admin = make_user(Role.ADMIN)
    headers = token_for(admin)
    admins = db_session.scalars(sa.select(Membership).where(Membership.role == Role.ADMIN)).all()
    for membership in admins:
        if membership.user_id != admin.id:
            db_session.delete(membership)
    db_session.flush()
    grant = next(m for m in admin.memberships if m.role is Role.ADMIN)
    assert_problem(
        client.delete(f"/api/v1/users/{admin.id}/memberships/{grant.id}", headers=headers), 409, "last-admin"
    )


def test_admin_disables_a_user_and_their_session_ends(
    client: FlaskClient, app: object, make_user: Callable[..., User], token_for: Headers
) -> None:
    admin = make_user(Role.ADMIN)
    customer = make_user(Role.CUSTOMER)
    browser = app.test_client()  # type: ignore[attr-defined]
    sign_in(browser, customer.email)
    assert browser.get("/api/v1/me").status_code == 200
    response = client.patch(
        f"/api/v1/users/{customer.id}", json={"is_active": False}, headers=token_for(admin)
    )
    assert response.status_code == 200 and response.get_json()["is_active"] is False
    assert_problem(browser.get("/api/v1/me"), 401, "unauthenticated")


# --------------------------------------------------------- tenant isolation
@pytest.fixture
def reseller(make_marketplace: Callable[..., Marketplace]) -> Marketplace:
    distributor = make_marketplace(MarketplaceKind.DISTRIBUTOR, slug="north")
    return make_marketplace(MarketplaceKind.RESELLER, parent=distributor, slug="shop")


def test_a_token_works_only_in_its_own_marketplace(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, reseller: Marketplace
) -> None:
    user = make_user(Role.CUSTOMER, marketplace=reseller)
    headers = token_for(user, reseller)
    ok = client.get("/api/v1/me", headers=headers, base_url="http://shop.test")
    assert ok.status_code == 200 and ok.get_json()["marketplace_id"] == str(reseller.id)
    body = assert_problem(client.get("/api/v1/me", headers=headers), 401, "unauthenticated")
    assert body["detail"] == "token belongs to another marketplace"


def test_a_session_is_valid_only_in_the_marketplace_it_signed_in_to(
    client: FlaskClient, make_user: Callable[..., User], reseller: Marketplace
) -> None:
    user = make_user(Role.CUSTOMER)
    sign_in(client, user.email)
    assert client.get("/api/v1/me").status_code == 200
    assert_problem(client.get("/api/v1/me", base_url="http://shop.test"), 401, "unauthenticated")


def test_a_reseller_admin_sees_only_its_own_marketplace(
    client: FlaskClient,
    make_user: Callable[..., User],
    make_marketplace: Callable[..., Marketplace],
    token_for: Headers,
    reseller: Marketplace,
) -> None:
    sibling = make_marketplace(MarketplaceKind.RESELLER, parent=db_parent(reseller), slug="other")
    reseller_admin = make_user(Role.ADMIN, marketplace=reseller)
    own_customer = make_user(Role.CUSTOMER, marketplace=reseller)
    foreign_customer = make_user(Role.CUSTOMER, marketplace=sibling)
    platform_customer = make_user(Role.CUSTOMER)
    headers = token_for(reseller_admin, reseller)
    shop = "http://shop.test"

    users = client.get("/api/v1/users", headers=headers, base_url=shop).get_json()
    emails = {u["email"] for u in users["items"]}
    assert own_customer.email in emails
    assert foreign_customer.email not in emails and platform_customer.email not in emails

    for other in (foreign_customer, platform_customer):
        response = client.get(f"/api/v1/users/{other.id}", headers=headers, base_url=shop)
        body = assert_problem(response, 404, "not-found")
        assert other.email not in response.get_data(as_text=True)
        assert "no such user" in body["detail"]

    foreign_org = foreign_customer.memberships[0].organisation_id
    assert_problem(
        client.get(f"/api/v1/organisations/{foreign_org}", headers=headers, base_url=shop), 404, "not-found"
    )
    patched = client.patch(
        f"/api/v1/organisations/{foreign_org}", json={"name": "hijacked"}, headers=headers, base_url=shop
    )
    assert_problem(patched, 404, "not-found")

    tree = client.get("/api/v1/marketplaces", headers=headers, base_url=shop).get_json()
    assert [m["slug"] for m in tree["items"]] == ["shop"]


def db_parent(marketplace: Marketplace) -> Marketplace:
    assert marketplace.parent is not None
    return marketplace.parent


def test_platform_admin_manages_child_marketplaces(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, reseller: Marketplace
) -> None:
    """An admin of the platform is an admin of every marketplace under it."""
    platform_admin = make_user(Role.ADMIN)
    customer = make_user(Role.CUSTOMER, marketplace=reseller)
    response = client.get(
        f"/api/v1/users/{customer.id}",
        headers=token_for(platform_admin, reseller),
        base_url="http://shop.test",
    )
    assert response.status_code == 200 and response.get_json()["email"] == customer.email
    tree = client.get("/api/v1/marketplaces", headers=token_for(platform_admin)).get_json()
    assert {"platform", "north", "shop"} <= {m["slug"] for m in tree["items"]}


def test_a_customer_sees_only_their_own_organisations(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers
) -> None:
    alice, bob = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    listed = client.get("/api/v1/organisations", headers=token_for(alice)).get_json()
    assert [o["id"] for o in listed["items"]] == [str(alice.memberships[0].organisation_id)]
    bob_org = bob.memberships[0].organisation_id
    assert_problem(client.get(f"/api/v1/organisations/{bob_org}", headers=token_for(alice)), 404, "not-found")


def test_token_use_is_recorded_even_on_read_only_requests(
    app: Flask, committed_db: sessionmaker[Session]
) -> None:
    with committed_db() as session:
        user = accounts.create_user(session, email="reader@example.test", name="R", password=PASSWORD)
        accounts.grant(
            session,
            user,
            platform(session),
            Role.CUSTOMER,
            accounts.create_organisation(
                session,
                platform(session),
                kind=OrganisationKind.CUSTOMER,
                name="Readers",
                billing=accounts.BillingDetails(legal_name="Readers Ltd", country="IE"),
            ),
        )
        token, plaintext = accounts.create_token(session, user, platform(session), name="r", expires_at=None)
        session.commit()
    response = app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {plaintext}"})
    assert response.status_code == 200
    with committed_db() as session:
        stored = session.get(ApiToken, token.id)
        assert stored is not None and stored.last_used_at is not None
        first_use = stored.last_used_at
    app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {plaintext}"})
    with committed_db() as session:
        stored = session.get(ApiToken, token.id)
        assert stored is not None and stored.last_used_at == first_use, "touched at most once a minute"


def test_a_reseller_admin_cannot_disable_a_user_who_belongs_elsewhere_too(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    reseller: Marketplace,
    make_organisation: Callable[..., Organisation],
    db_session: Session,
) -> None:
    """Users are global: disabling one in a reseller would lock them out of the platform."""
    platform_admin = make_user(Role.ADMIN)
    accounts.grant(
        db_session,
        platform_admin,
        reseller,
        Role.CUSTOMER,
        make_organisation(OrganisationKind.CUSTOMER, reseller),
    )
    reseller_admin = make_user(Role.ADMIN, marketplace=reseller)
    shop = "http://shop.test"
    attempt = client.patch(
        f"/api/v1/users/{platform_admin.id}",
        json={"is_active": False, "name": "pwned"},
        headers=token_for(reseller_admin, reseller),
        base_url=shop,
    )
    assert "do not administer" in assert_problem(attempt, 403, "forbidden")["detail"]
    assert platform_admin.is_active and platform_admin.name != "pwned"
    # A user who belongs to the reseller only is the reseller admin's to manage.
    local = make_user(Role.CUSTOMER, marketplace=reseller)
    done = client.patch(
        f"/api/v1/users/{local.id}",
        json={"is_active": False},
        headers=token_for(reseller_admin, reseller),
        base_url=shop,
    )
    assert done.status_code == 200 and done.get_json()["is_active"] is False
