"""``CloudAccount`` (where machines are made), ``Deployment`` (one subscription's machine and
its persisted state) and ``DeploymentEvent`` (the append-only history of its transitions)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any
from urllib.parse import urljoin

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from cmw.db import Timestamps, UUIDPrimaryKey, str_enum, utcnow
from cmw.extensions import db


class DeploymentState(enum.StrEnum):
    #: asked for; nothing made yet
    REQUESTED = "requested"
    #: network, platform key pair, security group with the product's ports
    PREPARING = "preparing"
    #: asking the cloud for the VM (found again by its tag after a crash)
    CREATING_VM = "creating_vm"
    #: waiting until the VM runs and has an address
    STARTING_VM = "starting_vm"
    #: SSH in with the platform key, record the host key, install the customer's key
    CONFIGURING_ACCESS = "configuring_access"
    #: creating the data disk (vm_app)
    CREATING_DISK = "creating_disk"
    #: attaching it to the VM (vm_app)
    ATTACHING_DISK = "attaching_disk"
    #: formatting and mounting it over SSH (vm_app)
    PREPARING_DISK = "preparing_disk"
    #: running the vendor's setup script with the default login and password (vm_app)
    RUNNING_SETUP = "running_setup"
    #: ready: the customer has been told the URL, login and password
    RUNNING = "running"
    #: undoing what a failed deployment made: disk, then VM
    ROLLING_BACK = "rolling_back"
    #: gave up; nothing of it is left in the cloud
    FAILED = "failed"
    #: undeploy asked for: stopping the VM
    STOPPING = "stopping"
    #: detaching and deleting the disk, destroying the VM
    DESTROYING = "destroying"
    #: gone
    REMOVED = "removed"
    #: an unpaid invoice: stopping the VM, keeping it and its disk
    SUSPENDING = "suspending"
    #: stopped for an unpaid invoice; started again when it is paid
    SUSPENDED = "suspended"
    #: paid: starting the VM again and waiting for its (possibly new) address
    RESUMING = "resuming"
    #: another plan's machine: the VM moved to another size (stopped, changed, started as
    #: the cloud requires); also the way back to the old size when that fails
    RESIZING_VM = "resizing_vm"
    #: another plan's machine: the data disk grown, and its file system with it
    GROWING_DISK = "growing_disk"
    #: the customer changed setup variables: the vendor's setup script runs again with
    #: them (a failure leaves the machine running as it was)
    RECONFIGURING = "reconfiguring"


#: states the worker still has something to do in
ACTIVE_STATES = frozenset(DeploymentState) - {
    DeploymentState.RUNNING,
    DeploymentState.FAILED,
    DeploymentState.REMOVED,
    DeploymentState.SUSPENDED,
}
#: the provisioning steps, in order
PROVISIONING = (
    DeploymentState.REQUESTED,
    DeploymentState.PREPARING,
    DeploymentState.CREATING_VM,
    DeploymentState.STARTING_VM,
    DeploymentState.CONFIGURING_ACCESS,
    DeploymentState.CREATING_DISK,
    DeploymentState.ATTACHING_DISK,
    DeploymentState.PREPARING_DISK,
    DeploymentState.RUNNING_SETUP,
    DeploymentState.RUNNING,
)


class CloudAccount(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """A cloud the platform deploys to, through one of Libcloud's compute drivers."""

    __tablename__ = "cloud_accounts"

    #: the name vendors use in their deployment spec (``cloud_account``)
    slug: Mapped[str] = mapped_column(sa.String(63), unique=True)
    #: display name
    name: Mapped[str] = mapped_column(sa.String(120))
    #: Libcloud compute provider (``ec2``, ``openstack``, ``gce``, ``dummy``, ...)
    provider: Mapped[str] = mapped_column(sa.String(40))
    #: the driver's credentials (key, secret and provider-specific ones), sealed
    credentials_sealed: Mapped[str] = mapped_column(sa.Text)
    #: the region the driver is made for, when the provider has regions
    region: Mapped[str | None] = mapped_column(sa.String(64))
    #: further keyword arguments of the driver (host, port, secure, ...)
    driver_options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: network or subnet new VMs join; the provider's default when empty
    default_network: Mapped[str | None] = mapped_column(sa.String(255))
    #: connect SSH here instead of the VM's address (private networks, tests)
    ssh_host: Mapped[str | None] = mapped_column(sa.String(255))
    ssh_port: Mapped[int | None]
    #: the image's administrative user the platform key logs in as
    ssh_username: Mapped[str] = mapped_column(sa.String(64), default="ubuntu")
    #: the login user's authorized_keys file (relative to its home, or absolute), where
    #: the customer's key is installed
    authorized_keys_file: Mapped[str] = mapped_column(sa.String(255), default=".ssh/authorized_keys")
    #: the unprivileged user the vendor's support staff log in as, with their SSH keys
    support_username: Mapped[str] = mapped_column(
        sa.String(32), default="mercato-support", server_default="mercato-support"
    )
    #: where the data disk is mounted on the VM
    data_mount_point: Mapped[str] = mapped_column(sa.String(255), default="/srv/data")
    #: shell commands that format and mount the data disk (``MERCATO_DISK_DEVICE``,
    #: ``MERCATO_DATA_DIR`` in their environment); the standard script when empty
    disk_script: Mapped[str | None] = mapped_column(sa.Text)
    #: the platform's SSH key pair in this cloud: name, public key, sealed private key
    key_name: Mapped[str | None] = mapped_column(sa.String(255))
    public_key: Mapped[str | None] = mapped_column(sa.Text)
    private_key_sealed: Mapped[str | None] = mapped_column(sa.Text)
    #: False: no new deployments go here
    is_active: Mapped[bool] = mapped_column(default=True)
    #: the customer organisation whose own account this is (its credentials, its bill from
    #: the cloud); None for the platform's accounts
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="RESTRICT"), index=True
    )


