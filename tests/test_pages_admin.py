"""The administrators' cloud account pages: adding and changing an account with errors next
to their fields, credentials kept sealed and never shown, and the connection test."""

from __future__ import annotations

import html as html_lib
import re
import socket
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts.models import Role, User
from deployer import service as deployments
from deployer.models import CloudAccount
from tests.test_pages_storefront import _csrf, _signed_in

PASSWORD = "a-long-password-1"


def _error(page: str, field_id: str) -> str:
    match = re.search(rf'<span class="field-error" id="{re.escape(field_id)}-error">([^<]*)</span>', page)
    assert match, f"no error next to {field_id}"
    return html_lib.unescape(match.group(1))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


ACCOUNT = {
    "name": "Lab cloud",
    "slug": "lab",
    "provider": "dummy",
    "region": "",
    "credentials": "",
    "driver_options": "",
    "default_network": "",
    "ssh_host": "127.0.0.1",
    "ssh_port": "2222",
    "ssh_username": "ubuntu",
    "is_active": "y",
}


def test_an_admin_adds_changes_and_tests_cloud_accounts(
    app: Flask, client: FlaskClient, db_session: Session, make_user: Callable[..., User]
) -> None:
    customer = app.test_client()
    _signed_in(customer, make_user(Role.CUSTOMER, password=PASSWORD))
    assert customer.get("/admin/cloud-accounts").status_code == 403

    _signed_in(client, make_user(Role.ADMIN, password=PASSWORD))
    listed = client.get("/admin/cloud-accounts").get_data(as_text=True)
    assert "No cloud account yet" in listed
    token = _csrf(client.get("/admin/cloud-accounts/new").get_data(as_text=True))

    refused = client.post(
        "/admin/cloud-accounts/new",
        data={**ACCOUNT, "slug": "Not OK", "credentials": "just a secret", "csrf_token": token},
    )
    page = refused.get_data(as_text=True)
    assert refused.status_code == 422
    assert "line 1: write name = value" in _error(page, "credentials")
    refused = client.post(
        "/admin/cloud-accounts/new", data={**ACCOUNT, "slug": "Not OK", "csrf_token": token}
    )
    assert "lowercase letters" in _error(refused.get_data(as_text=True), "slug")

    created = client.post("/admin/cloud-accounts/new", data={**ACCOUNT, "csrf_token": token})
    assert created.status_code == 302
    listed = client.get("/admin/cloud-accounts").get_data(as_text=True)
    assert "Lab cloud is saved" in listed and "ubuntu@127.0.0.1:2222" in listed
    account = db_session.query(CloudAccount).filter_by(slug="lab").one()
    edit = client.get(f"/admin/cloud-accounts/{account.id}").get_data(as_text=True)
    assert 'value="Lab cloud"' in edit and account.public_key in edit
    changed = client.post(
        f"/admin/cloud-accounts/{account.id}", data={**ACCOUNT, "name": "Lab", "csrf_token": token}
    )
    assert changed.status_code == 302
    db_session.expire_all()
    assert db_session.get(CloudAccount, account.id).name == "Lab"  # type: ignore[union-attr]

    tested = client.post(f"/admin/cloud-accounts/{account.id}/test", data={"csrf_token": token})
    assert tested.status_code == 302
    assert re.search(
        r"Lab works: \d+ sizes and \d+ images listed",
        client.get("/admin/cloud-accounts").get_data(as_text=True),
    )

    # an EC2 endpoint that refuses connections: the test says so in words
    broken = client.post(
        "/admin/cloud-accounts/new",
        data={
            **ACCOUNT,
            "name": "Broken",
            "slug": "broken",
            "provider": "ec2",
            "region": "us-east-1",
            "credentials": "key = AKIDEXAMPLE\nsecret = nope",
            "driver_options": f"host = 127.0.0.1\nport = {_closed_port()}\nsecure = false",
            "csrf_token": token,
        },
    )
    assert broken.status_code == 302, broken.get_data(as_text=True)
    account = db_session.query(CloudAccount).filter_by(slug="broken").one()
    assert account.driver_options == {
        "host": "127.0.0.1",
        "port": account.driver_options["port"],
        "secure": False,
    }
    sealer = app.extensions["mercato.sealer"]
    assert deployments.credentials(sealer, account) == {"key": "AKIDEXAMPLE", "secret": "nope"}
    # the edit form never shows the credentials; left blank, they stay
    edit = client.get(f"/admin/cloud-accounts/{account.id}").get_data(as_text=True)
    assert "AKIDEXAMPLE" not in edit and "nope" not in edit
    kept = client.post(
        f"/admin/cloud-accounts/{account.id}",
        data={**ACCOUNT, "name": "Broken", "slug": "broken", "provider": "ec2", "region": "us-east-1",
              "driver_options": f"host = 127.0.0.1\nport = {_closed_port()}\nsecure = false",
              "csrf_token": token},
    )  # fmt: skip
    assert kept.status_code == 302
    db_session.expire_all()
    account = db_session.query(CloudAccount).filter_by(slug="broken").one()
    assert deployments.credentials(sealer, account) == {"key": "AKIDEXAMPLE", "secret": "nope"}
    client.post(f"/admin/cloud-accounts/{account.id}/test", data={"csrf_token": token})
    assert "Broken does not work:" in client.get("/admin/cloud-accounts").get_data(as_text=True)

    taken = client.post("/admin/cloud-accounts/new", data={**ACCOUNT, "csrf_token": token})
    assert "'lab' is taken" in _error(taken.get_data(as_text=True), "slug")
    assert client.post(f"/admin/cloud-accounts/{account.id}/test", data={}).status_code == 400


def test_an_admin_finds_users_and_disables_one(
    app: Flask, client: FlaskClient, make_user: Callable[..., User]
) -> None:
    admin = make_user(Role.ADMIN, password=PASSWORD)
    vendor = make_user(Role.VENDOR, password=PASSWORD, email="vera@vendor.test")
    buyer = make_user(Role.CUSTOMER, password=PASSWORD, email="bob@buyer.test")
    _signed_in(client, admin)
    page = client.get("/admin/users?q=buyer").get_data(as_text=True)
    assert "bob@buyer.test" in page and "vera@vendor.test" not in page and "1 user<" in page
    assert re.search(r"customer of [^<]+</td>", page)
    vendors = client.get("/admin/users?role=vendor").get_data(as_text=True)
    assert "vera@vendor.test" in vendors and "bob@buyer.test" not in vendors

    customer = app.test_client()
    _signed_in(customer, buyer)
    assert customer.get("/account").status_code == 200
    disabled = client.post(f"/admin/users/{buyer.id}/disable", data={"csrf_token": _csrf(page)})
    assert disabled.status_code == 302
    assert "is disabled" in client.get("/admin/users?q=buyer").get_data(as_text=True)
    # their session ends at once
    assert customer.get("/account").status_code == 302
    client.post(f"/admin/users/{buyer.id}/enable", data={"csrf_token": _csrf(page)})
    assert "can sign in again" in client.get("/admin/users").get_data(as_text=True)

    # an admin cannot disable themselves; a non-admin cannot open the page
    client.post(f"/admin/users/{admin.id}/disable", data={"csrf_token": _csrf(page)})
    assert "cannot disable your own account" in client.get("/admin/users").get_data(as_text=True)
    other = app.test_client()
    _signed_in(other, vendor)
    assert other.get("/admin/users").status_code == 403
