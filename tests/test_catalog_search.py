"""Catalog queries on PostgreSQL with a few hundred published products: full-text
search, filters, sort, pagination and compare."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts import service as accounts
from cmw.accounts.models import OrganisationKind
from cmw.catalog import cache, presenters, search, service
from cmw.catalog.models import BillingPeriod, ComponentKind, Product, ProductType
from cmw.catalog.pricing import ComponentSpec, PlanSpec
from cmw.extensions import db
from cmw.marketplaces.service import platform
from tests.conftest import truncate

CATEGORIES = ["databases", "devops", "security", "analytics", "web"]
WORDS = ["backup", "dashboard", "firewall", "pipeline", "cache", "queue", "ledger", "wiki"]


@dataclasses.dataclass
class Made:
    slug: str
    category: str
    tags: list[str]
    words: list[str]
    vendor: str
    product_type: ProductType
    trial_days: int
    monthly: Decimal
    currency: str
    rating: tuple[int, int]


@pytest.fixture(scope="module")
def catalog(app: Flask) -> Iterator[dict[str, Made]]:
    """300 published products (committed), removed after the module."""
    rng = random.Random(7)
    made: dict[str, Made] = {}
    with app.app_context():
        engine = db.engine
    with Session(engine) as session:
        marketplace = platform(session)
        admin = accounts.create_user(
            session, email="search-admin@example.test", name="A", password="x-long-password"
        )
        vendors = [
            accounts.create_organisation(
                session, marketplace, kind=OrganisationKind.VENDOR, name=f"Vendor {i}",
                billing=accounts.BillingDetails(legal_name=f"Vendor {i} Ltd", country="DE"),
            )
            for i in range(5)
        ]  # fmt: skip
        for n in range(300):
            words = rng.sample(WORDS, 2)
            category = CATEGORIES[n % len(CATEGORIES)]
            product_type = ProductType.BARE_VM if n % 3 == 0 else ProductType.VM_APP
            tags = sorted({rng.choice(["linux", "ha", "gpu", "eu-hosted"]), words[0]})
            currency = "USD" if n % 10 == 0 else "EUR"
            monthly = Decimal(rng.randrange(500, 50_000)) / 100
            yearly = n % 4 == 0
            vendor = vendors[n % len(vendors)]
            slug = f"product-{n:03d}"
            product = service.create_product(
                session, marketplace, vendor, slug=slug,
                content={
                    "name": f"{words[0].title()} {words[1]} {n}",
                    "short_description": f"A {words[0]} for teams",
                    "long_description": f"All about {words[1]}.",
                    "category_slug": category,
                    "tags": tags,
                    "product_type": product_type,
                    "trial_days": 0 if n % 2 else 14,
                    "deployment": [
                        {
                            "cloud_account": "aws", "region": None, "image": "ami-1",
                            "size": {"cores": 1 + n % 8, "ram_mib": 1024, "root_disk_gib": 10},
                            "inbound_ports": [],
                            "data_disk_gib": 10 if product_type is ProductType.VM_APP else None,
                            "setup_script": "run" if product_type is ProductType.VM_APP else None,
                            "app_url_template": None, "default_login": None,
                        }
                    ],
                },
            )  # fmt: skip
            service.set_plans(
                session,
                product,
                [
                    PlanSpec(
                        code="main",
                        name="Main",
                        currency=currency,
                        billing_period=BillingPeriod.YEAR if yearly else BillingPeriod.MONTH,
                        components=(
                            ComponentSpec(
                                kind=ComponentKind.FLAT,
                                label="Fee",
                                unit_price=monthly * 12 if yearly else monthly,
                            ),
                        ),
                    )
                ],
            )
            service.submit(session, product)
            service.approve(session, product, admin)
            count = rng.randrange(0, 6)
            rating_sum = sum(rng.randrange(1, 6) for _ in range(count))
            product.rating_count, product.rating_sum = count, rating_sum
            made[slug] = Made(
                slug, category, tags, words, vendor.name, product_type, 0 if n % 2 else 14,
                monthly, currency, (count, rating_sum),
            )  # fmt: skip
        service.create_product(
            session, marketplace, vendors[0], slug="never-published",
            content={
                "name": "Backup draft", "category_slug": "databases", "product_type": ProductType.BARE_VM,
            },
        )  # fmt: skip
        session.commit()
    yield made
    truncate(engine)


def all_pages(client: FlaskClient, query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        body = client.get(f"/api/v1/products?{query}&per_page=50&page={page}").get_json()
        items.extend(body["items"])
        if page >= body["pages"]:
            assert len(items) == body["total"]
            return items
        page += 1


def test_pagination_covers_the_catalog_once(client: FlaskClient, catalog: dict[str, Made]) -> None:
    first = client.get("/api/v1/products?per_page=20").get_json()
    assert first["total"] == 300 and first["pages"] == 15 and len(first["items"]) == 20
    slugs = [p["slug"] for p in all_pages(client, "sort=newest")]
    assert sorted(slugs) == sorted(catalog) and len(set(slugs)) == 300
    assert "never-published" not in slugs


def test_full_text_search_finds_exactly_the_matching_products(
    client: FlaskClient, catalog: dict[str, Made]
) -> None:
    found = {p["slug"] for p in all_pages(client, "q=firewall")}
    expected = {m.slug for m in catalog.values() if "firewall" in m.words}
    assert found == expected and found
    # Stemming: the plural finds the singular.
    assert {p["slug"] for p in all_pages(client, "q=firewalls")} == expected
    # Web-search syntax: exclude a word.
    excluded = {p["slug"] for p in all_pages(client, "q=firewall -cache")}
    assert excluded == {m.slug for m in catalog.values() if "firewall" in m.words and "cache" not in m.words}


def test_relevance_ranks_more_mentions_first(client: FlaskClient, catalog: dict[str, Made]) -> None:
    results = client.get("/api/v1/products?q=backup&per_page=100").get_json()["items"]
    # A product whose name and short description both say backup outranks one that only
    # mentions it in the long description.
    positions = {p["slug"]: i for i, p in enumerate(results)}
    strong = [m.slug for m in catalog.values() if m.words[0] == "backup"]
    weak = [m.slug for m in catalog.values() if m.words[1] == "backup"]
    assert strong and weak
    assert max(positions[s] for s in strong) < min(positions[w] for w in weak)


@pytest.mark.parametrize(
    ("query", "predicate"),
    [
        ("category=security", lambda m: m.category == "security"),
        ("tag=gpu", lambda m: "gpu" in m.tags),
        ("product_type=bare_vm", lambda m: m.product_type is ProductType.BARE_VM),
        ("has_trial=true", lambda m: m.trial_days > 0),
        ("has_trial=false", lambda m: m.trial_days == 0),
        (
            "min_price=100&max_price=200&currency=eur",
            lambda m: m.currency == "EUR" and 100 <= m.monthly <= 200,
        ),
        (
            "q=queue&category=web&has_trial=true",
            lambda m: "queue" in m.words and m.category == "web" and m.trial_days,
        ),
    ],
)
def test_filters(client: FlaskClient, catalog: dict[str, Made], query: str, predicate: Any) -> None:
    found = {p["slug"] for p in all_pages(client, query)}
    expected = {m.slug for m in catalog.values() if predicate(m)}
    assert found == expected and found


def test_vendor_filter(client: FlaskClient, catalog: dict[str, Made]) -> None:
    first = client.get("/api/v1/products?per_page=1").get_json()["items"][0]
    found = all_pages(client, f"vendor_id={first['vendor_id']}")
    assert {p["vendor_name"] for p in found} == {first["vendor_name"]}
    assert len(found) == sum(1 for m in catalog.values() if m.vendor == first["vendor_name"])


def test_sort_by_price_rating_and_newest(client: FlaskClient, catalog: dict[str, Made]) -> None:
    cheap = [
        Decimal(p["price_from"]["amount"]) for p in all_pages(client, "sort=price&currency=EUR&min_price=0")
    ]
    assert cheap == sorted(cheap) and len(cheap) == sum(1 for m in catalog.values() if m.currency == "EUR")
    dear = [
        Decimal(p["price_from"]["amount"]) for p in all_pages(client, "sort=-price&currency=EUR&min_price=0")
    ]
    assert dear == sorted(dear, reverse=True)
    rated = [p["rating"] for p in all_pages(client, "sort=rating")]
    averages = [r["average"] or 0 for r in rated]
    assert averages == sorted(averages, reverse=True)
    newest = [p["published_at"] for p in all_pages(client, "sort=newest")]
    assert newest == sorted(newest, reverse=True)


def test_yearly_plans_count_a_twelfth(client: FlaskClient, catalog: dict[str, Made]) -> None:
    yearly = client.get("/api/v1/products/product-004").get_json()
    assert Decimal(yearly["price_from"]["amount"]) == catalog["product-004"].monthly
    assert yearly["price_from"]["period"] == "month"


def test_bad_queries_are_422(client: FlaskClient, catalog: dict[str, Made]) -> None:
    for query, field in [
        ("sort=cheapest", "sort"),
        ("min_price=10&max_price=5", "min_price"),
        ("min_price=abc", "min_price"),
        ("product_type=container", "product_type"),
    ]:
        response = client.get(f"/api/v1/products?{query}")
        assert response.status_code == 422, query
        assert field in {e["field"] for e in response.get_json()["errors"]}


def test_compare_two_to_four_products(client: FlaskClient, catalog: dict[str, Made]) -> None:
    body = client.get("/api/v1/products/compare?products=product-001,product-002,product-003").get_json()
    assert [p["slug"] for p in body] == ["product-001", "product-002", "product-003"]
    assert body[0]["plans"][0]["code"] == "main" and body[0]["sizes"][0]["cores"] == 2
    assert body[1]["rating"]["count"] == catalog["product-002"].rating[0]
    for query in ("products=product-001", "products=a,b,c,d,e", "products=product-001,product-001"):
        assert client.get(f"/api/v1/products/compare?{query}").status_code == 422, query
    missing = client.get("/api/v1/products/compare?products=product-001,never-published")
    assert missing.status_code == 404 and "never-published" in missing.get_json()["detail"]


def test_counts_come_from_the_database(db_session: Session, catalog: dict[str, Made]) -> None:
    published = db_session.scalar(
        sa.select(sa.func.count()).select_from(Product).where(Product.published_at.is_not(None))
    )
    assert published == 300


def test_the_search_index_has_no_pending_list(db_session: Session, catalog: dict[str, Made]) -> None:
    """GIN's pending list (fastupdate) would make every search scan the products saved since
    the last vacuum one by one; the catalog is searched far more often than it is written."""
    options = db_session.scalar(
        sa.text("SELECT reloptions FROM pg_class WHERE relname = 'ix_product_versions_search'")
    )
    assert options is not None and "fastupdate=off" in options
    pending = db_session.scalar(
        sa.text("SELECT gin_clean_pending_list('ix_product_versions_search'::regclass)")
    )
    assert pending == 0  # the 300 products just saved went straight into the index


def test_searches_of_one_shape_share_a_statement_with_their_own_values(
    client: FlaskClient, catalog: dict[str, Made]
) -> None:
    """Searches come with ever new words and prices: the statement is built once per shape
    (which filters, which sort) and marketplace, and each search runs with its own values."""
    search._ids_statement.cache_clear()
    for word in ("firewall", "queue", "ledger"):
        for low in (0, 150):
            found = {p["slug"] for p in all_pages(client, f"q={word}&min_price={low}&currency=eur")}
            expected = {
                m.slug
                for m in catalog.values()
                if word in m.words and m.currency == "EUR" and m.monthly >= low
            }
            assert found == expected and found, (word, low)
    assert search._ids_statement.cache_info().misses == 1


def test_product_pages_share_a_statement_with_their_own_product(
    client: FlaskClient, catalog: dict[str, Made]
) -> None:
    cache.clear()
    presenters._product_statement.cache_clear()
    for n in (1, 2, 3):
        made = catalog[f"product-{n:03d}"]
        name = f"{made.words[0].title()} {made.words[1]} {n}"
        shown = client.get(f"/api/v1/products/{made.slug}").get_json()
        assert (shown["slug"], shown["name"]) == (made.slug, name)
        assert shown["rating"]["count"] == made.rating[0]
        page = client.get(f"/products/{made.slug}").get_data(as_text=True)
        assert f"<h1>{name}</h1>" in page and f"by {made.vendor}" in page
    assert presenters._product_statement.cache_info().misses == 1
    assert client.get("/api/v1/products/never-published").status_code == 404
