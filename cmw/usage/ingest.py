"""Usage ingestion: batches of records from the API, the ``usage`` queue and the cloud
adapters, checked one by one and counted exactly once.

A record is ``{id, subscription | resource, metric, quantity, timestamp, attributes}``.
``id`` is the idempotency key (per marketplace and vendor of the subscription's product).
Each record is checked on its own and rejected with the reason (unknown subscription or
resource, a metric the subscription's plan does not meter, a negative quantity, a time in
the future, before the subscription began, after it ended, or in a period whose usage is
billed already); the valid ones of the batch are accepted all the same.

Accepted records are written in one transaction: their keys into ``usage_record_ids``
first (``ON CONFLICT DO NOTHING``: a key seen before, or taken by a concurrent batch that
commits first, is a duplicate and counted nowhere), then the new records into
``usage_records`` (PostgreSQL ``COPY`` into the month's partition) and their sums into the
hourly roll-up billing and live costs read, ``usage_hourly``. Keys and hours are written
in sorted order, so concurrent batches wait on each other instead of deadlocking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.billing.models import BilledItem, BilledKind, UsageHourly
from cmw.billing.service import usage_lock
from cmw.catalog.models import ComponentKind, Plan, PriceComponent, Product
from cmw.db import utcnow
from cmw.monitoring import metrics as monitoring
from cmw.orders.models import Subscription
from cmw.orders.service import next_period_end
from cmw.usage.models import MAX_RECORD_ID, UsageRecord, UsageRecordId

#: records in one batch (more: 413)
MAX_BATCH = 10_000
#: how far ahead of the server's clock a record may be (clocks drift)
FUTURE_SKEW = dt.timedelta(minutes=5)
#: decimals a quantity may have (the roll-up's scale)
QUANTITY_PLACES = 8
_QUANTITY_CEILING = Decimal(10) ** 16
_QUANTITY_STEP = Decimal(1).scaleb(-QUANTITY_PLACES)
_QUANTITY_LIMIT = f"quantity: at most {QUANTITY_PLACES} decimals and below 10^16"
MAX_ATTRIBUTES = 4_096


class BatchError(Exception):
    """The batch as a whole is unusable: 400 (malformed) or 413 (too many records)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclasses.dataclass(frozen=True)
class Scope:
    """Whose records a batch may carry: a marketplace's, all of them (admins, the queue)
    or only those of subscriptions to the given vendors' products."""

    marketplace_id: uuid.UUID
    vendor_ids: frozenset[uuid.UUID] | None = None


@dataclasses.dataclass(frozen=True)
class Rejection:
    index: int
    id: str | None
    reason: str


@dataclasses.dataclass
class Result:
    accepted: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    rejected: list[Rejection] = dataclasses.field(default_factory=list)
    #: the hours (subscription, metric, hour) the accepted records changed
    hours: set[tuple[uuid.UUID, str, dt.datetime]] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(slots=True)
class _Candidate:
    index: int
    record_id: str
    subscription: uuid.UUID | None
    resource: str | None
    metric: str
    quantity: Decimal
    at: dt.datetime
    attributes: dict[str, Any]


@dataclasses.dataclass(slots=True)
class _Record:
    record_id: str
    vendor_id: uuid.UUID
    subscription_id: uuid.UUID
    metric: str
    quantity: Decimal
    at: dt.datetime
    attributes: dict[str, Any]
    #: the vendor's and the subscription's ids as text: the keys a batch's records are
    #: compared and summed by (a UUID hashes in Python, a string in C, once)
    vendor_key: str
    subscription_key: str


def parse_batch(raw: bytes) -> list[Any]:
    """The records of a request body: ``{"records": [...]}`` (or a bare list)."""
    try:
        body = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BatchError(400, f"the body is not JSON: {exc}") from None
    records = body.get("records") if isinstance(body, dict) else body
    if not isinstance(records, list):
        raise BatchError(400, 'send {"records": [...]}: a list of usage records')
    if len(records) > MAX_BATCH:
        raise BatchError(413, f"{len(records)} records in one batch; send at most {MAX_BATCH:,}")
    return records


