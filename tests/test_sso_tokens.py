"""Keycloak access tokens as API bearer tokens, against a real OpenID Connect server
(tests/oidc): signature, issuer, audience and expiry checked against the realm's JWKS,
keys refreshed when the realm rotates them, users linked and their roles mapped."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts import oidc
from cmw.accounts import service as accounts
from cmw.accounts.models import ExternalIdentity, IdentityProvider, Role, User
from cmw.marketplaces.models import Marketplace
from tests.oidc_server import CLIENT_ID, CLIENT_SECRET, OTHER_CLIENT_ID, OTHER_CLIENT_SECRET, OidcServer

REDIRECT = "http://127.0.0.1:9/callback"  # never followed: the code is read off the redirect


@pytest.fixture
def realm(
    app: Flask, db_session: Session, platform_marketplace: Marketplace, oidc_server: OidcServer
) -> Iterator[OidcServer]:
    """The platform marketplace signs in through the test realm."""
    oidc_server.set_client(redirect_uris=[REDIRECT])
    db_session.add(
        IdentityProvider(
            marketplace_id=platform_marketplace.id,
            issuer=oidc_server.issuer(),
            client_id=CLIENT_ID,
            client_secret_sealed=app.extensions["mercato.sealer"].seal(CLIENT_SECRET),
            roles={"mercato-admin": "admin", "mercato-customer": "customer", "mercato-vendor": "vendor"},
        )
    )
    db_session.flush()
    yield oidc_server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def real_token(realm: OidcServer, roles: list[str], **fields: Any) -> tuple[dict[str, Any], str]:
    """A user of the realm and an access token the realm issued them through the code flow."""
    user = realm.add_user(roles, **fields)
    tokens = realm.code_flow(user["username"], user["password"], REDIRECT)
    return user, tokens["access_token"]


def test_a_realm_token_is_accepted_and_links_a_new_user_with_mapped_roles(
    client: FlaskClient, realm: OidcServer, db_session: Session
) -> None:
    user, token = real_token(realm, ["mercato-customer"], first_name="Grace", last_name="Hopper")
    me = client.get("/api/v1/me", headers=bearer(token))
    assert me.status_code == 200, me.json
    assert me.json["user"]["email"] == user["email"]
    assert me.json["user"]["name"] == "Grace Hopper"
    assert me.json["roles"] == ["customer"]
    assert me.json["authenticated_by"] == "oidc"
    assert len(me.json["organisations"]) == 1
    # the second call finds the link: no second user, no second organisation
    again = client.get("/api/v1/me", headers=bearer(token))
    assert again.json["user"]["id"] == me.json["user"]["id"]
    assert again.json["organisations"] == me.json["organisations"]
    links = db_session.scalars(
        sa.select(ExternalIdentity).where(ExternalIdentity.subject == user["id"])
    ).all()
    assert [str(link.user_id) for link in links] == [me.json["user"]["id"]]


def test_the_first_use_links_to_the_user_with_the_same_verified_email(
    client: FlaskClient, realm: OidcServer, make_user: Callable[..., User]
) -> None:
    existing = make_user(email="linda@example.test")
    _, token = real_token(realm, ["mercato-admin"], username="linda", email_verified=True)
    me = client.get("/api/v1/me", headers=bearer(token))
    assert me.status_code == 200, me.json
    assert me.json["user"]["id"] == str(existing.id)
    assert "admin" in me.json["roles"]


def test_an_unverified_email_does_not_take_over_an_existing_account(
    client: FlaskClient, realm: OidcServer, make_user: Callable[..., User]
) -> None:
    make_user(email="victim@example.test")
    _, token = real_token(realm, ["mercato-admin"], username="victim", email_verified=False)
    answer = client.get("/api/v1/me", headers=bearer(token))
    assert answer.status_code == 401
    assert "not verified" in answer.json["detail"]


def test_roles_follow_the_realm(client: FlaskClient, realm: OidcServer) -> None:
    user, token = real_token(realm, ["mercato-customer"])
    assert client.get("/api/v1/me", headers=bearer(token)).json["roles"] == ["customer"]
    realm.control(
        "user", {**realm.user(user["id"]), "roles": ["mercato-admin"], "password": user["password"]}
    )
    # the realm now says admin and no longer customer: a new token carries that
    promoted = realm.sign({"sub": user["id"], "aud": CLIENT_ID, "realm_access": {"roles": ["mercato-admin"]}})
    assert client.get("/api/v1/me", headers=bearer(promoted)).json["roles"] == ["admin"]


def test_tampered_expired_foreign_and_misaddressed_tokens_are_401_with_the_reason(
    client: FlaskClient, realm: OidcServer, caplog: pytest.LogCaptureFixture
) -> None:
    user, token = real_token(realm, ["mercato-customer"])
    header, payload, signature = token.split(".")
    flipped = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
    now = int(time.time())
    cases = {
        "bad signature": f"{header}.{flipped}.{signature}",
        "token expired": realm.sign(
            {"sub": user["id"], "aud": CLIENT_ID, "iat": now - 900, "exp": now - 600}
        ),
        "audience": realm.sign({"sub": user["id"], "aud": OTHER_CLIENT_ID}),
        "another issuer": realm.sign(
            {"sub": user["id"], "aud": CLIENT_ID, "iss": "http://127.0.0.1:9/realms/x"}
        ),
        "malformed token": "not.a.jwt",
    }
    caplog.set_level(logging.DEBUG)
    for reason, bad in cases.items():
        answer = client.get("/api/v1/me", headers=bearer(bad))
        assert answer.status_code == 401, reason
        assert reason in answer.json["detail"], (reason, answer.json)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert bad not in answer.get_data(as_text=True)
        assert bad not in caplog.text
    # the untouched token still works
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200


def test_a_token_the_realm_gave_another_client_is_refused(client: FlaskClient, realm: OidcServer) -> None:
    response = requests.post(
        f"{realm.issuer()}/protocol/openid-connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": OTHER_CLIENT_ID,
            "client_secret": OTHER_CLIENT_SECRET,
        },
        timeout=10,
    )
    answer = client.get("/api/v1/me", headers=bearer(response.json()["access_token"]))
    assert answer.status_code == 401
    assert "audience" in answer.json["detail"]


def test_the_realm_rotates_its_signing_key(client: FlaskClient, realm: OidcServer) -> None:
    user, old = real_token(realm, ["mercato-customer"])
    assert client.get("/api/v1/me", headers=bearer(old)).status_code == 200
    realm.control("rotate-key", {"keep_old": False})
    # a token signed with the new key names a kid the cached JWKS lacks: fetched again
    new = realm.code_flow(user["username"], user["password"], REDIRECT)["access_token"]
    assert client.get("/api/v1/me", headers=bearer(new)).status_code == 200
    # the old key is gone from the realm, so its tokens are too
    refused = client.get("/api/v1/me", headers=bearer(old))
    assert refused.status_code == 401
    assert "does not publish" in refused.json["detail"]


def test_a_disabled_user_is_refused_here_and_at_the_realm(
    client: FlaskClient, realm: OidcServer, db_session: Session
) -> None:
    _, token = real_token(realm, ["mercato-customer"])
    me = client.get("/api/v1/me", headers=bearer(token)).json
    mercato_user = db_session.get(User, uuid.UUID(me["user"]["id"]))
    assert mercato_user is not None
    accounts.set_active(db_session, mercato_user, False)
    db_session.flush()
    answer = client.get("/api/v1/me", headers=bearer(token))
    assert answer.status_code == 401
    assert "disabled" in answer.json["detail"]

    # disabled at the realm: the token is still signed and in date, introspection tells
    other, other_token = real_token(realm, ["mercato-customer"])
    provider = db_session.get(IdentityProvider, uuid.UUID(me["marketplace_id"]))
    assert provider is not None
    provider.introspect = True
    db_session.flush()
    assert client.get("/api/v1/me", headers=bearer(other_token)).status_code == 200
    realm.control("user", {**realm.user(other["id"]), "enabled": False, "roles": ["mercato-customer"]})
    oidc._introspected.clear()
    refused = client.get("/api/v1/me", headers=bearer(other_token))
    assert refused.status_code == 401
    assert "no longer active" in refused.json["detail"]


def test_a_marketplace_without_a_provider_refuses_provider_tokens(
    client: FlaskClient, oidc_server: OidcServer
) -> None:
    token = oidc_server.sign({"sub": "someone", "aud": CLIENT_ID})
    answer = client.get("/api/v1/me", headers=bearer(token))
    assert answer.status_code == 401
    assert "no identity provider" in answer.json["detail"]


def test_a_token_without_realm_roles_leaves_the_roles_alone(client: FlaskClient, realm: OidcServer) -> None:
    user, token = real_token(realm, ["mercato-customer"])
    assert client.get("/api/v1/me", headers=bearer(token)).json["roles"] == ["customer"]
    # a client without the roles mapper: its tokens carry no realm_access at all
    bare = realm.sign({"sub": user["id"], "aud": CLIENT_ID, "realm_access": None})
    assert client.get("/api/v1/me", headers=bearer(bare)).json["roles"] == ["customer"]


def test_one_realm_user_gets_their_roles_in_each_marketplace_that_uses_the_realm(
    client: FlaskClient, realm: OidcServer, make_marketplace: Callable[..., Marketplace]
) -> None:
    reseller = make_marketplace()  # no provider of its own: it inherits the platform's
    _, token = real_token(realm, ["mercato-customer"])
    here = client.get("/api/v1/me", headers=bearer(token))
    there = client.get("/api/v1/me", headers=bearer(token), base_url=f"http://{reseller.domain}")
    assert here.json["roles"] == there.json["roles"] == ["customer"]
    assert here.json["user"]["id"] == there.json["user"]["id"]
    assert there.json["marketplace_id"] == str(reseller.id)
    assert here.json["organisations"][0]["id"] != there.json["organisations"][0]["id"]


def test_id_logout_and_unsigned_tokens_are_not_access_tokens(client: FlaskClient, realm: OidcServer) -> None:
    user = realm.add_user(["mercato-customer"])
    tokens = realm.code_flow(user["username"], user["password"], REDIRECT)
    answer = client.get("/api/v1/me", headers=bearer(tokens["id_token"]))
    assert answer.status_code == 401 and "not an access token" in answer.json["detail"]
    logout = realm.sign(
        {"sub": user["id"], "aud": CLIENT_ID, "events": {oidc.BACKCHANNEL_LOGOUT_EVENT: {}}, "typ": "Logout"}
    )
    assert "not an access token" in client.get("/api/v1/me", headers=bearer(logout)).json["detail"]
    header, payload, _ = tokens["access_token"].split(".")
    for alg in ("none", "HS256"):
        forged_header = base64.urlsafe_b64encode(json.dumps({"alg": alg, "typ": "at+jwt"}).encode()).rstrip(
            b"="
        )
        forged = f"{forged_header.decode()}.{payload}.c2lnbmF0dXJl"
        refused = client.get("/api/v1/me", headers=bearer(forged))
        assert refused.status_code == 401 and "algorithm" in refused.json["detail"], alg
    assert header  # the real one's header named RS256


def test_local_grants_survive_and_a_role_given_again_returns_to_its_organisation(
    client: FlaskClient, realm: OidcServer, make_user: Callable[..., User], db_session: Session
) -> None:
    local = make_user(email="mixed@example.test")  # a customer, granted here at sign-up
    user = realm.add_user(["offline_access"], username="mixed", email_verified=True)

    def roles_with(realm_roles: list[str]) -> dict[str, Any]:
        token = realm.sign({"sub": user["id"], "aud": CLIENT_ID, "realm_access": {"roles": realm_roles}})
        answer = client.get("/api/v1/me", headers=bearer(token))
        assert answer.status_code == 200, answer.json
        assert answer.json["user"]["id"] == str(local.id)
        me: dict[str, Any] = answer.json
        return me

    # the realm gives no customer role: the grant made here stays all the same
    assert roles_with(["offline_access"])["roles"] == ["customer"]
    # the realm makes them a vendor, takes it back, gives it again: one vendor organisation
    first = roles_with(["mercato-vendor"])
    vendor_orgs = {m["organisation_id"] for m in first["memberships"] if m["role"] == "vendor"}
    assert len(vendor_orgs) == 1 and sorted(first["roles"]) == ["customer", "vendor"]
    assert roles_with([])["roles"] == ["customer"]
    again = roles_with(["mercato-vendor"])
    assert {m["organisation_id"] for m in again["memberships"] if m["role"] == "vendor"} == vendor_orgs


def test_a_partners_own_realm_cannot_sign_in_to_an_existing_account(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    realm: OidcServer,
    make_marketplace: Callable[..., Marketplace],
    make_user: Callable[..., User],
) -> None:
    """A distributor's admin points their marketplace at a realm they control; it asserts
    the platform admin's (verified) address: no link, no session."""
    boss = make_user(Role.ADMIN, email="boss@example.test")
    partner = make_marketplace()
    db_session.add(
        IdentityProvider(
            marketplace_id=partner.id,
            issuer=realm.issuer(),
            client_id=CLIENT_ID,
            client_secret_sealed=app.extensions["mercato.sealer"].seal(CLIENT_SECRET),
            roles={"mercato-admin": "admin"},
        )
    )
    db_session.flush()
    impostor = realm.add_user(["mercato-admin"], username="boss", email_verified=True)
    token = realm.sign({"sub": impostor["id"], "aud": CLIENT_ID})
    answer = client.get("/api/v1/me", headers=bearer(token), base_url=f"http://{partner.domain}")
    assert answer.status_code == 401
    assert "cannot sign in to it" in answer.json["detail"]
    assert db_session.scalar(sa.select(ExternalIdentity).where(ExternalIdentity.user_id == boss.id)) is None
    # a new address is fine: the partner's realm makes its own users
    newcomer = realm.add_user(["mercato-admin"])
    fresh = realm.sign({"sub": newcomer["id"], "aud": CLIENT_ID})
    assert (
        client.get("/api/v1/me", headers=bearer(fresh), base_url=f"http://{partner.domain}").status_code
        == 200
    )
