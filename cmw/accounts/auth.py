"""Who is making the request: an API token or a browser session, in which marketplace,
with which roles. The web layer's side of accounts; the rules live in ``service``.

``load_identity`` runs before every request. API calls authenticate with
``Authorization: Bearer mct_...``; a token is valid only in the marketplace it was
created in. A browser session is valid in the marketplace it signed in to, until the
user signs out everywhere or is disabled (``session_generation``). Unsafe requests made
with a session cookie must carry the CSRF token (form field or ``X-CSRF-Token``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import sqlalchemy as sa
from flask import Response, current_app, g, request, session
from flask_wtf.csrf import generate_csrf

from cmw.accounts import oidc, service
from cmw.accounts.models import Membership, Role, SsoSession, User
from cmw.api.errors import ApiError, invalid
from cmw.catalog import cache as catalog_cache
from cmw.db import utcnow
from cmw.extensions import csrf, current_session, db, read_in_autocommit
from cmw.marketplaces.models import Marketplace
from cmw.marketplaces.prefix import ENVIRON_KEY as PREFIX_KEY
from cmw.marketplaces.service import by_host, by_slug

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: endpoints that must answer without touching the database's tenant tables
UNTENANTED_ENDPOINTS = frozenset(
    {
        "health.healthz",
        "monitoring.metrics",
        "static",
        "api-docs.openapi_json",
        "assets.stored_file",
        # a mail gateway, with its own token
        "support.InboundEmail",
    }
)
#: posted to by other servers, never by a browser holding our session (signed tokens instead)
CSRF_EXEMPT_ENDPOINTS = frozenset({"pages.sso_backchannel_logout"})


@dataclass
class Identity:
    """The authenticated user of this request and their grants in this marketplace."""

    user: User
    marketplace: Marketplace
    memberships: list[Membership]
    via: str  # "session", "token" (personal API token) or "oidc" (identity provider's token)
    token_id: uuid.UUID | None = None
    roles: frozenset[Role] = field(init=False)
    organisation_ids: frozenset[uuid.UUID] = field(init=False)

    def __post_init__(self) -> None:
        self.roles = service.effective_roles(self.memberships)
        self.organisation_ids = service.organisation_ids(self.memberships)

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    def has_any(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))

    def organisations_with(self, *roles: Role) -> frozenset[uuid.UUID]:
        return frozenset(m.organisation_id for m in self.memberships if m.role in roles and m.organisation_id)

    def customer(self, organisation_id: uuid.UUID | None, location: str = "json") -> uuid.UUID:
        """The customer organisation the caller acts for: the one named, or their only one;
        else 422 on ``organisation_id``."""
        mine = self.organisations_with(Role.CUSTOMER)
        chosen = organisation_id or (next(iter(mine)) if len(mine) == 1 else None)
        if chosen is None or chosen not in mine:
            raise invalid("organisation_id", "name one of your customer organisations", location)
        return chosen


def current_marketplace() -> Marketplace:
    marketplace: Marketplace = g.marketplace
    return marketplace


def marketplace_or_none() -> Marketplace | None:
    return g.get("marketplace")


def current_identity() -> Identity | None:
    return g.get("identity")


def load_identity() -> None:
    """``before_request``: resolve the marketplace and the caller, enforce CSRF."""
    g.identity = None
    if request.endpoint in UNTENANTED_ENDPOINTS:
        return
    header = request.headers.get("Authorization")
    scheme, _, credentials = (header or "").partition(" ")
    credentials = credentials.strip()
    # an identity provider's token (a JWT) may link its user or refresh their roles: it
    # needs a transaction
    provider_token = credentials.count(".") == 2 and not credentials.startswith(service.TOKEN_PREFIX)
    if request.method in SAFE_METHODS and not provider_token:  # they only read
        read_in_autocommit(current_session())
    g.marketplace = _marketplace()
    if header is not None:
        if scheme.lower() != "bearer" or not credentials:
            raise _unauthenticated("use 'Authorization: Bearer <token>'")
        if provider_token:
            g.identity = _provider_identity(credentials)
            return
        try:
            token = service.resolve_token(current_session(), credentials)
        except service.InvalidToken as exc:
            raise _unauthenticated(str(exc)) from None
        if token.marketplace_id != g.marketplace.id:
            raise _unauthenticated("token belongs to another marketplace")
        if service.token_needs_touch(token):
            g.touch_token = (db.engine, token.id)
        g.identity = _identity(token.user, "token", token.id)
        return
    user_id = session.get("uid")
    if user_id is not None:
        user = current_session().get(User, uuid.UUID(user_id))
        if (
            user is not None
            and user.is_active
            and session.get("gen") == user.session_generation
            and session.get("mid") == str(g.marketplace.id)
            and _sso_session_live()
        ):
            g.identity = _identity(user, "session")
        else:
            session.clear()
    if request.method not in SAFE_METHODS and _needs_csrf():
        csrf.protect()


def _marketplace() -> Marketplace:
    """The marketplace of the ``/m/<slug>`` path prefix (development), else of the host."""
    session = current_session()
    slug = request.environ.get(PREFIX_KEY)
    if slug is not None:
        found = catalog_cache.served_marketplace(session, ("slug", slug), lambda: by_slug(session, slug))
        if found is None:
            raise ApiError(404, f"no marketplace is called {slug!r}")
        return found
    host = request.host
    served = catalog_cache.served_marketplace(session, ("host", host), lambda: by_host(session, host))
    assert served is not None  # by_host falls back on the platform marketplace
    return served


def record_token_use(response: Response) -> Response:
    """``after_request``: record the token's use once the response is closed.

    Not during the request: the request's session holds a pooled connection, and taking
    a second one for this write can exhaust the pool under load (every thread holding
    one connection, waiting for another).
    """
    pending = g.pop("touch_token", None)
    if pending is not None:
        engine, token_id = pending

        def touch() -> None:
            with engine.begin() as connection:
                service.touch_token(connection, token_id)

        response.call_on_close(touch)
    return response


def _sso_session_live() -> bool:
    """A session that signed in through the identity provider lives as long as the
    provider's session: until a sign-out here or its back-channel logout."""
    record_id = session.get("sso")
    if record_id is None:
        return True
    try:
        record = current_session().get(SsoSession, uuid.UUID(record_id))
    except ValueError:
        return False
    return record is not None and record.ended_at is None


