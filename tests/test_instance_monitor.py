"""Instance statistics and VM logs collected from the loopback sshd "VM" of the deployer
tests, over the platform key: from a node exporter when one listens on the VM's loopback
(a small one here, serving node exporter's metric names), else from /proc; log lines read
on from where the last read stopped, a rotated file from its start, non-UTF-8 bytes kept
escaped; an unreachable instance alerts its customer, and is told back; retention."""

from __future__ import annotations

import datetime as dt
import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from cmw.crypto import Sealer
from cmw.events.models import OutboxEvent
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from deployer import service
from deployer.models import CloudAccount, Deployment, DeploymentState
from deployer.monitor import Monitor, Retention
from deployer.telemetry import InstanceLogLine, InstanceSample
from tests import catalog_data
from tests.servers import SshdServer, free_port
from tests.test_pricing import FLAT, _plan
from tests.test_webhooks import _token

Factory = sessionmaker[Session]
#: an hour ago: samples then fall inside the API's window
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)


def exporter_text(cpu_busy: float, cpu_idle: float, received: int, sent: int) -> str:
    return f"""# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{{cpu="0",mode="idle"}} {cpu_idle}
node_cpu_seconds_total{{cpu="0",mode="user"}} {cpu_busy}
# TYPE node_memory_MemTotal_bytes gauge
node_memory_MemTotal_bytes 4.0e+09
# TYPE node_memory_MemAvailable_bytes gauge
node_memory_MemAvailable_bytes 1.0e+09
# TYPE node_filesystem_size_bytes gauge
node_filesystem_size_bytes{{device="/dev/vda1",fstype="ext4",mountpoint="/"}} 1.0e+10
# TYPE node_filesystem_avail_bytes gauge
node_filesystem_avail_bytes{{device="/dev/vda1",fstype="ext4",mountpoint="/"}} 7.5e+09
# TYPE node_network_receive_bytes_total counter
node_network_receive_bytes_total{{device="eth0"}} {received}
node_network_receive_bytes_total{{device="lo"}} 999999
# TYPE node_network_transmit_bytes_total counter
node_network_transmit_bytes_total{{device="eth0"}} {sent}
# TYPE node_load1 gauge
node_load1 0.42
"""


class Exporter:
    """A stand-in node exporter on 127.0.0.1 (the "VM"'s loopback): serves what it is told."""

    def __init__(self) -> None:
        self.text = exporter_text(0, 0, 0, 0)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = outer.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    found = Exporter()
    yield found
    found.server.shutdown()
    found.server.server_close()


@pytest.fixture
def instance(committed_db: Factory, app: Flask, sshd_server: SshdServer, tmp_path: Path) -> dict[str, Any]:
    sealer: Sealer = app.extensions["mercato.sealer"]
    log_file = tmp_path / "app.log"
    with committed_db() as session:
        account = service.create_cloud_account(
            session,
            sealer,
            service.CloudAccountInput(
                slug="monitored",
                name="Monitored",
                provider="ec2",
                credentials={"key": "AKIDTEST", "secret": "test-secret"},
                region="us-east-1",
                ssh_host=sshd_server.host,
                ssh_port=sshd_server.port,
                ssh_username=sshd_server.username,
            ),
        )
        product = catalog_data.publish_product(session, "watched", [_plan(FLAT)])
        buyer, org = catalog_data.add_customer(session, "watched-buyer@example.test")
        subscription_id = orders.place_order(
            session, platform(session), buyer, org, orders.OrderRequest(product="watched", plan="basic")
        ).subscription_id
        deployment = Deployment(
            subscription_id=subscription_id,
            marketplace_id=platform(session).id,
            customer_id=org.id,
            product_id=product.id,
            vendor_id=product.vendor_id,
            cloud_account_id=account.id,
            product_type="vm_app",
            spec={
                "log_files": [str(log_file), str(tmp_path / "not-yet.log")],
                "node_exporter_port": free_port(),
            },
            state=DeploymentState.RUNNING,
            address="203.0.113.10",  # public-looking, never connected to: ssh_host points at the sshd
            active=False,
        )
        session.add(deployment)
        customer = _token(session, buyer)
        other, _ = catalog_data.add_customer(session, "watched-other@example.test")
        outsider = _token(session, other)
        session.commit()
    assert account.public_key is not None
    sshd_server.authorize_key(account.public_key)
    return {
        "id": deployment.id,
        "account_id": account.id,
        "log": log_file,
        "customer": customer,
        "outsider": outsider,
        "monitor": Monitor(committed_db, sealer),
    }


