"""The vendor's webhook pages in a real browser (Chromium, headless): add an endpoint and
copy its secret, send a test event, read a failed delivery's attempts, replay it."""

from __future__ import annotations

from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from cmw.webhooks import service as webhooks
from tests import catalog_data
from tests.browser import screenshot
from tests.servers import HttpsReceiver
from tests.test_browser_storefront import sign_in
from tests.test_pricing import FLAT, _plan
from tests.test_webhooks import _vendor_user, verify


def test_a_vendor_adds_an_endpoint_tests_it_and_replays_a_failed_delivery(
    page: Page,
    live_server: str,
    committed_db: sessionmaker[Session],
    app: Flask,
    receiver: HttpsReceiver,
) -> None:
    with committed_db() as session:
        product = catalog_data.publish_product(session, "paged-hooks", [_plan(FLAT)])
        _vendor_user(session, product.vendor_id, "page-hooks@example.test")
        session.commit()
    sender = webhooks.Sender(allow_private=True, ca_bundle=receiver.ca_bundle or "", timeout=5)
    sealer = app.extensions["mercato.sealer"]

    sign_in(page, live_server, "page-hooks@example.test", "/vendor/webhooks")
    expect(page.get_by_text("No endpoint yet")).to_be_visible()
    page.get_by_label("Endpoint URL").fill("http://127.0.0.1/plain")
    page.get_by_role("button", name="Add the endpoint").click()
    url_field = page.get_by_label("Endpoint URL")
    expect(url_field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#url-error")).to_have_text("the URL must start with https://")

    url_field.fill(f"{receiver.url}/shop-hooks")
    page.get_by_label("Description").fill("Our order desk")
    page.get_by_label("order.placed").check()
    expect(page.get_by_label("webhook.ping", exact=True)).to_have_count(0)  # pings always go
    page.get_by_role("button", name="Add the endpoint").click()
    secret = page.get_by_label("Signing secret").inner_text()
    assert secret.startswith("whsec_")
    row = page.get_by_role("row", name=f"{receiver.url}/shop-hooks")
    expect(row).to_contain_text("order.placed")
    expect(row).to_contain_text("active")
    screenshot(page, "vendor-webhooks")

    # A test event: the receiver answers 500 first, so it fails, then the vendor replays it.
    row.get_by_role("link").click()
    page.get_by_role("button", name="Send a test event").click()
    expect(page.get_by_text("A test event (webhook.ping) is on its way")).to_be_visible()
    receiver.answer((500, {"error": "desk closed"}))
    assert webhooks.deliver_due(committed_db, sealer, sender) == {"sent": 1, "delivered": 0}
    assert verify(secret, receiver.wait_for(1)[0])["type"] == "webhook.ping"
    page.reload()
    delivery_row = page.get_by_role("row", name="webhook.ping")
    expect(delivery_row).to_contain_text("pending")
    expect(delivery_row).to_contain_text("HTTP 500")
    delivery_row.get_by_role("link").click()
    expect(page.get_by_role("heading", name="webhook.ping")).to_be_visible()
    expect(page.get_by_role("row", name="HTTP 500")).to_contain_text('{"error": "desk closed"}')
    expect(page.get_by_label("Body sent")).to_contain_text('"type": "webhook.ping"')
    page.get_by_role("button", name="Send again").click()
    expect(page.get_by_text("Sent again")).to_be_visible()
    assert webhooks.deliver_due(committed_db, sealer, sender) == {"sent": 1, "delivered": 1}
    page.reload()
    expect(page.get_by_role("row", name="HTTP 200")).to_be_visible()
    expect(page.get_by_label("Delivery")).to_contain_text("delivered")
    screenshot(page, "vendor-webhook-delivery")

    # A new secret is shown once; the old one no longer signs.
    page.get_by_role("link", name=f"{receiver.url}/shop-hooks").click()
    page.get_by_role("button", name="New signing secret").click()
    rotated = page.get_by_label("Signing secret").inner_text()
    assert rotated.startswith("whsec_") and rotated != secret
    page.get_by_role("link", name="Back to the endpoint").click()
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_have_text("Paused: no new deliveries until you resume.")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    page.get_by_role("button", name="Remove").click()
    expect(page.get_by_text("No endpoint yet")).to_be_visible()
