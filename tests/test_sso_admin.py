"""Keycloak's admin API through python-keycloak, against the test realm (tests/oidc):
sign-up makes the Keycloak user with its realm roles, an admin's disabling reaches the
realm, and admins set up single sign-on per marketplace."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts.consumers import KeycloakUsers
from cmw.accounts.models import ExternalIdentity, IdentityProvider, Role, User
from cmw.events.consumer import Event
from cmw.events.models import OutboxEvent
from cmw.marketplaces.models import Marketplace
from tests.conftest import PASSWORD
from tests.oidc_server import CLIENT_ID, CLIENT_SECRET, OidcServer
from tests.servers import free_port
from tests.test_accounts import page_csrf, sign_in

Headers = Callable[..., dict[str, str]]
REDIRECT = "http://127.0.0.1:9/callback"


def provider(app: Flask, marketplace: Marketplace, issuer: str, **fields: Any) -> IdentityProvider:
    return IdentityProvider(
        marketplace_id=marketplace.id,
        issuer=issuer,
        client_id=CLIENT_ID,
        client_secret_sealed=app.extensions["mercato.sealer"].seal(CLIENT_SECRET),
        roles={"mercato-admin": "admin", "mercato-customer": "customer"},
        **fields,
    )


def sign_up(client: FlaskClient, email: str, password: str = "a-good-long-password") -> Any:
    return client.post(
        "/api/v1/users",
        json={
            "email": email,
            "name": "Kim Keycloak",
            "password": password,
            "organisation": {"name": "Kimco", "legal_name": "Kimco GmbH", "country": "DE"},
        },
    )


def test_sign_up_makes_the_keycloak_user_with_its_roles_and_the_same_password(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    platform_marketplace: Marketplace,
    oidc_server: OidcServer,
) -> None:
    oidc_server.set_client(redirect_uris=[REDIRECT])
    db_session.add(provider(app, platform_marketplace, oidc_server.issuer(), provision_users=True))
    db_session.flush()
    email = f"kim-{uuid.uuid4().hex[:6]}@example.test"
    response = sign_up(client, email)
    assert response.status_code == 201, response.json
    at_realm = oidc_server.find_user(email)
    assert at_realm is not None
    assert at_realm["roles"] == ["mercato-customer"]
    assert at_realm["enabled"] is True
    assert (at_realm["firstName"], at_realm["lastName"]) == ("Kim", "Keycloak")
    link = db_session.scalar(
        sa.select(ExternalIdentity).where(ExternalIdentity.user_id == response.json["id"])
    )
    assert link is not None and link.subject == at_realm["id"]
    # the new customer can sign in through Keycloak with the password they chose here
    token = oidc_server.code_flow(email, "a-good-long-password", REDIRECT)["access_token"]
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json["user"]["id"] == response.json["id"]
    assert me.json["roles"] == ["customer"]


def test_sign_up_while_keycloak_is_down_writes_nothing(
    app: Flask, client: FlaskClient, db_session: Session, platform_marketplace: Marketplace
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/realms/mercato"
    db_session.add(provider(app, platform_marketplace, dead, provision_users=True))
    db_session.flush()
    response = sign_up(client, "nobody-made@example.test")
    assert response.status_code == 503
    assert "cannot be reached" in response.json["detail"]
    assert db_session.scalar(sa.select(User).where(User.email == "nobody-made@example.test")) is None
    assert "user.signed_up" not in db_session.scalars(sa.select(OutboxEvent.topic)).all()


def test_a_user_disabled_here_is_disabled_in_keycloak_and_enabled_again(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    platform_marketplace: Marketplace,
    oidc_server: OidcServer,
    make_user: Callable[..., User],
    token_for: Headers,
) -> None:
    db_session.add(provider(app, platform_marketplace, oidc_server.issuer(), provision_users=True))
    db_session.flush()
    email = f"dis-{uuid.uuid4().hex[:6]}@example.test"
    user_id = sign_up(client, email).json["id"]
    admin = make_user(Role.ADMIN)
    consumer = next(c for c in app.extensions["mercato.consumers"] if isinstance(c, KeycloakUsers))
    for active in (False, True):
        answer = client.patch(
            f"/api/v1/users/{user_id}", json={"is_active": active}, headers=token_for(admin)
        )
        assert answer.status_code == 200, answer.json
        topic = "user.enabled" if active else "user.disabled"
        payload = db_session.scalars(
            sa.select(OutboxEvent.payload).where(OutboxEvent.topic == topic).order_by(OutboxEvent.seq.desc())
        ).first()
        assert payload == {"user_id": user_id}
        consumer.handle(db_session, Event(id=str(uuid.uuid4()), topic=topic, payload=payload))
        found = oidc_server.find_user(email)
        assert found is not None and found["enabled"] is active


# --------------------------------------------------------------- sign-in settings API
@pytest.fixture
def admin_headers(make_user: Callable[..., User], token_for: Headers) -> dict[str, str]:
    return token_for(make_user(Role.ADMIN))


def test_an_admin_sets_up_single_sign_on_and_turns_passwords_off(
    client: FlaskClient, oidc_server: OidcServer, admin_headers: dict[str, str]
) -> None:
    url = "/api/v1/admin/sign-in"
    assert client.get(url, headers=admin_headers).json == {"local_sign_in": True, "identity_provider": None}
    refused = client.put(url, json={"local_sign_in": False}, headers=admin_headers)
    assert refused.status_code == 422
    assert refused.json["errors"][0]["field"] == "local_sign_in"

    body = {
        "identity_provider": {
            "issuer": oidc_server.issuer(),
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "roles": {"acme-admins": "admin", "acme-buyers": "customer"},
            "display_name": "Acme SSO",
        },
        "local_sign_in": False,
    }
    saved = client.put(url, json=body, headers=admin_headers)
    assert saved.status_code == 200, saved.json
    assert saved.json["local_sign_in"] is False
    shown = saved.json["identity_provider"]
    assert shown["issuer"] == oidc_server.issuer() and shown["source"] == "marketplace"
    assert shown["roles"] == {"acme-admins": "admin", "acme-buyers": "customer"}
    assert "client_secret" not in shown and CLIENT_SECRET not in saved.get_data(as_text=True)
    # a later change that leaves the secret out keeps it
    kept = dict(body["identity_provider"])
    del kept["client_secret"]
    kept["display_name"] = "Acme Single Sign-On"
    assert client.put(url, json={"identity_provider": kept}, headers=admin_headers).status_code == 200
    assert client.get("/sign-in").get_data(as_text=True).count("Sign in with Acme Single Sign-On") == 1
    # removing the provider while passwords are off would lock everyone out
    locked = client.put(url, json={"identity_provider": None}, headers=admin_headers)
    assert locked.status_code == 422
    assert locked.json["errors"][0]["field"] == "identity_provider"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"roles": {"x": "emperor"}}, "identity_provider.roles", "not a Mercato role"),
        ({"issuer": "http://127.0.0.1:9/realms/nowhere"}, "identity_provider.issuer", "could not be read"),
        ({"issuer": "http://127.0.0.1:9/no-realm"}, "identity_provider.issuer", "realm"),
        ({"client_secret": ""}, "identity_provider.client_secret", ""),
    ],
)
def test_bad_provider_settings_are_422_and_change_nothing(
    client: FlaskClient,
    oidc_server: OidcServer,
    admin_headers: dict[str, str],
    change: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    body = {"issuer": oidc_server.issuer(), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **change}
    answer = client.put("/api/v1/admin/sign-in", json={"identity_provider": body}, headers=admin_headers)
    assert answer.status_code == 422, answer.json
    assert any(e["field"] == field and reason in e["message"] for e in answer.json["errors"]), answer.json
    assert client.get("/api/v1/admin/sign-in", headers=admin_headers).json["identity_provider"] is None


def test_only_admins_see_the_sign_in_settings(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers
) -> None:
    answer = client.get("/api/v1/admin/sign-in", headers=token_for(make_user(Role.CUSTOMER)))
    assert answer.status_code == 403


def test_a_reseller_marketplace_inherits_its_parents_provider_unless_it_has_its_own(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    platform_marketplace: Marketplace,
    make_marketplace: Callable[..., Marketplace],
    oidc_server: OidcServer,
    make_user: Callable[..., User],
    token_for: Headers,
) -> None:
    db_session.add(provider(app, platform_marketplace, oidc_server.issuer()))
    reseller = make_marketplace()
    db_session.flush()
    admin = make_user(Role.ADMIN, marketplace=reseller)
    headers = token_for(admin, marketplace=reseller)
    host = reseller.domain
    inherited = client.get("/api/v1/admin/sign-in", headers=headers, base_url=f"http://{host}")
    assert inherited.status_code == 200, inherited.json
    assert inherited.json["identity_provider"]["source"] == "inherited"
    own = {"issuer": oidc_server.issuer(), "client_id": "reseller-client", "client_secret": "s"}
    changed = client.put(
        "/api/v1/admin/sign-in", json={"identity_provider": own}, headers=headers, base_url=f"http://{host}"
    )
    assert changed.status_code == 200, changed.json
    assert changed.json["identity_provider"]["source"] == "marketplace"
    assert changed.json["identity_provider"]["client_id"] == "reseller-client"
    # the platform's own provider is untouched
    platform_view = client.get("/api/v1/admin/sign-in", headers=token_for(make_user(Role.ADMIN)))
    assert platform_view.json["identity_provider"]["client_id"] == CLIENT_ID


def test_the_admin_page_sets_up_single_sign_on_and_turns_passwords_off(
    client: FlaskClient, oidc_server: OidcServer, make_user: Callable[..., User], db_session: Session
) -> None:
    admin = make_user(Role.ADMIN)
    sign_in(client, admin.email)
    page = client.get("/admin/sign-in").get_data(as_text=True)
    assert "No single sign-on" in page
    form = {
        "csrf_token": page_csrf(client, "/admin/sign-in"),
        "issuer": oidc_server.issuer(),
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "roles": "acme-admin = admin\nacme-buyer = customer",
        "display_name": "Acme SSO",
    }
    # passwords stay on: local_sign_in is checked
    saved = client.post("/admin/sign-in", data={**form, "local_sign_in": "y"})
    assert saved.status_code == 302
    shown = client.get("/admin/sign-in").get_data(as_text=True)
    assert "People sign in with <strong>Acme SSO</strong>" in shown
    assert CLIENT_SECRET not in shown
    row = db_session.scalar(sa.select(IdentityProvider))
    assert row is not None and row.roles == {"acme-admin": "admin", "acme-buyer": "customer"}
    # a bad mapping line is shown next to its field, nothing changes
    bad = client.post("/admin/sign-in", data={**form, "roles": "acme-admin admin", "local_sign_in": "y"})
    assert bad.status_code == 422 and "is not realm-role = role" in bad.get_data(as_text=True)
    # passwords off (the box unticked): the sign-in page offers only single sign-on
    off = client.post("/admin/sign-in", data={**form, "client_secret": ""})
    assert off.status_code == 302
    sign_in_page = client.get("/sign-in").get_data(as_text=True)
    assert "Sign in with Acme SSO" in sign_in_page and 'type="password"' not in sign_in_page


def test_sign_up_with_an_address_the_realm_knows_is_refused_and_links_nothing(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    platform_marketplace: Marketplace,
    oidc_server: OidcServer,
) -> None:
    db_session.add(provider(app, platform_marketplace, oidc_server.issuer(), provision_users=True))
    db_session.flush()
    victim = oidc_server.add_user(["offline_access"])
    answer = sign_up(client, victim["email"], password="attacker-chosen-pw")
    assert answer.status_code == 409
    assert "knows this e-mail address already" in answer.json["detail"]
    assert db_session.scalar(sa.select(User).where(User.email == victim["email"])) is None
    assert oidc_server.user(victim["id"])["roles"] == ["offline_access"]


def test_an_issuer_must_be_https_and_a_new_issuer_needs_its_secret(
    client: FlaskClient, oidc_server: OidcServer, admin_headers: dict[str, str]
) -> None:
    url = "/api/v1/admin/sign-in"
    plain = {"issuer": "http://sso.example.com/realms/acme", "client_id": "c", "client_secret": "s"}
    answer = client.put(url, json={"identity_provider": plain}, headers=admin_headers)
    assert answer.status_code == 422 and "https" in answer.json["errors"][0]["message"]
    body = {"issuer": oidc_server.issuer(), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    assert client.put(url, json={"identity_provider": body}, headers=admin_headers).status_code == 200
    # pointing the stored secret at another client (or host) needs the secret again
    moved = {"issuer": oidc_server.issuer(), "client_id": "another-client"}
    answer = client.put(url, json={"identity_provider": moved}, headers=admin_headers)
    assert answer.status_code == 422
    assert answer.json["errors"][0]["field"] == "identity_provider.client_secret"


def test_sign_in_never_sends_the_browser_off_site(
    client: FlaskClient, make_user: Callable[..., User]
) -> None:
    user = make_user()
    for target in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
        client.post("/sign-out", data={"csrf_token": page_csrf(client, "/sign-in")})
        answer = client.post(
            "/sign-in",
            query_string={"next": target},
            data={"csrf_token": page_csrf(client, "/sign-in"), "email": user.email, "password": PASSWORD},
        )
        assert answer.status_code == 302, target
        assert answer.headers["Location"] == "/", target
