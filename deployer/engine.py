"""The deployment state machine: one idempotent step at a time, each in its own transaction.

``Engine.advance_one()`` takes the deployment that is due soonest, locking its row
(``FOR UPDATE SKIP LOCKED``: several workers never advance the same deployment, and a
worker that dies releases it at once), runs the step of its state and commits the result
with its history. A step looks for what an earlier attempt made before making anything
(resources are named ``mercato-<deployment id>`` and tagged ``mercato-deployment``), so
a worker killed between a provider call and its commit resumes without a second VM, disk
or key. Transient failures wait with exponential back-off and jitter; permanent ones,
and transient ones past ``max_attempts``, roll back what was made (disk first, then VM)
and end in ``failed``. When the subscription ends the deployment is stopped, destroyed
and ``removed``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import random
import secrets
import shlex
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from libcloud.compute.base import Node, NodeDriver, StorageVolume
from libcloud.compute.drivers.ec2 import BaseEC2NodeDriver
from libcloud.compute.types import NodeState
from sqlalchemy.orm import Session

from cmw.crypto import Sealer
from cmw.db import utcnow
from cmw.events.service import emit, together
from cmw.monitoring import metrics
from deployer import clouds, service, ssh, support
from deployer.clouds import PermanentError, TransientError
from deployer.models import CloudAccount, Deployment, DeploymentState

log = logging.getLogger(__name__)

S = DeploymentState
TAG = "mercato-deployment"
DEVICE = "/dev/sdf"
SKIPPED_NO_SSH = "skipped: the dummy cloud has no machine to log in to"
#: the states of a change of machine (another plan's size or disk)
RESIZING = (DeploymentState.RESIZING_VM, DeploymentState.GROWING_DISK)

#: formats (when blank) and mounts the data disk; run with sudo when not root
DISK_SCRIPT = r"""set -e
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
dev=""; i=0
serial=$(printf %s "$MERCATO_VOLUME_ID" | tr -d -)
while [ -z "$dev" ]; do
  for c in "$MERCATO_DISK_DEVICE" "$(printf %s "$MERCATO_DISK_DEVICE" | sed 's#/dev/sd#/dev/xvd#')" \
           /dev/disk/by-id/*"$serial"*; do
    if [ -b "$c" ]; then dev="$c"; break; fi
  done
  [ -n "$dev" ] && break
  i=$((i+1)); if [ "$i" -gt 120 ]; then echo "no block device for $MERCATO_DISK_DEVICE" >&2; exit 1; fi
  sleep 1
done
$SUDO blkid "$dev" >/dev/null 2>&1 || $SUDO mkfs.ext4 -q -L mercato-data "$dev"
$SUDO mkdir -p "$MERCATO_DATA_DIR"
mountpoint -q "$MERCATO_DATA_DIR" || $SUDO mount "$dev" "$MERCATO_DATA_DIR"
$SUDO chown "$(id -u):$(id -g)" "$MERCATO_DATA_DIR"
grep -q "LABEL=mercato-data" /etc/fstab || \
  echo "LABEL=mercato-data $MERCATO_DATA_DIR ext4 defaults,nofail 0 2" | $SUDO tee -a /etc/fstab >/dev/null
# a grown disk (MERCATO_DISK_GROWN): the file system takes the new space
if [ -n "$MERCATO_DISK_GROWN" ]; then $SUDO resize2fs "$dev"; fi
"""


def password_digest(password: str) -> str:
    """What is kept of a machine's generated password: its SHA-256.

    The password is a random 96-bit token, not a person's choice, so a fast hash guards it
    as well as a slow one: nobody can try 2**96 guesses. argon2 (as for users' passwords)
    cost 200 ms of CPU and 64 MiB per machine made, more than the rest of an order.
    """
    return "sha256:" + hashlib.sha256(password.encode()).hexdigest()


#: set when there may be new work (a request arrived); the engine otherwise polls
WAKE = threading.Event()


@dataclass
class Step:
    """What a step did: the next state, or ``None`` to stay (``delay`` seconds until the next look)."""

    next_state: DeploymentState | None
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Context:
    session: Session
    deployment: Deployment
    account: CloudAccount
    sealer: Sealer
    calls: clouds.ProviderCalls
    _driver: NodeDriver | None = None

    @property
    def driver(self) -> NodeDriver:
        if self._driver is None:
            self._driver = clouds.driver_for(self.account, service.credentials(self.sealer, self.account))
        return self._driver

    @property
    def is_dummy(self) -> bool:
        return self.account.provider == clouds.DUMMY

    @property
    def is_ec2(self) -> bool:
        return isinstance(self.driver, BaseEC2NodeDriver)

    @property
    def name(self) -> str:
        return f"mercato-{self.deployment.id}"

    @property
    def tag(self) -> str:
        return str(self.deployment.id)


def due(now: dt.datetime) -> sa.Select[Deployment]:
    """The deployment due soonest, locked; one another worker holds is skipped.

    ``active`` as it is, not ``active IS TRUE``: only the bare column matches the partial
    index ``ix_deployments_due`` (``WHERE active``). With ``IS TRUE`` every step, and every
    idle look, read every deployment ever made."""
    return (
        sa.select(Deployment)
        .where(Deployment.active, Deployment.next_attempt_at <= now)
        .order_by(Deployment.next_attempt_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


class Engine:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        sealer: Sealer,
        *,
        max_attempts: int = 6,
        base_delay: float = 2.0,
        max_delay: float = 300.0,
        poll_seconds: float = 3.0,
        start_timeout: float = 900.0,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.session_factory = session_factory
        self.sealer = sealer
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.poll_seconds = poll_seconds
        self.start_timeout = start_timeout
        self.clock = clock

    # ------------------------------------------------------------ driving
    def advance_one(self) -> uuid.UUID | None:
        """Run one step of the deployment due soonest; its id, or None if none is due."""
        now = self.clock()
        started = time.perf_counter()
        with self.session_factory() as session:
            deployment = session.scalar(due(now))
            if deployment is None:
                return None
            # the step's events (a state change, a machine ready) and their audit entries:
            # one INSERT each at the step's end, in its transaction
            with together(session):
                self._advance(session, deployment, now, started)
            session.commit()
            return deployment.id

    def run_until_idle(self, max_steps: int = 10_000) -> int:
        """Advance until nothing is due; the number of steps run."""
        done = 0
        while done < max_steps and self.advance_one() is not None:
            done += 1
        return done

    def run(self, stop: threading.Event, idle_seconds: float = 0.5) -> None:
        """Advance deployments until ``stop`` is set (the worker's deployer thread)."""
        while not stop.is_set():
            try:
                if self.advance_one() is not None:
                    continue
            except Exception:
                log.exception("deployer step failed; trying again shortly")
            WAKE.wait(idle_seconds)
            WAKE.clear()

    # ------------------------------------------------------------ one step
    def _advance(self, session: Session, deployment: Deployment, now: dt.datetime, started: float) -> None:
        account = (
            session.get(CloudAccount, deployment.cloud_account_id) if deployment.cloud_account_id else None
        )
        if account is None:
            deployment.last_error = "the cloud account is gone"
            service.record(session, deployment, S.FAILED, deployment.last_error, error=deployment.last_error)
            return
        ctx = Context(session, deployment, account, self.sealer, clouds.ProviderCalls(account.slug))
        state = deployment.state
        handler = self._handler(deployment)
        try:
            step = handler(ctx)
        except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
            self._failed(ctx, state, exc, now)
        else:
            deployment.attempt = (
                0 if step.next_state is not None else deployment.attempt + (1 if step.delay else 0)
            )
            if step.next_state is not None and step.next_state not in (S.FAILED, S.REMOVED):
                deployment.last_error = None  # a step went through; a failure's reason stays
            detail = {
                **step.detail,
                # the step's time (claim to record) and the part spent in the cloud and SSH
                "step_seconds": round(time.perf_counter() - started, 4),
                "provider_seconds": round(ctx.calls.seconds, 4),
            }
            if step.next_state is not None:
                service.record(session, deployment, step.next_state, step.message, detail=detail, now=now)
                deployment.next_attempt_at = now
                if step.next_state is S.REMOVED:
                    deployment.removed_at = now
                if step.next_state is S.RUNNING and state in RESIZING:
                    self._resized(ctx, now)
                elif step.next_state is S.RUNNING and state is S.RECONFIGURING:
                    self._reconfigured(ctx, state, None)
                elif step.next_state is S.RUNNING and state not in (S.RESUMING, S.SUSPENDING):
                    self._ready(ctx, now)
                elif step.next_state is S.FAILED:
                    service.emit_failed(session, deployment)
                    self._order_failed(ctx)
            else:
                deployment.next_attempt_at = now + dt.timedelta(seconds=step.delay)
        finally:
            metrics.DEPLOYMENT_STEPS.labels(str(state)).observe(time.perf_counter() - started)

    def _handler(self, deployment: Deployment) -> Callable[[Context], Step]:
        state = deployment.state
        if deployment.desired == service.REMOVED and state not in (S.STOPPING, S.DESTROYING, S.ROLLING_BACK):
            return _begin_removal
        return {
            S.RUNNING: self._at_rest,
            S.SUSPENDED: self._at_rest,
            S.SUSPENDING: self._suspend,
            S.RESUMING: self._resume,
            S.REQUESTED: _requested,
            S.PREPARING: _prepare,
            S.CREATING_VM: _create_vm,
            S.STARTING_VM: self._wait_running,
            S.CONFIGURING_ACCESS: _configure_access,
            S.CREATING_DISK: _create_disk,
            S.ATTACHING_DISK: _attach_disk,
            S.PREPARING_DISK: _prepare_disk,
            S.RUNNING_SETUP: self._run_setup,
            S.RESIZING_VM: self._resize_vm,
            S.GROWING_DISK: _grow_disk,
            S.RECONFIGURING: self._reconfigure,
            S.ROLLING_BACK: _roll_back,
            S.STOPPING: _stop,
            S.DESTROYING: _destroy,
        }[state]

    def _failed(self, ctx: Context, state: DeploymentState, exc: BaseException, now: dt.datetime) -> None:
        deployment = ctx.deployment
        error = clouds.classify(exc) if not isinstance(exc, ssh.HostKeyMismatch) else PermanentError(str(exc))
        deployment.attempt += 1
        reason = f"{state.value.replace('_', ' ')}: {error}"
        deployment.last_error = reason
        transient = isinstance(error, TransientError)
        undoing = state in (S.ROLLING_BACK, S.STOPPING, S.DESTROYING)
        if state in RESIZING and not (transient and deployment.attempt < self.max_attempts):
            self._resize_failed(ctx, state, reason, now)
            return
        if state is S.RECONFIGURING and not (transient and deployment.attempt < self.max_attempts):
            deployment.next_attempt_at = now
            self._reconfigured(ctx, state, reason)
            return
        # stopping or starting a customer's machine, or touching a running one, never
        # destroys it: retried like undoing
        keeping = state in (S.SUSPENDING, S.RESUMING, S.RUNNING, S.SUSPENDED)
        if (transient and deployment.attempt < self.max_attempts) or undoing or keeping:
            # undoing is retried for ever (with the longest delay): nothing may be left behind
            delay = min(self.max_delay, self.base_delay * 2 ** (deployment.attempt - 1))
            delay = random.uniform(delay / 2, delay)
            deployment.next_attempt_at = now + dt.timedelta(seconds=delay)
            service.record(
                ctx.session, deployment, state, f"attempt {deployment.attempt} failed; retrying", error=reason
            )
            log.warning("deployment %s: %s (retry in %.1fs)", deployment.id, reason, delay)
            return
        log.warning("deployment %s: %s; rolling back", deployment.id, reason)
        deployment.attempt = 0
        deployment.next_attempt_at = now
        service.record(ctx.session, deployment, S.ROLLING_BACK, "rolling back: " + reason, error=reason)
        deployment.last_error = reason

    def _ready(self, ctx: Context, now: dt.datetime) -> None:
        deployment = ctx.deployment
        deployment.ready_at = now
        emit(
            ctx.session,
            "deployment.ready",
            {
                "deployment_id": str(deployment.id),
                "subscription_id": str(deployment.subscription_id),
                "customer_id": str(deployment.customer_id),
                "product_id": str(deployment.product_id),
                "url": deployment.url,
                "login": deployment.login,
                "address": deployment.address,
            },
            marketplace_id=deployment.marketplace_id,
        )
        from cmw.orders import service as orders

        orders.deployment_finished(ctx.session, deployment.subscription_id, failed_reason=None)

    def _order_failed(self, ctx: Context) -> None:
        from cmw.orders import service as orders

        orders.deployment_finished(
            ctx.session, ctx.deployment.subscription_id, failed_reason=ctx.deployment.last_error or "failed"
        )

    # --------------------------------------------------- steps needing the engine
    def _wait_running(self, ctx: Context) -> Step:
        node = _find_node(ctx)
        if node is None:
            raise PermanentError("the VM disappeared while starting")
        address = _address(node)
        if node.state == NodeState.RUNNING and address:
            ctx.deployment.address = address
            return Step(S.CONFIGURING_ACCESS, f"VM running at {address}", {"address": address})
        if node.state in (NodeState.TERMINATED, NodeState.ERROR, NodeState.STOPPED):
            raise PermanentError(f"the VM is {node.state} instead of starting")
        if ctx.deployment.attempt * self.poll_seconds > self.start_timeout:
            raise PermanentError(f"the VM did not start within {self.start_timeout:.0f} s")
        return Step(None, f"VM is {node.state}; waiting", delay=self.poll_seconds)

    def _at_rest(self, ctx: Context) -> Step:
        """A running or suspended deployment woken because it should be the other one, or
        be resized, or have its setup run again with changed variables, or have its vendor
        support keys written again."""
        deployment = ctx.deployment
        if deployment.state is S.RUNNING and deployment.desired == service.SUSPENDED:
            return Step(S.SUSPENDING, "an invoice is unpaid: suspending the VM")
        if deployment.state is S.SUSPENDED and deployment.desired == service.RUNNING:
            return Step(S.RESUMING, "paid: starting the VM again")
        if deployment.state is S.RUNNING and deployment.resize_to is not None:
            size = deployment.resize_to.get("size") or {}
            return Step(
                S.RESIZING_VM,
                f"resizing the VM to {size.get('cores')} cores and {size.get('ram_mib')} MiB",
                {"resize_to": deployment.resize_to},
            )
        if deployment.state is S.RUNNING and deployment.setup_due:
            return Step(
                S.RECONFIGURING,
                "running the setup script again with the changed variables",
                {"generation": deployment.setup_generation},
            )
        if deployment.state is S.RUNNING and deployment.support_sync_due:
            return self._support_sync(ctx)
        deployment.active = False  # already where it should be
        return Step(None, f"already {deployment.state.value}")

    def _support_sync(self, ctx: Context) -> Step:
        """Write the vendor's support keys on the running VM again; a failure is retried
        later and never touches the machine."""
        deployment = ctx.deployment
        try:
            installed = _install_support(ctx, support.vendor_keys(ctx.session, deployment.vendor_id))
        except Exception as exc:  # noqa: BLE001 - recorded, retried; the VM stays as it is
            delay = min(self.max_delay, self.base_delay * 2**deployment.attempt)
            deployment.last_error = f"vendor support access: {exc}"
            return Step(None, f"vendor support keys not written ({exc}); retrying", delay=delay)
        deployment.support_sync_due = False
        deployment.active = service.wants_change(deployment)
        service.record(
            ctx.session, deployment, deployment.state, "vendor support access updated: " + installed
        )
        return Step(None, installed)

    def _resize_vm(self, ctx: Context) -> Step:
        """One look at the VM on its way to the wanted size: stop it, change its size, start
        it, wait for its address, whichever is due (a worker killed in between looks again)."""
        deployment = ctx.deployment
        size_spec = (deployment.resize_to or {}).get("size") or deployment.spec.get("size") or {}
        node = _find_node(ctx)
        if node is None:
            raise PermanentError("the VM to resize is gone")
        if ctx.is_dummy:
            return Step(S.GROWING_DISK, "size change recorded (the dummy cloud has no sizes to move to)")
        if deployment.attempt * self.poll_seconds > self.start_timeout:
            raise PermanentError(f"the VM did not reach its new size within {self.start_timeout:.0f} s")
        sizes = ctx.calls("list_sizes", ctx.driver.list_sizes)
        architecture = (node.extra or {}).get("architecture")
        size = clouds.match_size(
            sizes, int(size_spec.get("cores") or 1), int(size_spec.get("ram_mib") or 512), architecture
        )
        current = _node_size(node) or deployment.size_id
        if current == size.id:
            if node.state == NodeState.STOPPED:
                ctx.calls("start_node", ctx.driver.start_node, node)
                return Step(None, f"VM starting as {size.id}", delay=self.poll_seconds)
            address = _address(node)
            if node.state == NodeState.RUNNING and address:
                deployment.size_id = str(size.id)
                deployment.address = address
                deployment.url = _url(deployment.spec.get("app_url_template"), address)
                return Step(S.GROWING_DISK, f"VM {node.id} runs as {size.id} at {address}", {"size": size.id})
            return Step(None, f"VM is {node.state}; waiting", delay=self.poll_seconds)
        if not ctx.is_ec2:
            resize = getattr(ctx.driver, "ex_resize", None) or getattr(ctx.driver, "ex_resize_node", None)
            if resize is None:
                raise PermanentError(f"the {ctx.account.provider} driver cannot change a VM's size")
            ctx.calls("resize_node", resize, node, size)
            return Step(None, f"VM {node.id} resizing to {size.id}", delay=self.poll_seconds)
        if node.state == NodeState.RUNNING:
            ctx.calls("stop_node", ctx.driver.stop_node, node)
            return Step(None, f"VM {node.id} stopping to change its size", delay=self.poll_seconds)
        if node.state == NodeState.STOPPED:
            ctx.calls("change_node_size", ctx.driver.ex_change_node_size, node, size)
            return Step(None, f"VM {node.id} changed from {current} to {size.id}", {"size": size.id})
        return Step(None, f"VM is {node.state}; waiting", delay=self.poll_seconds)

    def _resize_failed(self, ctx: Context, state: DeploymentState, reason: str, now: dt.datetime) -> None:
        """The way forward failed for good: back to the old size (the machine is kept); the
        way back failing is retried for as long as it takes."""
        deployment = ctx.deployment
        wanted = dict(deployment.resize_to or {})
        deployment.next_attempt_at = now
        if wanted.get("rolling_back"):
            delay = random.uniform(self.max_delay / 2, self.max_delay)
            deployment.next_attempt_at = now + dt.timedelta(seconds=delay)
            service.record(
                ctx.session, deployment, state, "going back to the old size failed; retrying", error=reason
            )
            return
        before = wanted.get("from") or {}
        deployment.resize_to = {
            **wanted,
            "size": before.get("size") or deployment.spec.get("size"),
            "data_disk_gib": deployment.spec.get("data_disk_gib"),
            "rolling_back": True,
            "reason": reason,
        }
        deployment.attempt = 0
        service.record(
            ctx.session,
            deployment,
            S.RESIZING_VM,
            "resize failed: " + reason + "; going back to the old size",
            error=reason,
        )

    def _resized(self, ctx: Context, now: dt.datetime) -> None:
        """The machine has its new size and disk (or its old ones again): the spec says so,
        the subscription moves to its new plan from now, everyone is told."""
        deployment = ctx.deployment
        done = dict(deployment.resize_to or {})
        deployment.resize_to = None
        deployment.spec = {
            **deployment.spec,
            "size": done.get("size"),
            "data_disk_gib": done.get("data_disk_gib"),
        }
        payload = {
            "deployment_id": str(deployment.id),
            "subscription_id": str(deployment.subscription_id),
            "customer_id": str(deployment.customer_id),
            "product_id": str(deployment.product_id),
            "size": deployment.size_id,
            "data_disk_gib": done.get("data_disk_gib"),
        }
        if done.get("rolling_back"):
            deployment.last_error = done.get("reason")
            emit(ctx.session, "deployment.resize_failed", {**payload, "reason": done.get("reason") or ""},
                 marketplace_id=deployment.marketplace_id)  # fmt: skip
            return
        emit(ctx.session, "deployment.resized", {**payload, "plan_id": done.get("plan_id")},
             marketplace_id=deployment.marketplace_id)  # fmt: skip
        if done.get("apply_plan") and done.get("plan_id"):
            from cmw.orders import subscriptions

            actor = done.get("actor_id")
            subscriptions.apply_resized_plan(
                ctx.session,
                deployment.subscription_id,
                uuid.UUID(str(done["plan_id"])),
                uuid.UUID(str(actor)) if actor else None,
                now,
            )

    def _suspend(self, ctx: Context) -> Step:
        """Stop the VM, keeping it and its disk (and the customer's data on it)."""
        node = _find_node(ctx)
        if node is None:
            raise PermanentError("the VM to suspend is gone")
        if node.state == NodeState.STOPPED or ctx.is_dummy:
            return Step(S.SUSPENDED, f"VM {node.id} stopped")
        if node.state == NodeState.RUNNING:
            try:
                ctx.calls("stop_node", ctx.driver.stop_node, node)
            except NotImplementedError:
                # nothing to wait for: the machine stays up until the subscription is cancelled
                ctx.deployment.desired = service.RUNNING
                return Step(S.RUNNING, "not suspended: this cloud cannot stop a VM; it is left running")
        return Step(None, f"VM is {node.state}; waiting until it is stopped", delay=self.poll_seconds)

    def _resume(self, ctx: Context) -> Step:
        """Start the suspended VM again; running again once it has an address (EC2 gives
        a stopped VM a new public one, so the address and URL are taken afresh)."""
        node = _find_node(ctx)
        if node is None:
            raise PermanentError("the suspended VM is gone")
        if node.state == NodeState.STOPPED:
            if ctx.is_dummy:
                return Step(S.RUNNING, "resumed (the dummy cloud has nothing to start)")
            ctx.calls("start_node", ctx.driver.start_node, node)
            return Step(None, "VM starting", delay=self.poll_seconds)
        address = _address(node)
        if node.state == NodeState.RUNNING and address:
            deployment = ctx.deployment
            deployment.address = address
            deployment.url = _url(deployment.spec.get("app_url_template"), address)
            return Step(S.RUNNING, f"resumed: VM running at {address}", {"address": address})
        return Step(None, f"VM is {node.state}; waiting", delay=self.poll_seconds)

    def _run_setup(self, ctx: Context) -> Step:
        deployment = ctx.deployment
        spec = deployment.spec
        login = spec.get("default_login") or ctx.account.ssh_username
        if deployment.password_hash is None:
            # made once, before the script runs, so a retry uses the same password
            password = secrets.token_urlsafe(12)
            deployment.password_hash = password_digest(password)
            deployment.password_sealed = self.sealer.seal(password)
            ctx.session.flush()
        assert deployment.password_sealed is not None
        password = self.sealer.open(deployment.password_sealed)
        url = _url(spec.get("app_url_template"), deployment.address)
        if ctx.is_dummy:
            _finish(deployment, url, login)
            return Step(S.RUNNING, "setup " + SKIPPED_NO_SSH, {"skipped": True})
        ran = _setup_script(
            ctx,
            {
                "MERCATO_DEFAULT_LOGIN": login,
                "MERCATO_DEFAULT_PASSWORD": password,
                "MERCATO_APP_URL": url or "",
            },
        )
        _finish(deployment, url, login)
        return Step(S.RUNNING, "setup script ran" if ran else "no setup script")

    def _reconfigure(self, ctx: Context) -> Step:
        """The setup script again, with the customer's changed variables; once per change
        (its own marker on the data disk). Not given the one-time password: the customer
        may have changed it, and it is wiped a week after the machine was ready."""
        deployment = ctx.deployment
        if ctx.is_dummy:
            ran = False
        else:
            ran = _setup_script(
                ctx,
                {
                    "MERCATO_DEFAULT_LOGIN": deployment.login or "",
                    "MERCATO_APP_URL": deployment.url or "",
                    "MERCATO_SETUP_RERUN": "1",
                },
            )
        deployment.setup_due = False
        deployment.setup_error = None
        return Step(
            S.RUNNING,
            "setup script ran again with the changed variables" if ran else "no setup script to run again",
            {"generation": deployment.setup_generation, "skipped": not ran},
        )

    def _reconfigured(self, ctx: Context, state: DeploymentState, reason: str | None) -> None:
        """Tell the customer how the run with the changed variables went."""
        deployment = ctx.deployment
        payload = {
            "deployment_id": str(deployment.id),
            "subscription_id": str(deployment.subscription_id),
            "customer_id": str(deployment.customer_id),
            "product_id": str(deployment.product_id),
            "generation": deployment.setup_generation,
        }
        if reason is None:
            emit(ctx.session, "deployment.reconfigured", payload, marketplace_id=deployment.marketplace_id)
            return
        deployment.setup_due = False
        deployment.setup_error = reason
        deployment.attempt = 0
        service.record(
            ctx.session,
            deployment,
            S.RUNNING,
            f"{state.value.replace('_', ' ')} failed: {reason}; the instance keeps running as it was",
            error=reason,
        )
        emit(
            ctx.session,
            "deployment.reconfigure_failed",
            {**payload, "reason": reason},
            marketplace_id=deployment.marketplace_id,
        )


def _setup_script(ctx: Context, env: dict[str, str]) -> bool:
    """Run the vendor's setup script (``vm_app`` with a script) with its environment; False
    when there is none. A marker on the data disk, one per change of the customer's
    variables, keeps a retry after a crash from running a finished setup again."""
    deployment = ctx.deployment
    spec = deployment.spec
    script = spec.get("setup_script") or ""
    if deployment.product_type != "vm_app" or not script.strip():
        return False
    generation = f"-{deployment.setup_generation}" if deployment.setup_generation else ""
    marker = f'"$MERCATO_DATA_DIR/.mercato-setup-{deployment.id}{generation}.done"'
    command = (
        f'test -f {marker} && exit 0; f=$(mktemp) && cat > "$f" && chmod 700 "$f" && '
        f'if head -c2 "$f" | grep -q "#!"; then "$f"; else sh "$f"; fi; rc=$?; rm -f "$f"; '
        f'[ "$rc" = 0 ] && touch {marker}; exit "$rc"'
    )
    env = {
        # the vendor's variables first: the documented ones cannot be overridden
        **{str(k): str(v) for k, v in (spec.get("variables") or {}).items()},
        **service.customer_environment(ctx.session, deployment),
        "MERCATO_DEPLOYMENT_ID": str(deployment.id),
        "MERCATO_DATA_DIR": ctx.account.data_mount_point,
        "MERCATO_HOSTNAME": deployment.address or "",
        "MERCATO_SETUP_GENERATION": str(deployment.setup_generation),
        **env,
    }
    result = _ssh(ctx, "setup", command, env=env, stdin=script)
    if result.exit_status != 0:
        tail = (result.stderr or result.stdout).strip()[-500:]
        raise TransientError(f"the setup script exited with {result.exit_status}: {tail}")
    return True


# ------------------------------------------------------------------ provisioning
def _requested(ctx: Context) -> Step:
    return Step(S.PREPARING, "preparing network, key pair and security group")


def _prepare(ctx: Context) -> Step:
    detail: dict[str, Any] = {}
    notes = []
    account = ctx.account
    if account.private_key_sealed is None:
        # one platform key pair per cloud account, made under the account's row lock
        locked = ctx.session.get(CloudAccount, account.id, with_for_update=True, populate_existing=True)
        assert locked is not None
        service.ensure_platform_key(ctx.sealer, locked)
        ctx.session.flush()
        ctx.account = locked
    try:
        pairs = ctx.calls("list_key_pairs", ctx.driver.list_key_pairs)
        if not any(p.name == ctx.account.key_name for p in pairs):
            try:
                ctx.calls(
                    "import_key_pair",
                    ctx.driver.import_key_pair_from_string,
                    ctx.account.key_name,
                    ctx.account.public_key,
                )
            except clouds.DeployError as exc:
                # two workers importing at once: the loser finds it there on its next try
                raise TransientError(f"importing the platform key pair: {exc}") from exc
            notes.append(f"key pair {ctx.account.key_name} imported")
        else:
            notes.append(f"key pair {ctx.account.key_name} present")
        detail["key_name"] = ctx.account.key_name
    except NotImplementedError:
        notes.append("key pair: not supported by this cloud")
    if ctx.is_ec2:
        group = _security_group(ctx)
        ctx.deployment.security_group = group
        detail["security_group"] = group
        notes.append(f"security group {group}")
    else:
        notes.append("security group: not managed for this cloud")
    notes.append(
        f"network {account.default_network}" if account.default_network else "the cloud's default network"
    )
    return Step(S.CREATING_VM, "; ".join(notes), detail)


def _rules(spec: dict[str, Any]) -> set[tuple[str, int, str]]:
    """(protocol, port, cidr) the product opens, plus SSH for the platform."""
    rules = {("tcp", 22, "0.0.0.0/0")}
    for entry in spec.get("inbound_ports") or []:
        if isinstance(entry, dict):
            rules.add(
                (
                    str(entry.get("protocol") or "tcp"),
                    int(entry["port"]),
                    str(entry.get("cidr") or "0.0.0.0/0"),
                )
            )
        else:
            rules.add(("tcp", int(entry), "0.0.0.0/0"))
    return rules


def _security_group(ctx: Context) -> str:
    """The product's security group (one per product and cloud), with its ports opened.

    Two workers may deploy the same product at once: whoever loses the race to create
    the group or a rule gets an error, and simply finds it there on its next try.
    """
    driver = ctx.driver
    name = f"mercato-product-{ctx.deployment.product_id}"

    def find() -> Any:
        found = ctx.calls(
            "describe_security_groups", driver.ex_get_security_groups, filters={"group-name": name}
        )
        return found[0] if found else None

    group = find()
    if group is None:
        try:
            ctx.calls("create_security_group", driver.ex_create_security_group, name, "Mercato product ports")
        except clouds.DeployError as exc:
            raise TransientError(f"creating security group {name}: {exc}") from exc
        group = find()
        if group is None:
            raise TransientError(f"security group {name} is not visible yet")
    opened = {
        (str(rule.get("protocol")), int(rule.get("from_port") or 0), cidr)
        for rule in (group.ingress_rules or [])
        if rule.get("from_port") == rule.get("to_port")
        for cidr in rule.get("cidr_ips") or []
    }
    for protocol, port, cidr in sorted(_rules(ctx.deployment.spec) - opened):
        try:
            ctx.calls(
                "authorize_ingress",
                driver.ex_authorize_security_group_ingress,
                group.id,
                port,
                port,
                cidr_ips=[cidr],
                protocol=protocol,
            )
        except clouds.DeployError as exc:
            raise TransientError(f"opening {protocol}/{port} from {cidr}: {exc}") from exc
    return str(group.id)


def _listed(ctx: Context, call: str, fn: Callable[..., list[Any]]) -> list[Any]:
    """The cloud's nodes or volumes: only this deployment's where the cloud filters by tag."""
    if ctx.is_ec2:
        found: list[Any] = ctx.calls(call, fn, ex_filters={f"tag:{TAG}": ctx.tag})
        return found
    listed: list[Any] = ctx.calls(call, fn)
    return listed


def _is_mine(ctx: Context, resource: Any, known_id: str | None, name: str) -> bool:
    tags = (resource.extra or {}).get("tags") or {}
    return bool(resource.id == known_id or resource.name == name or tags.get(TAG) == ctx.tag)


def _find_node(ctx: Context) -> Node | None:
    for node in _listed(ctx, "list_nodes", ctx.driver.list_nodes):
        if _is_mine(ctx, node, ctx.deployment.node_id, ctx.name) and node.state != NodeState.TERMINATED:
            return node
    return None


def _create_vm(ctx: Context) -> Step:
    deployment = ctx.deployment
    found = _find_node(ctx)
    if found is not None:
        deployment.node_id = found.id
        return Step(S.STARTING_VM, f"VM {found.id} found (made by an earlier attempt)", {"node_id": found.id})
    spec = deployment.spec
    size_spec = spec.get("size") or {}
    sizes = ctx.calls("list_sizes", ctx.driver.list_sizes)
    image = _image(ctx, str(spec.get("image")))
    architecture = (image.extra or {}).get("architecture")
    size = clouds.match_size(
        sizes, int(size_spec.get("cores") or 1), int(size_spec.get("ram_mib") or 512), architecture
    )
    kwargs: dict[str, Any] = {}
    if ctx.is_ec2:
        kwargs = {
            "ex_metadata": {TAG: ctx.tag},
            "ex_clienttoken": ctx.tag,
            "ex_keyname": ctx.account.key_name,
        }
        subnets = []
        if ctx.account.default_network:
            subnets = ctx.calls(
                "describe_subnets", ctx.driver.ex_list_subnets, subnet_ids=[ctx.account.default_network]
            )
            if not subnets:
                raise PermanentError(f"the cloud has no subnet {ctx.account.default_network!r}")
            kwargs["ex_subnet"] = subnets[0]
        if deployment.security_group:
            # by id inside a subnet (VPC), by name in the default network
            if subnets:
                kwargs["ex_security_group_ids"] = [deployment.security_group]
            else:
                kwargs["ex_security_groups"] = [f"mercato-product-{deployment.product_id}"]
    node = ctx.calls("create_node", ctx.driver.create_node, name=ctx.name, size=size, image=image, **kwargs)
    deployment.node_id = node.id
    deployment.size_id = str(size.id)
    return Step(
        S.STARTING_VM,
        f"VM {node.id} created ({size.id}, image {image.id})",
        {"node_id": node.id, "size": str(size.id), "image": str(image.id)},
    )


def _image(ctx: Context, image_id: str) -> Any:
    try:
        return ctx.calls("get_image", ctx.driver.get_image, image_id)
    except NotImplementedError:
        images = ctx.calls("list_images", ctx.driver.list_images)
        for image in images:
            if str(image.id) == image_id or image.name == image_id:
                return image
        raise PermanentError(f"the cloud has no image {image_id!r}") from None


def vm_connection(account: CloudAccount, deployment: Deployment, sealer: Sealer) -> Callable[[], ssh.Session]:
    """What opens an SSH session to the deployment's VM with the platform key, at the
    account's SSH endpoint override if it has one, checking the host key recorded at first
    contact. Raises at once when there is no address to connect to."""
    host = account.ssh_host or deployment.address
    if not host:
        raise PermanentError("the VM has no address to connect to")
    assert account.private_key_sealed is not None
    key = ssh.load_private_key(sealer.open(account.private_key_sealed))
    return functools.partial(
        ssh.Session, host, account.ssh_port or 22, account.ssh_username, key, deployment.host_key
    )


def _ssh(
    ctx: Context, what: str, command: str, *, env: dict[str, str] | None = None, stdin: str | None = None
) -> ssh.Result:
    deployment = ctx.deployment
    connect = vm_connection(ctx.account, deployment, ctx.sealer)

    def connect_and_run() -> tuple[ssh.Result, str]:
        with connect() as conn:
            return conn.run(command, env=env, stdin=stdin), conn.host_key

    try:
        result, host_key = ctx.calls(f"ssh_{what}", connect_and_run)
    except ssh.HostKeyMismatch:
        raise
    if deployment.host_key is None:
        deployment.host_key = host_key
    return result  # type: ignore[no-any-return]


def _configure_access(ctx: Context) -> Step:
    deployment = ctx.deployment
    after = S.CREATING_DISK if deployment.product_type == "vm_app" else S.RUNNING_SETUP
    if ctx.is_dummy:
        return Step(after, "customer key " + SKIPPED_NO_SSH, {"skipped": True})
    key = (deployment.ssh_public_key or "").strip()
    path = ctx.account.authorized_keys_file
    target = path if path.startswith("/") else f"$HOME/{path}"
    if key:
        quoted = shlex.quote(key)
        command = (
            f'f="{target}"; mkdir -p "$(dirname "$f")" && chmod 700 "$(dirname "$f")" && touch "$f" && '
            f'chmod 600 "$f" && (grep -qxF {quoted} "$f" || echo {quoted} >> "$f")'
        )
    else:
        command = "true"
    result = _ssh(ctx, "install_key", command)
    if result.exit_status != 0:
        raise TransientError(f"installing the customer's key failed: {result.stderr.strip()[-300:]}")
    message = "customer's SSH key installed" if key else "no customer key given; SSH reachable"
    vendor_keys = support.vendor_keys(ctx.session, deployment.vendor_id)
    if vendor_keys:
        message += "; " + _install_support(ctx, vendor_keys)
    return Step(after, message + f"; host key {deployment.host_key}", {"host_key": deployment.host_key})


def _install_support(ctx: Context, keys: list[str]) -> str:
    """The support user with the vendor's keys, exactly (idempotent); what was done."""
    deployment = ctx.deployment
    if ctx.is_dummy:
        deployment.support_keys_digest = support.digest(keys)
        return "vendor support keys " + SKIPPED_NO_SSH
    user = ctx.account.support_username
    env = {"MERCATO_SUPPORT_USER": user, "MERCATO_SUPPORT_KEYS": support.authorized_keys(keys)}
    result = _ssh(ctx, "support_access", "sh -s", env=env, stdin=support.SCRIPT)
    if result.exit_status != 0:
        raise TransientError(
            f"writing the vendor's support keys failed: {(result.stderr or result.stdout).strip()[-300:]}"
        )
    deployment.support_keys_digest = support.digest(keys)
    return f"{len(keys)} vendor support key(s) installed for {user}"


def _find_volume(ctx: Context) -> StorageVolume | None:
    for volume in _listed(ctx, "list_volumes", ctx.driver.list_volumes):
        if _is_mine(ctx, volume, ctx.deployment.volume_id, f"{ctx.name}-data"):
            return volume  # type: ignore[no-any-return]
    return None


def _create_disk(ctx: Context) -> Step:
    deployment = ctx.deployment
    size = int(deployment.spec.get("data_disk_gib") or 0)
    if size <= 0:
        return Step(S.RUNNING_SETUP, "no data disk in the product's spec")
    try:
        found = _find_volume(ctx)
    except NotImplementedError:
        return Step(S.RUNNING_SETUP, "data disk skipped: this cloud has no volumes", {"skipped": True})
    if found is not None:
        deployment.volume_id = found.id
        return Step(
            S.ATTACHING_DISK, f"disk {found.id} found (made by an earlier attempt)", {"volume_id": found.id}
        )
    if ctx.is_ec2:
        node = _find_node(ctx)
        zone = (node.extra or {}).get("availability") if node else None
        if not zone:
            raise PermanentError("the VM's availability zone is unknown; cannot place its disk")
        volume = ctx.calls(
            "create_volume",
            clouds.ec2_create_volume,
            ctx.driver,
            size,
            zone,
            {TAG: ctx.tag, "Name": f"{ctx.name}-data"},
        )
    else:
        volume = ctx.calls("create_volume", ctx.driver.create_volume, size, f"{ctx.name}-data")
    deployment.volume_id = volume.id
    return Step(
        S.ATTACHING_DISK, f"disk {volume.id} of {size} GiB created", {"volume_id": volume.id, "gib": size}
    )


def _attach_disk(ctx: Context) -> Step:
    volume = _find_volume(ctx)
    node = _find_node(ctx)
    if volume is None or node is None:
        raise PermanentError("the data disk or the VM disappeared before attaching")
    extra = volume.extra or {}
    if extra.get("instance_id") == node.id or str(volume.state).lower() in clouds.ATTACHED_STATES:
        return Step(S.PREPARING_DISK, f"disk {volume.id} already attached")
    ctx.calls("attach_volume", ctx.driver.attach_volume, node, volume, DEVICE)
    return Step(S.PREPARING_DISK, f"disk {volume.id} attached as {DEVICE}", {"device": DEVICE})


def _prepare_disk(ctx: Context) -> Step:
    if ctx.is_dummy:
        return Step(S.RUNNING_SETUP, "disk formatting " + SKIPPED_NO_SSH, {"skipped": True})
    env = {
        "MERCATO_DISK_DEVICE": DEVICE,
        "MERCATO_VOLUME_ID": ctx.deployment.volume_id or "",
        "MERCATO_DATA_DIR": ctx.account.data_mount_point,
    }
    result = _ssh(ctx, "prepare_disk", "sh -s", env=env, stdin=ctx.account.disk_script or DISK_SCRIPT)
    if result.exit_status != 0:
        raise TransientError(
            f"formatting and mounting the disk failed: {(result.stderr or result.stdout).strip()[-300:]}"
        )
    return Step(S.RUNNING_SETUP, f"disk mounted at {ctx.account.data_mount_point}")


def _address(node: Node) -> str | None:
    """The VM's address: its first public one, else its first private one."""
    return next(iter(node.public_ips or []), None) or next(iter(node.private_ips or []), None)


def _node_size(node: Node) -> str | None:
    """The VM's size as the cloud reports it (EC2's instance type, a flavour, ...)."""
    extra = node.extra or {}
    found = extra.get("instance_type") or extra.get("flavorId") or extra.get("size")
    if found:
        return str(found)
    return str(node.size.id) if getattr(node, "size", None) is not None else None


def _grow_disk(ctx: Context) -> Step:
    """One look at the data disk on its way to the wanted size: grow the volume, wait until
    the cloud has, then let the file system take the space (which does nothing the second
    time). Disks never shrink: a smaller plan keeps the disk it has."""
    deployment = ctx.deployment
    resize = deployment.resize_to or {}
    want = int(resize.get("data_disk_gib") or 0)
    before = int((resize.get("from") or {}).get("data_disk_gib") or 0)
    if want <= before or not deployment.volume_id:
        return Step(S.RUNNING, "resized; the data disk stays as it is")
    if ctx.is_dummy:
        return Step(S.RUNNING, f"resized; disk growth to {want} GiB recorded", {"skipped": True})
    volume = _find_volume(ctx)
    if volume is None:
        raise PermanentError("the data disk to grow is gone")
    if int(volume.size or 0) < want:
        if not ctx.is_ec2:
            grow = getattr(ctx.driver, "ex_resize_volume", None)
            if grow is None:
                raise PermanentError(f"the {ctx.account.provider} driver cannot grow a disk")
            ctx.calls("resize_volume", grow, volume, want)
        else:
            ctx.calls("modify_volume", ctx.driver.ex_modify_volume, volume, {"Size": want})
        return Step(None, f"disk {volume.id} growing from {volume.size} to {want} GiB", delay=1.0)
    env = {
        "MERCATO_DISK_DEVICE": DEVICE,
        "MERCATO_VOLUME_ID": volume.id,
        "MERCATO_DATA_DIR": ctx.account.data_mount_point,
        "MERCATO_DISK_GROWN": "1",
        "MERCATO_DISK_GIB": str(want),
    }
    result = _ssh(ctx, "grow_disk", "sh -s", env=env, stdin=ctx.account.disk_script or DISK_SCRIPT)
    if result.exit_status != 0:
        raise TransientError(
            f"growing the file system failed: {(result.stderr or result.stdout).strip()[-300:]}"
        )
    return Step(S.RUNNING, f"disk {volume.id} grown to {want} GiB", {"gib": want})


def _url(template: str | None, address: str | None) -> str | None:
    if not template or not address:
        return None
    return template.replace("{ip}", address).replace("{hostname}", address)


def _finish(deployment: Deployment, url: str | None, login: str) -> None:
    deployment.url = url
    deployment.login = login


# ------------------------------------------------------------------ suspension
# ------------------------------------------------------------------ undoing
def _begin_removal(ctx: Context) -> Step:
    state = ctx.deployment.state
    if state is S.REMOVED:
        return Step(None, "already removed", delay=0)
    if state is S.FAILED:
        return Step(S.REMOVED, "subscription ended; nothing was left to remove")
    if state is S.RUNNING:
        return Step(S.STOPPING, "subscription ended: stopping the VM")
    return Step(
        S.DESTROYING, f"subscription ended while {state.value.replace('_', ' ')}: removing what was made"
    )


def _stop(ctx: Context) -> Step:
    node = _find_node(ctx)
    if node is not None and node.state == NodeState.RUNNING:
        try:
            ctx.calls("stop_node", ctx.driver.stop_node, node)
        except NotImplementedError:
            return Step(S.DESTROYING, "stop not supported; destroying")
        return Step(S.DESTROYING, f"VM {node.id} stopped")
    return Step(S.DESTROYING, "VM not running")


def _remove_all(ctx: Context) -> list[str]:
    """Detach and delete the disk, then destroy the VM; what was removed."""
    removed = []
    try:
        volume = _find_volume(ctx)
    except NotImplementedError:
        volume = None
    if volume is not None:
        if clouds.is_attached(volume):
            ctx.calls("detach_volume", ctx.driver.detach_volume, volume)
            clouds.wait_detached(ctx.calls, ctx.driver, volume.id)
        ctx.calls("destroy_volume", ctx.driver.destroy_volume, volume)
        removed.append(f"disk {volume.id}")
    node = _find_node(ctx)
    if node is not None:
        ctx.calls("destroy_node", ctx.driver.destroy_node, node)
        removed.append(f"VM {node.id}")
    return removed


def _final_snapshot(ctx: Context) -> str | None:
    """The product asks for a last snapshot of the data disk: made once, before deletion."""
    if not ctx.deployment.spec.get("final_snapshot") or not ctx.deployment.volume_id:
        return None
    volume = _find_volume(ctx)
    if volume is None:
        return None
    name = f"{ctx.name}-final"
    try:
        existing = ctx.calls("list_snapshots", ctx.driver.list_volume_snapshots, volume)
        for snapshot in existing:
            if snapshot.name == name or (snapshot.extra or {}).get("tags", {}).get("Name") == name:
                return f"snapshot {snapshot.id} (made earlier)"
        snapshot = ctx.calls("create_snapshot", ctx.driver.create_volume_snapshot, volume, name)
    except NotImplementedError:
        return "no final snapshot: this cloud has no snapshots"
    return f"snapshot {snapshot.id}"


def _destroy(ctx: Context) -> Step:
    snapshot = _final_snapshot(ctx)
    removed = _remove_all(ctx)
    if snapshot:
        removed.insert(0, "after " + snapshot)
    ctx.deployment.removed_at = utcnow()
    return Step(S.REMOVED, "removed " + (", ".join(removed) if removed else "nothing (none was found)"))


def _roll_back(ctx: Context) -> Step:
    removed = _remove_all(ctx)
    return Step(
        S.FAILED,
        (ctx.deployment.last_error or "failed")
        + "; rolled back "
        + (", ".join(removed) if removed else "nothing"),
        {"removed": removed},
    )
