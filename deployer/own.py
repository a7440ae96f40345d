"""Customers' own cloud accounts: a customer organisation's credentials for a cloud of its
own (AWS, Azure, or any other Libcloud provider), sealed like the platform's, tried with
one real call before they are kept. A product ordered into one runs there, in the
customer's account and on the customer's cloud bill, so the platform charges only its
licence (the plan's components not marked ``infrastructure``).

Anything the platform would call on the customer's say-so (a driver's ``host``, an
endpoint URL among the options or credentials, the SSH endpoint override) goes through
the outbound check: no private, loopback or link-local targets unless the operator allows
them (``MERCATO_ALLOW_PRIVATE_TARGETS``).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.crypto import Sealer
from cmw.outbound import OutboundError, check_host, check_url
from deployer import clouds, service
from deployer.models import CloudAccount, Deployment, DeploymentState
from deployer.service import CloudAccountError, CloudAccountInput

#: the providers the customer's page offers, with the credential fields each one needs
#: (Libcloud's names; ``key`` and ``secret`` are the driver's first two arguments)
PROVIDER_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "ec2": (("key", "Access key ID"), ("secret", "Secret access key")),
    "azure_arm": (
        ("tenant_id", "Tenant ID"),
        ("subscription_id", "Subscription ID"),
        ("key", "Application (client) ID"),
        ("secret", "Client secret"),
    ),
}

#: deployments in these states hold nothing in the cloud any more
_GONE = (DeploymentState.REMOVED, DeploymentState.FAILED)


def _outbound(values: dict[str, Any], port: Any, allow_private: bool, field: str) -> None:
    """Check every host and URL among ``values`` the driver would call."""
    for name, value in values.items():
        if not isinstance(value, str):
            continue
        try:
            if value.startswith(("http://", "https://")):
                check_url(value, allow_private=allow_private, schemes=("http", "https"))
            elif name == "host":
                check_host(value, int(port or 443), allow_private=allow_private)
        except OutboundError as exc:
            raise CloudAccountError(field, f"{name}: the address {exc}") from None
        except ValueError:
            raise CloudAccountError(field, "port: a number") from None


def try_account(sealer: Sealer, account: CloudAccount) -> None:
    """One real call with the account's credentials (list its machines); a
    :class:`CloudAccountError` on ``credentials`` saying what the cloud answered."""
    calls = clouds.ProviderCalls(account.slug)
    try:
        driver = clouds.make_driver(
            account.provider,
            service.credentials(sealer, account),
            account.region,
            dict(account.driver_options or {}),
        )
        try:
            calls("list_nodes", driver.list_nodes)
        except NotImplementedError:
            calls("list_sizes", driver.list_sizes)
    except clouds.DeployError as exc:
        raise CloudAccountError("credentials", f"the cloud refused the test call: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a driver's own failure, told as it is
        raise CloudAccountError("credentials", f"the test call failed: {type(exc).__name__}: {exc}") from None


def add(
    session: Session,
    sealer: Sealer,
    owner_id: uuid.UUID,
    data: dict[str, Any],
    *,
    allow_private: bool,
) -> CloudAccount:
    """The customer's new account, after the test call went through (nothing is kept
    otherwise)."""
    options = dict(data.get("driver_options") or {})
    credentials = dict(data.get("credentials") or {})
    _outbound(options, options.get("port"), allow_private, "driver_options")
    _outbound({k: v for k, v in credentials.items() if k != "host"}, None, allow_private, "credentials")
    if data.get("ssh_host"):
        _outbound({"host": data["ssh_host"]}, data.get("ssh_port") or 22, allow_private, "ssh_host")
    fields = {k: v for k, v in data.items() if k in CloudAccountInput.__dataclass_fields__}
    fields.update(slug=f"own-{secrets.token_hex(6)}", is_active=True, credentials=credentials)
    account = service.create_cloud_account(session, sealer, CloudAccountInput(**fields))
    account.owner_id = owner_id
    try_account(sealer, account)
    session.flush()
    return account


def owned(session: Session, owner_id: uuid.UUID) -> list[CloudAccount]:
    """The organisation's accounts it can still order into."""
    return list(
        session.scalars(
            sa.select(CloudAccount)
            .where(CloudAccount.owner_id == owner_id, CloudAccount.is_active.is_(True))
            .order_by(CloudAccount.name)
        )
    )


def find(session: Session, owner_id: uuid.UUID, account_id: uuid.UUID) -> CloudAccount | None:
    found = session.get(CloudAccount, account_id)
    if found is None or found.owner_id != owner_id or not found.is_active:
        return None
    return found


class InUse(ValueError):
    """Machines still run in the account."""


def remove(session: Session, sealer: Sealer, account: CloudAccount) -> None:
    """Forget the account: refused while a machine of ours runs in it. One that held
    machines before stays as their record, inactive and without its credentials."""
    session.refresh(account, with_for_update=True)
    running = session.scalar(
        sa.select(sa.func.count())
        .select_from(Deployment)
        .where(Deployment.cloud_account_id == account.id, Deployment.state.not_in(_GONE))
    )
    if running:
        raise InUse(f"{running} instance(s) still run in this account; cancel their subscriptions first")
    used = session.scalar(sa.select(Deployment.id).where(Deployment.cloud_account_id == account.id).limit(1))
    if used is None and not _ordered(session, account.id):
        session.delete(account)
    else:
        account.is_active = False
        account.credentials_sealed = sealer.seal_json({})
        account.private_key_sealed = None
    session.flush()


def _ordered(session: Session, account_id: uuid.UUID) -> bool:
    from cmw.orders.models import Order

    return (
        session.scalar(sa.select(Order.id).where(Order.own_cloud_account_id == account_id).limit(1))
        is not None
    )