def _text(record: dict[str, Any], key: str, limit: int) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if type(value) is str and 0 < len(value) <= limit and not value[0].isspace() and not value[-1].isspace():
        text = value  # the usual case: a plain string, nothing to strip
    else:
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ValueError(f"{key} must be a string")
        text = str(value).strip()
        if not text or len(text) > limit:
            raise ValueError(f"{key} must be 1 to {limit} characters")
    if "\0" in text:
        raise ValueError(f"{key} must not contain NUL characters")
    return text


def _has_nul(value: Any) -> bool:
    """Whether a NUL is in any key or string of the JSON value (PostgreSQL cannot keep it)."""
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _candidate(
    index: int, record: Any, subscriptions: dict[str, uuid.UUID | None] | None = None
) -> _Candidate | Rejection:
    """The record checked on its own; ``subscriptions`` keeps the ids parsed so far in the
    batch (most of a batch's records are of a few subscriptions)."""
    if not isinstance(record, dict):
        return Rejection(index, None, "a record is a JSON object")
    try:
        record_id = _text(record, "id", MAX_RECORD_ID)
    except ValueError as exc:
        return Rejection(index, None, str(exc))
    if record_id is None:
        return Rejection(index, None, "id is required: it makes sending a record again safe")

    def reject(reason: str) -> Rejection:
        return Rejection(index, record_id, reason)

    try:
        subscription_ref = _text(record, "subscription", 64)
        resource = _text(record, "resource", 255)
        metric = _text(record, "metric", 100)
    except ValueError as exc:
        return reject(str(exc))
    if (subscription_ref is None) == (resource is None):
        return reject("give either subscription (its id) or resource (a deployment's id, VM or disk id)")
    subscription: uuid.UUID | None = None
    if subscription_ref is not None:
        if subscriptions is not None and subscription_ref in subscriptions:
            subscription = subscriptions[subscription_ref]
        else:
            with contextlib.suppress(ValueError):
                subscription = uuid.UUID(subscription_ref)
            if subscriptions is not None:
                subscriptions[subscription_ref] = subscription
        if subscription is None:
            return reject(f"unknown subscription {subscription_ref!r}")
    if metric is None:
        return reject("metric is required")
    raw_quantity = record.get("quantity")
    if isinstance(raw_quantity, bool) or not isinstance(raw_quantity, int | float | Decimal | str):
        return reject("quantity must be a number")
    try:
        # a float (from a JSON decoder that makes them) by its shortest repr: 0.1 stays 0.1
        quantity = Decimal(repr(raw_quantity) if isinstance(raw_quantity, float) else raw_quantity)
    except InvalidOperation:
        return reject("quantity must be a number")
    if not quantity.is_finite():
        return reject("quantity must be a number")
    if quantity < 0:
        return reject("quantity must not be negative")
    if quantity >= _QUANTITY_CEILING:
        return reject(_QUANTITY_LIMIT)
    try:
        if quantity != quantity.quantize(_QUANTITY_STEP):
            return reject(_QUANTITY_LIMIT)
    except InvalidOperation:
        return reject(_QUANTITY_LIMIT)
    raw_at = record.get("timestamp")
    if not isinstance(raw_at, str):
        return reject("timestamp is required: ISO 8601 with a time zone, e.g. 2026-11-24T10:00:00Z")
    try:
        at = dt.datetime.fromisoformat(raw_at)
    except ValueError:
        return reject(f"timestamp {raw_at!r} is not ISO 8601")
    if at.tzinfo is None:
        return reject("timestamp needs a time zone (Z or an offset)")
    attributes = record.get("attributes") or {}
    if not isinstance(attributes, dict):
        return reject("attributes must be an object")
    if attributes:
        dumped = json.dumps(attributes, default=str)
        if len(dumped) > MAX_ATTRIBUTES:
            return reject(f"attributes: at most {MAX_ATTRIBUTES} characters of JSON")
        if "\\u0000" in dumped and _has_nul(attributes):
            return reject("attributes must not contain NUL characters")
    return _Candidate(
        index, record_id, subscription, resource, metric, quantity, at.astimezone(dt.UTC), attributes
    )


