"""The accounts API: session sign-in, the caller (``/me``), API tokens, users,
memberships and organisations, all within the request's marketplace."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import sqlalchemy as sa
from flask import Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from cmw.accounts import gdpr, oidc, service
from cmw.accounts.auth import (
    ProviderUnavailable,
    SignUpRefused,
    check_sign_up_allowed,
    commit_sign_up,
    csrf_token,
    current_marketplace,
    end_session,
    identity_provider,
    local_sign_in_allowed,
    login_required,
    require_identity,
    roles_required,
    start_session,
)
from cmw.accounts.models import ApiToken, Erasure, Membership, Organisation, Role, User
from cmw.accounts.schemas import (
    GrantSchema,
    MembershipSchema,
    MeSchema,
    MeUpdateSchema,
    NewTokenSchema,
    OrganisationCreateSchema,
    OrganisationListArgs,
    OrganisationSchema,
    OrganisationUpdateSchema,
    SignInSchema,
    SignInSettingsSchema,
    SignUpSchema,
    TokenCreateSchema,
    TokenSchema,
    UserDetailSchema,
    UserListArgs,
    UserSchema,
    UserUpdateSchema,
)
from cmw.api.errors import ApiError, invalid
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.api.views import attributes
from cmw.db import utcnow
from cmw.extensions import current_session

log = logging.getLogger(__name__)

blp = Blueprint("accounts", __name__, url_prefix="/api/v1", description="Accounts, sign-in and API tokens")


def _commit() -> None:
    current_session().commit()


def _billing(data: dict[str, Any]) -> service.BillingDetails:
    keys = service.BillingDetails.__dataclass_fields__.keys()
    return service.BillingDetails(**{k: data[k] for k in keys if k in data})


def _billing_error(exc: service.InvalidBillingDetails, location_prefix: str = "") -> ApiError:
    return invalid(f"{location_prefix}{exc.field}", exc.message)


def _me() -> dict[str, Any]:
    identity = require_identity()
    # memberships_in loaded each membership's organisation already: no query here.
    by_id = {m.organisation.id: m.organisation for m in identity.memberships if m.organisation is not None}
    organisations = sorted(by_id.values(), key=lambda o: (o.name, str(o.id)))
    return {
        "user": identity.user,
        "marketplace_id": identity.marketplace.id,
        "roles": sorted(identity.roles),
        "memberships": identity.memberships,
        "organisations": organisations,
        "authenticated_by": identity.via,
        "csrf_token": csrf_token() if identity.via == "session" else None,
    }


# ------------------------------------------------------------------ session
@blp.route("/session")
class SessionResource(MethodView):
    @blp.arguments(SignInSchema)
    @blp.response(200, MeSchema)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Sign in with e-mail and password; sets the session cookie.

        Only JSON bodies are accepted, so a cross-site form cannot sign a browser in.
        403 where an admin turned password sign-in off (single sign-on only).
        """
        if not local_sign_in_allowed():
            raise ApiError(403, "sign-in with a password is turned off here: use single sign-on")
        try:
            user = service.authenticate(current_session(), data["email"], data["password"])
        except service.InvalidCredentials as exc:
            current_session().rollback()
            # who tried, from where: never what they typed as the password
            log.warning("sign-in refused for %r from %s: %s", data["email"][:254], request.remote_addr, exc)
            raise ApiError(401, str(exc), slug="invalid-credentials") from None
        start_session(user, current_marketplace())
        _commit()
        return _me()

    @blp.response(204)
    def delete(self) -> None:
        """Sign out of this browser session (and of its single sign-on session here)."""
        end_session()
        current_session().commit()


@blp.route("/me/sign-out-everywhere")
class SignOutEverywhere(MethodView):
    @blp.response(204)
    @login_required
    def post(self) -> None:
        """Sign out of every browser session, on every device (this one too); API tokens
        are kept (revoke them one by one)."""
        service.end_all_sessions(current_session(), require_identity().user)
        end_session()
        current_session().commit()


# ----------------------------------------------------------------------- me
@blp.route("/me")
class MeResource(MethodView):
    @blp.response(200, MeSchema)
    @login_required
    def get(self) -> dict[str, Any]:
        """The caller, their roles and organisations in this marketplace."""
        return _me()

    @blp.arguments(MeUpdateSchema)
    @blp.response(200, MeSchema)
    @login_required
    def patch(self, data: dict[str, Any]) -> dict[str, Any]:
        """Change your name or language."""
        identity = require_identity()
        user = current_session().get(User, identity.user.id)
        assert user is not None
        if "name" in data:
            user.name = data["name"].strip() or user.name
        if "language" in data:
            user.language = data["language"]
        current_session().commit()
        return _me()


