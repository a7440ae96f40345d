"""Catalog rows: ``Product`` (identity, owner, lifecycle) and ``ProductVersion`` (what a
product says and costs at one revision), with ``Plan`` and ``PriceComponent`` per version.

Customers only ever see a product's live version. A vendor edits a working version; it
goes live when an admin approves it, so a published product keeps serving what was
approved while its next revision waits for review.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cmw.accounts.models import Organisation
from cmw.db import Timestamps, UUIDPrimaryKey, str_enum
from cmw.extensions import db
from cmw.money import PRICE_SCALE


class ProductType(enum.StrEnum):
    #: a VM of the vendor's size and image, nothing configured
    BARE_VM = "bare_vm"
    #: a VM with a data disk, configured by the vendor's setup script
    VM_APP = "vm_app"


class ProductStatus(enum.StrEnum):
    #: never published; the vendor is still writing it
    DRAFT = "draft"
    #: never published; submitted and waiting for an admin
    IN_REVIEW = "in_review"
    #: customers see the live version (a newer revision may be in draft or review)
    PUBLISHED = "published"
    #: no longer sold; existing subscriptions are not affected
    RETIRED = "retired"


class VersionState(enum.StrEnum):
    #: editable by the vendor (new, or sent back by an admin with a reason)
    DRAFT = "draft"
    #: frozen, waiting for an admin's decision
    IN_REVIEW = "in_review"
    #: approved; the live version of its product
    APPROVED = "approved"
    #: was live, replaced by a later approved version
    SUPERSEDED = "superseded"


class BillingPeriod(enum.StrEnum):
    #: billed every calendar month
    MONTH = "month"
    #: billed every year
    YEAR = "year"


class ComponentKind(enum.StrEnum):
    #: a fixed fee every billing period, billed in advance
    FLAT = "flat"
    #: charged once, with the first invoice
    SETUP = "setup"
    #: unit price times the quantity chosen at order (seats), every period
    PER_UNIT = "per_unit"
    #: rated from the usage of a metric during the period
    METERED = "metered"


class PricingModel(enum.StrEnum):
    #: every unit at one price
    PER_UNIT = "per_unit"
    #: each unit at the price of the tier it falls in
    GRADUATED = "graduated"
    #: every unit at the price of the tier the total falls in
    VOLUME = "volume"


class Category(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "categories"

    #: stable identifier used in URLs and filters
    slug: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    #: display name
    name: Mapped[str] = mapped_column(sa.String(100))
    #: order in menus
    position: Mapped[int] = mapped_column(default=0)


class Product(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "products"
    __table_args__ = (
        sa.UniqueConstraint("marketplace_id", "slug", name="uq_products_marketplace_slug"),
        sa.Index("ix_products_marketplace_status", "marketplace_id", "status", "published_at"),
    )

    #: the marketplace the vendor sells in (tenant)
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"))
    #: the vendor organisation that owns the product
    vendor_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="RESTRICT"), index=True
    )
    #: URL identifier, unique in the marketplace; fixed once the product was published
    slug: Mapped[str] = mapped_column(sa.String(80))
    #: draft, in_review, published or retired
    status: Mapped[ProductStatus] = mapped_column(str_enum(ProductStatus, "status"))
    #: the approved version customers see; NULL until the first approval
    live_version_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("product_versions.id", ondelete="SET NULL", use_alter=True)
    )
    #: the version the vendor is editing or that waits for review; NULL when none
    working_version_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("product_versions.id", ondelete="SET NULL", use_alter=True)
    )
    #: when it was retired (UTC)
    retired_at: Mapped[dt.datetime | None]
    #: when it was first published (UTC); "newest" sorts on it
    published_at: Mapped[dt.datetime | None]
    #: visible reviews and the sum of their ratings, kept by the review rules
    rating_count: Mapped[int] = mapped_column(default=0)
    rating_sum: Mapped[int] = mapped_column(default=0)

    #: loaded with the product (one join): every view of a product names its vendor
    vendor: Mapped[Organisation] = relationship(lazy="joined", innerjoin=True)
    live_version: Mapped[ProductVersion | None] = relationship(
        foreign_keys=[live_version_id], post_update=True
    )
    working_version: Mapped[ProductVersion | None] = relationship(
        foreign_keys=[working_version_id], post_update=True
    )


class ProductVersion(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "product_versions"
    __table_args__ = (
        sa.UniqueConstraint("product_id", "number", name="uq_product_versions_product_number"),
        sa.CheckConstraint("trial_days >= 0 AND trial_days <= 365", name="trial_days_range"),
        sa.Index("ix_product_versions_category", "category_slug"),
    )

    product_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("products.id", ondelete="CASCADE"), index=True
    )
    #: 1, 2, 3... per product
    number: Mapped[int]
    #: draft, in_review, approved or superseded
    state: Mapped[VersionState] = mapped_column(str_enum(VersionState, "state"))
    #: product name
    name: Mapped[str] = mapped_column(sa.String(120))
    #: one or two sentences for cards and search results (plain text)
    short_description: Mapped[str] = mapped_column(sa.String(300), default="")
    #: the product page's text, Markdown (rendered without raw HTML)
    long_description: Mapped[str] = mapped_column(sa.Text, default="")
    category_slug: Mapped[str] = mapped_column(sa.ForeignKey("categories.slug", ondelete="RESTRICT"))
    #: lowercase keywords
    tags: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    #: the vendor's site about the product
    website: Mapped[str | None] = mapped_column(sa.String(500))
    #: where customers get help (e-mail address)
    support_email: Mapped[str | None] = mapped_column(sa.String(254))
    #: bare_vm or vm_app
    product_type: Mapped[ProductType] = mapped_column(str_enum(ProductType, "product_type"))
    #: days of free trial; 0 = no trial
    trial_days: Mapped[int] = mapped_column(default=0)
    #: orders (purchases and changes) wait for the vendor's, or the reseller's, approval
    requires_approval: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    #: per target cloud account: image, size, disks, ports, setup, URL template, login
    deployment: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    #: the instance's access URLs: ``{name, path}`` under its address (``/``, ``/admin``, ...)
    endpoints: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list, server_default="[]")
    #: the vendor's variables for the setup script: ``{name, label, default, customer_editable}``
    setup_variables: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list, server_default="[]")
    #: when the vendor submitted it for review (UTC)
    submitted_at: Mapped[dt.datetime | None]
    #: when an admin approved or sent it back (UTC)
    reviewed_at: Mapped[dt.datetime | None]
    reviewed_by_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    #: the admin's reason when sent back to draft
    review_note: Mapped[str | None] = mapped_column(sa.Text)
    #: the product's logo (an Image with renditions and its background colour)
    logo_image_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("images.id", ondelete="SET NULL"))
    #: screenshot Image ids, in display order
    screenshot_ids: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    #: lowercase name, descriptions and tags, for search (full-text indexed on PostgreSQL)
    search_text: Mapped[str] = mapped_column(sa.Text, default="")
    #: lowest recurring price a month over the plans (flat + minimum seats), for filters and sort
    price_from_amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(18, PRICE_SCALE))
    #: currency of ``price_from_amount``
    price_from_currency: Mapped[str | None] = mapped_column(sa.String(3))

    plans: Mapped[list[Plan]] = relationship(
        back_populates="version", cascade="all, delete-orphan", order_by="Plan.position"
    )


class Plan(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "plans"
    __table_args__ = (
        sa.UniqueConstraint("version_id", "code", name="uq_plans_version_code"),
        sa.CheckConstraint("length(currency) = 3", name="currency_alpha3"),
    )

    version_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("product_versions.id", ondelete="CASCADE"), index=True
    )
    #: identifies "the same plan" across versions (upgrades, reports)
    code: Mapped[str] = mapped_column(sa.String(50))
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    #: ISO 4217 code
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: month or year
    billing_period: Mapped[BillingPeriod] = mapped_column(str_enum(BillingPeriod, "billing_period"))
    #: order on the product page
    position: Mapped[int] = mapped_column(default=0)

    #: the VM this plan gets (``{"cores": 2, "ram_mib": 4096}``) instead of the deployment
    #: target's size; a change to a plan with another one resizes the customer's VM
    vm_size: Mapped[dict[str, int] | None] = mapped_column(sa.JSON)
    #: the data disk this plan gets instead of the target's (disks only grow)
    data_disk_gib: Mapped[int | None]

    version: Mapped[ProductVersion] = relationship(back_populates="plans")
    components: Mapped[list[PriceComponent]] = relationship(
        back_populates="plan", cascade="all, delete-orphan", order_by="PriceComponent.position"
    )


class PriceComponent(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "price_components"
    __table_args__ = (
        sa.CheckConstraint("unit_price IS NULL OR unit_price >= 0", name="unit_price_not_negative"),
        sa.CheckConstraint("included_quantity >= 0", name="included_not_negative"),
        sa.CheckConstraint("(kind = 'metered') = (metric IS NOT NULL)", name="metric_iff_metered"),
    )

    plan_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("plans.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(default=0)
    #: flat, setup, per_unit or metered
    kind: Mapped[ComponentKind] = mapped_column(str_enum(ComponentKind, "kind"))
    #: shown on the price table and invoice lines
    label: Mapped[str] = mapped_column(sa.String(100))
    #: price per unit (flat, setup: the fee) in the plan's currency; NULL for tiered models
    unit_price: Mapped[Decimal | None] = mapped_column(sa.Numeric(18, PRICE_SCALE))
    #: usage metric for metered components, for example ``bandwidth.gb``
    metric: Mapped[str | None] = mapped_column(sa.String(100))
    #: unit name shown to customers: GB, hour, seat
    unit: Mapped[str | None] = mapped_column(sa.String(30))
    #: per_unit, graduated or volume (metered components)
    pricing_model: Mapped[PricingModel | None] = mapped_column(str_enum(PricingModel, "pricing_model"))
    #: free quantity each period before charging (metered)
    included_quantity: Mapped[Decimal] = mapped_column(sa.Numeric(18, PRICE_SCALE), default=Decimal(0))
    #: tiers ``[{"from": "0", "up_to": "100" | null, "unit_price": "0.05", "flat_fee": "0"}]``
    tiers: Mapped[list[dict[str, Any]] | None] = mapped_column(sa.JSON)
    #: allowed quantity at order (per_unit)
    min_quantity: Mapped[int | None]
    max_quantity: Mapped[int | None]
    #: the machine's cost (VM, disk, traffic) rather than the licence: not charged when the
    #: customer runs the product in their own cloud account
    infrastructure: Mapped[bool] = mapped_column(default=False, server_default=sa.false())

    plan: Mapped[Plan] = relationship(back_populates="components")


class Review(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """A customer's rating of a product, once per customer organisation and product."""

    __tablename__ = "reviews"
    __table_args__ = (
        sa.UniqueConstraint("product_id", "organisation_id", name="uq_reviews_product_organisation"),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name="rating_range"),
        sa.Index("ix_reviews_product_visible", "product_id", "hidden", "created_at"),
    )

    product_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("products.id", ondelete="CASCADE"))
    #: the customer organisation the review speaks for
    organisation_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("organisations.id", ondelete="CASCADE"))
    #: who wrote it
    author_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    #: 1 to 5 stars
    rating: Mapped[int]
    comment: Mapped[str] = mapped_column(sa.Text, default="")
    #: the vendor's single reply
    vendor_reply: Mapped[str | None] = mapped_column(sa.Text)
    vendor_replied_at: Mapped[dt.datetime | None]
    #: hidden by an admin as abusive; not shown and not counted
    hidden: Mapped[bool] = mapped_column(default=False)
