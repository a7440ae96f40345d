"""Cached public catalog responses, invalidated by a catalog generation.

The published catalog is read far more often than it changes, and the same searches come
back again and again. Each web process keeps the serialised body of recent catalog pages
in memory, keyed by the marketplace, the query and the *catalog generation*: a counter in
the one-row ``catalog_state`` table that every transaction changing what a storefront
shows increments as it commits. The marketplace row every request loads carries the
generation (:attr:`Marketplace.catalog_generation`), so a cached answer costs no query of
its own, and a change made in any process is seen by every process on its next request.

What counts as a change is found by SQLAlchemy session events, not by each service
remembering to say so: an ORM flush or an ORM-enabled ``UPDATE``/``DELETE``/``INSERT``
touching products, their versions, plans and prices, reviews, categories, images, a
vendor organisation or a reviewer's name marks the transaction, and the generation is
bumped just before it commits (last, so the single row is locked only for the commit itself). Writes through
plain Core on those tables must call :func:`catalog_changed`. Entries also expire after
:data:`TTL_SECONDS`, well inside the life of the presigned asset URLs they contain.

The storefront's public pages (:func:`cached_page`) are kept the same way, but only as
visitors who are not signed in see them: nothing that belongs to one user is ever stored.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import uuid
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, ParamSpec

import sqlalchemy as sa
from cachetools import LRUCache, TTLCache
from flask import Response, current_app, g, get_flashed_messages, request
from flask import session as browser_session
from flask.typing import ResponseReturnValue
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, UOWTransaction

from cmw.accounts.models import Organisation, OrganisationKind
from cmw.assets.models import Image
from cmw.catalog.models import Category, Plan, PriceComponent, Product, ProductVersion, Review
from cmw.marketplaces.models import CatalogState, Marketplace, PriceMarkup, SelectedProduct

#: how long an entry may be served at most, whatever the generation says
TTL_SECONDS = 60
#: entries kept per process (an API answer is a few kB, a storefront page 5 to 15 kB)
MAX_ENTRIES = 2048
#: catalog cards kept per process as HTML (under 1 kB each)
MAX_CARDS = 10_000

CATALOG_CLASSES: tuple[type[Any], ...] = (
    Product,
    ProductVersion,
    Plan,
    PriceComponent,
    Review,
    Category,
    Image,
    # what a marketplace sells: its selection of its parent's products, its prices, and its settings
    SelectedProduct,
    PriceMarkup,
    Marketplace,
)
_FLAG = "mercato.catalog_changed"
P = ParamSpec("P")


def catalog_changed(session: Session) -> None:
    """Mark the session's transaction as changing the catalog (for Core writes)."""
    session.info[_FLAG] = True


def _touches_catalog(instance: object, how: str) -> bool:
    """Whether flushing ``instance`` (``how``: new, dirty or deleted) changes what the
    storefront shows."""
    if isinstance(instance, CATALOG_CLASSES):
        return True
    if not isinstance(instance, Organisation):
        return False
    if instance.kind == OrganisationKind.VENDOR:  # cards show the vendor's name
        return True
    # product pages show each review's organisation by name; a new one has written none
    if how == "dirty":
        return bool(sa.inspect(instance).attrs.name.history.has_changes())
    return how == "deleted"


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: UOWTransaction) -> None:
    # the new/dirty/deleted collections and the attributes' history still hold the
    # flushed changes here
    if session.info.get(_FLAG):
        return
    for how, collection in (("new", session.new), ("dirty", session.dirty), ("deleted", session.deleted)):
        if any(_touches_catalog(instance, how) for instance in collection):
            catalog_changed(session)
            return


@event.listens_for(Session, "do_orm_execute")
def _do_orm_execute(state: ORMExecuteState) -> None:
    if not (state.is_update or state.is_delete or state.is_insert):
        return
    mapper = state.bind_mapper
    if mapper is not None and issubclass(mapper.class_, (*CATALOG_CLASSES, Organisation)):
        catalog_changed(state.session)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    session.flush()  # so the changes still pending are seen by _after_flush
    if not session.info.pop(_FLAG, False):
        return
    table = CatalogState.__table__
    connection = session.connection()
    bumped = connection.execute(
        table.update().where(table.c.id == 1).values(generation=table.c.generation + 1)
    )
    if bumped.rowcount == 0:  # the row is made by migration 0008; recreate it if lost
        connection.execute(table.insert().values(id=1, generation=1))


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost one: committed or rolled back
        session.info.pop(_FLAG, None)


class ResponseCache:
    """Serialised JSON bodies with their ETag, per process, LRU with a time limit."""

    def __init__(self, maxsize: int = MAX_ENTRIES, ttl: float = TTL_SECONDS) -> None:
        self._entries: TTLCache[Hashable, tuple[bytes, str]] = TTLCache(maxsize=maxsize, ttl=ttl)
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: Hashable) -> tuple[bytes, str] | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: Hashable, body: bytes) -> tuple[bytes, str]:
        entry = (body, hashlib.blake2b(body, digest_size=16).hexdigest())
        with self._lock:
            self._entries[key] = entry
        return entry


