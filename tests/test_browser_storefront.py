"""The storefront in a real browser (Chromium, headless): search from the home page, the
catalog's results, the product page, sign-in, and the layout on a phone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from flask import Flask
from kombu import Connection
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Organisation, Role
from cmw.events.worker import Worker
from cmw.marketplaces.service import platform
from deployer import service as deployments
from deployer.consumer import DeploymentRequests
from deployer.engine import Engine
from tests import catalog_data
from tests.browser import screenshot
from tests.conftest import broker_url
from tests.helpers import tag, wait_until
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


@contextmanager
def deploying(committed_db: sessionmaker[Session], sealer: Any) -> Iterator[None]:
    """A worker that relays events and runs the deployer (on its own queue)."""
    consumer = DeploymentRequests()
    consumer.name = f"deployer-{tag(8)}"  # type: ignore[misc]
    worker = Worker(
        lambda: Connection(broker_url(), transport_options={"confirm_publish": True}),
        committed_db,
        [consumer],
        relay_poll_seconds=0.05,
        loops=[Engine(committed_db, sealer, poll_seconds=0.1).run],
    )
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop()
        thread.join(15)
        with Connection(broker_url()) as conn:
            consumer.queue()(conn.default_channel).delete()


def dummy_product(committed_db: sessionmaker[Session], sealer: Any) -> None:
    """Wiki Server, deploying to the dummy cloud (image "1"), with a 14-day trial."""
    with committed_db() as session:
        deployments.create_cloud_account(
            session,
            sealer,
            deployments.CloudAccountInput(slug="demo-cloud", name="Demo", provider="dummy", credentials={}),
        )
        target = {**catalog_data.deployment()[0], "cloud_account": "demo-cloud", "image": "1"}
        catalog_data.publish_product(session, "wiki-server", [_plan(FLAT)], targets=[target])
        session.commit()


def test_a_customer_orders_and_watches_the_instance_come_up(
    page: Page, live_server: str, committed_db: sessionmaker[Session], app: Flask
) -> None:
    sealer = app.extensions["mercato.sealer"]
    dummy_product(committed_db, sealer)
    with committed_db() as session:
        catalog_data.add_customer(session, "browser-orderer@example.test")
        session.commit()
    with deploying(committed_db, sealer):
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

    # the customer rates it...
    page.goto(f"{live_server}/products/wiki-server")
    page.get_by_label("Your rating").select_option("4")
    page.get_by_label("Comment (optional)").fill("Solid, set up in seconds.")
    page.get_by_role("button", name="Publish my review").click()
    expect(page.get_by_role("status")).to_contain_text("your review is published")
    review = page.get_by_role("article", name="Review by Customer of browser-orderer@example.test")
    expect(review).to_contain_text("Solid, set up in seconds.")
    expect(page.get_by_text("★ 4.0")).to_be_visible()

    # ...and the vendor replies, once
    with committed_db() as session:
        vendor_org = session.scalar(sa.select(Organisation).where(Organisation.name == "wiki-server vendor"))
        assert vendor_org is not None
        vendor = accounts.create_user(
            session, email="vendor-replies@example.test", name="Vera", password="long-enough-pw"
        )
        accounts.grant(session, vendor, platform(session), Role.VENDOR, vendor_org)
        session.commit()
    page.context.clear_cookies()
    page.goto(f"{live_server}/sign-in?next=/products/wiki-server")
    page.get_by_label("E-mail").fill("vendor-replies@example.test")
    page.get_by_label("Password").fill("long-enough-pw")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Your reply").fill("Thank you!")
    page.get_by_role("button", name="Reply").click()
    expect(review).to_contain_text("wiki-server vendor replied: Thank you!")
    expect(page.get_by_role("button", name="Reply")).to_have_count(0)
    screenshot(page, "product-reviewed")

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


def test_a_new_customer_tries_a_product_then_ends_the_trial(
    page: Page, live_server: str, committed_db: sessionmaker[Session], app: Flask
) -> None:
    sealer = app.extensions["mercato.sealer"]
    dummy_product(committed_db, sealer)
    page.goto(f"{live_server}/sign-up")
    page.get_by_label("Your name").fill("Tina Trial")
    page.get_by_label("E-mail").fill("tina@example.test")
    page.get_by_label("Password (at least 12 characters)").fill("short")
    page.get_by_label("Company").fill("Tina Srl")
    page.get_by_label("Country (two letters, e.g. IT)").fill("XX")
    page.get_by_role("button", name="Create the account").click()
    # the mistakes are shown next to their fields (the password first: it is checked first)
    expect(page.locator("#password-error")).to_be_visible()
    screenshot(page, "sign-up-errors")
    page.get_by_label("Password (at least 12 characters)").fill("a-long-enough-password")
    page.get_by_label("Country (two letters, e.g. IT)").fill("ZZ")
    page.get_by_role("button", name="Create the account").click()
    expect(page.locator("#country-error")).to_contain_text("ISO 3166")
    page.get_by_label("Password (at least 12 characters)").fill("a-long-enough-password")
    page.get_by_label("Country (two letters, e.g. IT)").fill("IT")
    page.get_by_role("button", name="Create the account").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    with deploying(committed_db, sealer):
        page.goto(f"{live_server}/products/wiki-server")
        page.get_by_label("Start with the free trial").check()
        page.get_by_role("button", name="Order").click()
        expect(page.get_by_text("Ready.")).to_be_visible(timeout=30_000)
        page.get_by_role("link", name="Tina Trial").click()
        row = page.get_by_role("row", name="Wiki Server")
        expect(row).to_contain_text("trialing")
        expect(row).to_contain_text("running")
        screenshot(page, "account-trial")
        row.get_by_role("button", name="End the trial now").click()
        expect(page.get_by_role("status")).to_contain_text("Your trial has ended")

        def removed() -> bool:
            page.reload()
            return "removed" in (page.get_by_role("row", name="Wiki Server").inner_text() or "")

        wait_until(removed, 30, "the instance removed")
        expect(page.get_by_role("row", name="Wiki Server")).to_contain_text("cancelled")
        screenshot(page, "account-trial-ended")
