"""What the platform collects from running instances: ``InstanceSample`` (CPU, memory, disk
and network counters at a moment), ``InstanceLogLine`` (a line of a chosen log file),
``InstanceHealth`` (reachability and the log files' read positions), and the queries the
control panel and the API show them through."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from cmw.db import utcnow
from cmw.extensions import db

BIGINT = sa.BigInteger().with_variant(sa.Integer, "sqlite")


class InstanceSample(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "instance_samples"
    __table_args__ = (sa.Index("ix_instance_samples_deployment_at", "deployment_id", "at"),)

    id: Mapped[int] = mapped_column(BIGINT, primary_key=True)
    deployment_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("deployments.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    reachable: Mapped[bool]
    #: ``node_exporter`` or ``proc`` (read over SSH); NULL when unreachable
    source: Mapped[str | None] = mapped_column(sa.String(20))
    #: why it could not be read, when it could not
    error: Mapped[str | None] = mapped_column(sa.Text)
    #: CPU seconds since boot, all CPUs, in every mode and in idle (counters)
    cpu_seconds: Mapped[float | None]
    cpu_idle_seconds: Mapped[float | None]
    #: bytes
    memory_total: Mapped[int | None] = mapped_column(sa.BigInteger)
    memory_available: Mapped[int | None] = mapped_column(sa.BigInteger)
    disk_total: Mapped[int | None] = mapped_column(sa.BigInteger)
    disk_available: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: bytes received and sent on every interface but loopback since boot (counters)
    network_received: Mapped[int | None] = mapped_column(sa.BigInteger)
    network_sent: Mapped[int | None] = mapped_column(sa.BigInteger)
    load1: Mapped[float | None]


class InstanceLogLine(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "instance_log_lines"
    __table_args__ = (sa.Index("ix_instance_log_lines_deployment_id_id", "deployment_id", "id"),)

    id: Mapped[int] = mapped_column(BIGINT, primary_key=True)
    deployment_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("deployments.id", ondelete="CASCADE"))
    #: the file on the VM
    path: Mapped[str] = mapped_column(sa.String(500))
    #: when it was collected (UTC)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    #: the line; bytes that are not UTF-8 are kept as ``\\xNN`` escapes
    text: Mapped[str] = mapped_column(sa.Text)
    #: True when the line was not valid UTF-8 and holds escapes
    escaped: Mapped[bool] = mapped_column(default=False)


class InstanceHealth(db.Model):  # type: ignore[name-defined,misc]
    """One row per monitored instance: the collector locks it while it reads the VM, so
    two workers never collect the same instance at once (nor a log line twice)."""

    __tablename__ = "instance_health"

    deployment_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    reachable: Mapped[bool] = mapped_column(default=True)
    #: failed collections in a row
    failures: Mapped[int] = mapped_column(default=0)
    #: since when it is unreachable
    unreachable_since: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_collected_at: Mapped[dt.datetime | None]
    #: path -> {"inode": ..., "offset": ...}: how far each log file has been read
    log_positions: Mapped[dict[str, Any]] = mapped_column(default=dict)


def series(session: Session, deployment_id: uuid.UUID, since: dt.datetime) -> list[dict[str, Any]]:
    """Points since ``since``: CPU %, memory and disk used %, network bytes per second (from
    the counters of each sample and the one before it), load; None where not known."""
    samples = list(
        session.scalars(
            sa.select(InstanceSample)
            .where(InstanceSample.deployment_id == deployment_id, InstanceSample.at >= since)
            .order_by(InstanceSample.at)
        )
    )
    points: list[dict[str, Any]] = []
    previous: InstanceSample | None = None
    for sample in samples:
        point: dict[str, Any] = {"at": sample.at, "reachable": sample.reachable, "cpu_percent": None,
                                 "memory_percent": None, "disk_percent": None, "received_per_second": None,
                                 "sent_per_second": None, "load1": sample.load1}  # fmt: skip
        if sample.memory_total and sample.memory_available is not None:
            point["memory_percent"] = round(100 * (1 - sample.memory_available / sample.memory_total), 1)
        if sample.disk_total and sample.disk_available is not None:
            point["disk_percent"] = round(100 * (1 - sample.disk_available / sample.disk_total), 1)
        if sample.reachable and previous is not None and previous.reachable:
            seconds = (sample.at - previous.at).total_seconds()
            if (
                sample.cpu_seconds is not None
                and previous.cpu_seconds is not None
                and sample.cpu_idle_seconds is not None
                and previous.cpu_idle_seconds is not None
                and sample.cpu_seconds > previous.cpu_seconds
            ):
                busy = 1 - (sample.cpu_idle_seconds - previous.cpu_idle_seconds) / (
                    sample.cpu_seconds - previous.cpu_seconds
                )
                point["cpu_percent"] = round(100 * min(1.0, max(0.0, busy)), 1)
            for name, field in (
                ("received_per_second", "network_received"),
                ("sent_per_second", "network_sent"),
            ):
                now, before = getattr(sample, field), getattr(previous, field)
                if seconds > 0 and now is not None and before is not None and now >= before:
                    point[name] = round((now - before) / seconds, 1)
        points.append(point)
        if sample.reachable:
            previous = sample
    return points


def search_logs(
    deployment_id: uuid.UUID,
    *,
    q: str | None = None,
    path: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> sa.Select[Any]:
    """The instance's log lines matching, newest first (``q``: a case-insensitive substring)."""
    stmt = sa.select(InstanceLogLine).where(InstanceLogLine.deployment_id == deployment_id)
    if q:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(InstanceLogLine.text.ilike(f"%{escaped}%", escape="\\"))
    if path:
        stmt = stmt.where(InstanceLogLine.path == path)
    if since:
        stmt = stmt.where(InstanceLogLine.at >= since)
    if until:
        stmt = stmt.where(InstanceLogLine.at < until)
    return stmt.order_by(InstanceLogLine.id.desc())
