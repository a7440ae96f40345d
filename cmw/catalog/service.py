"""Catalog rules: creating and editing products (with the versioning rule), plans, and
moving products through the publication workflow. Functions flush, never commit."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, joinedload

from cmw.accounts.models import Organisation, OrganisationKind, User
from cmw.assets.models import Image
from cmw.catalog.models import (
    Category,
    Plan,
    PriceComponent,
    Product,
    ProductStatus,
    ProductType,
    ProductVersion,
    VersionState,
)
from cmw.catalog.pricing import PlanSpec, price_from, validate_plans
from cmw.catalog.workflow import Action, InvalidTransition, next_state, next_status, save_state, save_status
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.marketplaces.models import Marketplace, SelectedProduct
from cmw.marketplaces.pricing import refresh_prices_from
from cmw.marketplaces.service import ancestors, subtree_ids

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,78}[a-z0-9])?$")
#: fields of a version the vendor writes (plans are set separately)
CONTENT_FIELDS = (
    "name",
    "short_description",
    "long_description",
    "category_slug",
    "tags",
    "website",
    "support_email",
    "product_type",
    "trial_days",
    "requires_approval",
    "deployment",
    "endpoints",
    "setup_variables",
)


class CatalogError(ValueError):
    """Invalid catalog input; ``field`` names the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ----------------------------------------------------------------- content
def _check_content(session: Session, content: dict[str, Any]) -> dict[str, Any]:
    checked = dict(content)
    if "category_slug" in checked and session.get(Category, checked["category_slug"]) is None:
        known = ", ".join(session.scalars(sa.select(Category.slug).order_by(Category.position)))
        raise CatalogError("category", f"unknown category {checked['category_slug']!r}; use one of: {known}")
    if "tags" in checked:
        tags = sorted({str(t).strip().lower() for t in checked["tags"] if str(t).strip()})
        if len(tags) > 20:
            raise CatalogError("tags", "at most 20 tags")
        checked["tags"] = tags
    return checked


def check_deployment(product_type: ProductType, targets: Sequence[dict[str, Any]]) -> None:
    """Type-specific rules: a vm_app needs a data disk and a setup script; a bare_vm has neither."""
    seen: set[tuple[str, str | None]] = set()
    for index, target in enumerate(targets):
        where = f"deployment.{index}"
        key = (target["cloud_account"], target.get("region"))
        if key in seen:
            raise CatalogError(f"{where}.cloud_account", "this cloud account and region is targeted twice")
        seen.add(key)
        if product_type is ProductType.VM_APP:
            if not target.get("data_disk_gib"):
                raise CatalogError(f"{where}.data_disk_gib", "a vm_app product needs a data disk")
            if not (target.get("setup_script") or "").strip():
                raise CatalogError(f"{where}.setup_script", "a vm_app product needs a setup script")
        else:
            if target.get("data_disk_gib"):
                raise CatalogError(f"{where}.data_disk_gib", "a bare_vm product has no data disk")
            if (target.get("setup_script") or "").strip():
                raise CatalogError(f"{where}.setup_script", "a bare_vm product runs no setup script")


def create_product(
    session: Session,
    marketplace: Marketplace,
    vendor: Organisation,
    *,
    slug: str,
    content: dict[str, Any],
) -> Product:
    if vendor.kind is not OrganisationKind.VENDOR or vendor.marketplace_id != marketplace.id:
        raise CatalogError("vendor_id", "not a vendor organisation of this marketplace")
    _check_slug(session, marketplace, slug)
    checked = _check_content(session, content)
    check_deployment(ProductType(checked["product_type"]), checked.get("deployment", []))
    product = Product(
        marketplace_id=marketplace.id, vendor_id=vendor.id, slug=slug, status=ProductStatus.DRAFT
    )
    session.add(product)
    session.flush()
    version = ProductVersion(product_id=product.id, number=1, state=VersionState.DRAFT, **checked)
    session.add(version)
    session.flush()
    product.working_version_id = version.id
    session.flush()
    emit(session, "product.created", {"product_id": str(product.id)}, marketplace_id=marketplace.id)
    return product


