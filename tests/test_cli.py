"""The `flask mercato` commands: create-admin and demo-data."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw import demo
from cmw.accounts.models import Membership, Role, User


def test_create_admin_makes_a_platform_admin_who_can_sign_in(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=[
            "mercato",
            "create-admin",
            "--email",
            "Root@Example.test",
            "--name",
            "Root",
            "--password",
            "a-long-admin-pass",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "root@example.test is a platform administrator" in result.output
    signed_in = client.post(
        "/api/v1/session", json={"email": "root@example.test", "password": "a-long-admin-pass"}
    )
    assert signed_in.status_code == 200
    assert signed_in.get_json()["roles"] == ["admin"]


def test_create_admin_refuses_a_weak_password(app: Flask, db_session: Session) -> None:
    result = app.test_cli_runner().invoke(
        args=["mercato", "create-admin", "--email", "weak@example.test", "--name", "W", "--password", "short"]
    )
    assert result.exit_code != 0
    assert "at least 10 characters" in result.output
    assert db_session.scalar(sa.select(User).where(User.email == "weak@example.test")) is None


def test_demo_data_loads_once(app: Flask, db_session: Session) -> None:
    runner = app.test_cli_runner()
    first = runner.invoke(args=["mercato", "demo-data"])
    assert first.exit_code == 0 and "demo data loaded" in first.output
    users = db_session.scalar(sa.select(sa.func.count()).select_from(User))
    second = runner.invoke(args=["mercato", "demo-data"])
    assert "already present" in second.output
    assert db_session.scalar(sa.select(sa.func.count()).select_from(User)) == users
    for login in demo.LOGINS:
        assert login.email in first.output
        roles = db_session.scalars(
            sa.select(Membership.role).join(User).where(User.email == login.email)
        ).all()
        assert roles == [Role(login.role)]


def test_demo_data_has_a_believable_catalog(app: Flask, client: FlaskClient, db_session: Session) -> None:
    assert app.test_cli_runner().invoke(args=["mercato", "demo-data"]).exit_code == 0
    listing = client.get("/api/v1/products?per_page=50").get_json()
    assert listing["total"] == 12
    assert all(
        p["logo"] is not None and p["logo"]["background_colour"].startswith("#") for p in listing["items"]
    )
    assert client.get(listing["items"][0]["logo"]["urls"]["thumb"]).status_code == 200
    kinds, models = set(), set()
    for card in listing["items"]:
        for plan in client.get(f"/api/v1/products/{card['slug']}").get_json()["plans"]:
            for component in plan["components"]:
                kinds.add(component["kind"])
                models.add(component["pricing_model"])
    assert kinds == {"flat", "setup", "per_unit", "metered"}
    assert {"per_unit", "graduated", "volume"} <= models
    rated = [p for p in listing["items"] if p["rating"]["count"]]
    assert rated and all(1 <= p["rating"]["average"] <= 5 for p in rated)
