"""Single sign-on in the browser against a real OpenID Connect server with Keycloak's
layout (tests/oidc): the Chromium flow through Keycloak's login form, sign-out that ends
the Keycloak session, back-channel logout, and callbacks that must fail."""

from __future__ import annotations

import html
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts.models import ExternalIdentity, IdentityProvider, SsoSession, User
from cmw.accounts.oidc import BACKCHANNEL_LOGOUT_EVENT
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from tests.browser import screenshot
from tests.oidc_server import CLIENT_ID, CLIENT_SECRET, OidcServer

PASSWORD_SIGN_IN = {"email": "someone@example.test", "password": "whatever-it-is"}


@pytest.fixture
def sso(
    app: Flask, committed_db: sessionmaker[Session], live_server: str, oidc_server: OidcServer
) -> Iterator[OidcServer]:
    """The platform marketplace signs in through the test realm, whose client knows the
    live server's callback, post-logout and back-channel logout addresses."""
    oidc_server.set_client(
        redirect_uris=[f"{live_server}/sign-in/sso/callback"],
        post_logout_redirect_uris=[f"{live_server}/"],
        backchannel_logout_uri=f"{live_server}/sign-in/sso/backchannel-logout",
    )
    with committed_db() as session:
        platform = session.scalar(sa.select(Marketplace).where(Marketplace.kind == MarketplaceKind.PLATFORM))
        assert platform is not None
        session.add(
            IdentityProvider(
                marketplace_id=platform.id,
                issuer=oidc_server.issuer(),
                client_id=CLIENT_ID,
                client_secret_sealed=app.extensions["mercato.sealer"].seal(CLIENT_SECRET),
                roles={"mercato-admin": "admin", "mercato-customer": "customer"},
                display_name="Acme Keycloak",
            )
        )
        session.commit()
    try:
        yield oidc_server
    finally:
        with committed_db() as session:
            session.execute(sa.update(Marketplace).values(local_sign_in=True))
            session.commit()


def browser_sign_in(live_server: str, user: dict[str, Any]) -> tuple[requests.Session, str]:
    """What a browser does, without one: start at Mercato, fill Keycloak's form, follow the
    redirects back. Returns the HTTP session (both sites' cookies) and the callback URL."""
    http = requests.Session()
    page = http.get(f"{live_server}/sign-in/sso", timeout=10)
    action = re.search(r'id="kc-form-login" method="post" action="([^"]+)"', page.text)
    assert action, page.text
    response = http.post(
        urljoin(page.url, html.unescape(action.group(1))),
        data={"username": user["username"], "password": user["password"]},
        allow_redirects=False,
        timeout=10,
    )
    while response.is_redirect:
        target = urljoin(response.url, response.headers["Location"])
        if target.startswith(f"{live_server}/sign-in/sso/callback"):
            return http, target
        response = http.get(target, allow_redirects=False, timeout=10)
    raise AssertionError(f"never came back to Mercato: {response.status_code} {response.text[:300]}")


def test_sign_in_through_keycloak_lands_in_the_control_panel_and_sign_out_ends_both_sessions(
    sso: OidcServer, live_server: str, page: Page, committed_db: sessionmaker[Session]
) -> None:
    admin = sso.add_user(["mercato-admin"], first_name="Ada", last_name="Admin")
    page.goto(f"{live_server}/sign-in")
    page.get_by_role("link", name="Sign in with Acme Keycloak").click()
    # Keycloak's login form, by its element ids
    expect(page.locator("#kc-form-login")).to_be_visible()
    page.locator("#username").fill(admin["username"])
    page.locator("#password").fill(admin["password"])
    page.locator("#kc-login").click()
    # the realm role mercato-admin is Mercato's admin role: the admin control panel
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    assert urlsplit(page.url).path == "/admin/users"
    expect(page.get_by_role("link", name="Review queue")).to_be_visible()
    screenshot(page, "sso-signed-in-admin")
    with committed_db() as session:
        user = session.scalar(sa.select(User).where(User.email == admin["email"]))
        assert user is not None and user.name == "Ada Admin" and user.password_hash is None
        record = session.scalar(sa.select(SsoSession).where(SsoSession.user_id == user.id))
        assert record is not None and record.sid and record.ended_at is None

    page.get_by_role("button", name="Sign out").click()
    # Keycloak ended its session and sent the browser back to the storefront
    page.wait_for_url(f"{live_server}/")
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    # the Keycloak session is gone: signing in again asks for the password again
    page.goto(f"{live_server}/sign-in/sso")
    expect(page.locator("#kc-form-login")).to_be_visible()
    with committed_db() as session:
        assert session.scalar(sa.select(SsoSession.ended_at).where(SsoSession.id == record.id)) is not None


