"""The marketplaces API: the current marketplace's public branding, and the tree for admins."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from cmw.accounts import service as accounts
from cmw.accounts.auth import current_identity, current_marketplace, roles_required
from cmw.accounts.models import Role
from cmw.api.errors import invalid
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.catalog import service as catalog
from cmw.catalog.api import upload_image
from cmw.catalog.models import Product
from cmw.catalog.schemas import UploadSchema
from cmw.db import utcnow
from cmw.extensions import current_session
from cmw.marketplaces import pricing, service
from cmw.marketplaces.models import Marketplace
from cmw.marketplaces.schemas import (
    BrandingSchema,
    MarketplaceCreateSchema,
    MarketplaceSchema,
    PricesSchema,
    PricesViewSchema,
    PricingSchema,
    SelectionSchema,
    SelectionViewSchema,
)

blp = Blueprint("marketplaces", __name__, url_prefix="/api/v1", description="Marketplaces (tenants)")


@blp.route("/marketplace")
class CurrentMarketplace(MethodView):
    @blp.response(200, MarketplaceSchema)
    def get(self) -> Marketplace:
        """The marketplace this request is served by, with its branding."""
        return current_marketplace()

    @blp.arguments(BrandingSchema)
    @blp.response(200, MarketplaceSchema)
    @roles_required(Role.ADMIN)
    def patch(self, data: dict[str, Any]) -> Marketplace:
        """Change this marketplace's branding: name, host name, texts, colours (checked for
        contrast), support contact, e-mail sender name. The storefront shows the change on
        its next page load."""
        session = current_session()
        marketplace = current_marketplace()
        try:
            service.update_branding(session, marketplace, data)
            session.commit()
        except service.MarketplaceError as exc:
            session.rollback()
            raise invalid(exc.field, str(exc)) from None
        return marketplace


@blp.route("/marketplace/logo")
class CurrentMarketplaceLogo(MethodView):
    @blp.arguments(UploadSchema, location="files")
    @blp.response(200, MarketplaceSchema)
    @roles_required(Role.ADMIN)
    def put(self, files: dict[str, Any]) -> Marketplace:
        """Upload the marketplace's logo (PNG, JPEG or WebP): its renditions and the
        background colour it reads well on are made, and every page shows it."""
        image = upload_image(files)
        marketplace = current_marketplace()
        marketplace.logo_image_id = image.id
        current_session().commit()
        return marketplace

    @blp.response(204)
    @roles_required(Role.ADMIN)
    def delete(self) -> None:
        """Remove the logo: pages show the marketplace's name alone."""
        current_marketplace().logo_image_id = None
        current_session().commit()


def _selection() -> dict[str, Any]:
    return catalog.selection(current_session(), current_marketplace())


@blp.route("/marketplace/selection")
class CatalogSelection(MethodView):
    @blp.response(200, SelectionViewSchema)
    @roles_required(Role.ADMIN)
    def get(self) -> dict[str, Any]:
        """Which of its parent's products this marketplace sells, and what it may choose from."""
        return _selection()

    @blp.arguments(SelectionSchema)
    @blp.response(200, SelectionViewSchema)
    @roles_required(Role.ADMIN)
    def put(self, data: dict[str, Any]) -> dict[str, Any]:
        """Choose them: all of the parent's (new ones included), or those listed. The
        storefront sells the new selection from the next request on."""
        session = current_session()
        try:
            catalog.select_products(
                session, current_marketplace(), data["product_ids"], sells_all=data["sells_all_of_parent"]
            )
        except catalog.SelectionError as exc:
            session.rollback()
            raise invalid(exc.field, str(exc)) from None
        session.commit()
        return _selection()