#: the public catalog's cached answers in this process
catalog_pages = ResponseCache()


class CategoryChoice(NamedTuple):
    slug: str
    name: str


#: the categories of the newest catalog generation this process has read them for
_categories: tuple[int, tuple[CategoryChoice, ...]] | None = None


def categories(session: Session, marketplace: Marketplace) -> tuple[CategoryChoice, ...]:
    """Every category in menu order (the catalog page's filter and the home page), read once
    per catalog generation in this process rather than on every page."""
    global _categories
    generation = marketplace.catalog_generation
    known = _categories
    if known is not None and known[0] == generation:
        return known[1]
    rows = session.execute(sa.select(Category.slug, Category.name).order_by(Category.position, Category.slug))
    found = tuple(CategoryChoice(row.slug, row.name) for row in rows)
    _categories = (generation, found)
    return found


#: catalog cards as HTML, by marketplace, catalog generation, URL prefix and product
_cards: TTLCache[Hashable, str] = TTLCache(maxsize=MAX_CARDS, ttl=TTL_SECONDS)
_cards_lock = threading.Lock()


def cards_html(
    marketplace: Marketplace,
    ids: list[uuid.UUID],
    load: Callable[[list[uuid.UUID]], list[dict[str, Any]]],
    render: Callable[[dict[str, Any]], str],
) -> list[str]:
    """The catalog cards of these products as HTML, in their order.

    A card is the same for everyone who sees it in a marketplace (its prices are the
    marketplace's), so it is rendered once per catalog generation and kept: a catalog page
    whose search is new then only renders the cards not seen lately, and ``load`` (the card
    query) runs for those alone, or not at all. Products ``load`` no longer finds are left
    out.
    """
    base = (marketplace.id, marketplace.catalog_generation, request.script_root)
    with _cards_lock:
        found = {product_id: _cards.get((*base, product_id)) for product_id in ids}
    missing = [product_id for product_id, html in found.items() if html is None]
    if missing:
        fresh = {item["id"]: render(item) for item in load(missing)}
        with _cards_lock:
            for product_id, html in fresh.items():
                _cards[(*base, product_id)] = html
        found.update(fresh)
    return [html for html in (found[product_id] for product_id in ids) if html is not None]


#: the current catalog generation, alone (one row, one column)
_GENERATION = sa.select(sa.func.coalesce(sa.func.max(CatalogState.generation), 0))
#: detached copies of the marketplaces requests were served by, by how a request named
#: them (a host name comes from the client, so this is bounded)
_served: LRUCache[Hashable, Marketplace] = LRUCache(maxsize=256)
_served_lock = threading.Lock()


def served_marketplace(
    session: Session, key: Hashable, find: Callable[[], Marketplace | None]
) -> Marketplace | None:
    """The marketplace a request is for, found by ``find`` (by host or by slug) once per
    catalog generation in this process, and otherwise put into ``session`` from memory.

    Every request needs its marketplace, and the ORM query for it is as costly as a whole
    page from the cache. A marketplace row is part of the catalog (:data:`CATALOG_CLASSES`):
    any change to it (branding, deactivation, a new domain) moves the generation, so a
    copy read at the current generation is the row as it is. Checking the generation is
    one small query, the same single round trip as before.
    """
    with _served_lock:
        known = _served.get(key)
    if known is not None and session.scalar(_GENERATION) == known.catalog_generation:
        return session.merge(known, load=False)
    found = find()
    if found is not None:
        columns = sa.inspect(Marketplace).column_attrs
        copy = Marketplace(**{column.key: getattr(found, column.key) for column in columns})
        sa.orm.make_transient_to_detached(copy)
        with _served_lock:
            _served[key] = copy
    return found


#: published products as an order reads them (live version, plans, prices), by marketplace,
#: catalog generation and how the order named them
_orderable: TTLCache[Hashable, Product] = TTLCache(maxsize=1024, ttl=TTL_SECONDS)
_orderable_lock = threading.Lock()


def orderable_product(
    session: Session, marketplace: Marketplace, ref: str, find: Callable[[Session], Product | None]
) -> Product | None:
    """The product ``find`` finds (a published one, with its live version's plans and
    prices), once per catalog generation in this process.

    Each order needs its product's prices, and loading them through the ORM costs more than
    the order's own inserts. Any change to a product, its plans, prices or selection moves
    the generation (:data:`CATALOG_CLASSES`), which the request read with its marketplace.
    The copy is loaded by a session of its own on the request's connection and closed at
    once, so it is detached, complete, and never part of a request's session: callers only
    read it (ids, plans, prices, targets) and must not change or attach it.
    """
    session.flush()  # if anything is pending, _after_flush says whether it changes the catalog
    if session.info.get(_FLAG):
        return find(session)  # its own, uncommitted catalog: neither from the cache nor into it
    key = (marketplace.id, marketplace.catalog_generation, ref)
    with _orderable_lock:
        cached = _orderable.get(key)
    if cached is not None:
        return cached
    with Session(bind=session.connection()) as private:
        found = find(private)
        private.expunge_all()
    if found is not None:  # only what is sold: any reference a client sends would evict those
        with _orderable_lock:
            _orderable[key] = found
    return found


