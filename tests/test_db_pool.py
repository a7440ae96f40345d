"""Pooled PostgreSQL connections: one the server has ended is replaced before use, with no
ping on the busy path; read-only requests run without a transaction."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask

from cmw.db import check_liveness_on_checkout
from cmw.extensions import db
from tests.helpers import wait_until


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A one-connection pool with the liveness check, nothing else."""
    made = sa.create_engine(database_url, pool_size=1, max_overflow=0)
    check_liveness_on_checkout(made)
    yield made
    made.dispose()


def backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def terminate(database_url: str, pid: int) -> None:
    url = sa.engine.make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        wait_until(
            lambda: (
                admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                == (0,)
            ),
            message=f"backend {pid} to end",
        )


def test_a_connection_the_server_ended_is_replaced(engine: sa.Engine, database_url: str) -> None:
    first = backend_pid(engine)
    assert backend_pid(engine) == first  # the pool hands back the same connection
    terminate(database_url, first)
    # without the check, this checkout would hand out the dead connection and fail
    second = backend_pid(engine)
    assert second != first
    assert backend_pid(engine) == second


def test_an_idle_connection_is_pinged_and_kept_when_alive(database_url: str) -> None:
    made = sa.create_engine(database_url, pool_size=1, max_overflow=0)
    check_liveness_on_checkout(made, idle_ping_after=0.0)
    pings: list[str] = []
    try:
        first = backend_pid(made)
        sa.event.listen(
            made, "checkout", lambda dbapi, _rec, _proxy: pings.append(dbapi.info.transaction_status.name)
        )
        with made.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() == first
        # handed out after the ping, which left no transaction open behind it
        assert pings == ["IDLE"]
    finally:
        made.dispose()


def test_read_only_requests_run_in_autocommit(app: Flask) -> None:
    """A GET's statements run with no transaction around them; a write's inside one."""
    with app.app_context():
        engine = db.engine
    sent: list[tuple[str, bool]] = []

    def record(_conn: object, cursor: psycopg.Cursor[object], statement: str, *_args: object) -> None:
        sent.append((statement.split()[0], cursor.connection.autocommit))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        client = app.test_client()
        response = client.get("/api/v1/categories")
        assert response.status_code == 200 and response.get_json()
        assert sent and all(autocommit for _s, autocommit in sent), sent
        sent.clear()
        refused = client.post("/api/v1/session", json={"email": "nobody@example.test", "password": "x" * 12})
        assert refused.status_code == 401, refused.get_data(as_text=True)
        assert sent and not any(autocommit for _s, autocommit in sent), sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
