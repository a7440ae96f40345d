"""A stand-in for HubSpot's CRM API on 127.0.0.1, for the CRM sync tests.

It answers the calls Mercato makes, and checks each request against HubSpot's documented
request shapes (developers.hubspot.com, CRM API v3 objects and v4 associations): a bearer
token, JSON bodies, ``properties`` as a map of property names to string values, batch
upsert ``inputs`` with ``idProperty``/``id``, deal ``associations`` with ``to.id`` and
``types`` of ``associationCategory``/``associationTypeId``. A request of another shape gets
HubSpot's 400 ``VALIDATION_ERROR``; ``fail(n, status)`` makes the next n calls fail.
"""

from __future__ import annotations

import http.server
import itertools
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

TOKEN = "pat-test-hubspot-token"
CATEGORIES = {"HUBSPOT_DEFINED", "USER_DEFINED", "INTEGRATOR_DEFINED"}


class Invalid(Exception):
    pass


def _properties(body: Any, required: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
        raise Invalid("expected an object with 'properties'")
    properties = body["properties"]
    for name, value in properties.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise Invalid(f"Property {name!r} does not exist")
        if not isinstance(value, str):
            raise Invalid(f"Property values must be strings: {name}={value!r}")
    missing = [r for r in required if not properties.get(r)]
    if missing:
        raise Invalid(f"missing required properties: {missing}")
    return properties


@dataclass
class FakeHubSpot:
    objects: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {"companies": {}, "contacts": {}, "deals": {}}
    )
    associations: set[tuple[str, str, str, str, int]] = field(default_factory=set)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1001))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, times: int, status: int = 503) -> None:
        with self._lock:
            self.failures = [status] * times

    def handle(self, method: str, path: str, headers: Any, raw: bytes) -> tuple[int, Any]:
        with self._lock:
            body = json.loads(raw) if raw else None
            self.calls.append((method, path, body))
            if headers.get("Authorization") != f"Bearer {TOKEN}":
                return 401, {"status": "error", "category": "INVALID_AUTHENTICATION", "message": "bad token"}
            if self.failures:
                return self.failures.pop(0), {
                    "status": "error",
                    "category": "RATE_LIMITS",
                    "message": "try later",
                }
            if raw and headers.get("Content-Type", "").split(";")[0] != "application/json":
                return 415, {"status": "error", "message": "Content-Type must be application/json"}
            try:
                return self._route(method, path, body)
            except Invalid as exc:
                return 400, {"status": "error", "category": "VALIDATION_ERROR", "message": str(exc)}

    def _new(self, kind: str, properties: dict[str, str]) -> dict[str, Any]:
        made = {"id": str(next(self._ids)), "properties": dict(properties), "archived": False}
        self.objects[kind][made["id"]] = made
        return made

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "POST" and path in ("/crm/v3/objects/companies", "/crm/v3/objects/deals"):
            kind = path.rsplit("/", 1)[1]
            properties = _properties(
                body, ("name",) if kind == "companies" else ("dealname", "pipeline", "dealstage")
            )
            made = self._new(kind, properties)
            for association in body.get("associations", []):
                target, types = association.get("to", {}).get("id"), association.get("types")
                if not target or not isinstance(types, list) or not types:
                    raise Invalid("associations need 'to.id' and 'types'")
                for kind_of in types:
                    if kind_of.get("associationCategory") not in CATEGORIES or not isinstance(
                        kind_of.get("associationTypeId"), int
                    ):
                        raise Invalid(f"bad association type {kind_of}")
                    self.associations.add(
                        ("deal", made["id"], "?", str(target), kind_of["associationTypeId"])
                    )
            return 201, made
        if method == "PATCH" and (match := re.fullmatch(r"/crm/v3/objects/(companies|deals)/(\d+)", path)):
            found = self.objects[match[1]].get(match[2])
            if found is None:
                return 404, {"status": "error", "category": "OBJECT_NOT_FOUND", "message": "not found"}
            found["properties"].update(_properties(body, ()))
            return 200, found
        if method == "POST" and path == "/crm/v3/objects/contacts/batch/upsert":
            inputs = body.get("inputs") if isinstance(body, dict) else None
            if not isinstance(inputs, list) or not inputs:
                raise Invalid("expected 'inputs'")
            results = []
            for item in inputs:
                if item.get("idProperty") != "email" or not item.get("id"):
                    raise Invalid("contacts are upserted by 'email': give idProperty and id")
                properties = _properties(item, ("email",))
                existing = next(
                    (c for c in self.objects["contacts"].values() if c["properties"]["email"] == item["id"]),
                    None,
                )
                if existing is None:
                    existing = self._new("contacts", properties)
                else:
                    existing["properties"].update(properties)
                results.append(existing)
            return 200, {"status": "COMPLETE", "results": results}
        if method == "PUT" and (
            match := re.fullmatch(r"/crm/v4/objects/contact/(\d+)/associations/default/company/(\d+)", path)
        ):
            if match[1] not in self.objects["contacts"] or match[2] not in self.objects["companies"]:
                return 404, {"status": "error", "category": "OBJECT_NOT_FOUND", "message": "not found"}
            self.associations.add(("contact", match[1], "company", match[2], 279))
            return 200, {"status": "COMPLETE", "results": []}
        return 404, {
            "status": "error",
            "category": "OBJECT_NOT_FOUND",
            "message": f"no route {method} {path}",
        }


class _Server:
    def __init__(self, fake: FakeHubSpot) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = fake.handle(self.command, self.path, self.headers, raw)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hubspot() -> Iterator[tuple[FakeHubSpot, str]]:
    """A fresh stand-in HubSpot and its base URL."""
    fake = FakeHubSpot()
    server = _Server(fake)
    try:
        yield fake, server.url
    finally:
        server.server.shutdown()
        server.server.server_close()
