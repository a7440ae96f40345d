"""``flask mercato ...``: bootstrap, demo data, the worker, and ``serve`` (web + worker)."""

from __future__ import annotations

import datetime as dt
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import BinaryIO

import click
import prometheus_client
import sqlalchemy as sa
from flask import current_app
from flask.cli import with_appcontext
from flask_migrate import upgrade
from kombu import Connection
from sqlalchemy.orm import sessionmaker

from cmw import demo
from cmw.accounts import service as accounts
from cmw.accounts.models import Role, User
from cmw.assets.api import storage
from cmw.billing import dunning
from cmw.billing import service as billing
from cmw.config import Config
from cmw.events.periodic import Every
from cmw.events.worker import Worker
from cmw.extensions import current_session, db
from cmw.marketplaces.service import platform
from cmw.monitoring import metrics
from cmw.orders.jobs import run_due
from cmw.support import mail as support_mail
from cmw.usage import bandwidth, budgets, cloud, ingest, replay
from cmw.webhooks import service as webhooks
from deployer import reaper
from deployer.engine import Engine
from deployer.monitor import Monitor, Retention


@click.group("mercato")
def mercato() -> None:
    """Mercato administration commands."""


def _config() -> Config:
    config: Config = current_app.config["MERCATO"]
    return config


@mercato.command("create-admin")
@click.option("--email", prompt=True)
@click.option("--name", prompt=True, default="Administrator")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@with_appcontext
def create_admin(email: str, name: str, password: str) -> None:
    """Create (or promote) a platform administrator."""
    session = current_session()
    user = accounts.find_user(session, email)
    try:
        if user is None:
            user = accounts.create_user(
                session, email=email, name=name, password=password, email_verified=True
            )
        accounts.grant(session, user, platform(session), Role.ADMIN)
    except (accounts.WeakPassword, accounts.InvalidGrant) as exc:
        session.rollback()
        raise click.ClickException(str(exc)) from None
    session.commit()
    click.echo(f"{user.email} is a platform administrator")


@mercato.command("demo-data")
@with_appcontext
def demo_data() -> None:
    """Load a believable demo (idempotent): admin, vendors, customers."""
    created = demo.load(current_session(), storage(), current_app.extensions["mercato.sealer"])
    current_session().commit()
    click.echo("demo data loaded" if created else "demo data already present")
    for login in demo.LOGINS:
        click.echo(f"  {login.role:<9} {login.email:<32} {login.password}")


@mercato.command("worker")
@with_appcontext
def worker() -> None:
    """Run the outbox relay and the event consumers until SIGTERM or Ctrl-C."""
    config = _config()
    if config.worker_metrics_port and not metrics.multiprocess_dir():
        # its own /metrics (deployment steps, provider calls, billing runs) where it does not
        # share a multiprocess folder with the web process
        prometheus_client.start_http_server(config.worker_metrics_port, addr=config.worker_metrics_host)
    session_factory = sessionmaker(bind=db.engine, expire_on_commit=False)
    consumers = current_app.extensions.get("mercato.consumers", [])
    sealer = current_app.extensions["mercato.sealer"]

    def connect() -> Connection:
        return Connection(config.broker_url, transport_options=config.broker_transport_options, heartbeat=30)

    runner = Worker(
        connect,
        session_factory,
        consumers,
        relay_batch_size=config.outbox_batch_size,
        relay_poll_seconds=config.outbox_poll_seconds,
        periodic=[
            functools.partial(run_due, session_factory),
            Every(reaper.INTERVAL_SECONDS, functools.partial(reaper.reap, session_factory, sealer)),
            Every(3600, functools.partial(billing.run, session_factory)),
            Every(600, functools.partial(dunning.run, session_factory)),
            Every(3600, functools.partial(ingest.make_partitions_ahead, db.engine)),
            Every(60, functools.partial(budgets.run, session_factory)),
            Every(300, functools.partial(cloud.extend_running, session_factory)),
            Every(900, functools.partial(bandwidth.export, session_factory, sealer)),
            Every(
                config.monitor_interval_seconds,
                Monitor(
                    session_factory,
                    sealer,
                    Retention(
                        dt.timedelta(days=config.stats_retention_days),
                        dt.timedelta(days=config.log_retention_days),
                    ),
                ).run,
            ),
        ],
        loops=[
            Engine(session_factory, sealer).run,
            functools.partial(
                webhooks.send_forever,
                session_factory,
                sealer,
                webhooks.Sender(
                    allow_private=config.allow_private_targets, ca_bundle=config.outbound_ca_bundle
                ),
            ),
        ],
    )

    def _stop(signum: int, _frame: FrameType | None) -> None:
        click.echo(f"worker: signal {signum}, stopping after the message in hand")
        runner.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(
        f"worker: relaying the outbox to {config.broker_url.split('@')[-1]}; {len(consumers)} consumer(s)"
    )
    runner.run_forever()


@mercato.group("billing")
def billing_group() -> None:
    """Billing runs."""


