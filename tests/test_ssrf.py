"""Server-side request forgery: every URL and host the platform calls on someone's say-so
is refused when it leads to a link-local address or a cloud's metadata service, however
it is written, and whoever gives it (a vendor's webhook, an admin's ticket forwarder, a
customer's own cloud account, an admin's cloud account, through the API or the pages);
and again when it is about to be called, since a name can be pointed elsewhere after it
was saved. Only ``MERCATO_ALLOW_LINK_LOCAL_TARGETS`` lifts this.

No test here sends anything: every refusal happens before a connection is opened (the
addresses are literals; nothing is resolved over the network).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from cmw import outbound
from cmw.accounts.models import Role, User
from cmw.outbound import OutboundError, check_url
from cmw.usage import bandwidth
from cmw.webhooks.models import WebhookEndpoint
from cmw.webhooks.service import Job, Sender
from deployer import clouds
from deployer import service as deployments
from deployer.models import CloudAccount
from tests.test_pages_admin import ACCOUNT, PASSWORD, _error
from tests.test_pages_storefront import _csrf, _signed_in

#: the metadata services and link-local addresses, written the ways an attacker would
FORBIDDEN_HOSTS = [
    "169.254.169.254",  # AWS, Azure, Google, Oracle, OpenStack
    "[fd00:ec2::254]",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "[::ffff:169.254.169.254]",  # the same, IPv4-mapped
    "2852039166",  # the same, as one decimal number
    "0xa9fea9fe",  # the same, in hexadecimal
    "169.254.170.2",  # ECS task credentials
    "[fe80::1]",  # IPv6 link-local
    "0.0.0.0",  # not one host: the machine itself
]


def _bare(host: str) -> str:
    return host.strip("[]")


@pytest.fixture
def link_local_allowed() -> Iterator[None]:
    before = (outbound.policy.allow_private, outbound.policy.allow_link_local)
    outbound.configure(allow_private=before[0], allow_link_local=True)
    try:
        yield
    finally:
        outbound.configure(allow_private=before[0], allow_link_local=before[1])


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
def test_link_local_and_metadata_addresses_are_refused_even_where_private_ones_are_allowed(host: str) -> None:
    for url in (f"https://{host}/latest/meta-data/", f"http://{host}:8080/computeMetadata/v1/"):
        with pytest.raises(OutboundError, match="link-local or cloud metadata"):
            check_url(url, allow_private=True, schemes=("http", "https"))
    with pytest.raises(clouds.EndpointRefused) as refused:
        clouds.check_endpoints({}, {"host": _bare(host)}, allow_private=True)
    assert refused.value.field == "driver_options" and "link-local" in str(refused.value)


@pytest.mark.usefixtures("link_local_allowed")
def test_the_operator_setting_lets_link_local_targets_through() -> None:
    assert check_url("https://169.254.169.254/x", allow_private=True) == "https://169.254.169.254/x"
    clouds.check_endpoints({}, {"host": "fd00:ec2::254"}, "169.254.10.10", 22, allow_private=True)
    # private ones still follow their own setting
    with pytest.raises(OutboundError, match="private or loopback"):
        check_url("https://10.0.0.1/", allow_private=False)


def test_every_url_a_user_gives_is_refused_when_saved(
    app: Flask,
    client: Any,
    db_session: Session,
    make_user: Callable[..., User],
    token_for: Callable[..., dict[str, str]],
) -> None:
    vendor = token_for(make_user(Role.VENDOR))
    admin_user = make_user(Role.ADMIN, password=PASSWORD)
    admin = token_for(admin_user)
    customer = token_for(make_user(Role.CUSTOMER))
    refused: list[str] = []

    def expect_422(response: Any, field: str, where: str) -> None:
        assert response.status_code == 422, (where, response.get_data(as_text=True))
        errors = response.get_json()["errors"]
        assert any(e["field"] == field and "link-local" in e["message"] for e in errors), (where, errors)
        refused.append(where)

    hook = client.post("/api/v1/vendor/webhooks", json={"url": "https://127.0.0.1:9/h"}, headers=vendor)
    assert hook.status_code == 201, hook.get_data(as_text=True)
    hook_url = f"/api/v1/vendor/webhooks/{hook.get_json()['id']}"
    admin_account = client.post(
        "/api/v1/admin/cloud-accounts",
        json={"slug": "lab", "name": "Lab", "provider": "dummy", "credentials": {}},
        headers=admin,
    )
    assert admin_account.status_code == 201, admin_account.get_data(as_text=True)
    admin_account_url = f"/api/v1/admin/cloud-accounts/{admin_account.get_json()['id']}"
    ec2 = {"name": "Ours", "provider": "ec2", "credentials": {"key": "AKIDEXAMPLE", "secret": "s"}}

    for host in FORBIDDEN_HOSTS:
        url = f"https://{host}/latest/meta-data/"
        expect_422(
            client.post("/api/v1/vendor/webhooks", json={"url": url}, headers=vendor), "url", "webhook"
        )
        expect_422(client.patch(hook_url, json={"url": url}, headers=vendor), "url", "webhook change")
        expect_422(
            client.put("/api/v1/admin/support/forwarding", json={"forward_url": url}, headers=admin),
            "forward_url",
            "ticket forwarding",
        )
        expect_422(
            client.post(
                "/api/v1/customer/cloud-accounts",
                json={**ec2, "driver_options": {"host": _bare(host)}},
                headers=customer,
            ),
            "driver_options",
            "customer's cloud host",
        )
        expect_422(
            client.post(
                "/api/v1/customer/cloud-accounts", json={**ec2, "ssh_host": _bare(host)}, headers=customer
            ),
            "ssh_host",
            "customer's SSH override",
        )
        for body, field in (
            ({"driver_options": {"host": _bare(host), "port": 80}}, "driver_options"),
            ({"credentials": {"key": "k", "ex_force_auth_url": url}}, "credentials"),
            ({"ssh_host": _bare(host)}, "ssh_host"),
        ):
            new = {
                "slug": f"x-{uuid.uuid4().hex[:8]}",
                "name": "X",
                "provider": "openstack",
                "credentials": {},
            }
            expect_422(
                client.post("/api/v1/admin/cloud-accounts", json={**new, **body}, headers=admin),
                field,
                "admin's cloud account",
            )
            expect_422(
                client.patch(admin_account_url, json=body, headers=admin), field, "admin's account change"
            )

    # a change of one setting leaves the others as they were; a private cloud is fine
    private = {"driver_options": {"host": "10.20.30.40", "port": 8773}, "name": "Lab 2"}
    changed = client.patch(admin_account_url, json=private, headers=admin)
    assert changed.status_code == 200, changed.get_data(as_text=True)
    assert changed.get_json()["name"] == "Lab 2" and changed.get_json()["provider"] == "dummy"
    assert client.patch(admin_account_url, json={"driver_options": {}}, headers=admin).status_code == 200

    # the admin's page says it next to the field
    _signed_in(client, admin_user)
    token = _csrf(client.get("/admin/cloud-accounts/new").get_data(as_text=True))
    page = client.post(
        "/admin/cloud-accounts/new",
        data={**ACCOUNT, "slug": "meta", "driver_options": "host = 169.254.169.254", "csrf_token": token},
    )
    assert page.status_code == 422
    assert "link-local or cloud metadata" in _error(page.get_data(as_text=True), "driver_options")

    # nothing of it was kept
    db_session.expire_all()
    assert db_session.scalars(sa.select(CloudAccount.slug)).all() == ["lab"]
    assert db_session.scalars(sa.select(WebhookEndpoint.url)).all() == ["https://127.0.0.1:9/h"]
    kept = db_session.get(CloudAccount, uuid.UUID(admin_account_url.rsplit("/", 1)[1]))
    assert kept is not None and kept.driver_options == {} and kept.ssh_host is None
    print(f"\nSSRF: {len(refused)} attempts through {len(set(refused))} entry points refused, 0 stored")


def test_a_saved_url_that_now_leads_to_metadata_is_not_called(
    app: Flask,
    db_session: Session,
    client: Any,
    make_user: Callable[..., User],
    token_for: Callable[..., Any],
) -> None:
    # a webhook delivery: refused before the request, told as the attempt's error
    result = Sender(allow_private=True).send(
        Job(uuid.uuid4(), "https://169.254.169.254/latest/meta-data/", "s3cret", "order.placed", "{}")
    )
    assert result.status is None and result.error is not None and "link-local" in result.error

    # a cloud account changed behind the platform's back (or its name re-pointed): the
    # driver is not built, so the deployer, the connection test and the bandwidth
    # exporter call nothing
    sealer = app.extensions["mercato.sealer"]
    account = deployments.create_cloud_account(
        db_session,
        sealer,
        deployments.CloudAccountInput(
            slug="private-cloud",
            name="Private cloud",
            provider="ec2",
            credentials={"key": "AKIDEXAMPLE", "secret": "s"},
            region="us-east-1",
            driver_options={"host": "10.20.30.40", "port": 8773, "secure": False},  # private: fine
        ),
    )
    db_session.flush()
    account.driver_options = {"host": "169.254.169.254", "port": 80, "secure": False}
    account.updated_at += dt.timedelta(seconds=1)  # a new version: its driver is built anew
    opened = deployments.credentials(sealer, account)
    with pytest.raises(clouds.EndpointRefused, match="link-local"):
        clouds.driver_for(account, opened)
    with pytest.raises(clouds.PermanentError, match="link-local"):
        deployments.test_cloud_account(sealer, account)
    with pytest.raises(clouds.EndpointRefused, match="link-local"):
        bandwidth.cloudwatch_for(account, sealer)
    db_session.commit()
    admin = token_for(make_user(Role.ADMIN))
    tested = client.post(f"/api/v1/admin/cloud-accounts/{account.id}/test", json={}, headers=admin)
    assert tested.status_code == 422 and "link-local" in tested.get_json()["detail"]
