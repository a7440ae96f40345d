"""Replay: the hourly roll-up rebuilt from the raw records kept in ``usage_records`` (and
the cloud events kept in ``cloud_events``), for a
time range (``flask mercato usage rebuild --from ... --to ...``), for example after a
fault or a pricing fix; and a report of what changed: the usage per subscription and
metric, and each usage line already invoiced in the range, as billed and as the rebuilt
usage and today's prices rate it (credit or charge the difference, not done here)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections import defaultdict
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.billing.models import Invoice, InvoiceLine, LineKind, UsageHourly
from cmw.billing.service import hour_ceil, hour_floor
from cmw.catalog.models import ComponentKind, PriceComponent
from cmw.catalog.pricing import rate_component, spec_of
from cmw.money import round_to_minor
from cmw.usage.ingest import hour_of
from cmw.usage.models import CloudEvent, CloudResourceHour, UsageRecord

Key = tuple[uuid.UUID, str]


@dataclasses.dataclass(frozen=True)
class UsageChange:
    subscription_id: uuid.UUID
    metric: str
    before: Decimal
    after: Decimal


@dataclasses.dataclass(frozen=True)
class BilledChange:
    invoice: str
    subscription_id: uuid.UUID
    line: str
    billed: Decimal
    now: Decimal
    currency: str

    @property
    def difference(self) -> Decimal:
        return self.now - self.billed


@dataclasses.dataclass
class Report:
    start: dt.datetime
    end: dt.datetime
    records: int = 0
    hours: int = 0
    usage: list[UsageChange] = dataclasses.field(default_factory=list)
    billed: list[BilledChange] = dataclasses.field(default_factory=list)


def _sums(session: Session, start: dt.datetime, end: dt.datetime) -> dict[Key, Decimal]:
    return {
        (sid, metric): Decimal(total)
        for sid, metric, total in session.execute(
            sa.select(UsageHourly.subscription_id, UsageHourly.metric, sa.func.sum(UsageHourly.quantity))
            .where(UsageHourly.hour >= start, UsageHourly.hour < end)
            .group_by(UsageHourly.subscription_id, UsageHourly.metric)
        )
    }


def rebuild(session: Session, start: dt.datetime, end: dt.datetime) -> Report:
    """Rebuild the hours in [start, end) (widened to whole hours) from the raw records and
    report the changes (the caller commits)."""
    start, end = hour_floor(start), hour_ceil(end)
    report = Report(start, end)
    if session.get_bind().dialect.name == "postgresql":
        # ingestion waits until the rebuild commits: nothing counted meanwhile is lost
        session.execute(sa.text("LOCK TABLE usage_hourly IN SHARE ROW EXCLUSIVE MODE"))
    before = _sums(session, start, end)
    hourly: dict[tuple[uuid.UUID, str, dt.datetime], Decimal] = defaultdict(Decimal)
    rows = session.execute(
        sa.select(UsageRecord.subscription_id, UsageRecord.metric, UsageRecord.at, UsageRecord.quantity)
        .where(UsageRecord.at >= start, UsageRecord.at < end)
        .execution_options(yield_per=10_000)
    )
    for subscription_id, metric, at, quantity in rows:
        hourly[(subscription_id, metric, hour_of(at))] += quantity
        report.records += 1
    # the time cloud resources ran, derived again from their kept events
    from cmw.usage import cloud

    for resource_uuid in session.scalars(
        sa.select(CloudEvent.resource_uuid).where(CloudEvent.occurred_at < end).distinct()
    ).all():
        cloud.recompute(session, resource_uuid)
    for subscription_id, metric, hour, quantity in session.execute(
        sa.select(
            CloudResourceHour.subscription_id, CloudResourceHour.metric, CloudResourceHour.hour,
            CloudResourceHour.quantity,
        ).where(CloudResourceHour.hour >= start, CloudResourceHour.hour < end)
    ):  # fmt: skip
        hourly[(subscription_id, metric, hour)] += quantity
    session.execute(sa.delete(UsageHourly).where(UsageHourly.hour >= start, UsageHourly.hour < end))
    values = [
        {"subscription_id": sid, "metric": metric, "hour": hour, "quantity": quantity}
        for (sid, metric, hour), quantity in sorted(
            hourly.items(), key=lambda kv: (str(kv[0][0]), kv[0][1], kv[0][2])
        )
    ]
    for chunk in range(0, len(values), 5_000):
        session.execute(sa.insert(UsageHourly), values[chunk : chunk + 5_000])
    report.hours = len(values)
    after = _sums(session, start, end)
    for key in sorted(set(before) | set(after), key=lambda k: (str(k[0]), k[1])):
        old, new = before.get(key, Decimal(0)), after.get(key, Decimal(0))
        if old != new:
            report.usage.append(UsageChange(key[0], key[1], old, new))
    report.billed = _billed_changes(session, start, end)
    return report


def _billed_changes(session: Session, start: dt.datetime, end: dt.datetime) -> list[BilledChange]:
    """Usage lines invoiced for periods that overlap the range, rated again."""
    lines = session.execute(
        sa.select(InvoiceLine, Invoice.number, Invoice.currency)
        .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
        .where(
            InvoiceLine.kind == LineKind.USAGE,
            InvoiceLine.period_start < end,
            InvoiceLine.period_end > start,
        )
        .order_by(Invoice.number, InvoiceLine.position)
    ).all()
    components: dict[tuple[uuid.UUID, str], PriceComponent] = {
        (c.plan_id, c.label): c
        for c in session.scalars(
            sa.select(PriceComponent).where(
                PriceComponent.plan_id.in_({line.plan_id for line, _n, _c in lines if line.plan_id}),
                PriceComponent.kind == ComponentKind.METERED,
            )
        )
    }
    found = []
    for line, number, currency in lines:
        label = line.description.split(" · ")[-1].rsplit(", ", 1)[0]
        if line.plan_id is None or line.subscription_id is None:
            continue
        component = components.get((line.plan_id, label))
        if component is None or component.metric is None:
            continue
        assert line.period_start is not None and line.period_end is not None
        used = session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(UsageHourly.quantity), 0)).where(
                UsageHourly.subscription_id == line.subscription_id,
                UsageHourly.metric == component.metric,
                UsageHourly.hour >= hour_floor(line.period_start),
                UsageHourly.hour < hour_floor(line.period_end),
            )
        )
        now = round_to_minor(rate_component(spec_of(component), Decimal(used or 0)), currency)
        if now != line.amount:
            found.append(
                BilledChange(
                    number or "",
                    line.subscription_id,
                    line.description,
                    round_to_minor(line.amount, currency),
                    now,
                    currency,
                )
            )
    return found