def _set_port(factory: Factory, deployment_id: uuid.UUID, port: int) -> None:
    with factory() as session:
        deployment = session.get(Deployment, deployment_id)
        assert deployment is not None
        deployment.spec = {**deployment.spec, "node_exporter_port": port}
        session.commit()


def _samples(factory: Factory) -> list[InstanceSample]:
    with factory() as session:
        return list(session.scalars(sa.select(InstanceSample).order_by(InstanceSample.at)))


def _lines(factory: Factory) -> list[tuple[str, bool]]:
    with factory() as session:
        return [
            (r.text, r.escaped)
            for r in session.scalars(sa.select(InstanceLogLine).order_by(InstanceLogLine.id))
        ]


def test_statistics_come_from_the_node_exporter_then_from_proc(
    committed_db: Factory, app: Flask, instance: dict[str, Any], exporter: Exporter
) -> None:
    monitor: Monitor = instance["monitor"]
    _set_port(committed_db, instance["id"], exporter.port)
    exporter.text = exporter_text(cpu_busy=100, cpu_idle=300, received=1_000, sent=500)
    assert monitor.collect(instance["id"], T0) is True
    exporter.text = exporter_text(cpu_busy=145, cpu_idle=315, received=7_000, sent=3_500)
    assert monitor.collect(instance["id"], T0 + dt.timedelta(seconds=60)) is True
    first, second = _samples(committed_db)
    assert first.source == second.source == "node_exporter"
    assert (second.memory_total, second.memory_available) == (4_000_000_000, 1_000_000_000)
    assert (second.network_received, second.network_sent) == (7_000, 3_500)  # loopback left out

    client = app.test_client()
    stats = client.get(f"/api/v1/deployments/{instance['id']}/stats?hours=3", headers=instance["customer"])
    assert stats.status_code == 200
    body = stats.get_json()
    assert body["reachable"] is True
    point = body["points"][1]
    # 45 of 60 CPU seconds busy; 6,000 bytes in and 3,000 out over 60 seconds
    assert point["cpu_percent"] == 75.0 and point["memory_percent"] == 75.0 and point["disk_percent"] == 25.0
    assert (
        point["received_per_second"] == 100.0 and point["sent_per_second"] == 50.0 and point["load1"] == 0.42
    )
    assert body["points"][0]["cpu_percent"] is None  # no sample before it to compare with
    assert (
        client.get(f"/api/v1/deployments/{instance['id']}/stats", headers=instance["outsider"]).status_code
        == 404
    )

    # No exporter on the VM: the same figures from /proc and df, which every Linux VM has.
    _set_port(committed_db, instance["id"], free_port())
    assert monitor.collect(instance["id"], T0 + dt.timedelta(seconds=120)) is True
    third = _samples(committed_db)[-1]
    assert third.source == "proc"
    assert third.memory_total and third.memory_total > 0 and third.cpu_seconds and third.cpu_seconds > 0
    assert third.disk_total and third.disk_total > 0 and third.load1 is not None


