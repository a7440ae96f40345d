"""How a published product is shown to customers: one shape for the API and the pages."""

from __future__ import annotations

import functools
import itertools
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cassetto import Storage
from cmw.accounts.models import Organisation
from cmw.assets.models import Image
from cmw.assets.service import image_view
from cmw.catalog import search, service
from cmw.catalog.markdown import render
from cmw.catalog.models import Plan, PriceComponent, Product, ProductStatus, ProductVersion
from cmw.catalog.pricing import ComponentView, PlanView, price_from
from cmw.marketplaces import pricing
from cmw.marketplaces.models import Marketplace


def images_of(session: Session, storage: Storage, version: ProductVersion) -> dict[str, Any]:
    """The version's logo and screenshots, with browser URLs."""
    return images(session, storage, version.logo_image_id, version.screenshot_ids)


def images(
    session: Session, storage: Storage, logo_id: uuid.UUID | None, screenshot_ids: list[str] | None
) -> dict[str, Any]:
    """A logo and screenshots by image id, with browser URLs (one query, none without images)."""
    wanted = [logo_id, *(uuid.UUID(i) for i in screenshot_ids or [])]
    ids = [i for i in wanted if i is not None]
    found = {i.id: i for i in session.scalars(sa.select(Image).where(Image.id.in_(ids)))} if ids else {}
    logo = found.get(logo_id) if logo_id else None
    return {
        "logo": image_view(storage, logo),
        "screenshots": [
            image_view(storage, found[uuid.UUID(i)]) for i in screenshot_ids or [] if uuid.UUID(i) in found
        ],
    }


def public_view(
    session: Session, storage: Storage, marketplace: Marketplace, ref: str
) -> dict[str, Any] | None:
    """The published product sold in ``marketplace`` whose slug or id is ``ref``, as its
    customers see it: its live version, plans at the marketplace's prices, rating and
    images; None where it sells no such product.

    Read as plain rows by statements built once (two queries, a third for images): this is
    the product page's and the API's answer, and building an ORM query and its objects cost
    more than running it."""
    try:
        key: uuid.UUID | str = uuid.UUID(ref)
    except ValueError:
        key = ref
    # Core rows on the session's connection: no ORM objects, nothing pending to flush here
    stmt = _product_statement(service.chain_of(session, marketplace), isinstance(key, uuid.UUID))
    head = session.connection().execute(stmt, {"ref": key}).first()
    if head is None:
        return None
    plans = _plans(session, head.version_id)
    prices = pricing.price_list(session, marketplace, head)
    shown = pricing.priced_plans(prices, plans)
    cheapest = price_from(shown) if prices.marked_up else (head.price_from_amount, head.price_from_currency)
    content = {f: getattr(head, f) for f in service.CONTENT_FIELDS}
    # what only the vendor and the machine should read: the setup script and the values of
    # the variables customers do not set
    deployment = head.deployment or []
    content["deployment"] = [{k: v for k, v in t.items() if k != "setup_script"} for t in deployment]
    content["setup_variables"] = [v for v in head.setup_variables or [] if v.get("customer_editable")]
    return {
        **content,
        "id": head.id,
        "slug": head.slug,
        "vendor_id": head.vendor_id,
        "vendor_name": head.vendor_name,
        "version": head.number,
        "long_description_html": render(head.long_description),
        "plans": shown,
        "published_at": head.published_at,
        "price_from": search.price_from_view(*cheapest),
        "rating": search.rating_view(head.rating_count, head.rating_sum),
        **images(session, storage, head.logo_image_id, head.screenshot_ids),
    }


@functools.lru_cache(maxsize=256)
def _product_statement(chain: service.Chain, by_id: bool) -> sa.Select[*tuple[Any, ...]]:
    """The columns :func:`public_view` shows of the product sold along ``chain`` whose id
    (or slug) is bound as ``ref``; one statement per marketplace tree and kind of reference."""
    live = ProductVersion
    return (
        sa.select(
            Product.id,
            Product.slug,
            Product.vendor_id,
            Product.marketplace_id,
            Product.published_at,
            Product.rating_count,
            Product.rating_sum,
            Organisation.name.label("vendor_name"),
            live.id.label("version_id"),
            live.number,
            live.logo_image_id,
            live.screenshot_ids,
            live.price_from_amount,
            live.price_from_currency,
            *(getattr(live, f) for f in service.CONTENT_FIELDS),
        )
        .join(live, live.id == Product.live_version_id)
        .join(Organisation, Organisation.id == Product.vendor_id)
        .where(
            service.sold_in_chain(chain),
            Product.status == ProductStatus.PUBLISHED,
            (Product.id if by_id else Product.slug) == sa.bindparam("ref"),
        )
        .limit(1)
    )


def _plans(session: Session, version_id: uuid.UUID) -> list[PlanView]:
    """The version's plans with their components, in order."""
    rows = session.connection().execute(_plans_statement(), {"version_id": version_id})
    return [_plan(list(group)) for _, group in itertools.groupby(rows, key=lambda row: row.id)]


def _plan(rows: list[Any]) -> PlanView:
    components = [
        ComponentView.of(row, id=row.component_id, position=row.component_position)
        for row in rows
        if row.component_id is not None
    ]
    return PlanView.of(rows[0], components)


@functools.cache
def _plans_statement() -> sa.Select[*tuple[Any, ...]]:
    c = PriceComponent
    return (
        sa.select(
            Plan.id,
            Plan.version_id,
            Plan.code,
            Plan.name,
            Plan.description,
            Plan.currency,
            Plan.billing_period,
            Plan.position,
            Plan.vm_size,
            Plan.data_disk_gib,
            c.id.label("component_id"),
            c.position.label("component_position"),
            c.kind,
            c.label,
            c.unit_price,
            c.metric,
            c.unit,
            c.pricing_model,
            c.included_quantity,
            c.tiers,
            c.min_quantity,
            c.max_quantity,
            c.infrastructure,
        )
        .outerjoin(c, c.plan_id == Plan.id)
        .where(Plan.version_id == sa.bindparam("version_id"))
        .order_by(Plan.position, Plan.id, c.position)
    )
