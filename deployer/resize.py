"""Another plan's machine: what a subscription's VM should be on a plan, whether the cloud
offers it, and asking the engine to resize (``Deployment.resize_to``).

The engine then moves the running machine through ``resizing_vm`` (the VM to the new
size: libcloud's size change where the driver has one; on EC2 stop, change, start) and
``growing_disk`` (the data disk grown, then its file system), one idempotent look at the
cloud at a time, as for the first deployment. If the way forward fails for good, the same
steps take the VM back to its old size; the machine is never destroyed. An upgrade's new
plan is applied to the subscription when the resize completes, so billing prorates from
that moment (``cmw.orders.subscriptions.apply_resized_plan``).
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.catalog.models import Plan
from cmw.crypto import Sealer
from cmw.db import utcnow
from cmw.orders.service import plan_machine
from deployer import clouds, service
from deployer.models import ACTIVE_STATES, CloudAccount, Deployment, DeploymentState

#: a machine in these states has nothing left to resize
_ENDED = (DeploymentState.FAILED, DeploymentState.REMOVED)


class ResizeError(ValueError):
    """The machine cannot become what the plan asks for; the message says why."""


def machine(deployment: Deployment) -> dict[str, Any]:
    """The VM size and data disk the deployment has now."""
    return {"size": deployment.spec.get("size") or {}, "data_disk_gib": deployment.spec.get("data_disk_gib")}


def wanted(deployment: Deployment, plan: Plan) -> dict[str, Any]:
    """The VM size and data disk the deployment should have on ``plan``. Disks only grow."""
    spec = deployment.spec
    vendor_size = spec.get("vendor_size", spec.get("size"))
    vendor_disk = spec.get("vendor_data_disk_gib", spec.get("data_disk_gib"))
    found = plan_machine(plan, vendor_size, vendor_disk)
    current = spec.get("data_disk_gib") or 0
    if found["data_disk_gib"] is not None and found["data_disk_gib"] < current:
        found["data_disk_gib"] = current
    return found


def _core(size: dict[str, Any]) -> tuple[int, int]:
    return int(size.get("cores") or 1), int(size.get("ram_mib") or 512)


def differs(deployment: Deployment, plan: Plan) -> bool:
    """Whether ``plan`` gives the deployment another VM size or a bigger data disk."""
    now, then = machine(deployment), wanted(deployment, plan)
    return _core(now["size"]) != _core(then["size"]) or (then["data_disk_gib"] or 0) > (
        now["data_disk_gib"] or 0
    )


def live_deployment(session: Session, subscription_id: uuid.UUID) -> Deployment | None:
    """The subscription's machine, locked, unless it failed, is gone or is going."""
    found = session.scalar(
        sa.select(Deployment).where(Deployment.subscription_id == subscription_id).with_for_update()
    )
    if found is None or found.state in _ENDED or found.desired == service.REMOVED:
        return None
    return found


def check(session: Session, sealer: Sealer, deployment: Deployment, plan: Plan) -> None:
    """:class:`ResizeError` unless the deployment's cloud offers a size for ``plan`` (and no
    other resize is under way)."""
    if deployment.resize_to is not None:
        raise ResizeError("the machine is being resized for an earlier change; try again when that is done")
    account = session.get(CloudAccount, deployment.cloud_account_id) if deployment.cloud_account_id else None
    if account is None:
        raise ResizeError("the machine's cloud account is gone")
    cores, ram = _core(wanted(deployment, plan)["size"])
    calls = clouds.ProviderCalls(account.slug)
    try:
        driver = clouds.driver_for(account, service.credentials(sealer, account))
        clouds.match_size(calls("list_sizes", driver.list_sizes), cores, ram)
    except clouds.DeployError as exc:
        raise ResizeError(f"the machine cannot be resized for this plan: {exc}") from None


def request(
    session: Session,
    deployment: Deployment,
    plan: Plan,
    actor_id: uuid.UUID | None,
    *,
    apply_plan: bool,
) -> None:
    """Ask the engine to give the machine ``plan``'s size and disk; with ``apply_plan`` the
    subscription moves to ``plan`` when that is done."""
    target = wanted(deployment, plan)
    deployment.resize_to = {
        **target,
        "plan_id": str(plan.id),
        "actor_id": str(actor_id) if actor_id else None,
        "apply_plan": apply_plan,
        "from": machine(deployment),
        "requested_at": utcnow().isoformat(),
    }
    cores, ram = _core(target["size"])
    disk = f", data disk {target['data_disk_gib']} GiB" if target["data_disk_gib"] else ""
    service.record(
        session,
        deployment,
        deployment.state,
        f"resize asked for the plan {plan.name}: {cores} cores, {ram} MiB{disk}",
    )
    deployment.active = deployment.state in ACTIVE_STATES or service.wants_change(deployment)
    deployment.next_attempt_at = utcnow()
    session.flush()