@billing_group.command("run")
@click.option(
    "--at",
    "at",
    default=None,
    help="bill up to this moment (ISO 8601, UTC if no offset); default: now. Never in the future.",
)
@with_appcontext
def billing_run(at: str | None) -> None:
    """Bill every subscription up to --at: fees in advance, setup fees, usage of ended periods.
    Safe to run again or twice at once: nothing is billed twice."""
    when = _moment(at) if at else None
    session_factory = sessionmaker(bind=db.engine, expire_on_commit=False)
    try:
        report = billing.run(session_factory, when)
    except billing.BillingError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"billing run {report.run_id}: {len(report.invoices)} invoice(s), {report.lines} line(s)")
    for number in report.invoices:
        click.echo(f"  {number}")


def _moment(value: str) -> dt.datetime:
    """An ISO 8601 time from the command line, UTC if it has no offset."""
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time such as 2026-11-30T00:00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@mercato.group("usage")
def usage_group() -> None:
    """Usage records and their roll-up."""


@usage_group.command("rebuild")
@click.option("--from", "start", required=True, help="ISO 8601 time (UTC if no offset)")
@click.option("--to", "end", required=True, help="ISO 8601 time, after --from")
@with_appcontext
def usage_rebuild(start: str, end: str) -> None:
    """Rebuild the hourly usage in [--from, --to) from the raw records, and report what
    changed: the usage per subscription and metric, and invoiced usage lines rated again."""
    begins, ends = _moment(start), _moment(end)
    if ends <= begins:
        raise click.BadParameter("--to must be after --from")
    session = current_session()
    report = replay.rebuild(session, begins, ends)
    session.commit()
    click.echo(
        f"rebuilt {report.start.isoformat()} to {report.end.isoformat()}: {report.records} record(s)"
        f" in {report.hours} hour(s); {len(report.usage)} usage total(s) changed"
    )
    for change in report.usage:
        click.echo(f"  usage {change.subscription_id} {change.metric}: {change.before} -> {change.after}")
    for billed in report.billed:
        click.echo(
            f"  invoice {billed.invoice} {billed.line}: billed {billed.billed} {billed.currency},"
            f" now {billed.now} ({billed.difference:+} {billed.currency})"
        )
    if not report.billed:
        click.echo("  every invoiced usage line in the range rates the same")


@mercato.group("support")
def support_group() -> None:
    """Support tickets."""


@support_group.command("inbound-email")
@click.argument("source", type=click.File("rb"), default="-")
@with_appcontext
def support_inbound_email(source: BinaryIO) -> None:
    """Add a reply e-mail (raw RFC 5322, from SOURCE or standard input) to its ticket: for an
    MTA that pipes the support address's mail here. Exits 67 (EX_NOUSER) when the e-mail
    belongs to no ticket, so the MTA bounces it with the reason."""
    session = current_session()
    try:
        received = support_mail.receive(session, storage(), source.read())
    except support_mail.InboundError as exc:
        session.rollback()
        click.echo(f"mercato: {exc}", err=True)
        raise SystemExit(67) from None
    session.commit()
    state = "already in" if received.duplicate else "added to"
    click.echo(f"{state} ticket {received.ticket.ref}")
    for reason in received.refused:
        click.echo(f"  attachment refused: {reason}")


@mercato.command("bootstrap")
@with_appcontext
def bootstrap() -> None:
    """Migrate the database to head and load the demo on first start."""
    upgrade(directory=current_app.extensions["migrate"].directory)
    if current_session().scalar(sa.select(sa.func.count()).select_from(User)) == 0:
        demo.load(
            current_session(),
            storage(),
            current_app.extensions["mercato.sealer"],
        )
        current_session().commit()
        click.echo("first start: demo data loaded")


@mercato.command("serve")
@click.option("--host", default=lambda: os.environ.get("HOST", "127.0.0.1"), show_default="HOST or 127.0.0.1")
@click.option(
    "--port", default=lambda: int(os.environ.get("PORT", "8000")), type=int, show_default="PORT or 8000"
)
@click.option("--web-workers", default=2, show_default=True)
@with_appcontext
def serve(host: str, port: int, web_workers: int) -> None:
    """Migrate, load the demo on first start, and run web and worker together."""
    upgrade(directory=current_app.extensions["migrate"].directory)
    if current_session().scalar(sa.select(sa.func.count()).select_from(User)) == 0:
        demo.load(
            current_session(),
            storage(),
            current_app.extensions["mercato.sealer"],
        )
        current_session().commit()
    db.session.remove()
    db.engine.dispose()

    env = dict(os.environ)
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        # web workers and the worker count into one place; /metrics adds them up. A fresh
        # start begins at zero (Prometheus's rate() reads a restart as one).
        metrics_dir = Path(current_app.config["MERCATO"].data_dir) / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    web = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "--bind", f"{host}:{port}",
            "--workers", str(web_workers),
            "--config", "python:cmw.webserver",
            "--access-logfile", "-",
            "--graceful-timeout", "5",
            "app:create_app()",
        ],
        env=env,
    )  # fmt: skip
    worker_proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "mercato", "worker"], env=env
    )
    children = [web, worker_proc]
    shown_host = f"[{host}]" if ":" in host else host
    click.echo("")
    click.echo(f"Mercato is running on http://{shown_host}:{port}/  (Ctrl-C stops it)")
    click.echo("Demo logins:")
    for login in demo.LOGINS:
        click.echo(f"  {login.role:<9} {login.email:<32} {login.password}")
    click.echo("")

    stopping = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    failed = [c for c in children if c.returncode not in (0, -signal.SIGTERM, None)]
    if failed and not stopping:
        raise SystemExit(1)
