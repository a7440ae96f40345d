"""A real OpenID Connect server with Keycloak's URL layout, for the single sign-on tests.

``tests/oidc/server.mjs`` runs the npm package oidc-provider (OpenID Certified) under
``/realms/{realm}``, with Keycloak's routes, login form and the admin REST endpoints
python-keycloak calls. ``make test`` installs it from ``tests/oidc/package-lock.json``.
The session-scoped ``oidc_server`` fixture starts it on a free loopback port.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests

HERE = Path(__file__).resolve().parent / "oidc"
REALM = "mercato"
CLIENT_ID = "mercato-web"
CLIENT_SECRET = "mercato-web-secret"
OTHER_CLIENT_ID = "other-app"
OTHER_CLIENT_SECRET = "other-app-secret"
ROLES = ["mercato-admin", "mercato-vendor", "mercato-customer", "offline_access"]
START_TIMEOUT = 15.0


@dataclass
class OidcServer:
    base: str
    process: subprocess.Popen[str]

    def issuer(self, realm: str = REALM) -> str:
        return f"{self.base}/realms/{realm}"

    def control(self, action: str, body: dict[str, Any] | None = None, realm: str = REALM) -> Any:
        response = requests.post(f"{self.base}/_control/realms/{realm}/{action}", json=body or {}, timeout=10)
        response.raise_for_status()
        return response.json()

    def add_user(self, roles: list[str], *, password: str = "kc-password-1", **fields: Any) -> dict[str, Any]:
        """A new user of the realm (unique name unless given) with ``roles``."""
        name = fields.pop("username", None) or f"user-{secrets.token_hex(4)}"
        user: dict[str, Any] = self.control(
            "user",
            {
                "username": name,
                "email": f"{name}@example.test",
                "password": password,
                "roles": roles,
                **fields,
            },
        )
        user["password"] = password
        return user

    def user(self, user_id: str) -> dict[str, Any]:
        found: dict[str, Any] = next(u for u in self.control("users") if u["id"] == user_id)
        return found

    def find_user(self, email: str) -> dict[str, Any] | None:
        return next((u for u in self.control("users") if u["email"] == email), None)

    def set_client(self, **client: Any) -> None:
        self.control(
            "client", {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "admin": True, **client}
        )

    def sign(self, claims: dict[str, Any]) -> str:
        token: str = self.control("sign", {"claims": claims})["access_token"]
        return token

    def code_flow(self, username: str, password: str, redirect_uri: str) -> dict[str, Any]:
        """Sign in at the login form as a browser would (no browser), and exchange the code."""
        http = requests.Session()
        state, nonce = secrets.token_urlsafe(8), secrets.token_urlsafe(8)
        response = http.get(
            f"{self.issuer()}/protocol/openid-connect/auth",
            params={
                "client_id": CLIENT_ID,
                "response_type": "code",
                "scope": "openid email profile",
                "redirect_uri": redirect_uri,
                "state": state,
                "nonce": nonce,
            },
            timeout=10,
        )
        action = re.search(r'<form id="kc-form-login" method="post" action="([^"]+)"', response.text)
        assert action, response.text
        url = urljoin(self.base, action.group(1).replace("&amp;", "&"))
        response = http.post(url, data={"username": username, "password": password}, allow_redirects=False)
        while response.is_redirect and not response.headers["Location"].startswith(redirect_uri):
            response = http.get(urljoin(url, response.headers["Location"]), allow_redirects=False, timeout=10)
        query = parse_qs(urlsplit(response.headers["Location"]).query)
        assert query["state"] == [state], query
        tokens = http.post(
            f"{self.issuer()}/protocol/openid-connect/token",
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": redirect_uri,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
            timeout=10,
        )
        tokens.raise_for_status()
        answer: dict[str, Any] = tokens.json()
        return answer


@pytest.fixture(scope="session")
def oidc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcServer]:
    node = shutil.which("node")
    if node is None or not (HERE / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(
            "The OpenID Connect test server needs Node.js and its packages: run `make test` "
            "(or `npm ci` in tests/oidc).",
            pytrace=False,
        )
    spec = {
        "realms": {
            REALM: {
                "roles": ROLES,
                "clients": [
                    {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "admin": True},
                    {"client_id": OTHER_CLIENT_ID, "client_secret": OTHER_CLIENT_SECRET},
                ],
                "users": [],
            }
        }
    }
    workdir = tmp_path_factory.mktemp("oidc")
    (workdir / "realms.json").write_text(json.dumps(spec))
    log = (workdir / "server.log").open("w")
    process = subprocess.Popen(
        [node, str(HERE / "server.mjs"), str(workdir / "realms.json")],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = process.stdout.readline()
    if not line.startswith("LISTENING") or time.monotonic() > deadline:
        process.kill()
        log.close()
        pytest.fail(f"the OIDC server did not start: {(workdir / 'server.log').read_text()}", pytrace=False)
    server = OidcServer(base=f"http://127.0.0.1:{int(line.split()[1])}", process=process)
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
