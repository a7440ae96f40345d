"""Single sign-on through Keycloak (any OpenID Connect provider with Keycloak's layout).

Which provider a marketplace uses (:func:`provider_for`): its own
:class:`IdentityProvider`, else its nearest ancestor's, else the ``MERCATO_OIDC_*``
settings, else none. This module validates the provider's tokens against its JWKS
(:class:`KeyCache`, refreshed when a token names an unknown key id), links the provider's
users to Mercato users (:func:`link`) and keeps their roles as the provider says
(:func:`sync_roles`). The browser flow lives in ``marketplace/sso.py``; the admin API
(creating and disabling Keycloak users) in :mod:`cmw.accounts.keycloak`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa
from cachetools import TTLCache
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.orm import Session

from cmw.accounts import service
from cmw.accounts.models import (
    ExternalIdentity,
    IdentityProvider,
    Membership,
    Organisation,
    OrganisationKind,
    Role,
    User,
)
from cmw.config import Config
from cmw.crypto import Sealer
from cmw.db import utcnow
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from cmw.marketplaces.service import ancestors

log = logging.getLogger(__name__)

#: signature algorithms accepted; never "none" or a shared-secret (HS*) one
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
#: clock skew allowed on exp / nbf / iat, seconds
LEEWAY = 30
HTTP_TIMEOUT = 5.0
#: at most this many JWKS fetches a minute per issuer, whatever kids tokens name
MAX_REFRESHES_PER_MINUTE = 10
ORGANISATION_KINDS = {
    Role.CUSTOMER: OrganisationKind.CUSTOMER,
    Role.VENDOR: OrganisationKind.VENDOR,
    Role.RESELLER: OrganisationKind.PARTNER,
}
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


class TokenRejected(Exception):
    """The token is not acceptable; the message says why (never the token itself)."""


class ProviderError(Exception):
    """The identity provider could not be reached or answered nonsense."""


class LinkRefused(Exception):
    """The provider's user cannot be linked to a Mercato user; the message says why."""


@dataclasses.dataclass(frozen=True)
class ProviderSettings:
    """One provider as a marketplace uses it; ``key`` names it in caches and the OAuth registry."""

    key: str
    issuer: str
    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    audience: str
    roles: Mapping[str, Role]
    display_name: str = "Keycloak"
    provision_users: bool = False
    introspect: bool = False
    default_country: str = "DE"
    #: "marketplace", "inherited" or "settings"
    source: str = "settings"
    #: set up by the platform's operators (settings, or the platform marketplace's admins):
    #: only such a provider may link its users to existing Mercato users by e-mail. A
    #: partner's admin could point their marketplace at a realm they control and assert
    #: anyone's address.
    trusted: bool = True

    @property
    def server_url(self) -> str:
        """Keycloak's base URL (what python-keycloak calls ``server_url``)."""
        return self.issuer.split("/realms/", 1)[0] + "/"

    @property
    def realm(self) -> str:
        return self.issuer.rstrip("/").rsplit("/realms/", 1)[-1]

    @property
    def metadata_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    def realm_roles_for(self, roles: set[Role]) -> list[str]:
        """The realm roles that map to ``roles`` (for creating a Keycloak user)."""
        return sorted(name for name, role in self.roles.items() if role in roles)


def parse_roles(text: str) -> dict[str, Role]:
    """``realm-role=role`` pairs separated by commas, as in ``MERCATO_OIDC_ROLES``."""
    mapping: dict[str, Role] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, role = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{pair!r} is not realm-role=role")
        mapping[name.strip()] = check_role(role.strip())
    return mapping


def check_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        names = ", ".join(r.value for r in Role)
        raise ValueError(f"{value!r} is not a Mercato role; use one of {names}") from None