def test_keycloaks_back_channel_logout_ends_the_mercato_session(
    sso: OidcServer, live_server: str, committed_db: sessionmaker[Session]
) -> None:
    customer = sso.add_user(["mercato-customer"])
    http, callback = browser_sign_in(live_server, customer)
    http.get(callback, timeout=10)
    me = http.get(f"{live_server}/api/v1/me", timeout=10)
    assert me.status_code == 200 and me.json()["roles"] == ["customer"]

    # the user signs out at Keycloak itself (another application's sign-out, say)
    logout = http.get(f"{sso.issuer()}/protocol/openid-connect/logout", timeout=10)
    form = re.search(r'<form[^>]*id="op.logoutForm"[^>]*action="([^"]+)"', logout.text)
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', logout.text)
    assert form and xsrf, logout.text
    done = http.post(
        urljoin(logout.url, html.unescape(form.group(1))),
        data={"xsrf": xsrf.group(1), "logout": "yes"},
        timeout=10,
    )
    assert done.status_code == 200
    # Keycloak told Mercato over the back channel: the session is over
    answer = http.get(f"{live_server}/api/v1/me", timeout=10)
    assert answer.status_code == 401
    with committed_db() as session:
        ended = session.scalars(sa.select(SsoSession.ended_at)).all()
        assert ended and all(at is not None for at in ended)


def test_a_wrong_state_or_a_replayed_code_signs_no_one_in(sso: OidcServer, live_server: str) -> None:
    user = sso.add_user(["mercato-customer"])
    http, callback = browser_sign_in(live_server, user)
    query = parse_qs(urlsplit(callback).query)

    forged = http.get(f"{live_server}/sign-in/sso/callback?code={query['code'][0]}&state=forged", timeout=10)
    assert forged.status_code == 400
    assert "could not be completed" in forged.text
    assert http.get(f"{live_server}/api/v1/me", timeout=10).status_code == 401

    assert http.get(callback, timeout=10).status_code == 200  # the real one, once
    assert http.get(f"{live_server}/api/v1/me", timeout=10).status_code == 200

    # the same code again, under a state this browser did ask for: the realm refuses it
    other = requests.Session()
    start = other.get(f"{live_server}/sign-in/sso", allow_redirects=False, timeout=10)
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    replay = other.get(
        f"{live_server}/sign-in/sso/callback?code={query['code'][0]}&state={state}", timeout=10
    )
    assert replay.status_code == 400
    assert "invalid_grant" in replay.text
    assert other.get(f"{live_server}/api/v1/me", timeout=10).status_code == 401


def test_an_admin_turns_password_sign_in_off(
    sso: OidcServer, live_server: str, committed_db: sessionmaker[Session]
) -> None:
    with committed_db() as session:
        session.execute(sa.update(Marketplace).values(local_sign_in=False))
        session.commit()
    page = requests.get(f"{live_server}/sign-in", timeout=10)
    assert "Sign in with Acme Keycloak" in page.text
    assert 'type="password"' not in page.text
    api = requests.post(f"{live_server}/api/v1/session", json=PASSWORD_SIGN_IN, timeout=10)
    assert api.status_code == 403
    assert "turned off" in api.json()["detail"]
    # single sign-on still works
    user = sso.add_user(["mercato-customer"])
    http, callback = browser_sign_in(live_server, user)
    http.get(callback, timeout=10)
    assert http.get(f"{live_server}/api/v1/me", timeout=10).json()["user"]["email"] == user["email"]
    with committed_db() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ExternalIdentity)) == 1


