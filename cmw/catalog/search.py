"""Catalog queries: full-text search, filters, sort and the compare set.

On PostgreSQL, search uses a GIN index on a stored ``to_tsvector('english', search_text)`` with
``websearch_to_tsquery`` (quotes, ``-word`` and ``or`` work as on a search engine) and ranks
by ``ts_rank``. On SQLite (the embedded default) every word must appear in the text.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, contains_eager

from cassetto import Storage
from cmw.accounts.models import Organisation
from cmw.assets.models import Image, StoredFile
from cmw.assets.service import url_for_file
from cmw.catalog import service
from cmw.catalog.models import Product, ProductStatus, ProductType, ProductVersion
from cmw.marketplaces.models import Marketplace, MarketplacePrice

TS_CONFIG = sa.text("'english'::regconfig")
#: PostgreSQL only: the stored to_tsvector('english', search_text), GIN-indexed (migration 0003)
SEARCH_VECTOR: sa.ColumnElement[Any] = sa.literal_column("product_versions.search_vector")


class Sort(enum.StrEnum):
    #: best match first (needs a search term; otherwise newest)
    RELEVANCE = "relevance"
    #: highest average rating first, then most reviews
    RATING = "rating"
    #: lowest price first
    PRICE = "price"
    #: most expensive first
    PRICE_DESC = "-price"
    #: most recently published first
    NEWEST = "newest"


@dataclasses.dataclass(frozen=True)
class Query:
    q: str | None = None
    category: str | None = None
    tag: str | None = None
    vendor_id: uuid.UUID | None = None
    product_type: ProductType | None = None
    has_trial: bool | None = None
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    currency: str | None = None
    sort: Sort = Sort.RELEVANCE


def catalog_query(session: Session, marketplace: Marketplace, query: Query) -> sa.Select[Any]:
    """Published products of ``marketplace`` matching ``query``, in the requested order,
    with their live version loaded (joined, so a page is one query)."""
    live = ProductVersion
    stmt = (
        sa.select(Product)
        # product_id as well: the planner can then fetch each match's product by key
        .join(live, sa.and_(Product.live_version_id == live.id, Product.id == live.product_id))
        .options(contains_eager(Product.live_version))
        .where(service.sold_in(session, marketplace), Product.status == ProductStatus.PUBLISHED)
    )
    price: sa.ColumnElement[Any] = live.price_from_amount.expression
    currency: sa.ColumnElement[Any] = live.price_from_currency.expression
    if marketplace.parent_id is not None:  # a child's mark-ups may change the price
        own = sa.orm.aliased(MarketplacePrice)
        stmt = stmt.outerjoin(
            own, sa.and_(own.product_id == Product.id, own.marketplace_id == marketplace.id)
        )
        price = sa.func.coalesce(own.price_from_amount, live.price_from_amount)
        currency = sa.func.coalesce(own.price_from_currency, live.price_from_currency)
    rank: sa.ColumnElement[Any] | None = None
    terms = (query.q or "").strip()
    if terms:
        if session.get_bind().dialect.name == "postgresql":
            vector = SEARCH_VECTOR
            tsquery = sa.func.websearch_to_tsquery(TS_CONFIG, terms)
            stmt = stmt.where(vector.op("@@")(tsquery))
            rank = sa.func.ts_rank(vector, tsquery)
        else:
            for word in re.findall(r"\w+", terms.lower())[:10]:
                stmt = stmt.where(live.search_text.contains(word, autoescape=True))
    if query.category:
        stmt = stmt.where(live.category_slug == query.category)
    if query.tag:
        # Tags are also in search_text; the JSON list is checked exactly on the few matches.
        tag = query.tag.strip().lower()
        stmt = stmt.where(live.search_text.contains(tag, autoescape=True))
        stmt = stmt.where(_has_tag(session, tag))
    if query.vendor_id:
        stmt = stmt.where(Product.vendor_id == query.vendor_id)
    if query.product_type:
        stmt = stmt.where(live.product_type == query.product_type)
    if query.has_trial is not None:
        stmt = stmt.where(live.trial_days > 0 if query.has_trial else live.trial_days == 0)
    if query.min_price is not None or query.max_price is not None:
        if query.currency:
            stmt = stmt.where(currency == query.currency)
        if query.min_price is not None:
            stmt = stmt.where(price >= query.min_price)
        if query.max_price is not None:
            stmt = stmt.where(price <= query.max_price)
    return stmt.order_by(*_order(query.sort, rank, price))


def _has_tag(session: Session, tag: str) -> sa.ColumnElement[bool]:
    tags = ProductVersion.tags
    if session.get_bind().dialect.name == "postgresql":
        return sa.cast(tags, sa.dialects.postgresql.JSONB).op("@>")(sa.func.jsonb_build_array(tag))
    each = sa.func.json_each(tags).table_valued("value")
    return sa.exists(sa.select(1).select_from(each).where(each.c.value == tag))


def _order(sort: Sort, rank: sa.ColumnElement[Any] | None, price: sa.ColumnElement[Any]) -> list[Any]:
    newest = [Product.published_at.desc(), Product.id]
    if sort is Sort.RELEVANCE:
        return [rank.desc(), *newest] if rank is not None else newest
    if sort is Sort.RATING:
        average = sa.case(
            (Product.rating_count > 0, Product.rating_sum * 1.0 / Product.rating_count), else_=0
        )
        return [average.desc(), Product.rating_count.desc(), *newest]
    if sort in (Sort.PRICE, Sort.PRICE_DESC):
        first = price.asc().nulls_last() if sort is Sort.PRICE else price.desc().nulls_last()
        return [first, *newest]
    return newest


def page(
    session: Session, marketplace: Marketplace, query: Query, number: int, per_page: int, storage: Storage
) -> dict[str, Any]:
    """One page of :func:`catalog_query` in two cheap queries (a "deferred join"):

    1. the page's product ids and the total (:func:`page_ids`);
    2. those products' card columns, by primary key (:func:`cards`): plain rows, no ORM
       objects and no wide columns (this is the busiest public endpoint).
    """
    found = page_ids(session, marketplace, query, number, per_page)
    ids = found.pop("ids")
    loaded = {card["id"]: card for card in cards(session, ids, storage, marketplace)} if ids else {}
    return {"items": [loaded[i] for i in ids if i in loaded], **found}


def page_ids(
    session: Session, marketplace: Marketplace, query: Query, number: int, per_page: int
) -> dict[str, Any]:
    """The ids of one page of :func:`catalog_query`, in order (``ids``), with the paging
    figures. One query on narrow rows, the total with it (``count(*) OVER ()``): the
    search and the filters run once, and no wide row is built for products not shown."""
    full = catalog_query(session, marketplace, query)
    ids_only = full.with_only_columns(Product.id, sa.func.count().over().label("total_rows"))
    rows = session.execute(ids_only.limit(per_page).offset((number - 1) * per_page)).all()
    if rows:
        total = int(rows[0].total_rows)
    elif number == 1:
        total = 0
    else:  # past the last page
        total = session.scalar(full.with_only_columns(sa.func.count()).order_by(None)) or 0
    return {
        "ids": [row.id for row in rows],
        "page": number,
        "per_page": per_page,
        "total": total,
        "pages": -(-total // per_page),
    }


def cards(
    session: Session, ids: list[uuid.UUID], storage: Storage, marketplace: Marketplace
) -> list[dict[str, Any]]:
    """What a catalog card shows, for these products, as plain dicts, at the marketplace's prices."""
    rows = session.execute(_cards_statement(), {"ids": ids})
    found = [card(row, storage) for row in rows]
    if marketplace.parent_id is not None:
        own = {
            row.product_id: row
            for row in session.scalars(
                sa.select(MarketplacePrice).where(
                    MarketplacePrice.marketplace_id == marketplace.id, MarketplacePrice.product_id.in_(ids)
                )
            )
        }
        for item in found:
            if item["id"] in own:
                row = own[item["id"]]
                item["price_from"] = price_from_view(row.price_from_amount, row.price_from_currency)
    return found


