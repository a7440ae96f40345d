"""The catalog API: the published catalog (no sign-in needed), vendors' product
management, and the admins' review of submissions."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask.views import MethodView
from flask_smorest import Blueprint

from cmw.accounts.auth import current_marketplace, require_identity, roles_required
from cmw.accounts.models import Organisation, Role
from cmw.api.errors import ApiError, invalid
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.assets.api import storage
from cmw.assets.models import Image
from cmw.assets.service import InvalidImage, save_image
from cmw.catalog import cache, presenters, search, service
from cmw.catalog.markdown import render
from cmw.catalog.models import Category, Product, ProductStatus, ProductVersion
from cmw.catalog.pricing import PricingError
from cmw.catalog.schemas import (
    CategorySchema,
    CompareArgs,
    CompareItemSchema,
    PlansSchema,
    ProductCardSchema,
    ProductCreateSchema,
    ProductListArgs,
    ProductSchema,
    ProductUpdateSchema,
    PublicProductSchema,
    RejectSchema,
    UploadSchema,
    VendorProductListArgs,
    plan_specs,
)
from cmw.catalog.workflow import ConcurrentChange, InvalidTransition
from cmw.extensions import current_session

blp = Blueprint("catalog", __name__, url_prefix="/api/v1", description="Products, plans and prices")

#: largest logo or screenshot accepted, in bytes
MAX_UPLOAD = 5 * 1024 * 1024


# ----------------------------------------------------------------- helpers
def _run(action: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a catalog service, turning its failures into problem documents."""
    session = current_session()
    try:
        return action(session, *args, **kwargs)
    except (service.CatalogError, PricingError) as exc:
        session.rollback()
        raise invalid(exc.field, exc.message) from None
    except InvalidTransition as exc:
        session.rollback()
        raise ApiError(409, str(exc), slug="invalid-transition") from None
    except ConcurrentChange as exc:
        session.rollback()
        raise ApiError(409, f"{exc}; reload and try again", slug="concurrent-change") from None


def _version_view(version: ProductVersion | None) -> dict[str, Any] | None:
    if version is None:
        return None
    return {
        **service.content_of(version),
        "id": version.id,
        "number": version.number,
        "state": version.state,
        "long_description_html": render(version.long_description),
        "plans": version.plans,
        "submitted_at": version.submitted_at,
        "reviewed_at": version.reviewed_at,
        "review_note": version.review_note,
        **_images_of(version),
    }


def _images_of(version: ProductVersion) -> dict[str, Any]:
    return presenters.images_of(current_session(), storage(), version)


def _product_view(product: Product) -> dict[str, Any]:
    return {
        "id": product.id,
        "slug": product.slug,
        "vendor_id": product.vendor_id,
        "marketplace_id": product.marketplace_id,
        "status": product.status,
        "live_version": _version_view(product.live_version),
        "working_version": _version_view(product.working_version),
        "created_at": product.created_at,
        "retired_at": product.retired_at,
    }


def _card(product: Product) -> dict[str, Any]:
    live = product.live_version
    assert live is not None
    return {
        "id": product.id,
        "slug": product.slug,
        "name": live.name,
        "short_description": live.short_description,
        "category": live.category_slug,
        "tags": live.tags,
        "vendor_id": product.vendor_id,
        "vendor_name": product.vendor.name,
        "product_type": live.product_type,
        "trial_days": live.trial_days,
        "price_from": search.price_from_view(live.price_from_amount, live.price_from_currency),
        "rating": search.rating_view(product.rating_count, product.rating_sum),
        "published_at": product.published_at,
    }


# ---------------------------------------------------------------- public
@blp.route("/categories")
class Categories(MethodView):
    @blp.response(200, CategorySchema(many=True))
    def get(self) -> list[Category]:
        """Product categories, in menu order."""
        return list(current_session().scalars(sa.select(Category).order_by(Category.position, Category.slug)))


