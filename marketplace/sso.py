"""Signing in through the marketplace's identity provider (Keycloak) in the browser.

Authlib's Flask client runs the authorization-code flow with PKCE, state and nonce, and
validates the ID token against the realm's discovery document and keys. The user is then
linked (:func:`cmw.accounts.oidc.link`), their roles mapped, and a Mercato session
started that remembers its :class:`SsoSession`: signing out here ends the Keycloak
session too (RP-initiated logout), and Keycloak's back-channel logout ends this one.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from authlib.integrations.base_client import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Flask, current_app, jsonify, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from joserfc.errors import JoseError

from cmw.accounts import oidc
from cmw.accounts.auth import current_identity, current_marketplace, identity_provider, start_session
from cmw.accounts.models import Role, SsoSession
from cmw.db import utcnow
from cmw.extensions import current_session
from marketplace.views import _safe_next, bp

SCOPE = "openid email profile"
SESSION_KEY = "sso"
_NEXT_KEY = "sso_next"

_registry_lock = threading.Lock()


def _client(settings: oidc.ProviderSettings) -> Any:
    """Authlib's client for the provider, registered on first use and again when its
    settings change (an admin edited the marketplace's provider)."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    with _registry_lock:
        oauth: OAuth = app.extensions.get("mercato.oauth") or OAuth(app)
        app.extensions["mercato.oauth"] = oauth
        known: dict[str, oidc.ProviderSettings] = app.extensions.setdefault("mercato.oauth.settings", {})
        if known.get(settings.key) != settings:
            oauth.register(
                settings.key,
                overwrite=True,
                client_id=settings.client_id,
                client_secret=settings.client_secret,
                server_metadata_url=settings.metadata_url,
                client_kwargs={
                    "scope": SCOPE,
                    "code_challenge_method": "S256",
                    "token_endpoint_auth_method": "client_secret_post",
                    "timeout": oidc.HTTP_TIMEOUT,
                },
            )
            oauth._clients.pop(settings.key, None)  # the client built from the old settings
            known[settings.key] = settings
        return oauth.create_client(settings.key)


def failed(message: str, status: int = 400) -> ResponseReturnValue:
    """The sign-in did not happen: say why, start no session."""
    session.pop("uid", None)
    return render_template("sso_failed.html", message=message), status


@bp.get("/sign-in/sso")
def sso_start() -> ResponseReturnValue:
    settings = identity_provider()
    if settings is None:
        return failed("This marketplace has no single sign-on.", 404)
    session[_NEXT_KEY] = _safe_next(request.args.get("next"))
    try:
        return _client(settings).authorize_redirect(url_for("pages.sso_callback", _external=True))
    except (OAuthError, OSError, ValueError) as exc:
        current_app.logger.warning("identity provider %s unreachable: %s", settings.issuer, exc)
        return failed(f"{settings.display_name} cannot be reached just now; try again in a moment.", 503)


@bp.get("/sign-in/sso/callback")
def sso_callback() -> ResponseReturnValue:
    settings = identity_provider()
    if settings is None:
        return failed("This marketplace has no single sign-on.", 404)
    if "error" in request.args:
        # the provider's own words stay out of the page: they come from the query string
        code = request.args["error"] if request.args["error"].isidentifier() else "error"
        return failed(f"{settings.display_name} did not sign you in ({code}).")
    try:
        token = _client(settings).authorize_access_token()
    except OAuthError as exc:
        # a wrong or missing state, a replayed or expired code
        current_app.logger.info("single sign-on refused: %s", exc.error)
        return failed(f"The sign-in could not be completed ({exc.error}). Please start again.")
    except (JoseError, ValueError) as exc:
        # an ID token with a bad signature, nonce, audience or date
        current_app.logger.info("single sign-on refused an ID token: %s", type(exc).__name__)
        return failed("The identity provider's ID token was refused. Please start again.")
    except OSError as exc:
        current_app.logger.warning("identity provider %s unreachable: %s", settings.issuer, exc)
        return failed(f"{settings.display_name} cannot be reached just now; try again in a moment.", 503)
    id_claims: dict[str, Any] = dict(token.get("userinfo") or {})
    try:
        access_claims = oidc.decode(settings, token["access_token"], kind=oidc.RECEIVED)
    except oidc.TokenRejected as exc:
        return failed(f"The identity provider's token was refused: {exc}.")
    if not id_claims.get("sub") or access_claims.get("sub") != id_claims.get("sub"):
        return failed("The identity provider's tokens name different users.")
    db = current_session()
    marketplace = current_marketplace()
    claims = {**access_claims, **id_claims}
    roles = oidc.realm_roles(access_claims, id_claims)
    try:
        user = oidc.link(db, marketplace, settings, claims, roles, signing_in=True)
    except oidc.LinkRefused as exc:
        db.rollback()
        return failed(f"You cannot sign in here: {exc}.", 403)
    record = SsoSession(
        user_id=user.id,
        marketplace_id=marketplace.id,
        issuer=settings.issuer,
        subject=str(id_claims["sub"]),
        sid=id_claims.get("sid"),
        id_token=current_app.extensions["mercato.sealer"].seal(token.get("id_token", "")),
    )
    db.add(record)
    db.flush()
    target = session.get(_NEXT_KEY)
    start_session(user, marketplace)
    session[SESSION_KEY] = str(record.id)
    db.commit()
    return redirect(target if target and target != url_for("pages.home") else _landing())


def _landing() -> str:
    """The control panel page of the user's main role."""
    identity = current_identity()
    if identity is not None and identity.is_admin:
        return url_for("pages.admin_users")
    if identity is not None and identity.has_any(Role.VENDOR):
        return url_for("pages.vendor_products")
    return url_for("pages.account")


def provider_logout_url() -> str | None:
    """Where to send the browser so the provider ends its session too (RP-initiated
    logout), for a session that signed in through it; else None."""
    record_id = session.get(SESSION_KEY)
    record = current_session().get(SsoSession, _uuid(record_id)) if record_id else None
    settings = identity_provider()
    if record is None or settings is None or settings.issuer != record.issuer:
        return None
    try:
        endpoint = _client(settings).load_server_metadata().get("end_session_endpoint")
    except (OAuthError, OSError, ValueError):
        return None
    if not endpoint:
        return None
    query = {
        "client_id": settings.client_id,
        "post_logout_redirect_uri": url_for("pages.home", _external=True),
    }
    if record.id_token:
        query["id_token_hint"] = current_app.extensions["mercato.sealer"].open(record.id_token)
    return f"{endpoint}?{urlencode(query)}"


@bp.post("/sign-in/sso/backchannel-logout")
def sso_backchannel_logout() -> ResponseReturnValue:
    """OpenID Connect Back-Channel Logout: the provider says a session ended there."""
    settings = identity_provider()
    if settings is None:
        return _backchannel_error("this marketplace has no identity provider")
    token = request.form.get("logout_token", "")
    try:
        claims = oidc.decode(settings, token, kind=oidc.LOGOUT)
    except oidc.TokenRejected as exc:
        return _backchannel_error(str(exc))
    if not oidc.first_use_of_logout(claims):
        return _backchannel_error("this logout token was used before")
    sid, subject = claims.get("sid"), claims.get("sub")
    which = [SsoSession.issuer == settings.issuer, SsoSession.ended_at.is_(None)]
    if sid:
        which.append(SsoSession.sid == sid)
    if subject:
        which.append(SsoSession.subject == subject)
    db = current_session()
    db.execute(sa.update(SsoSession).where(*which).values(ended_at=utcnow()))
    db.commit()
    response = current_app.response_class(status=200)
    response.headers["Cache-Control"] = "no-store"
    return response


def _backchannel_error(reason: str) -> ResponseReturnValue:
    response = jsonify(error="invalid_request", error_description=reason)
    response.status_code = 400
    response.headers["Cache-Control"] = "no-store"
    return response


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