@functools.cache
def _cards_statement() -> sa.Select[*tuple[Any, ...]]:
    """The card columns of the products whose ids are bound as ``ids``: built once, not
    on every request (the statement and its aliases cost more to build than to run)."""
    live = ProductVersion
    thumb, card_file = sa.orm.aliased(StoredFile), sa.orm.aliased(StoredFile)
    return (
        sa.select(
            Product.id,
            Product.slug,
            live.name,
            live.short_description,
            live.category_slug.label("category"),
            live.tags,
            Product.vendor_id,
            Organisation.name.label("vendor_name"),
            live.product_type,
            live.trial_days,
            live.price_from_amount,
            live.price_from_currency,
            Product.rating_count,
            Product.rating_sum,
            Product.published_at,
            Image.id.label("logo_id"),
            Image.background_colour.label("logo_background"),
            thumb.key.label("logo_thumb_key"),
            card_file.key.label("logo_card_key"),
        )
        .join(live, live.id == Product.live_version_id)
        .join(Organisation, Organisation.id == Product.vendor_id)
        .outerjoin(Image, Image.id == live.logo_image_id)
        .outerjoin(thumb, thumb.id == Image.thumb_id)
        .outerjoin(card_file, card_file.id == Image.card_id)
        .where(Product.id.in_(sa.bindparam("ids", expanding=True)))
    )


def price_from_view(amount: Decimal | None, currency: str | None) -> dict[str, Any] | None:
    """The "price from" of a card or product page: the cheapest plan a month."""
    return None if amount is None else {"amount": amount, "currency": currency, "period": "month"}


def rating_view(count: int, total: int) -> dict[str, Any]:
    """Average to one decimal (None without reviews) and count."""
    return {"average": round(total / count, 1) if count else None, "count": count}


def card(row: Any, storage: Storage) -> dict[str, Any]:
    """A card from a row with the columns :func:`cards` selects."""
    values = dict(row._mapping)
    logo_id, background = values.pop("logo_id"), values.pop("logo_background")
    thumb_key, card_key = values.pop("logo_thumb_key"), values.pop("logo_card_key")
    values["logo"] = (
        None
        if logo_id is None
        else {
            "id": logo_id,
            "background_colour": background,
            "urls": {"thumb": url_for_file(storage, thumb_key), "card": url_for_file(storage, card_key)},
        }
    )
    amount, currency = values.pop("price_from_amount"), values.pop("price_from_currency")
    values["price_from"] = price_from_view(amount, currency)
    count, total = values.pop("rating_count"), values.pop("rating_sum")
    values["rating"] = rating_view(count, total)
    return values


def compare_set(session: Session, marketplace: Marketplace, refs: list[str]) -> list[Product]:
    """The published products named by id or slug, in the order asked; missing ones are left out."""
    ids, slugs = [], []
    for ref in refs:
        try:
            ids.append(uuid.UUID(ref))
        except ValueError:
            slugs.append(ref)
    stmt = catalog_query(session, marketplace, Query(sort=Sort.NEWEST)).where(
        sa.or_(Product.id.in_(ids), Product.slug.in_(slugs))
    )
    found = {p.id: p for p in session.scalars(stmt).unique()}
    by_ref = {**{str(p.id): p for p in found.values()}, **{p.slug: p for p in found.values()}}
    ordered: list[Product] = []
    for ref in refs:
        product = by_ref.get(ref)
        if product is not None and product not in ordered:
            ordered.append(product)
    return ordered
