"""The test harness: real PostgreSQL and RabbitMQ, a fresh database per run, and each
test inside a transaction that is rolled back at its end.

Server URLs come from ``MERCATO_TEST_DATABASE_URL`` (a URL of the server's maintenance
database; the run creates and drops its own database beside it) and
``MERCATO_TEST_BROKER_URL``. If either is unreachable the run stops at once and says
how to start them.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade
from kombu import Connection
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from app import create_app
from cmw import outbound
from cmw.accounts import service as accounts
from cmw.accounts.models import Organisation, OrganisationKind, Role, User
from cmw.catalog import cache as catalog_cache
from cmw.config import Config
from cmw.extensions import db
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from cmw.marketplaces.service import platform
from tests.catalog_data import publish

pytest_plugins = ["tests.servers", "tests.browser", "tests.oidc_server"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
HOW_TO_START = (
    "Start them with `docker compose -f docker/compose.test.yml up -d` (PostgreSQL on 5432, "
    "RabbitMQ on 5672), or point MERCATO_TEST_DATABASE_URL / MERCATO_TEST_BROKER_URL at yours."
)
PASSWORD = "correct-horse-battery"
#: reference rows created by migrations, kept when a committed test cleans up
SEEDED_TABLES = frozenset({"marketplaces", "categories", "catalog_state"})


def admin_database_url() -> str:
    return os.environ.get("MERCATO_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)


def broker_url() -> str:
    return os.environ.get("MERCATO_TEST_BROKER_URL", DEFAULT_BROKER_URL)


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True) if "://" in url else url


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, with instructions, when a server the suite needs is not there."""
    problems = []
    try:
        psycopg.connect(admin_database_url(), connect_timeout=3).close()
    except psycopg.Error as exc:
        problems.append(f"PostgreSQL at {_redact(admin_database_url())} is unreachable: {exc}".strip())
    try:
        with Connection(broker_url(), connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure means the same: not reachable
        problems.append(f"RabbitMQ at {_redact(broker_url())} is unreachable: {exc}")
    if problems:
        pytest.exit("\n".join([*problems, HOW_TO_START]), returncode=3)


# ------------------------------------------------------------------ database
@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database created for this run and dropped after it."""
    name = f"mercato_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = admin_database_url()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(admin).set(database=name, drivername="postgresql+psycopg")
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def config(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return Config(
        env="test",
        data_dir=tmp_path_factory.mktemp("var"),
        database_url=database_url,
        broker_url=broker_url(),
        secret_key="test-secret-key-of-enough-length",
        outbox_poll_seconds=0.05,
        # the suite's webhook, ticket and CRM receivers listen on 127.0.0.1
        allow_private_targets=True,
        # the suite signs in far more often than a person could; tests/test_security.py
        # sets its own limits
        rate_limit_sign_in="",
        rate_limit_tokens="",
        rate_limit_usage="",
    ).resolved()


@pytest.fixture(autouse=True)
def outbound_policy(config: Config) -> None:
    """The outbound rules of the suite's config for every test: a test that builds another
    app (with other settings) does not leave them to the next."""
    outbound.configure(
        allow_private=config.allow_private_targets, allow_link_local=config.allow_link_local_targets
    )


class BufferedClient(FlaskClient):
    """A test client whose requests end (contexts torn down, sessions closed) when the
    call returns, as in production, instead of when the response object is collected."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


@pytest.fixture(scope="session")
def app(config: Config) -> Iterator[Flask]:
    """The app, with the schema migrated to head once per run."""
    application = create_app(config)
    application.test_client_class = BufferedClient
    with application.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        db.session.remove()
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def db_session(app: Flask) -> Iterator[Session]:
    """The session of this test. Everything, the app's requests included, runs on one
    connection inside a transaction rolled back at the end; commits become savepoints.

    No app context stays pushed during the test, so each request of the test client
    gets its own context, ``g`` and session, as in production.
    """
    with app.app_context():
        engine = db.engine
    connection = engine.connect()
    outer = connection.begin()
    original = db.session
    factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    db.session = scoped_session(factory, scopefunc=original.registry.scopefunc)  # type: ignore[attr-defined]
    session = factory()
    try:
        yield session
    finally:
        session.close()
        db.session = original
        if outer.is_active:
            outer.rollback()
        connection.close()


@pytest.fixture
def committed_db(app: Flask) -> Iterator[sessionmaker[Session]]:
    """A session factory whose commits are real, for tests with other threads or
    processes; every table but the platform marketplace is emptied afterwards."""
    with app.app_context():
        engine = db.engine
    # No app context stays pushed: the test's requests get their own, and close them.
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    yield factory
    truncate(engine)


def truncate(engine: sa.Engine) -> None:
    """Empty every table but the reference rows migrations created (the platform
    marketplace, categories, the catalog state): they are kept aside, everything is
    truncated (a marketplace's logo is an image, which belongs to a marketplace: the
    cascade reaches every table), and they are put back."""
    with engine.begin() as conn:
        # A session a test left open would block this for ever: fail fast and say so.
        conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
        marketplaces = db.metadata.tables["marketplaces"]
        kept = {
            name: [dict(row) for row in conn.execute(sa.select(db.metadata.tables[name])).mappings()]
            for name in sorted(SEEDED_TABLES - {"marketplaces"})
        }
        platform_rows = [
            # a test's prices (mark-up, commission) and logo do not outlive it
            {**row, "logo_image_id": None, "commission_percent": 0, "default_markup_percent": None}
            for row in conn.execute(
                sa.select(marketplaces).where(marketplaces.c.kind == MarketplaceKind.PLATFORM.value)
            ).mappings()
        ]
        tables = [t.name for t in reversed(db.metadata.sorted_tables)]
        conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} CASCADE"))
        conn.execute(marketplaces.insert(), platform_rows)
        for name, rows in kept.items():
            if rows:
                conn.execute(db.metadata.tables[name].insert(), rows)


