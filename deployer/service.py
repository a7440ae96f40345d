"""Cloud accounts and deployments: the rules, with a session and no request."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.accounts.models import Organisation, User
from cmw.crypto import Sealer
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.marketplaces.models import Marketplace
from cmw.monitoring import metrics
from cmw.orders import service as orders
from deployer import clouds, ssh
from deployer.models import ACTIVE_STATES, CloudAccount, Deployment, DeploymentEvent, DeploymentState

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
#: driver options an admin may set: what makes EC2-compatible and private clouds work
SAFE_OPTION = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


class CloudAccountError(ValueError):
    """Invalid cloud account settings; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class CloudAccountInput:
    slug: str
    name: str
    provider: str
    credentials: dict[str, Any]
    region: str | None = None
    driver_options: dict[str, Any] | None = None
    default_network: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_username: str = "ubuntu"
    authorized_keys_file: str = ".ssh/authorized_keys"
    data_mount_point: str = "/srv/data"
    disk_script: str | None = None
    is_active: bool = True


def _check(data: dict[str, Any]) -> None:
    if "slug" in data and not _SLUG.match(data["slug"] or ""):
        raise CloudAccountError("slug", "use lowercase letters, digits and hyphens (at most 63)")
    if "provider" in data and data["provider"] not in clouds.providers():
        raise CloudAccountError(
            "provider", f"{data['provider']!r} is not one of Libcloud's compute providers"
        )
    if "credentials" in data:
        creds = data["credentials"]
        if not isinstance(creds, dict) or not all(isinstance(k, str) and SAFE_OPTION.match(k) for k in creds):
            raise CloudAccountError(
                "credentials", "an object of credential names (key, secret, ...) and values"
            )
    if "driver_options" in data and data["driver_options"] is not None:
        options = data["driver_options"]
        if not isinstance(options, dict) or not all(
            isinstance(k, str) and SAFE_OPTION.match(k) for k in options
        ):
            raise CloudAccountError("driver_options", "an object of the driver's keyword arguments")
        if any(isinstance(v, dict | list) for v in options.values()):
            raise CloudAccountError("driver_options", "values are strings, numbers or booleans")
    if "data_mount_point" in data and not str(data["data_mount_point"] or "").startswith("/"):
        raise CloudAccountError("data_mount_point", "an absolute path")


def create_cloud_account(
    session: Session, sealer: Sealer, data: CloudAccountInput, *, allow_private: bool = True
) -> CloudAccount:
    """A new account. Its hosts and URLs may not be link-local or a metadata service;
    private ones are fine for the platform's own (``allow_private``: a private cloud)."""
    values = dict(data.__dict__)
    _check(values)
    _check_endpoints(values, allow_private=allow_private)
    if session.scalar(sa.select(CloudAccount.id).where(CloudAccount.slug == data.slug)) is not None:
        raise CloudAccountError("slug", f"{data.slug!r} is taken")
    credentials = values.pop("credentials")
    values["driver_options"] = values.get("driver_options") or {}
    account = CloudAccount(**values, credentials_sealed=sealer.seal_json(credentials))
    ensure_platform_key(sealer, account)
    session.add(account)
    session.flush()
    return account


def _check_endpoints(values: dict[str, Any], *, allow_private: bool | None) -> None:
    try:
        clouds.check_endpoints(
            dict(values.get("credentials") or {}),
            dict(values.get("driver_options") or {}),
            values.get("ssh_host"),
            values.get("ssh_port"),
            allow_private=allow_private,
        )
    except clouds.EndpointRefused as exc:
        raise CloudAccountError(exc.field, str(exc)) from None


def ensure_platform_key(sealer: Sealer, account: CloudAccount) -> None:
    """Give the account its platform SSH key pair (the private half sealed), once.

    Made with the account, so an administrator can put the public key into the images of
    a private cloud; the deployer imports it into the cloud as the VMs' key pair.
    """
    if account.private_key_sealed is None:
        private, public = ssh.new_key_pair(f"mercato-{account.slug}")
        account.key_name = f"mercato-{account.slug}-{secrets.token_hex(4)}"
        account.public_key = public
        account.private_key_sealed = sealer.seal(private)


def update_cloud_account(
    session: Session, sealer: Sealer, account: CloudAccount, changes: dict[str, Any]
) -> None:
    _check(changes)
    if {"credentials", "driver_options", "ssh_host", "ssh_port"} & set(changes):
        _check_endpoints(
            {
                "credentials": changes.get("credentials", {}),
                "driver_options": changes.get("driver_options", account.driver_options),
                "ssh_host": changes.get("ssh_host", account.ssh_host),
                "ssh_port": changes.get("ssh_port", account.ssh_port),
            },
            allow_private=clouds.private_allowed(account),
        )
    if "slug" in changes and changes["slug"] != account.slug:
        taken = session.scalar(sa.select(CloudAccount.id).where(CloudAccount.slug == changes["slug"]))
        if taken is not None:
            raise CloudAccountError("slug", f"{changes['slug']!r} is taken")
    for name, value in changes.items():
        if name == "credentials":
            account.credentials_sealed = sealer.seal_json(value)
        elif name == "driver_options":
            account.driver_options = value or {}
        else:
            setattr(account, name, value)
    account.updated_at = utcnow()
    session.flush()


