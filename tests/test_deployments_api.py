"""Deployments through the API and the events around them, on the dummy cloud: who sees
which deployment, the history, an administrator's retry and forced removal, the end of a
subscription removing its machine, and who is told of a failure."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw import demo
from cmw.accounts import service as accounts
from cmw.accounts.models import Role, User
from cmw.catalog.models import ComponentKind, Plan, Product, ProductType, ProductVersion
from cmw.crypto import Sealer
from cmw.events.consumer import Event
from cmw.events.models import OutboxEvent
from cmw.notifications.consumers import NotificationConsumer
from cmw.notifications.models import Notification
from deployer import service
from deployer.consumer import DeploymentRequests
from deployer.engine import Engine
from deployer.models import CloudAccount, Deployment, DeploymentState
from tests.catalog_data import deployment as spec_of
from tests.catalog_data import publish
from tests.test_pages_storefront import _csrf, _signed_in

Headers = Callable[..., dict[str, str]]
S = DeploymentState


@pytest.fixture
def sealer(app: Flask) -> Sealer:
    found: Sealer = app.extensions["mercato.sealer"]
    return found


@pytest.fixture
def engine(db_session: Session, sealer: Sealer) -> Engine:
    factory = sessionmaker(bind=db_session.connection(), join_transaction_mode="create_savepoint")
    return Engine(factory, sealer, base_delay=0.01, poll_seconds=0.01)


def dummy_cloud(db_session: Session, sealer: Sealer, slug: str | None = None) -> CloudAccount:
    """A cloud account on Libcloud's dummy driver, named as the catalog fixtures' target
    unless ``slug`` says otherwise."""
    account = service.create_cloud_account(
        db_session,
        sealer,
        service.CloudAccountInput(
            slug=slug or spec_of()[0]["cloud_account"], name="Dummy", provider="dummy", credentials={}
        ),
    )
    db_session.commit()
    return account


@pytest.fixture
def shop(
    client: FlaskClient,
    db_session: Session,
    sealer: Sealer,
    make_user: Callable[..., User],
    token_for: Headers,
) -> dict[str, Any]:
    """A dummy cloud named as the catalog fixtures' target, a published product, a buyer."""
    dummy_cloud(db_session, sealer)
    vendor, admin = make_user(Role.VENDOR), make_user(Role.ADMIN)
    # deploying the dummy cloud's image "1"
    product = publish(
        client, token_for(vendor), token_for(admin), deployment=[{**spec_of()[0], "image": "1"}]
    )
    buyer, other = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    return {"product": product, "vendor": vendor, "admin": admin, "buyer": buyer, "other": other}