@dataclasses.dataclass(frozen=True)
class _Target:
    id: uuid.UUID
    marketplace_id: uuid.UUID
    vendor_id: uuid.UUID
    plan_id: uuid.UUID
    created_at: dt.datetime
    ends_at: dt.datetime | None
    #: usage before this is billed already
    billed_until: dt.datetime | None
    #: its id and its vendor's as text (the batch's keys)
    key: str
    vendor_key: str


def _targets(session: Session, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, _Target]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    # shared with other batches, exclusive with a billing chunk: a chunk never misses a batch
    # that commits after it read the usage, and this batch sees what the chunk billed
    usage_lock(session, exclusive=False)
    rows = session.execute(
        sa.select(
            Subscription.id,
            Subscription.marketplace_id,
            Product.vendor_id,
            Subscription.plan_id,
            Subscription.created_at,
            Subscription.cancelled_at,
            Subscription.billing_anchor,
            Plan.billing_period,
        )
        .join(Product, Product.id == Subscription.product_id)
        .join(Plan, Plan.id == Subscription.plan_id)
        .where(Subscription.id.in_(wanted))
    ).all()
    billed = dict(
        session.execute(
            sa.select(BilledItem.subscription_id, sa.func.max(BilledItem.period_start))
            .where(BilledItem.subscription_id.in_(wanted), BilledItem.kind == BilledKind.USAGE)
            .group_by(BilledItem.subscription_id)
        ).all()
    )
    found = {}
    for sid, marketplace_id, vendor_id, plan_id, created_at, cancelled_at, anchor, period in rows:
        last = billed.get(sid)
        found[sid] = _Target(
            sid,
            marketplace_id,
            vendor_id,
            plan_id,
            created_at,
            cancelled_at,
            next_period_end(anchor, last, period) if last is not None else None,
            str(sid),
            str(vendor_id),
        )
    return found


def _resources(session: Session, refs: Iterable[str]) -> dict[str, uuid.UUID]:
    """Subscriptions by resource: a deployment's id, or its VM's or disk's id in the cloud."""
    from deployer.models import Deployment

    wanted = list(set(refs))
    if not wanted:
        return {}
    as_uuids = []
    for ref in wanted:
        with contextlib.suppress(ValueError):
            as_uuids.append(uuid.UUID(ref))
    found: dict[str, uuid.UUID] = {}
    rows = session.execute(
        sa.select(Deployment.id, Deployment.node_id, Deployment.volume_id, Deployment.subscription_id).where(
            sa.or_(
                Deployment.id.in_(as_uuids) if as_uuids else sa.false(),
                Deployment.node_id.in_(wanted),
                Deployment.volume_id.in_(wanted),
            )
        )
    ).all()
    for deployment_id, node_id, volume_id, subscription_id in rows:
        for key in (str(deployment_id), node_id, volume_id):
            if key is not None:
                found[key] = subscription_id
    # a deployment id may have come in another spelling (upper case)
    for ref in wanted:
        if ref not in found:
            try:
                key = str(uuid.UUID(ref))
            except ValueError:
                continue
            if key in found:
                found[ref] = found[key]
    return found


def _metrics(session: Session, plan_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, frozenset[str]]:
    wanted = list(set(plan_ids))
    by_plan: dict[uuid.UUID, set[str]] = defaultdict(set)
    if wanted:
        for plan_id, metric in session.execute(
            sa.select(PriceComponent.plan_id, PriceComponent.metric).where(
                PriceComponent.plan_id.in_(wanted), PriceComponent.kind == ComponentKind.METERED
            )
        ):
            if metric:
                by_plan[plan_id].add(metric)
    return {plan_id: frozenset(by_plan.get(plan_id, ())) for plan_id in wanted}