def _needs_csrf() -> bool:
    if request.endpoint in CSRF_EXEMPT_ENDPOINTS:
        return False
    # API calls without a session cookie carry no ambient authority: nothing to forge.
    if request.path.startswith("/api/"):
        return g.identity is not None
    return True


def identity_provider() -> oidc.ProviderSettings | None:
    """The identity provider of this request's marketplace, if it has one."""
    if "identity_provider" not in g:
        g.identity_provider = oidc.provider_for(
            current_session(),
            g.marketplace,
            current_app.config["MERCATO"],
            current_app.extensions["mercato.sealer"],
        )
    found: oidc.ProviderSettings | None = g.identity_provider
    return found


def local_sign_in_allowed() -> bool:
    """Whether passwords work here: unless an admin turned them off for a marketplace
    that has an identity provider (without one, nobody could sign in at all)."""
    return bool(g.marketplace.local_sign_in) or identity_provider() is None


class ProviderUnavailable(Exception):
    """The marketplace's identity provider could not be reached for a change that needs it."""


class SignUpRefused(Exception):
    """Signing up here is not possible as asked; the message says why and what to do."""


def check_sign_up_allowed() -> None:
    """Sign-up makes a password account: refused where passwords are off (people arrive
    through the identity provider, whose first sign-in creates their account)."""
    settings = identity_provider()
    if not local_sign_in_allowed() and settings is not None:
        raise SignUpRefused(f"sign up through {settings.display_name}: passwords are turned off here")


def commit_sign_up(user: User, password: str) -> None:
    """Commit a new customer's sign-up. Where the marketplace provisions its users at its
    identity provider, they are made there first, with the customer realm role (and
    removed again should the commit fail): both or neither."""
    session = current_session()
    settings = identity_provider()
    made: str | None = None
    if settings is not None and settings.provision_users:
        from cmw.accounts import keycloak

        try:
            made = keycloak.provision(session, settings, user, password, {Role.CUSTOMER})
        except keycloak.UserExists:
            session.rollback()
            raise SignUpRefused(
                f"{settings.display_name} knows this e-mail address already: sign in with it instead"
            ) from None
        except oidc.ProviderError as exc:
            session.rollback()
            log.warning("sign-up not provisioned at %s: %s", settings.issuer, exc)
            raise ProviderUnavailable(
                f"{settings.display_name} cannot be reached; try again shortly"
            ) from None
    try:
        session.commit()
    except Exception:
        session.rollback()
        if settings is not None and made is not None:
            from cmw.accounts import keycloak

            with contextlib.suppress(oidc.ProviderError):
                keycloak.delete_user(settings, made)
        raise


