"""Bodies of the catalog API. Prices are decimal strings ("12.50"), never JSON floats."""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from typing import Any

from flask_smorest.fields import Upload
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from webargs.fields import DelimitedList

from cmw.catalog.models import (
    BillingPeriod,
    ComponentKind,
    PricingModel,
    ProductStatus,
    ProductType,
    VersionState,
)
from cmw.catalog.pricing import ComponentSpec, PlanSpec, Tier
from cmw.catalog.search import Sort
from cmw.money import PRICE_SCALE, format_amount, parse_amount

URL_PLACEHOLDERS = ("{ip}", "{hostname}")
#: default source of an inbound firewall rule: any IPv4 address
ANYWHERE = "0.0.0.0/0"


class Amount(fields.Field):  # type: ignore[type-arg]
    """A non-negative decimal given as a string (or an integer); floats are refused."""

    default_error_messages = {"invalid": 'use a decimal string such as "12.50" (no floats)'}

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else format_amount(Decimal(value))

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        try:
            amount = parse_amount(value, scale=PRICE_SCALE)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        return amount


class SizeSchema(Schema):
    cores = fields.Integer(required=True, validate=validate.Range(min=1, max=512))
    ram_mib = fields.Integer(required=True, validate=validate.Range(min=256, max=8 * 1024 * 1024))
    root_disk_gib = fields.Integer(required=True, validate=validate.Range(min=1, max=65536))


class PortSchema(Schema):
    port = fields.Integer(required=True, validate=validate.Range(min=1, max=65535))
    protocol = fields.String(load_default="tcp", validate=validate.OneOf(["tcp", "udp"]))
    cidr = fields.String(load_default=ANYWHERE, validate=validate.Length(max=43))

    @validates_schema(skip_on_field_errors=False)
    def _cidr(self, data: dict[str, Any], **kwargs: Any) -> None:
        try:
            ipaddress.ip_network(data.get("cidr", ANYWHERE), strict=False)
        except ValueError:
            raise ValidationError("not an IP network like 203.0.113.0/24", "cidr") from None


class DeploymentTargetSchema(Schema):
    cloud_account = fields.String(
        required=True,
        validate=validate.Regexp(r"^[a-z0-9][a-z0-9-]{0,62}$"),
        metadata={"description": "slug of the cloud account to deploy on"},
    )
    region = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    image = fields.String(required=True, validate=validate.Length(min=1, max=255))
    size = fields.Nested(SizeSchema, required=True)
    data_disk_gib = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=65536)
    )
    inbound_ports = fields.List(
        fields.Nested(PortSchema), load_default=list, validate=validate.Length(max=50)
    )
    setup_script = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=100_000))
    app_url_template = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=500),
        metadata={"example": "https://{ip}/", "description": "placeholders: {ip}, {hostname}"},
    )
    default_login = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    log_files = fields.List(
        fields.String(
            validate=[validate.Length(max=500), validate.Regexp(r"^/[^\0\n]*$", error="an absolute path")]
        ),
        load_default=list,
        validate=validate.Length(max=10),
        metadata={
            "description": "files on the VM whose new lines the platform collects, e.g. /var/log/app.log"
        },
    )
    node_exporter_port = fields.Integer(
        load_default=9100,
        validate=validate.Range(min=1, max=65535),
        metadata={"description": "where the VM's Prometheus node exporter listens, on its loopback"},
    )
    final_snapshot = fields.Boolean(
        load_default=False,
        metadata={"description": "snapshot the data disk before it is deleted when the subscription ends"},
    )

    @validates_schema(skip_on_field_errors=False)
    def _url_template(self, data: dict[str, Any], **kwargs: Any) -> None:
        template = data.get("app_url_template")
        if template is None:
            return
        has_placeholder = any(p in template for p in URL_PLACEHOLDERS)
        if not template.startswith(("http://", "https://")) or not has_placeholder:
            raise ValidationError(
                "an http(s) URL with {ip} or {hostname}, e.g. https://{ip}/", "app_url_template"
            )
        leftover = template
        for placeholder in URL_PLACEHOLDERS:
            leftover = leftover.replace(placeholder, "")
        if "{" in leftover or "}" in leftover:
            raise ValidationError("only {ip} and {hostname} may be used", "app_url_template")


