"""The storefront's page cache: visitors who are not signed in get the stored page without a
catalog query, a change shows on the next request, and nothing that belongs to one user
(their name, a CSRF token, a flash message) is ever stored or shown to another."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts.models import Organisation, Role, User
from cmw.catalog import cache, reviews
from cmw.catalog.models import Category
from cmw.extensions import db
from cmw.marketplaces.models import Marketplace
from tests.catalog_data import publish
from tests.conftest import PASSWORD

Headers = Callable[..., dict[str, str]]


@contextmanager
def _statements(app: Flask) -> Iterator[list[str]]:
    seen: list[str] = []
    with app.app_context():
        engine = db.engine

    def record(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if "SAVEPOINT" not in statement:
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _signed_in(client: FlaskClient, user: User) -> None:
    r = client.post("/api/v1/session", json={"email": user.email, "password": PASSWORD})
    assert r.status_code == 200, r.get_data(as_text=True)


def test_public_pages_come_from_memory_until_the_catalog_changes(
    app: Flask, client: FlaskClient, make_user: Callable[..., User], token_for: Headers, db_session: Session
) -> None:
    vendor = make_user(Role.VENDOR)
    vendor_h, admin_h = token_for(vendor), token_for(make_user(Role.ADMIN))
    publish(client, vendor_h, admin_h)
    for url in ("/", "/products", "/products?q=wiki", "/products/wiki-server"):
        first = app.test_client().get(url)
        assert first.status_code == 200
        # a visitor's page writes nothing to their session: no cookie, so shared caches may keep it
        assert "Set-Cookie" not in first.headers and first.headers["Vary"] == "Cookie"
        with _statements(app) as seen:
            second = app.test_client().get(url)
        assert second.get_data() == first.get_data(), url
        assert "Set-Cookie" not in second.headers and second.headers["Vary"] == "Cookie", second.headers
        assert second.headers["Content-Type"] == first.headers["Content-Type"]
        assert not any("product" in s for s in seen), (url, seen)
    # a new product shows on the next request
    publish(client, vendor_h, admin_h, slug="backup-vault", name="Backup Vault", short_description="B.")
    assert "Backup Vault" in app.test_client().get("/products").get_data(as_text=True)
    assert "Backup Vault" in app.test_client().get("/").get_data(as_text=True)
    # a review and its reviewer's name, then a rename of the reviewer
    customer = make_user(Role.CUSTOMER)
    org_id = customer.memberships[0].organisation_id
    previous = reviews.set_eligibility(lambda _s, org, _p: org == org_id)
    try:
        w = client.put(
            "/api/v1/products/wiki-server/reviews/mine",
            json={"rating": 4, "comment": "Good one"},
            headers=token_for(customer),
        )
    finally:
        reviews.set_eligibility(previous)
    assert w.status_code == 200
    page = app.test_client().get("/products/wiki-server").get_data(as_text=True)
    assert "Good one" in page
    org = db_session.get(Organisation, org_id)
    assert org is not None
    org.name = "Renamed Customer Org"
    db_session.commit()
    page = app.test_client().get("/products/wiki-server").get_data(as_text=True)
    assert "Renamed Customer Org" in page
    # the marketplace's branding shows on the next request
    mp = db_session.scalar(sa.select(Marketplace).where(Marketplace.kind == "platform"))
    assert mp is not None
    mp.name = "Renamed Market"
    db_session.commit()
    assert "Renamed Market" in app.test_client().get("/products").get_data(as_text=True)


def test_nothing_of_one_user_is_stored_or_shown_to_another(
    app: Flask, client: FlaskClient, make_user: Callable[..., User], token_for: Headers
) -> None:
    vendor_h, admin_h = token_for(make_user(Role.VENDOR)), token_for(make_user(Role.ADMIN))
    publish(client, vendor_h, admin_h)
    user = make_user(Role.CUSTOMER)
    signed = app.test_client()
    _signed_in(signed, user)
    for url in ("/", "/products", "/products/wiki-server"):
        cache.catalog_pages.clear()
        html = signed.get(url).get_data(as_text=True)
        assert user.name in html and 'name="csrf_token"' in html
        assert len(cache.catalog_pages) == 0, url
        anonymous = app.test_client().get(url).get_data(as_text=True)
        assert user.name not in anonymous and 'name="csrf_token"' not in anonymous
        assert len(cache.catalog_pages) == 1
        again = signed.get(url).get_data(as_text=True)
        assert user.name in again and 'name="csrf_token"' in again
    # a flash message waiting: shown, not stored, not shown to the next visitor
    cache.catalog_pages.clear()
    visitor = app.test_client()
    visitor.get("/products")
    assert len(cache.catalog_pages) == 1
    with visitor.session_transaction() as s:
        s["_flashes"] = [("info", "Only for you")]
    html = visitor.get("/products").get_data(as_text=True)
    assert "Only for you" in html
    assert "Only for you" not in visitor.get("/products").get_data(as_text=True)
    assert "Only for you" not in app.test_client().get("/products").get_data(as_text=True)
    # a 404 and a 422 are not stored
    cache.catalog_pages.clear()
    assert app.test_client().get("/products/nothing").status_code == 404
    assert app.test_client().get("/products?max_price=lots").status_code == 422
    assert len(cache.catalog_pages) == 0


def test_a_page_not_in_memory_reads_only_what_it_shows(
    app: Flask, client: FlaskClient, make_user: Callable[..., User], token_for: Headers, db_session: Session
) -> None:
    """Every product page of a large catalog is asked for now and then, so one not in memory
    must be cheap too: the product with its live version in one query, its plans and prices
    in one more (not a lazy load each), and the categories once per catalog generation, not
    per page."""
    vendor_h, admin_h = token_for(make_user(Role.VENDOR)), token_for(make_user(Role.ADMIN))
    publish(client, vendor_h, admin_h)
    cache.clear()
    with _statements(app) as seen:
        page = app.test_client().get("/products/wiki-server")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Wiki Server" in html and "Sign in to order" in html
    # the marketplace (with the catalog generation), the product, its plans, its reviews
    assert len(seen) == 4, seen
    assert "product_versions" in seen[1] and "organisations" in seen[1] and "plans" not in seen[1]
    assert "FROM plans LEFT OUTER JOIN price_components" in seen[2]
    assert "FROM reviews" in seen[3]
    app.test_client().get("/products?q=wiki")
    cache.catalog_pages.clear()
    with _statements(app) as seen:
        listed = app.test_client().get("/products?q=wiki")
    assert "Wiki Server" in listed.get_data(as_text=True)
    assert not any("FROM categories" in s for s in seen), seen
    # a new category is a catalog change: it shows on the next page
    db_session.add(Category(slug="brand-new", name="Brand New Category", position=99))
    db_session.commit()
    assert "Brand New Category" in app.test_client().get("/products?q=wiki").get_data(as_text=True)
    assert "Brand New Category" in app.test_client().get("/").get_data(as_text=True)


def test_a_new_search_renders_only_the_cards_not_seen_lately(
    app: Flask, client: FlaskClient, make_user: Callable[..., User], token_for: Headers, db_session: Session
) -> None:
    """A catalog page whose search is new (not in memory) finds its product ids, and takes
    the cards it has shown lately from memory: no card query, no rendering. A change to the
    catalog shows on the next page, signed in or not."""
    vendor_h, admin_h = token_for(make_user(Role.VENDOR)), token_for(make_user(Role.ADMIN))
    publish(client, vendor_h, admin_h)
    publish(client, vendor_h, admin_h, slug="backup-vault", name="Backup Vault", short_description="B.")
    cache.clear()
    with _statements(app) as seen:
        first = app.test_client().get("/products").get_data(as_text=True)
    assert "Wiki Server" in first and "Backup Vault" in first
    assert sum("logo_card_key" in s for s in seen) == 1, seen  # the card query
    with _statements(app) as seen:
        second = app.test_client().get("/products?sort=newest").get_data(as_text=True)
    assert "Wiki Server" in second and "Backup Vault" in second
    assert not any("logo_card_key" in s for s in seen), seen
    # a search finding one card seen and none new: the same card, byte for byte
    wiki_card = first[first.index('<li class="card">') :]
    wiki_card = wiki_card[: wiki_card.index("</li>") + 5]
    assert wiki_card in second
    # signed-in users see the same cards; the vendor's new name shows on the next page for both
    user = make_user(Role.CUSTOMER)
    signed = app.test_client()
    _signed_in(signed, user)
    assert "Backup Vault" in signed.get("/products?q=backup").get_data(as_text=True)
    vendor_org = db_session.scalar(sa.select(Organisation).where(Organisation.kind == "vendor"))
    assert vendor_org is not None and vendor_org.name not in ("Renamed Vendor",)
    vendor_org.name = "Renamed Vendor"
    db_session.commit()
    for browser in (signed, app.test_client()):
        html = browser.get("/products?q=backup").get_data(as_text=True)
        assert "by Renamed Vendor" in html and "Backup Vault" in html


def test_the_marketplace_is_read_once_per_catalog_generation(
    app: Flask,
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    db_session: Session,
    make_marketplace: Callable[..., Marketplace],
) -> None:
    """Every request needs its marketplace: it comes from memory while the catalog
    generation is the same (one small query checks it), and a change to the marketplace
    shows on the next request."""
    vendor_h, admin_h = token_for(make_user(Role.VENDOR)), token_for(make_user(Role.ADMIN))
    publish(client, vendor_h, admin_h)
    visitor = app.test_client()
    assert visitor.get("/products").status_code == 200
    with _statements(app) as seen:
        page = visitor.get("/products?q=wiki")
    assert "Wiki Server" in page.get_data(as_text=True)
    assert not any("FROM marketplaces" in s for s in seen), seen
    assert any("catalog_state" in s for s in seen), seen
    mp = db_session.scalar(sa.select(Marketplace).where(Marketplace.kind == "platform"))
    assert mp is not None
    mp.name = "Market Renamed Again"
    db_session.commit()
    with _statements(app) as seen:
        html = visitor.get("/products?q=wiki").get_data(as_text=True)
    assert "Market Renamed Again" in html
    assert any("FROM marketplaces" in s for s in seen), seen
    # each host name gets its own marketplace, from memory too
    child = make_marketplace(name="Child Market", domain="child.test")
    db_session.commit()
    for _ in range(2):
        child_page = app.test_client().get("/products", headers={"Host": "child.test"}).get_data(as_text=True)
        platform_page = app.test_client().get("/products?q=x").get_data(as_text=True)
        assert "Child Market" in child_page and "Child Market" not in platform_page
        assert "Market Renamed Again" in platform_page and "Market Renamed Again" not in child_page
    assert child.id in {m.id for m in cache._served.values()}