def _provider_identity(token: str) -> Identity:
    """The caller of an identity provider's access token: checked against the realm's
    keys (and its introspection endpoint if so configured), linked on first use."""
    settings = identity_provider()
    if settings is None:
        raise _unauthenticated("this marketplace has no identity provider: use a personal API token")
    try:
        claims = oidc.decode(settings, token)
        if settings.introspect:
            oidc.check_active(settings, token)
    except oidc.TokenRejected as exc:
        raise _unauthenticated(str(exc)) from None
    session = current_session()
    try:
        user = oidc.link(session, g.marketplace, settings, claims, oidc.realm_roles(claims), signing_in=False)
        session.commit()
    except oidc.LinkRefused as exc:
        session.rollback()
        raise _unauthenticated(str(exc)) from None
    return _identity(user, "oidc")


def _identity(user: User, via: str, token_id: uuid.UUID | None = None) -> Identity:
    memberships = service.memberships_in(current_session(), user, g.marketplace)
    return Identity(user=user, marketplace=g.marketplace, memberships=memberships, via=via, token_id=token_id)


def start_session(user: User, marketplace: Marketplace) -> None:
    """Sign ``user`` in to the browser session (a fresh one, against fixation)."""
    session.clear()
    session["uid"] = str(user.id)
    session["gen"] = user.session_generation
    session["mid"] = str(marketplace.id)
    session.permanent = True
    g.identity = _identity(user, "session")


def end_session() -> None:
    """Sign out of this browser session (and of its single sign-on session here)."""
    record_id = session.get("sso")
    if record_id is not None:
        with contextlib.suppress(ValueError):
            current_session().execute(
                sa.update(SsoSession)
                .where(SsoSession.id == uuid.UUID(record_id), SsoSession.ended_at.is_(None))
                .values(ended_at=utcnow())
            )
    session.clear()
    g.identity = None


def csrf_token() -> str:
    return str(generate_csrf())


def _unauthenticated(detail: str) -> ApiError:
    return ApiError(401, detail, headers={"WWW-Authenticate": 'Bearer realm="mercato"'})


# ------------------------------------------------------------------ decorators
def require_identity() -> Identity:
    identity = current_identity()
    if identity is None:
        raise ApiError(
            401,
            "sign in or send an API token",
            headers={"WWW-Authenticate": 'Bearer realm="mercato"'},
        )
    return identity


def login_required(view: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        require_identity()
        return view(*args, **kwargs)

    wrapper.__mercato_login__ = True  # type: ignore[attr-defined]
    return wrapper


def _check_roles(roles: tuple[Role, ...]) -> None:
    identity = require_identity()
    if not identity.has_any(*roles):
        names = " or ".join(r.value for r in roles)
        raise ApiError(403, f"this needs the {names} role in this marketplace")


def authorize_early() -> None:
    """``before_request``, after :func:`load_identity`: the view's ``roles_required`` or
    ``login_required`` checked before its input is read, so a caller who may not call an
    operation is told 401 or 403 whatever it sent, and learns nothing from validation."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        method = request.method.lower()
        view = getattr(view_class, "get" if method == "head" else method, None)
        if view is None:
            return
    roles = getattr(view, "__mercato_roles__", None)
    if roles:
        _check_roles(roles)
    elif getattr(view, "__mercato_login__", False):
        require_identity()


def visible_rows(
    identity: Identity,
    marketplace_id: sa.orm.InstrumentedAttribute[uuid.UUID],
    customer_id: sa.orm.InstrumentedAttribute[uuid.UUID],
    of_vendors: Callable[[frozenset[uuid.UUID]], sa.ColumnElement[bool]],
) -> sa.ColumnElement[bool]:
    """Rows of the identity's marketplace it may see, whatever mix of roles it holds: all
    for an admin, its customer organisations' rows, and its vendor organisations' rows
    (``of_vendors`` says which rows belong to those vendors)."""
    scope: list[sa.ColumnElement[bool]] = [sa.false()]
    if identity.is_admin:
        scope.append(sa.true())
    customers = identity.organisations_with(Role.CUSTOMER)
    if customers:
        scope.append(customer_id.in_(customers))
    vendors = identity.organisations_with(Role.VENDOR)
    if vendors:
        scope.append(of_vendors(vendors))
    return sa.and_(marketplace_id == identity.marketplace.id, sa.or_(*scope))


def roles_required(*roles: Role) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Allow the view to callers holding any of ``roles`` in this marketplace."""

    def decorator(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            _check_roles(roles)
            return view(*args, **kwargs)

        wrapper.__mercato_roles__ = tuple(roles)  # type: ignore[attr-defined]
        return wrapper

    return decorator