def _check_slug(
    session: Session, marketplace: Marketplace, slug: str, product_id: uuid.UUID | None = None
) -> None:
    if not SLUG.match(slug):
        raise CatalogError("slug", "use 1 to 80 lowercase letters, digits and hyphens, not at either end")
    taken = session.scalar(
        sa.select(Product.id).where(
            Product.marketplace_id == marketplace.id,
            Product.slug == slug,
            Product.id != product_id if product_id else sa.true(),
        )
    )
    if taken is not None:
        raise CatalogError("slug", f"{slug!r} is taken in this marketplace")


def working_version(session: Session, product: Product) -> ProductVersion:
    """The version the vendor edits, created from the live one when there is none.

    A submitted revision is frozen: editing it needs a withdraw first.
    """
    if product.status is ProductStatus.RETIRED:
        raise InvalidTransition(Action.EDIT, product.status.value)
    if product.working_version_id is not None:
        version = session.get(ProductVersion, product.working_version_id)
        assert version is not None
        next_state(version.state, Action.EDIT)  # raises when in review
        return version
    live = session.get(ProductVersion, product.live_version_id) if product.live_version_id else None
    assert live is not None, "a product has a working or a live version"
    number = (
        session.scalar(
            sa.select(sa.func.max(ProductVersion.number)).where(ProductVersion.product_id == product.id)
        )
        or 0
    ) + 1
    version = ProductVersion(
        product_id=product.id,
        number=number,
        state=VersionState.DRAFT,
        **{f: getattr(live, f) for f in CONTENT_FIELDS},
        logo_image_id=live.logo_image_id,
        screenshot_ids=list(live.screenshot_ids or []),
    )
    session.add(version)
    session.flush()
    for plan in live.plans:
        version.plans.append(_copy_plan(plan))
    product.working_version_id = version.id
    session.flush()
    return version


def _copy_plan(plan: Plan) -> Plan:
    copy = Plan(
        code=plan.code,
        name=plan.name,
        description=plan.description,
        currency=plan.currency,
        billing_period=plan.billing_period,
        position=plan.position,
        vm_size=plan.vm_size,
        data_disk_gib=plan.data_disk_gib,
    )
    for component in plan.components:
        copy.components.append(
            PriceComponent(
                **{
                    c: getattr(component, c)
                    for c in (
                        "position", "kind", "label", "unit_price", "metric", "unit", "pricing_model",
                        "included_quantity", "tiers", "min_quantity", "max_quantity", "infrastructure",
                    )
                }
            )
        )  # fmt: skip
    return copy


def update_product(session: Session, product: Product, changes: dict[str, Any]) -> ProductVersion:
    """Apply the vendor's changes to the working version (creating it if needed)."""
    next_status(product.status, Action.EDIT)
    changes = dict(changes)
    if "slug" in changes:
        slug = changes.pop("slug")
        if slug != product.slug:
            if product.live_version_id is not None:
                raise CatalogError("slug", "the slug of a product that was published cannot change")
            marketplace = session.get(Marketplace, product.marketplace_id)
            assert marketplace is not None
            _check_slug(session, marketplace, slug, product.id)
            product.slug = slug
    version = working_version(session, product)
    checked = _check_content(session, changes)
    merged_type = ProductType(checked.get("product_type", version.product_type))
    check_deployment(merged_type, checked.get("deployment", version.deployment))
    for key, value in checked.items():
        setattr(version, key, value)
    version.review_note = None
    session.flush()
    return version