def place(client: FlaskClient, headers: dict[str, str]) -> dict[str, Any]:
    response = client.post(
        "/api/v1/orders", json={"product": "wiki-server", "plan": "team", "quantity": 5}, headers=headers
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def consume(db_session: Session, topic: str, **match: str) -> None:
    """Hand the outbox's matching events to the deployer's consumer, as the worker would."""
    consumer = DeploymentRequests()
    for row in db_session.scalars(sa.select(OutboxEvent).where(OutboxEvent.topic == topic)):
        if all(row.payload.get(k) == v for k, v in match.items()):
            consumer.handle(db_session, Event(str(row.id), row.topic, row.payload, row.marketplace_id))
    db_session.commit()


def run(engine: Engine) -> None:
    assert engine.run_until_idle(200) < 200


def test_who_sees_a_deployment_and_its_history(
    client: FlaskClient, db_session: Session, engine: Engine, shop: dict[str, Any], token_for: Headers
) -> None:
    buyer_h = token_for(shop["buyer"])
    placed = place(client, buyer_h)
    consume(db_session, "deployment.requested", subscription_id=placed["subscription_id"])
    run(engine)

    page = client.get(f"/api/v1/deployments?subscription_id={placed['subscription_id']}", headers=buyer_h)
    assert page.status_code == 200 and page.get_json()["total"] == 1
    item = page.get_json()["items"][0]
    assert (
        item["state"] == "running"
        and item["url"] == f"https://{item['address']}/"
        and item["login"] == "admin"
    )
    detail = client.get(f"/api/v1/deployments/{item['id']}", headers=buyer_h).get_json()
    assert [h["to_state"] for h in detail["history"]][:3] == ["requested", "preparing", "creating_vm"]
    assert detail["history"][-1]["to_state"] == "running"
    assert "password" not in str(detail)

    # the vendor of the product sees it; another customer does not
    vendor_page = client.get("/api/v1/deployments", headers=token_for(shop["vendor"])).get_json()
    assert [d["id"] for d in vendor_page["items"]] == [item["id"]]
    assert (
        client.get(f"/api/v1/deployments/{item['id']}", headers=token_for(shop["other"])).status_code == 404
    )
    assert client.get("/api/v1/deployments", headers=token_for(shop["other"])).get_json()["total"] == 0
    # the order is fulfilled
    order = client.get(f"/api/v1/orders/{placed['id']}", headers=buyer_h).get_json()
    assert order["status"] == "fulfilled"


def test_an_expired_trial_removes_its_machine(
    client: FlaskClient, db_session: Session, engine: Engine, shop: dict[str, Any], token_for: Headers
) -> None:
    placed = place(client, token_for(shop["buyer"]))
    consume(db_session, "deployment.requested", subscription_id=placed["subscription_id"])
    run(engine)
    subscription_id = uuid.UUID(placed["subscription_id"])
    # what orders emits when the trial ends without a payment method
    consumer = DeploymentRequests()
    event = Event(str(uuid.uuid4()), "subscription.expired", {"subscription_id": str(subscription_id)}, None)
    consumer.handle(db_session, event)
    db_session.commit()
    run(engine)
    deployment = db_session.scalar(sa.select(Deployment).where(Deployment.subscription_id == subscription_id))
    assert deployment is not None
    db_session.refresh(deployment)
    assert deployment.state is S.REMOVED and deployment.removed_at is not None


def test_admin_retries_a_failed_deployment_and_forces_removal(
    client: FlaskClient, db_session: Session, engine: Engine, shop: dict[str, Any], token_for: Headers
) -> None:
    placed = place(client, token_for(shop["buyer"]))
    consume(db_session, "deployment.requested", subscription_id=placed["subscription_id"])
    deployment = db_session.scalar(
        sa.select(Deployment).where(Deployment.subscription_id == uuid.UUID(placed["subscription_id"]))
    )
    assert deployment is not None
    deployment.spec = {**deployment.spec, "image": "no-such-image"}  # the dummy cloud has no such image
    db_session.commit()
    run(engine)
    db_session.refresh(deployment)
    assert deployment.state is S.FAILED and "no image 'no-such-image'" in (deployment.last_error or "")

    admin_h = token_for(shop["admin"])
    assert (
        client.post(
            f"/api/v1/admin/deployments/{deployment.id}/retry", headers=token_for(shop["buyer"])
        ).status_code
        == 403
    )
    deployment.spec = {**deployment.spec, "image": "2"}  # fixed, say, by the vendor
    db_session.commit()
    retried = client.post(f"/api/v1/admin/deployments/{deployment.id}/retry", headers=admin_h)
    assert retried.status_code == 200 and retried.get_json()["state"] == "requested"
    run(engine)
    db_session.refresh(deployment)
    assert deployment.state is S.RUNNING
    again = client.post(f"/api/v1/admin/deployments/{deployment.id}/retry", headers=admin_h)
    assert again.status_code == 409

    removed = client.post(f"/api/v1/admin/deployments/{deployment.id}/remove", headers=admin_h)
    assert removed.status_code == 200 and removed.get_json()["desired"] == "removed"
    run(engine)
    db_session.refresh(deployment)
    assert deployment.state is S.REMOVED


def test_a_failure_is_told_to_customer_and_vendor(
    client: FlaskClient, db_session: Session, shop: dict[str, Any], token_for: Headers
) -> None:
    placed = place(client, token_for(shop["buyer"]))
    payload = {
        "deployment_id": str(uuid.uuid4()),
        "subscription_id": placed["subscription_id"],
        "customer_id": placed["customer_id"],
        "vendor_id": str(shop["vendor"].memberships[0].organisation_id),
        "product_id": placed["product_id"],
        "reason": "creating vm: quota exceeded",
    }
    NotificationConsumer().handle(db_session, Event(str(uuid.uuid4()), "deployment.failed", payload, None))
    told = {
        n.user_id: n
        for n in db_session.scalars(sa.select(Notification).where(Notification.kind == "deployment.failed"))
    }
    assert set(told) == {shop["buyer"].id, shop["vendor"].id}
    assert "quota exceeded" in told[shop["buyer"].id].body


def test_admin_deployments_page_retries_and_removes(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    engine: Engine,
    shop: dict[str, Any],
    token_for: Headers,
    make_user: Callable[..., User],
) -> None:
    placed = place(client, token_for(shop["buyer"]))
    consume(db_session, "deployment.requested", subscription_id=placed["subscription_id"])
    deployment = db_session.scalar(
        sa.select(Deployment).where(Deployment.subscription_id == uuid.UUID(placed["subscription_id"]))
    )
    assert deployment is not None
    deployment.spec = {**deployment.spec, "image": "no-such-image"}
    db_session.commit()
    run(engine)

    admin = make_user(Role.ADMIN, password="a-long-password-1")
    browser = app.test_client()
    _signed_in(browser, admin)
    page = browser.get("/admin/deployments?state=failed").get_data(as_text=True)
    assert "no image &#39;no-such-image&#39;" in page and "Retry" in page
    deployment.spec = {**deployment.spec, "image": "1"}
    db_session.commit()
    browser.post(f"/admin/deployments/{deployment.id}/retry", data={"csrf_token": _csrf(page)})
    assert "Started again." in browser.get("/admin/deployments").get_data(as_text=True)
    run(engine)
    db_session.refresh(deployment)
    assert deployment.state is S.RUNNING
    page = browser.get("/admin/deployments?state=running").get_data(as_text=True)
    browser.post(f"/admin/deployments/{deployment.id}/remove", data={"csrf_token": _csrf(page)})
    run(engine)
    db_session.refresh(deployment)
    assert deployment.state is S.REMOVED
    # a customer has no such page
    customer = app.test_client()
    _signed_in(customer, make_user(Role.CUSTOMER, password="a-long-password-1"))
    assert customer.get("/admin/deployments").status_code == 403


SETUP_VARIABLES = [
    {"name": "APP_TITLE", "label": "Site title", "default": "My wiki", "customer_editable": True},
    {"name": "APP_ADMIN_EMAIL", "label": "Admin e-mail", "customer_editable": True},
    {"name": "APP_EDITION", "default": "enterprise"},
]


def order_with_variables(
    client: FlaskClient,
    db_session: Session,
    sealer: Sealer,
    token_for: Headers,
    make_user: Callable[..., User],
    buyer: User,
) -> tuple[str, dict[str, str], dict[str, str]]:
    """A product on the dummy cloud with setup variables, ordered by ``buyer``: the
    subscription's id, and the vendor's and an admin's headers."""
    dummy_cloud(db_session, sealer)
    vendor_h, admin_h = token_for(make_user(Role.VENDOR)), token_for(make_user(Role.ADMIN))
    publish(
        client,
        vendor_h,
        admin_h,
        deployment=[{**spec_of()[0], "image": "1"}],
        setup_variables=SETUP_VARIABLES,
    )
    ordered = client.post(
        "/api/v1/orders",
        json={"product": "wiki-server", "plan": "team", "quantity": 5, "variables": {"APP_TITLE": "Wiki"}},
        headers=token_for(buyer),
    )
    assert ordered.status_code == 201, ordered.get_data(as_text=True)
    return ordered.get_json()["subscription_id"], vendor_h, admin_h


def deployment_of(db_session: Session, subscription_id: str) -> Deployment:
    """The subscription's deployment as the database has it now."""
    db_session.expire_all()
    found = db_session.scalar(sa.select(Deployment).where(Deployment.subscription_id == subscription_id))
    assert found is not None
    return found


def test_setup_variables_changed_after_ordering_run_the_setup_again(
    client: FlaskClient,
    db_session: Session,
    engine: Engine,
    sealer: Sealer,
    make_user: Callable[..., User],
    token_for: Headers,
) -> None:
    buyer = make_user(Role.CUSTOMER)
    buyer_h = token_for(buyer)
    subscription_id, vendor_h, admin_h = order_with_variables(
        client, db_session, sealer, token_for, make_user, buyer
    )
    url = f"/api/v1/subscriptions/{subscription_id}/variables"

    def deployment() -> Deployment:
        return deployment_of(db_session, subscription_id)

    def states() -> list[str]:
        return [e.to_state for e in service.history(db_session, deployment().id)]

    # changed while the machine is still being made: its first setup reads it, no second run
    consume(db_session, "deployment.requested", subscription_id=subscription_id)
    early = client.put(url, json={"variables": {"APP_ADMIN_EMAIL": "ops@example.test"}}, headers=buyer_h)
    assert early.status_code == 200, early.get_data(as_text=True)
    assert early.get_json()["applying"] is False
    run(engine)
    assert deployment().state is S.RUNNING and S.RECONFIGURING.value not in states()
    assert deployment().spec["variables"] == {
        "APP_TITLE": "Wiki",
        "APP_ADMIN_EMAIL": "ops@example.test",
        "APP_EDITION": "enterprise",
    }

    # the customer sees the variables they may set, not the vendor's own
    shown = client.get(url, headers=buyer_h).get_json()
    assert [(v["name"], v["label"], v["value"]) for v in shown["variables"]] == [
        ("APP_TITLE", "Site title", "Wiki"),
        ("APP_ADMIN_EMAIL", "Admin e-mail", "ops@example.test"),
    ]
    assert shown["applying"] is False and shown["error"] is None and "enterprise" not in str(shown)

    # bad input: 422 with the reason, nothing changed
    refused = client.put(url, json={"variables": {"APP_EDITION": "free"}}, headers=buyer_h)
    assert refused.status_code == 422
    assert refused.get_json()["errors"][0]["field"] == "variables"
    assert "not a variable you can set: APP_EDITION" in refused.get_json()["errors"][0]["message"]
    assert client.put(url, json={"variables": {"APP_TITLE": "x" * 1001}}, headers=buyer_h).status_code == 422
    assert client.put(url, json={"variables": "APP_TITLE=x"}, headers=buyer_h).status_code == 422
    # another customer does not find it; a vendor cannot change it
    stranger = token_for(make_user(Role.CUSTOMER))
    assert client.get(url, headers=stranger).status_code == 404
    assert client.put(url, json={"variables": {"APP_TITLE": "Mine"}}, headers=stranger).status_code == 404
    assert client.put(url, json={"variables": {"APP_TITLE": "Mine"}}, headers=vendor_h).status_code == 403
    assert deployment().spec["variables"]["APP_TITLE"] == "Wiki" and deployment().setup_generation == 1

    # changed on the running machine: the setup runs again, once
    changed = client.put(url, json={"variables": {"APP_TITLE": "Team wiki"}}, headers=buyer_h)
    assert changed.status_code == 200 and changed.get_json()["applying"] is True
    run(engine)
    assert deployment().state is S.RUNNING and deployment().setup_due is False
    assert states()[-2:] == [S.RECONFIGURING.value, S.RUNNING.value]
    assert client.get(url, headers=buyer_h).get_json()["variables"][0]["value"] == "Team wiki"
    # the same values again change nothing
    again = client.put(url, json={"variables": {"APP_TITLE": "Team wiki"}}, headers=buyer_h)
    assert again.status_code == 200 and again.get_json()["applying"] is False
    run(engine)
    assert states().count(S.RECONFIGURING.value) == 1

    # kept in the subscription's history, and the customer is told it is done
    history = client.get(f"/api/v1/subscriptions/{subscription_id}", headers=buyer_h).get_json()["history"]
    recorded = [(h["before"], h["after"]) for h in history if h["kind"] == "setup_variables"]
    assert recorded == [
        ({"APP_ADMIN_EMAIL": ""}, {"APP_ADMIN_EMAIL": "ops@example.test"}),
        ({"APP_TITLE": "Wiki"}, {"APP_TITLE": "Team wiki"}),
    ]
    done = db_session.scalars(
        sa.select(OutboxEvent).where(OutboxEvent.topic == "deployment.reconfigured")
    ).all()
    assert len(done) == 1
    NotificationConsumer().handle(db_session, Event(str(done[0].id), done[0].topic, done[0].payload, None))
    told = db_session.scalars(sa.select(Notification).where(Notification.kind == "deployment.reconfigured"))
    assert [n.title for n in told] == ["Wiki Server runs with your new settings"]

    # an instance on its way out takes no changes
    client.post(f"/api/v1/subscriptions/{subscription_id}/cancel", json={"at_once": True}, headers=admin_h)
    consume(db_session, "subscription.cancelled", subscription_id=subscription_id)
    gone = client.put(url, json={"variables": {"APP_TITLE": "Late"}}, headers=buyer_h)
    assert gone.status_code == 422 and gone.get_json()["errors"][0]["field"] == "subscription"


def test_the_subscription_page_changes_the_instance_s_settings(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    engine: Engine,
    sealer: Sealer,
    make_user: Callable[..., User],
    token_for: Headers,
) -> None:
    buyer = make_user(Role.CUSTOMER, password="a-long-password-1")
    subscription_id, _vendor_h, _admin_h = order_with_variables(
        client, db_session, sealer, token_for, make_user, buyer
    )
    consume(db_session, "deployment.requested", subscription_id=subscription_id)
    run(engine)
    browser = app.test_client()
    _signed_in(browser, buyer)
    page_url = f"/account/subscriptions/{subscription_id}"
    page = browser.get(page_url).get_data(as_text=True)
    assert "Settings of the instance" in page and 'id="var-APP_TITLE"' in page and 'value="Wiki"' in page
    assert "APP_EDITION" not in page and "enterprise" not in page  # the vendor's own
    post_url = f"{page_url}/variables"

    # no CSRF token: refused
    assert browser.post(post_url, data={"var-APP_TITLE": "Team wiki"}).status_code == 400
    # too long: the error next to its field, the value kept, nothing saved
    bad = browser.post(post_url, data={"csrf_token": _csrf(page), "var-APP_TITLE": "x" * 1001})
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert 'id="var-APP_TITLE-error"' in html and "At most 1,000 characters" in html
    assert 'aria-invalid="true"' in html and "x" * 1001 in html

    def deployment() -> Deployment:
        return deployment_of(db_session, subscription_id)

    assert deployment().spec["variables"]["APP_TITLE"] == "Wiki" and deployment().setup_due is False

    saved = browser.post(
        post_url, data={"csrf_token": _csrf(page), "var-APP_TITLE": "Team wiki"}, follow_redirects=True
    )
    html = saved.get_data(as_text=True)
    assert saved.status_code == 200 and "Saved: the setup runs again" in html
    assert "Your changed settings are being applied" in html and 'value="Team wiki"' in html
    assert deployment().setup_due is True
    run(engine)
    html = browser.get(page_url).get_data(as_text=True)
    assert "being applied" not in html and 'value="Team wiki"' in html
    assert "setup variables: APP_TITLE" in html  # the subscription's history
    assert deployment().state is S.RUNNING and deployment().setup_due is False


def test_trying_a_cloud_account_looks_up_images_on_a_driver_without_get_image(
    client: FlaskClient,
    db_session: Session,
    sealer: Sealer,
    make_user: Callable[..., User],
    token_for: Headers,
) -> None:
    """Found by the fuzzer: the dummy driver has no image look-up by id, and the test of
    the account answered 500."""
    account = dummy_cloud(db_session, sealer, "try-dummy")
    admin_h = token_for(make_user(Role.ADMIN))
    url = f"/api/v1/admin/cloud-accounts/{account.id}/test"
    found = client.post(url, json={"images": ["1"]}, headers=admin_h)
    assert found.status_code == 200, found.get_data(as_text=True)
    assert [i["id"] for i in found.get_json()["images"]] == ["1"] and found.get_json()["sizes"]
    missing = client.post(url, json={"images": ["1", "no-such"]}, headers=admin_h)
    assert missing.status_code == 422 and "no such image: no-such" in missing.get_json()["detail"]


def test_the_demo_s_products_deploy_on_its_dummy_cloud(
    app: Flask, client: FlaskClient, db_session: Session, engine: Engine, sealer: Sealer, token_for: Headers
) -> None:
    """`make run`'s demo products deploy on its cloud, Libcloud's dummy driver (they named
    an image, "debian-12", that the dummy cloud does not have, and every order failed)."""
    demo.load(db_session, app.extensions["mercato.storage"], sealer)
    db_session.commit()
    customer = accounts.find_user(db_session, demo.LOGINS[3].email)
    assert customer is not None
    headers = token_for(customer)
    ordered = []
    for product, plan in db_session.execute(
        sa.select(Product.slug, Plan)
        .join(ProductVersion, ProductVersion.id == Product.live_version_id)
        .join(Plan, Plan.version_id == ProductVersion.id)
        .where(ProductVersion.product_type == ProductType.VM_APP)
        .order_by(Product.slug, Plan.code)
    ):
        if product in {p for p, _ in ordered}:
            continue
        units = [c.min_quantity or 1 for c in plan.components if c.kind is ComponentKind.PER_UNIT]
        answer = client.post(
            "/api/v1/orders",
            json={"product": product, "plan": plan.code, "quantity": max(units, default=1)},
            headers=headers,
        )
        assert answer.status_code == 201, answer.get_data(as_text=True)
        ordered.append((product, answer.get_json()["subscription_id"]))
    assert len(ordered) >= 2
    for _product, subscription_id in ordered:
        consume(db_session, "deployment.requested", subscription_id=subscription_id)
    run(engine)
    states = {
        product: db_session.scalar(
            sa.select(Deployment.state).where(Deployment.subscription_id == uuid.UUID(subscription_id))
        )
        for product, subscription_id in ordered
    }
    errors = db_session.scalars(
        sa.select(Deployment.last_error).where(Deployment.last_error.is_not(None))
    ).all()
    assert set(states.values()) == {DeploymentState.RUNNING}, (states, errors)
