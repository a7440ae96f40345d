"""Accounts: people (``User``), companies (``Organisation``), who may do what where
(``Membership``) and personal API tokens (``ApiToken``).

A user is one identity across marketplaces; everything that gives them rights is a
membership in one marketplace, so a reseller's admin sees only its own marketplace's
memberships and organisations.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cmw.db import Timestamps, UUIDPrimaryKey, str_enum, utcnow
from cmw.extensions import db
from cmw.marketplaces.models import Marketplace


class Role(enum.StrEnum):
    #: buys products of the marketplace for their organisation
    CUSTOMER = "customer"
    #: publishes products for their (vendor) organisation
    VENDOR = "vendor"
    #: runs a partner marketplace's catalog, customers and orders
    RESELLER = "reseller"
    #: administers the marketplace and every marketplace under it
    ADMIN = "admin"


class OrganisationKind(enum.StrEnum):
    #: a company that buys
    CUSTOMER = "customer"
    #: a software company that sells
    VENDOR = "vendor"
    #: the company running a distributor or reseller marketplace
    PARTNER = "partner"


class User(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "users"

    #: sign-in address, stored lowercase
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    #: full name for display
    name: Mapped[str] = mapped_column(sa.String(120))
    #: preferred language, a BCP 47 tag such as ``en`` or ``it-IT`` (instances' setup reads it)
    language: Mapped[str] = mapped_column(sa.String(35), default="en", server_default="en")
    #: argon2id hash (PHC string); NULL for users who sign in only through SSO
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    #: whether the address was confirmed (or asserted by the identity provider)
    email_verified: Mapped[bool] = mapped_column(default=False)
    #: False when an admin has disabled the account; it can then neither sign in nor use tokens
    is_active: Mapped[bool] = mapped_column(default=True)
    #: last successful sign-in (UTC)
    last_sign_in_at: Mapped[dt.datetime | None]
    #: bumped to invalidate every browser session of the user (sign-out everywhere)
    session_generation: Mapped[int] = mapped_column(default=0)
    #: when the user's personal data was erased at their request (GDPR); the row stays,
    #: anonymised, for the orders and invoices that name it
    erased_at: Mapped[dt.datetime | None]

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")

    def __repr__(self) -> str:
        return f"<User {self.email}>"


class Organisation(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "organisations"
    __table_args__ = (
        sa.CheckConstraint("length(country) = 2", name="country_alpha2"),
        sa.Index("ix_organisations_marketplace_kind", "marketplace_id", "kind"),
    )

    #: the marketplace this organisation belongs to (tenant)
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"))
    #: customer, vendor or partner
    kind: Mapped[OrganisationKind] = mapped_column(str_enum(OrganisationKind, "kind"))
    #: display name
    name: Mapped[str] = mapped_column(sa.String(200))
    #: registered legal name, printed on invoices
    legal_name: Mapped[str] = mapped_column(sa.String(200))
    #: ISO 3166-1 alpha-2 country code, uppercase
    country: Mapped[str] = mapped_column(sa.String(2))
    #: VAT or tax identification number, as given (spaces removed, uppercase)
    vat_number: Mapped[str | None] = mapped_column(sa.String(32))
    #: street address
    address_line1: Mapped[str] = mapped_column(sa.String(200), default="")
    address_line2: Mapped[str] = mapped_column(sa.String(200), default="")
    postal_code: Mapped[str] = mapped_column(sa.String(20), default="")
    city: Mapped[str] = mapped_column(sa.String(100), default="")
    #: state, province or region, free text
    region: Mapped[str] = mapped_column(sa.String(100), default="")
    #: where invoices are sent; defaults to the members' addresses when empty
    billing_email: Mapped[str | None] = mapped_column(sa.String(254))
    #: a payment method is on file (trials convert to paid only then); set by billing
    has_payment_method: Mapped[bool] = mapped_column(default=False)

    marketplace: Mapped[Marketplace] = relationship()

    def __repr__(self) -> str:
        return f"<Organisation {self.name} ({self.kind})>"


class Membership(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """A user holds a role in a marketplace, on behalf of an organisation where the role
    needs one (customer, vendor, reseller); an admin membership has none."""

    __tablename__ = "memberships"
    __table_args__ = (
        sa.UniqueConstraint(
            "user_id", "marketplace_id", "role", "organisation_id", name="uq_memberships_grant"
        ),
        sa.CheckConstraint("(role = 'admin') = (organisation_id IS NULL)", name="organisation_unless_admin"),
        sa.Index("ix_memberships_marketplace_role", "marketplace_id", "role"),
        # NULL organisation ids never collide in a unique constraint; admins need this.
        sa.Index(
            "uq_memberships_one_admin_grant",
            "user_id",
            "marketplace_id",
            unique=True,
            postgresql_where=sa.text("role = 'admin'"),
            sqlite_where=sa.text("role = 'admin'"),
        ),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    #: the marketplace the role applies in (tenant)
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"))
    #: the organisation the user acts for; NULL for admins
    organisation_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    #: customer, vendor, reseller or admin
    role: Mapped[Role] = mapped_column(str_enum(Role, "role"))
    #: the identity provider (issuer) whose realm role gave this grant; it may take back
    #: only these. NULL: granted here, by an admin or at sign-up
    granted_by: Mapped[str | None] = mapped_column(sa.String(500))

    user: Mapped[User] = relationship(back_populates="memberships")
    marketplace: Mapped[Marketplace] = relationship()
    organisation: Mapped[Organisation | None] = relationship()


class ApiToken(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """A personal API token. Only its SHA-256 is stored; the token is shown once."""

    __tablename__ = "api_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    #: the marketplace the token was created in; requests with it act in that marketplace
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"))
    #: the owner's label for the token
    name: Mapped[str] = mapped_column(sa.String(100))
    #: first characters of the token, shown in lists so the owner can tell tokens apart
    prefix: Mapped[str] = mapped_column(sa.String(16))
    #: hex SHA-256 of the whole token; tokens carry 256 bits of randomness, so no salt
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: after this time the token is refused (UTC); NULL = never
    expires_at: Mapped[dt.datetime | None]
    #: when the owner or an admin revoked it (UTC)
    revoked_at: Mapped[dt.datetime | None]
    #: last time a request used it (UTC), updated at most once a minute
    last_used_at: Mapped[dt.datetime | None]

    user: Mapped[User] = relationship()


class SshKey(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """An SSH public key a user saved for their orders."""

    __tablename__ = "ssh_keys"
    __table_args__ = (sa.UniqueConstraint("user_id", "fingerprint", name="uq_ssh_keys_user_fingerprint"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    public_key: Mapped[str] = mapped_column(sa.Text)
    #: SHA256:... as ssh-keygen -l prints it
    fingerprint: Mapped[str] = mapped_column(sa.String(60))


class IdentityProvider(Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """A marketplace's own OpenID Connect provider (a Keycloak realm and client).

    A marketplace without one uses its nearest ancestor's, else the ``MERCATO_OIDC_*``
    settings, else none (local accounts only)."""

    __tablename__ = "identity_providers"

    marketplace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("marketplaces.id", ondelete="CASCADE"), primary_key=True
    )
    #: the realm's issuer URL, e.g. https://sso.example.com/realms/acme
    issuer: Mapped[str] = mapped_column(sa.String(500))
    client_id: Mapped[str] = mapped_column(sa.String(255))
    #: the client secret, sealed with the platform's encryption key
    client_secret_sealed: Mapped[str] = mapped_column(sa.Text)
    #: the ``aud`` an access token must carry to be accepted by the API; the client id if NULL
    audience: Mapped[str | None] = mapped_column(sa.String(255))
    #: realm role -> Mercato role (customer, vendor, reseller, admin)
    roles: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    #: the button's label on the sign-in page
    display_name: Mapped[str] = mapped_column(sa.String(100), default="Keycloak")
    #: create the Keycloak user (with its realm roles) when someone signs up here, and
    #: disable it when an admin disables the Mercato user
    provision_users: Mapped[bool] = mapped_column(default=False)
    #: ask the realm's introspection endpoint about every bearer token (revocation and
    #: disabled users seen at once, at one call per token a minute)
    introspect: Mapped[bool] = mapped_column(default=False)
    #: the country of an organisation made for a user the provider creates (ISO alpha-2)
    default_country: Mapped[str] = mapped_column(sa.String(2), default="DE")


class ExternalIdentity(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """A user's account at an identity provider (issuer and subject), linked to them."""

    __tablename__ = "external_identities"
    __table_args__ = (sa.UniqueConstraint("issuer", "subject", name="uq_external_identities_subject"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(sa.String(500))
    #: the provider's ``sub`` (Keycloak's user id)
    subject: Mapped[str] = mapped_column(sa.String(255))
    #: the organisations the provider's role grants made for the user, "<marketplace id>:<role>"
    #: -> organisation id, so a role taken back and given again returns to the same one
    organisations: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    last_sign_in_at: Mapped[dt.datetime | None]

    user: Mapped[User] = relationship()


class SsoSession(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """A browser session that signed in through an identity provider; ended by signing
    out here or by the provider's back-channel logout."""

    __tablename__ = "sso_sessions"
    __table_args__ = (sa.Index("ix_sso_sessions_issuer_sid", "issuer", "sid"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="CASCADE"))
    issuer: Mapped[str] = mapped_column(sa.String(500))
    subject: Mapped[str] = mapped_column(sa.String(255))
    #: the provider's session id (the ID token's ``sid``)
    sid: Mapped[str | None] = mapped_column(sa.String(255))
    #: the ID token (sealed), sent back as ``id_token_hint`` when signing out
    id_token: Mapped[str] = mapped_column(sa.Text)
    ended_at: Mapped[dt.datetime | None]


class Erasure(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    """The record that a person's data was erased (GDPR article 17): who (the user row's id,
    which stays anonymised), when, and what was removed or anonymised. Never updated."""

    __tablename__ = "erasures"

    user_id: Mapped[uuid.UUID] = mapped_column(index=True)
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: counts of what was removed or anonymised, and what was kept and why
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