@pytest.fixture(autouse=True)
def _empty_catalog_cache() -> Iterator[None]:
    """Tests roll back, so catalog generations repeat between tests: start each one cold."""
    catalog_cache.clear()
    yield
    catalog_cache.clear()


@pytest.fixture
def client(app: Flask, db_session: Session) -> FlaskClient:
    return app.test_client()


# ----------------------------------------------------------------- factories
@pytest.fixture
def platform_marketplace(db_session: Session) -> Marketplace:
    return platform(db_session)


@pytest.fixture
def make_marketplace(db_session: Session, platform_marketplace: Marketplace) -> Callable[..., Marketplace]:
    def make(
        kind: MarketplaceKind = MarketplaceKind.DISTRIBUTOR, parent: Marketplace | None = None, **fields: Any
    ) -> Marketplace:
        slug = fields.pop("slug", f"mp-{secrets.token_hex(4)}")
        marketplace = Marketplace(
            kind=kind,
            parent_id=(parent or platform_marketplace).id,
            name=fields.pop("name", slug.title()),
            slug=slug,
            domain=fields.pop("domain", f"{slug}.test"),
            **fields,
        )
        db_session.add(marketplace)
        db_session.flush()
        return marketplace

    return make


@pytest.fixture
def make_organisation(db_session: Session, platform_marketplace: Marketplace) -> Callable[..., Organisation]:
    def make(
        kind: OrganisationKind = OrganisationKind.CUSTOMER,
        marketplace: Marketplace | None = None,
        **fields: Any,
    ) -> Organisation:
        name = fields.pop("name", f"Org {secrets.token_hex(3)}")
        return accounts.create_organisation(
            db_session,
            marketplace or platform_marketplace,
            kind=kind,
            name=name,
            billing=accounts.BillingDetails(
                legal_name=fields.pop("legal_name", f"{name} Ltd"),
                country=fields.pop("country", "IT"),
                **fields,
            ),
        )

    return make


@pytest.fixture
def make_user(
    db_session: Session, platform_marketplace: Marketplace, make_organisation: Callable[..., Organisation]
) -> Callable[..., User]:
    """make_user(role=Role.CUSTOMER, marketplace=None, organisation=None, email=None)."""
    kinds = {
        Role.CUSTOMER: OrganisationKind.CUSTOMER,
        Role.VENDOR: OrganisationKind.VENDOR,
        Role.RESELLER: OrganisationKind.PARTNER,
    }

    def make(
        role: Role | None = Role.CUSTOMER,
        marketplace: Marketplace | None = None,
        organisation: Organisation | None = None,
        email: str | None = None,
        password: str = PASSWORD,
    ) -> User:
        marketplace = marketplace or platform_marketplace
        user = accounts.create_user(
            db_session,
            email=email or f"user-{uuid.uuid4().hex[:10]}@example.test",
            name="Test User",
            password=password,
        )
        if role is not None:
            if role is not Role.ADMIN and organisation is None:
                organisation = make_organisation(kinds[role], marketplace)
            accounts.grant(
                db_session, user, marketplace, role, organisation if role is not Role.ADMIN else None
            )
        return user

    return make


@pytest.fixture
def token_for(db_session: Session, platform_marketplace: Marketplace) -> Callable[..., dict[str, str]]:
    """token_for(user, marketplace=None) -> Authorization header for a fresh API token."""

    def make(user: User, marketplace: Marketplace | None = None) -> dict[str, str]:
        _, plaintext = accounts.create_token(
            db_session, user, marketplace or platform_marketplace, name="test", expires_at=None
        )
        return {"Authorization": f"Bearer {plaintext}"}

    return make


@pytest.fixture
def shop(
    client: FlaskClient, make_user: Callable[..., User], token_for: Callable[..., dict[str, str]]
) -> dict[str, Any]:
    """A published product (tests.catalog_data's wiki server), its vendor and an admin."""
    vendor, admin = make_user(Role.VENDOR), make_user(Role.ADMIN)
    product = publish(client, token_for(vendor), token_for(admin))
    return {"product": product, "vendor": vendor, "admin": admin}
