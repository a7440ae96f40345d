"""``/healthz``: is the database reachable and the broker accepting connections."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from kombu import Connection

from cmw.config import Config
from cmw.events.relay import lag_seconds
from cmw.extensions import current_session

bp = Blueprint("health", __name__)

# A broker check opens a connection; cache a success briefly so a load balancer polling
# every second does not open a connection per poll.
_BROKER_OK_FOR = 5.0
_broker_ok_until = 0.0


def check_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        current_session().execute(sa.text("SELECT 1"))
        outbox_lag = lag_seconds(current_session())
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        current_session().rollback()
        return {"ok": False, "error": type(exc).__name__}
    return {
        "ok": True,
        "ms": round((time.perf_counter() - started) * 1000, 1),
        "outbox_lag_seconds": round(outbox_lag, 1),
    }


def check_broker(config: Config) -> dict[str, Any]:
    global _broker_ok_until
    now = time.monotonic()
    if now < _broker_ok_until:
        return {"ok": True, "cached": True}
    started = time.perf_counter()
    try:
        with Connection(
            config.broker_url, transport_options=config.broker_transport_options, connect_timeout=2
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "error": type(exc).__name__}
    _broker_ok_until = now + _BROKER_OK_FOR
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    config: Config = current_app.config["MERCATO"]
    checks = {"database": check_database(), "broker": check_broker(config)}
    healthy = all(c["ok"] for c in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", checks=checks), 200 if healthy else 503
