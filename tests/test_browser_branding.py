"""Branding in a real browser (Chromium, headless): a reseller's admin brands the
marketplace from its page, and the pages and e-mails of the platform, a distributor and
that reseller each carry their own name, logo and colours (screenshots of each).

The marketplaces' host names (``*.test``) resolve to the loopback live server
(``tests/browser.py``), so each is reached by its own host name as customers would."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Organisation, Role, User
from cmw.assets.service import save_image
from cmw.mail import SmtpMailer
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from tests import catalog_data
from tests.browser import screenshot
from tests.servers import SmtpServer
from tests.test_browser_storefront import sign_in
from tests.test_catalog_assets import png_logo
from tests.test_notifications import notifying
from tests.test_pricing import FLAT, _plan

PASSWORD = "long-enough-pw"


def rgb(colour: str) -> str:
    """``#0b3d2e`` as the browser's computed style writes it."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


def _tree(committed_db: sessionmaker[Session], app: Flask) -> dict[str, Any]:
    """Wiki Server sold by the platform, a distributor (branded, with a logo) selling all of
    it, an unbranded reseller under it with its admin, and a customer in each."""
    with committed_db() as session:
        catalog_data.publish_product(session, "wiki-server", [_plan(FLAT)])
        root = platform(session)
        distributor = Marketplace(
            kind=MarketplaceKind.DISTRIBUTOR,
            parent_id=root.id,
            slug="northwind",
            domain="distri.test",
            name="Northwind Cloud",
            primary_colour="#5b1a6e",
            accent_colour="#ffd166",
            support_email="help@northwind.test",
            legal_footer="Northwind Cloud GmbH, Hafenstrasse 1, Hamburg",
            email_sender_name="Northwind",
            sells_all_of_parent=True,
        )
        session.add(distributor)
        session.flush()
        logo = save_image(
            session,
            app.extensions["mercato.storage"],
            png_logo((240, 200, 40)),
            marketplace_id=distributor.id,
            uploaded_by_id=None,
        )
        distributor.logo_image_id = logo.id
        reseller = Marketplace(
            kind=MarketplaceKind.RESELLER,
            parent_id=distributor.id,
            slug="resel",
            domain="resel.test",
            name="resel",
            sells_all_of_parent=True,
        )
        session.add(reseller)
        session.flush()
        admin = accounts.create_user(session, email="rita@resel.test", name="Rita", password=PASSWORD)
        accounts.grant(session, admin, reseller, Role.ADMIN)
        customers = {}
        for marketplace in (root, distributor, reseller):
            user, org = catalog_data.add_customer(
                session, f"buyer@{marketplace.slug}.test", marketplace=marketplace
            )
            customers[marketplace.slug] = (user.id, org.id)
        session.commit()
        return {"ids": {m.slug: m.id for m in (root, distributor, reseller)}, "customers": customers}


def _branding(committed_db: sessionmaker[Session], marketplace_id: Any) -> dict[str, Any]:
    with committed_db() as session:
        found = session.get(Marketplace, marketplace_id)
        assert found is not None
        return {
            "name": found.name,
            "primary": found.primary_colour,
            "accent": found.accent_colour,
            "footer": found.legal_footer,
            "support": found.support_email,
            "sender": found.email_sender_name or found.name,
            "logo_background": found.logo.background_colour if found.logo else None,
        }


def _check_page(page: Page, brand: dict[str, Any], title: str, button: str | None = None) -> None:
    """The page in view carries ``brand``: title, header name and colour, logo, the accent
    colour of ``button``, footer."""
    assert page.title() == title
    header = page.locator("header.top")
    expect(header.locator(".brand")).to_have_text(brand["name"])
    expect(header).to_have_css("background-color", rgb(brand["primary"]))
    if button:
        expect(page.get_by_role("button", name=button)).to_have_css("background-color", rgb(brand["accent"]))
    logo = header.locator(".brand-logo")
    if brand["logo_background"]:
        expect(logo).to_have_css("background-color", rgb(brand["logo_background"]))
        loaded = logo.locator("img").evaluate("img => img.complete && img.naturalWidth")
        assert loaded > 0, "the logo did not load"
    else:
        expect(logo).to_have_count(0)
    footer = page.locator("footer")
    if brand["footer"]:
        expect(footer).to_contain_text(brand["footer"])
    if brand["support"]:
        expect(footer.get_by_role("link", name=brand["support"])).to_have_attribute(
            "href", f"mailto:{brand['support']}"
        )


