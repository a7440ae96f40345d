"""Live costs in a real browser (Chromium, headless): the customer sets a budget on the
Costs page, and the subscription's page follows new usage without being reloaded."""

from __future__ import annotations

import datetime as dt
from typing import Any

from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from cmw.marketplaces.service import platform
from cmw.usage import ingest
from tests.browser import screenshot
from tests.test_browser_storefront import sign_in
from tests.test_usage_ingest import _record, metered  # noqa: F401  (the fixture)


def test_a_customer_sets_a_budget_and_watches_the_live_cost(
    page: Page,
    live_server: str,
    committed_db: sessionmaker[Session],
    metered: dict[str, Any],  # noqa: F811
) -> None:
    sub, since = metered["subscription"], metered["since"]
    sign_in(page, live_server, "meter-customer@example.test", "/account/costs")
    expect(page.get_by_role("heading", name="Costs this period")).to_be_visible()
    expect(page.get_by_role("row", name="Total")).to_contain_text("5.00 EUR")
    page.get_by_label("Monthly budget").fill("12.50")
    page.get_by_label("Currency").fill("EUR")
    page.get_by_role("button", name="Set a budget").click()
    expect(page.get_by_text("5.00 EUR of your 12.50 EUR monthly budget")).to_be_visible()
    expect(page.get_by_role("meter", name="Budget spent")).to_have_attribute("value", "40")
    screenshot(page, "account-costs")

    page.goto(f"{live_server}/account/subscriptions/{sub}")
    total = page.locator('[data-cost="total"]')
    expect(total).to_have_text("5.00 EUR")
    with committed_db() as session:
        records = [_record(n, sub, since + dt.timedelta(hours=n), "30") for n in range(2)]  # 60 GB
        result = ingest.ingest(session, ingest.Scope(platform(session).id), records, source="api")
        session.commit()
    assert len(result.accepted) == 2
    # no reload: the page asks for the figures again when it gets the focus (and every 15 s)
    page.evaluate("window.dispatchEvent(new Event('focus'))")
    expect(total).to_have_text("10.00 EUR")
    expect(page.locator('[data-cost="quantity-1"]')).to_have_text("60 GB")
    screenshot(page, "subscription-live-cost")
