"""The storefront in a real browser (Chromium, headless): search from the home page, the
catalog's results, the product page, sign-in, and the layout on a phone."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from tests import catalog_data
from tests.browser import screenshot
from tests.test_pricing import FLAT, _plan


def test_a_visitor_finds_a_product_and_signs_in(
    page: Page, live_server: str, committed_db: sessionmaker[Session]
) -> None:
    with committed_db() as session:
        catalog_data.publish_product(session, "wiki-server", [_plan(FLAT)])
        catalog_data.add_customer(session, "browser-buyer@example.test")
        session.commit()

    page.goto(live_server + "/")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    screenshot(page, "home")
    page.get_by_label("Search the catalog").fill("wiki")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(f"{live_server}/products?q=wiki")
    expect(page.get_by_text("1 product", exact=True)).to_be_visible()
    screenshot(page, "catalog-search")

    page.get_by_role("link", name="Wiki Server").click()
    expect(page.get_by_role("heading", name="Wiki Server", level=1)).to_be_visible()
    plans = page.get_by_role("table")
    expect(plans.get_by_role("rowheader", name="Basic")).to_be_visible()
    expect(plans).to_contain_text("10.00 EUR a month")
    screenshot(page, "product")

    # on a phone the page fits the screen: no sideways scrolling
    page.set_viewport_size({"width": 375, "height": 740})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    screenshot(page, "product-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    # sign in (the form carries its CSRF token) and come back signed in
    page.get_by_role("link", name="Sign in").click()
    assert page.locator("input[name=csrf_token]").count() == 1
    page.get_by_label("E-mail").fill("browser-buyer@example.test")
    page.get_by_label("Password").fill("wrong-password-123")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    page.get_by_label("Password").fill("long-enough-pw")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    screenshot(page, "signed-in")
