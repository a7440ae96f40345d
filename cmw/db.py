"""The declarative base, column types shared by every feature, and engine tuning.

Constraint names follow one naming convention so Alembic migrations can drop and alter
them by name on PostgreSQL and SQLite alike. Timestamps are stored in UTC and always come
back timezone-aware, whatever the database.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import select
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC; naive values are refused, loaded values are aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; pass an aware datetime")
        value = value.astimezone(dt.UTC)
        # SQLite keeps no offset; store the UTC wall-clock time.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def str_enum(enum_cls: type[enum.StrEnum], name: str) -> sa.Enum:
    """A column type storing a StrEnum's readable values, with a CHECK constraint."""
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=max(len(m.value) for m in enum_cls),
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    """Base class of every mapped class."""

    # One explicit registry: Flask-SQLAlchemy subclasses this base, and SQLAlchemy 2.1
    # accepts a type_annotation_map only on the registry in that case.
    registry = registry(
        metadata=sa.MetaData(naming_convention=NAMING_CONVENTION),
        type_annotation_map={
            dt.datetime: UTCDateTime(),
            uuid.UUID: sa.Uuid(),
            dict[str, Any]: sa.JSON().with_variant(JSONB(), "postgresql"),
        },
    )


class UUIDPrimaryKey:
    """A random UUID primary key, so ids in URLs reveal nothing about volumes."""

    #: random UUID (version 4)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class Timestamps:
    """Creation and last-update times, in UTC."""

    #: when the row was created (UTC)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: when the row last changed (UTC)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def configure_sqlite(engine: sa.Engine) -> None:
    """WAL and a busy timeout so the web and worker processes share one SQLite file."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


#: a pooled PostgreSQL connection idle longer than this is pinged before it is handed out
IDLE_PING_AFTER = 30.0


def check_liveness_on_checkout(engine: sa.Engine, idle_ping_after: float = IDLE_PING_AFTER) -> None:
    """Hand out only live PostgreSQL connections, without a round trip on the busy path.

    ``pool_pre_ping`` costs a ``SELECT 1`` round trip on every checkout: as much as the
    query most requests make. Instead, a connection whose server ended it (restart,
    ``pg_terminate_backend``, idle timeout) is noticed for free: the server sends its
    reason and closes, so the idle socket turns readable. A connection that has sat in the
    pool longer than ``idle_ping_after`` seconds, where a silent drop is possible, is still
    pinged. Raising ``DisconnectionError`` makes the pool retry with a new connection.
    """

    @sa.event.listens_for(engine, "connect")
    def _on_connect(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if dbapi_conn.closed or dbapi_conn.broken:
            raise sa.exc.DisconnectionError("the connection is closed")
        try:
            readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
        except (OSError, ValueError) as exc:
            raise sa.exc.DisconnectionError(f"the connection's socket is unusable: {exc}") from exc
        if readable:  # nothing is in flight: the server has hung up on us
            raise sa.exc.DisconnectionError("the server closed the connection")
        if time.monotonic() - record.info.get("idle_since", 0.0) > idle_ping_after:
            try:
                dbapi_conn.execute("SELECT 1")
                if not dbapi_conn.autocommit:
                    dbapi_conn.rollback()
            except Exception as exc:
                raise sa.exc.DisconnectionError(f"ping failed: {exc}") from exc


#: PostgreSQL-only schema made by hand in migrations, which the models cannot declare
#: portably (a generated tsvector column and its index); autogenerate leaves them alone
HAND_MADE = frozenset({("index", "ix_product_versions_search"), ("column", "search_vector")})


#: the monthly partitions of a partitioned table (``usage_records_y2026m11``), made at run
#: time: the models declare the parent only
PARTITION = re.compile(r"^usage_records_y\d{4}m\d{2}(_.*)?$")


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic's filter for autogenerate and comparisons."""
    if type_ == "table" and name and PARTITION.match(name):
        return False
    if type_ == "index" and reflected:
        table = getattr(obj, "table", None)
        if table is not None and PARTITION.match(str(table.name)):
            return False
    return (type_, name) not in HAND_MADE