def from_config(config: Config) -> ProviderSettings | None:
    if not config.oidc_issuer:
        return None
    return ProviderSettings(
        key="settings",
        issuer=config.oidc_issuer.rstrip("/"),
        client_id=config.oidc_client_id,
        client_secret=config.oidc_client_secret,
        audience=config.oidc_audience or config.oidc_client_id,
        roles=parse_roles(config.oidc_roles),
        display_name=config.oidc_display_name,
        provision_users=config.oidc_provision_users,
        introspect=config.oidc_introspect,
        default_country=config.oidc_default_country.upper(),
    )


def from_row(row: IdentityProvider, sealer: Sealer, source: str, *, trusted: bool) -> ProviderSettings:
    return ProviderSettings(
        key=f"marketplace-{row.marketplace_id}",
        issuer=row.issuer.rstrip("/"),
        client_id=row.client_id,
        client_secret=sealer.open(row.client_secret_sealed),
        audience=row.audience or row.client_id,
        roles={name: Role(role) for name, role in row.roles.items()},
        display_name=row.display_name,
        provision_users=row.provision_users,
        introspect=row.introspect,
        default_country=row.default_country,
        source=source,
        trusted=trusted,
    )


def provider_for(
    session: Session, marketplace: Marketplace, config: Config, sealer: Sealer
) -> ProviderSettings | None:
    """The provider people of ``marketplace`` sign in with, or None."""
    chain = ancestors(session, marketplace)
    rows = {
        row.marketplace_id: row
        for row in session.scalars(
            sa.select(IdentityProvider).where(IdentityProvider.marketplace_id.in_([m.id for m in chain]))
        )
    }
    for depth, m in enumerate(chain):
        if m.id in rows:
            source = "marketplace" if depth == 0 else "inherited"
            return from_row(rows[m.id], sealer, source, trusted=m.kind is MarketplaceKind.PLATFORM)
    return from_config(config)