class ErasureRequestSchema(Schema):
    confirm_email = fields.String(
        required=True,
        validate=validate.Length(min=3, max=254),
        metadata={"description": "your sign-in e-mail address, to confirm"},
    )


class ErasureSchema(Schema):
    id = fields.UUID()
    user_id = fields.UUID()
    requested_at = fields.AwareDateTime()
    summary = fields.Dict(metadata={"description": "what was removed or anonymised, and what was kept"})


@blp.route("/me/export")
class MyDataExport(MethodView):
    @blp.response(200, content_type="application/zip", description="a ZIP of JSON files")
    @login_required
    def get(self) -> Response:
        """Everything the platform holds about you (and the customer organisations you buy
        for), as a ZIP of JSON files; secrets are never in it."""
        identity = require_identity()
        user = current_session().get(User, identity.user.id)
        assert user is not None
        body = gdpr.export(current_session(), user)
        return Response(
            body,
            mimetype="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="mercato-data-{utcnow():%Y-%m-%d}.zip"',
                "Cache-Control": "no-store",
            },
        )


@blp.route("/me/erasure")
class MyErasure(MethodView):
    @blp.arguments(ErasureRequestSchema)
    @blp.response(200, ErasureSchema)
    @login_required
    def post(self, data: dict[str, Any]) -> Erasure:
        """Erase your personal data: your profile, keys, tokens, sign-in identities and
        notifications are removed or anonymised, and you are signed out everywhere; invoices
        are kept as the law requires. 422 while a customer organisation only you act for
        still has active subscriptions, or when ``confirm_email`` is not your address."""
        identity = require_identity()
        session = current_session()
        user = session.get(User, identity.user.id)
        assert user is not None
        if data["confirm_email"].strip().lower() != user.email.lower():
            raise invalid("confirm_email", "type the e-mail address you sign in with")
        try:
            record = gdpr.erase(session, user)
        except gdpr.ErasureRefused as exc:
            session.rollback()
            raise ApiError(422, str(exc), slug="erasure-refused") from None
        session.commit()
        return record


@blp.route("/me/tokens")
class TokensResource(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(TokenSchema))
    @login_required
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """The caller's API tokens in this marketplace, newest first."""
        identity = require_identity()
        stmt = (
            sa.select(ApiToken)
            .where(ApiToken.user_id == identity.user.id, ApiToken.marketplace_id == identity.marketplace.id)
            .order_by(ApiToken.created_at.desc(), ApiToken.id)
        )
        return paginate(current_session(), stmt, args["page"], args["per_page"])

    @blp.arguments(TokenCreateSchema)
    @blp.response(201, NewTokenSchema)
    @login_required
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create a personal API token. The secret is in this answer only."""
        identity = require_identity()
        if "expires_in_days" in data:
            days = data["expires_in_days"]
            expires_at = service.default_token_expiry(days) if days else None
        else:
            expires_at = service.default_token_expiry(current_app.config["MERCATO"].token_ttl_days)
        token, plaintext = service.create_token(
            current_session(), identity.user, identity.marketplace, name=data["name"], expires_at=expires_at
        )
        _commit()
        return {**attributes(token, TokenSchema), "token": plaintext}


@blp.route("/me/tokens/<uuid:token_id>")
class TokenResource(MethodView):
    @blp.response(204)
    @login_required
    def delete(self, token_id: uuid.UUID) -> None:
        """Revoke one of the caller's tokens; requests with it get 401 from now on."""
        identity = require_identity()
        token = current_session().get(ApiToken, token_id)
        if (
            token is None
            or token.user_id != identity.user.id
            or token.marketplace_id != identity.marketplace.id
        ):
            raise ApiError(404, "no such token")
        service.revoke_token(current_session(), token)
        _commit()


# -------------------------------------------------------------------- users
def _user_in_marketplace(user_id: uuid.UUID) -> User:
    """A user holding a grant in this marketplace; anyone else is 404, never their data."""
    marketplace = current_marketplace()
    user = current_session().scalar(
        sa.select(User).where(
            User.id == user_id,
            User.id.in_(sa.select(Membership.user_id).where(Membership.marketplace_id == marketplace.id)),
        )
    )
    if user is None:
        raise ApiError(404, "no such user in this marketplace")
    return user


def _user_detail(user: User) -> dict[str, Any]:
    marketplace = current_marketplace()
    memberships = [m for m in user.memberships if m.marketplace_id == marketplace.id]
    return {**attributes(user, UserSchema), "memberships": memberships}


