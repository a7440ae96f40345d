"""Time-based usage from the cloud's own events: Apache CloudStack's event bus.

CloudStack publishes each action event to its RabbitMQ exchange (``cloudstack-events`` by
default) with the routing key ``<source>.<category>.<type>.<resource type>.<resource
uuid>`` (dots in a part become dashes: ``ManagementServer.ActionEvent.VM-START.
VirtualMachine.<uuid>``) and the event's description as a JSON text body::

    {"event": "VM.START", "status": "Completed", "entity": "VirtualMachine",
     "entityuuid": "<uuid>", "eventDateTime": "2026-11-20 10:00:00 +0000",
     "account": "<uuid>", "user": "<uuid>", "description": "..."}

(the same description is the value of a Kafka record with the Kafka event bus). Only
completed actions count. Which event types start and which stop billing a VM or a volume
is configuration per marketplace (:class:`CloudEventRules`; by default a VM bills from
``VM.CREATE`` or ``VM.START`` to ``VM.STOP``, ``VM.DESTROY`` or ``VM.EXPUNGE``, a volume
from ``VOLUME.CREATE`` to ``VOLUME.DELETE``).

Every event is kept (``cloud_events``, once per body). A resource's billed time is
computed again from all its kept events in time order whenever one arrives, so events
that arrive late, out of order or twice give the same hours; the hours are recorded per
resource (``cloud_resource_hours``) and only the difference is added to the hourly usage
billing rates: VM hours (``vm.hours``, with the VM's size) and volume GB-hours
(``volume.gb_hours``). A resource still running is extended to now by the worker every
few minutes. Events with fields missing or a type that is not a VM's or a volume's go to
``usage_dead_letters`` with the reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ClassVar

import sqlalchemy as sa
from kombu import Exchange, Queue, binding
from kombu.message import Message
from sqlalchemy.orm import Session

from cmw.billing.models import UsageHourly
from cmw.db import utcnow
from cmw.events.consumer import Event, EventConsumer
from cmw.usage.ingest import hour_of
from cmw.usage.models import CloudEvent, CloudEventRules, CloudResourceHour, UsageDeadLetter

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "cloudstack-events"
#: the VM and volume action events consumed (an AMQP binding names each one: its ``*``
#: wildcards stand for whole words only); rules may start or stop billing at any of them
VM_EVENTS = (
    "VM.CREATE",
    "VM.START",
    "VM.STOP",
    "VM.REBOOT",
    "VM.DESTROY",
    "VM.EXPUNGE",
    "VM.RECOVER",
    "VM.RESTORE",
    "VM.MIGRATE",
    "VM.UPGRADE",
)
VOLUME_EVENTS = (
    "VOLUME.CREATE",
    "VOLUME.DELETE",
    "VOLUME.ATTACH",
    "VOLUME.DETACH",
    "VOLUME.RESIZE",
    "VOLUME.UPLOAD",
    "VOLUME.MIGRATE",
)
COMPLETED = "Completed"
HOUR = dt.timedelta(hours=1)
MICROSECOND = dt.timedelta(microseconds=1)
MICROSECONDS_AN_HOUR = Decimal(3_600_000_000)


@dataclasses.dataclass(frozen=True)
class Rules:
    vm_start: tuple[str, ...] = ("VM.CREATE", "VM.START")
    vm_stop: tuple[str, ...] = ("VM.STOP", "VM.DESTROY", "VM.EXPUNGE")
    volume_start: tuple[str, ...] = ("VOLUME.CREATE",)
    volume_stop: tuple[str, ...] = ("VOLUME.DELETE",)
    vm_metric: str = "vm.hours"
    volume_metric: str = "volume.gb_hours"

    def for_kind(self, kind: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
        if kind == "vm":
            return self.vm_start, self.vm_stop, self.vm_metric
        return self.volume_start, self.volume_stop, self.volume_metric


def rules_of(session: Session, marketplace_id: uuid.UUID) -> Rules:
    found = session.get(CloudEventRules, marketplace_id)
    if found is None:
        return Rules()
    return Rules(
        tuple(found.vm_start), tuple(found.vm_stop), tuple(found.volume_start), tuple(found.volume_stop),
        found.vm_metric, found.volume_metric,
    )  # fmt: skip


class EventError(ValueError):
    """The event cannot be used: fields missing, or of a type that is no VM's or volume's."""


class RulesError(ValueError):
    """Rules that cannot be: the field, and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclasses.dataclass(frozen=True)
