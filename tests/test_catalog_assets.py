"""Product logos and screenshots through the API, stored by cassetto: renditions, the
logo's background colour, deduplication, refusals, and serving from both backends."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from app import create_app
from cassetto import contrast_ratio
from cmw.accounts.models import Role, User
from cmw.assets.models import Image, StoredFile
from cmw.config import Config
from tests.catalog_data import create, post, set_plans
from tests.servers import MotoServer
from tests.test_api_foundation import assert_problem

Headers = Callable[..., dict[str, str]]


def png_logo(colour: tuple[int, int, int] = (20, 40, 160), size: int = 256) -> bytes:
    """A filled circle on a transparent background."""
    image = PILImage.new("RGBA", (size, size), (0, 0, 0, 0))
    for x in range(size):
        for y in range(size):
            if (x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 3) ** 2:
                image.putpixel((x, y), (*colour, 255))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def jpeg_screenshot(width: int = 1600, height: int = 1000) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (200, 210, 220)).save(out, "JPEG", quality=80)
    return out.getvalue()


def upload(
    client: FlaskClient,
    url: str,
    data: bytes,
    headers: dict[str, str],
    name: str = "logo.png",
    method: str = "PUT",
) -> Any:
    return client.open(
        url,
        method=method,
        headers=headers,
        data={"file": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )


@pytest.fixture
def vendor(make_user: Callable[..., User]) -> User:
    return make_user(Role.VENDOR)


def test_logo_upload_makes_renditions_and_a_background_colour(
    client: FlaskClient, vendor: User, make_user: Callable[..., User], token_for: Headers, db_session: Session
) -> None:
    vh = token_for(vendor)
    product = create(client, vh)
    response = upload(client, f"/api/v1/vendor/products/{product['id']}/logo", png_logo(), vh)
    assert response.status_code == 200, response.get_data(as_text=True)
    logo = response.get_json()["working_version"]["logo"]
    assert (logo["width"], logo["height"]) == (256, 256)
    assert contrast_ratio(logo["background_colour"], "#1428a0") >= 3.0
    assert set(logo["urls"]) == {"original", "thumb", "card", "large"}

    thumb = client.get(logo["urls"]["thumb"])
    assert thumb.status_code == 200 and thumb.mimetype == "image/webp"
    assert "immutable" in thumb.headers["Cache-Control"]
    assert PILImage.open(io.BytesIO(thumb.data)).size == (160, 160)
    again = client.get(logo["urls"]["thumb"], headers={"If-None-Match": thumb.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    original = client.get(logo["urls"]["original"])
    assert original.mimetype == "image/png" and PILImage.open(io.BytesIO(original.data)).format == "PNG"

    # Published, customers see the logo on the card and the page.
    set_plans(client, vh, product["id"])
    post(client, f"/api/v1/vendor/products/{product['id']}/submit", vh)
    post(client, f"/api/v1/admin/products/{product['id']}/approve", token_for(make_user(Role.ADMIN)))
    card = client.get("/api/v1/products").get_json()["items"][0]
    assert card["logo"]["background_colour"] == logo["background_colour"]
    assert card["logo"]["urls"]["thumb"] == logo["urls"]["thumb"]
    page = client.get("/api/v1/products/wiki-server").get_json()
    assert page["logo"]["urls"] == logo["urls"]


def test_the_same_file_is_stored_once(
    client: FlaskClient, vendor: User, token_for: Headers, db_session: Session
) -> None:
    vh = token_for(vendor)
    first, second = create(client, vh, slug="one"), create(client, vh, slug="two")
    data = png_logo((200, 30, 30))
    upload(client, f"/api/v1/vendor/products/{first['id']}/logo", data, vh)
    files = db_session.scalar(sa.select(sa.func.count()).select_from(StoredFile))
    upload(client, f"/api/v1/vendor/products/{second['id']}/logo", data, vh)
    # original, thumb, and one file for card and large: a 256 px logo fits both boxes
    # unscaled, so those renditions are the same bytes, stored once.
    assert db_session.scalar(sa.select(sa.func.count()).select_from(StoredFile)) == files == 3
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Image)) == 2


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not an image at all", "not an image"),
        (png_logo()[:300], "truncated"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG is not accepted"),
        (b"GIF89a" + b"\x00" * 100, "GIF"),
        (b"\x89PNG" + b"\x00" * (5 * 1024 * 1024 + 10), "too large"),
    ],
)
def test_bad_images_are_422_with_the_reason_and_nothing_is_stored(
    client: FlaskClient, vendor: User, token_for: Headers, db_session: Session, data: bytes, reason: str
) -> None:
    vh = token_for(vendor)
    product = create(client, vh)
    response = upload(client, f"/api/v1/vendor/products/{product['id']}/logo", data, vh)
    body = assert_problem(response, 422, "validation-error")
    assert body["errors"][0]["field"] == "file" and reason in body["errors"][0]["message"], body
    assert db_session.scalar(sa.select(sa.func.count()).select_from(StoredFile)) == 0
    assert (
        client.get(f"/api/v1/vendor/products/{product['id']}", headers=vh).get_json()["working_version"][
            "logo"
        ]
        is None
    )


def test_a_missing_file_field_is_422(client: FlaskClient, vendor: User, token_for: Headers) -> None:
    vh = token_for(vendor)
    product = create(client, vh)
    response = client.put(
        f"/api/v1/vendor/products/{product['id']}/logo",
        headers=vh,
        data={},
        content_type="multipart/form-data",
    )
    assert assert_problem(response, 422, "validation-error")["errors"][0]["field"] == "file"


def test_screenshots_are_added_listed_and_removed(
    client: FlaskClient, vendor: User, token_for: Headers
) -> None:
    vh = token_for(vendor)
    product = create(client, vh)
    url = f"/api/v1/vendor/products/{product['id']}/screenshots"
    added = upload(client, url, jpeg_screenshot(), vh, "shot.jpg", method="POST")
    assert added.status_code == 201
    shots = added.get_json()["working_version"]["screenshots"]
    assert len(shots) == 1 and shots[0]["width"] == 1600
    large = client.get(shots[0]["urls"]["large"])
    assert PILImage.open(io.BytesIO(large.data)).size == (1280, 800)
    removed = client.delete(f"{url}/{shots[0]['id']}", headers=vh)
    assert removed.status_code == 200 and removed.get_json()["working_version"]["screenshots"] == []
    assert_problem(client.delete(f"{url}/{shots[0]['id']}", headers=vh), 404, "not-found")


def test_another_vendor_cannot_upload_to_my_product(
    client: FlaskClient, vendor: User, make_user: Callable[..., User], token_for: Headers
) -> None:
    product = create(client, token_for(vendor))
    other = token_for(make_user(Role.VENDOR))
    assert_problem(
        upload(client, f"/api/v1/vendor/products/{product['id']}/logo", png_logo(), other), 404, "not-found"
    )


def test_unknown_asset_keys_are_404(client: FlaskClient) -> None:
    assert client.get("/assets/sha256/00/00/" + "0" * 64 + ".png").status_code == 404
    assert client.get("/assets/../../etc/passwd").status_code == 404


def test_a_new_revision_keeps_the_logo(
    client: FlaskClient, vendor: User, make_user: Callable[..., User], token_for: Headers
) -> None:
    vh, ah = token_for(vendor), token_for(make_user(Role.ADMIN))
    product = create(client, vh)
    logo = upload(client, f"/api/v1/vendor/products/{product['id']}/logo", png_logo(), vh).get_json()[
        "working_version"
    ]["logo"]
    set_plans(client, vh, product["id"])
    post(client, f"/api/v1/vendor/products/{product['id']}/submit", vh)
    post(client, f"/api/v1/admin/products/{product['id']}/approve", ah)
    edited = client.patch(
        f"/api/v1/vendor/products/{product['id']}", json={"name": "New name"}, headers=vh
    ).get_json()
    assert edited["working_version"]["logo"]["id"] == logo["id"]


def test_on_s3_browsers_get_presigned_urls(
    app: Flask,
    config: Config,
    moto_server: MotoServer,
    db_session: Session,
    make_user: Callable[..., User],
    token_for: Headers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server.secret_access_key)
    bucket = "mercato-assets-test"
    moto_server.boto3_client("s3").create_bucket(Bucket=bucket)
    s3_app = create_app(
        dataclasses.replace(
            config,
            storage_url=f"s3://{bucket}/assets?endpoint_url={moto_server.endpoint_url}&region=us-east-1",
        )
    )
    s3_app.test_client_class = app.test_client_class
    client = s3_app.test_client()
    vh = token_for(make_user(Role.VENDOR))
    product = create(client, vh)
    response = upload(client, f"/api/v1/vendor/products/{product['id']}/logo", png_logo(), vh)
    assert response.status_code == 200, response.get_data(as_text=True)
    urls = response.get_json()["working_version"]["logo"]["urls"]
    assert urls["thumb"].startswith(f"{moto_server.endpoint_url}/{bucket}/assets/sha256/")
    assert "X-Amz-Expires" in urls["thumb"] or "Expires=" in urls["thumb"]
    fetched = requests.get(urls["thumb"], timeout=10)
    assert fetched.status_code == 200 and fetched.headers["Content-Type"] == "image/webp"
    assert "immutable" in fetched.headers.get("Cache-Control", "")
    keys = [o["Key"] for o in moto_server.boto3_client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 3 and all(k.startswith("assets/sha256/") for k in keys)
    stored = db_session.scalars(sa.select(StoredFile.backend)).all()
    assert set(stored) == {"s3"}