@blp.route("/users")
class UsersResource(MethodView):
    @blp.arguments(UserListArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(UserDetailSchema))
    @roles_required(Role.ADMIN)
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Users holding a role in this marketplace (admins)."""
        stmt = service.users_of(current_marketplace(), filters.get("role"), filters.get("q"))
        page = paginate(current_session(), stmt, args["page"], args["per_page"])
        page["items"] = [_user_detail(u) for u in page["items"]]
        return page

    @blp.arguments(SignUpSchema)
    @blp.response(201, UserDetailSchema)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Sign up as a customer of this marketplace, with your company's billing details.
        403 where passwords are turned off (people sign up through the identity provider)."""
        try:
            check_sign_up_allowed()
        except SignUpRefused as exc:
            raise ApiError(403, str(exc)) from None
        org = data["organisation"]
        try:
            user, _ = service.sign_up(
                current_session(),
                current_marketplace(),
                email=data["email"],
                name=data["name"],
                password=data["password"],
                organisation_name=org["name"],
                billing=_billing(org),
            )
        except service.EmailTaken:
            current_session().rollback()
            raise ApiError(
                409, "an account with this e-mail already exists; sign in instead", slug="email-taken"
            ) from None
        except service.WeakPassword as exc:
            current_session().rollback()
            raise ApiError(
                422,
                "invalid input: password",
                errors=[{"location": "json", "field": "password", "message": str(exc)}],
            ) from None
        except service.InvalidBillingDetails as exc:
            current_session().rollback()
            raise _billing_error(exc, "organisation.") from None
        try:
            commit_sign_up(user, data["password"])
        except ProviderUnavailable as exc:
            raise ApiError(503, str(exc)) from None
        except SignUpRefused as exc:
            raise ApiError(409, str(exc), slug="email-taken") from None
        return _user_detail(user)


@blp.route("/users/<uuid:user_id>")
class UserResource(MethodView):
    @blp.response(200, UserDetailSchema)
    @roles_required(Role.ADMIN)
    def get(self, user_id: uuid.UUID) -> dict[str, Any]:
        """One user of this marketplace with their grants here (admins)."""
        return _user_detail(_user_in_marketplace(user_id))

    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserDetailSchema)
    @roles_required(Role.ADMIN)
    def patch(self, data: dict[str, Any], user_id: uuid.UUID) -> dict[str, Any]:
        """Rename, disable or re-enable a user (admins). Disabling ends their sessions and tokens."""
        user = _user_in_marketplace(user_id)
        if not service.administers_everywhere(current_session(), require_identity().user, user):
            raise ApiError(
                403,
                "this user also holds roles in marketplaces you do not administer; "
                "remove their roles in yours instead",
            )
        if "is_active" in data:
            if user.id == require_identity().user.id and not data["is_active"]:
                raise ApiError(409, "you cannot disable your own account", slug="self-disable")
            service.set_active(current_session(), user, data["is_active"])
        if "name" in data:
            user.name = data["name"].strip()
        _commit()
        return _user_detail(user)


@blp.route("/users/<uuid:user_id>/memberships")
class UserMembershipsResource(MethodView):
    @blp.arguments(GrantSchema)
    @blp.response(201, MembershipSchema)
    @roles_required(Role.ADMIN)
    def post(self, data: dict[str, Any], user_id: uuid.UUID) -> Membership:
        """Grant a role in this marketplace (admins); granting an existing role returns it."""
        user = _user_in_marketplace(user_id)
        organisation = None
        if data["organisation_id"] is not None:
            organisation = _organisation_in_marketplace(data["organisation_id"])
        try:
            membership = service.grant(
                current_session(), user, current_marketplace(), data["role"], organisation
            )
        except service.InvalidGrant as exc:
            current_session().rollback()
            raise ApiError(
                422, str(exc), errors=[{"location": "json", "field": "organisation_id", "message": str(exc)}]
            ) from None
        _commit()
        return membership


@blp.route("/users/<uuid:user_id>/memberships/<uuid:membership_id>")
class UserMembershipResource(MethodView):
    @blp.response(204)
    @roles_required(Role.ADMIN)
    def delete(self, user_id: uuid.UUID, membership_id: uuid.UUID) -> None:
        """Remove a grant (admins). The last admin grant of the marketplace stays."""
        marketplace = current_marketplace()
        membership = current_session().get(Membership, membership_id)
        if membership is None or membership.user_id != user_id or membership.marketplace_id != marketplace.id:
            raise ApiError(404, "no such membership in this marketplace")
        if membership.role is Role.ADMIN:
            admins = current_session().scalar(
                sa.select(sa.func.count()).where(
                    Membership.marketplace_id == marketplace.id, Membership.role == Role.ADMIN
                )
            )
            if (admins or 0) <= 1:
                raise ApiError(409, "this is the marketplace's last admin", slug="last-admin")
        current_session().delete(membership)
        _commit()


