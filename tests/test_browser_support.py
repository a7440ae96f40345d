"""Support tickets in a real browser (Chromium, headless): a customer opens a ticket about
a subscription with an attachment (a program is refused with the reason), the vendor
answers on the thread page, the customer reads the answer and closes the ticket."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from tests import catalog_data
from tests.browser import screenshot
from tests.test_browser_storefront import sign_in
from tests.test_pricing import FLAT, _plan
from tests.test_support import PNG
from tests.test_webhooks import _vendor_user


def test_a_customer_and_a_vendor_work_a_ticket_through_the_pages(
    page: Page, live_server: str, committed_db: sessionmaker[Session], tmp_path: Path
) -> None:
    with committed_db() as session:
        product = catalog_data.publish_product(session, "helpdesk", [_plan(FLAT)])
        _vendor_user(session, product.vendor_id, "ticket-vendor@example.test")
        buyer, org = catalog_data.add_customer(session, "ticket-buyer@example.test")
        subscription_id = orders.place_order(
            session, platform(session), buyer, org, orders.OrderRequest(product="helpdesk", plan="basic")
        ).subscription_id
        session.commit()
    shot, program = tmp_path / "error.png", tmp_path / "fix.exe"
    shot.write_bytes(PNG)
    program.write_bytes(b"MZ" + b"\x00" * 64)

    sign_in(page, live_server, "ticket-buyer@example.test", f"/account/subscriptions/{subscription_id}")
    page.get_by_role("link", name="Open a support ticket about it").click()
    expect(page.get_by_label("About")).to_have_value(str(subscription_id))
    page.get_by_label("Subject").fill("Login page errors")
    page.get_by_label("Your message").fill("The login page shows an error 500.")
    page.get_by_label("Attachments").set_input_files([str(shot), str(program)])
    page.get_by_role("button", name="Open the ticket").click()
    expect(page.locator("#files-error")).to_contain_text("fix.exe: .exe files are not accepted")
    expect(page.get_by_label("Attachments")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Attachments").set_input_files([str(shot)])
    page.get_by_role("button", name="Open the ticket").click()
    expect(page.get_by_role("status")).to_contain_text("is open; you will get an e-mail")
    expect(page.get_by_role("heading", name="Login page errors")).to_be_visible()
    expect(page.get_by_text("about Wiki Server")).to_be_visible()
    expect(page.get_by_role("link", name="error.png")).to_be_visible()
    ticket_url = page.url.split("#")[0]

    sign_in(page, live_server, "ticket-vendor@example.test", "/account/tickets")
    expect(page.get_by_role("row", name="Login page errors")).to_contain_text("waiting for an answer")
    page.get_by_role("row", name="Login page errors").get_by_role("link").click()
    with page.expect_download() as download:
        page.get_by_role("link", name="error.png").click()
    assert Path(download.value.path()).read_bytes() == PNG
    page.get_by_label("Your message").fill("A certificate had expired; renewed it.")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Your answer is in the thread.")
    screenshot(page, "support-ticket-vendor")

    sign_in(page, live_server, "ticket-buyer@example.test", "/account/tickets?status=answered")
    page.get_by_role("row", name="Login page errors").get_by_role("link").click()
    assert page.url.split("#")[0] == ticket_url
    messages = page.get_by_role("list", name="Messages").locator("> li")
    expect(messages).to_have_count(2)
    expect(messages.last).to_contain_text("A certificate had expired; renewed it.")
    expect(messages.last).to_contain_text("(vendor)")
    page.get_by_role("button", name="Close the ticket").click()
    expect(page.get_by_role("status")).to_contain_text("The ticket is closed.")
    expect(page.locator("p.muted").first).to_contain_text("closed")
    expect(page.get_by_role("button", name="Close the ticket")).to_have_count(0)
    screenshot(page, "support-ticket-customer")
