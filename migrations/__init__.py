"""Alembic migrations (Flask-Migrate); a package so they ship with the wheel."""