class Deployment(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """One subscription's machine. ``state`` is where the worker stands; every change of
    it is a :class:`DeploymentEvent`."""

    __tablename__ = "deployments"
    __table_args__ = (sa.Index("ix_deployments_due", "next_attempt_at", postgresql_where=sa.text("active")),)

    subscription_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("subscriptions.id", ondelete="RESTRICT"), unique=True
    )
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"))
    customer_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="RESTRICT"), index=True
    )
    product_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("products.id", ondelete="RESTRICT"), index=True
    )
    vendor_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="RESTRICT"), index=True
    )
    #: None when the product named a cloud account that does not exist (failed at once)
    cloud_account_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("cloud_accounts.id", ondelete="RESTRICT"), index=True
    )
    #: ``bare_vm`` or ``vm_app``
    product_type: Mapped[str] = mapped_column(sa.String(20))
    #: the vendor's target when ordered: image, size, disk, ports, setup, URL, login
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: the customer's SSH public key, installed for the login user
    ssh_public_key: Mapped[str | None] = mapped_column(sa.Text)
    state: Mapped[DeploymentState] = mapped_column(
        str_enum(DeploymentState, "deployment_state"), default=DeploymentState.REQUESTED, index=True
    )
    #: ``running`` or ``removed``: what the customer's subscription wants
    desired: Mapped[str] = mapped_column(sa.String(10), default="running")
    #: True while the worker has work to do (kept by the service with ``state``)
    active: Mapped[bool] = mapped_column(default=True)
    #: tries of the current step; reset when a step succeeds
    attempt: Mapped[int] = mapped_column(default=0)
    #: when the worker may take it up again
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: why the last attempt failed, readable
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    #: what was made in the cloud; a cloud's usage events name the machine or the disk
    node_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    size_id: Mapped[str | None] = mapped_column(sa.String(255))
    volume_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    security_group: Mapped[str | None] = mapped_column(sa.String(255))
    address: Mapped[str | None] = mapped_column(sa.String(255))
    #: the VM's SSH host key, recorded at first contact and checked afterwards
    host_key: Mapped[str | None] = mapped_column(sa.Text)
    #: the application's URL and login, once ready
    url: Mapped[str | None] = mapped_column(sa.String(500))
    login: Mapped[str | None] = mapped_column(sa.String(120))
    #: digest of the generated default password (engine.password_digest; argon2 before
    #: 2026-11): the password itself is kept only sealed, until shown
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    #: the password, sealed, until the customer has been told it once
    password_sealed: Mapped[str | None] = mapped_column(sa.Text)
    ready_at: Mapped[dt.datetime | None]
    removed_at: Mapped[dt.datetime | None]
    #: a change of machine under way (another plan's size or disk): ``plan_id`` (applied
    #: to the subscription when the resize completes, if ``apply_plan``), ``actor_id``,
    #: ``size`` and ``data_disk_gib`` wanted, ``from`` (the machine before, to go back to)
    #: and ``rolling_back`` with the ``reason`` once the way forward failed
    resize_to: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    #: the vendor's support keys changed: the support user's keys are to be written again
    support_sync_due: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    #: SHA-256 of the support keys last installed on the VM
    support_keys_digest: Mapped[str | None] = mapped_column(sa.String(64))
    #: how many times the customer changed the setup variables; names the setup's marker
    #: on the data disk, so each change's run happens once
    setup_generation: Mapped[int] = mapped_column(default=0, server_default="0")
    #: the setup script is to run again with changed variables
    setup_due: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    #: why the last run with changed variables failed (the machine kept running)
    setup_error: Mapped[str | None] = mapped_column(sa.Text)

    @property
    def endpoints(self) -> list[dict[str, str]]:
        """The product's access URLs (``/``, ``/admin``, ...) under the instance's URL."""
        if not self.url:
            return []
        base = self.url if self.url.endswith("/") else self.url + "/"
        return [
            {"name": str(e["name"]), "url": urljoin(base, str(e["path"]).lstrip("/"))}
            for e in self.spec.get("endpoints") or []
        ]


class DeploymentEvent(db.Model):  # type: ignore[name-defined,misc]
    """A transition or a failed attempt, as the control panel shows it."""

    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    from_state: Mapped[str | None] = mapped_column(sa.String(30))
    to_state: Mapped[str] = mapped_column(sa.String(30))
    attempt: Mapped[int] = mapped_column(default=0)
    #: what happened, readable
    message: Mapped[str] = mapped_column(sa.Text, default="")
    #: provider ids and figures (seconds spent in provider and SSH calls)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: the error of a failed attempt
    error: Mapped[str | None] = mapped_column(sa.Text)
