"""The vendors' product editor, through the pages: details with errors next to their fields
and a description preview, logo and screenshots, plans and deployment targets checked like
the API checks them, submitting and withdrawing, and who may open it."""

from __future__ import annotations

import html as html_lib
import io
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy.orm import Session

from cmw.accounts.models import Role, User
from deployer import service as deployments
from marketplace.forms import COMPONENT_ROWS
from tests.conftest import PASSWORD as DEFAULT_PASSWORD
from tests.test_orders import order
from tests.test_pages_storefront import _csrf, _signed_in

PASSWORD = "a-long-password-1"


def png(colour: tuple[int, int, int] = (20, 90, 200), size: tuple[int, int] = (256, 256)) -> bytes:
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (size[0] // 2, size[1] // 2), (*colour, 255)), (size[0] // 4, size[1] // 4))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def vendor(make_user: Callable[..., User]) -> User:
    return make_user(Role.VENDOR, password=PASSWORD)


@pytest.fixture
def browser(app: Flask, client: FlaskClient, vendor: User) -> FlaskClient:
    _signed_in(client, vendor)
    return client


def _field_error(html: str, field_id: str) -> str:
    match = re.search(rf'<span class="field-error" id="{re.escape(field_id)}-error">([^<]*)</span>', html)
    assert match, f"no error shown next to {field_id}"
    return html_lib.unescape(match.group(1))


DETAILS = {
    "name": "Team Wiki",
    "slug": "team-wiki",
    "product_type": "vm_app",
    "category": "collaboration",
    "short_description": "A wiki for teams.",
    "long_description": "Fast and **simple**.",
    "tags": "wiki, Docs",
    "trial_days": "14",
    "website": "https://wiki.example.test",
    "support_email": "help@wiki.example.test",
}


def _create(browser: FlaskClient, **changes: str) -> Any:
    form = browser.get("/vendor/products/new").get_data(as_text=True)
    return browser.post("/vendor/products/new", data={**DETAILS, **changes, "csrf_token": _csrf(form)})


def _editor_url(created: Any) -> str:
    assert created.status_code == 302, created.get_data(as_text=True)
    return str(created.headers["Location"])


def test_a_new_product_shows_each_error_next_to_its_field(browser: FlaskClient) -> None:
    refused = _create(browser, slug="Not A Slug", website="not-a-url", category="no-such-thing")
    html = refused.get_data(as_text=True)
    assert refused.status_code == 422
    assert "Not a valid choice" in _field_error(html, "category")
    assert "URL" in _field_error(html, "website")
    assert 'aria-invalid="true"' in html and "Some values need your attention" in html
    # the values typed are kept
    assert 'value="Team Wiki"' in html

    taken = _editor_url(_create(browser))
    assert taken.startswith("/vendor/products/")
    editor = browser.get(taken).get_data(as_text=True)
    assert "team-wiki is created as a draft" in editor
    assert "No logo yet" in editor and "No plans yet" in editor and "Not deployable yet" in editor

    again = _create(browser)
    assert again.status_code == 422
    assert "'team-wiki' is taken" in _field_error(again.get_data(as_text=True), "slug")


def test_the_description_preview_renders_without_saving(browser: FlaskClient) -> None:
    url = _editor_url(_create(browser))
    page = browser.get(url).get_data(as_text=True)
    previewed = browser.post(
        url,
        data={**DETAILS, "long_description": "New *text*", "preview": "1", "csrf_token": _csrf(page)},
    )
    html = previewed.get_data(as_text=True)
    assert previewed.status_code == 200
    assert "Preview of the description" in html and "<em>text</em>" in html
    # the draft still has the old text until saved
    assert "Fast and **simple**." in browser.get(url).get_data(as_text=True)

    saved = browser.post(url, data={**DETAILS, "name": "Team Wiki 2", "csrf_token": _csrf(page)})
    assert saved.status_code == 302
    assert "<h1>Team Wiki 2</h1>" in browser.get(url).get_data(as_text=True)


def test_the_logo_shows_its_computed_background_and_bad_images_are_refused(browser: FlaskClient) -> None:
    url = _editor_url(_create(browser))
    token = _csrf(browser.get(url).get_data(as_text=True))
    refused = browser.post(
        f"{url}/logo", data={"csrf_token": token, "file": (io.BytesIO(b"not an image"), "logo.png")}
    )
    assert refused.status_code == 302
    assert "That image cannot be used" in browser.get(url).get_data(as_text=True)

    uploaded = browser.post(
        f"{url}/logo", data={"csrf_token": token, "file": (io.BytesIO(png()), "logo.png")}
    )
    assert uploaded.status_code == 302
    html = browser.get(url).get_data(as_text=True)
    colour = re.search(r'class="logo large" style="background: (#[0-9a-f]{6})"', html)
    assert colour, html
    assert f"Shown on <strong>{colour.group(1)}</strong>" in html and "256\u00d7256 pixels" in html

    shot = browser.post(
        f"{url}/screenshots", data={"csrf_token": token, "file": (io.BytesIO(png(size=(640, 400))), "s.png")}
    )
    assert shot.status_code == 302
    html = browser.get(url).get_data(as_text=True)
    assert 'alt="Screenshot 1"' in html
    remove = re.search(r'action="([^"]+/remove)"', html)
    assert remove
    browser.post(remove.group(1), data={"csrf_token": token})
    assert "No screenshots yet" in browser.get(url).get_data(as_text=True)


def _plan_form(**rows: dict[str, str]) -> dict[str, str]:
    """The plan form as a browser posts it: every row, the unused ones with no kind."""
    data = {"name": "Team", "code": "team", "currency": "eur", "billing_period": "month", "description": ""}
    for row in range(COMPONENT_ROWS):
        data[f"components-{row}-kind"] = ""
    for row, values in rows.items():
        for key, value in values.items():
            data[f"components-{row[-1]}-{key}"] = value
    return data


def test_plans_are_checked_like_the_api_and_errors_land_on_their_row(
    browser: FlaskClient, client: FlaskClient, vendor: User, token_for: Callable[..., dict[str, str]]
) -> None:
    url = _editor_url(_create(browser))
    token = _csrf(browser.get(f"{url}/plans/new").get_data(as_text=True))

    # a setup fee without a price, on the third row (rows 0 and 1 left unused)
    refused = browser.post(
        f"{url}/plans/new",
        data={
            **_plan_form(
                row2={"kind": "setup", "label": "Setup"},
                row3={"kind": "flat", "label": "Base", "unit_price": "12.5"},
            ),
            "csrf_token": token,
        },
    )
    html = refused.get_data(as_text=True)
    assert refused.status_code == 422
    assert "needs a price" in _field_error(html, "components-2-unit_price")

    # tiers that cannot be read, and a float-looking price with letters
    refused = browser.post(
        f"{url}/plans/new",
        data={
            **_plan_form(
                row0={"kind": "flat", "label": "Base", "unit_price": "ten"},
                row1={"kind": "metered", "label": "Traffic", "metric": "bandwidth.gb", "unit": "GB",
                      "pricing_model": "graduated", "tiers": "lots"},
            ),
            "csrf_token": token,
        },
    )  # fmt: skip
    html = refused.get_data(as_text=True)
    assert refused.status_code == 422
    assert "'ten' is not a number" in _field_error(html, "components-0-unit_price")
    assert "write each tier" in _field_error(html, "components-1-tiers")

    saved = browser.post(
        f"{url}/plans/new",
        data={
            **_plan_form(
                row0={"kind": "flat", "label": "Base", "unit_price": "12.50"},
                row1={"kind": "metered", "label": "Traffic", "metric": "bandwidth.gb", "unit": "GB",
                      "pricing_model": "graduated", "included_quantity": "10",
                      "tiers": "0-100: 0.10\n100-: 0.05 + 1"},
            ),
            "csrf_token": token,
        },
    )  # fmt: skip
    assert saved.status_code == 302, saved.get_data(as_text=True)
    product_id = url.rsplit("/", 1)[1]
    api = client.get(f"/api/v1/vendor/products/{product_id}", headers=token_for(vendor)).get_json()
    (plan,) = api["working_version"]["plans"]
    assert plan["currency"] == "EUR"
    base, traffic = plan["components"]
    assert base["unit_price"] == "12.5"
    assert traffic["tiers"] == [
        {"from": "0", "up_to": "100", "unit_price": "0.1", "flat_fee": "0"},
        {"from": "100", "up_to": None, "unit_price": "0.05", "flat_fee": "1"},
    ]
    assert traffic["included_quantity"] == "10"

    # the plan form opens filled in, and a second plan keeps the first
    edit = browser.get(f"{url}/plans/team").get_data(as_text=True)
    assert 'value="12.5"' in edit and "100-: 0.05 + 1" in edit
    browser.post(
        f"{url}/plans/new",
        data={
            **_plan_form(row0={"kind": "flat", "label": "Base", "unit_price": "99"}),
            "code": "big",
            "name": "Big",
            "csrf_token": token,
        },
    )
    duplicate = browser.post(
        f"{url}/plans/big",
        data={**_plan_form(row0={"kind": "flat", "label": "Base", "unit_price": "99"}), "csrf_token": token},
    )
    assert duplicate.status_code == 422
    assert "used by another plan" in _field_error(duplicate.get_data(as_text=True), "code")
    editor = browser.get(url).get_data(as_text=True)
    assert "Team" in editor and "Big" in editor and "99.00 EUR a month" in editor

    browser.post(f"{url}/plans/team/remove", data={"csrf_token": token})
    api = client.get(f"/api/v1/vendor/products/{product_id}", headers=token_for(vendor)).get_json()
    assert [p["code"] for p in api["working_version"]["plans"]] == ["big"]


TARGET = {
    "cloud_account": "page-cloud",
    "region": "",
    "image": "ami-123",
    "cores": "2",
    "ram_mib": "4096",
    "root_disk_gib": "20",
    "data_disk_gib": "10",
    "inbound_ports": "443, 22/tcp from 198.51.100.0/24",
    "setup_script": "#!/bin/sh\necho ready\n",
    "app_url_template": "https://{ip}/",
    "default_login": "admin",
}


def test_deployment_targets_are_checked_and_saved(
    app: Flask, browser: FlaskClient, db_session: Session, client: FlaskClient, vendor: User,
    token_for: Callable[..., dict[str, str]],
) -> None:  # fmt: skip
    deployments.create_cloud_account(
        db_session,
        app.extensions["mercato.sealer"],
        deployments.CloudAccountInput(slug="page-cloud", name="Page cloud", provider="dummy", credentials={}),
    )
    db_session.commit()
    url = _editor_url(_create(browser))
    page = browser.get(f"{url}/targets/new").get_data(as_text=True)
    assert "Page cloud (page-cloud)" in page
    token = _csrf(page)

    refused = browser.post(
        f"{url}/targets/new",
        data={
            **TARGET,
            "inbound_ports": "http",
            "app_url_template": "ftp://x",
            "cores": "0",
            "csrf_token": token,
        },
    )
    html = refused.get_data(as_text=True)
    assert refused.status_code == 422
    assert "write ports like" in _field_error(html, "inbound_ports")
    assert _field_error(html, "cores")
    # an application needs its data disk: the catalog service's rule, on its field
    refused = browser.post(f"{url}/targets/new", data={**TARGET, "data_disk_gib": "", "csrf_token": token})
    assert "needs a data disk" in _field_error(refused.get_data(as_text=True), "data_disk_gib")

    saved = browser.post(f"{url}/targets/new", data={**TARGET, "csrf_token": token})
    assert saved.status_code == 302, saved.get_data(as_text=True)
    product_id = url.rsplit("/", 1)[1]
    api = client.get(f"/api/v1/vendor/products/{product_id}", headers=token_for(vendor)).get_json()
    (target,) = api["working_version"]["deployment"]
    assert target["size"] == {"cores": 2, "ram_mib": 4096, "root_disk_gib": 20}
    assert target["inbound_ports"] == [
        {"port": 443, "protocol": "tcp", "cidr": "0.0.0.0/0"},
        {"port": 22, "protocol": "tcp", "cidr": "198.51.100.0/24"},
    ]
    edit = browser.get(f"{url}/targets/0").get_data(as_text=True)
    assert 'value="443/tcp, 22/tcp from 198.51.100.0/24"' in edit

    # with a plan it can be submitted; in review it cannot be changed until withdrawn
    browser.post(
        f"{url}/plans/new",
        data={**_plan_form(row0={"kind": "flat", "label": "Base", "unit_price": "9"}), "csrf_token": token},
    )
    submitted = browser.post(f"{url}/submit", data={"csrf_token": token})
    assert submitted.status_code == 302
    locked = browser.get(url).get_data(as_text=True)
    assert "waiting for an administrator's review" in locked and "<fieldset disabled>" in locked
    assert "Add a plan" not in locked
    refused = browser.post(f"{url}/targets/new", data={**TARGET, "region": "eu", "csrf_token": token})
    assert refused.status_code == 422
    browser.post(f"{url}/withdraw", data={"csrf_token": token})
    assert "is withdrawn" in browser.get(url).get_data(as_text=True)


def test_only_the_products_vendor_opens_the_editor(
    app: Flask, browser: FlaskClient, make_user: Callable[..., User]
) -> None:
    url = _editor_url(_create(browser))
    assert browser.post(url, data=DETAILS).status_code == 400  # no CSRF token

    other = app.test_client()
    _signed_in(other, make_user(Role.VENDOR, password=PASSWORD))
    assert other.get(url).status_code == 404
    assert other.get(f"{url}/plans/new").status_code == 404
    customer = app.test_client()
    _signed_in(customer, make_user(Role.CUSTOMER, password=PASSWORD))
    assert customer.get(url).status_code == 403
    anonymous = app.test_client().get(url)
    assert anonymous.status_code == 302 and "/sign-in" in anonymous.headers["Location"]


def test_the_sales_page_lists_customers_orders_and_instances(
    app: Flask, client: FlaskClient, make_user: Callable[..., User], token_for: Callable[..., dict[str, str]],
    shop: dict[str, Any],
) -> None:  # fmt: skip
    buyer = make_user(Role.CUSTOMER, password=PASSWORD)
    placed = order(client, token_for(buyer), quantity=6)
    assert placed.status_code == 201, placed.get_data(as_text=True)
    seller = app.test_client()
    signed = seller.post(
        "/api/v1/session", json={"email": shop["vendor"].email, "password": DEFAULT_PASSWORD}
    )
    assert signed.status_code == 200
    page = seller.get("/vendor/sales").get_data(as_text=True)
    assert "<strong>1</strong> active" in page
    assert re.search(r"<th scope=\"row\">[^<]+</th>\s*<td>Wiki Server · Team \u00d7 6</td>", page)
    assert re.search(r"<td>Wiki Server · Team</td><td>purchase</td><td>confirmed</td>", page)

    other = app.test_client()
    _signed_in(other, make_user(Role.VENDOR, password=PASSWORD))
    assert "No customer yet" in other.get("/vendor/sales").get_data(as_text=True)
