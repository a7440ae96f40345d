"""Valid catalog payloads for tests: a product, its deployment and plans of every model."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts import service as accounts
from cmw.accounts.models import Organisation, OrganisationKind, Role, User
from cmw.catalog import service as catalog
from cmw.catalog.models import Product
from cmw.catalog.pricing import PlanSpec
from cmw.marketplaces.models import Marketplace
from cmw.marketplaces.service import platform


def deployment(product_type: str = "vm_app") -> list[dict[str, Any]]:
    target: dict[str, Any] = {
        "cloud_account": "aws-eu",
        "region": "eu-west-1",
        "image": "ami-0abcdef1234567890",
        "size": {"cores": 2, "ram_mib": 4096, "root_disk_gib": 20},
        "inbound_ports": [{"port": 443}, {"port": 22, "cidr": "198.51.100.0/24"}],
        "app_url_template": "https://{ip}/",
        "default_login": "admin",
    }
    if product_type == "vm_app":
        target.update(data_disk_gib=50, setup_script="#!/bin/sh\napt-get install -y myapp\n")
    return [target]


def product(slug: str = "wiki-server", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "slug": slug,
        "name": "Wiki Server",
        "short_description": "A team wiki on your own VM.",
        "long_description": "# Wiki\n\nFast and **simple**.",
        "category": "collaboration",
        "tags": ["Wiki", "docs"],
        "website": "https://wiki.example.test",
        "support_email": "support@wiki.example.test",
        "product_type": "vm_app",
        "trial_days": 14,
        "deployment": deployment(overrides.get("product_type", "vm_app")),
    }
    body.update(overrides)
    return body


def plans(currency: str = "EUR") -> list[dict[str, Any]]:
    return [
        {
            "code": "team",
            "name": "Team",
            "currency": currency,
            "billing_period": "month",
            "components": [
                {"kind": "flat", "label": "Base fee", "unit_price": "49.00"},
                {"kind": "setup", "label": "Setup", "unit_price": "99"},
                {
                    "kind": "per_unit",
                    "label": "Seats",
                    "unit_price": "4.50",
                    "unit": "seat",
                    "min_quantity": 5,
                },
                {
                    "kind": "metered",
                    "label": "Traffic",
                    "metric": "bandwidth.gb",
                    "unit": "GB",
                    "pricing_model": "graduated",
                    "included_quantity": "100",
                    "tiers": [
                        {"from": "0", "up_to": "1000", "unit_price": "0.08"},
                        {"from": "1000", "up_to": None, "unit_price": "0.05"},
                    ],
                },
                {
                    "kind": "metered",
                    "label": "CPU",
                    "metric": "cpu.hours",
                    "unit": "hour",
                    "pricing_model": "volume",
                    "tiers": [
                        {"from": "0", "up_to": "500", "unit_price": "0.02"},
                        {"from": "500", "up_to": None, "unit_price": "0.015"},
                    ],
                },
            ],
        },
        {
            "code": "enterprise",
            "name": "Enterprise",
            "currency": currency,
            "billing_period": "year",
            "components": [
                {
                    "kind": "metered",
                    "label": "Storage",
                    "metric": "storage.gb_month",
                    "unit": "GB-month",
                    "pricing_model": "per_unit",
                    "unit_price": "0.021",
                },
                {"kind": "flat", "label": "Licence", "unit_price": "4990"},
            ],
        },
    ]


# ------------------------------------------------------- API flows
def create(client: FlaskClient, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = client.post("/api/v1/vendor/products", json=product(**overrides), headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def set_plans(client: FlaskClient, headers: dict[str, str], product_id: str) -> dict[str, Any]:
    response = client.put(
        f"/api/v1/vendor/products/{product_id}/plans", json={"plans": plans()}, headers=headers
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def post(client: FlaskClient, url: str, headers: dict[str, str], json: Any = None) -> Any:
    return client.post(url, headers=headers, json=json)


def publish(
    client: FlaskClient, vendor_h: dict[str, str], admin_h: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    product = create(client, vendor_h, **overrides)
    set_plans(client, vendor_h, product["id"])
    assert post(client, f"/api/v1/vendor/products/{product['id']}/submit", vendor_h).status_code == 200
    approved = post(client, f"/api/v1/admin/products/{product['id']}/approve", admin_h)
    assert approved.status_code == 200, approved.get_data(as_text=True)
    return approved.get_json()


# ------------------------------------------------------- service flows (committed tests)
def publish_product(
    session: Session,
    slug: str,
    plans: list[PlanSpec],
    *,
    trial_days: int = 14,
    admin_email: str | None = None,
    targets: list[dict[str, Any]] | None = None,
) -> Product:
    """A vendor with a published product selling ``plans``, made through the services."""
    marketplace = platform(session)
    admin = accounts.create_user(
        session, email=admin_email or f"{slug}-admin@example.test", name="Admin", password="long-enough-pw"
    )
    vendor = accounts.create_organisation(
        session,
        marketplace,
        kind=OrganisationKind.VENDOR,
        name=f"{slug} vendor",
        billing=accounts.BillingDetails(legal_name=f"{slug} vendor GmbH", country="DE"),
    )
    content = {k: v for k, v in product(trial_days=trial_days).items() if k != "slug"}
    content["category_slug"] = content.pop("category")
    if targets is not None:
        content["deployment"] = targets
    made = catalog.create_product(session, marketplace, vendor, slug=slug, content=content)
    catalog.set_plans(session, made, plans)
    catalog.submit(session, made)
    catalog.approve(session, made, admin)
    return made


def add_customer(
    session: Session,
    email: str,
    *,
    organisation: Organisation | None = None,
    paying: bool = False,
    marketplace: Marketplace | None = None,
) -> tuple[User, Organisation]:
    """A user with the customer role for ``organisation`` (a new one by default) of
    ``marketplace`` (the platform by default)."""
    marketplace = marketplace or platform(session)
    user = accounts.create_user(session, email=email, name=email.split("@")[0], password="long-enough-pw")
    if organisation is None:
        organisation = accounts.create_organisation(
            session,
            marketplace,
            kind=OrganisationKind.CUSTOMER,
            name=f"Customer of {email}",
            billing=accounts.BillingDetails(legal_name="Customer Srl", country="IT"),
        )
        organisation.has_payment_method = paying
    accounts.grant(session, user, marketplace, Role.CUSTOMER, organisation)
    return user, organisation