def hour_of(at: dt.datetime) -> dt.datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def ingest(
    session: Session,
    scope: Scope,
    records: Sequence[Any],
    *,
    source: str,
    now: dt.datetime | None = None,
) -> Result:
    """Check and count ``records`` (the caller commits)."""
    now = now or utcnow()
    result = Result()
    candidates: list[_Candidate] = []
    subscriptions: dict[str, uuid.UUID | None] = {}
    for index, record in enumerate(records):
        parsed = _candidate(index, record, subscriptions)
        if isinstance(parsed, Rejection):
            result.rejected.append(parsed)
        else:
            candidates.append(parsed)
    by_resource = _resources(session, (c.resource for c in candidates if c.resource is not None))
    resolved = [(c, c.subscription or by_resource.get(c.resource or "")) for c in candidates]
    targets = _targets(session, (sid for _c, sid in resolved if sid is not None))
    metrics = _metrics(session, (t.plan_id for t in targets.values()))
    valid: list[_Record] = []
    seen_in_batch: set[tuple[str, str]] = set()
    for candidate, subscription_id in resolved:
        target = targets.get(subscription_id) if subscription_id else None
        reason = _why_not(candidate, target, scope, metrics, now)
        if reason is not None:
            result.rejected.append(Rejection(candidate.index, candidate.record_id, reason))
            continue
        assert target is not None
        key = (target.vendor_key, candidate.record_id)
        if key in seen_in_batch:
            result.duplicates.append(candidate.record_id)
            continue
        seen_in_batch.add(key)
        valid.append(
            _Record(
                candidate.record_id,
                target.vendor_id,
                target.id,
                candidate.metric,
                candidate.quantity,
                candidate.at,
                candidate.attributes,
                target.vendor_key,
                target.key,
            )
        )
    result.rejected.sort(key=lambda r: r.index)
    if valid:
        new = _write(session, scope.marketplace_id, valid, source, now)
        for record in valid:
            if (record.vendor_key, record.record_id) in new:
                result.accepted.append(record.record_id)
                result.hours.add((record.subscription_id, record.metric, hour_of(record.at)))
            else:
                result.duplicates.append(record.record_id)
    for outcome, count in (
        ("accepted", len(result.accepted)),
        ("duplicate", len(result.duplicates)),
        ("rejected", len(result.rejected)),
    ):
        if count:
            monitoring.USAGE_RECORDS.labels(source, outcome).inc(count)
    return result


def _why_not(
    candidate: _Candidate,
    target: _Target | None,
    scope: Scope,
    metrics: dict[uuid.UUID, frozenset[str]],
    now: dt.datetime,
) -> str | None:
    if target is None or target.marketplace_id != scope.marketplace_id:
        if candidate.resource is not None:
            return f"unknown resource {candidate.resource!r}"
        return f"unknown subscription {str(candidate.subscription)!r}"
    if scope.vendor_ids is not None and target.vendor_id not in scope.vendor_ids:
        # another vendor's subscription is as unknown to this caller as a made-up one
        return f"unknown subscription {str(target.id)!r}"
    known = metrics.get(target.plan_id, frozenset())
    if candidate.metric not in known:
        offered = ", ".join(sorted(known)) or "none"
        return f"unknown metric {candidate.metric!r}: the subscription's plan meters {offered}"
    if candidate.at > now + FUTURE_SKEW:
        return f"timestamp {candidate.at.isoformat()} is in the future"
    if candidate.at < target.created_at:
        return f"timestamp {candidate.at.isoformat()} is before the subscription began"
    if target.ends_at is not None and candidate.at >= target.ends_at:
        return f"timestamp {candidate.at.isoformat()} is after the subscription ended"
    if target.billed_until is not None and hour_of(candidate.at) < hour_of(target.billed_until):
        return (
            f"timestamp {candidate.at.isoformat()} falls in a period already billed"
            f" (usage is billed up to {target.billed_until.isoformat()})"
        )
    return None