class AccessUrlSchema(Schema):
    name = fields.String(
        required=True, validate=validate.Length(min=1, max=40), metadata={"example": "Admin"}
    )
    path = fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=200),
            validate.Regexp(r"^/[^\s#]*$", error="a path under the instance's address, like /admin"),
        ],
        metadata={"example": "/admin"},
    )


class SetupVariableSchema(Schema):
    name = fields.String(
        required=True,
        validate=[
            validate.Regexp(
                r"^(?!MERCATO_)[A-Z][A-Z0-9_]{0,62}$",
                error="an environment variable name like APP_TITLE (capitals, digits, _; not MERCATO_...)",
            )
        ],
    )
    label = fields.String(load_default="", validate=validate.Length(max=100))
    description = fields.String(load_default="", validate=validate.Length(max=500))
    default = fields.String(load_default="", validate=validate.Length(max=1000))
    customer_editable = fields.Boolean(
        load_default=False, metadata={"description": "the customer may set it when ordering"}
    )


def _unique(key: str) -> Any:
    def check(items: list[dict[str, Any]]) -> None:
        seen = [i[key] for i in items]
        twice = sorted({n for n in seen if seen.count(n) > 1})
        if twice:
            raise ValidationError(f"each {key} once; repeated: {', '.join(twice)}")

    return check


class ProductContentSchema(Schema):
    name = fields.String(validate=validate.Length(min=1, max=120))
    short_description = fields.String(validate=validate.Length(max=300))
    long_description = fields.String(
        validate=validate.Length(max=50_000), metadata={"description": "Markdown"}
    )
    category = fields.String(attribute="category_slug", data_key="category", validate=validate.Length(max=50))
    tags = fields.List(
        fields.String(validate=validate.Length(min=1, max=40)), validate=validate.Length(max=20)
    )
    website = fields.URL(allow_none=True, schemes={"http", "https"})
    support_email = fields.Email(allow_none=True)
    product_type = fields.Enum(ProductType, by_value=True)
    trial_days = fields.Integer(
        validate=validate.Range(min=0, max=365), metadata={"description": "0 = no trial"}
    )
    requires_approval = fields.Boolean(
        metadata={
            "description": "orders and plan or quantity changes wait for your approval "
            "(the reseller's, on a reseller marketplace)"
        }
    )
    deployment = fields.List(fields.Nested(DeploymentTargetSchema), validate=validate.Length(max=20))
    endpoints = fields.List(
        fields.Nested(AccessUrlSchema),
        validate=[validate.Length(max=20), _unique("name")],
        metadata={"description": "the instance's access URLs, under its address"},
    )
    setup_variables = fields.List(
        fields.Nested(SetupVariableSchema),
        validate=[validate.Length(max=50), _unique("name")],
        metadata={"description": "environment variables of the setup script, with their defaults"},
    )


class ProductCreateSchema(ProductContentSchema):
    slug = fields.String(required=True, validate=validate.Length(min=1, max=80))
    vendor_id = fields.UUID(
        load_default=None, metadata={"description": "needed when you belong to more than one vendor"}
    )

    @validates_schema
    def _required(self, data: dict[str, Any], **kwargs: Any) -> None:
        missing = {"name": "name", "category_slug": "category", "product_type": "product_type"}
        errors = {
            key: ["Missing data for required field."] for attr, key in missing.items() if attr not in data
        }
        if errors:
            raise ValidationError(errors)


class ProductUpdateSchema(ProductContentSchema):
    slug = fields.String(validate=validate.Length(min=1, max=80))


class PriceFromSchema(Schema):
    amount = Amount()
    currency = fields.String()
    period = fields.String(metadata={"description": "always month: yearly plans count a twelfth"})


class RatingSchema(Schema):
    average = fields.Float(
        allow_none=True, metadata={"description": "1 to 5, one decimal; null without reviews"}
    )
    count = fields.Integer()


class TierSchema(Schema):
    start = Amount(required=True, data_key="from", metadata={"description": "0 for the first tier"})
    up_to = Amount(allow_none=True, required=True, metadata={"description": "null for the last tier"})
    unit_price = Amount(required=True)
    flat_fee = Amount(load_default=Decimal(0))


