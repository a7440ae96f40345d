"""Unbound Flask extension objects, bound to an app in ``create_app``."""

from __future__ import annotations

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import Session

from cmw.db import Base

db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()


def current_session() -> Session:
    """The request's (or command's) SQLAlchemy session, typed as a plain Session."""
    session: Session = db.session()
    return session
