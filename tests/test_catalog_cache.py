"""The cached public catalog: answers come from memory while the catalog is unchanged, and
every change that shows on a card (a product published or retired, a review written or
hidden, a vendor renamed) is visible on the very next request."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts.models import Organisation, OrganisationKind, Role, User
from cmw.catalog import cache, reviews
from cmw.catalog.models import Product
from cmw.extensions import db
from tests.catalog_data import post, publish

Headers = Callable[..., dict[str, str]]
SEARCH = "/api/v1/products?q=wiki&per_page=10"


@contextmanager
def statements(app: Flask) -> Iterator[list[str]]:
    """The SQL statements sent while the block runs (savepoints of the test's
    transaction left out)."""
    with app.app_context():
        engine = db.engine
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "SAVEPOINT" not in statement:
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def slugs(client: FlaskClient, url: str = SEARCH) -> list[str]:
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    return [item["slug"] for item in response.get_json()["items"]]


@pytest.fixture
def vendor(make_user: Callable[..., User]) -> User:
    return make_user(Role.VENDOR)


@pytest.fixture
def admin_h(make_user: Callable[..., User], token_for: Headers) -> dict[str, str]:
    return token_for(make_user(Role.ADMIN))


def test_a_repeated_search_costs_no_catalog_query(
    app: Flask, client: FlaskClient, vendor: User, token_for: Headers, admin_h: dict[str, str]
) -> None:
    publish(client, token_for(vendor), admin_h)
    first = client.get(SEARCH)
    assert [i["slug"] for i in first.get_json()["items"]] == ["wiki-server"]
    with statements(app) as sent:
        again = client.get(SEARCH)
    assert again.get_data() == first.get_data()
    # only the catalog generation was read (the marketplace is in memory at that generation)
    assert len(sent) == 1 and "FROM catalog_state" in sent[0], sent
    assert len(cache.catalog_pages) == 1
    # another query is another entry, computed from the database
    with statements(app) as sent:
        assert slugs(client, "/api/v1/products?q=wiki&per_page=5") == ["wiki-server"]
    assert len(sent) > 1 and len(cache.catalog_pages) == 2


def test_publishing_and_retiring_show_on_the_next_request(
    client: FlaskClient, vendor: User, token_for: Headers, admin_h: dict[str, str]
) -> None:
    vendor_h = token_for(vendor)
    first = publish(client, vendor_h, admin_h)
    assert slugs(client) == ["wiki-server"]
    publish(client, vendor_h, admin_h, slug="wiki-two", name="Wiki Two")
    assert sorted(slugs(client)) == ["wiki-server", "wiki-two"]
    retired = post(client, f"/api/v1/vendor/products/{first['id']}/retire", vendor_h)
    assert retired.status_code == 200, retired.get_data(as_text=True)
    assert slugs(client) == ["wiki-two"]


def test_reviews_and_vendor_names_show_on_the_next_request(
    client: FlaskClient,
    make_user: Callable[..., User],
    vendor: User,
    token_for: Headers,
    admin_h: dict[str, str],
    db_session: Session,
) -> None:
    publish(client, token_for(vendor), admin_h)

    def card() -> dict[str, Any]:
        item: dict[str, Any] = client.get(SEARCH).get_json()["items"][0]
        return item

    assert card()["rating"] == {"average": None, "count": 0}
    customer = make_user(Role.CUSTOMER)
    organisation_id = customer.memberships[0].organisation_id
    previous = reviews.set_eligibility(lambda _s, org, _p: org == organisation_id)
    try:
        written = client.put(
            "/api/v1/products/wiki-server/reviews/mine",
            json={"rating": 4, "comment": "Good"},
            headers=token_for(customer),
        )
    finally:
        reviews.set_eligibility(previous)
    assert written.status_code == 200, written.get_data(as_text=True)
    assert card()["rating"] == {"average": 4.0, "count": 1}
    hidden = client.patch(
        f"/api/v1/admin/reviews/{written.get_json()['id']}", json={"hidden": True}, headers=admin_h
    )
    assert hidden.status_code == 200, hidden.get_data(as_text=True)
    assert card()["rating"] == {"average": None, "count": 0}

    vendor_org = db_session.get(Organisation, vendor.memberships[0].organisation_id)
    assert vendor_org is not None and vendor_org.kind == OrganisationKind.VENDOR
    vendor_org.name = "Renamed Vendor"
    db_session.commit()
    assert card()["vendor_name"] == "Renamed Vendor"


def test_etag_answers_304_until_the_catalog_changes(
    client: FlaskClient, vendor: User, token_for: Headers, admin_h: dict[str, str]
) -> None:
    vendor_h = token_for(vendor)
    publish(client, vendor_h, admin_h)
    first = client.get(SEARCH)
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "public, no-cache"
    unchanged = client.get(SEARCH, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.get_data() == b""
    publish(client, vendor_h, admin_h, slug="wiki-two", name="Wiki Two")
    changed = client.get(SEARCH, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert len(changed.get_json()["items"]) == 2


def test_bad_queries_are_still_checked_before_the_cache(client: FlaskClient) -> None:
    assert client.get("/api/v1/products?per_page=20").status_code == 200
    response = client.get("/api/v1/products?per_page=500")
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["field"] == "per_page"


def test_the_generation_moves_only_when_a_catalog_change_commits(
    committed_db: sessionmaker[Session], make_organisation: Callable[..., Organisation]
) -> None:
    with committed_db() as session:
        start = cache.generation(session)
        vendor = Organisation(
            marketplace_id=session.scalar(sa.text("SELECT id FROM marketplaces WHERE kind = 'platform'")),
            kind=OrganisationKind.VENDOR,
            name="Gen Vendor",
            legal_name="Gen Vendor Ltd",
            country="IT",
        )
        session.add(vendor)
        session.flush()
        session.rollback()
        assert cache.generation(session) == start  # rolled back: nothing to see

        customer = Organisation(
            marketplace_id=session.scalar(sa.text("SELECT id FROM marketplaces WHERE kind = 'platform'")),
            kind=OrganisationKind.CUSTOMER,
            name="Gen Customer",
            legal_name="Gen Customer Srl",
            country="IT",
        )
        session.add(customer)
        session.commit()
        assert cache.generation(session) == start  # customers are not on cards

        session.add(
            Organisation(
                marketplace_id=customer.marketplace_id,
                kind=OrganisationKind.VENDOR,
                name="Gen Vendor",
                legal_name="Gen Vendor Ltd",
                country="IT",
            )
        )
        session.commit()
        assert cache.generation(session) == start + 1

        # an ORM-enabled bulk UPDATE of products counts too
        session.execute(
            sa.update(Product).where(Product.id == uuid.uuid4()).values(rating_count=0),
            execution_options={"synchronize_session": False},
        )
        session.commit()
        assert cache.generation(session) == start + 2