@blp.route("/marketplace/pricing")
class Pricing(MethodView):
    @blp.response(200, PricingSchema)
    @roles_required(Role.ADMIN)
    def get(self) -> Marketplace:
        """This marketplace's default mark-up over its parent's prices, and the commission it
        keeps of the prices of the products published in it."""
        return current_marketplace()

    @blp.arguments(PricingSchema)
    @blp.response(200, PricingSchema)
    @roles_required(Role.ADMIN)
    def put(self, data: dict[str, Any]) -> Marketplace:
        """Change them; the storefront shows the new prices from the next request on, and
        orders placed from then on pay them."""
        session = current_session()
        marketplace = current_marketplace()
        try:
            pricing.set_pricing(session, marketplace, data)
        except pricing.MarkupError as exc:
            session.rollback()
            raise invalid(exc.field, exc.message) from None
        session.commit()
        return marketplace


def _priced_product(ref: str) -> Product:
    """A product this marketplace's parent sells (what it may price), else 404."""
    session = current_session()
    marketplace = current_marketplace()
    parent = session.get(Marketplace, marketplace.parent_id) if marketplace.parent_id else None
    product = catalog.find_published(session, parent or marketplace, ref)
    if product is None:
        abort(404, message=f"no product {ref!r} is sold by this marketplace's parent")
    assert product is not None
    return product


@blp.route("/marketplace/prices/<string:product>")
class Prices(MethodView):
    @blp.response(200, PricesViewSchema)
    @roles_required(Role.ADMIN)
    def get(self, product: str) -> dict[str, Any]:
        """The product's prices here beside the parent's, per plan and price component, and
        the mark-ups that make them."""
        found = _priced_product(product)
        try:
            return pricing.view(current_session(), current_marketplace(), found)
        except pricing.MarkupError as exc:
            raise invalid(exc.field, exc.message) from None

    @blp.arguments(PricesSchema)
    @blp.response(200, PricesViewSchema)
    @roles_required(Role.ADMIN)
    def put(self, data: dict[str, Any], product: str) -> dict[str, Any]:
        """Set how this marketplace prices the product over its parent: a mark-up for the
        whole product, per plan, and per price component (a percentage, an amount, or an
        explicit price), the most specific applying. Replaces the product's rules; 422 for
        any price below the parent's."""
        session = current_session()
        marketplace = current_marketplace()
        found = _priced_product(product)
        identity = current_identity()
        try:
            pricing.set_prices(
                session, marketplace, found, data, identity.user.id if identity else None, utcnow()
            )
        except pricing.MarkupError as exc:
            session.rollback()
            raise invalid(exc.field, exc.message) from None
        session.commit()
        return pricing.view(session, marketplace, found)

    @blp.response(204)
    @roles_required(Role.ADMIN)
    def delete(self, product: str) -> None:
        """Remove the product's own mark-ups: the marketplace's default applies again."""
        session = current_session()
        marketplace = current_marketplace()
        found = _priced_product(product)
        try:
            pricing.set_prices(session, marketplace, found, {}, None, utcnow())
        except pricing.MarkupError as exc:
            session.rollback()
            raise invalid(exc.field, exc.message) from None
        session.commit()


@blp.route("/marketplaces")
class Marketplaces(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(MarketplaceSchema))
    @roles_required(Role.ADMIN)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """This marketplace and every marketplace under it (admins)."""
        root = current_marketplace()
        stmt = (
            sa.select(Marketplace)
            .where(Marketplace.id.in_(service.subtree(root.id)))
            .order_by(Marketplace.slug)
        )
        return paginate(current_session(), stmt, args["page"], args["per_page"])

    @blp.arguments(MarketplaceCreateSchema)
    @blp.response(201, MarketplaceSchema)
    @roles_required(Role.ADMIN)
    def post(self, data: dict[str, Any]) -> Marketplace:
        """A marketplace under this one: a distributor under the platform, a reseller under
        a distributor. Admins of this marketplace administer it too; ``admins`` names more."""
        session = current_session()
        admins = data.pop("admins")
        users = []
        for index, email in enumerate(admins):
            user = accounts.find_user(session, email)
            if user is None:
                raise invalid(f"admins.{index}", f"no user has the address {email}; they sign up first")
            users.append(user)
        try:
            child = service.create_child(session, current_marketplace(), data)
            for user in users:
                accounts.grant(session, user, child, Role.ADMIN)
            session.commit()
        except service.MarketplaceError as exc:
            session.rollback()
            raise invalid(exc.field, str(exc)) from None
        return child
