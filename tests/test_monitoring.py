"""Platform monitoring (issue 11, first part): ``/metrics`` in Prometheus's text format,
right under gunicorn with two workers; the platform's own alerts (deployments stuck, a
failing cloud account, outbox lag, a failed billing run) by API and on the admin panel,
decided like the rules in ``docker/prometheus/alerts.yml``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from cmw.accounts.models import Role, User
from cmw.billing.models import BillingRun
from cmw.db import utcnow
from cmw.events.models import OutboxEvent
from cmw.marketplaces.models import Marketplace
from cmw.orders import service as orders
from deployer.models import CloudAccount, Deployment, DeploymentEvent, DeploymentState
from tests import catalog_data
from tests.conftest import broker_url
from tests.helpers import on_host, wait_until
from tests.servers import free_port
from tests.test_pages_storefront import _signed_in
from tests.test_pricing import FLAT, _plan

ROOT = Path(__file__).resolve().parent.parent
Headers = Callable[..., dict[str, str]]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page by (name, sorted labels); fails if it does not parse."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in found.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def test_metrics_count_requests_and_show_the_platform_s_figures(client: FlaskClient) -> None:
    before = samples(client.get("/metrics").get_data(as_text=True))
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/no-such-thing").status_code == 404
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    after = samples(answer.get_data(as_text=True))
    healthz = {"route": "/healthz", "method": "GET", "status": "200"}
    assert (
        total(after, "mercato_http_requests_total", **healthz)
        - total(before, "mercato_http_requests_total", **healthz)
        == 3
    )
    assert total(after, "mercato_http_requests_total", route="unmatched", status="404") > total(
        before, "mercato_http_requests_total", route="unmatched", status="404"
    )
    assert total(after, "mercato_http_request_duration_seconds_count", route="/healthz") >= 3
    # what the database and the broker say, read at scrape time
    assert ("mercato_deployments", (("state", "running"),)) in after
    assert ("mercato_outbox_lag_seconds", ()) in after
    assert after[("mercato_broker_up", ())] == 1
    assert after[("mercato_billing_last_run_failed", ())] == 0


def test_metrics_ask_for_the_token_when_one_is_set(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        app.config, "MERCATO", dataclasses.replace(app.config["MERCATO"], metrics_token="scrape-secret")
    )
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    allowed = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert allowed.status_code == 200 and "mercato_deployments" in allowed.get_data(as_text=True)


def _troubles(session: Session, marketplace: Marketplace) -> dict[str, Any]:
    """A deployment stuck for two hours, a cloud account whose last three deployments
    failed, an event the relay never published, and a failed billing run."""
    now = utcnow()
    flaky = CloudAccount(slug="flaky-cloud", name="Flaky", provider="dummy", credentials_sealed="x")
    session.add(flaky)
    product = catalog_data.publish_product(session, "watched-app", [_plan(FLAT)])
    buyer, org = catalog_data.add_customer(session, "watched@example.test")
    session.flush()

    def deployment(state: DeploymentState, entered: dt.datetime) -> Deployment:
        order = orders.place_order(
            session, marketplace, buyer, org, orders.OrderRequest(product="watched-app", plan="basic")
        )
        assert order.subscription_id is not None
        made = Deployment(
            subscription_id=order.subscription_id,
            marketplace_id=marketplace.id,
            customer_id=org.id,
            product_id=product.id,
            vendor_id=product.vendor_id,
            cloud_account_id=flaky.id,
            product_type="vm_app",
            state=state,
        )
        session.add(made)
        session.flush()
        session.add(
            DeploymentEvent(deployment_id=made.id, at=entered, from_state="requested", to_state=state)
        )
        return made

    stuck = deployment(DeploymentState.CREATING_VM, now - dt.timedelta(hours=2))
    # a retry in the same state a minute ago does not make it look young
    session.add(
        DeploymentEvent(
            deployment_id=stuck.id,
            at=now - dt.timedelta(minutes=1),
            from_state="creating_vm",
            to_state="creating_vm",
        )
    )
    deployment(DeploymentState.CREATING_VM, now - dt.timedelta(minutes=5))  # busy, not stuck
    for _ in range(3):
        deployment(DeploymentState.FAILED, now - dt.timedelta(minutes=10))
    session.add(OutboxEvent(topic="test.old", payload={}, created_at=now - dt.timedelta(minutes=10)))
    session.add(
        BillingRun(
            at=now - dt.timedelta(hours=1),
            started_at=now - dt.timedelta(hours=1),
            finished_at=now - dt.timedelta(minutes=59),
            status="failed",
            error="database went away",
        )
    )
    session.flush()
    return {"stuck": stuck}


def test_the_platform_s_alerts_by_api_on_the_panel_and_in_metrics(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    make_user: Callable[..., User],
    token_for: Headers,
    make_marketplace: Callable[..., Marketplace],
    platform_marketplace: Marketplace,
) -> None:
    admin = make_user(Role.ADMIN)
    quiet = client.get("/api/v1/admin/alerts", headers=token_for(admin))
    assert quiet.status_code == 200 and quiet.json["alerts"] == []

    made = _troubles(db_session, platform_marketplace)
    answer = client.get("/api/v1/admin/alerts", headers=token_for(admin))
    assert answer.status_code == 200
    alerts = {a["name"]: a for a in answer.json["alerts"]}
    assert set(alerts) == {
        "MercatoDeploymentsStuck",
        "MercatoCloudAccountFailing",
        "MercatoOutboxLag",
        "MercatoBillingRunFailed",
    }
    stuck = alerts["MercatoDeploymentsStuck"]
    assert len(stuck["items"]) == 1 and stuck["items"][0].startswith(f"{made['stuck'].id} (creating_vm, 12")
    assert alerts["MercatoCloudAccountFailing"]["items"] == ["flaky-cloud: 3 of 3 failed"]
    assert "database went away" in alerts["MercatoBillingRunFailed"]["summary"]

    # the same figures for Prometheus, which the rules file reads
    found = samples(client.get("/metrics").get_data(as_text=True))
    assert found[("mercato_deployments_stuck", (("state", "creating_vm"),))] == 1
    assert (
        found[
            (
                "mercato_deployment_outcomes_last_hour",
                (("cloud_account", "flaky-cloud"), ("outcome", "failed")),
            )
        ]
        == 3
    )
    assert found[("mercato_outbox_lag_seconds", ())] >= 600
    assert found[("mercato_billing_last_run_failed", ())] == 1

    # the admin panel shows them; a child marketplace's admin and a customer do not get them
    browser = app.test_client()
    _signed_in(browser, make_user(Role.ADMIN, password="a-long-password-1"))
    page = browser.get("/admin/alerts").get_data(as_text=True)
    assert 'id="alert-MercatoDeploymentsStuck"' in page and "flaky-cloud: 3 of 3 failed" in page
    child = make_marketplace(domain="child.test")
    child_admin = make_user(Role.ADMIN, marketplace=child)
    on_host(client, "child.test")
    assert (
        client.get("/api/v1/admin/alerts", headers=token_for(child_admin, marketplace=child)).status_code
        == 404
    )
    on_host(client, None)
    customer = make_user(Role.CUSTOMER)
    assert client.get("/api/v1/admin/alerts", headers=token_for(customer)).status_code == 403


def test_the_rules_file_reads_only_metrics_the_platform_exports(client: FlaskClient) -> None:
    text = client.get("/metrics").get_data(as_text=True)
    # every family the page declares (one with no series yet too), and its series' names
    exported = {family.name for family in text_string_to_metric_families(text)}
    exported |= {name for name, _ in samples(text)}
    # histograms and counters appear once something was observed; name their series too
    exported |= {
        "mercato_provider_call_errors_total",
        "mercato_provider_call_seconds_count",
        "mercato_http_requests_total",
    }
    rules = yaml.safe_load((ROOT / "docker" / "prometheus" / "alerts.yml").read_text())
    names = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names.add(rule["alert"])
            used = set(re.findall(r"\bmercato_[a-z_]+", rule["expr"]))
            assert used and used <= exported, f"{rule['alert']} reads {used - exported}"
    # every alert the platform decides itself has its rule
    assert {
        "MercatoDeploymentsStuck",
        "MercatoCloudAccountFailing",
        "MercatoOutboxLag",
        "MercatoBillingRunFailed",
        "MercatoBrokerDown",
        "MercatoQueueBacklog",
    } <= names


@pytest.mark.slow
def test_metrics_add_up_every_gunicorn_worker(app: Flask, database_url: str, tmp_path: Path) -> None:
    """Two gunicorn workers answer; whichever answers /metrics counts both's requests."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MERCATO_", "PROMETHEUS_"))}
    env.update(
        {
            "MERCATO_ENV": "test",
            "MERCATO_DATA_DIR": str(tmp_path / "var"),
            "MERCATO_DATABASE_URL": database_url,
            "MERCATO_BROKER_URL": broker_url(),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
    )
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "--bind", f"127.0.0.1:{port}",
            "--workers", "2",
            "--config", "python:cmw.webserver",
            "--threads", "2",
            "app:create_app()",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, "gunicorn exited: " + (
                proc.stderr.read().decode() if proc.stderr else ""
            )
            try:
                return requests.get(f"{base}/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 60, "gunicorn to answer")
        baseline = total(
            samples(requests.get(f"{base}/metrics", timeout=10).text),
            "mercato_http_requests_total",
            route="/healthz",
            status="200",
        )
        sent = 0

        def both_workers_answered() -> bool:
            # A new connection each time; which worker accepts it is up to the kernel, so keep
            # asking until both have counted some (one worker can win 40 in a row).
            nonlocal sent
            for _ in range(10):
                answer = requests.get(f"{base}/healthz", timeout=5, headers={"Connection": "close"})
                assert answer.status_code == 200
                sent += 1
            pids = {int(p.stem.rsplit("_", 1)[1]) for p in metrics_dir.glob("counter_*.db")}
            assert proc.pid not in pids, "the arbiter counted requests"
            return len(pids) >= 2 and sent >= 40

        wait_until(both_workers_answered, 60, "both gunicorn workers to answer")
        for _ in range(8):  # whichever worker answers counts all of them
            scrape = requests.get(f"{base}/metrics", timeout=10, headers={"Connection": "close"})
            assert scrape.status_code == 200
            found = samples(scrape.text)
            assert (
                total(found, "mercato_http_requests_total", route="/healthz", status="200") == baseline + sent
            )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