def test_log_lines_are_read_on_kept_escaped_and_searchable(
    committed_db: Factory, app: Flask, instance: dict[str, Any]
) -> None:
    monitor: Monitor = instance["monitor"]
    log_file: Path = instance["log"]
    log_file.write_bytes(b"started on port 8080\ncaf\xe9 latin-1 \xff line\nhalf a li")
    assert monitor.collect(instance["id"], T0) is True
    assert _lines(committed_db) == [("started on port 8080", False), ("caf\\xe9 latin-1 \\xff line", True)]
    with log_file.open("ab") as handle:
        handle.write(b"ne, finished\nERROR disk full\n")
    monitor.collect(instance["id"], T0 + dt.timedelta(minutes=1))
    monitor.collect(instance["id"], T0 + dt.timedelta(minutes=2))  # nothing new: nothing twice
    assert [t for t, _ in _lines(committed_db)][2:] == ["half a line, finished", "ERROR disk full"]

    rotated = log_file.with_suffix(".log.1")
    log_file.rename(rotated)
    log_file.write_bytes(b"reopened\n")  # a new file (new inode), shorter than the old offset
    monitor.collect(instance["id"], T0 + dt.timedelta(minutes=3))
    assert [t for t, _ in _lines(committed_db)][-1] == "reopened"
    assert len(_lines(committed_db)) == 5

    client = app.test_client()
    found = client.get(
        f"/api/v1/deployments/{instance['id']}/logs?q=CAF", headers=instance["customer"]
    ).get_json()
    assert [(line["text"], line["escaped"]) for line in found["items"]] == [
        ("caf\\xe9 latin-1 \\xff line", True)
    ]
    errors = client.get(f"/api/v1/deployments/{instance['id']}/logs?q=error", headers=instance["customer"])
    assert [line["text"] for line in errors.get_json()["items"]] == ["ERROR disk full"]
    wildcard = client.get(f"/api/v1/deployments/{instance['id']}/logs?q=%25", headers=instance["customer"])
    assert wildcard.get_json()["total"] == 0  # % is a character to find, not a wildcard
    assert (
        client.get(f"/api/v1/deployments/{instance['id']}/logs", headers=instance["outsider"]).status_code
        == 404
    )

    # Past the retention, samples and lines go.
    Monitor(
        committed_db,
        app.extensions["mercato.sealer"],
        Retention(dt.timedelta(hours=1), dt.timedelta(hours=1)),
    ).expire(T0 + dt.timedelta(hours=2))
    assert _lines(committed_db) == [] and _samples(committed_db) == []


def test_an_unreachable_instance_alerts_its_customer_and_is_told_back(
    committed_db: Factory, instance: dict[str, Any], sshd_server: SshdServer
) -> None:
    monitor: Monitor = instance["monitor"]

    def point_at(port: int) -> None:
        with committed_db() as session:
            account = session.get(CloudAccount, instance["account_id"])
            assert account is not None
            account.ssh_port = port
            session.commit()

    def events() -> list[str]:
        with committed_db() as session:
            return list(
                session.scalars(
                    sa.select(OutboxEvent.topic)
                    .where(OutboxEvent.topic.like("deployment.%reachable"))
                    .order_by(OutboxEvent.created_at)
                )
            )

    assert monitor.collect(instance["id"], T0) is True
    point_at(free_port())  # nothing listens there: the "VM" is down
    assert monitor.collect(instance["id"], T0 + dt.timedelta(minutes=1)) is False
    assert events() == []  # one miss is not an outage
    assert monitor.collect(instance["id"], T0 + dt.timedelta(minutes=2)) is False
    assert monitor.collect(instance["id"], T0 + dt.timedelta(minutes=3)) is False
    assert events() == ["deployment.unreachable"]  # told once
    samples = _samples(committed_db)
    assert [s.reachable for s in samples] == [True, False, False, False]
    assert samples[-1].error and "Error" in samples[-1].error
    point_at(sshd_server.port)
    assert monitor.collect(instance["id"], T0 + dt.timedelta(minutes=4)) is True
    assert events() == ["deployment.unreachable", "deployment.reachable"]
    with committed_db() as session:
        payload = session.scalars(
            sa.select(OutboxEvent.payload).where(OutboxEvent.topic == "deployment.unreachable")
        ).one()
    assert payload["since"] == (T0 + dt.timedelta(minutes=1)).isoformat()
    assert payload["customer_id"] and payload["subscription_id"]
