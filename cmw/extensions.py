"""Unbound Flask extension objects, bound to an app in ``create_app``."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import current_app
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import Session

from cmw.config import Config
from cmw.db import Base

log = logging.getLogger(__name__)

db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()


def close_session(_exc: BaseException | None = None) -> None:
    """``teardown_appcontext``, before Flask-SQLAlchemy's own: end the request's session.
    A connection the server has cut (a restart, ``pg_terminate_backend``) makes the final
    rollback fail: that connection is already invalidated by SQLAlchemy and the request
    already has its answer, so the failure is logged and the session dropped, instead of
    turning the end of the request into an error."""
    try:
        db.session.remove()
    except sa.exc.DBAPIError as exc:
        log.warning("the database connection was lost as the request ended: %s", exc.orig)
        db.session.registry.clear()


def current_session() -> Session:
    """The request's (or command's) SQLAlchemy session, typed as a plain Session."""
    session: Session = db.session()
    return session


def current_config() -> Config:
    """The app's settings, typed."""
    config: Config = current_app.config["MERCATO"]
    return config


def read_in_autocommit(session: Session) -> None:
    """Run a read-only request's statements without a transaction (PostgreSQL).

    Under READ COMMITTED, the default, each statement already sees its own snapshot, so
    for a request that only reads nothing changes but the cost: no ``BEGIN`` and no
    ``ROLLBACK`` round trip. Call it before the first statement; a session bound to a
    connection (the tests' rolled-back transaction) is left as it is.
    """
    bind = session.get_bind()
    if isinstance(bind, sa.Engine) and bind.dialect.name == "postgresql" and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
