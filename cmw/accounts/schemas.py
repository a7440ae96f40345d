"""Request and response bodies of the accounts API."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from cmw.accounts.models import OrganisationKind, Role


class BillingDetailsSchema(Schema):
    legal_name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    country = fields.String(
        required=True,
        validate=validate.Length(equal=2),
        metadata={"description": "ISO 3166-1 alpha-2", "example": "IT"},
    )
    vat_number = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=32))
    address_line1 = fields.String(load_default="", validate=validate.Length(max=200))
    address_line2 = fields.String(load_default="", validate=validate.Length(max=200))
    postal_code = fields.String(load_default="", validate=validate.Length(max=20))
    city = fields.String(load_default="", validate=validate.Length(max=100))
    region = fields.String(load_default="", validate=validate.Length(max=100))
    billing_email = fields.Email(load_default=None, allow_none=True)


class OrganisationCreateSchema(BillingDetailsSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    kind = fields.Enum(OrganisationKind, by_value=True, required=True)


class OrganisationUpdateSchema(Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    legal_name = fields.String(validate=validate.Length(min=1, max=200))
    country = fields.String(validate=validate.Length(equal=2))
    vat_number = fields.String(allow_none=True, validate=validate.Length(max=32))
    address_line1 = fields.String(validate=validate.Length(max=200))
    address_line2 = fields.String(validate=validate.Length(max=200))
    postal_code = fields.String(validate=validate.Length(max=20))
    city = fields.String(validate=validate.Length(max=100))
    region = fields.String(validate=validate.Length(max=100))
    billing_email = fields.Email(allow_none=True)


class OrganisationSchema(Schema):
    id = fields.UUID(dump_only=True)
    marketplace_id = fields.UUID(dump_only=True)
    kind = fields.Enum(OrganisationKind, by_value=True)
    name = fields.String()
    legal_name = fields.String()
    country = fields.String()
    vat_number = fields.String(allow_none=True)
    address_line1 = fields.String()
    address_line2 = fields.String()
    postal_code = fields.String()
    city = fields.String()
    region = fields.String()
    billing_email = fields.String(allow_none=True)
    created_at = fields.AwareDateTime(dump_only=True)


class MembershipSchema(Schema):
    id = fields.UUID(dump_only=True)
    marketplace_id = fields.UUID(dump_only=True)
    organisation_id = fields.UUID(allow_none=True)
    role = fields.Enum(Role, by_value=True)
    created_at = fields.AwareDateTime(dump_only=True)


class GrantSchema(Schema):
    role = fields.Enum(Role, by_value=True, required=True)
    organisation_id = fields.UUID(load_default=None, allow_none=True)


class UserSchema(Schema):
    id = fields.UUID(dump_only=True)
    email = fields.String()
    name = fields.String()
    email_verified = fields.Boolean()
    is_active = fields.Boolean()
    language = fields.String(metadata={"description": "BCP 47 tag, e.g. en or it-IT"})
    created_at = fields.AwareDateTime(dump_only=True)
    last_sign_in_at = fields.AwareDateTime(allow_none=True)


class MeUpdateSchema(Schema):
    name = fields.String(validate=validate.Length(min=1, max=120))
    language = fields.String(
        validate=[
            validate.Length(max=35, error="at most 35 characters"),
            validate.Regexp(
                r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$", error="a language tag such as en, de or it-IT"
            ),
        ],
        metadata={"description": "your language, passed to the instances you order (BCP 47)"},
    )


class UserDetailSchema(UserSchema):
    memberships = fields.List(fields.Nested(MembershipSchema))


class UserUpdateSchema(Schema):
    is_active = fields.Boolean()
    name = fields.String(validate=validate.Length(min=1, max=120))


class SignUpOrganisationSchema(BillingDetailsSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))


class SignUpSchema(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=254))
    name = fields.String(required=True, validate=validate.Length(min=1, max=120))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=10, max=256))
    organisation = fields.Nested(SignUpOrganisationSchema, required=True)


class SignInSchema(Schema):
    email = fields.String(required=True, validate=validate.Length(min=1, max=254))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=256))


class MeSchema(Schema):
    user = fields.Nested(UserSchema)
    marketplace_id = fields.UUID()
    roles = fields.List(fields.Enum(Role, by_value=True))
    memberships = fields.List(fields.Nested(MembershipSchema))
    organisations = fields.List(fields.Nested(OrganisationSchema))
    authenticated_by = fields.String(metadata={"description": "session or token"})
    csrf_token = fields.String(
        allow_none=True,
        metadata={"description": "send as X-CSRF-Token on unsafe requests made with the session cookie"},
    )


class TokenCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    expires_in_days = fields.Integer(
        allow_none=True,
        validate=validate.Range(min=1, max=3650),
        metadata={"description": "days until expiry; omitted = the platform default, null = never"},
    )


class TokenSchema(Schema):
    id = fields.UUID(dump_only=True)
    name = fields.String()
    prefix = fields.String(metadata={"description": "first characters of the token"})
    created_at = fields.AwareDateTime()
    expires_at = fields.AwareDateTime(allow_none=True)
    revoked_at = fields.AwareDateTime(allow_none=True)
    last_used_at = fields.AwareDateTime(allow_none=True)


class NewTokenSchema(TokenSchema):
    token = fields.String(metadata={"description": "the secret; shown once, store it now"})


class UserListArgs(Schema):
    q = fields.String(
        load_default=None,
        validate=validate.Length(max=100),
        metadata={"description": "e-mail or name contains"},
    )
    role = fields.Enum(Role, by_value=True, load_default=None)


class OrganisationListArgs(Schema):
    kind = fields.Enum(OrganisationKind, by_value=True, load_default=None)


class IdentityProviderSchema(Schema):
    issuer = fields.Url(
        required=True,
        require_tld=False,
        metadata={
            "description": "the Keycloak realm's issuer",
            "example": "https://sso.example.com/realms/acme",
        },
    )
    client_id = fields.String(required=True, validate=validate.Length(min=1, max=255))
    client_secret = fields.String(
        load_only=True,
        validate=validate.Length(min=1, max=500),
        metadata={"description": "required for a new provider; omitted keeps the current one"},
    )
    audience = fields.String(
        allow_none=True,
        validate=validate.Length(max=255),
        metadata={"description": "the aud API access tokens must carry; the client id if empty"},
    )
    roles = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=255)),
        values=fields.String(),
        metadata={
            "description": "realm role -> Mercato role (customer, vendor, reseller, admin)",
            "example": {"mercato-admin": "admin", "mercato-customer": "customer"},
        },
    )
    display_name = fields.String(validate=validate.Length(min=1, max=100))
    provision_users = fields.Boolean(
        metadata={"description": "create Keycloak users on sign-up; disable them with their Mercato user"}
    )
    introspect = fields.Boolean(metadata={"description": "introspect every bearer token at the realm"})
    default_country = fields.String(validate=validate.Regexp(r"^[A-Za-z]{2}$"))
    source = fields.String(
        dump_only=True,
        metadata={
            "description": "marketplace (its own), inherited (a parent's) or settings (MERCATO_OIDC_*)"
        },
    )


class SignInSettingsSchema(Schema):
    local_sign_in = fields.Boolean(
        metadata={"description": "whether passwords work here; off needs an identity provider"}
    )
    identity_provider = fields.Nested(
        IdentityProviderSchema,
        allow_none=True,
        metadata={"description": "this marketplace's own provider; null removes it"},
    )
