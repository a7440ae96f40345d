"""The storefront in a real browser (Chromium, headless): search from the home page, the
catalog's results, the product page, sign-in, and the layout on a phone."""

from __future__ import annotations

import threading

from flask import Flask
from kombu import Connection
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from cmw.events.worker import Worker
from deployer import service as deployments
from deployer.consumer import DeploymentRequests
from deployer.engine import Engine
from tests import catalog_data
from tests.browser import screenshot
from tests.conftest import broker_url
from tests.helpers import tag
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
    page.get_by_role("link", name="Sign in", exact=True).click()
    assert page.locator("input[name=csrf_token]").count() == 1
    page.get_by_label("E-mail").fill("browser-buyer@example.test")
    page.get_by_label("Password").fill("wrong-password-123")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    page.get_by_label("Password").fill("long-enough-pw")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    screenshot(page, "signed-in")


def test_a_customer_orders_and_watches_the_instance_come_up(
    page: Page, live_server: str, committed_db: sessionmaker[Session], app: Flask
) -> None:
    sealer = app.extensions["mercato.sealer"]
    with committed_db() as session:
        deployments.create_cloud_account(
            session,
            sealer,
            deployments.CloudAccountInput(slug="demo-cloud", name="Demo", provider="dummy", credentials={}),
        )
        target = {**catalog_data.deployment()[0], "cloud_account": "demo-cloud", "image": "1"}
        catalog_data.publish_product(session, "wiki-server", [_plan(FLAT)], targets=[target])
        catalog_data.add_customer(session, "browser-orderer@example.test")
        session.commit()
    suffix = tag(8)
    consumer = DeploymentRequests()
    consumer.name = f"deployer-{suffix}"  # type: ignore[misc]
    engine = Engine(committed_db, sealer, poll_seconds=0.1)
    worker = Worker(
        lambda: Connection(broker_url(), transport_options={"confirm_publish": True}),
        committed_db,
        [consumer],
        relay_poll_seconds=0.05,
        loops=[engine.run],
    )
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"{live_server}/products/wiki-server")
        page.get_by_role("link", name="Sign in to order").click()
        page.get_by_label("E-mail").fill("browser-orderer@example.test")
        page.get_by_label("Password").fill("long-enough-pw")
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{live_server}/products/wiki-server")
        # a key that is not one is refused next to its field, and nothing is ordered
        page.get_by_label("Your SSH public key (optional)").fill("not a key")
        page.get_by_role("button", name="Order").click()
        expect(page.locator("#ssh_public_key-error")).to_contain_text("not an OpenSSH public key")
        screenshot(page, "order-form-error")
        page.get_by_label("Your SSH public key (optional)").fill("")
        page.get_by_role("button", name="Order").click()
        expect(page.get_by_role("heading", name="Your order for Wiki Server")).to_be_visible()
        expect(page.get_by_text("10 EUR", exact=False).first).to_be_visible()
        # the page refreshes itself until the instance is ready
        expect(page.get_by_text("Ready.")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Login")).to_be_visible()
        screenshot(page, "order-ready")
        order_url = page.url
    finally:
        worker.stop()
        thread.join(15)
        with Connection(broker_url()) as conn:
            consumer.queue()(conn.default_channel).delete()

    # another customer opening that order gets the 404 page
    with committed_db() as session:
        catalog_data.add_customer(session, "someone-else@example.test")
        session.commit()
    page.context.clear_cookies()
    page.goto(f"{live_server}/sign-in")
    page.get_by_label("E-mail").fill("someone-else@example.test")
    page.get_by_label("Password").fill("long-enough-pw")
    page.get_by_role("button", name="Sign in").click()
    response = page.goto(order_url)
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="404")).to_be_visible()