def set_plans(session: Session, product: Product, plans: Sequence[PlanSpec]) -> ProductVersion:
    """Replace the working version's plans with ``plans`` (validated first)."""
    next_status(product.status, Action.EDIT)
    checked = validate_plans(plans)
    version = working_version(session, product)
    version.plans.clear()
    session.flush()
    for position, spec in enumerate(checked):
        plan = Plan(
            code=spec.code,
            name=spec.name.strip(),
            description=spec.description,
            currency=spec.currency,
            billing_period=spec.billing_period,
            position=position,
            vm_size=spec.vm_size,
            data_disk_gib=spec.data_disk_gib,
        )
        for index, c in enumerate(spec.components):
            plan.components.append(
                PriceComponent(
                    position=index,
                    kind=c.kind,
                    label=c.label.strip(),
                    unit_price=c.unit_price,
                    metric=c.metric,
                    unit=c.unit,
                    pricing_model=c.pricing_model,
                    included_quantity=c.included_quantity,
                    tiers=[t.as_json() for t in c.tiers] or None,
                    min_quantity=c.min_quantity,
                    max_quantity=c.max_quantity,
                    infrastructure=c.infrastructure,
                )
            )
        version.plans.append(plan)
    session.flush()
    return version


MAX_SCREENSHOTS = 10


def set_logo(session: Session, product: Product, image: Image) -> ProductVersion:
    """The working version's logo (its background colour comes with the image)."""
    next_status(product.status, Action.EDIT)
    version = working_version(session, product)
    version.logo_image_id = image.id
    session.flush()
    return version


def add_screenshot(session: Session, product: Product, image: Image) -> ProductVersion:
    next_status(product.status, Action.EDIT)
    version = working_version(session, product)
    if len(version.screenshot_ids or []) >= MAX_SCREENSHOTS:
        raise CatalogError("file", f"a product shows at most {MAX_SCREENSHOTS} screenshots")
    version.screenshot_ids = [*(version.screenshot_ids or []), str(image.id)]
    session.flush()
    return version


def remove_screenshot(session: Session, product: Product, image_id: uuid.UUID) -> ProductVersion:
    next_status(product.status, Action.EDIT)
    version = working_version(session, product)
    if str(image_id) not in (version.screenshot_ids or []):
        raise LookupError(image_id)
    version.screenshot_ids = [i for i in version.screenshot_ids if i != str(image_id)]
    session.flush()
    return version


# ---------------------------------------------------------------- workflow
def _working(session: Session, product: Product, action: Action) -> ProductVersion:
    if product.working_version_id is None:
        raise InvalidTransition(action, product.status.value, f"there is no revision to {action.value}")
    version = session.get(ProductVersion, product.working_version_id)
    assert version is not None
    return version


def submit(session: Session, product: Product) -> ProductVersion:
    """The vendor asks for review of the working version."""
    new_status = next_status(product.status, Action.SUBMIT)
    version = _working(session, product, Action.SUBMIT)
    new_state = next_state(version.state, Action.SUBMIT)
    if not version.plans:
        raise CatalogError("plans", "add at least one plan before submitting")
    if not version.deployment:
        raise CatalogError("deployment", "add at least one deployment target before submitting")
    save_state(session, version.id, version.state, new_state, submitted_at=utcnow(), review_note=None)
    save_status(session, product, product.status, new_status)
    session.refresh(version)
    emit(session, "product.submitted", _payload(product, version), marketplace_id=product.marketplace_id)
    return version


def withdraw(session: Session, product: Product) -> ProductVersion:
    new_status = next_status(product.status, Action.WITHDRAW)
    version = _working(session, product, Action.WITHDRAW)
    save_state(session, version.id, version.state, next_state(version.state, Action.WITHDRAW))
    save_status(session, product, product.status, new_status)
    session.refresh(version)
    return version


def approve(session: Session, product: Product, admin: User) -> ProductVersion:
    """The submitted version goes live; the previous live version is superseded."""
    new_status = next_status(product.status, Action.APPROVE)
    version = _working(session, product, Action.APPROVE)
    new_state = next_state(version.state, Action.APPROVE)
    now = utcnow()
    amount, currency = price_from(version.plans)
    save_state(
        session,
        version.id,
        version.state,
        new_state,
        reviewed_at=now,
        reviewed_by_id=admin.id,
        search_text=search_text(version),
        price_from_amount=amount,
        price_from_currency=currency,
    )
    if product.live_version_id is not None:
        save_state(session, product.live_version_id, VersionState.APPROVED, VersionState.SUPERSEDED)
    save_status(
        session,
        product,
        product.status,
        new_status,
        live_version_id=version.id,
        working_version_id=None,
        published_at=product.published_at or now,
    )
    session.refresh(version)
    # the marketplaces that mark it up show a "price from" of their own
    refresh_prices_from(session, subtree_ids(session, product.marketplace_id), [product.id])
    emit(session, "product.published", _payload(product, version), marketplace_id=product.marketplace_id)
    return version


