"""The instance page in a real browser (Chromium, headless): the customer opens it from the
subscription, sees the charts drawn from the collected statistics, and searches the logs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from deployer.models import Deployment
from deployer.monitor import Monitor
from tests.browser import screenshot
from tests.test_browser_storefront import sign_in
from tests.test_instance_monitor import T0, Exporter, _set_port, exporter_text
from tests.test_instance_monitor import exporter as exporter
from tests.test_instance_monitor import instance as instance


def test_a_customer_reads_the_charts_and_searches_the_logs(
    page: Page,
    live_server: str,
    committed_db: sessionmaker[Session],
    instance: dict[str, Any],
    exporter: Exporter,
) -> None:
    monitor: Monitor = instance["monitor"]
    _set_port(committed_db, instance["id"], exporter.port)
    instance["log"].write_bytes(b"GET / 200\nERROR certificate expired\nna\xefve bytes\n")
    for minute, (busy, idle, received) in enumerate([(10, 50, 0), (40, 80, 60_000), (55, 125, 90_000)]):
        exporter.text = exporter_text(busy, idle, received, received // 2)
        assert monitor.collect(instance["id"], T0 + dt.timedelta(minutes=minute)) is True
    with committed_db() as session:
        deployment = session.get(Deployment, instance["id"])
        assert deployment is not None
        subscription_id = deployment.subscription_id

    sign_in(page, live_server, "watched-buyer@example.test", f"/account/subscriptions/{subscription_id}")
    page.get_by_role("link", name="Statistics and logs").click()
    expect(page.get_by_role("heading", name="Instance of Wiki Server")).to_be_visible()
    expect(page.get_by_text("answering, last read")).to_be_visible()
    cpu = page.locator("figure.chart", has=page.locator('[data-chart="CPU"]'))
    expect(cpu.locator("figcaption")).to_contain_text("CPU: 25.0 % now")  # 15 of 60 seconds busy
    expect(cpu.locator("polyline")).to_have_count(1)
    expect(page.get_by_role("img", name="Memory used over the last 24 hours, 3 points")).to_be_visible()
    network = page.locator("figure.chart", has=page.locator('[data-chart="Network in"]'))
    expect(network.locator("figcaption")).to_contain_text("500.0 B/s now")
    screenshot(page, "instance-statistics")

    page.get_by_label("Find").fill("error")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.logs tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("ERROR certificate expired")
    page.get_by_label("Find").fill("na")
    page.get_by_role("button", name="Search").click()
    escaped = page.locator("table.logs tbody tr", has_text="bytes")
    expect(escaped).to_contain_text("na\\xefve bytes")
    expect(escaped).to_contain_text("(escaped)")
    page.get_by_label("Find").fill("nothing like this")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No line holds “nothing like this”.")).to_be_visible()
