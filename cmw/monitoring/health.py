"""What the database and the broker say about the platform's health, read at once: the
figures ``/metrics`` exports (deployments by state, stuck ones, outbox lag, the last
billing run, deployment outcomes by cloud account, queue depths), and the alerts the
admin panel shows, decided from them by the same rules as ``docker/prometheus/alerts.yml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from kombu import Connection
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from cmw.billing.models import BillingRun
from cmw.config import Config
from cmw.db import utcnow
from cmw.events.models import OutboxEvent
from cmw.events.relay import lag_seconds
from cmw.events.topology import DEAD_LETTER_QUEUE
from deployer.models import ACTIVE_STATES, CloudAccount, Deployment, DeploymentEvent, DeploymentState

#: a deployment still in a working state this long after it entered it is stuck
STUCK_AFTER = dt.timedelta(minutes=30)
#: deployment outcomes (running or failed) counted per cloud account
OUTCOME_WINDOW = dt.timedelta(hours=1)
#: a cloud account fails when at least this part of at least MIN_OUTCOMES outcomes failed
FAILURE_RATIO = 0.5
MIN_OUTCOMES = 3
#: events older than this not yet published to the broker
OUTBOX_LAG_SECONDS = 120.0
#: messages waiting in a consumer's queue
QUEUE_BACKLOG = 10_000


@dataclasses.dataclass
class Alert:
    #: the rule's name, as in docker/prometheus/alerts.yml
    name: str
    severity: str
    summary: str
    #: the objects concerned (deployment ids, cloud accounts, queues)
    items: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Snapshot:
    at: dt.datetime
    deployments: dict[str, int]
    #: (deployment id, state, seconds in it) of deployments stuck in a working state
    stuck: list[tuple[str, str, float]]
    #: cloud account slug -> (outcomes, failures) in the last OUTCOME_WINDOW
    outcomes: dict[str, tuple[int, int]]
    outbox_unpublished: int
    outbox_lag_seconds: float
    last_billing_run: dict[str, Any] | None
    #: queue -> (messages, consumers); None when the broker could not be asked
    queues: dict[str, tuple[int, int]] | None

    def alerts(self) -> list[Alert]:
        found = []
        if self.stuck:
            found.append(
                Alert(
                    "MercatoDeploymentsStuck",
                    "warning",
                    f"{len(self.stuck)} deployment(s) in a working state for over "
                    f"{int(STUCK_AFTER.total_seconds() // 60)} minutes",
                    [f"{d} ({state}, {seconds / 60:.0f} min)" for d, state, seconds in self.stuck],
                )
            )
        failing = [
            f"{slug}: {failed} of {total} failed"
            for slug, (total, failed) in sorted(self.outcomes.items())
            if total >= MIN_OUTCOMES and failed / total >= FAILURE_RATIO
        ]
        if failing:
            found.append(
                Alert(
                    "MercatoCloudAccountFailing",
                    "critical",
                    f"deployments fail on {len(failing)} cloud account(s) in the last hour",
                    failing,
                )
            )
        if self.outbox_lag_seconds > OUTBOX_LAG_SECONDS:
            found.append(
                Alert(
                    "MercatoOutboxLag",
                    "critical",
                    f"{self.outbox_unpublished} event(s) not published to the broker, the oldest for "
                    f"{self.outbox_lag_seconds:.0f} s: is the worker running?",
                )
            )
        run = self.last_billing_run
        if run is not None and run["status"] == "failed":
            found.append(
                Alert(
                    "MercatoBillingRunFailed",
                    "critical",
                    f"the last billing run (for {run['at']:%Y-%m-%d %H:%M} UTC) failed: "
                    f"{run['error'] or 'no reason given'}",
                )
            )
        if self.queues is None:
            found.append(Alert("MercatoBrokerDown", "critical", "the message broker does not answer"))
        else:
            backlog = [
                f"{q}: {n} messages" for q, (n, _) in sorted(self.queues.items()) if n >= QUEUE_BACKLOG
            ]
            if backlog:
                found.append(Alert("MercatoQueueBacklog", "warning", "messages pile up in a queue", backlog))
        return found


def snapshot(
    session: Session, config: Config, queue_names: Iterable[str], now: dt.datetime | None = None
) -> Snapshot:
    now = now or utcnow()
    by_state = dict.fromkeys((s.value for s in DeploymentState), 0)
    for state, count in session.execute(
        sa.select(Deployment.state, sa.func.count()).group_by(Deployment.state)
    ):
        by_state[DeploymentState(state).value] = count
    entered = (
        sa.select(Deployment.id, Deployment.state, sa.func.max(DeploymentEvent.at).label("since"))
        .join(
            DeploymentEvent,
            # when it entered its state: retries in the state do not make it younger
            sa.and_(
                DeploymentEvent.deployment_id == Deployment.id,
                DeploymentEvent.to_state == sa.type_coerce(Deployment.state, sa.String),
                sa.or_(
                    DeploymentEvent.from_state.is_(None),
                    DeploymentEvent.from_state != DeploymentEvent.to_state,
                ),
            ),
        )
        .where(Deployment.state.in_(list(ACTIVE_STATES)))
        .group_by(Deployment.id, Deployment.state)
        .having(sa.func.max(DeploymentEvent.at) < now - STUCK_AFTER)
        .order_by(sa.func.max(DeploymentEvent.at))
        .limit(100)
    )
    stuck = [
        (str(d), DeploymentState(state).value, (now - _aware(since)).total_seconds())
        for d, state, since in session.execute(entered)
    ]
    outcomes: dict[str, tuple[int, int]] = {}
    failed = DeploymentEvent.to_state == DeploymentState.FAILED.value
    for slug, total, failures in session.execute(
        sa.select(
            CloudAccount.slug,
            sa.func.count(),
            sa.func.count().filter(failed),
        )
        .select_from(DeploymentEvent)
        .join(Deployment, Deployment.id == DeploymentEvent.deployment_id)
        .join(CloudAccount, CloudAccount.id == Deployment.cloud_account_id)
        .where(
            DeploymentEvent.at >= now - OUTCOME_WINDOW,
            DeploymentEvent.to_state.in_([DeploymentState.RUNNING.value, DeploymentState.FAILED.value]),
        )
        .group_by(CloudAccount.slug)
    ):
        outcomes[slug] = (total, failures)
    unpublished = session.scalar(
        sa.select(sa.func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
    )
    run = session.execute(
        sa.select(
            BillingRun.status, BillingRun.at, BillingRun.started_at, BillingRun.finished_at, BillingRun.error
        )
        .order_by(BillingRun.started_at.desc())
        .limit(1)
    ).first()
    return Snapshot(
        at=now,
        deployments=by_state,
        stuck=stuck,
        outcomes=outcomes,
        outbox_unpublished=unpublished or 0,
        outbox_lag_seconds=lag_seconds(session),
        last_billing_run=dict(run._mapping) if run is not None else None,
        queues=queue_depths(config, queue_names),
    )


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


# A scrape every few seconds should not open a broker connection each time.
_QUEUES_FOR = 5.0
_queues_cache: tuple[float, dict[str, tuple[int, int]] | None] = (0.0, None)


def queue_depths(config: Config, names: Iterable[str]) -> dict[str, tuple[int, int]] | None:
    """Messages waiting and consumers attached, per queue (the consumers' and the dead
    letters'); None if the broker does not answer."""
    global _queues_cache
    cached_at, cached = _queues_cache
    if cached is not None and time.monotonic() - cached_at < _QUEUES_FOR:
        return cached
    depths: dict[str, tuple[int, int]] = {}
    try:
        with Connection(
            config.broker_url, transport_options=config.broker_transport_options, connect_timeout=2
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            for name in [*names, DEAD_LETTER_QUEUE.name]:
                depth = _depth(conn, name)
                if depth is not None:
                    depths[name] = depth
    except Exception:  # noqa: BLE001 - reported as the broker being down
        _queues_cache = (time.monotonic(), None)
        return None
    _queues_cache = (time.monotonic(), depths)
    return depths


def _depth(conn: Connection, name: str) -> tuple[int, int] | None:
    """(messages, consumers) of a queue; None if it is not declared (yet)."""
    channel = conn.channel()
    try:
        _, messages, consumers = channel.queue_declare(queue=name, passive=True)
    except conn.channel_errors:
        return None
    finally:
        with contextlib.suppress(Exception):  # the broker closes a channel after a miss
            channel.close()
    return int(messages), int(consumers)


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterable[GaugeMetricFamily]:
        snap = self.snap
        states = GaugeMetricFamily("mercato_deployments", "Deployments by state", labels=["state"])
        for state, count in sorted(snap.deployments.items()):
            states.add_metric([state], count)
        yield states
        stuck_by_state: dict[str, int] = {}
        for _, state, _ in snap.stuck:
            stuck_by_state[state] = stuck_by_state.get(state, 0) + 1
        stuck = GaugeMetricFamily(
            "mercato_deployments_stuck",
            f"Deployments in a working state for over {int(STUCK_AFTER.total_seconds())} s, by state",
            labels=["state"],
        )
        for state in sorted(s.value for s in ACTIVE_STATES):
            stuck.add_metric([state], stuck_by_state.get(state, 0))
        yield stuck
        outcomes = GaugeMetricFamily(
            "mercato_deployment_outcomes_last_hour",
            "Deployments that became running or failed in the last hour, by cloud account and outcome",
            labels=["cloud_account", "outcome"],
        )
        for slug, (total, failures) in sorted(snap.outcomes.items()):
            outcomes.add_metric([slug, "failed"], failures)
            outcomes.add_metric([slug, "running"], total - failures)
        yield outcomes
        yield GaugeMetricFamily(
            "mercato_outbox_unpublished",
            "Events not yet published to the broker",
            value=snap.outbox_unpublished,
        )
        yield GaugeMetricFamily(
            "mercato_outbox_lag_seconds",
            "Age of the oldest event not yet published to the broker",
            value=snap.outbox_lag_seconds,
        )
        run = snap.last_billing_run
        yield GaugeMetricFamily(
            "mercato_billing_last_run_failed",
            "1 if the last billing run failed",
            value=1 if run is not None and run["status"] == "failed" else 0,
        )
        if run is not None and run["finished_at"] is not None:
            yield GaugeMetricFamily(
                "mercato_billing_last_run_finished_timestamp_seconds",
                "When the last billing run finished (Unix time)",
                value=_aware(run["finished_at"]).timestamp(),
            )
        yield GaugeMetricFamily(
            "mercato_broker_up", "1 if the message broker answered", value=0 if snap.queues is None else 1
        )
        messages = GaugeMetricFamily(
            "mercato_queue_messages", "Messages waiting in a queue", labels=["queue"]
        )
        consumers = GaugeMetricFamily(
            "mercato_queue_consumers", "Consumers attached to a queue", labels=["queue"]
        )
        for name, (waiting, attached) in sorted((snap.queues or {}).items()):
            messages.add_metric([name], waiting)
            consumers.add_metric([name], attached)
        yield messages
        yield consumers


def snapshot_metrics(snap: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return generate_latest(registry)