class Parsed:
    event_type: str
    status: str
    resource_uuid: str
    occurred_at: dt.datetime
    kind: str  # "vm" or "volume"


def parse(body: dict[str, Any]) -> Parsed:
    missing = [k for k in ("event", "status", "entityuuid", "eventDateTime") if not body.get(k)]
    if missing:
        raise EventError(f"fields missing: {', '.join(missing)}")
    event_type = str(body["event"]).strip().upper()
    prefix = event_type.split(".", 1)[0]
    kind = {"VM": "vm", "VOLUME": "volume"}.get(prefix)
    if kind is None or "." not in event_type:
        raise EventError(f"unknown event type {body['event']!r}: neither a VM's nor a volume's")
    raw = str(body["eventDateTime"]).strip()
    try:
        # CloudStack's "yyyy-MM-dd HH:mm:ss Z" (2026-11-20 10:00:00 +0100), or ISO 8601
        occurred = dt.datetime.strptime(raw, "%Y-%m-%d %H:%M:%S %z")
    except ValueError:
        try:
            occurred = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise EventError(f"eventDateTime {raw!r} is not a time") from None
    if occurred.tzinfo is None:
        raise EventError(f"eventDateTime {raw!r} has no time zone")
    return Parsed(
        event_type,
        str(body["status"]).strip(),
        str(body["entityuuid"]).strip(),
        occurred.astimezone(dt.UTC),
        kind,
    )


def _intervals(
    events: list[tuple[dt.datetime, str]], starts: tuple[str, ...], stops: tuple[str, ...], now: dt.datetime
) -> list[tuple[dt.datetime, dt.datetime]]:
    """Billed intervals from (time, type) in time order: from a start to the next stop; a
    start while running and a stop while stopped change nothing; still running: to now."""
    found = []
    since: dt.datetime | None = None
    for at, event_type in events:
        if event_type in starts and since is None:
            since = at
        elif event_type in stops and since is not None:
            if at > since:
                found.append((since, at))
            since = None
    if since is not None and now > since:
        found.append((since, now))
    return found


