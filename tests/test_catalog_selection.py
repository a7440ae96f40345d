"""Catalog selection (issue 10): a child marketplace sells the products of its parent its
admins chose, or all of them (new ones included); a reseller can sell only what its
distributor sells; the storefront, product pages and orders follow the selection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from cmw.accounts.models import Role, User
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from tests.catalog_data import publish

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def tree(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    make_marketplace: Callable[..., Marketplace],
) -> dict[str, Any]:
    vendor, admin = make_user(Role.VENDOR), make_user(Role.ADMIN)
    vendor_h, admin_h = token_for(vendor), token_for(admin)
    first = publish(client, vendor_h, admin_h, slug="first-app")
    second = publish(client, vendor_h, admin_h, slug="second-app")
    distributor = make_marketplace(domain="distri.test")
    reseller = make_marketplace(MarketplaceKind.RESELLER, parent=distributor, domain="resel.test")
    return {
        "first": first,
        "second": second,
        "publish": lambda slug: publish(client, vendor_h, admin_h, slug=slug),
        "distributor": distributor,
        "reseller": reseller,
        "admin": {
            "distri.test": token_for(make_user(Role.ADMIN, marketplace=distributor), marketplace=distributor),
            "resel.test": token_for(make_user(Role.ADMIN, marketplace=reseller), marketplace=reseller),
        },
    }


def sold(client: FlaskClient, host: str) -> set[str]:
    answer = client.get("/api/v1/products", base_url=f"http://{host}")
    assert answer.status_code == 200, answer.json
    return {p["slug"] for p in answer.json["items"]}


def select(
    client: FlaskClient, tree: dict[str, Any], host: str, ids: list[str], everything: bool = False
) -> Any:
    return client.put(
        "/api/v1/marketplace/selection",
        json={"sells_all_of_parent": everything, "product_ids": ids},
        headers=tree["admin"][host],
        base_url=f"http://{host}",
    )


def test_a_child_sells_only_what_its_admins_chose(client: FlaskClient, tree: dict[str, Any]) -> None:
    assert sold(client, "distri.test") == set()
    offered = client.get(
        "/api/v1/marketplace/selection", headers=tree["admin"]["distri.test"], base_url="http://distri.test"
    ).json
    assert {p["slug"] for p in offered["parent_catalog"]} == {"first-app", "second-app"}
    answer = select(client, tree, "distri.test", [tree["first"]["id"]])
    assert answer.status_code == 200, answer.json
    assert sold(client, "distri.test") == {"first-app"}
    # the product page and the order form know it too
    assert client.get("/products/first-app", base_url="http://distri.test").status_code == 200
    assert client.get("/products/second-app", base_url="http://distri.test").status_code == 404
    assert client.get("/api/v1/products/second-app", base_url="http://distri.test").status_code == 404
    # the platform still sells both
    assert sold(client, "localhost") >= {"first-app", "second-app"}


def test_a_reseller_sells_only_what_its_distributor_sells(client: FlaskClient, tree: dict[str, Any]) -> None:
    select(client, tree, "distri.test", [tree["first"]["id"]])
    refused = select(client, tree, "resel.test", [tree["second"]["id"]])
    assert refused.status_code == 422
    assert refused.json["errors"][0]["field"] == "product_ids.0"
    assert "does not sell" in refused.json["errors"][0]["message"]
    assert select(client, tree, "resel.test", [], everything=True).status_code == 200
    assert sold(client, "resel.test") == {"first-app"}


def test_new_products_of_the_parent_appear_only_when_chosen_or_with_all(
    client: FlaskClient, tree: dict[str, Any]
) -> None:
    select(client, tree, "distri.test", [tree["first"]["id"]])
    select(client, tree, "resel.test", [], everything=True)
    tree["publish"]("third-app")
    assert "third-app" in sold(client, "localhost")
    assert sold(client, "distri.test") == {"first-app"}
    assert sold(client, "resel.test") == {"first-app"}
    # the distributor now sells all of the platform's: the new one is in both, at once
    assert select(client, tree, "distri.test", [], everything=True).status_code == 200
    assert sold(client, "distri.test") == {"first-app", "second-app", "third-app"}
    assert sold(client, "resel.test") == {"first-app", "second-app", "third-app"}


def test_the_platform_selects_nothing_and_only_admins_select(
    client: FlaskClient, tree: dict[str, Any], make_user: Callable[..., User], token_for: Headers
) -> None:
    platform_admin = token_for(make_user(Role.ADMIN))
    answer = client.put(
        "/api/v1/marketplace/selection", json={"sells_all_of_parent": True}, headers=platform_admin
    )
    assert answer.status_code == 422
    customer = token_for(
        make_user(Role.CUSTOMER, marketplace=tree["distributor"]), marketplace=tree["distributor"]
    )
    refused = client.put(
        "/api/v1/marketplace/selection",
        json={"sells_all_of_parent": True},
        headers=customer,
        base_url="http://distri.test",
    )
    assert refused.status_code == 403


def test_customers_of_a_child_order_only_what_it_sells(
    client: FlaskClient, tree: dict[str, Any], make_user: Callable[..., User], token_for: Headers
) -> None:
    select(client, tree, "distri.test", [tree["first"]["id"]])
    distributor = tree["distributor"]
    customer = token_for(make_user(Role.CUSTOMER, marketplace=distributor), marketplace=distributor)

    def order(slug: str, key: str) -> Any:
        return client.post(
            "/api/v1/orders",
            json={"product": slug, "plan": "team", "quantity": 5},
            headers={**customer, "Idempotency-Key": key},
            base_url="http://distri.test",
        )

    refused = order("second-app", "k1")
    assert refused.status_code == 422 and refused.json["errors"][0]["field"] == "product"
    placed = order("first-app", "k2")
    assert placed.status_code == 201, placed.json
    assert placed.json["product_id"] == tree["first"]["id"]
    # the customer finds it among their orders in the distributor's marketplace
    mine = client.get("/api/v1/orders", headers=customer, base_url="http://distri.test").json
    assert [o["id"] for o in mine["items"]] == [placed.json["id"]]
