"""Apache CloudStack's event bus over RabbitMQ: VM and volume action events, published as
CloudStack publishes them (routing key ``ManagementServer.ActionEvent.VM-START.
VirtualMachine.<uuid>``, the description as a JSON text body, no message id), shuffled
and duplicated, give the exact VM hours and volume GB-hours; broken events become dead
letters without stopping the consumer; the rules of what starts and stops billing are the
marketplace's; a rebuild derives the same hours again from the kept events."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import Flask
from kombu import Connection, Producer
from sqlalchemy.orm import Session, sessionmaker

from cmw.billing.models import UsageHourly
from cmw.db import utcnow
from cmw.events.worker import Worker
from cmw.marketplaces.service import platform
from cmw.orders.models import Subscription
from cmw.usage import cloud, replay
from cmw.usage.models import CloudEvent, CloudEventRules, UsageDeadLetter
from deployer.models import Deployment, DeploymentState
from tests.conftest import broker_url
from tests.helpers import tag, wait_until
from tests.test_usage_ingest import metered  # noqa: F401  (the fixture)

Factory = sessionmaker[Session]
D = Decimal
VM, VOLUME = str(uuid.uuid4()), str(uuid.uuid4())


def _event(
    kind: str, action: str, resource: str, at: dt.datetime, status: str = "Completed"
) -> tuple[str, str]:
    """(routing key, body) as CloudStack's RabbitMQ event bus publishes an action event."""
    entity = "VirtualMachine" if kind == "VM" else "Volume"
    body = {
        "event": f"{kind}.{action}",
        "status": status,
        "entity": f"com.cloud.vm.{entity}" if kind == "VM" else f"com.cloud.storage.{entity}",
        "entityuuid": resource,
        entity: resource,
        "account": "5c4a-acc0",
        "user": "5c4a-0se7",
        "description": f"{action.lower()} {kind.lower()}",
        "eventDateTime": at.strftime("%Y-%m-%d %H:%M:%S +0000"),
    }
    return f"ManagementServer.ActionEvent.{kind}-{action}.{entity}.{resource}", json.dumps(body)


def _deployment(factory: Factory, subscription_id: uuid.UUID, vendor_id: uuid.UUID) -> None:
    with factory() as session:
        found = session.get(Subscription, subscription_id)
        assert found is not None
        session.add(
            Deployment(
                id=uuid.uuid4(), subscription_id=subscription_id, marketplace_id=found.marketplace_id,
                customer_id=found.customer_id, product_id=found.product_id, vendor_id=vendor_id,
                product_type="vm_app", spec={"data_disk_gib": 8, "size": {"cores": 2}},
                state=DeploymentState.RUNNING, active=False, node_id=VM, volume_id=VOLUME,
                next_attempt_at=utcnow(),
            )
        )  # fmt: skip
        session.commit()


def _hours(factory: Factory, subscription_id: uuid.UUID) -> dict[str, Decimal]:
    with factory() as session:
        return {
            metric: D(total)
            for metric, total in session.execute(
                sa.select(UsageHourly.metric, sa.func.sum(UsageHourly.quantity))
                .where(UsageHourly.subscription_id == subscription_id)
                .group_by(UsageHourly.metric)
            )
        }


