"""The ``Marketplace`` tenant: every customer-facing row belongs to one."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, column_property, mapped_column, relationship

from cmw.db import Timestamps, UUIDPrimaryKey, str_enum
from cmw.extensions import db

if TYPE_CHECKING:
    from cmw.assets.models import Image


class MarketplaceKind(enum.StrEnum):
    #: the root marketplace run by the platform owner; exactly one exists
    PLATFORM = "platform"
    #: a partner marketplace under the platform
    DISTRIBUTOR = "distributor"
    #: a partner marketplace under a distributor
    RESELLER = "reseller"


#: which kind of parent each kind of marketplace hangs under
ALLOWED_PARENT: dict[MarketplaceKind, MarketplaceKind | None] = {
    MarketplaceKind.PLATFORM: None,
    MarketplaceKind.DISTRIBUTOR: MarketplaceKind.PLATFORM,
    MarketplaceKind.RESELLER: MarketplaceKind.DISTRIBUTOR,
}

PLATFORM_SLUG = "platform"
#: a marketplace's slug: lowercase letters, digits and hyphens, not at either end
SLUG_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"


class CatalogState(db.Model):  # type: ignore[name-defined,misc]
    """One row: the generation of the published catalog, bumped by every transaction that
    changes what a storefront shows (see :mod:`cmw.catalog.cache`). Cached catalog pages
    are keyed by it, so a change is visible on the next request in every process."""

    __tablename__ = "catalog_state"
    __table_args__ = (sa.CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False, default=1)
    #: incremented at the commit of each catalog change
    generation: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class Marketplace(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "marketplaces"
    __table_args__ = (
        sa.CheckConstraint("(kind = 'platform') = (parent_id IS NULL)", name="platform_is_root"),
        sa.Index(
            "uq_marketplaces_one_platform",
            "kind",
            unique=True,
            postgresql_where=sa.text("kind = 'platform'"),
            sqlite_where=sa.text("kind = 'platform'"),
        ),
    )

    #: platform, distributor or reseller
    kind: Mapped[MarketplaceKind] = mapped_column(str_enum(MarketplaceKind, "kind"))
    #: the marketplace this one sells under; NULL only for the platform
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"), index=True
    )
    #: display name shown in the header, e-mails and invoices
    name: Mapped[str] = mapped_column(sa.String(120))
    #: URL-safe identifier, lowercase letters, digits and hyphens
    slug: Mapped[str] = mapped_column(sa.String(63), unique=True)
    #: host name the marketplace is served on (for example shop.example.com), lowercase
    domain: Mapped[str | None] = mapped_column(sa.String(253), unique=True)
    #: plain-text description shown on the home page
    description: Mapped[str] = mapped_column(sa.Text, default="")
    #: primary brand colour, ``#rrggbb``
    primary_colour: Mapped[str] = mapped_column(sa.String(7), default="#1f4e79")
    #: accent brand colour, ``#rrggbb``
    accent_colour: Mapped[str] = mapped_column(sa.String(7), default="#e07a1f")
    #: support e-mail address shown to customers
    support_email: Mapped[str | None] = mapped_column(sa.String(254))
    #: legal footer (company, registration, address) shown on pages and invoices
    legal_footer: Mapped[str] = mapped_column(sa.Text, default="")
    #: display name used as the sender of this marketplace's e-mails
    email_sender_name: Mapped[str | None] = mapped_column(sa.String(120))
    #: False when an admin has suspended the marketplace
    is_active: Mapped[bool] = mapped_column(default=True)
    #: whether people may sign in with a Mercato password here (off: only through the
    #: marketplace's identity provider)
    local_sign_in: Mapped[bool] = mapped_column(default=True, server_default=sa.true())

    #: a child marketplace sells every product its parent sells, new ones included; else
    #: only those its admins chose (:class:`SelectedProduct`)
    sells_all_of_parent: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    #: the marketplace's logo (an uploaded image, shown on its computed background colour)
    logo_image_id: Mapped[uuid.UUID | None] = mapped_column(
        # images belong to a marketplace too: the cycle is broken for CREATE TABLE
        sa.ForeignKey("images.id", ondelete="SET NULL", use_alter=True)
    )

    #: the mark-up, in percent over the parent's prices, of every product it sells that has
    #: no mark-up of its own (:class:`PriceMarkup`); NULL: the parent's prices
    default_markup_percent: Mapped[Decimal | None] = mapped_column(sa.Numeric(9, 4))
    #: of the vendors' prices of the products published here, the part this marketplace
    #: keeps, in percent (the rest is owed to the vendor)
    commission_percent: Mapped[Decimal] = mapped_column(
        sa.Numeric(7, 4), default=Decimal(0), server_default=sa.text("0")
    )

    parent: Mapped[Marketplace | None] = relationship(remote_side="Marketplace.id")
    #: loaded when a page shows it, not with every request's marketplace
    logo: Mapped[Image | None] = relationship(lazy="select", foreign_keys=[logo_image_id])

    #: the catalog generation (:class:`CatalogState`), read with the marketplace at no extra
    #: round trip: every request loads its marketplace anyway
    catalog_generation: Mapped[int] = column_property(
        sa.select(sa.func.coalesce(sa.func.max(CatalogState.generation), 0)).scalar_subquery()
    )

    def __repr__(self) -> str:
        return f"<Marketplace {self.slug} ({self.kind})>"


class SelectedProduct(db.Model):  # type: ignore[name-defined,misc]
    """A product of its parent's catalog that a child marketplace sells."""

    __tablename__ = "selected_products"

    marketplace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("marketplaces.id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("products.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    selected_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class PriceMarkup(db.Model):  # type: ignore[name-defined,misc]
    """How a child marketplace prices one product over its parent's prices: a mark-up for
    the whole product, per plan, and per price component (see ``cmw.marketplaces.pricing``)."""

    __tablename__ = "price_markups"

    marketplace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("marketplaces.id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("products.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    #: the product-wide mark-up: ``{"percent": "20"}`` or ``{"amount": "5.00"}``, or NULL
    markup: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    #: per plan code: ``{"markup": {...} | null, "components": {"<index>": {...}}}`` where a
    #: component takes a mark-up or an explicit ``unit_price`` or ``tiers``
    plans: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_by_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))


class MarketplacePrice(db.Model):  # type: ignore[name-defined,misc]
    """A product's "price from" in a marketplace whose mark-ups change it, kept for the
    catalog's price filters, sort and cards (elsewhere the live version's applies)."""

    __tablename__ = "marketplace_prices"

    marketplace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("marketplaces.id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("products.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    price_from_amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(18, 6))
    price_from_currency: Mapped[str | None] = mapped_column(sa.String(3))
