"""Reviews: who may rate, once per organisation and product (editable), the vendor's one
reply, hiding by admins, and the product's average and count kept exact."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts.models import Role, User
from cmw.catalog import reviews
from tests.catalog_data import publish
from tests.test_api_foundation import assert_problem

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def subscribers() -> Iterator[set[uuid.UUID]]:
    """Organisations the test declares subscribers (orders will provide the real rule)."""
    allowed: set[uuid.UUID] = set()
    previous = reviews.set_eligibility(lambda _s, organisation_id, _p: organisation_id in allowed)
    yield allowed
    reviews.set_eligibility(previous)


@pytest.fixture
def product(client: FlaskClient, make_user: Callable[..., User], token_for: Headers) -> dict[str, Any]:
    vendor = make_user(Role.VENDOR)
    return {**publish(client, token_for(vendor), token_for(make_user(Role.ADMIN))), "vendor": vendor}


def _org(user: User) -> uuid.UUID:
    organisation_id = user.memberships[0].organisation_id
    assert organisation_id is not None
    return organisation_id


def rating(client: FlaskClient) -> dict[str, Any]:
    result: dict[str, Any] = client.get("/api/v1/products/wiki-server").get_json()["rating"]
    return result


def test_a_subscriber_rates_once_and_may_edit(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    product: dict[str, Any],
    subscribers: set[uuid.UUID],
) -> None:
    alice, bob = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    subscribers.update({_org(alice), _org(bob)})
    url = "/api/v1/products/wiki-server/reviews/mine"
    first = client.put(url, json={"rating": 4, "comment": "Good"}, headers=token_for(alice))
    assert first.status_code == 200 and first.get_json()["rating"] == 4
    client.put(url, json={"rating": 2, "comment": "Meh"}, headers=token_for(bob))
    assert rating(client) == {"average": 3.0, "count": 2}
    edited = client.put(
        url, json={"rating": 5, "comment": "Great after the update"}, headers=token_for(alice)
    )
    assert edited.get_json()["id"] == first.get_json()["id"], "one review per organisation, edited in place"
    assert rating(client) == {"average": 3.5, "count": 2}
    listed = client.get("/api/v1/products/wiki-server/reviews").get_json()
    assert listed["total"] == 2 and {r["comment"] for r in listed["items"]} == {
        "Great after the update",
        "Meh",
    }


def test_a_customer_without_a_subscription_cannot_rate(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    product: dict[str, Any],
    subscribers: set[uuid.UUID],
) -> None:
    response = client.put(
        "/api/v1/products/wiki-server/reviews/mine",
        json={"rating": 1},
        headers=token_for(make_user(Role.CUSTOMER)),
    )
    assert "subscribes" in assert_problem(response, 403, "not-a-subscriber")["detail"]
    assert rating(client) == {"average": None, "count": 0}


@pytest.mark.parametrize("body", [{"rating": 0}, {"rating": 6}, {"rating": "five"}, {}])
def test_ratings_are_1_to_5(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    product: dict[str, Any],
    body: dict[str, Any],
) -> None:
    response = client.put(
        "/api/v1/products/wiki-server/reviews/mine", json=body, headers=token_for(make_user(Role.CUSTOMER))
    )
    assert "rating" in {e["field"] for e in assert_problem(response, 422, "validation-error")["errors"]}


def test_the_vendor_replies_once_and_only_the_vendor(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    product: dict[str, Any],
    subscribers: set[uuid.UUID],
) -> None:
    customer = make_user(Role.CUSTOMER)
    subscribers.add(_org(customer))
    review = client.put(
        "/api/v1/products/wiki-server/reviews/mine", json={"rating": 3}, headers=token_for(customer)
    ).get_json()
    url = f"/api/v1/vendor/reviews/{review['id']}/reply"
    other_vendor = token_for(make_user(Role.VENDOR))
    assert_problem(client.post(url, json={"reply": "Not mine"}, headers=other_vendor), 404, "not-found")
    replied = client.post(url, json={"reply": "Thanks, fixed in 2.1"}, headers=token_for(product["vendor"]))
    assert (
        replied.get_json()["vendor_reply"] == "Thanks, fixed in 2.1"
        and replied.get_json()["vendor_replied_at"]
    )
    assert_problem(
        client.post(url, json={"reply": "Again"}, headers=token_for(product["vendor"])),
        409,
        "already-replied",
    )


def test_hidden_reviews_are_neither_shown_nor_counted(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    product: dict[str, Any],
    subscribers: set[uuid.UUID],
    db_session: Session,
) -> None:
    nice, rude = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    subscribers.update({_org(nice), _org(rude)})
    client.put("/api/v1/products/wiki-server/reviews/mine", json={"rating": 5}, headers=token_for(nice))
    bad = client.put(
        "/api/v1/products/wiki-server/reviews/mine",
        json={"rating": 1, "comment": "abuse"},
        headers=token_for(rude),
    ).get_json()
    admin = token_for(make_user(Role.ADMIN))
    assert_problem(
        client.patch(f"/api/v1/admin/reviews/{bad['id']}", json={"hidden": True}, headers=token_for(nice)),
        403,
        "forbidden",
    )
    hidden = client.patch(f"/api/v1/admin/reviews/{bad['id']}", json={"hidden": True}, headers=admin)
    assert hidden.get_json()["hidden"] is True
    assert rating(client) == {"average": 5.0, "count": 1}
    assert [r["rating"] for r in client.get("/api/v1/products/wiki-server/reviews").get_json()["items"]] == [
        5
    ]
    # Editing a hidden review does not let it count again; showing it does.
    client.put("/api/v1/products/wiki-server/reviews/mine", json={"rating": 2}, headers=token_for(rude))
    assert rating(client) == {"average": 5.0, "count": 1}
    client.patch(f"/api/v1/admin/reviews/{bad['id']}", json={"hidden": False}, headers=admin)
    assert rating(client) == {"average": 3.5, "count": 2}


def test_reviews_of_unknown_products_are_404(client: FlaskClient) -> None:
    assert_problem(client.get("/api/v1/products/nothing/reviews"), 404, "not-found")
