"""The marketplace tree and branding (issue 10, first part): distributors and resellers
made by their parent's admins, host names and colours checked, the customisation API
shown on the next page load, and the development path prefix /m/<slug>."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cassetto.colour import contrast_ratio
from cmw.accounts.models import Role, User
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from tests.test_catalog_assets import png_logo

Headers = Callable[..., dict[str, str]]


def child(client: FlaskClient, headers: dict[str, str], host: str | None = None, **fields: Any) -> Any:
    body = {"name": "Acme Cloud Store", "slug": "acme", "domain": "store.acme.test", **fields}
    kwargs = {"base_url": f"http://{host}"} if host else {}
    return client.post("/api/v1/marketplaces", json=body, headers=headers, **kwargs)


def test_a_three_level_tree_made_by_each_parents_admins(
    client: FlaskClient, db_session: Session, make_user: Callable[..., User], token_for: Headers
) -> None:
    platform_admin = make_user(Role.ADMIN)
    distributor_admin = make_user(None, email="dora@distri.test")
    made = child(
        client, token_for(platform_admin), admins=["dora@distri.test"], slug="distri", domain="distri.test"
    )
    assert made.status_code == 201, made.json
    assert made.json["kind"] == "distributor"
    distributor = db_session.get(Marketplace, made.json["id"])
    assert distributor is not None
    # the distributor's own admin, on its own host, makes a reseller under it
    reseller = child(
        client,
        token_for(distributor_admin, marketplace=distributor),
        host="distri.test",
        slug="resel",
        domain="resel.test",
    )
    assert reseller.status_code == 201, reseller.json
    assert reseller.json["kind"] == "reseller" and reseller.json["parent_id"] == str(distributor.id)
    # a reseller has nothing under it
    reseller_row = db_session.get(Marketplace, reseller.json["id"])
    assert reseller_row is not None and reseller_row.kind is MarketplaceKind.RESELLER
    # (the platform's admin administers every marketplace below it)
    deeper = child(
        client,
        token_for(platform_admin, marketplace=reseller_row),
        host="resel.test",
        slug="deeper",
        domain="deep.test",
    )
    assert deeper.status_code == 422
    assert deeper.json["errors"][0]["field"] == "parent"
    # the platform admin sees the whole tree; the distributor's admin its own part
    everything = client.get("/api/v1/marketplaces", headers=token_for(platform_admin)).json
    assert {m["slug"] for m in everything["items"]} >= {"platform", "distri", "resel"}
    own = client.get(
        "/api/v1/marketplaces",
        headers=token_for(distributor_admin, marketplace=distributor),
        base_url="http://distri.test",
    ).json
    assert {m["slug"] for m in own["items"]} == {"distri", "resel"}


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"primary_colour": "#ffd700"}, "primary_colour", "white text on #ffd700"),
        ({"accent_colour": "#1a237e"}, "accent_colour", "black text on #1a237e"),
        ({"primary_colour": "navy"}, "primary_colour", "not a colour"),
        ({"domain": "not a host"}, "domain", "not a host name"),
        ({"domain": "localhost:8000"}, "domain", "not a host name"),
        ({"slug": "Bad Slug"}, "slug", "lowercase"),
        ({"slug": "platform"}, "slug", "taken"),
    ],
)
def test_bad_marketplace_details_are_422_with_the_reason(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    fields: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    answer = child(client, token_for(make_user(Role.ADMIN)), **fields)
    assert answer.status_code == 422, answer.json
    assert answer.json["errors"][0]["field"] == field
    assert reason in answer.json["errors"][0]["message"]


def test_a_host_name_already_taken_is_422(
    client: FlaskClient,
    db_session: Session,
    make_user: Callable[..., User],
    token_for: Headers,
    make_marketplace: Callable[..., Marketplace],
) -> None:
    other = make_marketplace(domain="taken.test")
    headers = token_for(make_user(Role.ADMIN))
    answer = child(client, headers, domain="Taken.TEST.")
    assert answer.status_code == 422
    assert "taken by another marketplace" in answer.json["errors"][0]["message"]
    # and renaming a marketplace onto it is refused the same way
    mine = child(client, headers).json
    assert mine["id"] != str(other.id)
    acme = db_session.get(Marketplace, mine["id"])
    moved = client.patch(
        "/api/v1/marketplace",
        json={"domain": "taken.test"},
        headers=token_for(make_user(Role.ADMIN), marketplace=acme),
        base_url="http://store.acme.test",
    )
    assert moved.status_code == 422 and moved.json["errors"][0]["field"] == "domain"


def test_branding_changes_show_on_the_next_page_load(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    make_marketplace: Callable[..., Marketplace],
) -> None:
    shop = make_marketplace(name="Old Name", domain="brand.test")
    admin = make_user(Role.ADMIN, marketplace=shop)
    before = client.get("/", base_url="http://brand.test").get_data(as_text=True)
    assert "Old Name" in before
    changed = client.patch(
        "/api/v1/marketplace",
        json={
            "name": "New Name",
            "primary_colour": "#0b3d2e",
            "accent_colour": "#ffc857",
            "legal_footer": "New Co Ltd",
        },
        headers=token_for(admin, marketplace=shop),
        base_url="http://brand.test",
    )
    assert changed.status_code == 200, changed.json
    after = client.get("/", base_url="http://brand.test").get_data(as_text=True)
    assert "New Name" in after and "Old Name" not in after
    assert "--primary: #0b3d2e" in after and "--accent: #ffc857" in after
    assert "New Co Ltd" in after


def test_only_a_marketplaces_admins_change_it(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    make_marketplace: Callable[..., Marketplace],
) -> None:
    mine = make_marketplace(domain="mine.test")
    sibling = make_marketplace(domain="sibling.test")
    my_admin = make_user(Role.ADMIN, marketplace=mine)
    # a customer here may not, nor may my admin at the sibling (their token is not valid there)
    customer = make_user(Role.CUSTOMER, marketplace=mine)
    answer = client.patch(
        "/api/v1/marketplace",
        json={"name": "X"},
        headers=token_for(customer, marketplace=mine),
        base_url="http://mine.test",
    )
    assert answer.status_code == 403
    answer = client.patch(
        "/api/v1/marketplace", json={"name": "X"}, headers=token_for(my_admin, marketplace=mine),
        base_url="http://sibling.test",
    )  # fmt: skip
    assert answer.status_code == 401
    assert sibling.name != "X"


def test_the_path_prefix_serves_a_marketplace_on_any_host(
    client: FlaskClient, make_marketplace: Callable[..., Marketplace]
) -> None:
    shop = make_marketplace(name="Prefixed Shop", slug="prefixed", domain="prefixed.test")
    api = client.get("/m/prefixed/api/v1/marketplace")
    assert api.status_code == 200 and api.json["id"] == str(shop.id)
    page = client.get("/m/prefixed/").get_data(as_text=True)
    assert "Prefixed Shop" in page
    assert 'href="/m/prefixed/sign-in' in page  # links stay in the marketplace
    assert client.get("/m/no-such-shop/api/v1/marketplace").status_code == 404


def test_the_marketplace_logo_shows_on_its_background_colour(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    make_marketplace: Callable[..., Marketplace],
) -> None:
    shop = make_marketplace(name="Logo Shop", domain="logo.test")
    headers = token_for(make_user(Role.ADMIN, marketplace=shop), marketplace=shop)
    assert client.get("/api/v1/marketplace", base_url="http://logo.test").json["logo"] is None
    answer = client.put(
        "/api/v1/marketplace/logo",
        headers=headers,
        data={"file": (io.BytesIO(png_logo((250, 250, 245))), "logo.png")},
        content_type="multipart/form-data",
        base_url="http://logo.test",
    )
    assert answer.status_code == 200, answer.json
    logo = answer.json["logo"]
    # a near-white logo is shown on a dark background, and the page header says so
    assert contrast_ratio(logo["background_colour"], "#fafaf5") >= 3.0
    page = client.get("/", base_url="http://logo.test").get_data(as_text=True)
    assert f'class="brand-logo" style="background: {logo["background_colour"]}"' in page
    assert logo["urls"]["thumb"] in page
    # a customer may not change it
    customer = token_for(make_user(Role.CUSTOMER, marketplace=shop), marketplace=shop)
    refused = client.delete("/api/v1/marketplace/logo", headers=customer, base_url="http://logo.test")
    assert refused.status_code == 403
    assert (
        client.delete("/api/v1/marketplace/logo", headers=headers, base_url="http://logo.test").status_code
        == 204
    )
    assert "brand-logo" not in client.get("/", base_url="http://logo.test").get_data(as_text=True)
