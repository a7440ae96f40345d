"""The instance page: charts of a running instance's CPU, memory, disk and network, and
the search of its collected log lines; for its customer, its vendor and the admins."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from flask import abort, render_template, request, url_for
from flask.typing import ResponseReturnValue

from cmw.accounts.auth import current_identity
from cmw.accounts.models import Role
from cmw.catalog.service import product_name
from cmw.db import utcnow
from cmw.extensions import current_session
from deployer import telemetry
from deployer.models import Deployment
from marketplace.views import bp, paged, sign_in_first

WIDTH, HEIGHT = 600, 120
#: the charts: (title, field of a point, unit)
CHARTS = (
    ("CPU", "cpu_percent", "%"),
    ("Memory used", "memory_percent", "%"),
    ("Disk used", "disk_percent", "%"),
    ("Network in", "received_per_second", "B/s"),
    ("Network out", "sent_per_second", "B/s"),
)
RANGES = {"1": 1, "6": 6, "24": 24, "168": 168}


def chart(
    points: list[dict[str, Any]], field: str, unit: str, start: dt.datetime, end: dt.datetime
) -> dict[str, Any]:
    """An SVG polyline of the field over [start, end], scaled to 100 % or to its top value."""
    known = [(p["at"], p[field]) for p in points if p[field] is not None]
    top = 100.0 if unit == "%" else max([v for _, v in known] + [1.0])
    span = max((end - start).total_seconds(), 1)
    line = " ".join(
        f"{WIDTH * (at - start).total_seconds() / span:.1f},{HEIGHT - HEIGHT * min(value, top) / top:.1f}"
        for at, value in known
    )
    return {"line": line, "last": known[-1][1] if known else None, "top": top, "count": len(known)}


@bp.get("/account/instances/<uuid:deployment_id>")
def instance(deployment_id: uuid.UUID) -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    deployment = session.get(Deployment, deployment_id)
    if (
        deployment is None
        or deployment.marketplace_id != identity.marketplace.id
        or not (
            identity.is_admin
            or deployment.customer_id in identity.organisations_with(Role.CUSTOMER)
            or deployment.vendor_id in identity.organisations_with(Role.VENDOR)
        )
    ):
        abort(404)
    hours = RANGES.get(request.args.get("hours", "24"), 24)
    end = utcnow()
    start = end - dt.timedelta(hours=hours)
    points = telemetry.series(session, deployment.id, start)
    q = (request.args.get("q") or "").strip()[:200] or None
    path = request.args.get("path") or None
    lines = paged(telemetry.search_logs(deployment.id, q=q, path=path))
    return render_template(
        "instance.html",
        deployment=deployment,
        product=product_name(session, deployment.product_id),
        health=session.get(telemetry.InstanceHealth, deployment.id),
        charts=[(title, unit, chart(points, field, unit, start, end)) for title, field, unit in CHARTS],
        hours=hours,
        ranges=RANGES,
        width=WIDTH,
        height=HEIGHT,
        q=q,
        path=path,
        files=(deployment.spec or {}).get("log_files") or [],
        lines=lines,
        page_link=lambda n: url_for(
            "pages.instance", deployment_id=deployment.id, hours=hours, q=q, path=path, page=n
        ),
    )
