"""Bulk rows for the catalog benchmark: published products with plans, and reviews.

Written with SQLAlchemy Core in batches rather than through the services: the point is a
large, realistic table to query, quickly. The rows follow the same rules (approved live
version, search text, price from, rating aggregates) the services maintain.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cmw.accounts.models import Organisation
from cmw.assets import models as _assets  # noqa: F401  (Marketplace.logo names Image)
from cmw.catalog.models import Category, Plan, PriceComponent, Product, ProductVersion, Review
from cmw.marketplaces.models import Marketplace

WORDS = [
    "backup",
    "database",
    "dashboard",
    "firewall",
    "pipeline",
    "cache",
    "queue",
    "ledger",
    "wiki",
    "monitor",
    "vpn",
    "mail",
    "search",
    "analytics",
    "gateway",
    "registry",
    "storage",
    "crm",
    "erp",
    "chat",
    "forms",
    "survey",
    "cms",
    "shop",
    "booking",
    "tracker",
    "vault",
]
BATCH = 2000


def _batches(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), BATCH):
        yield rows[start : start + BATCH]


def _insert(conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    for batch in _batches(rows):
        conn.execute(table.insert(), list(batch))


def seed(
    database_url: str, products: int = 10_000, reviews: int = 100_000, seed_value: int = 42
) -> dict[str, int]:
    rng = random.Random(seed_value)
    engine = sa.create_engine(database_url)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        marketplace_id = conn.scalar(sa.select(Marketplace.id).where(Marketplace.kind == "platform"))
        categories = list(conn.scalars(sa.select(Category.slug)))

        def organisation(kind: str, n: int) -> dict[str, Any]:
            return {
                "id": uuid.uuid4(),
                "marketplace_id": marketplace_id,
                "kind": kind,
                "name": f"{kind} {n}",
                "legal_name": f"{kind.title()} {n} Ltd",
                "country": "IT",
                "vat_number": None,
                "address_line1": "",
                "address_line2": "",
                "postal_code": "",
                "city": "",
                "region": "",
                "billing_email": None,
                "created_at": now,
                "updated_at": now,
            }

        vendors = [organisation("vendor", n) for n in range(50)]
        customers = [organisation("customer", n) for n in range(max(20, reviews // max(products, 1) * 2))]
        _insert(conn, Organisation.__table__, vendors + customers)

        product_rows, version_rows, plan_rows, component_rows = [], [], [], []
        for n in range(products):
            words = rng.sample(WORDS, 3)
            name = f"{words[0].title()} {words[1].title()} {n}"
            short = f"A {words[0]} and {words[1]} service for teams"
            long = f"{name} gives you {words[2]} and {words[0]} on your own cloud. " * 5
            tags = sorted({words[2], rng.choice(["linux", "ha", "gpu", "eu-hosted"])})
            monthly = Decimal(rng.randrange(500, 50_000)) / 100
            product_id, version_id, plan_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            published = now - dt.timedelta(minutes=n)
            product_rows.append(
                {
                    "id": product_id,
                    "marketplace_id": marketplace_id,
                    "vendor_id": vendors[n % len(vendors)]["id"],
                    "slug": f"product-{n}",
                    "status": "published",
                    "live_version_id": None,
                    "working_version_id": None,
                    "retired_at": None,
                    "published_at": published,
                    "rating_count": 0,
                    "rating_sum": 0,
                    "created_at": published,
                    "updated_at": published,
                }
            )
            version_rows.append(
                {
                    "id": version_id,
                    "product_id": product_id,
                    "number": 1,
                    "state": "approved",
                    "name": name,
                    "short_description": short,
                    "long_description": long,
                    "category_slug": categories[n % len(categories)],
                    "tags": tags,
                    "website": None,
                    "support_email": None,
                    "product_type": "vm_app" if n % 3 else "bare_vm",
                    "trial_days": 14 if n % 2 else 0,
                    "deployment": [
                        {
                            "cloud_account": "aws",
                            "image": "ami-1",
                            "size": {"cores": 2, "ram_mib": 4096, "root_disk_gib": 20},
                        }
                    ],
                    "submitted_at": published,
                    "reviewed_at": published,
                    "reviewed_by_id": None,
                    "review_note": None,
                    "search_text": "\n".join([name, short, long, " ".join(tags)]).lower(),
                    "price_from_amount": monthly,
                    "price_from_currency": "EUR",
                    "created_at": published,
                    "updated_at": published,
                }
            )
            plan_rows.append(
                {
                    "id": plan_id,
                    "version_id": version_id,
                    "code": "standard",
                    "name": "Standard",
                    "description": "",
                    "currency": "EUR",
                    "billing_period": "month",
                    "position": 0,
                }
            )
            component_rows.append(
                {
                    "id": uuid.uuid4(),
                    "plan_id": plan_id,
                    "position": 0,
                    "kind": "flat",
                    "label": "Monthly fee",
                    "unit_price": monthly,
                    "metric": None,
                    "unit": None,
                    "pricing_model": None,
                    "included_quantity": Decimal(0),
                    "tiers": None,
                    "min_quantity": None,
                    "max_quantity": None,
                }
            )
        _insert(conn, Product.__table__, product_rows)
        _insert(conn, ProductVersion.__table__, version_rows)
        conn.execute(
            sa.update(Product.__table__)
            .where(Product.__table__.c.id == ProductVersion.__table__.c.product_id)
            .values(live_version_id=ProductVersion.__table__.c.id)
        )
        _insert(conn, Plan.__table__, plan_rows)
        _insert(conn, PriceComponent.__table__, component_rows)

        per_product = max(1, reviews // max(products, 1))
        review_rows = []
        for index, product in enumerate(product_rows):
            for customer in rng.sample(customers, min(per_product, len(customers))):
                review_rows.append(
                    {
                        "id": uuid.uuid4(),
                        "product_id": product["id"],
                        "organisation_id": customer["id"],
                        "author_id": None,
                        "rating": rng.randrange(1, 6),
                        "comment": "Works as described.",
                        "vendor_reply": None,
                        "vendor_replied_at": None,
                        "hidden": index % 97 == 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
        _insert(conn, Review.__table__, review_rows)
        totals = (
            sa.select(
                Review.product_id, sa.func.count().label("n"), sa.func.sum(Review.rating).label("total")
            )
            .where(Review.hidden.is_(False))
            .group_by(Review.product_id)
            .subquery()
        )
        conn.execute(
            sa.update(Product.__table__)
            .where(Product.__table__.c.id == totals.c.product_id)
            .values(rating_count=totals.c.n, rating_sum=totals.c.total)
        )
        conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    return {"products": len(product_rows), "reviews": len(review_rows)}