# ---------------------------------------------------------------------- writing
def _write(
    session: Session, marketplace_id: uuid.UUID, records: list[_Record], source: str, now: dt.datetime
) -> set[tuple[str, str]]:
    """Count the records not seen before; their keys (vendor's id as text, record id)."""
    if session.get_bind().dialect.name == "postgresql":
        ensure_partitions(session.get_bind(), {_month(r.at) for r in records})
        return _write_postgresql(session, marketplace_id, records, source, now)
    return _write_portable(session, marketplace_id, records, source, now)


def _json(value: Any) -> str:
    """Attributes as JSON: numbers parsed as Decimal (the API's exact parsing) stay numbers."""
    return json.dumps(value, default=_number)


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def _hourly(records: Iterable[_Record]) -> list[tuple[uuid.UUID, str, dt.datetime, Decimal]]:
    """The records' sums per subscription, metric and hour, in the order rows are locked in."""
    sums: dict[tuple[str, str, dt.datetime], Decimal] = defaultdict(Decimal)
    ids: dict[str, uuid.UUID] = {}
    for record in records:
        ids[record.subscription_key] = record.subscription_id
        sums[(record.subscription_key, record.metric, hour_of(record.at))] += record.quantity
    return [(ids[key[0]], key[1], key[2], sums[key]) for key in sorted(sums)]


#: rows formatted and sent to COPY at a time
COPY_CHUNK = 1_000
#: COPY's text format: these four are escaped in a field, everything else is taken as is
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NO_ATTRIBUTES = "{}"


def _copy_text(marketplace_id: uuid.UUID, records: list[_Record], source: str, now: dt.datetime) -> str:
    """The records as COPY text rows, formatted here in one pass (ids are text already, and
    no attributes is the usual case).
    psycopg's ``write_row`` adapts every value of every row on its own, at about three
    times the cost, most of a queued record's time in the worker."""
    tail = f"\t{source.translate(_COPY_ESCAPES)}\t{now.isoformat()}\n"
    head = f"{marketplace_id}\t"
    return "".join(
        [
            f"{head}{r.vendor_key}\t{r.record_id.translate(_COPY_ESCAPES)}\t{r.at.isoformat()}\t"
            f"{r.subscription_key}\t{r.metric.translate(_COPY_ESCAPES)}\t{r.quantity}\t"
            f"{_json(r.attributes).translate(_COPY_ESCAPES) if r.attributes else _NO_ATTRIBUTES}{tail}"
            for r in records
        ]
    )


def _write_postgresql(
    session: Session, marketplace_id: uuid.UUID, records: list[_Record], source: str, now: dt.datetime
) -> set[tuple[str, str]]:
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        keys = sorted((r.vendor_key, r.record_id) for r in records)
        cursor.execute(
            "INSERT INTO usage_record_ids (marketplace_id, vendor_id, record_id, received_at)"
            " SELECT %s, v, k, %s FROM unnest(%b::uuid[], %b::text[]) AS t(v, k)"
            " ON CONFLICT DO NOTHING RETURNING vendor_id::text, record_id",
            (marketplace_id, now, [k[0] for k in keys], [k[1] for k in keys]),
        )
        new = {(row[0], row[1]) for row in cursor.fetchall()}
        fresh = [r for r in records if (r.vendor_key, r.record_id) in new]
        if not fresh:
            return new
        columns = ", ".join(
            ("marketplace_id", "vendor_id", "record_id", "at", "subscription_id", "metric", "quantity",
             "attributes", "source", "received_at")
        )  # fmt: skip
        with cursor.copy(f"COPY usage_records ({columns}) FROM STDIN") as copy:
            for start in range(0, len(fresh), COPY_CHUNK):
                copy.write(_copy_text(marketplace_id, fresh[start : start + COPY_CHUNK], source, now))
        hourly = _hourly(fresh)
        cursor.execute(
            "INSERT INTO usage_hourly (subscription_id, metric, hour, quantity)"
            " SELECT * FROM unnest(%b::uuid[], %b::text[], %b::timestamptz[], %b::numeric[])"
            " ON CONFLICT (subscription_id, metric, hour)"
            " DO UPDATE SET quantity = usage_hourly.quantity + EXCLUDED.quantity",
            tuple(list(column) for column in zip(*hourly, strict=True)),
        )
    return new