def _check_email(page: Page, message: EmailMessage, brand: dict[str, Any], home: str) -> None:
    """The e-mail, shown in the browser, carries ``brand`` and links to ``home``."""
    assert message["From"] == f"{brand['sender']} <no-reply@mercato.example>"
    html = message.get_body(preferencelist=("html",))
    assert html is not None
    page.set_content(html.get_content(), wait_until="load")
    header = page.locator(".brand")
    expect(header).to_contain_text(brand["name"])
    expect(header).to_have_css("background-color", rgb(brand["primary"]))
    button = page.get_by_role("link", name=f"Open in {brand['name']}")
    expect(button).to_have_css("background-color", rgb(brand["accent"]))
    assert (button.get_attribute("href") or "").startswith(f"{home}/account/orders/")
    logo = page.locator("img.brand-logo")
    if brand["logo_background"]:
        expect(logo).to_have_css("background-color", rgb(brand["logo_background"]))
        assert (logo.get_attribute("src") or "").startswith(f"{home}/assets/")
        assert logo.evaluate("img => img.complete && img.naturalWidth") > 0, "the logo did not load"
    else:
        expect(logo).to_have_count(0)
    if brand["footer"]:
        expect(page.locator(".footer")).to_contain_text(brand["footer"])


def test_every_marketplace_s_pages_and_emails_carry_its_own_brand(
    page: Page,
    live_server: str,
    committed_db: sessionmaker[Session],
    app: Flask,
    smtp_server: SmtpServer,
) -> None:
    made = _tree(committed_db, app)
    port = urlsplit(live_server).port
    homes = {
        "platform": live_server,
        "northwind": f"http://distri.test:{port}",
        "resel": f"http://resel.test:{port}",
    }

    # The reseller's admin brands it on its own host: a colour white text cannot be read on
    # is refused with the reason, then the branding and a logo are saved.
    sign_in(page, homes["resel"], "rita@resel.test", "/admin/marketplace")
    page.get_by_label("Name", exact=True).fill("Bluebird IT")
    page.get_by_label("Primary colour").fill("#a8e6cf")
    page.get_by_label("Accent colour").fill("#9be7c4")
    page.get_by_label("Support e-mail").fill("care@bluebird.test")
    page.get_by_label("Legal footer").fill("Bluebird IT Srl, Via Roma 1, Torino")
    page.get_by_role("button", name="Save the branding").click()
    expect(page.locator("#primary_colour-error")).to_contain_text("contrast")
    expect(page.get_by_label("Primary colour")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "branding-refused")
    page.get_by_label("Primary colour").fill("#0b3d2e")
    page.get_by_role("button", name="Save the branding").click()
    expect(page.get_by_role("status")).to_contain_text("The branding is saved")
    page.get_by_label("Logo image").set_input_files(
        {"name": "bluebird.png", "mimeType": "image/png", "buffer": png_logo((30, 110, 200))}
    )
    page.get_by_role("button", name="Upload the logo").click()
    expect(page.get_by_role("status")).to_contain_text("The logo is saved")
    expect(page.locator("header.top .brand")).to_have_text("Bluebird IT")
    screenshot(page, "branding-admin")

    brands = {slug: _branding(committed_db, made["ids"][slug]) for slug in homes}
    assert brands["resel"]["name"] == "Bluebird IT" and brands["resel"]["logo_background"]
    assert len({b["primary"] for b in brands.values()}) == 3  # three different looks

    # Each storefront, home and product page, as its customers see it.
    page.context.clear_cookies()
    for slug, home in homes.items():
        page.goto(f"{home}/")
        _check_page(page, brands[slug], brands[slug]["name"], button="Search")
        screenshot(page, f"branding-{slug}-home")
        page.goto(f"{home}/products/wiki-server")
        expect(page.get_by_role("heading", name="Wiki Server", level=1)).to_be_visible()
        _check_page(page, brands[slug], f"Wiki Server · {brands[slug]['name']}")

    # Each customer orders; the e-mails come from their marketplace, look like it, and link
    # back to it.
    smtp_server.clear()
    mailer = SmtpMailer(
        f"smtp://{smtp_server.host}:{smtp_server.port}", "Mercato <no-reply@mercato.example>", timeout=3
    )
    with notifying(committed_db, mailer, base_url=live_server):
        with committed_db() as session:
            for slug, (user_id, org_id) in made["customers"].items():
                marketplace = session.get(Marketplace, made["ids"][slug])
                user = session.get(User, user_id)
                org = session.get(Organisation, org_id)
                assert marketplace is not None and user is not None and org is not None
                orders.place_order(
                    session, marketplace, user, org, orders.OrderRequest(product="wiki-server", plan="basic")
                )
            session.commit()
        received = smtp_server.wait_for(6, timeout=30)  # order placed, subscription active: each
    for slug, home in homes.items():
        confirmation = next(
            r.message
            for r in received
            if r.rcpt_tos == [f"buyer@{slug}.test"] and r.message["Subject"].startswith("Order confirmed")
        )
        _check_email(page, confirmation, brands[slug], home)
        screenshot(page, f"branding-{slug}-email")