def clear() -> None:
    """Forget everything cached in this process (tests roll back, so generations repeat)."""
    global _categories
    catalog_pages.clear()
    with _cards_lock:
        _cards.clear()
    with _served_lock:
        _served.clear()
    with _orderable_lock:
        _orderable.clear()
    _categories = None


def cached_by_catalog(view: Callable[P, ResponseReturnValue]) -> Callable[P, ResponseReturnValue]:
    """Serve a public catalog view's JSON from :data:`catalog_pages`.

    Put it above flask-smorest's decorators: a query seen before is answered before its
    arguments are even parsed. The key is the marketplace, its catalog generation and the
    raw query string; only 200 answers are kept, so a bad query is checked every time.
    Answers carry an ETag and ``Cache-Control: public, no-cache``; a matching
    ``If-None-Match`` gets a 304.
    """

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        marketplace: Marketplace = g.marketplace
        key = (request.endpoint, marketplace.id, marketplace.catalog_generation, request.query_string)
        entry = catalog_pages.get(key)
        if entry is None:
            fresh = current_app.make_response(view(*args, **kwargs))
            if fresh.status_code != 200 or not fresh.is_json:
                return fresh
            entry = catalog_pages.put(key, fresh.get_data())
        body, etag = entry
        response = Response(body, mimetype="application/json")
        response.set_etag(etag)
        # shared caches may keep it, but must ask again each time (the ETag makes that cheap)
        response.headers["Cache-Control"] = "public, no-cache"
        response.make_conditional(request)  # a 304 when If-None-Match matches
        return response

    return wrapper


#: what a page stored for visitors may carry besides its body: nothing set by the view
_PLAIN_PAGE_HEADERS = frozenset({"Content-Type", "Content-Length"})
#: a form's CSRF field: it belongs to one browser session, so such a page is never stored
_CSRF_FIELD = b'name="csrf_token"'


def _page_key() -> Hashable:
    """What a public page depends on, besides the catalog: the URL asked and the whole
    marketplace row (its name, colours, description and footer show on every page), which
    carries the catalog generation."""
    marketplace: Marketplace = g.marketplace
    row = tuple(getattr(marketplace, attr.key) for attr in sa.inspect(Marketplace).column_attrs)
    return ("page", request.endpoint, request.host_url, request.path, request.query_string, row)


def _for_visitors() -> bool:
    """A GET by a visitor who is not signed in and has no flash message waiting."""
    return (
        request.method == "GET"
        and g.get("identity") is None
        and "_flashes" not in browser_session
        and isinstance(g.get("marketplace"), Marketplace)
    )


def _shareable(response: Response) -> bool:
    """A page every visitor who is not signed in would get the same: a 200 HTML page
    with no header of its own, no flash message shown and no CSRF field."""
    return (
        response.status_code == 200
        and response.content_type == "text/html; charset=utf-8"
        and set(response.headers.keys()) <= _PLAIN_PAGE_HEADERS
        and g.get("identity") is None
        and "_flashes" not in browser_session
        and not get_flashed_messages()  # those shown by this response
        and _CSRF_FIELD not in response.get_data()
    )


def cached_page(view: Callable[P, ResponseReturnValue]) -> Callable[P, ResponseReturnValue]:
    """Serve a public storefront page to visitors who are not signed in from
    :data:`catalog_pages`, with the same invalidation as the API's answers.

    Put it below the route decorator. Only a GET without a signed-in user and without a
    flash message waiting is answered from memory or stored; a signed-in user's page (their
    name, their forms' CSRF tokens) is always rendered for them. What is stored is the HTML
    body of a 200 answer that carries no CSRF field and no header of its own, keyed by the
    URL, the marketplace row and the catalog generation; the response around it is made
    afresh, and the template context processors run as for a rendered page, so the session
    (its CSRF token, its cookie) is kept exactly as rendering would keep it.
    """

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        if not _for_visitors():
            return view(*args, **kwargs)
        key = _page_key()
        entry = catalog_pages.get(key)
        if entry is None:
            fresh = current_app.make_response(view(*args, **kwargs))
            if _shareable(fresh):
                catalog_pages.put(key, fresh.get_data())
            return fresh
        current_app.update_template_context({})
        return current_app.response_class(entry[0], mimetype="text/html")

    return wrapper


def generation(session: Session) -> int:
    """The current catalog generation (for tests and diagnostics)."""
    return int(session.scalar(sa.select(CatalogState.generation).where(CatalogState.id == 1)) or 0)
