"""``python -m bench.deployer``: deployments against moto's EC2 with two real workers.

What it does, all on loopback and stopping by itself:

1. a fresh PostgreSQL database (as ``python -m bench``), RabbitMQ, moto's EC2 server and
   an sshd standing in for the VMs (the cloud account's SSH endpoint override);
2. starts two ``flask mercato worker`` processes (relay, consumers and the deployer);
3. places 50 orders of a ``vm_app`` product at once and waits until the 50 deployments
   run (every step: security group, VM, SSH, disk, disk script, setup script);
4. reports the wall time and the platform's own overhead per deployment: the time of
   its steps minus the time spent inside provider and SSH calls (target under 250 ms);
5. then deploys ``bare_vm`` products in batches of 50 up to ``BENCH_DEPLOYMENTS`` (500)
   and compares each worker's resident memory after the first 50 and at the end
   (target: no growth beyond 10%).

Results go to ``var/bench/deployer.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet

from bench.__main__ import (
    ROOT,
    BenchError,
    broker_url,
    check_broker,
    child_environment,
    fresh_database,
    run_step,
)

OUTPUT = ROOT / "var" / "bench" / "deployer.json"
BATCH = 50
TOTAL = int(os.environ.get("BENCH_DEPLOYMENTS", "500"))
WORKERS = 2
TIMEOUT = float(os.environ.get("BENCH_DEPLOYER_TIMEOUT", "900"))
DISK_SCRIPT = 'mkdir -p "$MERCATO_DATA_DIR" && echo "$MERCATO_DISK_DEVICE" > "$MERCATO_DATA_DIR/disk"'
SETUP_SCRIPT = '#!/bin/sh\necho "$MERCATO_DEFAULT_LOGIN" > "$MERCATO_DATA_DIR/setup-$MERCATO_DEPLOYMENT_ID"\n'


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the worker is ``flask``'s child)."""
    total = 0
    for candidate in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in found]