@blp.route("/products")
class PublicProducts(MethodView):
    # a search seen before is answered from memory, until the catalog changes
    @cache.cached_by_catalog
    @blp.arguments(ProductListArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(ProductCardSchema))
    @blp.alt_response(304, description="Not modified: the ETag in If-None-Match is current", success=True)
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Search and browse the published catalog of this marketplace. No sign-in needed.

        ``sort=relevance`` (the default) ranks by the search terms, else newest first.
        Price filters compare the monthly "price from" in ``currency``. Answers carry an
        ``ETag``; send it back in ``If-None-Match`` for a 304 while the catalog is unchanged.
        """
        if filters["currency"]:
            filters["currency"] = filters["currency"].upper()
        query = search.Query(**filters)
        return search.page(
            current_session(), current_marketplace(), query, args["page"], args["per_page"], storage()
        )


@blp.route("/products/compare")
class CompareProducts(MethodView):
    @blp.arguments(CompareArgs, location="query")
    @blp.response(200, CompareItemSchema(many=True))
    def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """2 to 4 published products side by side: plans, prices, VM sizes, rating."""
        refs = list(dict.fromkeys(args["products"]))
        if len(refs) < 2:
            raise ApiError(
                422,
                "invalid input: products",
                errors=[
                    {"location": "query", "field": "products", "message": "name 2 to 4 different products"}
                ],
            )
        products = search.compare_set(current_session(), current_marketplace(), refs)
        missing = [r for r in refs if r not in {str(p.id) for p in products} | {p.slug for p in products}]
        if missing:
            raise ApiError(404, f"not in this marketplace's catalog: {', '.join(missing)}")
        items = []
        for product in products:
            live = product.live_version
            assert live is not None
            view = presenters.public_view(
                current_session(), storage(), current_marketplace(), str(product.id)
            )
            assert view is not None  # compare_set found it sold here
            items.append(
                {
                    **_card(product),
                    "price_from": view["price_from"],
                    "logo": view["logo"],
                    "plans": view["plans"],
                    "sizes": [t["size"] for t in live.deployment],
                }
            )
        return items


@blp.route("/products/<string:ref>")
class PublicProduct(MethodView):
    @blp.response(200, PublicProductSchema)
    def get(self, ref: str) -> dict[str, Any]:
        """A published product by slug or id, as customers see it (its live version)."""
        view = presenters.public_view(current_session(), storage(), current_marketplace(), ref)
        if view is None:
            raise ApiError(404, "no such product in this marketplace")
        return view


# ---------------------------------------------------------------- vendor
def _own_product(product_id: uuid.UUID) -> Product:
    """A product of one of the caller's vendor organisations; anything else is 404."""
    identity = require_identity()
    product = current_session().get(Product, product_id)
    if (
        product is None
        or product.marketplace_id != identity.marketplace.id
        or product.vendor_id not in identity.organisations_with(Role.VENDOR)
    ):
        raise ApiError(404, "no such product among yours")
    return product


@blp.route("/vendor/products")
class VendorProducts(MethodView):
    @blp.arguments(VendorProductListArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(ProductSchema))
    @roles_required(Role.VENDOR)
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Your products, in every status."""
        identity = require_identity()
        stmt = sa.select(Product).where(
            Product.marketplace_id == identity.marketplace.id,
            Product.vendor_id.in_(identity.organisations_with(Role.VENDOR)),
        )
        if filters["status"]:
            stmt = stmt.where(Product.status == filters["status"])
        page = paginate(
            current_session(),
            stmt.order_by(Product.created_at.desc(), Product.id),
            args["page"],
            args["per_page"],
        )
        page["items"] = [_product_view(p) for p in page["items"]]
        return page

    @blp.arguments(ProductCreateSchema)
    @blp.response(201, ProductSchema)
    @roles_required(Role.VENDOR)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create a product in draft, owned by your vendor organisation."""
        identity = require_identity()
        vendors = identity.organisations_with(Role.VENDOR)
        vendor_id = data.pop("vendor_id") or (next(iter(vendors)) if len(vendors) == 1 else None)
        if vendor_id is None:
            raise invalid("vendor_id", "you belong to several vendors: say which one owns the product")
        if vendor_id not in vendors:
            raise invalid("vendor_id", "not one of your vendor organisations")
        vendor = current_session().get(Organisation, vendor_id)
        slug = data.pop("slug")
        product = _run(service.create_product, identity.marketplace, vendor, slug=slug, content=data)
        current_session().commit()
        return _product_view(product)


