"""Vendor support access: the SSH public keys of a vendor's users (saved on their SSH keys
page) are installed for an unprivileged support user (the cloud account's
``support_username``, ``mercato-support`` by default) on every instance of the vendor's
products: when the machine is set up, and again on every running instance whenever one
of those users adds or removes a key (``ssh_key.changed``). The support user's
``authorized_keys`` is written whole each time, so a removed key stops working.
"""

from __future__ import annotations

import hashlib
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.accounts.models import Membership, Role, SshKey
from cmw.db import utcnow
from deployer.models import Deployment, DeploymentState

#: makes the support user (no password, no sudo) and writes its keys; root or sudo -n
SCRIPT = r"""set -e
SUDO=; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
U="$MERCATO_SUPPORT_USER"
id -u "$U" >/dev/null 2>&1 || $SUDO useradd -m -s /bin/sh -p '*' "$U"
H=$(getent passwd "$U" | cut -d: -f6)
$SUDO mkdir -p "$H/.ssh"
printf '%s' "$MERCATO_SUPPORT_KEYS" | $SUDO tee "$H/.ssh/authorized_keys.new" >/dev/null
$SUDO chmod 700 "$H/.ssh"
$SUDO chmod 600 "$H/.ssh/authorized_keys.new"
$SUDO chown -R "$U" "$H/.ssh"
$SUDO mv "$H/.ssh/authorized_keys.new" "$H/.ssh/authorized_keys"
"""


def vendor_keys(session: Session, vendor_id: uuid.UUID) -> list[str]:
    """The public key lines of the vendor organisation's users, in a stable order."""
    users = sa.select(Membership.user_id).where(
        Membership.organisation_id == vendor_id, Membership.role == Role.VENDOR
    )
    return sorted(set(session.scalars(sa.select(SshKey.public_key).where(SshKey.user_id.in_(users)))))


def digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def authorized_keys(keys: list[str]) -> str:
    return "".join(f"{key}\n" for key in keys)


def keys_changed(session: Session, user_id: uuid.UUID) -> int:
    """A user's keys changed: the running instances of every vendor they work for get
    their support keys written again (suspended ones when they run again). How many."""
    vendors = sa.select(Membership.organisation_id).where(
        Membership.user_id == user_id, Membership.role == Role.VENDOR
    )
    result = session.execute(
        sa.update(Deployment)
        .where(
            Deployment.vendor_id.in_(vendors),
            Deployment.state.in_((DeploymentState.RUNNING, DeploymentState.SUSPENDED)),
            Deployment.desired != "removed",
        )
        .values(
            support_sync_due=True,
            active=sa.or_(Deployment.active, Deployment.state == DeploymentState.RUNNING),
            next_attempt_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