def test_a_forged_back_channel_logout_is_refused(sso: OidcServer, live_server: str) -> None:
    forged = requests.post(
        f"{live_server}/sign-in/sso/backchannel-logout", data={"logout_token": "a.b.c"}, timeout=10
    )
    assert forged.status_code == 400
    assert forged.json()["error"] == "invalid_request"
    # signed by the realm, but an access token, not a logout token
    token = sso.sign({"sub": "x", "aud": CLIENT_ID})
    wrong = requests.post(
        f"{live_server}/sign-in/sso/backchannel-logout", data={"logout_token": token}, timeout=10
    )
    assert wrong.status_code == 400
    assert "not a logout token" in wrong.json()["error_description"]


def test_logout_tokens_must_be_complete_fresh_for_us_and_used_once(
    sso: OidcServer, live_server: str, committed_db: sessionmaker[Session]
) -> None:
    customer = sso.add_user(["mercato-customer"])
    http, callback = browser_sign_in(live_server, customer)
    http.get(callback, timeout=10)
    assert http.get(f"{live_server}/api/v1/me", timeout=10).status_code == 200
    url = f"{live_server}/sign-in/sso/backchannel-logout"
    now = int(time.time())
    good = {
        "sub": customer["id"],
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_hex(8),
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }
    refusals = {
        "needs iat and jti": {**good, "jti": None},
        "too old": {**good, "iat": now - 3600, "exp": now + 60, "jti": secrets.token_hex(8)},
        "audience": {**good, "aud": "someone-else", "jti": secrets.token_hex(8)},
        "no expiry": {**good, "exp": None, "jti": secrets.token_hex(8)},
    }
    for reason, claims in refusals.items():
        answer = requests.post(url, data={"logout_token": sso.sign(claims)}, timeout=10)
        assert answer.status_code == 400, reason
        assert reason in answer.json()["error_description"], (reason, answer.json())
    assert http.get(f"{live_server}/api/v1/me", timeout=10).status_code == 200  # nothing ended yet

    token = sso.sign(good)
    assert requests.post(url, data={"logout_token": token}, timeout=10).status_code == 200
    assert http.get(f"{live_server}/api/v1/me", timeout=10).status_code == 401
    replayed = requests.post(url, data={"logout_token": token}, timeout=10)
    assert replayed.status_code == 400 and "used before" in replayed.json()["error_description"]
    # a later session of the same user is not ended by the replay
    again, callback = browser_sign_in(live_server, customer)
    again.get(callback, timeout=10)
    assert again.get(f"{live_server}/api/v1/me", timeout=10).status_code == 200


def test_sign_up_is_refused_where_passwords_are_off(
    sso: OidcServer, live_server: str, committed_db: sessionmaker[Session]
) -> None:
    with committed_db() as session:
        session.execute(sa.update(Marketplace).values(local_sign_in=False))
        session.commit()
    body = {
        "email": "late@example.test",
        "name": "Late Comer",
        "password": "a-good-long-password",
        "organisation": {"name": "Late", "legal_name": "Late Ltd", "country": "IE"},
    }
    api = requests.post(f"{live_server}/api/v1/users", json=body, timeout=10)
    assert api.status_code == 403 and "sign up through Acme Keycloak" in api.json()["detail"]
    page = requests.get(f"{live_server}/sign-up", timeout=10)
    assert page.status_code == 403 and "Sign up through Acme Keycloak" in page.text
    with committed_db() as session:
        assert session.scalar(sa.select(User).where(User.email == "late@example.test")) is None
