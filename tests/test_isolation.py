"""Isolation between sibling marketplaces (issue 10), walked from the OpenAPI document so
every new endpoint is covered without touching this test.

Marketplace A holds one of everything (a product with a screenshot, an order and its
subscription, a review, an API token, a membership, a notification, a deployment, an
invoice and a credit note, a tax rate, a cloud account). People of its sibling B (an
admin, a vendor and a customer) call every operation that names an object in its path
with A's objects: never a success, the same answer as for an object that does not exist
(so nothing tells them A's objects exist), and a 404 for every read and delete. The
operations that list things never show them A's objects either.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import uuid
import zipfile
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts import service as accounts
from cmw.accounts.models import Membership, Role, User
from cmw.billing.models import CreditNote, Invoice, InvoiceStatus, TaxRate
from cmw.marketplaces.models import Marketplace
from cmw.notifications.models import Notification
from deployer.models import CloudAccount, Deployment, DeploymentState
from tests.catalog_data import publish
from tests.helpers import on_host
from tests.test_catalog_assets import png_logo

A_HOST, B_HOST = "a-side.test", "b-side.test"
#: each path parameter of the document, and the object of A it is called with
PARAMETERS = {
    "token_id": "token",
    "user_id": "user",
    "membership_id": "membership",
    "organisation_id": "organisation",
    "product": "product",
    "ref": "product",
    "product_id": "product",
    "image_id": "image",
    "review_id": "review",
    "order_id": "order",
    "subscription_id": "subscription",
    "notification_id": "notification",
    "account_id": "cloud_account",
    "deployment_id": "deployment",
    "invoice_id": "invoice",
    "note_id": "credit_note",
    "rate_id": "tax_rate",
    "endpoint_id": "webhook_endpoint",
    "delivery_id": "webhook_delivery",
    "ticket_id": "ticket",
    "attachment_id": "ticket_attachment",
}


@pytest.fixture
def sides(
    client: FlaskClient,
    db_session: Session,
    make_user: Callable[..., User],
    make_marketplace: Callable[..., Marketplace],
) -> dict[str, Any]:
    a = make_marketplace(domain=A_HOST, slug="a-side")
    b = make_marketplace(domain=B_HOST, slug="b-side")

    def token(user: User, marketplace: Marketplace) -> tuple[uuid.UUID, dict[str, str]]:
        made, plaintext = accounts.create_token(db_session, user, marketplace, name="t", expires_at=None)
        return made.id, {"Authorization": f"Bearer {plaintext}"}

    people = {
        side: {role: make_user(role, marketplace=m) for role in (Role.ADMIN, Role.VENDOR, Role.CUSTOMER)}
        for side, m in (("a", a), ("b", b))
    }
    headers = {
        side: {role: token(user, a if side == "a" else b)[1] for role, user in roles.items()}
        for side, roles in people.items()
    }
    # A's other vendor and customer: the same marketplace, another tenant
    others = {role: make_user(role, marketplace=a) for role in (Role.VENDOR, Role.CUSTOMER)}
    customer = people["a"][Role.CUSTOMER]
    token_id, _ = token(customer, a)
    membership = db_session.query(Membership).filter_by(user_id=customer.id, marketplace_id=a.id).one()

    on_host(client, A_HOST)
    product = publish(client, headers["a"][Role.VENDOR], headers["a"][Role.ADMIN], slug="a-app")
    shot = client.post(
        f"/api/v1/vendor/products/{product['id']}/screenshots",
        data={"file": (io.BytesIO(png_logo()), "shot.png")},
        headers=headers["a"][Role.VENDOR],
    )
    assert shot.status_code in (200, 201), shot.get_json()
    image_id = shot.get_json()["working_version"]["screenshots"][-1]["id"]
    order = client.post(
        "/api/v1/orders",
        json={"product": "a-app", "plan": "team", "quantity": 5},
        headers={**headers["a"][Role.CUSTOMER], "Idempotency-Key": "a-1"},
    )
    assert order.status_code == 201, order.get_json()
    review = client.put(
        "/api/v1/products/a-app/reviews/mine",
        json={"rating": 4, "comment": "Good"},
        headers=headers["a"][Role.CUSTOMER],
    )
    assert review.status_code in (200, 201), review.get_json()
    endpoint = client.post(
        "/api/v1/vendor/webhooks",
        json={"url": "https://127.0.0.1:9/hooks"},
        headers=headers["a"][Role.VENDOR],
    ).get_json()
    delivery = client.post(
        f"/api/v1/vendor/webhooks/{endpoint['id']}/test", headers=headers["a"][Role.VENDOR]
    )
    ticket = client.post(
        "/api/v1/support/tickets",
        data={"subject": "Help", "body": "Please", "files": [(io.BytesIO(b"log line\n"), "a.log")]},
        headers=headers["a"][Role.CUSTOMER],
        content_type="multipart/form-data",
    ).get_json()
    on_host(client, None)

    now = dt.datetime.now(dt.UTC)
    order_body = order.get_json()
    rows: dict[str, Any] = {
        "notification": Notification(
            user_id=customer.id,
            marketplace_id=a.id,
            event_id="e-1",
            kind="order.placed",
            title="Hi",
            body="Hi",
        ),
        # cloud accounts are the platform's (an admin of a child marketplace sees none)
        "cloud_account": CloudAccount(
            slug="a-cloud", name="A's cloud", provider="ec2", credentials_sealed="x"
        ),
        "deployment": Deployment(
            subscription_id=uuid.UUID(order_body["subscription_id"]),
            marketplace_id=a.id,
            customer_id=uuid.UUID(order_body["customer_id"]),
            product_id=uuid.UUID(product["id"]),
            vendor_id=uuid.UUID(product["vendor_id"]),
            product_type="vm_app",
            state=DeploymentState.REQUESTED,
        ),
        "invoice": Invoice(
            marketplace_id=a.id,
            customer_id=uuid.UUID(order_body["customer_id"]),
            currency="EUR",
            status=InvoiceStatus.ISSUED,
            number=f"A-{uuid.uuid4().hex[:8]}",
            issued_at=now,
        ),
        "tax_rate": TaxRate(marketplace_id=a.id, seller_country="IT", buyer_country="IT", rate=Decimal(22)),
    }
    for row in rows.values():
        db_session.add(row)
    db_session.flush()
    note = CreditNote(
        invoice_id=rows["invoice"].id,
        marketplace_id=a.id,
        customer_id=rows["invoice"].customer_id,
        currency="EUR",
        series="A-CN",
        year=now.year,
        sequence=1,
        number=f"A-CN-{uuid.uuid4().hex[:8]}",
        issued_at=now,
        reason="test",
        subtotal=Decimal(10),
        tax_total=Decimal(0),
        total=Decimal(10),
    )
    db_session.add(note)
    db_session.flush()
    objects = {
        "token": token_id,
        "user": customer.id,
        "membership": membership.id,
        "organisation": uuid.UUID(order_body["customer_id"]),
        "product": product["id"],
        "image": image_id,
        "review": review.get_json()["id"],
        "order": order_body["id"],
        "subscription": order_body["subscription_id"],
        "credit_note": note.id,
        "webhook_endpoint": endpoint["id"],
        "webhook_delivery": delivery.get_json()["id"],
        "ticket": ticket["id"],
        "ticket_attachment": ticket["messages"][0]["attachments"][0]["id"],
        **{name: row.id for name, row in rows.items()},
    }
    return {
        "objects": {k: str(v) for k, v in objects.items()},
        "a": headers["a"],
        "b": headers["b"],
        "a_others": {role: token(user, a)[1] for role, user in others.items()},
    }


def operations(client: FlaskClient) -> list[tuple[str, str]]:
    document = client.get("/api/v1/openapi.json").get_json()
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


def call(client: FlaskClient, method: str, url: str, headers: dict[str, str]) -> Any:
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return client.open(url, method=method, json=body, headers=headers, base_url=f"http://{B_HOST}")


def test_a_sibling_gets_404_for_the_others_objects(client: FlaskClient, sides: dict[str, Any]) -> None:
    objects = sides["objects"]
    walked = []
    for method, path in operations(client):
        names = re.findall(r"{(\w+)}", path)
        if not names:
            continue
        unmapped = [n for n in names if n not in PARAMETERS]
        assert not unmapped, f"{path}: map {unmapped} to an object of marketplace A in PARAMETERS"
        missing = [PARAMETERS[n] for n in names if PARAMETERS[n] not in objects]
        assert not missing, f"{path}: the fixture makes no {missing} in marketplace A"
        theirs = path
        nowhere = path
        for name in names:
            theirs = theirs.replace(f"{{{name}}}", objects[PARAMETERS[name]])
            nowhere = nowhere.replace(f"{{{name}}}", str(uuid.uuid4()))
        answers = {}
        for role, headers in sides["b"].items():
            answer = call(client, method, theirs, headers)
            control = call(client, method, nowhere, headers)
            assert answer.status_code < 500, (method, theirs, role, answer.get_data(as_text=True))
            assert not 200 <= answer.status_code < 300, (method, theirs, role, answer.get_json())
            assert answer.status_code == control.status_code, (
                f"{method} {path} as B's {role.value}: {answer.status_code} for A's object, "
                f"{control.status_code} for none: it tells A's objects exist"
            )
            answers[role] = answer.status_code
        if method in ("GET", "DELETE"):
            assert 404 in answers.values(), (method, path, answers)
        walked.append((method, path))
    assert len(walked) >= 40  # the walk reached the document's operations


def test_a_siblings_lists_show_none_of_the_others_objects(client: FlaskClient, sides: dict[str, Any]) -> None:
    ids = set(sides["objects"].values())
    for method, path in operations(client):
        if method != "GET" or "{" in path or path.endswith("openapi.json"):
            continue
        for role, headers in sides["b"].items():
            answer = client.get(path, headers=headers, base_url=f"http://{B_HOST}")
            assert answer.status_code < 500, (path, role, answer.get_data(as_text=True))
            if answer.mimetype == "application/zip":  # the personal data export: every file in it
                with zipfile.ZipFile(io.BytesIO(answer.get_data())) as archive:
                    text = "".join(archive.read(name).decode() for name in archive.namelist())
            else:
                text = answer.get_data(as_text=True)
            leaked = sorted(i for i in ids if i in text)
            assert not leaked, f"GET {path} as B's {role.value} shows A's {leaked}"
