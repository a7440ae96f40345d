"""Migrations: from empty to head and back on PostgreSQL, and the models agree with head."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from app import create_app
from cmw import demo
from cmw.config import Config
from cmw.db import include_object
from cmw.extensions import db
from tests.conftest import admin_database_url, broker_url

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = str(ROOT / "migrations")


@pytest.fixture
def scratch_url() -> Iterator[str]:
    name = f"mercato_migrations_{secrets.token_hex(4)}"
    with psycopg.connect(admin_database_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield sa.engine.make_url(admin_database_url()).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_database_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_downgrade_upgrade_and_models_match_head(scratch_url: str, tmp_path: Path) -> None:
    app = create_app(Config(env="test", data_dir=tmp_path, database_url=scratch_url, broker_url=broker_url()))
    with app.app_context():
        engine = db.engine
        assert _tables(engine) == set()

        upgrade(directory=MIGRATIONS)
        expected = {t.name for t in db.metadata.sorted_tables}
        assert expected <= _tables(engine)
        with engine.connect() as conn:
            kinds = conn.execute(sa.text("SELECT kind, slug FROM marketplaces")).all()
        assert kinds == [("platform", "platform")], "the first migration creates the platform marketplace"

        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(
                    conn, opts={"compare_type": True, "include_object": include_object}
                ),
                db.metadata,
            )
        assert diff == [], f"models and migrations disagree: {diff}"

        downgrade(directory=MIGRATIONS, revision="base")
        assert _tables(engine) == {"alembic_version"}

        upgrade(directory=MIGRATIONS)
        assert expected <= _tables(engine)
        db.session.remove()
        engine.dispose()


def test_migrations_run_on_the_embedded_sqlite_default(tmp_path: Path) -> None:
    app = create_app(Config(env="test", data_dir=tmp_path))
    with app.app_context():
        upgrade(directory=MIGRATIONS)
        engine = db.engine
        assert {t.name for t in db.metadata.sorted_tables} <= _tables(engine)
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(
                    conn, opts={"compare_type": True, "include_object": include_object}
                ),
                db.metadata,
            )
        assert diff == []
        # With rows in every table: batch migrations rebuild tables that others reference.
        demo.load(db.session(), app.extensions["mercato.storage"])
        db.session.commit()
        downgrade(directory=MIGRATIONS, revision="base")
        assert _tables(engine) == {"alembic_version"}
        upgrade(directory=MIGRATIONS)
        assert {t.name for t in db.metadata.sorted_tables} <= _tables(engine)
