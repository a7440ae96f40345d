"""Cost estimates before ordering: the API and the product page's estimator, worked by
hand from tests.catalog_data's plans."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient


def _estimate(client: FlaskClient, **body: Any) -> Any:
    return client.post("/api/v1/cost-estimates", json=body)


def test_a_monthly_plan_with_seats_and_tiered_usage(client: FlaskClient, shop: dict[str, Any]) -> None:
    response = _estimate(
        client,
        items=[
            {
                "product": "wiki-server",
                "plan": "team",
                "quantity": 5,
                "usage": {"bandwidth.gb": "1100", "cpu.hours": "600"},
            }
        ],
        months=12,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    (item,) = body["items"]
    amounts = {line["label"]: line["amount"] for line in item["lines"]}
    assert amounts == {
        "Base fee": "588",  # 49 a month for 12 months
        "Setup": "99",  # once
        "Seats": "270",  # 5 x 4.50 x 12
        "Traffic": "960",  # (1100 - 100 included) GB, all in the first graduated tier at 0.08, x 12
        "CPU": "108",  # 600 hours: the volume tier above 500, 0.015 each, x 12
    }
    assert body["total"] == "2025" and body["setup_total"] == "99"
    assert body["monthly"] == "160.5"  # (588 + 270 + 960 + 108) / 12
    assert body["currency"] == "EUR"


def test_a_yearly_plan_is_rated_per_year(client: FlaskClient, shop: dict[str, Any]) -> None:
    body = _estimate(
        client,
        items=[{"product": "wiki-server", "plan": "enterprise", "usage": {"storage.gb_month": "1000"}}],
        months=18,
    ).get_json()
    (item,) = body["items"]
    # 18 months are two yearly periods; storage is 12,000 GB-months a year at 0.021
    assert {line["label"]: line["amount"] for line in item["lines"]} == {"Storage": "504", "Licence": "9980"}
    assert body["total"] == "10484" and body["monthly"] == "436.83"  # 10484 / 24, rounded half up


@pytest.mark.parametrize(
    ("items", "months", "field", "message"),
    [
        ([{"product": "nothing-here", "plan": "team"}], 1, "items.0.product", "not in this catalog"),
        ([{"product": "wiki-server", "plan": "gold"}], 1, "items.0.plan", "sells team, enterprise"),
        ([{"product": "wiki-server", "plan": "team", "usage": {"gpu.hours": "1"}}], 1, "usage", "gpu.hours"),
        (
            [{"product": "wiki-server", "plan": "team", "quantity": 5, "usage": {"cpu.hours": "-1"}}],
            1,
            "usage.cpu.hours",
            "negative",
        ),
    ],
)
def test_bad_estimates_say_what_is_wrong(
    client: FlaskClient,
    shop: dict[str, Any],
    items: list[dict[str, Any]],
    months: int,
    field: str,
    message: str,
) -> None:
    response = _estimate(client, items=items, months=months)
    assert response.status_code == 422, response.get_data(as_text=True)
    errors = {e["field"]: e["message"] for e in response.get_json()["errors"]}
    assert message in errors[field]


def test_malformed_estimates_are_refused_by_the_schema(client: FlaskClient, shop: dict[str, Any]) -> None:
    for body in (
        {"items": [], "months": 1},
        {"items": [{"product": "wiki-server", "plan": "team"}], "months": 0},
        {"items": [{"product": "wiki-server", "plan": "team", "usage": {"cpu.hours": 1.5}}]},
    ):
        assert _estimate(client, **body).status_code == 422, body


def test_the_product_page_estimator(client: FlaskClient, shop: dict[str, Any]) -> None:
    assert 'href="/products/wiki-server/estimate"' in client.get("/products/wiki-server").get_data(
        as_text=True
    )
    page = client.get(
        "/products/wiki-server/estimate?plan=team&quantity=5&months=12&u.bandwidth.gb=1100&u.cpu.hours=600"
    )
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "About 160.50 EUR a month" in html and "2,025.00 EUR" in html
    assert 'value="1100"' in html  # the form keeps what was typed

    bad = client.get("/products/wiki-server/estimate?plan=team&quantity=5&months=500&u.cpu.hours=lots")
    html = bad.get_data(as_text=True)
    assert bad.status_code == 422
    assert 'id="est-months-error">a whole number from 1 to 120' in html
    assert "is not a number" in html
    assert client.get("/products/nothing-here/estimate").status_code == 404