def credentials(sealer: Sealer, account: CloudAccount) -> dict[str, Any]:
    opened: dict[str, Any] = sealer.open_json(account.credentials_sealed)
    return opened


def by_slug(session: Session, slug: str) -> CloudAccount | None:
    return session.scalar(sa.select(CloudAccount).where(CloudAccount.slug == slug))


def get(session: Session, deployment_id: uuid.UUID) -> Deployment | None:
    return session.get(Deployment, deployment_id)


def of_subscriptions(session: Session, subscription_ids: list[uuid.UUID]) -> dict[uuid.UUID, Deployment]:
    """The deployment of each subscription that has one."""
    if not subscription_ids:
        return {}
    found = session.scalars(sa.select(Deployment).where(Deployment.subscription_id.in_(subscription_ids)))
    return {d.subscription_id: d for d in found}


def never_ran(session: Session, subscription_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Those of the subscriptions whose machine failed without ever being ready."""
    if not subscription_ids:
        return set()
    return set(
        session.scalars(
            sa.select(Deployment.subscription_id).where(
                Deployment.subscription_id.in_(subscription_ids),
                Deployment.state == DeploymentState.FAILED,
                Deployment.ready_at.is_(None),
            )
        )
    )


def account_choices(session: Session) -> list[tuple[str, str]]:
    """(slug, name) of every cloud account, for vendors choosing where a product runs."""
    rows = session.execute(
        sa.select(CloudAccount.slug, CloudAccount.name)
        .where(CloudAccount.owner_id.is_(None))
        .order_by(CloudAccount.name)
    )
    return [(slug, name) for slug, name in rows]


def test_cloud_account(
    sealer: Sealer, account: CloudAccount, image_ids: list[str] | None = None
) -> dict[str, Any]:
    """List sizes (and images, or the named ones) with the account's driver."""
    calls = clouds.ProviderCalls(account.slug)
    opened = credentials(sealer, account)
    clouds.check_account(account, opened, saving=True)
    driver = clouds.make_driver(account.provider, opened, account.region, dict(account.driver_options or {}))
    sizes = calls("list_sizes", driver.list_sizes)
    if image_ids:
        try:
            images = [calls("get_image", driver.get_image, image_id) for image_id in image_ids]
        except NotImplementedError:  # a driver without a look-up by id: found in its list
            listed = {str(i.id): i for i in calls("list_images", driver.list_images)}
            missing = [i for i in image_ids if i not in listed]
            if missing:
                raise clouds.PermanentError(f"no such image: {', '.join(missing)}") from None
            images = [listed[i] for i in image_ids]
    else:
        images = calls("list_images", driver.list_images)
    return {
        "sizes": [
            {
                "id": str(s.id),
                "name": s.name,
                "cores": clouds.size_cores(s),
                "ram_mib": s.ram,
                "disk_gib": s.disk,
            }
            for s in sizes
        ],
        "images": [{"id": str(i.id), "name": i.name} for i in images[:200]],
        "seconds": round(calls.seconds, 3),
    }


# ------------------------------------------------------------- deployments
def record(
    session: Session,
    deployment: Deployment,
    to_state: DeploymentState,
    message: str = "",
    *,
    detail: dict[str, Any] | None = None,
    error: str | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Move ``deployment`` to ``to_state`` (or record a failed attempt in the same state),
    keep it as history and tell everyone through ``deployment.state_changed``."""
    now = now or utcnow()
    from_state = deployment.state
    session.add(
        DeploymentEvent(
            deployment_id=deployment.id,
            at=now,
            from_state=str(from_state) if from_state else None,
            to_state=str(to_state),
            attempt=deployment.attempt,
            message=message,
            detail=detail or {},
            error=error,
        )
    )
    if to_state != from_state:
        metrics.DEPLOYMENT_TRANSITIONS.labels(str(to_state)).inc()
        deployment.state = to_state
        deployment.active = to_state in ACTIVE_STATES or wants_change(deployment)
        emit(
            session,
            "deployment.state_changed",
            {
                "deployment_id": str(deployment.id),
                "subscription_id": str(deployment.subscription_id),
                "customer_id": str(deployment.customer_id),
                "product_id": str(deployment.product_id),
                "from": str(from_state) if from_state else None,
                "to": str(to_state),
                "message": message,
            },
            marketplace_id=deployment.marketplace_id,
        )
        _observed(session, deployment, to_state, now)


#: what the deployer saw happen, as the cloud events usage is derived from (VM.START...)
OBSERVED = {
    DeploymentState.RUNNING: (("VM", "START"), ("VOLUME", "CREATE")),
    DeploymentState.SUSPENDED: (("VM", "STOP"),),
    DeploymentState.STOPPING: (("VM", "STOP"),),
    DeploymentState.REMOVED: (("VM", "DESTROY"), ("VOLUME", "DELETE")),
    DeploymentState.FAILED: (("VM", "DESTROY"), ("VOLUME", "DELETE")),
}


def _observed(session: Session, deployment: Deployment, to_state: DeploymentState, now: dt.datetime) -> None:
    """Time-based usage on any cloud: the VM runs from ``running`` to ``suspended`` or
    ``removed``, its data disk exists until it is removed, as libcloud observed them. The
    same derivation as CloudStack's events (late or repeated ones change nothing)."""
    from cmw.usage import cloud

    for kind, action in OBSERVED.get(to_state, ()):
        resource = deployment.node_id if kind == "VM" else deployment.volume_id
        if not resource:
            continue
        cloud.record(
            session,
            {
                "event": f"{kind}.{action}",
                "status": cloud.COMPLETED,
                "entityuuid": resource,
                "eventDateTime": now.isoformat(),
                "source": "mercato-deployer",
                "deployment": str(deployment.id),
            },
            source="deployer",
            now=now,
        )


def request_deployment(
    session: Session, payload: dict[str, Any], marketplace_id: uuid.UUID | None
) -> Deployment:
    """The deployment a ``deployment.requested`` event asks for (once per subscription)."""
    subscription_id = uuid.UUID(payload["subscription_id"])
    found = session.scalar(sa.select(Deployment).where(Deployment.subscription_id == subscription_id))
    if found is not None:
        return found
    target = dict(payload["target"])
    account = by_slug(session, target["cloud_account"])
    deployment = Deployment(
        id=uuid.uuid4(),
        subscription_id=subscription_id,
        marketplace_id=marketplace_id or uuid.UUID(payload["marketplace_id"]),
        customer_id=uuid.UUID(payload["customer_id"]),
        product_id=uuid.UUID(payload["product_id"]),
        vendor_id=uuid.UUID(payload["vendor_id"]),
        cloud_account_id=account.id if account is not None else None,
        product_type=payload.get("product_type") or "bare_vm",
        spec=target,
        ssh_public_key=payload.get("ssh_public_key"),
        state=DeploymentState.REQUESTED,
        active=True,
        next_attempt_at=utcnow(),
    )
    if account is None or not account.is_active:
        # nowhere to deploy: failed at once, with the reason (nothing was made)
        session.add(deployment)
        session.flush()
        record(session, deployment, DeploymentState.REQUESTED, "requested")
        deployment.last_error = f"no active cloud account {target['cloud_account']!r}"
        record(
            session, deployment, DeploymentState.FAILED, deployment.last_error, error=deployment.last_error
        )
        emit_failed(session, deployment)
        return deployment
    session.add(deployment)
    session.flush()
    record(session, deployment, DeploymentState.REQUESTED, "requested")
    return deployment


def wants_change(deployment: Deployment) -> bool:
    """Whether a deployment at rest must still move: suspended while running, running while
    suspended (a change asked for while it was on its way there), or running with a resize,
    the vendor's support keys or the setup with changed variables due."""
    running = deployment.state is DeploymentState.RUNNING
    return (
        (running and deployment.desired == SUSPENDED)
        or (deployment.state is DeploymentState.SUSPENDED and deployment.desired == RUNNING)
        or (running and deployment.desired == RUNNING and deployment.resize_to is not None)
        or (running and deployment.desired == RUNNING and deployment.support_sync_due)
        or (running and deployment.desired == RUNNING and deployment.setup_due)
    )


#: what a deployment should become (``Deployment.desired``)
RUNNING, SUSPENDED, REMOVED = "running", "suspended", "removed"


def request_suspension(session: Session, subscription_id: uuid.UUID, *, suspend: bool) -> Deployment | None:
    """An invoice is unpaid (``suspend``): the machine is stopped and kept; or it is paid: the
    machine runs again. Nothing changes for a machine that is being removed."""
    deployment = session.scalar(
        sa.select(Deployment).where(Deployment.subscription_id == subscription_id).with_for_update()
    )
    if deployment is None or deployment.desired == REMOVED:
        return deployment
    wanted = SUSPENDED if suspend else RUNNING
    if deployment.desired == wanted:
        return deployment
    deployment.desired = wanted
    if deployment.state not in (DeploymentState.FAILED, DeploymentState.REMOVED):
        deployment.active = deployment.state in ACTIVE_STATES or wants_change(deployment)
        deployment.next_attempt_at = utcnow()
    session.flush()
    return deployment


def request_removal(session: Session, subscription_id: uuid.UUID) -> Deployment | None:
    """The subscription ended: its machine goes away (after provisioning stops)."""
    deployment = session.scalar(
        sa.select(Deployment).where(Deployment.subscription_id == subscription_id).with_for_update()
    )
    if deployment is None or deployment.desired == REMOVED:
        return deployment
    deployment.desired = REMOVED
    if deployment.state not in (DeploymentState.REMOVED,):
        deployment.active = True
        deployment.next_attempt_at = utcnow()
    session.flush()
    return deployment


def emit_failed(session: Session, deployment: Deployment) -> None:
    emit(
        session,
        "deployment.failed",
        {
            "deployment_id": str(deployment.id),
            "subscription_id": str(deployment.subscription_id),
            "customer_id": str(deployment.customer_id),
            "vendor_id": str(deployment.vendor_id),
            "product_id": str(deployment.product_id),
            "reason": deployment.last_error or "",
        },
        marketplace_id=deployment.marketplace_id,
    )


def history(session: Session, deployment_id: uuid.UUID) -> list[DeploymentEvent]:
    return list(
        session.scalars(
            sa.select(DeploymentEvent)
            .where(DeploymentEvent.deployment_id == deployment_id)
            .order_by(DeploymentEvent.id)
        )
    )


def read_password(session: Session, sealer: Sealer, deployment_id: uuid.UUID) -> str | None:
    """The one-time password for the ready e-mail, if the order page has not shown it yet."""
    deployment = session.get(Deployment, deployment_id)
    if deployment is None or deployment.password_sealed is None:
        return None
    return sealer.open(deployment.password_sealed)


def take_password(session: Session, sealer: Sealer, deployment_id: uuid.UUID) -> str | None:
    """The one-time password, once, for the order page: the sealed copy is wiped as it is read."""
    deployment = session.get(Deployment, deployment_id, with_for_update=True)
    if deployment is None or deployment.password_sealed is None:
        return None
    password = sealer.open(deployment.password_sealed)
    deployment.password_sealed = None
    session.flush()
    return password


#: how long a password nobody asked the order page for stays sealed
PASSWORD_KEPT = dt.timedelta(days=7)


def forget_passwords(session: Session, now: dt.datetime) -> int:
    """Wipe the sealed passwords of machines ready for longer than :data:`PASSWORD_KEPT`."""
    result = session.execute(
        sa.update(Deployment)
        .where(Deployment.password_sealed.is_not(None), Deployment.ready_at < now - PASSWORD_KEPT)
        .values(password_sealed=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class NotRetryable(ValueError):
    """Only a failed deployment whose subscription still wants it can start again."""


def retry(session: Session, deployment: Deployment) -> None:
    """Start a failed deployment again from the beginning (its rollback left nothing)."""
    session.refresh(deployment, with_for_update=True)
    if deployment.state is not DeploymentState.FAILED or deployment.desired != "running":
        raise NotRetryable(f"only a failed deployment can be retried; this one is {deployment.state.value}")
    if deployment.cloud_account_id is None:
        raise NotRetryable("its cloud account does not exist; nothing to retry on")
    deployment.attempt, deployment.last_error = 0, None
    deployment.next_attempt_at = utcnow()
    record(session, deployment, DeploymentState.REQUESTED, "retried by an administrator")


# ------------------------------------------------------------------ setup environment
def customer_environment(session: Session, deployment: Deployment) -> dict[str, str]:
    """The customer's details for the setup script, read when it runs (the README lists
    every ``MERCATO_*`` variable the script gets)."""
    organisation = session.get(Organisation, deployment.customer_id)
    marketplace = session.get(Marketplace, deployment.marketplace_id)
    buyer_id = orders.placed_by(session, deployment.subscription_id)
    buyer = session.get(User, buyer_id) if buyer_id else None
    return {
        "MERCATO_CUSTOMER_COMPANY": organisation.legal_name if organisation else "",
        "MERCATO_CUSTOMER_TAX_CODE": (organisation.vat_number or "") if organisation else "",
        "MERCATO_CUSTOMER_COUNTRY": organisation.country if organisation else "",
        "MERCATO_CUSTOMER_EMAIL": buyer.email if buyer else "",
        "MERCATO_CUSTOMER_NAME": buyer.name if buyer else "",
        "MERCATO_CUSTOMER_LANGUAGE": buyer.language if buyer else "en",
        "MERCATO_MARKETPLACE": marketplace.slug if marketplace else "",
        "MERCATO_MARKETPLACE_NAME": marketplace.name if marketplace else "",
    }
