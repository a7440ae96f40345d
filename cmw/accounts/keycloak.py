"""What is Keycloak-specific, through python-keycloak: the admin API (create a user with
realm roles when someone signs up, disable them when an admin does) and token
introspection. The client authenticates with its own secret (client credentials), so its
service account needs the realm-management roles manage-users and view-realm."""

from __future__ import annotations

import logging
from typing import Any

from keycloak import KeycloakAdmin, KeycloakOpenID, KeycloakOpenIDConnection
from keycloak.exceptions import KeycloakError, KeycloakPostError
from sqlalchemy.orm import Session

from cmw.accounts.models import ExternalIdentity, Role, User
from cmw.accounts.oidc import ProviderError, ProviderSettings

log = logging.getLogger(__name__)
TIMEOUT = 10


def _openid(settings: ProviderSettings) -> KeycloakOpenID:
    return KeycloakOpenID(
        server_url=settings.server_url,
        realm_name=settings.realm,
        client_id=settings.client_id,
        client_secret_key=settings.client_secret,
        timeout=TIMEOUT,
    )


def _admin(settings: ProviderSettings) -> KeycloakAdmin:
    connection = KeycloakOpenIDConnection(
        server_url=settings.server_url,
        realm_name=settings.realm,
        client_id=settings.client_id,
        client_secret_key=settings.client_secret,
        timeout=TIMEOUT,
    )
    return KeycloakAdmin(connection=connection)


def introspect(settings: ProviderSettings, token: str) -> dict[str, Any]:
    try:
        answer: dict[str, Any] = _openid(settings).introspect(token)
    except (KeycloakError, OSError, ValueError) as exc:
        raise ProviderError(f"introspection failed: {exc}") from None
    return answer


class UserExists(Exception):
    """The realm has a user with that name or e-mail already."""


def create_user(
    settings: ProviderSettings,
    *,
    email: str,
    name: str,
    password: str | None,
    realm_roles: list[str],
) -> str:
    """The Keycloak user id of a new user with ``realm_roles``. A realm user with the same
    name or e-mail is :class:`UserExists`: never linked to, or given roles for, an
    account someone else just signed up with."""
    admin = _admin(settings)
    first, _, last = name.partition(" ")
    payload: dict[str, Any] = {
        "username": email,
        "email": email,
        "firstName": first,
        "lastName": last,
        "enabled": True,
        "emailVerified": False,
    }
    if password is not None:
        payload["credentials"] = [{"type": "password", "value": password, "temporary": False}]
    try:
        if admin.get_user_id(email) is not None:
            raise UserExists(email)
        try:
            user_id = str(admin.create_user(payload))
        except KeycloakPostError as exc:
            if exc.response_code == 409:  # someone else has that e-mail as their address
                raise UserExists(email) from None
            raise
        if realm_roles:
            roles = [admin.get_realm_role(role) for role in realm_roles]
            admin.assign_realm_roles(user_id=user_id, roles=roles)
    except (KeycloakError, OSError, ValueError) as exc:
        raise ProviderError(f"creating the Keycloak user failed: {exc}") from None
    return user_id


def provision(
    session: Session, settings: ProviderSettings, user: User, password: str | None, roles: set[Role]
) -> str:
    """Make ``user`` at the provider with the realm roles of ``roles`` and link them;
    returns the provider's user id (to remove it again should the commit fail)."""
    subject = create_user(
        settings,
        email=user.email,
        name=user.name,
        password=password,
        realm_roles=settings.realm_roles_for(roles),
    )
    session.add(ExternalIdentity(user_id=user.id, issuer=settings.issuer, subject=subject, organisations={}))
    session.flush()
    return subject


def delete_user(settings: ProviderSettings, user_id: str) -> None:
    try:
        _admin(settings).delete_user(user_id)
    except (KeycloakError, OSError, ValueError) as exc:
        raise ProviderError(f"deleting the Keycloak user failed: {exc}") from None


def set_enabled(settings: ProviderSettings, user_id: str, enabled: bool) -> None:
    try:
        _admin(settings).update_user(user_id, {"enabled": enabled})
    except (KeycloakError, OSError, ValueError) as exc:
        raise ProviderError(f"updating the Keycloak user failed: {exc}") from None