@blp.route("/vendor/products/<uuid:product_id>")
class VendorProduct(MethodView):
    @blp.response(200, ProductSchema)
    @roles_required(Role.VENDOR)
    def get(self, product_id: uuid.UUID) -> dict[str, Any]:
        """One of your products with its live and working versions."""
        return _product_view(_own_product(product_id))

    @blp.arguments(ProductUpdateSchema)
    @blp.response(200, ProductSchema)
    @roles_required(Role.VENDOR)
    def patch(self, data: dict[str, Any], product_id: uuid.UUID) -> dict[str, Any]:
        """Change the working version. A published product keeps serving its live version
        until this revision is approved."""
        product = _own_product(product_id)
        _run(service.update_product, product, data)
        current_session().commit()
        return _product_view(product)


@blp.route("/vendor/products/<uuid:product_id>/plans")
class VendorProductPlans(MethodView):
    @blp.arguments(PlansSchema)
    @blp.response(200, ProductSchema)
    @roles_required(Role.VENDOR)
    def put(self, data: dict[str, Any], product_id: uuid.UUID) -> dict[str, Any]:
        """Replace the working version's plans and prices."""
        product = _own_product(product_id)
        _run(service.set_plans, product, plan_specs(data["plans"]))
        current_session().commit()
        return _product_view(product)


def _vendor_action(name: str, summary: str) -> type[MethodView]:
    action = getattr(service, name)

    class VendorAction(MethodView):
        @blp.response(200, ProductSchema)
        @roles_required(Role.VENDOR)
        def post(self, product_id: uuid.UUID) -> dict[str, Any]:
            product = _own_product(product_id)
            _run(action, product)
            current_session().commit()
            return _product_view(product)

    VendorAction.post.__doc__ = summary
    VendorAction.__name__ = f"Vendor{name.title()}"
    return VendorAction


def upload_image(files: dict[str, Any]) -> Image:
    """The uploaded image (multipart field ``file``) stored with its renditions; 422 if it is not one."""
    upload = files["file"]
    data = upload.read(MAX_UPLOAD + 1)
    identity = require_identity()
    try:
        return save_image(
            current_session(),
            storage(),
            data,
            marketplace_id=identity.marketplace.id,
            uploaded_by_id=identity.user.id,
            max_bytes=MAX_UPLOAD,
        )
    except InvalidImage as exc:
        current_session().rollback()
        raise ApiError(
            422,
            f"invalid image: {exc.reason}",
            errors=[{"location": "files", "field": "file", "message": exc.reason}],
        ) from None


@blp.route("/vendor/products/<uuid:product_id>/logo")
class VendorProductLogo(MethodView):
    @blp.arguments(UploadSchema, location="files")
    @blp.response(200, ProductSchema)
    @roles_required(Role.VENDOR)
    def put(self, files: dict[str, Any], product_id: uuid.UUID) -> dict[str, Any]:
        """Upload the logo (PNG, JPEG or WebP): renditions and its background colour are made."""
        product = _own_product(product_id)
        image = upload_image(files)
        _run(service.set_logo, product, image)
        current_session().commit()
        return _product_view(product)


@blp.route("/vendor/products/<uuid:product_id>/screenshots")
class VendorProductScreenshots(MethodView):
    @blp.arguments(UploadSchema, location="files")
    @blp.response(201, ProductSchema)
    @roles_required(Role.VENDOR)
    def post(self, files: dict[str, Any], product_id: uuid.UUID) -> dict[str, Any]:
        """Add a screenshot (at most 10)."""
        product = _own_product(product_id)
        image = upload_image(files)
        _run(service.add_screenshot, product, image)
        current_session().commit()
        return _product_view(product)


