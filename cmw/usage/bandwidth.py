"""Pay-per-use bandwidth: the worker reads each running machine's network traffic from its
cloud and records it as ``bandwidth.gb`` usage (in and out, 10^9 bytes a GB), for the
subscriptions whose plan meters it.

On EC2-family clouds the figures are CloudWatch's ``NetworkIn`` and ``NetworkOut`` of the
instance (boto3, with the cloud account's credentials, region and endpoint), summed per
5 minutes. Each 5-minute figure is one usage record whose id names the instance, the
metric and the time, so reading an overlapping window again (every run reads the last
hours) counts nothing twice, and a missed run is caught up. Other providers: not read
(libcloud offers no traffic figures for them).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.catalog.models import ComponentKind, PriceComponent
from cmw.crypto import Sealer
from cmw.db import utcnow
from cmw.orders.models import Subscription
from cmw.usage import ingest

log = logging.getLogger(__name__)

METRIC = "bandwidth.gb"
#: the CloudWatch metrics read, each in bytes
CLOUDWATCH_METRICS = ("NetworkIn", "NetworkOut")
PERIOD = 300
#: how far back each run reads (overlapping runs count nothing twice)
WINDOW = dt.timedelta(hours=3)
BYTES_A_GB = Decimal(10) ** 9


@dataclasses.dataclass(frozen=True)
class Target:
    marketplace_id: uuid.UUID
    subscription_id: uuid.UUID
    instance_id: str
    account_id: uuid.UUID


def targets(session: Session) -> list[Target]:
    """Machines on EC2-family clouds whose subscription's plan meters bandwidth."""
    from deployer.models import CloudAccount, Deployment, DeploymentState

    metered = sa.select(PriceComponent.plan_id).where(
        PriceComponent.kind == ComponentKind.METERED, PriceComponent.metric == METRIC
    )
    rows = session.execute(
        sa.select(Deployment.marketplace_id, Deployment.subscription_id, Deployment.node_id, CloudAccount.id)
        .join(CloudAccount, CloudAccount.id == Deployment.cloud_account_id)
        .join(Subscription, Subscription.id == Deployment.subscription_id)
        .where(
            Deployment.node_id.is_not(None),
            Deployment.state.in_(
                [DeploymentState.RUNNING, DeploymentState.SUSPENDING, DeploymentState.SUSPENDED,
                 DeploymentState.RESUMING, DeploymentState.STOPPING]
            ),
            CloudAccount.provider.in_(["ec2", "EC2"]),
            Subscription.plan_id.in_(metered),
        )
    ).all()  # fmt: skip
    return [Target(m, s, str(n), a) for m, s, n, a in rows]


def cloudwatch_for(account: Any, sealer: Sealer) -> Any:
    """A boto3 CloudWatch client with the cloud account's credentials and endpoint."""
    import boto3

    from deployer import clouds
    from deployer import service as deployments

    credentials = deployments.credentials(sealer, account)
    options = dict(account.driver_options or {})
    # the endpoint is the account's: checked as the deployer checks it before each use
    clouds.check_endpoints(credentials, options, allow_private=clouds.private_allowed(account), saving=False)
    kwargs: dict[str, Any] = {
        "region_name": account.region or options.get("region") or "us-east-1",
        "aws_access_key_id": credentials.get("key"),
        "aws_secret_access_key": credentials.get("secret"),
    }
    if options.get("host"):
        scheme = "https" if options.get("secure", True) else "http"
        port = f":{options['port']}" if options.get("port") else ""
        kwargs["endpoint_url"] = f"{scheme}://{options['host']}{port}"
    return boto3.client("cloudwatch", **kwargs)


def records_for(client: Any, target: Target, start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
    records = []
    for name in CLOUDWATCH_METRICS:
        answer = client.get_metric_statistics(
            Namespace="AWS/EC2",
            MetricName=name,
            Dimensions=[{"Name": "InstanceId", "Value": target.instance_id}],
            StartTime=start,
            EndTime=end,
            Period=PERIOD,
            Statistics=["Sum"],
        )
        for point in answer.get("Datapoints", []):
            at = point["Timestamp"]
            at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
            quantity = (Decimal(str(point["Sum"])) / BYTES_A_GB).quantize(Decimal("0.00000001"))
            if quantity <= 0:
                continue
            records.append(
                {
                    "id": f"cw:{target.instance_id}:{name}:{at.astimezone(dt.UTC):%Y%m%dT%H%M%S}",
                    "subscription": str(target.subscription_id),
                    "metric": METRIC,
                    "quantity": str(quantity),
                    "timestamp": at.isoformat(),
                    "attributes": {"source": "cloudwatch", "metric": name},
                }
            )
    return records


def export(session_factory: Callable[[], Session], sealer: Sealer, now: dt.datetime | None = None) -> int:
    """Read every target's traffic of the last hours; the records newly counted."""
    from deployer.models import CloudAccount

    now = now or utcnow()
    counted = 0
    with session_factory() as session:
        found = targets(session)
        accounts = {
            a.id: a
            for a in session.scalars(
                sa.select(CloudAccount).where(CloudAccount.id.in_({t.account_id for t in found}))
            )
        }
    clients: dict[uuid.UUID, Any] = {}
    for target in found:
        try:
            client = clients.get(target.account_id) or cloudwatch_for(accounts[target.account_id], sealer)
            clients[target.account_id] = client
            records = records_for(client, target, now - WINDOW, now)
        except Exception:
            log.warning(
                "bandwidth: reading %s failed; next run catches up", target.instance_id, exc_info=True
            )
            continue
        if not records:
            continue
        with session_factory() as session:
            result = ingest.ingest(
                session, ingest.Scope(target.marketplace_id), records, source="cloud", now=now
            )
            session.commit()
        counted += len(result.accepted)
        for rejection in result.rejected:
            log.info("bandwidth: %s not counted: %s", rejection.id, rejection.reason)
    return counted
