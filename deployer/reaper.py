"""The reaper: nothing of Mercato's is left in a cloud that no live deployment owns.

For each active cloud account it lists the VMs and disks tagged ``mercato-deployment``
(or, where the cloud has no tags, named ``mercato-<deployment id>``) and destroys those
whose deployment is removed, failed or unknown to the database, once they are older than
the grace period (so a VM made a moment ago by a worker that has not committed yet is
left alone). Disks go first, then VMs. It reports what it removed, and what it could not.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from libcloud.compute.drivers.ec2 import BaseEC2NodeDriver
from libcloud.compute.types import NodeState
from sqlalchemy.orm import Session

from cmw.crypto import Sealer
from cmw.db import utcnow
from deployer import clouds, service
from deployer.engine import TAG
from deployer.models import CloudAccount, Deployment, DeploymentState

log = logging.getLogger(__name__)

#: how old an orphan must be before it is destroyed
GRACE = dt.timedelta(minutes=30)
#: the reaper runs at most this often from the worker's periodic thread
INTERVAL_SECONDS = 600.0
_NAME = re.compile(r"^mercato-([0-9a-f-]{36})(?:-data)?$")
_GONE = (DeploymentState.REMOVED, DeploymentState.FAILED)


@dataclasses.dataclass
class Report:
    removed: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


def _owner(resource: Any) -> uuid.UUID | None:
    tags = (resource.extra or {}).get("tags") or {}
    for raw in (tags.get(TAG), (m.group(1) if (m := _NAME.match(resource.name or "")) else None)):
        if raw:
            try:
                return uuid.UUID(str(raw))
            except ValueError:
                continue
    return None


def _created(resource: Any) -> dt.datetime | None:
    extra = resource.extra or {}
    for value in (getattr(resource, "created_at", None), extra.get("launch_time"), extra.get("create_time")):
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        if isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return None


def reap(
    session_factory: Callable[[], Session],
    sealer: Sealer,
    *,
    grace: dt.timedelta = GRACE,
    now: dt.datetime | None = None,
) -> Report:
    """One pass over every active cloud account."""
    now = now or utcnow()
    report = Report()
    with session_factory() as session:
        accounts = list(session.scalars(sa.select(CloudAccount).where(CloudAccount.is_active.is_(True))))
        for account in accounts:
            try:
                _reap_account(session, sealer, account, grace, now, report)
            except Exception as exc:  # noqa: BLE001 - one cloud failing must not stop the others
                report.errors.append(f"{account.slug}: {exc}")
                log.warning("reaper: cloud account %s: %s", account.slug, exc)
    with session_factory() as session:
        forgotten = service.forget_passwords(session, now)
        session.commit()
    if forgotten:
        report.removed.append(f"{forgotten} one-time password(s) nobody asked the order page for")
    for line in report.removed:
        log.info("reaper removed %s", line)
    return report


def _reap_account(
    session: Session,
    sealer: Sealer,
    account: CloudAccount,
    grace: dt.timedelta,
    now: dt.datetime,
    report: Report,
) -> None:
    calls = clouds.ProviderCalls(account.slug)
    driver = clouds.driver_for(account, service.credentials(sealer, account))
    ec2 = isinstance(driver, BaseEC2NodeDriver)
    tag_filter = {"tag-key": TAG}
    nodes = calls("list_nodes", driver.list_nodes, **({"ex_filters": tag_filter} if ec2 else {}))
    try:
        volumes = calls("list_volumes", driver.list_volumes, **({"ex_filters": tag_filter} if ec2 else {}))
    except NotImplementedError:
        volumes = []
    owners = {o for o in (_owner(r) for r in [*nodes, *volumes]) if o is not None}
    states: dict[uuid.UUID, DeploymentState] = {}
    if owners:
        found = session.execute(sa.select(Deployment.id, Deployment.state).where(Deployment.id.in_(owners)))
        states = {row.id: row.state for row in found}

    def doomed(resource: Any) -> bool:
        owner = _owner(resource)
        if owner is None:
            return False  # not ours
        state = states.get(owner)
        if state is not None and state not in _GONE:
            return False
        created = _created(resource)
        return created is not None and now - created >= grace

    where = f"{account.slug}"
    for volume in (v for v in volumes if doomed(v)):
        try:
            if clouds.is_attached(volume):
                calls("detach_volume", driver.detach_volume, volume)
                clouds.wait_detached(calls, driver, volume.id)
            calls("destroy_volume", driver.destroy_volume, volume)
            report.removed.append(f"{where}: disk {volume.id} of deployment {_owner(volume)}")
        except Exception as exc:  # noqa: BLE001
            report.errors.append(f"{where}: disk {volume.id}: {exc}")
    for node in (n for n in nodes if n.state != NodeState.TERMINATED and doomed(n)):
        try:
            calls("destroy_node", driver.destroy_node, node)
            report.removed.append(f"{where}: VM {node.id} of deployment {_owner(node)}")
        except Exception as exc:  # noqa: BLE001
            report.errors.append(f"{where}: VM {node.id}: {exc}")
    for resource in [*nodes, *volumes]:
        owner = _owner(resource)
        if owner is not None and states.get(owner) not in (None, *_GONE):
            report.kept.append(f"{where}: {resource.id} of deployment {owner}")