# --------------------------------------------------------------------- the provider's keys
class KeyCache:
    """Each issuer's discovery document and JWKS, fetched once and again when a token
    names a key id the cached set lacks (the realm rotated its keys)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metadata: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, KeySet] = {}
        self._refreshes: dict[str, list[float]] = {}

    def clear(self) -> None:
        with self._lock:
            self._metadata.clear()
            self._keys.clear()
            self._refreshes.clear()

    def metadata(self, settings: ProviderSettings) -> dict[str, Any]:
        with self._lock:
            found = self._metadata.get(settings.issuer)
        if found is not None:
            return found
        document = _get_json(settings.metadata_url)
        if str(document.get("issuer", "")).rstrip("/") != settings.issuer:
            raise ProviderError(f"the discovery document at {settings.metadata_url} names another issuer")
        jwks = urlsplit(str(document.get("jwks_uri", "")))
        own = urlsplit(settings.issuer)
        if (jwks.scheme, jwks.netloc) != (own.scheme, own.netloc):
            raise ProviderError("the realm's keys (jwks_uri) are not served by the realm's own host")
        with self._lock:
            self._metadata[settings.issuer] = document
        return document

    def key_set(self, settings: ProviderSettings, kid: str | None) -> KeySet:
        with self._lock:
            keys = self._keys.get(settings.issuer)
        if keys is not None and (kid is None or _has_kid(keys, kid)):
            return keys
        if keys is not None and not self._may_refresh(settings.issuer):
            return keys
        jwks = _get_json(self.metadata(settings)["jwks_uri"])
        try:
            fresh = KeySet.import_key_set(
                {"keys": [k for k in jwks.get("keys", []) if k.get("use", "sig") == "sig"]}
            )
        except (JoseError, ValueError, TypeError) as exc:
            raise ProviderError(f"the provider's JWKS is unusable: {exc}") from None
        with self._lock:
            self._keys[settings.issuer] = fresh
        return fresh

    def _may_refresh(self, issuer: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._refreshes.get(issuer, []) if now - t < 60]
            if len(recent) >= MAX_REFRESHES_PER_MINUTE:
                self._refreshes[issuer] = recent
                return False
            self._refreshes[issuer] = [*recent, now]
            return True


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


def _get_json(url: str) -> dict[str, Any]:
    try:
        response = requests.get(url, timeout=HTTP_TIMEOUT, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderError(f"{url}: {exc}") from None
    if not isinstance(document, dict):
        raise ProviderError(f"{url}: not a JSON object")
    return document


keys = KeyCache()


#: what a token is for; a token of one kind is never accepted as another
ACCESS, LOGOUT, RECEIVED = "access", "logout", "received"
#: a logout token older than this is refused (it could only be a replay)
LOGOUT_MAX_AGE = 600


def decode(
    settings: ProviderSettings,
    token: str,
    *,
    kind: str = ACCESS,
    audience: str | None = None,
) -> dict[str, Any]:
    """The claims of ``token`` if the provider signed it, for ``audience``, as a token of
    ``kind``, and it is in date; else :class:`TokenRejected` saying why.

    ``ACCESS``: an API access token (Keycloak's ``typ: Bearer`` or an ``at+jwt``), never an
    ID or logout token, for the settings' API audience. ``LOGOUT``: a back-channel logout
    token for the client. ``RECEIVED``: an access token this process has just received
    from the provider's token endpoint itself, whatever its audience (Keycloak addresses
    those to "account")."""
    try:
        header = jws.extract_compact(token.encode()).headers()
    except (JoseError, ValueError, UnicodeError):
        raise TokenRejected("malformed token") from None
    kid = header.get("kid")
    if header.get("alg") not in ALGORITHMS:
        raise TokenRejected(f"signature algorithm {header.get('alg')!r} is not accepted")
    try:
        key_set = keys.key_set(settings, kid)
    except ProviderError as exc:
        log.warning("identity provider %s unreachable: %s", settings.issuer, exc)
        raise TokenRejected("the identity provider's keys could not be fetched") from None
    if kid is not None and not _has_kid(key_set, kid):
        raise TokenRejected("token signed with a key the identity provider does not publish")
    try:
        decoded = jwt.decode(token, key_set, algorithms=ALGORITHMS)
    except (JoseError, ValueError):
        raise TokenRejected("bad signature") from None
    claims = dict(decoded.claims)
    if str(claims.get("iss", "")).rstrip("/") != settings.issuer:
        raise TokenRejected("token from another issuer")
    if kind == LOGOUT:
        _check_logout(claims)
    elif "nonce" in claims or "events" in claims or not _is_access_token(header, claims):
        raise TokenRejected("not an access token")
    if kind != RECEIVED:
        wanted = audience or (settings.client_id if kind == LOGOUT else settings.audience)
        aud = claims.get("aud")
        if wanted not in (aud if isinstance(aud, list) else [aud]):
            raise TokenRejected(f"token not meant for this service (audience {wanted!r} missing)")
    now = time.time()
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise TokenRejected("token has no expiry")
    if now > exp + LEEWAY:
        raise TokenRejected("token expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and now + LEEWAY < nbf:
        raise TokenRejected("token not valid yet")
    if kind != LOGOUT and not claims.get("sub"):
        raise TokenRejected("token names no subject")
    return claims


def _is_access_token(header: Mapping[str, Any], claims: Mapping[str, Any]) -> bool:
    """Keycloak marks its access tokens ``typ: Bearer`` (ID tokens ``ID``, logout tokens
    ``Logout``); RFC 9068 marks them with the ``at+jwt`` header type."""
    typ = str(header.get("typ", "")).lower()
    return claims.get("typ") == "Bearer" or typ in ("at+jwt", "application/at+jwt")


def _check_logout(claims: Mapping[str, Any]) -> None:
    """OpenID Connect Back-Channel Logout 1.0, 2.6: what a logout token must carry."""
    events = claims.get("events")
    if not isinstance(events, Mapping) or BACKCHANNEL_LOGOUT_EVENT not in events or "nonce" in claims:
        raise TokenRejected("not a logout token")
    if claims.get("typ") not in (None, "Logout"):
        raise TokenRejected("not a logout token")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or not claims.get("jti"):
        raise TokenRejected("a logout token needs iat and jti")
    if time.time() - iat > LOGOUT_MAX_AGE + LEEWAY:
        raise TokenRejected("logout token too old")
    if not claims.get("sid") and not claims.get("sub"):
        raise TokenRejected("the logout token names neither a session nor a user")


_seen_logouts: TTLCache[str, bool] = TTLCache(maxsize=100_000, ttl=LOGOUT_MAX_AGE + 2 * LEEWAY)
_seen_logouts_lock = threading.Lock()


def first_use_of_logout(claims: Mapping[str, Any]) -> bool:
    """False for a logout token (by issuer and jti) this process has seen already."""
    key = f"{claims.get('iss')} {claims.get('jti')}"
    with _seen_logouts_lock:
        if key in _seen_logouts:
            return False
        _seen_logouts[key] = True
        return True


def realm_roles(*claim_sets: Mapping[str, Any]) -> set[str] | None:
    """Keycloak's ``realm_access.roles`` from any of the claim sets given; None when none
    carries the claim (the client's token has no roles mapper: nothing is known)."""
    found: set[str] | None = None
    for claims in claim_sets:
        access = claims.get("realm_access")
        if isinstance(access, Mapping) and isinstance(access.get("roles"), list):
            found = (found or set()) | {str(r) for r in access["roles"]}
    return found


# -------------------------------------------------------------------- introspection
_introspected: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=60)
_introspected_lock = threading.Lock()


