"""Order approval in a real browser (Chromium, headless): the vendor marks a product as
needing approval in the editor; a customer orders it and the order page says it waits;
the vendor rejects one order (a reason is required) and approves another from the
Approvals page; the customer's order pages say what was decided."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Role
from cmw.catalog import service as catalog_service
from cmw.catalog.models import Product
from cmw.marketplaces.service import platform
from tests import catalog_data
from tests.browser import screenshot
from tests.test_browser_storefront import sign_in
from tests.test_pricing import FLAT, _plan
from tests.test_webhooks import _vendor_user


def _order(page: Page, live_server: str) -> str:
    page.goto(f"{live_server}/products/gated-wiki")
    expect(page.locator("#approval-note")).to_contain_text("approved by its vendor")
    page.get_by_role("button", name="Order").click()
    expect(page.locator("#order-status")).to_have_text("waiting for approval")
    expect(page.get_by_role("status")).to_contain_text("waits for the vendor to approve it")
    return page.url


def test_the_vendor_requires_approval_then_rejects_and_approves_orders_in_the_pages(
    page: Page, live_server: str, committed_db: sessionmaker[Session]
) -> None:
    with committed_db() as session:
        product = catalog_data.publish_product(session, "gated-wiki", [_plan(FLAT)], trial_days=0)
        _vendor_user(session, product.vendor_id, "gate-keeper@example.test")
        catalog_data.add_customer(session, "gate-one@example.test")
        catalog_data.add_customer(session, "gate-two@example.test")
        session.commit()
        product_id = product.id

    # the vendor asks for approval in the editor; the revision goes through review
    sign_in(page, live_server, "gate-keeper@example.test", f"/vendor/products/{product_id}")
    page.get_by_label("Orders need my approval").check()
    page.get_by_role("button", name="Save the details").click()
    expect(page.get_by_label("Orders need my approval")).to_be_checked()
    with committed_db() as session:  # the revision, submitted and approved as an admin would
        found = session.get(Product, product_id)
        assert found is not None and found.working_version is not None
        assert found.working_version.requires_approval
        admin = accounts.create_user(
            session, email="gate-admin@example.test", name="Admin", password="long-enough-pw"
        )
        accounts.grant(session, admin, platform(session), Role.ADMIN)
        catalog_service.submit(session, found)
        catalog_service.approve(session, found, admin)
        session.commit()

    sign_in(page, live_server, "gate-one@example.test")
    first = _order(page, live_server)
    sign_in(page, live_server, "gate-two@example.test")
    second = _order(page, live_server)
    screenshot(page, "order-awaiting-approval")

    sign_in(page, live_server, "gate-keeper@example.test", "/vendor/approvals")
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(2)
    one = rows.nth(0)
    expect(one).to_contain_text("Customer of gate-one@example.test")
    one.get_by_text("Reject…").click()
    one.get_by_role("button", name="Reject the order").click()
    expect(page.locator(".field-error")).to_have_text("Say why: the customer reads it.")
    page.get_by_label("Reason for Customer of gate-one@example.test").fill("We sell to schools only")
    page.locator("table tbody tr").first.get_by_role("button", name="Reject the order").click()
    expect(page.get_by_role("status").first).to_contain_text("Rejected")
    expect(page.locator("table tbody tr")).to_have_count(1)
    screenshot(page, "vendor-approvals")
    page.get_by_role("button", name="Approve the order of Customer of gate-two@example.test").click()
    expect(page.get_by_text("Nothing waits for your approval.")).to_be_visible()

    sign_in(page, live_server, "gate-one@example.test", first.removeprefix(live_server))
    expect(page.locator("#order-status")).to_have_text("rejected")
    expect(page.get_by_role("status")).to_contain_text("Not approved by the vendor")
    expect(page.get_by_role("status")).to_contain_text("We sell to schools only")
    sign_in(page, live_server, "gate-two@example.test", second.removeprefix(live_server))
    expect(page.locator("#order-status")).to_have_text("confirmed")
    expect(page.get_by_role("heading", name="Your instance")).to_be_visible()
