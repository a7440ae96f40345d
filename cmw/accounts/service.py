"""Account rules: users, organisations, role grants, passwords and API tokens.

Plain functions taking a session; they flush and never commit. Failures are named
exceptions the API maps to problem documents.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pycountry
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session, joinedload

from cmw.accounts.models import ApiToken, Membership, Organisation, OrganisationKind, Role, User
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.marketplaces.models import Marketplace
from cmw.marketplaces.service import ancestor_ids

# argon2id with the library's RFC 9106 low-memory profile: 64 MiB, 3 passes.
_hasher = PasswordHasher()
# Verified when the e-mail is unknown, so a failed sign-in takes as long either way.
_DUMMY_HASH = _hasher.hash("not-a-real-password")

TOKEN_PREFIX = "mct_"  # noqa: S105 - a public marker, not a secret
MIN_PASSWORD = 10
MAX_PASSWORD = 256
#: roles that act on behalf of an organisation, and the organisation kinds they fit
ROLE_ORGANISATION_KINDS = {
    Role.CUSTOMER: {OrganisationKind.CUSTOMER},
    Role.VENDOR: {OrganisationKind.VENDOR},
    Role.RESELLER: {OrganisationKind.PARTNER},
}


class AccountError(Exception):
    """Base of the account rules' failures."""


class EmailTaken(AccountError):
    pass


class InvalidCredentials(AccountError):
    pass


class InvalidToken(AccountError):
    pass


class InvalidGrant(AccountError):
    pass


class WeakPassword(AccountError):
    pass


class InvalidBillingDetails(AccountError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --------------------------------------------------------------------- users
def normalise_email(email: str) -> str:
    return email.strip().lower()


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise WeakPassword(f"use at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise WeakPassword(f"use at most {MAX_PASSWORD} characters")
    if password.strip() == "" or len(set(password)) < 4:
        raise WeakPassword("use a password with more variety")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def find_user(session: Session, email: str) -> User | None:
    return session.scalar(sa.select(User).where(User.email == normalise_email(email)))


def create_user(
    session: Session,
    *,
    email: str,
    name: str,
    password: str | None,
    email_verified: bool = False,
) -> User:
    email = normalise_email(email)
    if find_user(session, email) is not None:
        raise EmailTaken(email)
    if password is not None:
        check_password_policy(password)
    user = User(
        email=email,
        name=name.strip(),
        password_hash=hash_password(password) if password is not None else None,
        email_verified=email_verified,
    )
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, email: str, password: str) -> User:
    """The active user with this e-mail and password; rehashes outdated hashes."""
    user = find_user(session, email)
    if user is None or user.password_hash is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, password)
        raise InvalidCredentials("wrong e-mail or password")
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise InvalidCredentials("wrong e-mail or password") from None
    if not user.is_active:
        raise InvalidCredentials("this account is disabled")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_sign_in_at = utcnow()
    session.flush()
    return user


def set_password(session: Session, user: User, password: str) -> None:
    check_password_policy(password)
    user.password_hash = hash_password(password)
    user.session_generation += 1
    session.flush()


def end_all_sessions(session: Session, user: User) -> None:
    """Sign ``user`` out of every browser session (this one too); API tokens are kept."""
    user.session_generation += 1
    session.flush()


def set_active(session: Session, user: User, active: bool) -> None:
    """Disable or re-enable a user; disabling ends their sessions and refuses their tokens."""
    if user.is_active != active:
        user.is_active = active
        user.session_generation += 1
        emit(session, "user.disabled" if not active else "user.enabled", {"user_id": str(user.id)})
        session.flush()


# ------------------------------------------------------------- organisations
@dataclass(frozen=True)
class BillingDetails:
    legal_name: str
    country: str
    vat_number: str | None = None
    address_line1: str = ""
    address_line2: str = ""
    postal_code: str = ""
    city: str = ""
    region: str = ""
    billing_email: str | None = None

    def normalised(self) -> BillingDetails:
        country = self.country.strip().upper()
        if pycountry.countries.get(alpha_2=country) is None:
            raise InvalidBillingDetails("country", f"{self.country!r} is not an ISO 3166-1 alpha-2 code")
        vat = re.sub(r"[\s.\-]", "", self.vat_number or "").upper() or None
        if vat is not None and not re.fullmatch(r"[A-Z0-9]{4,20}", vat):
            raise InvalidBillingDetails("vat_number", "use 4 to 20 letters and digits")
        if not self.legal_name.strip():
            raise InvalidBillingDetails("legal_name", "must not be empty")
        return BillingDetails(
            legal_name=self.legal_name.strip(),
            country=country,
            vat_number=vat,
            address_line1=self.address_line1.strip(),
            address_line2=self.address_line2.strip(),
            postal_code=self.postal_code.strip(),
            city=self.city.strip(),
            region=self.region.strip(),
            billing_email=normalise_email(self.billing_email) if self.billing_email else None,
        )


