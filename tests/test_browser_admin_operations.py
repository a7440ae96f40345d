"""The administrators' operations pages in a real browser (Chromium, headless): the alerts
the platform raises about itself, the forwarding of tickets to an external ticket system
(its signing secret shown once, a bad address refused next to its field), and the audit
log, where that change is found again by its action and by who made it."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Role
from cmw.marketplaces.service import platform
from cmw.support.models import SupportSettings
from tests.browser import screenshot
from tests.test_browser_storefront import sign_in
from tests.test_monitoring import _troubles

ADMIN = "ops-admin@example.test"


def test_an_admin_reads_the_alerts_sets_ticket_forwarding_and_finds_it_in_the_audit_log(
    page: Page, live_server: str, committed_db: sessionmaker[Session]
) -> None:
    with committed_db() as session:
        admin = accounts.create_user(session, email=ADMIN, name="Ops Admin", password="long-enough-pw")
        accounts.grant(session, admin, platform(session), Role.ADMIN)
        stuck = _troubles(session, platform(session))["stuck"]
        session.commit()

    sign_in(page, live_server, ADMIN, "/admin/alerts")
    alerts = page.locator("ul.alerts > li")
    expect(alerts).to_have_count(4)
    expect(page.locator("#alert-MercatoDeploymentsStuck")).to_contain_text(str(stuck.id))
    expect(page.locator("#alert-MercatoCloudAccountFailing")).to_contain_text("flaky-cloud: 3 of 3 failed")
    expect(page.locator("#alert-MercatoBillingRunFailed")).to_contain_text("database went away")
    expect(page.get_by_role("region", name="Cloud accounts, last hour")).to_contain_text(
        "3 finished, 3 failed"
    )
    screenshot(page, "admin-alerts")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Support").click()
    expect(page.locator("#forwarding-now")).to_have_text(
        "Nothing is forwarded: tickets are answered here only."
    )
    page.get_by_label("Webhook URL").fill("https://localhost:8443/hooks/mercato")
    page.get_by_label("E-mail address").fill("not an address")
    page.get_by_role("button", name="Save forwarding").click()
    expect(page.locator("#forward_email-error")).to_have_text(
        "Enter an e-mail address, such as help@example.com."
    )
    expect(page.get_by_label("E-mail address")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Webhook URL")).to_have_value("https://localhost:8443/hooks/mercato")
    with committed_db() as session:
        assert session.get(SupportSettings, platform(session).id) is None  # nothing half-saved

    page.get_by_label("E-mail address").fill("desk@helpdesk.example")
    page.get_by_role("button", name="Save forwarding").click()
    secret = page.get_by_label("Signing secret").inner_text()
    assert secret.startswith("whsec_")
    expect(page.locator("#forwarding-now")).to_contain_text("https://localhost:8443/hooks/mercato")
    expect(page.locator("#forwarding-now")).to_contain_text("by e-mail to desk@helpdesk.example")
    screenshot(page, "admin-support-forwarding")
    page.reload()
    expect(page.get_by_label("Signing secret")).to_have_count(0)  # shown once
    expect(page.get_by_label("E-mail address")).to_have_value("desk@helpdesk.example")

    page.get_by_label("Webhook URL").fill("ftp://localhost/")
    page.get_by_role("button", name="Save forwarding").click()
    expect(page.locator("#forward_url-error")).to_contain_text("https")
    page.goto(f"{live_server}/admin/support")
    expect(page.locator("#forwarding-now")).to_contain_text("https://localhost:8443/hooks/mercato")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    page.get_by_label("Action").fill("/admin/support")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(2)  # the two saves that took; the refused ones are no entries
    expect(rows.first).to_contain_text(ADMIN)
    expect(rows.first).to_contain_text("POST /admin/support")
    screenshot(page, "admin-audit")
    page.get_by_label("Action").fill("")
    page.get_by_label("Who (e-mail)").fill("nobody@example.test")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No entries match.")).to_be_visible()