# ------------------------------------------------------------ organisations
def _organisation_in_marketplace(organisation_id: uuid.UUID) -> Organisation:
    organisation = current_session().get(Organisation, organisation_id)
    if organisation is None or organisation.marketplace_id != current_marketplace().id:
        raise ApiError(404, "no such organisation in this marketplace")
    return organisation


def _visible_organisation(organisation_id: uuid.UUID) -> Organisation:
    """Admins see every organisation of the marketplace; members see their own."""
    identity = require_identity()
    organisation = _organisation_in_marketplace(organisation_id)
    if identity.is_admin or organisation.id in identity.organisation_ids:
        return organisation
    raise ApiError(404, "no such organisation in this marketplace")


@blp.route("/organisations")
class OrganisationsResource(MethodView):
    @blp.arguments(OrganisationListArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(OrganisationSchema))
    @login_required
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Organisations of this marketplace: all of them for admins, your own otherwise."""
        identity = require_identity()
        stmt = sa.select(Organisation).where(Organisation.marketplace_id == identity.marketplace.id)
        if not identity.is_admin:
            stmt = stmt.where(Organisation.id.in_(identity.organisation_ids or [uuid.UUID(int=0)]))
        if filters.get("kind") is not None:
            stmt = stmt.where(Organisation.kind == filters["kind"])
        return paginate(
            current_session(),
            stmt.order_by(Organisation.name, Organisation.id),
            args["page"],
            args["per_page"],
        )

    @blp.arguments(OrganisationCreateSchema)
    @blp.response(201, OrganisationSchema)
    @roles_required(Role.ADMIN)
    def post(self, data: dict[str, Any]) -> Organisation:
        """Create a customer, vendor or partner organisation (admins)."""
        try:
            organisation = service.create_organisation(
                current_session(),
                current_marketplace(),
                kind=data["kind"],
                name=data["name"],
                billing=_billing(data),
            )
        except service.InvalidBillingDetails as exc:
            current_session().rollback()
            raise _billing_error(exc) from None
        _commit()
        return organisation


@blp.route("/organisations/<uuid:organisation_id>")
class OrganisationResource(MethodView):
    @blp.response(200, OrganisationSchema)
    @login_required
    def get(self, organisation_id: uuid.UUID) -> Organisation:
        """One organisation you belong to (or any, for admins)."""
        return _visible_organisation(organisation_id)

    @blp.arguments(OrganisationUpdateSchema)
    @blp.response(200, OrganisationSchema)
    @login_required
    def patch(self, data: dict[str, Any], organisation_id: uuid.UUID) -> Organisation:
        """Change an organisation's name or billing details (its members, or admins)."""
        organisation = _visible_organisation(organisation_id)
        try:
            service.update_organisation(current_session(), organisation, data)
        except service.InvalidBillingDetails as exc:
            current_session().rollback()
            raise _billing_error(exc) from None
        _commit()
        return organisation


# -------------------------------------------------------------- sign-in settings
def _sign_in_settings() -> dict[str, Any]:
    g.pop("identity_provider", None)  # what the change just made, not what the request began with
    return {
        "local_sign_in": current_marketplace().local_sign_in,
        "identity_provider": oidc.describe(identity_provider()),
    }


@blp.route("/admin/sign-in")
class SignInSettingsResource(MethodView):
    @blp.response(200, SignInSettingsSchema)
    @roles_required(Role.ADMIN)
    def get(self) -> dict[str, Any]:
        """How people sign in here: passwords, and the identity provider (Keycloak) in use."""
        return _sign_in_settings()

    @blp.arguments(SignInSettingsSchema)
    @blp.response(200, SignInSettingsSchema)
    @roles_required(Role.ADMIN)
    def put(self, data: dict[str, Any]) -> dict[str, Any]:
        """Change them: give this marketplace its own provider (its realm's discovery
        document must answer) or remove it (``null``), turn password sign-in on or off."""
        session = current_session()
        try:
            oidc.change_sign_in(
                session,
                current_marketplace(),
                current_app.config["MERCATO"],
                current_app.extensions["mercato.sealer"],
                provider=data.get("identity_provider", oidc.UNCHANGED),
                local_sign_in=data.get("local_sign_in"),
            )
        except oidc.SettingsError as exc:
            session.rollback()
            raise invalid(exc.field, str(exc)) from None
        session.commit()
        return _sign_in_settings()
