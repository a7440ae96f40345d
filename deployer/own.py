"""Customers' own cloud accounts: a customer organisation's credentials for a cloud of its
own (AWS, Azure, or any other Libcloud provider), sealed like the platform's, tried with
one real call before they are kept. A product ordered into one runs there, in the
customer's account and on the customer's cloud bill, so the platform charges only its
licence (the plan's components not marked ``infrastructure``).

Anything the platform would call on the customer's say-so (a driver's ``host``, an
endpoint URL among the options or credentials, the SSH endpoint override) goes through
the outbound check: no private or loopback targets unless the operator allows them
(``MERCATO_ALLOW_PRIVATE_TARGETS``), no link-local or metadata ones at all (unless
``MERCATO_ALLOW_LINK_LOCAL_TARGETS``).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.crypto import Sealer
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
    credentials = dict(data.get("credentials") or {})
    fields = {k: v for k, v in data.items() if k in CloudAccountInput.__dataclass_fields__}
    fields.update(slug=f"own-{secrets.token_hex(6)}", is_active=True, credentials=credentials)
    account = service.create_cloud_account(
        session, sealer, CloudAccountInput(**fields), allow_private=allow_private
    )
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
