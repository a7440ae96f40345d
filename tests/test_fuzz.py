"""API fuzzing (issue 13): schemathesis against the OpenAPI document of the app served on
loopback (PostgreSQL, RabbitMQ), authenticated as each role in turn, on the demo data
with an order and its running instance, so lists and objects have something in them.

Every response must be no 5xx and match the document: a documented status code, content
type, headers and body. ``make test`` runs a few examples per operation
(``MERCATO_FUZZ_EXAMPLES``, default 5); ``make fuzz`` runs 200, and the coverage phase.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from cmw import demo
from cmw.accounts import service as accounts
from cmw.assets.api import storage
from cmw.events.consumer import Event
from cmw.events.models import OutboxEvent
from cmw.marketplaces.service import platform
from deployer.consumer import DeploymentRequests
from deployer.engine import Engine

EXAMPLES = int(os.environ.get("MERCATO_FUZZ_EXAMPLES", "5"))
#: ``make fuzz`` adds schemathesis's coverage phase (boundary and invalid values of each
#: parameter, a few thousand requests per role)
PHASES = os.environ.get("MERCATO_FUZZ_PHASES", "examples,fuzzing")
#: operations that end the fuzzer's own identity (its token revoked, itself erased): each
#: has its own tests
EXCLUDED = ("/api/v1/me/tokens/{token_id}", "/api/v1/me/erasure")
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)
ST = Path(sys.executable).parent / "st"
#: what a run's summary says of its test cases
SUMMARY = re.compile(r"^\s*(\d+) generated, (.*)$", re.MULTILINE)


@pytest.fixture
def tokens(app: Flask, committed_db: sessionmaker[Session]) -> dict[str, str]:
    """The demo loaded, a customer's order deployed on the dummy cloud; an API token per
    role (the demo's admin, a vendor, a customer)."""
    with app.app_context(), committed_db() as session:
        demo.load(session, storage(), app.extensions["mercato.sealer"])
        session.commit()
        found = {}
        for login in (demo.LOGINS[0], demo.LOGINS[1], demo.LOGINS[3]):
            user = accounts.find_user(session, login.email)
            assert user is not None
            _token, plaintext = accounts.create_token(
                session, user, platform(session), name="fuzz", expires_at=None
            )
            found[login.role] = plaintext
        session.commit()
    client = app.test_client()
    catalog = client.get("/api/v1/products?per_page=1").get_json()
    product = client.get(f"/api/v1/products/{catalog['items'][0]['slug']}").get_json()
    placed = client.post(
        "/api/v1/orders",
        json={"product": product["slug"], "plan": product["plans"][0]["code"], "quantity": 1},
        headers={"Authorization": f"Bearer {found['customer']}", "Idempotency-Key": "fuzz-order"},
    )
    assert placed.status_code == 201, placed.get_data(as_text=True)
    with app.app_context(), committed_db() as session:
        consumer = DeploymentRequests()
        for row in session.scalars(sa.select(OutboxEvent).where(OutboxEvent.topic == "deployment.requested")):
            consumer.handle(session, Event(str(row.id), row.topic, row.payload, row.marketplace_id))
        session.commit()
    engine = Engine(committed_db, app.extensions["mercato.sealer"], base_delay=0.01, poll_seconds=0.01)
    assert engine.run_until_idle(500) < 500
    return found


def fuzz(base_url: str, token: str, report: Path) -> tuple[int, str]:
    result = subprocess.run(
        [
            str(ST), "run", f"{base_url}/api/v1/openapi.json",
            "--header", f"Authorization: Bearer {token}",
            "--max-examples", str(EXAMPLES),
            "--phases", PHASES,
            *[arg for path in EXCLUDED for arg in ("--exclude-path", path)],
            "--checks", CHECKS,
            "--continue-on-failure",
            "--workers", "2",
            "--seed", "2026",
            "--generation-database", "none",
            "--no-color",
            "--report", "junit", "--report-junit-path", str(report),
        ],
        capture_output=True, text=True, timeout=3600, env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        cwd=report.parent,  # schemathesis keeps its cache in the working directory
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def test_no_operation_answers_5xx_or_outside_the_document_for_any_role(
    live_server: str, tokens: dict[str, str], tmp_path: Path, capsys: Any
) -> None:
    outcomes = {}
    for role, token in tokens.items():
        code, output = fuzz(live_server, token, tmp_path / f"{role}.xml")
        summary = SUMMARY.search(output)
        outcomes[role] = (code, summary.group(0).strip() if summary else "no summary", output)
    with capsys.disabled():
        for role, (_code, said, _output) in outcomes.items():
            print(f"\nfuzz as {role}: {said} ({EXAMPLES} examples per operation)")
    for role, (code, _said, output) in outcomes.items():
        assert code == 0 and "passed" in _said, f"fuzzing as {role} found failures:\n{output[-20000:]}"
