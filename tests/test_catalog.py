"""The catalog: the publication workflow state by state (including versions), plans
through the API, the role and tenant rules, and what customers see."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts.models import Organisation, OrganisationKind, Role, User
from cmw.catalog import service
from cmw.catalog.models import Product, ProductStatus, ProductVersion, VersionState
from cmw.catalog.workflow import (
    PRODUCT_TRANSITIONS,
    VERSION_TRANSITIONS,
    Action,
    InvalidTransition,
    next_status,
)
from cmw.events.models import OutboxEvent
from cmw.marketplaces.models import Marketplace
from tests import catalog_data
from tests.catalog_data import create, post, publish, set_plans
from tests.test_api_foundation import assert_problem
from tests.test_pricing import FLAT, _plan

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def vendor(make_user: Callable[..., User]) -> User:
    return make_user(Role.VENDOR)


@pytest.fixture
def admin(make_user: Callable[..., User]) -> User:
    return make_user(Role.ADMIN)


# ------------------------------------------------------- the transition table
ALL_STATUSES = list(ProductStatus)
ALL_ACTIONS = list(Action)


@pytest.mark.parametrize("status", ALL_STATUSES)
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_product_transition_table(status: ProductStatus, action: Action) -> None:
    """Every (status, action) pair either leads where the table says or is refused."""
    if (status, action) in PRODUCT_TRANSITIONS:
        assert next_status(status, action) is PRODUCT_TRANSITIONS[(status, action)]
    else:
        with pytest.raises(InvalidTransition):
            next_status(status, action)


def test_retired_products_and_published_versions_are_final() -> None:
    assert not [key for key in PRODUCT_TRANSITIONS if key[0] is ProductStatus.RETIRED]
    assert not [
        key for key in VERSION_TRANSITIONS if key[0] in (VersionState.APPROVED, VersionState.SUPERSEDED)
    ]
    assert (ProductStatus.IN_REVIEW, Action.EDIT) not in PRODUCT_TRANSITIONS  # a submission is frozen


# ----------------------------------------------------------- state by state
def test_draft_to_review_to_published(
    client: FlaskClient, vendor: User, admin: User, token_for: Headers, db_session: Session
) -> None:
    vh, ah = token_for(vendor), token_for(admin)
    product = create(client, vh)
    assert product["status"] == "draft"
    assert product["live_version"] is None and product["working_version"]["state"] == "draft"

    # Nothing to sell yet: no plans.
    refused = post(client, f"/api/v1/vendor/products/{product['id']}/submit", vh)
    assert assert_problem(refused, 422, "validation-error")["errors"][0]["field"] == "plans"

    set_plans(client, vh, product["id"])
    submitted = post(client, f"/api/v1/vendor/products/{product['id']}/submit", vh).get_json()
    assert submitted["status"] == "in_review" and submitted["working_version"]["state"] == "in_review"

    frozen = client.patch(f"/api/v1/vendor/products/{product['id']}", json={"name": "Sneaky"}, headers=vh)
    assert_problem(frozen, 409, "invalid-transition")
    queue = client.get("/api/v1/admin/products?status=in_review", headers=ah).get_json()
    assert [p["id"] for p in queue["items"]] == [product["id"]]

    approved = post(client, f"/api/v1/admin/products/{product['id']}/approve", ah).get_json()
    assert approved["status"] == "published"
    assert approved["live_version"]["number"] == 1 and approved["live_version"]["state"] == "approved"
    assert approved["working_version"] is None
    public = client.get("/api/v1/products/wiki-server")
    assert public.status_code == 200 and public.get_json()["name"] == "Wiki Server"
    topics = db_session.scalars(sa.select(OutboxEvent.topic).order_by(OutboxEvent.seq)).all()
    assert [t for t in topics if t.startswith("product.")] == [
        "product.created",
        "product.submitted",
        "product.published",
    ]


def test_rejection_goes_back_to_draft_with_the_reason(
    client: FlaskClient, vendor: User, admin: User, token_for: Headers
) -> None:
    vh, ah = token_for(vendor), token_for(admin)
    product = create(client, vh)
    set_plans(client, vh, product["id"])
    post(client, f"/api/v1/vendor/products/{product['id']}/submit", vh)
    no_reason = post(client, f"/api/v1/admin/products/{product['id']}/reject", ah, {"reason": ""})
    assert_problem(no_reason, 422, "validation-error")
    rejected = post(
        client, f"/api/v1/admin/products/{product['id']}/reject", ah, {"reason": "Add a real logo."}
    )
    body = rejected.get_json()
    assert body["status"] == "draft"
    assert body["working_version"]["state"] == "draft"
    assert body["working_version"]["review_note"] == "Add a real logo."
    assert client.get("/api/v1/products/wiki-server").status_code == 404
    # Approving a draft is not a thing.
    assert_problem(
        post(client, f"/api/v1/admin/products/{product['id']}/approve", ah), 409, "invalid-transition"
    )


def test_withdraw_lets_the_vendor_edit_again(client: FlaskClient, vendor: User, token_for: Headers) -> None:
    vh = token_for(vendor)
    product = create(client, vh)
    set_plans(client, vh, product["id"])
    post(client, f"/api/v1/vendor/products/{product['id']}/submit", vh)
    withdrawn = post(client, f"/api/v1/vendor/products/{product['id']}/withdraw", vh).get_json()
    assert withdrawn["status"] == "draft"
    edited = client.patch(f"/api/v1/vendor/products/{product['id']}", json={"name": "Wiki Pro"}, headers=vh)
    assert edited.get_json()["working_version"]["name"] == "Wiki Pro"


def test_a_published_product_keeps_serving_its_live_version_until_the_edit_is_approved(
    client: FlaskClient, vendor: User, admin: User, token_for: Headers, db_session: Session
) -> None:
    vh, ah = token_for(vendor), token_for(admin)
    product = publish(client, vh, ah)
    pid = product["id"]

    edited = client.patch(
        f"/api/v1/vendor/products/{pid}", json={"name": "Wiki Server 2", "trial_days": 30}, headers=vh
    ).get_json()
    assert edited["status"] == "published"
    assert edited["working_version"]["number"] == 2 and edited["working_version"]["name"] == "Wiki Server 2"
    assert len(edited["working_version"]["plans"]) == 2, "the new revision starts from the live plans"
    assert edited["live_version"]["name"] == "Wiki Server"

    def customer_view() -> dict[str, Any]:
        return client.get("/api/v1/products/wiki-server").get_json()

    assert customer_view()["name"] == "Wiki Server" and customer_view()["trial_days"] == 14
    post(client, f"/api/v1/vendor/products/{pid}/submit", vh)
    assert customer_view()["name"] == "Wiki Server", "still the live version while in review"
    queue = client.get("/api/v1/admin/products?status=in_review", headers=ah).get_json()
    assert [p["id"] for p in queue["items"]] == [pid]

    rejected = post(client, f"/api/v1/admin/products/{pid}/reject", ah, {"reason": "typo"}).get_json()
    assert rejected["status"] == "published" and rejected["working_version"]["state"] == "draft"
    assert customer_view()["name"] == "Wiki Server"

    post(client, f"/api/v1/vendor/products/{pid}/submit", vh)
    approved = post(client, f"/api/v1/admin/products/{pid}/approve", ah).get_json()
    assert approved["live_version"]["number"] == 2 and approved["working_version"] is None
    assert customer_view()["name"] == "Wiki Server 2" and customer_view()["trial_days"] == 30
    states = dict(
        db_session.execute(
            sa.select(ProductVersion.number, ProductVersion.state).where(
                ProductVersion.product_id == uuid.UUID(pid)
            )
        ).all()
    )
    assert states == {1: VersionState.SUPERSEDED, 2: VersionState.APPROVED}


def test_retiring_hides_the_product_and_is_final(
    client: FlaskClient, vendor: User, admin: User, token_for: Headers
) -> None:
    vh, ah = token_for(vendor), token_for(admin)
    product = publish(client, vh, ah)
    retired = post(client, f"/api/v1/vendor/products/{product['id']}/retire", vh).get_json()
    assert retired["status"] == "retired" and retired["retired_at"] is not None
    assert client.get("/api/v1/products/wiki-server").status_code == 404
    assert client.get("/api/v1/products").get_json()["total"] == 0
    again = client.patch(f"/api/v1/vendor/products/{product['id']}", json={"name": "Back"}, headers=vh)
    assert_problem(again, 409, "invalid-transition")


def test_slug_is_fixed_once_published(
    client: FlaskClient, vendor: User, admin: User, token_for: Headers
) -> None:
    vh, ah = token_for(vendor), token_for(admin)
    draft = create(client, vh, slug="first-slug")
    renamed = client.patch(f"/api/v1/vendor/products/{draft['id']}", json={"slug": "second-slug"}, headers=vh)
    assert renamed.get_json()["slug"] == "second-slug"
    product = publish(client, vh, ah, slug="live-one")
    refused = client.patch(f"/api/v1/vendor/products/{product['id']}", json={"slug": "other"}, headers=vh)
    assert assert_problem(refused, 422, "validation-error")["errors"][0]["field"] == "slug"


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"category": "astrology"}, "category", "unknown category"),
        ({"slug": "Bad Slug!"}, "slug", "lowercase"),
        (
            {"product_type": "bare_vm", "deployment": catalog_data.deployment("vm_app")},
            "deployment.0.data_disk_gib",
            "no data disk",
        ),
        (
            {"deployment": catalog_data.deployment("bare_vm")},
            "deployment.0.data_disk_gib",
            "needs a data disk",
        ),
    ],
)
def test_invalid_products_are_refused_with_the_reason(
    client: FlaskClient,
    vendor: User,
    token_for: Headers,
    db_session: Session,
    overrides: dict[str, Any],
    field: str,
    message: str,
) -> None:
    response = client.post(
        "/api/v1/vendor/products", json=catalog_data.product(**overrides), headers=token_for(vendor)
    )
    body = assert_problem(response, 422, "validation-error")
    assert body["errors"][0]["field"] == field and message in body["errors"][0]["message"]
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Product)) == 0


def test_schema_errors_name_nested_fields(client: FlaskClient, vendor: User, token_for: Headers) -> None:
    body = catalog_data.product()
    body["deployment"][0]["size"]["cores"] = 0
    body["deployment"][0]["app_url_template"] = "https://{password}/"
    body["trial_days"] = -1
    response = client.post("/api/v1/vendor/products", json=body, headers=token_for(vendor))
    fields = {e["field"] for e in assert_problem(response, 422, "validation-error")["errors"]}
    assert {"deployment.0.size.cores", "deployment.0.app_url_template", "trial_days"} <= fields


def test_a_taken_slug_is_refused(client: FlaskClient, vendor: User, token_for: Headers) -> None:
    vh = token_for(vendor)
    create(client, vh)
    response = client.post("/api/v1/vendor/products", json=catalog_data.product(), headers=vh)
    body = assert_problem(response, 422, "validation-error")
    assert body["errors"][0] == {
        "location": "json",
        "field": "slug",
        "message": "'wiki-server' is taken in this marketplace",
    }


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda p: p[0]["components"][3]["tiers"][1].update({"from": "900"}),
            "plans.0.components.3.tiers.1.from",
        ),
        (
            lambda p: p[0]["components"][3]["tiers"][1].update({"from": "1200"}),
            "plans.0.components.3.tiers.1.from",
        ),
        (lambda p: p[0]["components"][0].update({"unit_price": "-5"}), "plans.0.components.0.unit_price"),
        (lambda p: p[0].update({"currency": "ABC"}), "plans.0.currency"),
        (lambda p: p[0]["components"][0].update({"unit_price": 49.5}), "plans.0.components.0.unit_price"),
    ],
)
def test_invalid_plans_are_refused_and_nothing_is_stored(
    client: FlaskClient, vendor: User, token_for: Headers, mutate: Callable[[Any], None], field: str
) -> None:
    vh = token_for(vendor)
    product = create(client, vh)
    plans = catalog_data.plans()
    mutate(plans)
    response = client.put(f"/api/v1/vendor/products/{product['id']}/plans", json={"plans": plans}, headers=vh)
    body = assert_problem(response, 422, "validation-error")
    assert field in {e["field"] for e in body["errors"]}
    stored = client.get(f"/api/v1/vendor/products/{product['id']}", headers=vh).get_json()
    assert stored["working_version"]["plans"] == []


def test_plans_round_trip_with_decimal_strings(client: FlaskClient, vendor: User, token_for: Headers) -> None:
    vh = token_for(vendor)
    product = create(client, vh)
    plans = set_plans(client, vh, product["id"])["working_version"]["plans"]
    team = plans[0]
    assert team["currency"] == "EUR" and team["billing_period"] == "month"
    assert team["components"][0]["unit_price"] == "49"
    assert team["components"][2]["unit_price"] == "4.5"
    assert team["components"][3]["tiers"][1] == {
        "from": "1000",
        "up_to": None,
        "unit_price": "0.05",
        "flat_fee": "0",
    }
    assert team["components"][2]["min_quantity"] == 5


# ------------------------------------------------------ roles and tenants
def test_a_vendor_cannot_see_or_touch_another_vendors_product(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers
) -> None:
    owner, other = make_user(Role.VENDOR), make_user(Role.VENDOR)
    product = create(client, token_for(owner))
    oh = token_for(other)
    for method, url, body in [
        ("GET", f"/api/v1/vendor/products/{product['id']}", None),
        ("PATCH", f"/api/v1/vendor/products/{product['id']}", {"name": "Mine now"}),
        ("PUT", f"/api/v1/vendor/products/{product['id']}/plans", {"plans": catalog_data.plans()}),
        ("POST", f"/api/v1/vendor/products/{product['id']}/retire", None),
    ]:
        response = client.open(url, method=method, json=body, headers=oh)
        assert_problem(response, 404, "not-found")
        assert "Wiki" not in response.get_data(as_text=True)
    assert client.get("/api/v1/vendor/products", headers=oh).get_json()["total"] == 0


@pytest.mark.parametrize(
    ("role", "method", "path", "expected"),
    [
        (None, "GET", "/api/v1/products", 200),
        (None, "GET", "/api/v1/categories", 200),
        (None, "POST", "/api/v1/vendor/products", 401),
        (Role.CUSTOMER, "POST", "/api/v1/vendor/products", 403),
        (Role.VENDOR, "GET", "/api/v1/admin/products", 403),
        (Role.CUSTOMER, "GET", "/api/v1/admin/products", 403),
        (Role.ADMIN, "GET", "/api/v1/admin/products", 200),
        (Role.ADMIN, "GET", "/api/v1/vendor/products", 403),
    ],
)
def test_catalog_role_matrix(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Headers,
    role: Role | None,
    method: str,
    path: str,
    expected: int,
) -> None:
    headers = token_for(make_user(role)) if role else {}
    response = client.open(
        path, method=method, headers=headers, json=catalog_data.product() if method == "POST" else None
    )
    assert response.status_code == expected, response.get_data(as_text=True)


def test_vendor_approving_their_own_product_is_forbidden(
    client: FlaskClient, vendor: User, token_for: Headers
) -> None:
    vh = token_for(vendor)
    product = create(client, vh)
    set_plans(client, vh, product["id"])
    post(client, f"/api/v1/vendor/products/{product['id']}/submit", vh)
    assert_problem(post(client, f"/api/v1/admin/products/{product['id']}/approve", vh), 403, "forbidden")


def test_another_marketplaces_catalog_is_separate(
    client: FlaskClient,
    vendor: User,
    admin: User,
    token_for: Headers,
    make_marketplace: Callable[..., Marketplace],
) -> None:
    publish(client, token_for(vendor), token_for(admin))
    make_marketplace(slug="elsewhere")
    assert client.get("/api/v1/products").get_json()["total"] == 1
    assert client.get("/api/v1/products", base_url="http://elsewhere.test").get_json()["total"] == 0
    assert client.get("/api/v1/products/wiki-server", base_url="http://elsewhere.test").status_code == 404


# ----------------------------------------------------------- what customers see
def test_the_public_catalog_shows_only_published_live_content(
    client: FlaskClient, vendor: User, admin: User, token_for: Headers
) -> None:
    vh, ah = token_for(vendor), token_for(admin)
    publish(client, vh, ah, slug="live", name="Live One", category="web", trial_days=0)
    create(client, vh, slug="drafty", name="Draft One")
    listing = client.get("/api/v1/products").get_json()
    assert [p["slug"] for p in listing["items"]] == ["live"]
    item = listing["items"][0]
    assert item["vendor_name"] and item["name"] == "Live One"
    # Flat 49 a month plus 5 seats at 4.50 (the minimum), the cheapest plan.
    assert item["price_from"] == {"amount": "71.5", "currency": "EUR", "period": "month"}
    assert item["rating"] == {"average": None, "count": 0}
    assert "working_version" not in item and "review_note" not in item
    assert client.get("/api/v1/products?category=web").get_json()["total"] == 1
    assert client.get("/api/v1/products?category=databases").get_json()["total"] == 0
    assert client.get("/api/v1/products?has_trial=true").get_json()["total"] == 0
    assert client.get("/api/v1/products/drafty").status_code == 404


def test_markdown_is_rendered_without_scripts(
    client: FlaskClient, vendor: User, admin: User, token_for: Headers
) -> None:
    evil = (
        "# Title\n\n<script>alert(1)</script>\n\n[click](javascript:alert(1)) **bold** [site](https://x.test)"
    )
    publish(client, token_for(vendor), token_for(admin), long_description=evil)
    html = client.get("/api/v1/products/wiki-server").get_json()["long_description_html"]
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html
    assert "<script" not in html and "&lt;script&gt;" in html  # shown as text, never run
    assert 'href="javascript' not in html
    assert '<a href="https://x.test" rel="noopener noreferrer nofollow">site</a>' in html


def test_approval_is_compare_and_set(
    db_session: Session,
    make_organisation: Callable[..., Organisation],
    make_user: Callable[..., User],
    platform_marketplace: Marketplace,
) -> None:
    """A stale copy of the product cannot approve a second time."""
    vendor_org = make_organisation(OrganisationKind.VENDOR)
    admin = make_user(Role.ADMIN)
    product = service.create_product(
        db_session, platform_marketplace, vendor_org, slug="cas", content=_content()
    )
    service.set_plans(db_session, product, [_plan(FLAT)])
    service.submit(db_session, product)
    service.approve(db_session, product, admin)
    with pytest.raises(InvalidTransition):
        service.approve(db_session, product, admin)


def _content() -> dict[str, Any]:
    body = catalog_data.product()
    body.pop("slug")
    body["category_slug"] = body.pop("category")
    return body


def test_the_product_name_customers_know(
    client: FlaskClient, vendor: User, admin: User, token_for: Headers, db_session: Session
) -> None:
    """Notifications, invoices and pages name a product by its live version, else by the
    version being written, and say "your product" for one that is gone."""
    vendor_h = token_for(vendor)
    draft = create(client, vendor_h, slug="draft-only", name="Only A Draft")
    published = publish(client, vendor_h, token_for(admin))
    assert service.product_name(db_session, uuid.UUID(draft["id"])) == "Only A Draft"
    assert service.product_name(db_session, uuid.UUID(published["id"])) == "Wiki Server"
    assert service.product_name(db_session, uuid.uuid4()) == "your product"