def reject(session: Session, product: Product, admin: User, reason: str) -> ProductVersion:
    """Back to draft, with the admin's reason for the vendor."""
    if not reason.strip():
        raise CatalogError("reason", "say what the vendor has to change")
    new_status = next_status(product.status, Action.REJECT)
    version = _working(session, product, Action.REJECT)
    save_state(
        session,
        version.id,
        version.state,
        next_state(version.state, Action.REJECT),
        reviewed_at=utcnow(),
        reviewed_by_id=admin.id,
        review_note=reason.strip(),
    )
    save_status(session, product, product.status, new_status)
    session.refresh(version)
    emit(
        session,
        "product.rejected",
        {**_payload(product, version), "reason": reason.strip()},
        marketplace_id=product.marketplace_id,
    )
    return version


def retire(session: Session, product: Product) -> None:
    new_status = next_status(product.status, Action.RETIRE)
    save_status(session, product, product.status, new_status, retired_at=utcnow())
    emit(session, "product.retired", {"product_id": str(product.id)}, marketplace_id=product.marketplace_id)


def search_text(version: ProductVersion) -> str:
    """What search matches: name, descriptions and tags, lowercase."""
    parts = [version.name, version.short_description, version.long_description, " ".join(version.tags or [])]
    return "\n".join(p for p in parts if p).lower()


def _payload(product: Product, version: ProductVersion) -> dict[str, Any]:
    return {"product_id": str(product.id), "version_id": str(version.id), "version": version.number}


# ----------------------------------------------------------------- reading
def sold_in(session: Session, marketplace: Marketplace) -> sa.ColumnElement[bool]:
    """Products ``marketplace`` sells: its own, and of what its parent sells, those its
    admins selected (or all, where it sells all of its parent's), down the tree."""
    return sold_in_chain(chain_of(session, marketplace))


#: a marketplace and those above it, nearest first, as (id, sells all of its parent's):
#: what decides which products it sells
Chain = tuple[tuple[uuid.UUID, bool], ...]


def chain_of(session: Session, marketplace: Marketplace) -> Chain:
    return tuple((m.id, m.sells_all_of_parent) for m in ancestors(session, marketplace))


def sold_in_chain(chain: Chain) -> sa.ColumnElement[bool]:
    """:func:`sold_in` for a marketplace's :data:`Chain` (the platform last)."""
    sold: sa.ColumnElement[bool] = Product.marketplace_id == chain[-1][0]
    for child_id, sells_all in reversed(chain[:-1]):
        inherited = sold
        if not sells_all:
            chosen = sa.select(SelectedProduct.product_id).where(SelectedProduct.marketplace_id == child_id)
            inherited = sa.and_(sold, Product.id.in_(chosen))
        sold = sa.or_(Product.marketplace_id == child_id, inherited)
    return sold


def published(session: Session, marketplace: Marketplace) -> sa.Select[Any]:
    return sa.select(Product).where(
        sold_in(session, marketplace),
        Product.status == ProductStatus.PUBLISHED,
        Product.live_version_id.is_not(None),
    )


#: a product with its live version, that version's plans and their price components
#: loaded in the same query (what its page and an order read), not one lazy load each
WITH_PLANS = joinedload(Product.live_version).joinedload(ProductVersion.plans).joinedload(Plan.components)