@blp.route("/vendor/products/<uuid:product_id>/screenshots/<uuid:image_id>")
class VendorProductScreenshot(MethodView):
    @blp.response(200, ProductSchema)
    @roles_required(Role.VENDOR)
    def delete(self, product_id: uuid.UUID, image_id: uuid.UUID) -> dict[str, Any]:
        """Remove a screenshot from the working version."""
        product = _own_product(product_id)
        try:
            _run(service.remove_screenshot, product, image_id)
        except LookupError:
            raise ApiError(404, "no such screenshot on this product") from None
        current_session().commit()
        return _product_view(product)


blp.route("/vendor/products/<uuid:product_id>/submit")(
    _vendor_action("submit", "Submit the working version for review.")
)
blp.route("/vendor/products/<uuid:product_id>/withdraw")(
    _vendor_action("withdraw", "Take a submission back to edit it.")
)
blp.route("/vendor/products/<uuid:product_id>/retire")(
    _vendor_action("retire", "Stop selling the product; existing subscriptions go on.")
)


# ----------------------------------------------------------------- admin
def _marketplace_product(product_id: uuid.UUID) -> Product:
    product = current_session().get(Product, product_id)
    if product is None or product.marketplace_id != current_marketplace().id:
        raise ApiError(404, "no such product in this marketplace")
    return product


@blp.route("/admin/products")
class AdminProducts(MethodView):
    @blp.arguments(VendorProductListArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(ProductSchema))
    @roles_required(Role.ADMIN)
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Every product of this marketplace. ``status=in_review`` is the review queue,
        including published products whose next revision waits for review."""
        stmt: sa.Select[Any] = sa.select(Product).where(Product.marketplace_id == current_marketplace().id)
        if filters["status"] is ProductStatus.IN_REVIEW:
            stmt = service.review_queue(current_marketplace())
        elif filters["status"]:
            stmt = stmt.where(Product.status == filters["status"]).order_by(Product.updated_at, Product.id)
        else:
            stmt = stmt.order_by(Product.updated_at, Product.id)
        page = paginate(current_session(), stmt, args["page"], args["per_page"])
        page["items"] = [_product_view(p) for p in page["items"]]
        return page


@blp.route("/admin/products/<uuid:product_id>")
class AdminProduct(MethodView):
    @blp.response(200, ProductSchema)
    @roles_required(Role.ADMIN)
    def get(self, product_id: uuid.UUID) -> dict[str, Any]:
        """Any product of this marketplace, with its live and working versions."""
        return _product_view(_marketplace_product(product_id))


@blp.route("/admin/products/<uuid:product_id>/approve")
class AdminApprove(MethodView):
    @blp.response(200, ProductSchema)
    @roles_required(Role.ADMIN)
    def post(self, product_id: uuid.UUID) -> dict[str, Any]:
        """Approve the submitted version: it becomes what customers see."""
        product = _marketplace_product(product_id)
        _run(service.approve, product, require_identity().user)
        current_session().commit()
        return _product_view(product)


@blp.route("/admin/products/<uuid:product_id>/reject")
class AdminReject(MethodView):
    @blp.arguments(RejectSchema)
    @blp.response(200, ProductSchema)
    @roles_required(Role.ADMIN)
    def post(self, data: dict[str, Any], product_id: uuid.UUID) -> dict[str, Any]:
        """Send the submitted version back to draft with the reason."""
        product = _marketplace_product(product_id)
        _run(service.reject, product, require_identity().user, data["reason"])
        current_session().commit()
        return _product_view(product)


@blp.route("/admin/products/<uuid:product_id>/retire")
class AdminRetire(MethodView):
    @blp.response(200, ProductSchema)
    @roles_required(Role.ADMIN)
    def post(self, product_id: uuid.UUID) -> dict[str, Any]:
        """Stop selling a product (for example after a policy breach)."""
        product = _marketplace_product(product_id)
        _run(service.retire, product)
        current_session().commit()
        return _product_view(product)