def create_organisation(
    session: Session,
    marketplace: Marketplace,
    *,
    kind: OrganisationKind,
    name: str,
    billing: BillingDetails,
) -> Organisation:
    details = billing.normalised()
    organisation = Organisation(
        marketplace_id=marketplace.id,
        kind=kind,
        name=name.strip(),
        **details.__dict__,
    )
    session.add(organisation)
    session.flush()
    emit(
        session,
        "organisation.created",
        {"organisation_id": str(organisation.id), "kind": kind.value},
        marketplace_id=marketplace.id,
    )
    return organisation


def update_organisation(
    session: Session, organisation: Organisation, changes: dict[str, Any]
) -> Organisation:
    current = BillingDetails(
        legal_name=organisation.legal_name,
        country=organisation.country,
        vat_number=organisation.vat_number,
        address_line1=organisation.address_line1,
        address_line2=organisation.address_line2,
        postal_code=organisation.postal_code,
        city=organisation.city,
        region=organisation.region,
        billing_email=organisation.billing_email,
    )
    merged = {**current.__dict__, **{k: v for k, v in changes.items() if k in current.__dict__}}
    details = BillingDetails(**merged).normalised()
    for key, value in details.__dict__.items():
        setattr(organisation, key, value)
    if "name" in changes:
        organisation.name = str(changes["name"]).strip()
    session.flush()
    return organisation


# -------------------------------------------------------------------- grants
def grant(
    session: Session,
    user: User,
    marketplace: Marketplace,
    role: Role,
    organisation: Organisation | None = None,
) -> Membership:
    """Give ``user`` ``role`` in ``marketplace``; granting twice returns the first grant."""
    if role is Role.ADMIN:
        if organisation is not None:
            raise InvalidGrant("an admin role is not held for an organisation")
    else:
        if organisation is None:
            raise InvalidGrant(f"the {role.value} role needs an organisation")
        if organisation.marketplace_id != marketplace.id:
            raise InvalidGrant("the organisation belongs to another marketplace")
        if organisation.kind not in ROLE_ORGANISATION_KINDS[role]:
            raise InvalidGrant(f"the {role.value} role does not fit a {organisation.kind.value} organisation")
    same_organisation = (
        Membership.organisation_id == organisation.id
        if organisation is not None
        else Membership.organisation_id.is_(None)
    )
    existing = session.scalar(
        sa.select(Membership).where(
            Membership.user_id == user.id,
            Membership.marketplace_id == marketplace.id,
            Membership.role == role,
            same_organisation,
        )
    )
    if existing is not None:
        return existing
    membership = Membership(
        user_id=user.id,
        marketplace_id=marketplace.id,
        role=role,
        organisation_id=organisation.id if organisation else None,
    )
    session.add(membership)
    session.flush()
    emit(
        session,
        "membership.granted",
        {
            "membership_id": str(membership.id),
            "user_id": str(user.id),
            "role": role.value,
            "organisation_id": str(organisation.id) if organisation else None,
        },
        marketplace_id=marketplace.id,
    )
    return membership


def memberships_in(session: Session, user: User, marketplace: Marketplace) -> list[Membership]:
    """The user's grants in this marketplace, plus admin grants in the marketplaces above it."""
    above = ancestor_ids(session, marketplace)[1:]
    return list(
        session.scalars(
            sa.select(Membership)
            .options(joinedload(Membership.organisation))
            .where(
                Membership.user_id == user.id,
                sa.or_(
                    Membership.marketplace_id == marketplace.id,
                    sa.and_(Membership.marketplace_id.in_(above), Membership.role == Role.ADMIN)
                    if above
                    else sa.false(),
                ),
            )
            .order_by(Membership.created_at, Membership.id)
        )
    )


def effective_roles(memberships: Iterable[Membership]) -> frozenset[Role]:
    return frozenset(m.role for m in memberships)


def organisation_ids(memberships: Iterable[Membership]) -> frozenset[uuid.UUID]:
    return frozenset(m.organisation_id for m in memberships if m.organisation_id is not None)


def sign_up(
    session: Session,
    marketplace: Marketplace,
    *,
    email: str,
    name: str,
    password: str,
    organisation_name: str,
    billing: BillingDetails,
) -> tuple[User, Organisation]:
    """A new customer: the user, their company and the customer role in this marketplace."""
    user = create_user(session, email=email, name=name, password=password)
    organisation = create_organisation(
        session, marketplace, kind=OrganisationKind.CUSTOMER, name=organisation_name, billing=billing
    )
    grant(session, user, marketplace, Role.CUSTOMER, organisation)
    emit(
        session,
        "user.signed_up",
        {"user_id": str(user.id), "organisation_id": str(organisation.id)},
        marketplace_id=marketplace.id,
    )
    return user, organisation


