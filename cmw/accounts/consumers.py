"""``KeycloakUsers``: a user an admin disables (or enables again) here is disabled (or
enabled) at every identity provider that provisions Mercato's users, through its admin
API. A provider that cannot be reached is retried by the consumer base, never skipped."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.accounts import keycloak, oidc
from cmw.accounts.models import ExternalIdentity, IdentityProvider
from cmw.config import Config
from cmw.crypto import Sealer
from cmw.events.consumer import Event, EventConsumer


class KeycloakUsers(EventConsumer):
    name = "keycloak-users"
    topics = ("user.disabled", "user.enabled")
    max_attempts = 8

    def __init__(self, config: Config, sealer: Sealer) -> None:
        self.config = config
        self.sealer = sealer

    def handle(self, session: Session, event: Event) -> None:
        enabled = event.topic == "user.enabled"
        user_id = uuid.UUID(str(event.payload["user_id"]))
        for identity in session.scalars(
            sa.select(ExternalIdentity).where(ExternalIdentity.user_id == user_id)
        ):
            settings = self.provisioning(session, identity.issuer)
            if settings is not None:
                keycloak.set_enabled(settings, identity.subject, enabled)

    def provisioning(self, session: Session, issuer: str) -> oidc.ProviderSettings | None:
        """A provider of that realm whose client manages its users, if any."""
        row = session.scalar(
            sa.select(IdentityProvider)
            .where(IdentityProvider.issuer == issuer, IdentityProvider.provision_users.is_(True))
            .limit(1)
        )
        if row is not None:
            return oidc.from_row(row, self.sealer, "marketplace", trusted=False)
        configured = oidc.from_config(self.config)
        if configured is not None and configured.issuer == issuer and configured.provision_users:
            return configured
        return None