def test_cloudstack_events_shuffled_and_duplicated_give_the_exact_hours(
    app: Flask,
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    sub = metered["subscription"]
    _deployment(committed_db, sub, metered["vendor"])
    t0 = (utcnow() - dt.timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    minutes = lambda m: t0 + dt.timedelta(minutes=m)  # noqa: E731
    sequence = [
        _event("VM", "CREATE", VM, minutes(10), "Scheduled"),
        _event("VM", "CREATE", VM, minutes(12), "Started"),
        _event("VM", "CREATE", VM, minutes(15)),  # billed from 00:15
        _event("VM", "STOP", VM, minutes(165)),  # to 02:45: 2.5 hours
        _event("VM", "START", VM, minutes(330)),  # from 05:30
        _event("VM", "REBOOT", VM, minutes(360)),  # changes nothing
        _event("VM", "DESTROY", VM, minutes(450)),  # to 07:30: 2 hours
        _event("VM", "EXPUNGE", VM, minutes(480)),  # stopped already
        _event("VOLUME", "CREATE", VOLUME, minutes(30)),
        _event("VOLUME", "ATTACH", VOLUME, minutes(31)),
        _event("VOLUME", "DELETE", VOLUME, minutes(210)),  # 3 hours of 8 GiB
    ]
    key = "ManagementServer.ActionEvent.VM-START.VirtualMachine.{}"
    snapshot = {"event": "SNAPSHOT.CREATE", "status": "Completed", "entityuuid": "y"}
    broken = [
        (key.format("x"), json.dumps({"event": "VM.START", "status": "Completed"})),
        (key.format("y"), json.dumps({**snapshot, "eventDateTime": "2026-11-20 10:00:00 +0000"})),
    ]
    messages = sequence + sequence[2:6] + sequence[8:] + broken  # some twice
    random.Random(7).shuffle(messages)
    consumer = cloud.CloudStackEvents(f"cloudstack-events-test-{tag(6)}")

    def connect() -> Connection:
        return Connection(broker_url(), transport_options={"confirm_publish": True}, heartbeat=30)

    with connect() as conn:
        consumer.queue()(conn.default_channel).declare()
    runner = Worker(connect, committed_db, [consumer], relay_poll_seconds=0.05)
    thread = threading.Thread(target=runner.run_forever, daemon=True)
    thread.start()
    try:
        with connect() as conn:
            producer = Producer(conn.default_channel, exchange=consumer.exchange)
            for routing_key, body in messages:
                # as CloudStack sends them: persistent text, no message id
                producer.publish(
                    body,
                    routing_key=routing_key,
                    content_type="text/plain",
                    content_encoding="utf-8",
                    delivery_mode=2,
                )

        def settled() -> dict[str, Decimal] | None:
            with committed_db() as session:
                kept = session.scalar(sa.select(sa.func.count()).select_from(CloudEvent))
                letters = session.scalar(sa.select(sa.func.count()).select_from(UsageDeadLetter))
            return _hours(committed_db, sub) if kept == len(sequence) and letters == 2 else None

        hours = wait_until(settled, 30, "every event applied")
    finally:
        runner.stop()
        thread.join(15)
        with connect() as conn:
            consumer.queue()(conn.default_channel).delete()
            consumer.exchange(conn.default_channel).delete()
    assert hours == {"vm.hours": D("4.5"), "volume.gb_hours": D("24")}
    with committed_db() as session:
        per_hour = {
            (u.metric, u.hour): u.quantity
            for u in session.scalars(sa.select(UsageHourly).where(UsageHourly.subscription_id == sub))
        }
        reasons = sorted(d.reason for d in session.scalars(sa.select(UsageDeadLetter)))
    assert per_hour[("vm.hours", t0)] == D("0.75") and per_hour[("vm.hours", t0 + dt.timedelta(hours=1))] == 1
    assert per_hour[("vm.hours", t0 + dt.timedelta(hours=2))] == D("0.75")
    assert per_hour[("volume.gb_hours", t0)] == D("4")  # half an hour of 8 GiB
    assert reasons[0].startswith("fields missing: entityuuid, eventDateTime")
    assert reasons[1] == "unknown event type 'SNAPSHOT.CREATE': neither a VM's nor a volume's"


def test_the_rules_are_the_marketplaces_and_a_rebuild_derives_the_same_hours(
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    sub = metered["subscription"]
    _deployment(committed_db, sub, metered["vendor"])
    t0 = (utcnow() - dt.timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    with committed_db() as session:
        # this marketplace bills a VM from its start, not its creation, until it is expunged
        session.add(
            CloudEventRules(
                marketplace_id=platform(session).id, vm_start=["VM.START"], vm_stop=["VM.EXPUNGE"],
                volume_start=["VOLUME.CREATE"], volume_stop=["VOLUME.DELETE"], vm_metric="vm.hours",
                volume_metric="volume.gb_hours",
            )
        )  # fmt: skip
        session.commit()
    events = [
        _event("VM", "CREATE", VM, t0),
        _event("VM", "START", VM, t0 + dt.timedelta(hours=1)),
        _event("VM", "STOP", VM, t0 + dt.timedelta(hours=2)),
        _event("VM", "EXPUNGE", VM, t0 + dt.timedelta(hours=4)),
    ]
    for _key, body in reversed(events):  # newest first
        with committed_db() as session:
            cloud.record(session, json.loads(body))
            session.commit()
    assert _hours(committed_db, sub) == {"vm.hours": D("3")}
    with committed_db() as session:
        session.execute(sa.delete(UsageHourly))
        session.commit()
        report = replay.rebuild(session, t0 - dt.timedelta(hours=1), t0 + dt.timedelta(hours=6))
        session.commit()
    assert _hours(committed_db, sub) == {"vm.hours": D("3")}
    assert [(c.metric, c.before, c.after) for c in report.usage] == [("vm.hours", D(0), D(3))]


def test_admins_read_and_change_the_rules(
    app: Flask,
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    from tests.test_usage_ingest import _sign_in

    admin, headers = _sign_in(app, "meter-admin@example.test")
    rules = admin.get("/api/v1/admin/cloud-event-rules").get_json()
    assert rules["vm_start"] == ["VM.CREATE", "VM.START"] and rules["volume_metric"] == "volume.gb_hours"
    for body, field in (
        ({"vm_start": ["VM.BOOT"]}, "vm_start"),
        ({"vm_stop": ["VM.START"]}, "vm_stop"),  # would both start and stop
        ({"volume_stop": []}, "volume_stop"),
        ({"vm_metric": " "}, "vm_metric"),
    ):
        refused = admin.put("/api/v1/admin/cloud-event-rules", json=body, headers=headers)
        assert refused.status_code == 422 and refused.get_json()["errors"][0]["field"] == field, body
    changed = admin.put(
        "/api/v1/admin/cloud-event-rules",
        json={"vm_start": ["vm.start"], "vm_stop": ["VM.EXPUNGE"]},
        headers=headers,
    )
    assert changed.status_code == 200, changed.get_data(as_text=True)
    assert changed.get_json()["vm_start"] == ["VM.START"] and changed.get_json()["vm_stop"] == ["VM.EXPUNGE"]
    with committed_db() as session:
        assert cloud.rules_of(session, platform(session).id).vm_stop == ("VM.EXPUNGE",)
    vendor, _ = _sign_in(app, "meter-vendor@example.test")
    assert vendor.get("/api/v1/admin/cloud-event-rules").status_code == 403


def test_bandwidth_is_read_from_cloudwatch_once_per_five_minutes(
    app: Flask,
    committed_db: Factory,
    moto_server: Any,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    from cmw.usage import bandwidth
    from deployer import service as deployments

    moto_server.reset()
    sealer = app.extensions["mercato.sealer"]
    options = moto_server.libcloud_ec2_kwargs()
    region = options.pop("region")
    with committed_db() as session:
        account = deployments.create_cloud_account(
            session,
            sealer,
            deployments.CloudAccountInput(
                slug="aws-bandwidth", name="AWS (moto)", provider="ec2",
                credentials={"key": moto_server.access_key_id, "secret": moto_server.secret_access_key},
                region=region, driver_options=options,
            ),
        )  # fmt: skip
        session.commit()
        account_id = account.id
    _deployment(committed_db, metered["subscription"], metered["vendor"])
    with committed_db() as session:
        session.execute(sa.update(Deployment).values(cloud_account_id=account_id, node_id="i-0bandwidth"))
        session.commit()
    now = utcnow().replace(second=0, microsecond=0)
    five = now.replace(minute=now.minute - now.minute % 5) - dt.timedelta(minutes=30)
    cloudwatch = moto_server.boto3_client("cloudwatch")
    for name, gigabytes in (("NetworkOut", "1.5"), ("NetworkIn", "0.25")):
        cloudwatch.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {
                    "MetricName": name,
                    "Dimensions": [{"Name": "InstanceId", "Value": "i-0bandwidth"}],
                    "Timestamp": five + dt.timedelta(minutes=1),
                    "Value": float(D(gigabytes) * 10**9),  # CloudWatch's API takes a double
                    "Unit": "Bytes",
                }
            ],
        )
    assert bandwidth.export(committed_db, sealer, now=now) == 2
    assert (
        bandwidth.export(committed_db, sealer, now=now + dt.timedelta(minutes=15)) == 0
    )  # read again: nothing twice
    hours = _hours(committed_db, metered["subscription"])
    assert hours == {"bandwidth.gb": D("1.75")}


def test_a_resource_running_after_an_event_that_neither_starts_nor_stops_keeps_accruing(
    committed_db: Factory,
    metered: dict[str, Any],  # noqa: F811
) -> None:
    sub = metered["subscription"]
    _deployment(committed_db, sub, metered["vendor"])
    t0 = (utcnow() - dt.timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    for _key, body in (
        _event("VM", "CREATE", VM, t0),
        _event("VM", "REBOOT", VM, t0 + dt.timedelta(hours=1)),
    ):
        with committed_db() as session:
            cloud.record(session, json.loads(body), now=t0 + dt.timedelta(hours=1))
            session.commit()
    assert _hours(committed_db, sub) == {"vm.hours": D("1")}
    # the worker's job: still running (the reboot changes nothing), so up to now
    assert cloud.extend_running(committed_db, now=t0 + dt.timedelta(hours=3)) == 1
    assert _hours(committed_db, sub) == {"vm.hours": D("3")}