class PriceComponentSchema(Schema):
    kind = fields.Enum(ComponentKind, by_value=True, required=True)
    label = fields.String(required=True, validate=validate.Length(min=1, max=100))
    unit_price = Amount(load_default=None, allow_none=True)
    metric = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=100))
    unit = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=30))
    pricing_model = fields.Enum(PricingModel, by_value=True, load_default=None, allow_none=True)
    included_quantity = Amount(load_default=Decimal(0))
    tiers = fields.List(
        fields.Nested(TierSchema), load_default=list, allow_none=True, validate=validate.Length(max=50)
    )
    min_quantity = fields.Integer(load_default=None, allow_none=True)
    max_quantity = fields.Integer(load_default=None, allow_none=True)
    infrastructure = fields.Boolean(
        load_default=False,
        metadata={
            "description": "the machine's cost (VM, disk, traffic), not charged when the customer "
            "runs the product in their own cloud account"
        },
    )


class VmSizeSchema(Schema):
    cores = fields.Integer(required=True, validate=validate.Range(min=1, max=512))
    ram_mib = fields.Integer(required=True, validate=validate.Range(min=256, max=16 * 1024 * 1024))


class PlanSchema(Schema):
    id = fields.UUID(dump_only=True)
    code = fields.String(required=True, validate=validate.Length(min=1, max=50))
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    currency = fields.String(required=True, validate=validate.Length(equal=3))
    billing_period = fields.Enum(BillingPeriod, by_value=True, required=True)
    components = fields.List(
        fields.Nested(PriceComponentSchema), required=True, validate=validate.Length(min=1, max=30)
    )
    vm_size = fields.Nested(
        VmSizeSchema,
        load_default=None,
        allow_none=True,
        metadata={
            "description": "this plan's VM instead of the deployment target's size; changing to a "
            "plan with another one resizes the customer's VM"
        },
    )
    data_disk_gib = fields.Integer(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=1, max=65_536),
        metadata={"description": "this plan's data disk instead of the target's (disks only grow)"},
    )


class PriceComponentOutSchema(PriceComponentSchema):
    # Stored tiers are already JSON in the API's shape ("from", "up_to", decimal strings).
    tiers = fields.List(fields.Dict(), allow_none=True)


class PlanOutSchema(PlanSchema):
    components = fields.List(fields.Nested(PriceComponentOutSchema))


class PlansSchema(Schema):
    plans = fields.List(fields.Nested(PlanSchema), required=True, validate=validate.Length(min=1, max=20))


class ImageUrlsSchema(Schema):
    original = fields.String()
    thumb = fields.String(metadata={"description": "WebP, fits 160x160"})
    card = fields.String(metadata={"description": "WebP, fits 480x360"})
    large = fields.String(metadata={"description": "WebP, fits 1280x960"})


class ImageSchema(Schema):
    id = fields.UUID()
    width = fields.Integer()
    height = fields.Integer()
    background_colour = fields.String(metadata={"description": "#rrggbb the image reads well on"})
    urls = fields.Nested(ImageUrlsSchema, metadata={"description": "presigned (time-limited) on S3"})


class UploadSchema(Schema):
    file = Upload(required=True, metadata={"description": "PNG, JPEG or WebP, at most 5 MB"})


class VersionSchema(ProductContentSchema):
    id = fields.UUID()
    number = fields.Integer()
    state = fields.Enum(VersionState, by_value=True)
    long_description_html = fields.String(metadata={"description": "the Markdown rendered to safe HTML"})
    plans = fields.List(fields.Nested(PlanOutSchema))
    submitted_at = fields.AwareDateTime(allow_none=True)
    reviewed_at = fields.AwareDateTime(allow_none=True)
    review_note = fields.String(allow_none=True, metadata={"description": "why an admin sent it back"})
    logo = fields.Nested(ImageSchema, allow_none=True)
    screenshots = fields.List(fields.Nested(ImageSchema))


class ProductSchema(Schema):
    """A product as its vendor and admins see it: status, live and working versions."""

    id = fields.UUID()
    slug = fields.String()
    vendor_id = fields.UUID()
    marketplace_id = fields.UUID()
    status = fields.Enum(ProductStatus, by_value=True)
    live_version = fields.Nested(VersionSchema, allow_none=True)
    working_version = fields.Nested(VersionSchema, allow_none=True)
    created_at = fields.AwareDateTime()
    retired_at = fields.AwareDateTime(allow_none=True)


