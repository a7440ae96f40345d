"""CRM sync against a loopback stand-in for HubSpot that checks each request's shape: a
customer becomes a company with its users as contacts, a subscription a deal associated
with both; the CRM failing for a while delays the deal without blocking the order or
making a second deal; every call is on record."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from cmw.crm.consumer import CrmSync
from cmw.crm.models import CrmCall, CrmLink
from cmw.crm.service import DEAL_TO_COMPANY, DEAL_TO_CONTACT, HubSpot
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from cmw.orders import subscriptions
from cmw.orders.models import Order, Subscription
from tests import catalog_data
from tests.helpers import wait_until, worker_running
from tests.hubspot import TOKEN, FakeHubSpot
from tests.hubspot import hubspot as hubspot
from tests.test_pricing import FLAT, _plan

Factory = sessionmaker[Session]


@pytest.fixture
def syncing(committed_db: Factory, hubspot: tuple[FakeHubSpot, str]) -> Iterator[FakeHubSpot]:
    fake, url = hubspot
    consumer = CrmSync(HubSpot(url, TOKEN, timeout=5))
    consumer.retry_delay = 0.2  # type: ignore[misc]
    with worker_running(committed_db, [consumer]):
        yield fake


def test_customers_and_subscriptions_reach_the_crm_through_a_failure(
    committed_db: Factory, syncing: FakeHubSpot
) -> None:
    fake = syncing
    with committed_db() as session:
        catalog_data.publish_product(session, "crm-app", [_plan(FLAT)])
        buyer, org = catalog_data.add_customer(session, "Ada.Lovelace@example.test")
        buyer.name = "Ada Lovelace"
        session.commit()

    def linked(kind: str) -> int:
        with committed_db() as session:
            return session.scalar(
                sa.select(sa.func.count()).select_from(CrmLink).where(CrmLink.object_type == kind)
            )

    wait_until(lambda: linked("contact") == 1, 30, "the customer's company and contact")
    (company,) = fake.objects["companies"].values()  # the vendor is no customer: not a company
    assert company["properties"] == {
        "name": "Customer Srl",
        "country": "IT",
        "city": "",
        "zip": "",
        "address": "",
    }
    (contact,) = fake.objects["contacts"].values()
    assert contact["properties"]["email"] == "ada.lovelace@example.test"
    assert ("contact", contact["id"], "company", company["id"], 279) in fake.associations

    # HubSpot is down for a while: the order goes through at once, the deal follows later.
    fake.fail(3, 503)
    with committed_db() as session:
        order = orders.place_order(
            session,
            platform(session),
            session.merge(buyer),
            session.merge(org),
            orders.OrderRequest(product="crm-app", plan="basic"),
        )
        session.commit()
        assert session.get(Order, order.id) is not None
        subscription_id = order.subscription_id
    wait_until(lambda: linked("deal") == 1, 60, "the deal")
    (deal,) = fake.objects["deals"].values()
    assert deal["properties"]["dealname"] == "Wiki Server · Basic · Customer of Ada.Lovelace@example.test"
    assert deal["properties"]["pipeline"] == "default" and deal["properties"]["dealstage"] == "closedwon"
    assert deal["properties"]["amount"] == "10" and deal["properties"]["deal_currency_code"] == "EUR"
    assert ("deal", deal["id"], "?", company["id"], DEAL_TO_COMPANY) in fake.associations
    assert ("deal", deal["id"], "?", contact["id"], DEAL_TO_CONTACT) in fake.associations
    with committed_db() as session:
        calls = list(session.scalars(sa.select(CrmCall).order_by(CrmCall.id)))
    assert sum(c.status == 503 for c in calls) == 3  # every failed attempt is on record
    assert [(c.method, c.status) for c in calls if c.object_type == "deal"][-1] == ("POST", 201)
    assert sum(c.object_type == "deal" and c.status == 201 for c in calls) == 1  # one deal made

    # Cancelling moves the deal to lost, on the same deal.
    with committed_db() as session:
        subscription = session.get(Subscription, subscription_id)
        assert subscription is not None
        subscriptions.cancel(session, subscription, None, at_once=True)
        session.commit()
    wait_until(lambda: deal["properties"]["dealstage"] == "closedlost", 30, "the deal lost")
    assert len(fake.objects["deals"]) == 1 and len(fake.objects["companies"]) == 1
    assert all(method != "POST" or "deals" not in path for method, path, _ in fake.calls[-3:])
