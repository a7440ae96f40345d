"""How a published product is shown to customers: one shape for the API and the pages."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cassetto import Storage
from cmw.assets.models import Image
from cmw.assets.service import image_view
from cmw.catalog import search, service
from cmw.catalog.markdown import render
from cmw.catalog.models import Product, ProductVersion
from cmw.catalog.pricing import price_from
from cmw.marketplaces import pricing
from cmw.marketplaces.models import Marketplace


def images_of(session: Session, storage: Storage, version: ProductVersion) -> dict[str, Any]:
    """The version's logo and screenshots, with browser URLs."""
    wanted = [version.logo_image_id, *(uuid.UUID(i) for i in version.screenshot_ids or [])]
    ids = [i for i in wanted if i is not None]
    found = {i.id: i for i in session.scalars(sa.select(Image).where(Image.id.in_(ids)))} if ids else {}
    logo = found.get(version.logo_image_id) if version.logo_image_id else None
    return {
        "logo": image_view(storage, logo),
        "screenshots": [
            image_view(storage, found[uuid.UUID(i)])
            for i in version.screenshot_ids or []
            if uuid.UUID(i) in found
        ],
    }


def public_view(
    session: Session, storage: Storage, product: Product, marketplace: Marketplace
) -> dict[str, Any]:
    """A published product as customers of ``marketplace`` see it: its live version, plans
    at the marketplace's prices, rating and images."""
    live = product.live_version
    assert live is not None
    prices = pricing.price_list(session, marketplace, product)
    plans = pricing.priced_plans(prices, live.plans)
    cheapest = price_from(plans) if prices.marked_up else (live.price_from_amount, live.price_from_currency)
    content = service.content_of(live)
    # what only the vendor and the machine should read: the setup script and the values of
    # the variables customers do not set
    content["deployment"] = [
        {k: v for k, v in t.items() if k != "setup_script"} for t in live.deployment or []
    ]
    content["setup_variables"] = [v for v in live.setup_variables or [] if v.get("customer_editable")]
    return {
        **content,
        "id": product.id,
        "slug": product.slug,
        "vendor_id": product.vendor_id,
        "vendor_name": product.vendor.name,
        "version": live.number,
        "long_description_html": render(live.long_description),
        "plans": plans,
        "published_at": product.published_at,
        "price_from": search.price_from_view(*cheapest),
        "rating": search.rating_view(product.rating_count, product.rating_sum),
        **images_of(session, storage, live),
    }