def check_active(settings: ProviderSettings, token: str) -> None:
    """Ask the realm whether the token is still active (python-keycloak's introspect),
    at most once a minute per token; :class:`TokenRejected` if not."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    with _introspected_lock:
        known = _introspected.get(digest)
    if known is None:
        from cmw.accounts.keycloak import introspect

        try:
            known = bool(introspect(settings, token).get("active"))
        except ProviderError as exc:
            log.warning("introspection at %s failed: %s", settings.issuer, exc)
            raise TokenRejected("the identity provider could not confirm the token") from None
        with _introspected_lock:
            _introspected[digest] = known
    if not known:
        raise TokenRejected("the identity provider says the token is no longer active (user disabled?)")


# ---------------------------------------------------------------------- users and roles
def link(
    session: Session,
    marketplace: Marketplace,
    settings: ProviderSettings,
    claims: Mapping[str, Any],
    roles: set[str] | None,
    *,
    signing_in: bool,
) -> User:
    """The Mercato user for the provider's user ``claims['sub']``: linked before, else (a
    trusted provider only) the user with the same verified e-mail, else a new one; with
    their roles here as the provider's realm ``roles`` map them (None: left as they are).
    Flushes, never commits. Call it first in a request: when a concurrent first sign-in of
    the same provider user wins the unique link, the session is rolled back and the link
    it made is used."""
    try:
        return _link(session, marketplace, settings, claims, roles, signing_in=signing_in)
    except sa.exc.IntegrityError:
        session.rollback()
        return _link(session, marketplace, settings, claims, roles, signing_in=signing_in)


def _link(
    session: Session,
    marketplace: Marketplace,
    settings: ProviderSettings,
    claims: Mapping[str, Any],
    roles: set[str] | None,
    *,
    signing_in: bool,
) -> User:
    subject = str(claims["sub"])
    identity = session.scalar(
        sa.select(ExternalIdentity)
        .where(ExternalIdentity.issuer == settings.issuer, ExternalIdentity.subject == subject)
        .with_for_update()  # one role change at a time per provider user
    )
    if identity is None:
        user = _user_for(session, settings, claims)
        identity = ExternalIdentity(
            user_id=user.id, issuer=settings.issuer, subject=subject, organisations={}
        )
        session.add(identity)
        session.flush()
    user = identity.user
    if not user.is_active:
        raise LinkRefused("this account is disabled")
    if roles is not None:  # a token without realm_access says nothing about roles
        wanted = {settings.roles[name] for name in roles if name in settings.roles}
        # per marketplace: the same realm user may act in several (an inherited provider)
        sync_roles(session, identity, marketplace, settings, wanted, claims)
    if signing_in:
        now = utcnow()
        identity.last_sign_in_at = now
        user.last_sign_in_at = now
    session.flush()
    return user


def _user_for(session: Session, settings: ProviderSettings, claims: Mapping[str, Any]) -> User:
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise LinkRefused("the identity provider gave no e-mail address for this user")
    verified = claims.get("email_verified") is True
    existing = service.find_user(session, email)
    if existing is not None:
        if not settings.trusted:
            raise LinkRefused(
                "an account with this e-mail address exists already; this marketplace's identity "
                "provider cannot sign in to it"
            )
        if not verified:
            raise LinkRefused(
                "an account with this e-mail address exists, and the identity provider has not "
                "verified the address: verify it there first"
            )
        if not existing.email_verified:
            existing.email_verified = True
        return existing
    name = str(claims.get("name") or claims.get("preferred_username") or email.split("@")[0])[:120]
    user = User(
        id=uuid.uuid4(),
        email=service.normalise_email(email),
        name=name,
        password_hash=None,
        email_verified=verified,
    )
    session.add(user)
    session.flush()
    return user


def sync_roles(
    session: Session,
    identity: ExternalIdentity,
    marketplace: Marketplace,
    settings: ProviderSettings,
    wanted: set[Role],
    claims: Mapping[str, Any],
) -> None:
    """Grant the mapped roles the user lacks here, and take back the grants this provider
    made whose realm role is gone. Grants made here (by an admin, at sign-up) stay; a role
    given again returns to the organisation the provider's first grant made."""
    user = identity.user
    held = list(
        session.scalars(
            sa.select(Membership).where(
                Membership.user_id == user.id, Membership.marketplace_id == marketplace.id
            )
        )
    )
    for membership in held:
        if membership.granted_by == settings.issuer and membership.role not in wanted:
            session.delete(membership)
    held_roles = {m.role for m in held}
    for role in sorted(wanted - held_roles):
        organisation = None
        if role is not Role.ADMIN:
            organisation = _organisation_for(session, identity, marketplace, settings, role, claims)
        membership = service.grant(session, user, marketplace, role, organisation)
        membership.granted_by = settings.issuer
    session.flush()


