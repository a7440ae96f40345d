"""The audit log (issue 11): a sample of admin, vendor and customer actions and of changes
to money and machines leaves entries, admins search them, and nothing changes them: no
endpoint, and not even SQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Role, User
from cmw.audit.models import AuditEntry
from cmw.marketplaces.models import Marketplace
from cmw.marketplaces.service import platform
from tests import catalog_data
from tests.helpers import on_host
from tests.test_orders import order
from tests.test_pages_storefront import _signed_in
from tests.test_pricing import FLAT, _plan

Headers = Callable[..., dict[str, str]]


def entries(client: FlaskClient, headers: dict[str, str], **query: str) -> list[dict[str, Any]]:
    answer = client.get("/api/v1/admin/audit", query_string={**query, "per_page": 100}, headers=headers)
    assert answer.status_code == 200, answer.json
    items: list[dict[str, Any]] = answer.json["items"]
    return items


def test_actions_and_changes_to_money_and_machines_are_audited(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
) -> None:
    admin_h = token_for(shop["admin"])
    vendor, admin = shop["vendor"], shop["admin"]
    # the vendor's product was created, submitted and approved by the shop fixture
    by_vendor = entries(client, admin_h, actor=vendor.email)
    assert {e["action"] for e in by_vendor} >= {
        "POST /api/v1/vendor/products",
        "POST /api/v1/vendor/products/<uuid:product_id>/submit",
    }
    approved = entries(client, admin_h, action="/approve")
    assert len(approved) == 1 and approved[0]["actor"] == admin.email
    assert approved[0]["object_type"] == "product" and approved[0]["object_id"] == shop["product"]["id"]

    # an admin's change, with who, where from and when
    renamed = client.patch("/api/v1/marketplace", json={"name": "Audited Shop"}, headers=admin_h)
    assert renamed.status_code == 200
    branding = entries(client, admin_h, action="PATCH /api/v1/marketplace")
    assert len(branding) == 1 and branding[0]["actor"] == admin.email and branding[0]["ip"] == "127.0.0.1"

    # a customer's order: the request, and the money and machine events it caused
    customer = make_user(Role.CUSTOMER)
    placed = order(client, {**token_for(customer), "Idempotency-Key": "audited-1"})
    assert placed.status_code == 201
    order_id = placed.json["id"]
    about_it = entries(client, admin_h, object_id=order_id)
    assert [(e["action"], e["actor"]) for e in about_it] == [("order.placed", customer.email)]
    assert about_it[0]["object_type"] == "order"
    mine = {e["action"] for e in entries(client, admin_h, actor=customer.email)}
    assert mine >= {"POST /api/v1/orders", "order.placed", "subscription.activated", "deployment.requested"}
    # failed attempts change nothing and are not entries
    refused = client.patch("/api/v1/marketplace", json={"primary_colour": "#ffffff"}, headers=admin_h)
    assert refused.status_code == 422
    assert len(entries(client, admin_h, action="PATCH /api/v1/marketplace")) == 1
    # searching is for admins
    assert client.get("/api/v1/admin/audit", headers=token_for(customer)).status_code == 403
    assert client.get("/api/v1/admin/audit", headers=token_for(vendor)).status_code == 403


def test_nothing_changes_an_entry(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    make_user: Callable[..., User],
    token_for: Headers,
    make_marketplace: Callable[..., Marketplace],
) -> None:
    admin = make_user(Role.ADMIN)
    admin_h = token_for(admin)
    assert (
        client.patch("/api/v1/marketplace", json={"description": "audited"}, headers=admin_h).status_code
        == 200
    )
    entry = entries(client, admin_h)[0]

    # the API offers reading only, whatever the document grows to
    spec = client.get("/api/v1/openapi.json").json
    audit_paths = {path: ops for path, ops in spec["paths"].items() if "audit" in path}
    assert audit_paths and all(set(ops) <= {"get", "parameters"} for ops in audit_paths.values())
    for method in ("post", "put", "patch", "delete"):
        for url in ("/api/v1/admin/audit", f"/api/v1/admin/audit/{entry['id']}"):
            answer = getattr(client, method)(url, json={"actor": "someone else"}, headers=admin_h)
            assert answer.status_code in (404, 405), (method, url, answer.status_code)

    # and the database refuses too
    for statement in (
        sa.update(AuditEntry).where(AuditEntry.id == entry["id"]).values(actor="someone else"),
        sa.delete(AuditEntry).where(AuditEntry.id == entry["id"]),
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), db_session.begin_nested():
            db_session.execute(statement)
    assert entries(client, admin_h)[0] == entry

    # the page shows them to admins; a sibling marketplace's admin sees none of them
    browser = app.test_client()
    _signed_in(browser, make_user(Role.ADMIN, password="a-long-password-1"))
    page = browser.get("/admin/audit?action=PATCH").get_data(as_text=True)
    assert f'id="audit-{entry["id"]}"' in page and admin.email in page
    sibling = make_marketplace(domain="sibling.test")
    on_host(client, "sibling.test")
    theirs = entries(client, token_for(make_user(Role.ADMIN, marketplace=sibling), marketplace=sibling))
    assert all(e["marketplace_id"] == str(sibling.id) for e in theirs) and entry["id"] not in {
        e["id"] for e in theirs
    }


def test_the_request_entry_commits_with_the_change_it_asked_for(
    app: Flask, committed_db: sessionmaker[Session]
) -> None:
    """One transaction writes an order and the entry for the request that placed it (no
    entry can be lost after the change, nor written for a change rolled back); a replay
    commits nothing and has its own entry; a reused key with another body writes none."""
    with committed_db() as session:
        catalog_data.publish_product(session, "audited", [_plan(FLAT)])
        buyer, _ = catalog_data.add_customer(session, "audited-buyer@example.test")
        _, token = accounts.create_token(session, buyer, platform(session), name="t", expires_at=None)
        session.commit()
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "audited-once"}
    body = {"product": "audited", "plan": "basic"}
    placed = client.post("/api/v1/orders", json=body, headers=headers)
    assert placed.status_code == 201, placed.json
    again = client.post("/api/v1/orders", json=body, headers=headers)
    assert again.json["id"] == placed.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    reused = client.post("/api/v1/orders", json={**body, "quantity": 2}, headers=headers)
    assert reused.status_code == 409, reused.json

    with committed_db() as session:
        order_xmin = session.scalar(
            sa.text("SELECT xmin::text FROM orders WHERE id = :id"), {"id": placed.json["id"]}
        )
        requested = session.execute(
            sa.text(
                "SELECT xmin::text, actor, detail FROM audit_log"
                " WHERE action = 'POST /api/v1/orders' ORDER BY id"
            )
        ).all()
    assert len(requested) == 2, requested
    (first_xmin, actor, first), (replay_xmin, _, replayed) = requested
    assert first_xmin == order_xmin and actor == "audited-buyer@example.test"
    assert first == {"endpoint": "orders.Orders"}
    assert replay_xmin != order_xmin and replayed == {"endpoint": "orders.Orders", "status": 201}
