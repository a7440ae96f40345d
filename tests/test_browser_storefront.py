"""The storefront in a real browser (Chromium, headless): search from the home page, the
catalog's results, the product page, sign-in, and the layout on a phone."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from kombu import Connection
from playwright.sync_api import Page, expect
from pypdf import PdfReader
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import OrganisationKind, Role
from cmw.events.worker import Worker
from cmw.marketplaces.service import platform
from cmw.orders.models import Order
from deployer import service as deployments
from deployer.consumer import DeploymentRequests
from deployer.engine import Engine
from tests import catalog_data
from tests.browser import screenshot
from tests.conftest import broker_url
from tests.helpers import tag, wait_until
from tests.test_pages_vendor import png
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


def sign_in(page: Page, live_server: str, email: str, then: str = "/") -> None:
    page.context.clear_cookies()
    page.goto(f"{live_server}/sign-in?next={then}")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill("long-enough-pw")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def test_a_product_goes_from_the_vendors_editor_to_a_rated_running_instance(
    page: Page, live_server: str, committed_db: sessionmaker[Session], app: Flask
) -> None:
    """A vendor creates a product with a logo and a plan and submits it; an admin approves
    it; a customer finds it, compares it, orders it, watches it come up, sees its address,
    login and password, and rates it; the vendor replies. Another customer gets a 404."""
    sealer = app.extensions["mercato.sealer"]
    dummy_product(committed_db, sealer)  # the demo cloud, and Wiki Server to compare with
    with committed_db() as session:
        marketplace = platform(session)
        vendor_org = accounts.create_organisation(
            session,
            marketplace,
            kind=OrganisationKind.VENDOR,
            name="Notes Ltd",
            billing=accounts.BillingDetails(legal_name="Notes Ltd", country="IE"),
        )
        vendor = accounts.create_user(
            session, email="vendor@notes.test", name="Vera", password="long-enough-pw"
        )
        accounts.grant(session, vendor, marketplace, Role.VENDOR, vendor_org)
        admin = accounts.create_user(
            session, email="admin@mercato.test", name="Ada", password="long-enough-pw"
        )
        accounts.grant(session, admin, marketplace, Role.ADMIN)
        catalog_data.add_customer(session, "browser-orderer@example.test")
        catalog_data.add_customer(session, "someone-else@example.test")
        session.commit()

    # the vendor creates the product in the editor
    sign_in(page, live_server, "vendor@notes.test")
    page.get_by_role("link", name="Your products").click()
    page.get_by_role("link", name="New product").click()
    page.get_by_label("Name", exact=True).fill("Note Keeper")
    page.get_by_label("Address name", exact=True).fill("Note Keeper")  # not a valid address name
    page.get_by_label("Category").select_option(label="Collaboration")
    page.get_by_label("Short description").fill("Shared notes for small teams.")
    page.get_by_label("Description", exact=True).fill("Notes *everyone* can edit.")
    page.get_by_role("button", name="Create the draft").click()
    expect(page.locator("#slug-error")).to_contain_text("lowercase letters")
    page.get_by_label("Address name", exact=True).fill("note-keeper")
    page.get_by_role("button", name="Create the draft").click()
    expect(page.get_by_role("heading", name="Note Keeper", level=1)).to_be_visible()
    page.get_by_role("button", name="Preview the description").click()
    expect(page.locator(".preview em")).to_have_text("everyone")

    page.get_by_label("Logo image (PNG, JPEG or WebP, at most 5 MB)").set_input_files(
        {"name": "logo.png", "mimeType": "image/png", "buffer": png((230, 120, 20))}
    )
    page.get_by_role("button", name="Upload the logo").click()
    expect(page.get_by_text("the background colour computed from your logo")).to_be_visible()

    page.get_by_role("link", name="Add a plan").click()
    page.get_by_label("Name", exact=True).fill("Starter")
    page.get_by_label("Code", exact=True).fill("starter")
    first = page.get_by_role("group", name="Price component 1")
    first.get_by_label("Kind", exact=True).select_option("flat")
    first.get_by_label("Label", exact=True).fill("Licence")
    page.get_by_role("button", name="Save the plan").click()
    expect(page.locator("#components-0-unit_price-error")).to_contain_text("needs a price")
    screenshot(page, "vendor-plan-error")
    page.get_by_role("group", name="Price component 1").get_by_label("Price", exact=True).fill("25.00")
    page.get_by_role("button", name="Save the plan").click()
    expect(page.get_by_role("status")).to_contain_text("The plan Starter is saved")

    page.get_by_role("link", name="Add a deployment target").click()
    target = catalog_data.deployment()[0]
    page.get_by_label("Cloud account").select_option("demo-cloud")
    page.get_by_label("Image", exact=True).fill("1")
    page.get_by_label("CPU cores").fill(str(target["size"]["cores"]))
    page.get_by_label("Memory (MiB)").fill(str(target["size"]["ram_mib"]))
    page.get_by_label("Root disk (GiB)").fill(str(target["size"]["root_disk_gib"]))
    page.get_by_label("Data disk (GiB)").fill("10")
    page.get_by_label("Open ports").fill("443, 22/tcp from 198.51.100.0/24")
    page.get_by_label("Setup script").fill(target["setup_script"])
    page.get_by_label("Application address").fill("https://{ip}/")
    page.get_by_label("Login shown to the customer").fill("admin")
    page.get_by_role("button", name="Save the deployment target").click()
    expect(page.get_by_role("status")).to_contain_text("The deployment target is saved")
    screenshot(page, "vendor-editor")
    page.get_by_role("button", name="Submit for review").click()
    expect(page.get_by_role("status")).to_contain_text("is submitted")

    # an administrator approves it
    sign_in(page, live_server, "admin@mercato.test", "/admin/review")
    review = page.get_by_role("region", name="Note Keeper")
    review.get_by_role("button", name="Approve and publish").click()
    expect(page.get_by_role("status")).to_contain_text("Note Keeper is published")

    with deploying(committed_db, sealer):
        # a customer finds it, compares it with Wiki Server, and orders it
        sign_in(page, live_server, "browser-orderer@example.test")
        page.get_by_label("Search the catalog").fill("notes")
        page.get_by_role("button", name="Search").click()
        expect(page.get_by_role("link", name="Note Keeper")).to_be_visible()
        page.get_by_role("link", name="Catalog").click()
        page.get_by_label("Compare Note Keeper").check()
        page.get_by_label("Compare Wiki Server").check()
        page.get_by_role("button", name="Compare the chosen products").click()
        compare = page.get_by_role("table")
        expect(compare.get_by_role("row", name="From")).to_contain_text("25.00 EUR a month")
        expect(compare.get_by_role("row", name="From")).to_contain_text("10.00 EUR a month")
        screenshot(page, "compare")
        compare.get_by_role("link", name="Note Keeper").click()
        expect(page.locator(".product-head .logo img")).to_be_visible()
        page.get_by_role("button", name="Order").click()
        expect(page.get_by_role("heading", name="Your order for Note Keeper")).to_be_visible()
        expect(page.get_by_text("25.00 EUR", exact=False).first).to_be_visible()
        # the page follows the deployment by itself until the instance is ready
        expect(page.get_by_text("Ready.")).to_be_visible(timeout=30_000)
        expect(page.get_by_role("link", name=re.compile(r"^https:[^ ]+$"))).to_be_visible()
        expect(page.locator("dd", has_text="admin").first).to_be_visible()
        page.get_by_role("button", name="Show the one-time password").click()
        password = page.get_by_label("One-time password")
        expect(password).to_have_text(re.compile(r"^\S{12,}$"))
        screenshot(page, "order-ready")
        order_url = page.url
        page.goto(f"{live_server}/account")
        page.goto(order_url)  # shown once: not again
        expect(page.get_by_text("already shown once here")).to_be_visible()
        expect(page.get_by_role("button", name="Show the one-time password")).to_have_count(0)

    # the customer rates it...
    page.goto(f"{live_server}/products/note-keeper")
    page.get_by_label("Your rating").select_option("4")
    page.get_by_label("Comment (optional)").fill("Solid, set up in seconds.")
    page.get_by_role("button", name="Publish my review").click()
    expect(page.get_by_role("status")).to_contain_text("your review is published")
    review = page.get_by_role("article", name="Review by Customer of browser-orderer@example.test")
    expect(review).to_contain_text("Solid, set up in seconds.")
    expect(page.get_by_text("★ 4.0")).to_be_visible()

    # ...and the vendor replies, once
    sign_in(page, live_server, "vendor@notes.test", "/products/note-keeper")
    page.get_by_label("Your reply").fill("Thank you!")
    page.get_by_role("button", name="Reply").click()
    expect(review).to_contain_text("Notes Ltd replied: Thank you!")
    expect(page.get_by_role("button", name="Reply")).to_have_count(0)
    screenshot(page, "product-reviewed")

    # another customer opening that order gets the 404 page
    sign_in(page, live_server, "someone-else@example.test")
    response = page.goto(order_url)
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="404")).to_be_visible()


def test_the_order_form_shows_its_errors_next_to_the_fields(
    page: Page, live_server: str, committed_db: sessionmaker[Session], app: Flask
) -> None:
    dummy_product(committed_db, app.extensions["mercato.sealer"])
    with committed_db() as session:
        catalog_data.add_customer(session, "browser-typo@example.test")
        session.commit()
    page.goto(f"{live_server}/products/wiki-server")
    page.get_by_role("link", name="Sign in to order").click()
    page.get_by_label("E-mail").fill("browser-typo@example.test")
    page.get_by_label("Password").fill("long-enough-pw")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server}/products/wiki-server")
    # a key that is not one is refused next to its field, and nothing is ordered
    page.get_by_label("Your SSH public key (optional)").fill("not a key")
    page.get_by_role("button", name="Order").click()
    expect(page.locator("#ssh_public_key-error")).to_contain_text("not an OpenSSH public key")
    screenshot(page, "order-form-error")
    with committed_db() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Order)) == 0


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


def test_a_customer_downloads_an_invoice_pdf(
    page: Page, live_server: str, committed_db: sessionmaker[Session]
) -> None:
    from cmw.billing import service as billing
    from cmw.orders import service as orders

    with committed_db() as session:
        catalog_data.publish_product(session, "wiki-server", [_plan(FLAT)])
        buyer, org = catalog_data.add_customer(session, "invoiced@example.test", paying=True)
        orders.place_order(
            session, platform(session), buyer, org, orders.OrderRequest(product="wiki-server", plan="basic")
        )
        session.commit()
    (number,) = billing.run(committed_db).invoices
    sign_in(page, live_server, "invoiced@example.test", "/account/invoices")
    row = page.get_by_role("row", name=number)
    expect(row).to_contain_text("10.00 EUR")
    screenshot(page, "invoices")
    with page.expect_download() as download_info:
        row.get_by_role("link", name=f"PDF of {number}").click()
    download = download_info.value
    assert download.suggested_filename == f"{number}.pdf"
    data = Path(download.path()).read_bytes()
    assert data.startswith(b"%PDF")
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(data)).pages)
    assert f"Invoice {number}" in text and "€10.00" in text
    # the structured e-invoice, for the customer's accounting system
    page.get_by_role("link", name=number, exact=True).click()
    with page.expect_download() as xml_info:
        page.get_by_role("link", name="E-invoice (UBL XML)").click()
    assert xml_info.value.suggested_filename == f"{number}.xml"
    xml = Path(xml_info.value.path()).read_text(encoding="utf-8")
    assert "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2" in xml
    assert f"<cbc:ID>{number}</cbc:ID>" in xml and '<cbc:PayableAmount currencyID="EUR">10.00<' in xml