def _organisation_for(
    session: Session,
    identity: ExternalIdentity,
    marketplace: Marketplace,
    settings: ProviderSettings,
    role: Role,
    claims: Mapping[str, Any],
) -> Organisation:
    """The organisation the user acts for in ``role``: the one an earlier grant made, else
    a new one named after the ``organization`` claim (or the user)."""
    key = f"{marketplace.id}:{role.value}"
    known = identity.organisations.get(key)
    if known is not None:
        found = session.get(Organisation, uuid.UUID(known))
        if found is not None and found.marketplace_id == marketplace.id:
            return found
    company = claims.get("organization") or claims.get("company")
    name = str(company or identity.user.name)[:200]
    country = settings.default_country
    address = claims.get("address")
    claimed = address.get("country") if isinstance(address, Mapping) else None
    if isinstance(claimed, str) and len(claimed) == 2:
        country = claimed.upper()
    organisation = service.create_organisation(
        session,
        marketplace,
        kind=ORGANISATION_KINDS[role],
        name=name,
        billing=service.BillingDetails(legal_name=name, country=country),
    )
    identity.organisations = {**identity.organisations, key: str(organisation.id)}
    return organisation


# ---------------------------------------------------------------------- administration
class SettingsError(ValueError):
    """Invalid sign-in settings; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def describe(settings: ProviderSettings | None) -> dict[str, Any] | None:
    """The provider as an admin sees it: everything but the secret."""
    if settings is None:
        return None
    return {
        "issuer": settings.issuer,
        "client_id": settings.client_id,
        "audience": settings.audience,
        "roles": {name: role.value for name, role in settings.roles.items()},
        "display_name": settings.display_name,
        "provision_users": settings.provision_users,
        "introspect": settings.introspect,
        "default_country": settings.default_country,
        "source": settings.source,
    }


def set_provider(
    session: Session,
    marketplace: Marketplace,
    data: Mapping[str, Any] | None,
    sealer: Sealer,
    *,
    allow_http_loopback: bool = False,
) -> None:
    """Give the marketplace its own provider (``data``), or remove it (None: it then uses
    its parent's, or the platform settings'). The realm's discovery document must answer.
    Only https issuers (plain http on loopback where ``allow_http_loopback``, for
    development); the client secret must be given again whenever the issuer or client
    changes, so a stored secret is never sent to a new host."""
    row = session.get(IdentityProvider, marketplace.id)
    if data is None:
        if row is not None:
            session.delete(row)
            session.flush()
        return
    issuer = str(data["issuer"]).rstrip("/")
    parts = urlsplit(issuer)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback and allow_http_loopback):
        raise SettingsError("issuer", "use an https:// issuer URL")
    if "/realms/" not in parts.path:
        raise SettingsError("issuer", "a Keycloak realm's issuer looks like https://host/realms/<realm>")
    roles: dict[str, str] = {}
    for name, role in (data.get("roles") or {}).items():
        try:
            roles[str(name)] = check_role(str(role)).value
        except ValueError as exc:
            raise SettingsError("roles", str(exc)) from None
    secret = data.get("client_secret")
    same_client = row is not None and row.issuer == issuer and row.client_id == str(data["client_id"])
    if not secret and not same_client:
        raise SettingsError("client_secret", "required for a new identity provider, issuer or client")
    try:
        document = _get_json(issuer + "/.well-known/openid-configuration")
    except ProviderError:
        raise SettingsError("issuer", "its discovery document could not be read") from None
    if str(document.get("issuer", "")).rstrip("/") != issuer:
        raise SettingsError("issuer", "the realm's discovery document names another issuer")
    if row is None:
        row = IdentityProvider(marketplace_id=marketplace.id)
        session.add(row)
    row.issuer = issuer
    row.client_id = str(data["client_id"])
    if secret:
        row.client_secret_sealed = sealer.seal(str(secret))
    row.audience = data.get("audience") or None
    row.roles = roles
    row.display_name = data.get("display_name") or "Keycloak"
    row.provision_users = bool(data.get("provision_users", False))
    row.introspect = bool(data.get("introspect", False))
    row.default_country = str(data.get("default_country") or "DE").upper()
    session.flush()


class _Unchanged(enum.Enum):
    UNCHANGED = "unchanged"


#: ``change_sign_in(provider=...)`` default: the marketplace's own provider stays as it is
UNCHANGED = _Unchanged.UNCHANGED


def change_sign_in(
    session: Session,
    marketplace: Marketplace,
    config: Config,
    sealer: Sealer,
    *,
    provider: Mapping[str, Any] | Literal[_Unchanged.UNCHANGED] | None = UNCHANGED,
    local_sign_in: bool | None = None,
) -> ProviderSettings | None:
    """Change how people sign in to ``marketplace``: its own provider (see
    :func:`set_provider`; None removes it) and whether passwords work (None: as they are).
    Passwords stay on unless a provider is in use, whatever the order of the changes, so
    nobody is locked out. Returns the provider now in use; :class:`SettingsError` with
    the field (``identity_provider.<field>``, ``identity_provider`` or ``local_sign_in``)."""
    if provider is not UNCHANGED:
        try:
            set_provider(
                session, marketplace, provider, sealer, allow_http_loopback=config.env != "production"
            )
        except SettingsError as exc:
            raise SettingsError(f"identity_provider.{exc.field}", str(exc)) from None
    in_use = provider_for(session, marketplace, config, sealer)
    passwords = marketplace.local_sign_in if local_sign_in is None else local_sign_in
    if not passwords and in_use is None:
        if local_sign_in is None:
            raise SettingsError(
                "identity_provider", "passwords are off here: removing the provider would lock everyone out"
            )
        raise SettingsError("local_sign_in", "set up an identity provider before turning passwords off")
    marketplace.local_sign_in = passwords
    session.flush()
    return in_use
