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


def catalog_query(
    session: Session, marketplace: Marketplace, query: Query
) -> tuple[sa.Select[Any], dict[str, Any]]:
    """Published products of ``marketplace`` matching ``query``, in the requested order,
    with their live version loaded (joined, so a page is one query): the statement, and the
    values of its parameters.

    The statement is built once per marketplace and shape of query (which filters, which
    sort), with the query's values as bound parameters: a search is asked with ever new
    words, and building the statement cost as much as running it."""
    shape, params = _shape(session, marketplace, query)
    return _catalog_statement(shape), params


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What :func:`_catalog_statement` builds differently; the values are parameters."""

    chain: service.Chain
    #: a child marketplace (whose mark-ups may change the price)
    child: bool
    postgresql: bool
    #: words of the search on SQLite (each must appear); on PostgreSQL 1 for a search
    words: int
    category: bool
    tag: bool
    vendor: bool
    product_type: bool
    has_trial: bool | None
    currency: bool
    min_price: bool
    max_price: bool
    sort: Sort


def _like(text: str) -> str:
    """A LIKE pattern for ``text`` anywhere (escaped with ``/``)."""
    return "%" + text.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


def _shape(session: Session, marketplace: Marketplace, query: Query) -> tuple[_Shape, dict[str, Any]]:
    postgresql = session.get_bind().dialect.name == "postgresql"
    params: dict[str, Any] = {}
    terms = (query.q or "").strip()
    words = 0
    if terms and postgresql:
        params["terms"], words = terms, 1
    elif terms:
        found = re.findall(r"\w+", terms.lower())[:10]
        params.update({f"word{n}": _like(word) for n, word in enumerate(found)})
        words = len(found)
    if query.category:
        params["category"] = query.category
    if query.tag:
        params["tag"] = query.tag.strip().lower()
        params["tag_like"] = _like(params["tag"])
    if query.vendor_id:
        params["vendor_id"] = query.vendor_id
    if query.product_type:
        params["product_type"] = query.product_type
    priced = query.min_price is not None or query.max_price is not None
    if priced and query.currency:
        params["currency"] = query.currency
    if query.min_price is not None:
        params["min_price"] = query.min_price
    if query.max_price is not None:
        params["max_price"] = query.max_price
    shape = _Shape(
        chain=service.chain_of(session, marketplace),
        child=marketplace.parent_id is not None,
        postgresql=postgresql,
        words=words,
        category="category" in params,
        tag="tag" in params,
        vendor="vendor_id" in params,
        product_type="product_type" in params,
        has_trial=query.has_trial,
        currency="currency" in params,
        min_price="min_price" in params,
        max_price="max_price" in params,
        sort=query.sort,
    )
    return shape, params


@functools.lru_cache(maxsize=1024)
def _catalog_statement(shape: _Shape) -> sa.Select[Any]:
    live = ProductVersion
    stmt = (
        sa.select(Product)
        # product_id as well: the planner can then fetch each match's product by key
        .join(live, sa.and_(Product.live_version_id == live.id, Product.id == live.product_id))
        .options(contains_eager(Product.live_version))
        .where(service.sold_in_chain(shape.chain), Product.status == ProductStatus.PUBLISHED)
    )
    price: sa.ColumnElement[Any] = live.price_from_amount.expression
    currency: sa.ColumnElement[Any] = live.price_from_currency.expression
    if shape.child:  # a child's mark-ups may change the price
        own = sa.orm.aliased(MarketplacePrice)
        stmt = stmt.outerjoin(
            own, sa.and_(own.product_id == Product.id, own.marketplace_id == shape.chain[0][0])
        )
        price = sa.func.coalesce(own.price_from_amount, live.price_from_amount)
        currency = sa.func.coalesce(own.price_from_currency, live.price_from_currency)
    rank: sa.ColumnElement[Any] | None = None
    if shape.words and shape.postgresql:
        vector = SEARCH_VECTOR
        tsquery = sa.func.websearch_to_tsquery(TS_CONFIG, sa.bindparam("terms", type_=sa.String))
        stmt = stmt.where(vector.op("@@")(tsquery))
        rank = sa.func.ts_rank(vector, tsquery)
    else:
        for n in range(shape.words):
            stmt = stmt.where(live.search_text.like(sa.bindparam(f"word{n}", type_=sa.String), escape="/"))
    if shape.category:
        stmt = stmt.where(live.category_slug == sa.bindparam("category", type_=sa.String))
    if shape.tag:
        # Tags are also in search_text; the JSON list is checked exactly on the few matches.
        stmt = stmt.where(live.search_text.like(sa.bindparam("tag_like", type_=sa.String), escape="/"))
        stmt = stmt.where(_has_tag(shape.postgresql, sa.bindparam("tag", type_=sa.String)))
    if shape.vendor:
        stmt = stmt.where(Product.vendor_id == sa.bindparam("vendor_id"))
    if shape.product_type:
        stmt = stmt.where(live.product_type == sa.bindparam("product_type"))
    if shape.has_trial is not None:
        stmt = stmt.where(live.trial_days > 0 if shape.has_trial else live.trial_days == 0)
    if shape.currency:
        stmt = stmt.where(currency == sa.bindparam("currency", type_=sa.String))
    if shape.min_price:
        stmt = stmt.where(price >= sa.bindparam("min_price", type_=sa.Numeric(18, 6)))
    if shape.max_price:
        stmt = stmt.where(price <= sa.bindparam("max_price", type_=sa.Numeric(18, 6)))
    return stmt.order_by(*_order(shape.sort, rank, price))


@functools.lru_cache(maxsize=1024)
def _ids_statement(shape: _Shape) -> sa.Select[*tuple[Any, ...]]:
    """A page of the matches' ids (``limit`` and ``offset`` bound), with the total."""
    return (
        _catalog_statement(shape)
        .with_only_columns(Product.id, sa.func.count().over().label("total_rows"))
        .limit(sa.bindparam("limit"))
        .offset(sa.bindparam("offset"))
    )


@functools.lru_cache(maxsize=1024)
def _count_statement(shape: _Shape) -> sa.Select[Any]:
    return _catalog_statement(shape).with_only_columns(sa.func.count()).order_by(None)


def _has_tag(postgresql: bool, tag: sa.BindParameter[str]) -> sa.ColumnElement[bool]:
    tags = ProductVersion.tags
    if postgresql:
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
    shape, params = _shape(session, marketplace, query)
    # Core rows on the session's connection: no ORM objects, nothing pending to flush here
    conn = session.connection()
    rows = conn.execute(
        _ids_statement(shape), {**params, "limit": per_page, "offset": (number - 1) * per_page}
    )
    found = rows.all()
    if found:
        total = int(found[0].total_rows)
    elif number == 1:
        total = 0
    else:  # past the last page
        total = conn.execute(_count_statement(shape), params).scalar() or 0
    return {
        "ids": [row.id for row in found],
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
    listed, params = catalog_query(session, marketplace, Query(sort=Sort.NEWEST))
    stmt = listed.where(sa.or_(Product.id.in_(ids), Product.slug.in_(slugs)))
    found = {p.id: p for p in session.scalars(stmt, params).unique()}
    by_ref = {**{str(p.id): p for p in found.values()}, **{p.slug: p for p in found.values()}}
    ordered: list[Product] = []
    for ref in refs:
        product = by_ref.get(ref)
        if product is not None and product not in ordered:
            ordered.append(product)
    return ordered