# -------------------------------------------------------------------- tokens
def _token_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_token(
    session: Session,
    user: User,
    marketplace: Marketplace,
    *,
    name: str,
    expires_at: dt.datetime | None,
) -> tuple[ApiToken, str]:
    """A new token; the plaintext is returned here once and never stored."""
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidToken("the expiry must be in the future")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        marketplace_id=marketplace.id,
        name=name.strip(),
        prefix=plaintext[: len(TOKEN_PREFIX) + 6],
        token_hash=_token_hash(plaintext),
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return token, plaintext


#: how stale ``last_used_at`` may get before a request records its use
TOKEN_TOUCH_INTERVAL = dt.timedelta(minutes=1)


def resolve_token(session: Session, plaintext: str) -> ApiToken:
    """The live token for ``plaintext`` (its user loaded), or :class:`InvalidToken` saying why not."""
    if not plaintext.startswith(TOKEN_PREFIX) or len(plaintext) > 200:
        raise InvalidToken("malformed token")
    token = session.scalar(
        sa.select(ApiToken)
        .options(joinedload(ApiToken.user))
        .where(ApiToken.token_hash == _token_hash(plaintext))
    )
    if token is None:
        raise InvalidToken("unknown token")
    now = utcnow()
    if token.revoked_at is not None:
        raise InvalidToken("token revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise InvalidToken("token expired")
    if not token.user.is_active:
        raise InvalidToken("account disabled")
    return token


def token_needs_touch(token: ApiToken) -> bool:
    return token.last_used_at is None or utcnow() - token.last_used_at > TOKEN_TOUCH_INTERVAL


def touch_token(connection: sa.Connection, token_id: uuid.UUID) -> None:
    """Record a token's use. Runs on its own connection and commits at once: most
    requests that use a token are reads that never commit."""
    now = utcnow()
    connection.execute(
        sa.update(ApiToken)
        .where(
            ApiToken.id == token_id,
            sa.or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - TOKEN_TOUCH_INTERVAL),
        )
        .values(last_used_at=now)
    )


def revoke_token(session: Session, token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()


def default_token_expiry(ttl_days: int) -> dt.datetime | None:
    return utcnow() + dt.timedelta(days=ttl_days) if ttl_days else None


def _active_holders(session: Session, *where: sa.ColumnElement[bool]) -> list[User]:
    """Active users with a membership matching ``where``, by e-mail."""
    return list(
        session.scalars(
            sa.select(User)
            .join(Membership, Membership.user_id == User.id)
            .where(*where, User.is_active.is_(True))
            .order_by(User.email)
        )
    )


def members(session: Session, organisation_id: uuid.UUID, role: Role) -> list[User]:
    """Active users holding ``role`` for the organisation."""
    return _active_holders(session, Membership.organisation_id == organisation_id, Membership.role == role)


def admins_of(session: Session, marketplace_id: uuid.UUID) -> list[User]:
    """Active users holding the admin role in the marketplace itself."""
    return _active_holders(
        session, Membership.marketplace_id == marketplace_id, Membership.role == Role.ADMIN
    )


def administers_everywhere(session: Session, admin: User, user: User) -> bool:
    """Whether ``admin`` is an admin of every marketplace ``user`` holds a role in (or of one
    above it). Users are global: disabling or renaming one changes every marketplace."""
    marketplace_ids = {m.marketplace_id for m in user.memberships}
    for marketplace_id in marketplace_ids:
        marketplace = session.get(Marketplace, marketplace_id)
        if marketplace is None or Role.ADMIN not in effective_roles(
            memberships_in(session, admin, marketplace)
        ):
            return False
    return True


def users_of(marketplace: Marketplace, role: Role | None = None, q: str | None = None) -> sa.Select[Any]:
    """Users holding a role (``role``, or any) in ``marketplace``, matching ``q`` in their
    e-mail or name, by e-mail."""
    members = sa.select(Membership.user_id).where(Membership.marketplace_id == marketplace.id)
    if role is not None:
        members = members.where(Membership.role == role)
    stmt = sa.select(User).where(User.id.in_(members)).order_by(User.email, User.id)
    if q:
        needle = f"%{q.lower()}%"
        stmt = stmt.where(sa.or_(User.email.like(needle), sa.func.lower(User.name).like(needle)))
    return stmt


class CannotChangeUser(AccountError):
    pass


def set_active_by(session: Session, admin: User, user: User, active: bool) -> None:
    """An administrator disables or re-enables ``user``: not themselves, and only a user
    whose every marketplace they administer."""
    if user.id == admin.id and not active:
        raise CannotChangeUser("you cannot disable your own account")
    if not administers_everywhere(session, admin, user):
        raise CannotChangeUser(
            "this user also holds roles in marketplaces you do not administer;"
            " remove their roles in yours instead"
        )
    set_active(session, user, active)