def find_published(
    session: Session, marketplace: Marketplace, ref: str, *, with_plans: bool = False
) -> Product | None:
    """The published product sold in ``marketplace`` whose id or slug is ``ref``; with
    ``with_plans``, its live version's plans and prices come in the same query."""
    stmt = published(session, marketplace)
    try:
        stmt = stmt.where(Product.id == uuid.UUID(ref))
    except ValueError:
        stmt = stmt.where(Product.slug == ref)
    if with_plans:
        stmt = stmt.options(WITH_PLANS)
    found: Product | None = session.scalars(stmt.limit(1)).unique().first()
    return found


class SelectionError(ValueError):
    """A catalog selection that cannot be; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parent_catalog(session: Session, marketplace: Marketplace) -> list[Product]:
    """What the marketplace's parent sells (published), which it may choose from."""
    if marketplace.parent_id is None:
        return []
    parent = session.get(Marketplace, marketplace.parent_id)
    assert parent is not None
    return list(session.scalars(published(session, parent).order_by(Product.slug)))


def selection(session: Session, marketplace: Marketplace) -> dict[str, Any]:
    """Which of its parent's products the marketplace sells, and what it may choose from."""
    chosen = set(
        session.scalars(
            sa.select(SelectedProduct.product_id).where(SelectedProduct.marketplace_id == marketplace.id)
        )
    )
    return {
        "sells_all_of_parent": marketplace.sells_all_of_parent,
        "product_ids": sorted(chosen, key=str),
        "parent_catalog": [
            {
                "id": p.id,
                "slug": p.slug,
                "name": p.live_version.name if p.live_version else p.slug,
                "selected": marketplace.sells_all_of_parent or p.id in chosen,
            }
            for p in parent_catalog(session, marketplace)
        ],
    }


def select_products(
    session: Session, marketplace: Marketplace, product_ids: list[uuid.UUID], *, sells_all: bool
) -> None:
    """Replace the marketplace's selection of its parent's products. Flushes."""
    if marketplace.parent_id is None:
        raise SelectionError(
            "product_ids", "the platform marketplace sells its own products; it selects none"
        )
    offered = {p.id for p in parent_catalog(session, marketplace)}
    for index, product_id in enumerate(product_ids):
        if product_id not in offered:
            raise SelectionError(f"product_ids.{index}", f"the parent marketplace does not sell {product_id}")
    marketplace.sells_all_of_parent = sells_all
    wanted = set(product_ids)
    current = {
        row.product_id: row
        for row in session.scalars(
            sa.select(SelectedProduct).where(SelectedProduct.marketplace_id == marketplace.id)
        )
    }
    for product_id, row in current.items():
        if product_id not in wanted:
            session.delete(row)
    now = utcnow()
    for product_id in wanted - current.keys():
        session.add(SelectedProduct(marketplace_id=marketplace.id, product_id=product_id, selected_at=now))
    session.flush()


def content_of(version: ProductVersion) -> dict[str, Any]:
    return {f: getattr(version, f) for f in CONTENT_FIELDS}


def product_name(session: Session, product_id: uuid.UUID) -> str:
    """The name customers know the product by (its live version, else its working one)."""
    found = session.execute(
        sa.select(Product.slug, ProductVersion.name)
        .outerjoin(
            ProductVersion,
            ProductVersion.id == sa.func.coalesce(Product.live_version_id, Product.working_version_id),
        )
        .where(Product.id == product_id)
    ).first()
    if found is None:
        return "your product"
    return found.name or found.slug


def vendor_of(session: Session, product_id: uuid.UUID) -> uuid.UUID | None:
    """The vendor organisation that sells the product."""
    return session.scalar(sa.select(Product.vendor_id).where(Product.id == product_id))


def review_queue(marketplace: Marketplace) -> sa.Select[Any]:
    """Products of the marketplace whose next revision waits for an administrator, oldest first
    (new products, and published ones with an edited revision)."""
    waiting = sa.select(ProductVersion.id).where(ProductVersion.state == VersionState.IN_REVIEW)
    return (
        sa.select(Product)
        .where(Product.marketplace_id == marketplace.id, Product.working_version_id.in_(waiting))
        .order_by(Product.updated_at, Product.id)
    )
