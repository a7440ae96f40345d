"""A person's data: the export holds what is theirs and nothing else (and no secrets);
erasure waits until nothing runs for them, then anonymises what names them, keeps what
the law requires, records that it happened and signs them out everywhere."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts import keys
from cmw.accounts.models import Erasure, Organisation, Role, User
from cmw.events.models import OutboxEvent
from cmw.orders import subscriptions
from cmw.orders.models import Order, Subscription
from tests.test_orders import order
from tests.test_pages_storefront import _csrf, _signed_in

Headers = Callable[..., dict[str, str]]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh3m0a0p9sMZ8pWlq1pQ3sYbH0bWw3zq1K3VqQ2Yb1d laptop"


def _archive(body: bytes) -> dict[str, Any]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {
            name.removesuffix(".json"): json.loads(archive.read(name)) if name.endswith(".json") else None
            for name in archive.namelist()
        }


def test_the_export_holds_the_person_s_data_and_nothing_else(
    client: FlaskClient,
    db_session: Session,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
) -> None:
    customer, other = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    headers = token_for(customer)
    mine = order(client, headers, quantity=5).get_json()
    theirs = order(client, token_for(other), quantity=5).get_json()
    keys.add_key(db_session, customer, "laptop", KEY)
    db_session.commit()

    response = client.get("/api/v1/me/export", headers=headers)
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert "attachment" in response.headers["Content-Disposition"]
    assert response.headers["Cache-Control"] == "no-store"
    data = _archive(response.get_data())
    assert "README" in "".join(data) and data["profile"]["email"] == customer.email
    assert [o["id"] for o in data["orders"]] == [mine["id"]]
    assert [s["id"] for s in data["subscriptions"]] == [mine["subscription_id"]]
    assert [k["public_key"] for k in data["ssh_keys"]] == [KEY]
    assert {m["role"] for m in data["memberships"]} == {"customer"}
    # no one else's data, no secrets
    raw = response.get_data()
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        text = "".join(archive.read(n).decode() for n in archive.namelist())
    assert theirs["id"] not in text and other.email not in text
    assert "password_hash" not in text and "$argon2" not in text and "token_hash" not in text
    assert client.get("/api/v1/me/export").status_code == 401


def test_erasure_waits_for_the_subscriptions_then_anonymises_and_keeps_the_invoices_basis(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    make_user: Callable[..., User],
    token_for: Headers,
    shop: dict[str, Any],
) -> None:
    customer = make_user(Role.CUSTOMER, password="a-long-password-1")
    email = customer.email
    headers = token_for(customer)
    placed = order(client, headers, quantity=5).get_json()
    keys.add_key(db_session, customer, "laptop", KEY)
    db_session.commit()

    # a live subscription: 422 with the reason, nothing changed
    refused = client.post("/api/v1/me/erasure", json={"confirm_email": email}, headers=headers)
    assert refused.status_code == 422 and "cancel them first" in refused.get_json()["detail"]
    db_session.expire_all()
    assert db_session.get(User, customer.id).email == email  # type: ignore[union-attr]
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Erasure)) == 0

    subscription = db_session.get(Subscription, placed["subscription_id"])
    assert subscription is not None
    subscriptions.cancel(db_session, subscription, None, at_once=True)
    db_session.commit()
    wrong = client.post("/api/v1/me/erasure", json={"confirm_email": "someone@else.test"}, headers=headers)
    assert wrong.status_code == 422 and wrong.get_json()["errors"][0]["field"] == "confirm_email"

    done = client.post("/api/v1/me/erasure", json={"confirm_email": email.upper()}, headers=headers)
    assert done.status_code == 200, done.get_data(as_text=True)
    summary = done.get_json()["summary"]
    assert summary["memberships_removed"] == 1 and summary["organisations_anonymised"] == 1
    assert "invoices" in summary["kept"]

    db_session.expire_all()
    user = db_session.get(User, customer.id)
    assert user is not None and user.erased_at is not None and not user.is_active
    assert (
        user.email.endswith("@erased.invalid") and user.name == "Erased user" and user.password_hash is None
    )
    assert keys.keys_of(db_session, user.id) == []
    # the order (an invoice's basis) stays, naming the anonymised row; the company is anonymised
    kept = db_session.get(Order, placed["id"])
    assert kept is not None and kept.placed_by_id == user.id
    organisation = db_session.get(Organisation, kept.customer_id)
    assert organisation is not None and organisation.legal_name == "Erased customer"
    record = db_session.scalar(sa.select(Erasure).where(Erasure.user_id == user.id))
    assert record is not None
    assert db_session.scalar(
        sa.select(OutboxEvent.id).where(
            OutboxEvent.topic == "account.erased", OutboxEvent.payload["user_id"].as_string() == str(user.id)
        )
    )
    # signed out everywhere: the token no longer works, nor does the password
    assert client.get("/api/v1/me", headers=headers).status_code == 401
    signed = client.post("/api/v1/session", json={"email": email, "password": "a-long-password-1"})
    assert signed.status_code == 401


def test_the_profile_page_downloads_the_data_and_erases_on_confirmation(
    app: Flask, db_session: Session, make_user: Callable[..., User]
) -> None:
    customer = make_user(Role.CUSTOMER, password="a-long-password-1")
    browser = app.test_client()
    _signed_in(browser, customer)
    page = browser.get("/account/profile").get_data(as_text=True)
    assert "Download everything we hold about you" in page
    download = browser.get("/account/data")
    assert download.status_code == 200 and _archive(download.get_data())["profile"]["id"] == str(customer.id)
    csrf = _csrf(page)
    wrong = browser.post("/account/erase", data={"csrf_token": csrf, "confirm_email": "x@y.test"})
    assert wrong.status_code == 422 and "not the e-mail address you sign in with" in wrong.get_data(
        as_text=True
    )
    erased = browser.post("/account/erase", data={"csrf_token": csrf, "confirm_email": customer.email})
    assert erased.status_code == 302
    assert "Your personal data is erased" in browser.get("/").get_data(as_text=True)
    assert browser.get("/account/profile").status_code in (302, 303)  # signed out