class PublicProductSchema(ProductContentSchema):
    """A published product as customers see it: the live version only."""

    price_from = fields.Nested(PriceFromSchema, allow_none=True)
    rating = fields.Nested(RatingSchema)
    logo = fields.Nested(ImageSchema, allow_none=True)
    screenshots = fields.List(fields.Nested(ImageSchema))
    id = fields.UUID()
    slug = fields.String()
    vendor_id = fields.UUID()
    vendor_name = fields.String()
    version = fields.Integer()
    long_description_html = fields.String()
    plans = fields.List(fields.Nested(PlanOutSchema))
    published_at = fields.AwareDateTime(allow_none=True)


class RejectSchema(Schema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=5000))


class CategorySchema(Schema):
    slug = fields.String()
    name = fields.String()


class ProductListArgs(Schema):
    q = fields.String(
        load_default=None, validate=validate.Length(max=200), metadata={"description": "search terms"}
    )
    category = fields.String(load_default=None, validate=validate.Length(max=50))
    tag = fields.String(load_default=None, validate=validate.Length(max=40))
    vendor_id = fields.UUID(load_default=None)
    product_type = fields.Enum(ProductType, by_value=True, load_default=None)
    has_trial = fields.Boolean(load_default=None)
    min_price = Amount(load_default=None, metadata={"description": "monthly 'price from', in currency"})
    max_price = Amount(load_default=None)
    currency = fields.String(load_default=None, validate=validate.Length(equal=3))
    sort = fields.Enum(Sort, by_value=True, load_default=Sort.RELEVANCE)

    @validates_schema
    def _price_range(self, data: dict[str, Any], **kwargs: Any) -> None:
        low, high = data.get("min_price"), data.get("max_price")
        if low is not None and high is not None and low > high:
            raise ValidationError("must not be above max_price", "min_price")


class ProductCardSchema(Schema):
    """A published product in lists and search results."""

    id = fields.UUID()
    slug = fields.String()
    name = fields.String()
    short_description = fields.String()
    category = fields.String()
    tags = fields.List(fields.String())
    vendor_id = fields.UUID()
    vendor_name = fields.String()
    product_type = fields.Enum(ProductType, by_value=True)
    trial_days = fields.Integer()
    price_from = fields.Nested(PriceFromSchema, allow_none=True)
    rating = fields.Nested(RatingSchema)
    published_at = fields.AwareDateTime(allow_none=True)
    logo = fields.Nested(ImageSchema, allow_none=True)


class CompareArgs(Schema):
    products = DelimitedList(
        fields.String(validate=validate.Length(min=1, max=80)),
        required=True,
        validate=validate.Length(min=2, max=4),
        metadata={"description": "2 to 4 product slugs or ids, comma-separated"},
    )


class CompareItemSchema(ProductCardSchema):
    plans = fields.List(fields.Nested(PlanOutSchema))
    sizes = fields.List(
        fields.Nested(SizeSchema), metadata={"description": "VM sizes over the deployment targets"}
    )


class VendorProductListArgs(Schema):
    status = fields.Enum(ProductStatus, by_value=True, load_default=None)


def plan_specs(plans: list[dict[str, Any]]) -> list[PlanSpec]:
    """Plans loaded by :class:`PlanSchema`, as the pricing rules take them."""
    return [
        PlanSpec(
            code=p["code"],
            name=p["name"],
            description=p.get("description", ""),
            currency=p["currency"],
            billing_period=p["billing_period"],
            vm_size=p.get("vm_size"),
            data_disk_gib=p.get("data_disk_gib"),
            components=tuple(
                ComponentSpec(
                    kind=c["kind"],
                    label=c["label"],
                    unit_price=c.get("unit_price"),
                    metric=c.get("metric"),
                    unit=c.get("unit"),
                    pricing_model=c.get("pricing_model"),
                    included_quantity=c.get("included_quantity"),
                    tiers=tuple(
                        Tier(
                            start=t["start"],
                            up_to=t["up_to"],
                            unit_price=t["unit_price"],
                            flat_fee=t["flat_fee"],
                        )
                        for t in c.get("tiers") or ()
                    ),
                    min_quantity=c.get("min_quantity"),
                    max_quantity=c.get("max_quantity"),
                    infrastructure=bool(c.get("infrastructure")),
                )
                for c in p["components"]
            ),
        )
        for p in plans
    ]