def _by_hour(intervals: list[tuple[dt.datetime, dt.datetime]], factor: Decimal) -> dict[dt.datetime, Decimal]:
    hours: dict[dt.datetime, Decimal] = defaultdict(Decimal)
    for start, end in intervals:
        at = start
        while at < end:
            bucket = hour_of(at)
            upto = min(end, bucket + HOUR)
            hours[bucket] += Decimal((upto - at) // MICROSECOND) / MICROSECONDS_AN_HOUR * factor
            at = upto
    return {h: q.quantize(Decimal("0.00000001")) for h, q in hours.items() if q}


def deployment_of(resource_uuid: str) -> sa.Select[Any]:
    """The deployment that made the machine or the disk (through their indexes)."""
    from deployer.models import Deployment

    return sa.select(Deployment).where(
        sa.or_(Deployment.node_id == resource_uuid, Deployment.volume_id == resource_uuid)
    )


def _resource(session: Session, resource_uuid: str) -> tuple[Any, str] | None:
    deployment = session.scalar(deployment_of(resource_uuid))
    if deployment is None:
        return None
    return deployment, ("vm" if deployment.node_id == resource_uuid else "volume")


def recompute(session: Session, resource_uuid: str, now: dt.datetime | None = None) -> int:
    """Bring the resource's derived hours and the hourly usage up to its kept events;
    how many hours changed. Unknown resources (not made by Mercato) count nothing."""
    now = now or utcnow()
    found = _resource(session, resource_uuid)
    if found is None:
        return 0
    deployment, kind = found
    _lock_resource(session, resource_uuid)
    rules = rules_of(session, deployment.marketplace_id)
    starts, stops, metric = rules.for_kind(kind)
    events = [
        (at, event_type)
        for at, event_type in session.execute(
            sa.select(CloudEvent.occurred_at, CloudEvent.event_type)
            .where(CloudEvent.resource_uuid == resource_uuid, CloudEvent.status == COMPLETED)
            .order_by(CloudEvent.occurred_at, CloudEvent.id)
        )
    ]
    spec = deployment.spec or {}
    factor = Decimal(1) if kind == "vm" else Decimal(int(spec.get("data_disk_gib") or 0))
    wanted = _by_hour(_intervals(events, starts, stops, now), factor)
    held = {
        row.hour: row
        for row in session.scalars(
            sa.select(CloudResourceHour)
            .where(CloudResourceHour.resource_uuid == resource_uuid, CloudResourceHour.metric == metric)
            .with_for_update()
        )
    }
    changed = 0
    for hour in sorted(set(wanted) | set(held)):
        quantity = wanted.get(hour, Decimal(0))
        row = held.get(hour)
        delta = quantity - (row.quantity if row is not None else Decimal(0))
        if not delta:
            continue
        changed += 1
        _add_hourly(session, deployment.subscription_id, metric, hour, delta)
        if row is None:
            session.add(
                CloudResourceHour(
                    resource_uuid=resource_uuid, metric=metric, hour=hour,
                    subscription_id=deployment.subscription_id, quantity=quantity,
                )
            )  # fmt: skip
        elif quantity:
            row.quantity = quantity
        else:
            session.delete(row)
    session.flush()
    return changed


def _lock_resource(session: Session, resource_uuid: str) -> None:
    """One recompute of a resource at a time (PostgreSQL; SQLite has one writer anyway):
    each reads the events after the one before it committed, so none undoes another."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext("cloud:" + resource_uuid))))


def _add_hourly(
    session: Session, subscription_id: uuid.UUID, metric: str, hour: dt.datetime, delta: Decimal
) -> None:
    row = session.get(UsageHourly, (subscription_id, metric, hour), with_for_update=True)
    if row is None:
        session.add(UsageHourly(subscription_id=subscription_id, metric=metric, hour=hour, quantity=delta))
    else:
        row.quantity += delta


def record(session: Session, body: Any, source: str = "cloudstack", now: dt.datetime | None = None) -> bool:
    """Keep one event and apply it; False if it was seen before or is a dead letter."""
    if not isinstance(body, dict):
        session.add(
            UsageDeadLetter(
                source="cloud", reason="an event is a JSON object", payload={"body": str(body)[:2000]}
            )
        )
        return False
    try:
        parsed = parse(body)
    except EventError as exc:
        session.add(UsageDeadLetter(source="cloud", reason=str(exc), payload={"body": body}))
        return False
    key = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    if session.scalar(sa.select(CloudEvent.id).where(CloudEvent.key == key)) is not None:
        return False
    session.add(
        CloudEvent(
            key=key, source=source, event_type=parsed.event_type, status=parsed.status,
            resource_uuid=parsed.resource_uuid, occurred_at=parsed.occurred_at, body=body,
        )
    )  # fmt: skip
    session.flush()
    if parsed.status == COMPLETED:
        recompute(session, parsed.resource_uuid, now)
    return True


def extend_running(session_factory: Callable[[], Session], now: dt.datetime | None = None) -> int:
    """Resources still running by their own events and rules (a start after the last stop,
    whatever came after it: an attach, a reboot) have their hours brought up to now."""
    now = now or utcnow()
    with session_factory() as session:
        history: dict[str, list[tuple[dt.datetime, str]]] = defaultdict(list)
        for resource_uuid, at, event_type in session.execute(
            sa.select(CloudEvent.resource_uuid, CloudEvent.occurred_at, CloudEvent.event_type)
            .where(CloudEvent.status == COMPLETED)
            .order_by(CloudEvent.resource_uuid, CloudEvent.occurred_at, CloudEvent.id)
        ):
            history[resource_uuid].append((at, event_type))
        running = []
        for resource_uuid, events in sorted(history.items()):
            found = _resource(session, resource_uuid)
            if found is None:
                continue
            starts, stops, _metric = rules_of(session, found[0].marketplace_id).for_kind(found[1])
            intervals = _intervals(events, starts, stops, now)
            if intervals and intervals[-1][1] == now:
                running.append(resource_uuid)
    extended = 0
    for resource_uuid in running:
        with session_factory() as session:
            if recompute(session, resource_uuid, now):
                extended += 1
            session.commit()
    return extended


class CloudStackEvents(EventConsumer):
    """CloudStack's event bus: its exchange, VM and volume action events, text bodies."""

    name = "cloudstack-events"
    topics = tuple(f"*.ActionEvent.{t.replace('.', '-')}.*.*" for t in VM_EVENTS + VOLUME_EVENTS)
    accept: ClassVar[tuple[str, ...]] = ("json", "text/plain", "application/octet-stream")
    #: retried a little, then parked: a bad event must not hold up the rest
    max_attempts = 3

    def __init__(self, exchange: str = DEFAULT_EXCHANGE) -> None:
        self.exchange = Exchange(exchange, type="topic", durable=True)

    def queue(self) -> Queue:
        return Queue(
            self.name, bindings=[binding(self.exchange, routing_key=t) for t in self.topics], durable=True
        )

    @staticmethod
    def _parse(body: Any, message: Message) -> Event | None:
        if isinstance(body, bytes | str):
            try:
                body = json.loads(body)
            except ValueError:
                body = {"unparsed": body if isinstance(body, str) else body.decode("utf-8", "replace")}
        if not isinstance(body, dict):
            body = {"unparsed": str(body)}
        # CloudStack sends no message id: the body identifies the event
        key = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
        topic = str(message.delivery_info.get("routing_key") or "")
        return Event(id=key, topic=topic, payload=body)

    def handle(self, session: Session, event: Event) -> None:
        record(session, event.payload)


def set_rules(session: Session, marketplace_id: uuid.UUID, changes: dict[str, Any]) -> Rules:
    """Change which events start and stop billing (only the fields given change)."""
    current = dataclasses.asdict(rules_of(session, marketplace_id))
    merged = {**current, **{k: v for k, v in changes.items() if v is not None}}
    for kind, known in (("vm", VM_EVENTS), ("volume", VOLUME_EVENTS)):
        for edge in ("start", "stop"):
            field = f"{kind}_{edge}"
            types = tuple(dict.fromkeys(str(t).strip().upper() for t in merged[field]))
            unknown = [t for t in types if t not in known]
            if not types or unknown:
                raise RulesError(
                    field,
                    f"one or more of {', '.join(known)}" + (f"; not {', '.join(unknown)}" if unknown else ""),
                )
            merged[field] = types
        overlap = set(merged[f"{kind}_start"]) & set(merged[f"{kind}_stop"])
        if overlap:
            raise RulesError(
                f"{kind}_stop", f"{', '.join(sorted(overlap))} cannot both start and stop billing"
            )
    for field in ("vm_metric", "volume_metric"):
        merged[field] = str(merged[field]).strip()
        if not 1 <= len(merged[field]) <= 100:
            raise RulesError(field, "1 to 100 characters")
    found = session.get(CloudEventRules, marketplace_id)
    if found is None:
        found = CloudEventRules(marketplace_id=marketplace_id)
        session.add(found)
    for field, value in merged.items():
        setattr(found, field, list(value) if isinstance(value, tuple) else value)
    session.flush()
    return rules_of(session, marketplace_id)
