"""The administrators' billing page in a real browser (Chromium, headless): seller details,
a tax rate, a billing run, and the invoice the customer then finds with that tax."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Role
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from tests import catalog_data
from tests.browser import screenshot
from tests.test_browser_storefront import sign_in
from tests.test_pricing import FLAT, _plan


def test_an_admin_sets_taxes_and_runs_billing_and_the_customer_sees_the_invoice(
    page: Page, live_server: str, committed_db: sessionmaker[Session]
) -> None:
    with committed_db() as session:
        catalog_data.publish_product(session, "wiki-server", [_plan(FLAT)])
        admin = catalog_data.add_customer(session, "billing-admin@example.test")[0]
        accounts.grant(session, admin, platform(session), Role.ADMIN)
        buyer, org = catalog_data.add_customer(session, "taxed@example.test", paying=True)
        orders.place_order(
            session, platform(session), buyer, org, orders.OrderRequest(product="wiki-server", plan="basic")
        )
        session.commit()
    sign_in(page, live_server, "billing-admin@example.test", "/admin/billing")
    expect(page.get_by_text("No billing run yet.")).to_be_visible()
    page.get_by_label("Legal name").fill("Mercato S.r.l.")
    page.get_by_label("Country (two letters)").fill("IT")
    page.get_by_role("button", name="Save the seller details").click()
    expect(page.get_by_text("The seller details and dunning are saved")).to_be_visible()
    page.get_by_label("Seller country").fill("IT")
    page.get_by_label("Buyer country").fill("*")
    page.get_by_label("Rate (%)").fill("22")
    page.get_by_role("button", name="Add the tax rate").click()
    expect(page.get_by_role("row", name="IT")).to_contain_text("22")
    page.get_by_role("button", name="Run billing now").click()
    expect(page.get_by_role("table").first).to_contain_text("finished")
    expect(page.get_by_role("table").first.get_by_role("row").nth(1)).to_contain_text("1")
    screenshot(page, "admin-billing")

    sign_in(page, live_server, "taxed@example.test", "/account/invoices")
    page.get_by_role("row").nth(1).get_by_role("link").first.click()
    expect(page.get_by_role("row", name="Tax")).to_contain_text("VAT 22%")
    expect(page.get_by_role("row", name="Total", exact=False).last).to_contain_text("12.20 EUR")  # 10 + 22 %