def _write_portable(
    session: Session, marketplace_id: uuid.UUID, records: list[_Record], source: str, now: dt.datetime
) -> set[tuple[str, str]]:
    """The same on SQLite (one writer at a time): skip the keys already there."""
    ids = sorted({r.record_id for r in records})
    taken: set[tuple[str, str]] = set()
    for start in range(0, len(ids), 500):
        taken.update(
            (str(vendor_id), record_id)
            for vendor_id, record_id in session.execute(
                sa.select(UsageRecordId.vendor_id, UsageRecordId.record_id).where(
                    UsageRecordId.marketplace_id == marketplace_id,
                    UsageRecordId.record_id.in_(ids[start : start + 500]),
                )
            )
        )
    fresh = [r for r in records if (r.vendor_key, r.record_id) not in taken]
    if not fresh:
        return set()
    session.execute(
        sa.insert(UsageRecordId),
        [
            {"marketplace_id": marketplace_id, "vendor_id": r.vendor_id, "record_id": r.record_id,
             "received_at": now}
            for r in fresh
        ],
    )  # fmt: skip
    session.execute(
        sa.insert(UsageRecord),
        [
            {"marketplace_id": marketplace_id, "vendor_id": r.vendor_id, "record_id": r.record_id, "at": r.at,
             "subscription_id": r.subscription_id, "metric": r.metric, "quantity": r.quantity,
             "attributes": r.attributes, "source": source, "received_at": now}
            for r in fresh
        ],
    )  # fmt: skip
    from sqlalchemy.dialects.sqlite import insert

    for subscription_id, metric, hour, quantity in _hourly(fresh):
        stmt = insert(UsageHourly).values(
            subscription_id=subscription_id, metric=metric, hour=hour, quantity=quantity
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["subscription_id", "metric", "hour"],
                set_={"quantity": UsageHourly.quantity + stmt.excluded.quantity},
            )
        )
    return {(r.vendor_key, r.record_id) for r in fresh}


# ---------------------------------------------------------------------- partitions
def _month(at: dt.datetime) -> dt.date:
    return dt.date(at.year, at.month, 1)


def _next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


_known_partitions: set[tuple[str, dt.date]] = set()
_partition_lock = threading.Lock()


def ensure_partitions(bind: Any, months: Iterable[dt.date]) -> list[str]:
    """Make the monthly partitions of ``usage_records`` these months need (PostgreSQL),
    each in its own short transaction, outside the ingesting one; the ones made."""
    engine: sa.Engine = bind.engine if isinstance(bind, sa.Connection) else bind
    database = str(engine.url)
    missing = sorted({m for m in months if (database, m) not in _known_partitions})
    made = []
    for month in missing:
        name = f"usage_records_y{month:%Y}m{month:%m}"
        with _partition_lock, engine.connect() as connection:
            exists = connection.scalar(sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name})
            if not exists:
                try:
                    start, end = month.isoformat(), _next_month(month).isoformat()
                    connection.exec_driver_sql(
                        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF usage_records FOR VALUES"
                        f" FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')"
                    )
                    connection.commit()
                    made.append(name)
                except sa.exc.ProgrammingError:  # made by another process in the meantime
                    connection.rollback()
            else:
                connection.rollback()
        _known_partitions.add((database, month))
    return made


def months_ahead(now: dt.datetime, count: int = 3) -> list[dt.date]:
    month = _month(now)
    found = []
    for _ in range(count):
        found.append(month)
        month = _next_month(month)
    return found


def make_partitions_ahead(engine: sa.Engine) -> list[str] | None:
    """The worker's job: this month's and the next two months' partitions of
    ``usage_records`` exist before any record needs them (PostgreSQL)."""
    if engine.dialect.name != "postgresql":
        return None
    return ensure_partitions(engine, months_ahead(utcnow()))
