"""The administrators' page of their own marketplace (issue 10 in the control panel):
branding checked like the API's, the logo, what it sells, its prices, the marketplaces
under it; and e-mails that link to the marketplace's own address."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts.models import Membership, Role, User
from cmw.crypto import Sealer
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from cmw.marketplaces.service import address
from cmw.notifications.consumers import EmailConsumer
from cmw.notifications.models import Notification
from cmw.orders import service as orders
from tests import catalog_data
from tests.conftest import PASSWORD
from tests.helpers import on_host, tag
from tests.test_catalog_assets import png_logo
from tests.test_catalog_selection import sold, tree  # noqa: F401  (the fixture)
from tests.test_pages_admin import _error
from tests.test_pages_storefront import _csrf
from tests.test_pricing import FLAT, _plan

BRANDING = {
    "name": "Northwind Cloud",
    "domain": "distri.test",
    "description": "Cloud apps for the north.",
    "primary_colour": "#123456",
    "accent_colour": "#ffd166",
    "support_email": "help@northwind.test",
    "legal_footer": "Northwind Ltd, 1 Harbour Road",
    "email_sender_name": "Northwind",
}


def _on(app: Flask, host: str, user: User) -> FlaskClient:
    """A browser on ``host``, signed in as ``user``."""
    browser = app.test_client()
    on_host(browser, host)
    signed = browser.post("/api/v1/session", json={"email": user.email, "password": PASSWORD})
    assert signed.status_code == 200, signed.get_data(as_text=True)
    return browser


def test_an_admin_brands_the_marketplace_from_its_page(
    app: Flask,
    tree: dict[str, Any],  # noqa: F811
    make_user: Callable[..., User],
) -> None:
    distributor = tree["distributor"]
    customer = _on(app, "distri.test", make_user(Role.CUSTOMER, marketplace=distributor))
    assert customer.get("/admin/marketplace").status_code == 403
    admin = _on(app, "distri.test", make_user(Role.ADMIN, marketplace=distributor))
    page = admin.get("/admin/marketplace").get_data(as_text=True)
    assert "Your marketplace" in page and 'href="/admin/marketplace"' in page
    assert "Clouds" not in page  # cloud accounts are the platform's
    token = _csrf(page)

    # refused with the reason next to the field, and nothing changed
    pale = admin.post(
        "/admin/marketplace", data={**BRANDING, "primary_colour": "#ffff99", "csrf_token": token}
    )
    assert pale.status_code == 422
    assert "contrast" in _error(pale.get_data(as_text=True), "primary_colour")
    taken = admin.post("/admin/marketplace", data={**BRANDING, "domain": "resel.test", "csrf_token": token})
    assert taken.status_code == 422
    assert "taken by another marketplace" in _error(taken.get_data(as_text=True), "domain")
    assert "Northwind Cloud" not in admin.get("/").get_data(as_text=True)
    assert admin.post("/admin/marketplace", data={**BRANDING}).status_code == 400  # no CSRF token

    saved = admin.post("/admin/marketplace", data={**BRANDING, "csrf_token": token})
    assert saved.status_code == 302
    home = admin.get("/").get_data(as_text=True)
    assert "<title>Northwind Cloud</title>" in home
    assert "--primary: #123456; --accent: #ffd166;" in home
    assert "Cloud apps for the north." in home
    assert "Northwind Ltd, 1 Harbour Road" in home and 'href="mailto:help@northwind.test"' in home

    # the logo, on its computed background colour, then removed
    uploaded = admin.post(
        "/admin/marketplace/logo",
        data={"csrf_token": token, "file": (io.BytesIO(png_logo((250, 250, 245))), "logo.png")},
        content_type="multipart/form-data",
    )
    assert uploaded.status_code == 302
    background = re.search(
        r'class="brand-logo" style="background: (#[0-9a-f]{6})"', admin.get("/").get_data(True)
    )
    assert background and background.group(1) != "#fafaf5"
    bad = admin.post(
        "/admin/marketplace/logo",
        data={"csrf_token": token, "file": (io.BytesIO(b"not an image"), "logo.png")},
        content_type="multipart/form-data",
        follow_redirects=True,
    )
    assert "That image cannot be used" in bad.get_data(as_text=True)
    assert admin.post("/admin/marketplace/logo/remove", data={"csrf_token": token}).status_code == 302
    assert "brand-logo" not in admin.get("/").get_data(as_text=True)


def test_an_admin_chooses_what_it_sells_its_prices_and_a_marketplace_under_it(
    app: Flask,
    db_session: Session,
    tree: dict[str, Any],  # noqa: F811
    make_user: Callable[..., User],
) -> None:
    distributor = tree["distributor"]
    admin = _on(app, "distri.test", make_user(Role.ADMIN, marketplace=distributor))
    page = admin.get("/admin/marketplace").get_data(as_text=True)
    token = _csrf(page)
    first, second = tree["first"], tree["second"]
    assert f'value="{first["id"]}"' in page and f'value="{second["id"]}"' in page

    chosen = admin.post(
        "/admin/marketplace/selection", data={"csrf_token": token, "product_ids": [first["id"]]}
    )
    assert chosen.status_code == 302
    assert sold(admin, "distri.test") == {first["slug"]}
    everything = admin.post("/admin/marketplace/selection", data={"csrf_token": token, "sells_all": "y"})
    assert everything.status_code == 302
    assert sold(admin, "distri.test") == {first["slug"], second["slug"]}

    below = admin.post(
        "/admin/marketplace/pricing",
        data={"csrf_token": token, "default_markup_percent": "-5", "commission_percent": "0"},
    )
    assert below.status_code == 422
    assert _error(below.get_data(as_text=True), "default_markup_percent")
    marked = admin.post(
        "/admin/marketplace/pricing",
        data={"csrf_token": token, "default_markup_percent": "10", "commission_percent": "2.5"},
    )
    assert marked.status_code == 302
    db_session.refresh(distributor)
    assert (
        str(distributor.default_markup_percent) == "10.0000"
        and str(distributor.commission_percent) == "2.5000"
    )
    assert 'value="10"' in admin.get("/admin/marketplace").get_data(as_text=True)

    newcomer = make_user(None, email="bea@bluebird.test")
    child = {
        "name": "Bluebird IT",
        "slug": "bluebird",
        "domain": "bluebird.test",
        "admin": "bea@bluebird.test",
    }
    nobody = admin.post(
        "/admin/marketplace/children", data={**child, "admin": "no@one.test", "csrf_token": token}
    )
    assert nobody.status_code == 422
    assert "sign up first" in _error(nobody.get_data(as_text=True), "admin")
    taken = admin.post(
        "/admin/marketplace/children", data={**child, "domain": "resel.test", "csrf_token": token}
    )
    assert "taken" in _error(taken.get_data(as_text=True), "domain")
    made = admin.post("/admin/marketplace/children", data={**child, "csrf_token": token})
    assert made.status_code == 302
    listed = admin.get("/admin/marketplace").get_data(as_text=True)
    port = urlsplit(app.config["MERCATO"].base_url).port
    assert "Bluebird IT" in listed and f'href="http://bluebird.test:{port}/"' in listed
    bluebird = db_session.query(Marketplace).filter_by(slug="bluebird").one()
    assert bluebird.kind is MarketplaceKind.RESELLER and bluebird.parent_id == distributor.id
    grant = db_session.query(Membership).filter_by(user_id=newcomer.id, marketplace_id=bluebird.id).one()
    assert grant.role is Role.ADMIN
    # a reseller has no marketplaces under it, and the platform's own page offers no selection
    reseller = _on(app, "bluebird.test", newcomer).get("/admin/marketplace").get_data(as_text=True)
    assert "Marketplaces under it" not in reseller and "What it sells" in reseller


def test_emails_link_to_and_show_the_marketplace_they_come_from(
    db_session: Session, make_marketplace: Callable[..., Marketplace], make_user: Callable[..., User]
) -> None:
    shop = make_marketplace(name="Bluebird IT", domain="bluebird.test", slug="bluebird")
    shop.support_email, shop.legal_footer, shop.primary_colour = (
        "help@bluebird.test",
        "Bluebird IT Ltd",
        "#0b3d2e",
    )
    hidden = make_marketplace(name="No Host", domain=None, slug="nohost")
    assert address(shop, "https://mercato.example") == "https://bluebird.test"
    assert address(shop, "http://127.0.0.1:8000") == "http://bluebird.test:8000"
    assert address(hidden, "https://mercato.example") == "https://mercato.example/m/nohost"
    assert address(shop.parent, "https://mercato.example") == "https://mercato.example"

    user = make_user(Role.CUSTOMER, marketplace=shop)
    note = Notification(
        title="Order confirmed: Wiki", body="Your order is confirmed.", link="/account/orders/1"
    )
    email = EmailConsumer(
        None,
        "https://mercato.example",
        "Mercato <no-reply@mercato.example>",
        Sealer([Fernet.generate_key().decode()]),
    )  # type: ignore[arg-type]
    message = email.render(note, user, shop)
    assert message["From"] == "Bluebird IT <no-reply@mercato.example>"
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert "https://bluebird.test/account/orders/1" in text and "Support: help@bluebird.test" in text
    assert 'href="https://bluebird.test/account/orders/1"' in html
    assert "background:#0b3d2e" in html and "Bluebird IT Ltd" in html


def test_an_admin_sees_the_marketplace_s_orders_and_no_sibling_s(
    app: Flask,
    db_session: Session,
    make_marketplace: Callable[..., Marketplace],
    make_user: Callable[..., User],
) -> None:
    catalog_data.publish_product(db_session, "wiki-server", [_plan(FLAT)])
    ours = make_marketplace(name="Ours", domain="ours.test", sells_all_of_parent=True)
    theirs = make_marketplace(name="Theirs", domain="theirs.test", sells_all_of_parent=True)
    for marketplace, customers in ((ours, ("Acme Srl", "Beta GmbH")), (theirs, ("Gamma Ltd",))):
        for name in customers:
            user, org = catalog_data.add_customer(
                db_session, f"{tag(6)}@example.test", marketplace=marketplace
            )
            org.name = name
            orders.place_order(
                db_session, marketplace, user, org, orders.OrderRequest(product="wiki-server", plan="basic")
            )
    db_session.flush()
    admin = _on(app, "ours.test", make_user(Role.ADMIN, marketplace=ours))
    page = admin.get("/admin/orders").get_data(as_text=True)
    assert "2 orders" in page and "Acme Srl" in page and "Beta GmbH" in page
    assert "Gamma Ltd" not in page  # a sibling's
    assert "Wiki Server · Basic" in page and "10.00 EUR" in page
    found = admin.get("/admin/orders?q=acme").get_data(as_text=True)
    assert "1 order" in found and "Beta GmbH" not in found
    assert "No orders match" in admin.get("/admin/orders?status=cancelled").get_data(as_text=True)
    customer = _on(app, "ours.test", make_user(Role.CUSTOMER, marketplace=ours))
    assert customer.get("/admin/orders").status_code == 403