class Shop:
    """Products, customers and orders, written with the services in this process."""

    def __init__(self, env: dict[str, str]) -> None:
        os.environ.update(env)
        from app import create_app

        self.app = create_app()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log

    def setup(self, moto: Any, sshd: Any, data_dir: Path) -> None:
        from cmw.accounts import service as accounts
        from cmw.accounts.models import OrganisationKind
        from cmw.catalog import service as catalog
        from cmw.catalog.models import BillingPeriod, ComponentKind
        from cmw.catalog.pricing import ComponentSpec, PlanSpec
        from cmw.extensions import current_session
        from cmw.marketplaces.service import platform
        from deployer import service

        with self.app.app_context():
            session = current_session()
            marketplace = platform(session)
            options = moto.libcloud_ec2_kwargs()
            region = options.pop("region")
            account = service.create_cloud_account(
                session,
                self.app.extensions["mercato.sealer"],
                service.CloudAccountInput(
                    slug="moto",
                    name="moto EC2",
                    provider="ec2",
                    credentials={"key": moto.access_key_id, "secret": moto.secret_access_key},
                    region=region,
                    driver_options=options,
                    ssh_host=sshd.host,
                    ssh_port=sshd.port,
                    ssh_username=sshd.username,
                    authorized_keys_file=str(sshd.authorized_keys_path),
                    data_mount_point=str(data_dir),
                    disk_script=DISK_SCRIPT,
                ),
            )
            assert account.public_key is not None
            sshd.authorize_key(account.public_key)
            image = moto.boto3_client("ec2").describe_images(
                Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}]
            )["Images"][0]["ImageId"]
            admin = accounts.create_user(
                session, email="bench-admin@example.test", name="A", password="bench-pw-123"
            )
            vendor = accounts.create_organisation(
                session,
                marketplace,
                kind=OrganisationKind.VENDOR,
                name="Bench Vendor",
                billing=accounts.BillingDetails(legal_name="Bench Vendor Ltd", country="DE"),
            )
            for slug, product_type in (("bench-app", "vm_app"), ("bench-vm", "bare_vm")):
                target: dict[str, Any] = {
                    "cloud_account": "moto",
                    "region": None,
                    "image": image,
                    "size": {"cores": 1, "ram_mib": 1024, "root_disk_gib": 8},
                    "inbound_ports": [{"port": 443, "protocol": "tcp", "cidr": "0.0.0.0/0"}],
                    "app_url_template": "https://{ip}/",
                    "default_login": "admin",
                }
                if product_type == "vm_app":
                    target.update(data_disk_gib=4, setup_script=SETUP_SCRIPT)
                product = catalog.create_product(
                    session,
                    marketplace,
                    vendor,
                    slug=slug,
                    content={
                        "name": slug,
                        "category_slug": "web",
                        "product_type": product_type,
                        "deployment": [target],
                    },
                )
                catalog.set_plans(
                    session,
                    product,
                    [
                        PlanSpec(
                            code="basic",
                            name="Basic",
                            currency="EUR",
                            billing_period=BillingPeriod.MONTH,
                            components=(ComponentSpec(kind=ComponentKind.FLAT, label="Fee", unit_price=10),),
                        )
                    ],
                )
                catalog.submit(session, product)
                catalog.approve(session, product, admin)
            session.commit()

    def order(self, count: int, product: str) -> list[uuid.UUID]:
        """``count`` customers each order ``product``, in one transaction; their subscriptions."""
        from cmw.accounts import service as accounts
        from cmw.accounts.models import OrganisationKind, Role
        from cmw.extensions import current_session
        from cmw.marketplaces.service import platform
        from cmw.orders import service as orders

        subscriptions = []
        with self.app.app_context():
            session = current_session()
            marketplace = platform(session)
            for _ in range(count):
                n = uuid.uuid4().hex[:10]
                user = accounts.create_user(
                    session, email=f"c-{n}@example.test", name=n, password="bench-pw-123"
                )
                org = accounts.create_organisation(
                    session,
                    marketplace,
                    kind=OrganisationKind.CUSTOMER,
                    name=f"Customer {n}",
                    billing=accounts.BillingDetails(legal_name=f"Customer {n} Srl", country="IT"),
                )
                accounts.grant(session, user, marketplace, Role.CUSTOMER, org)
                placed = orders.place_order(
                    session, marketplace, user, org, orders.OrderRequest(product=product, plan="basic")
                )
                assert placed.subscription_id is not None
                subscriptions.append(placed.subscription_id)
            session.commit()
        return subscriptions

    def states(self, subscriptions: list[uuid.UUID]) -> dict[str, int]:
        from cmw.extensions import current_session
        from deployer.models import Deployment

        with self.app.app_context():
            rows = current_session().execute(
                sa.select(Deployment.state, sa.func.count())
                .where(Deployment.subscription_id.in_(subscriptions))
                .group_by(Deployment.state)
            )
            return {str(state): int(count) for state, count in rows}

    def errors(self, subscriptions: list[uuid.UUID]) -> list[str]:
        from cmw.extensions import current_session
        from deployer.models import Deployment

        with self.app.app_context():
            return [
                str(e)
                for e in current_session().scalars(
                    sa.select(Deployment.last_error).where(
                        Deployment.subscription_id.in_(subscriptions), Deployment.last_error.is_not(None)
                    )
                )
            ][:5]

    def figures(self, subscriptions: list[uuid.UUID]) -> dict[str, Any]:
        """Wall time and own overhead per deployment, from the history."""
        from cmw.extensions import current_session
        from deployer.models import Deployment, DeploymentEvent

        with self.app.app_context():
            session = current_session()
            deployments = list(
                session.scalars(sa.select(Deployment).where(Deployment.subscription_id.in_(subscriptions)))
            )
            overheads, provider, walls = [], [], []
            for deployment in deployments:
                events = list(
                    session.scalars(
                        sa.select(DeploymentEvent).where(DeploymentEvent.deployment_id == deployment.id)
                    )
                )
                step = sum(float(e.detail.get("step_seconds", 0)) for e in events)
                inside = sum(float(e.detail.get("provider_seconds", 0)) for e in events)
                overheads.append(step - inside)
                provider.append(inside)
                if deployment.ready_at:
                    walls.append((deployment.ready_at - deployment.created_at).total_seconds())
        overheads.sort()
        return {
            "deployments": len(deployments),
            "overhead_ms_mean": round(1000 * sum(overheads) / len(overheads), 1),
            "overhead_ms_p50": round(1000 * overheads[len(overheads) // 2], 1),
            "overhead_ms_max": round(1000 * overheads[-1], 1),
            "provider_and_ssh_s_mean": round(sum(provider) / len(provider), 3),
            "request_to_running_s_max": round(max(walls), 2) if walls else None,
        }


def wait_running(shop: Shop, subscriptions: list[uuid.UUID], workers: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        states = shop.states(subscriptions)
        if states.get("running", 0) == len(subscriptions):
            return
        if states.get("failed"):
            raise BenchError(f"deployments failed: {states}; {shop.errors(subscriptions)}")
        for proc in workers:
            if proc.poll() is not None:
                raise BenchError(f"a worker exited with {proc.returncode}")
        time.sleep(0.5)
    raise BenchError(f"not all running after {TIMEOUT:.0f}s: {shop.states(subscriptions)}")


def moto_shop(stack: ExitStack, prefix: str) -> tuple[Shop, dict[str, str], Path]:
    """A fresh database (migrated), moto's EC2 and an sshd standing in for the VMs, and a
    :class:`Shop` with its products on them, all gone when ``stack`` closes; the
    environment for the platform's processes and a temporary folder."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import running_moto, running_sshd

    check_broker(broker_url())
    database_url = stack.enter_context(fresh_database())
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    env = child_environment(database_url, tmp / "var")
    env["MERCATO_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    print("preparing the database, moto and sshd ...", file=sys.stderr, flush=True)
    run_step([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"], env, "flask db upgrade")
    moto = stack.enter_context(running_moto())
    (tmp / "sshd").mkdir()
    sshd = stack.enter_context(running_sshd(tmp / "sshd"))
    shop = Shop(env)
    shop.setup(moto, sshd, tmp / "data")
    return shop, env, tmp


def run() -> int:
    with ExitStack() as stack:
        shop, env, tmp = moto_shop(stack, "mercato-bench-deployer-")
        logs = [(tmp / f"worker-{n}.log").open("wb") for n in range(WORKERS)]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "app", "mercato", "worker"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            for log in logs
        ]  # fmt: skip
        try:
            time.sleep(2.0)  # the workers declare their queues before the first events
            started = time.monotonic()
            first = shop.order(BATCH, "bench-app")
            wait_running(shop, first, workers)
            first_wall = time.monotonic() - started
            figures = shop.figures(first)
            memory_first = [rss_mib(w.pid) for w in workers]
            print(
                f"{BATCH} vm_app deployments running after {first_wall:.1f}s; own overhead per deployment "
                f"mean {figures['overhead_ms_mean']} ms (target < 250 ms); worker memory {memory_first} MiB",
                file=sys.stderr,
            )
            done = BATCH
            while done < TOTAL:
                batch = shop.order(min(BATCH, TOTAL - done), "bench-vm")
                wait_running(shop, batch, workers)
                done += len(batch)
                print(f"  {done} deployments running", file=sys.stderr)
            memory_last = [rss_mib(w.pid) for w in workers]
        finally:
            for proc in workers:
                proc.terminate()
            for proc in workers:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for log in logs:
                log.close()
    growth = [
        round(100 * (last - first) / first, 1) for first, last in zip(memory_first, memory_last, strict=True)
    ]
    ok = figures["overhead_ms_mean"] < 250 and all(g <= 10 for g in growth)
    result = {
        "benchmark": "deployer",
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "workers": WORKERS,
        "first_batch": {
            "deployments": BATCH,
            "product_type": "vm_app",
            "wall_s": round(first_wall, 2),
            **figures,
        },
        "total_deployments": TOTAL,
        "worker_rss_mib_after_first_batch": memory_first,
        "worker_rss_mib_at_end": memory_last,
        "worker_rss_growth_percent": growth,
        "target_met": ok,
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"deployer: {BATCH} vm_app deployments with {WORKERS} workers in {first_wall:.1f}s; "
        f"own overhead per deployment mean {figures['overhead_ms_mean']} ms, "
        f"p50 {figures['overhead_ms_p50']} ms, max {figures['overhead_ms_max']} ms "
        f"(provider and SSH {figures['provider_and_ssh_s_mean']} s each); "
        f"worker memory after {BATCH}: {memory_first} MiB, after {TOTAL}: {memory_last} MiB "
        f"(growth {growth} %); target (< 250 ms, <= 10 %): {'met' if ok else 'NOT met'}"
    )
    print(f"written to {OUTPUT.relative_to(ROOT)}")
    return 0


def main() -> int:
    try:
        return run()
    except BenchError as exc:
        print(f"bench.deployer: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
