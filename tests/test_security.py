"""Security review (issue 13): the session cookie's flags, a new session at sign-in (no
fixation), signing out everywhere, secrets kept out of logs and answers, rate limits on
sign-in, tokens and ingestion, and Markdown that lets no script through."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import lxml.html
import pytest
from flask import Flask
from flask.testing import FlaskClient
from limits import parse
from sqlalchemy.orm import Session

from cassetto import FileStorage, InvalidKey
from cmw.accounts.models import Role, User
from cmw.assets.models import StoredFile
from cmw.catalog import markdown
from cmw.config import ConfigError
from cmw.ratelimit import RateLimits
from tests.catalog_data import create
from tests.test_catalog_assets import png_logo, upload
from tests.test_pages_storefront import _csrf

PASSWORD = "a-long-password-1"


def sign_in(client: FlaskClient, user: User) -> str:
    """Signed in through the API; the session's CSRF token."""
    response = client.post("/api/v1/session", json={"email": user.email, "password": PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    token: str = response.get_json()["csrf_token"]
    return token


def session_cookie(client: FlaskClient) -> str | None:
    cookie = client.get_cookie("session")
    return cookie.value if cookie else None


def test_the_session_cookie_is_httponly_samesite_and_secure_when_configured(
    app: Flask, make_user: Callable[..., User]
) -> None:
    user = make_user(Role.CUSTOMER, password=PASSWORD)
    response = app.test_client().post("/api/v1/session", json={"email": user.email, "password": PASSWORD})
    header = response.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Secure" not in header
    app.config["SESSION_COOKIE_SECURE"] = True  # MERCATO_SESSION_COOKIE_SECURE=true
    try:
        secure = app.test_client().post("/api/v1/session", json={"email": user.email, "password": PASSWORD})
        assert "Secure" in secure.headers["Set-Cookie"]
    finally:
        app.config["SESSION_COOKIE_SECURE"] = False


def test_signing_in_starts_a_new_session(app: Flask, make_user: Callable[..., User]) -> None:
    user = make_user(Role.CUSTOMER, password=PASSWORD)
    browser = app.test_client()
    page = browser.get("/sign-in").get_data(as_text=True)
    before, planted_csrf = session_cookie(browser), _csrf(page)
    assert before is not None
    sign_in(browser, user)
    after = session_cookie(browser)
    assert after is not None and after != before
    # the session from before signing in is not signed in, and its CSRF token is dead
    stranger = app.test_client()
    stranger.set_cookie("session", before)
    assert stranger.get("/api/v1/me").status_code == 401
    refused = browser.post("/api/v1/me/tokens", json={"name": "x"}, headers={"X-CSRF-Token": planted_csrf})
    assert refused.status_code == 403 and "CSRF" in refused.get_json()["detail"]


def test_signing_out_everywhere_ends_every_browser_session_and_keeps_tokens(
    app: Flask, client: FlaskClient, make_user: Callable[..., User], token_for: Callable[..., dict[str, str]]
) -> None:
    user = make_user(Role.CUSTOMER, password=PASSWORD)
    laptop, phone = app.test_client(), app.test_client()
    laptop_csrf = sign_in(laptop, user)
    sign_in(phone, user)
    headers = token_for(user)
    assert phone.get("/api/v1/me").status_code == 200

    # a cross-site request cannot do it: the session's CSRF token is required
    assert laptop.post("/api/v1/me/sign-out-everywhere").status_code == 403
    assert phone.get("/api/v1/me").status_code == 200
    done = laptop.post("/api/v1/me/sign-out-everywhere", headers={"X-CSRF-Token": laptop_csrf})
    assert done.status_code == 204
    assert phone.get("/api/v1/me").status_code == 401 and laptop.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me", headers=headers).status_code == 200  # the API token is kept
    assert client.post("/api/v1/me/sign-out-everywhere").status_code == 401

    # the same from the profile page
    sign_in(laptop, user)
    sign_in(phone, user)
    profile = laptop.get("/account/profile").get_data(as_text=True)
    assert "Sign out everywhere" in profile
    assert laptop.post("/account/sign-out-everywhere").status_code == 400  # no CSRF token
    out = laptop.post("/account/sign-out-everywhere", data={"csrf_token": _csrf(profile)})
    assert out.status_code == 302 and out.headers["Location"].endswith("/sign-in")
    assert phone.get("/api/v1/me").status_code == 401
    assert phone.get("/account/profile").status_code in (302, 303)  # sent to sign in


def test_passwords_and_secrets_never_reach_the_logs_or_the_answers(
    client: FlaskClient,
    make_user: Callable[..., User],
    token_for: Callable[..., dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    user = make_user(Role.CUSTOMER, password=PASSWORD)
    admin_h = token_for(make_user(Role.ADMIN))
    answers = []

    def call(method: str, url: str, **kwargs: Any) -> Any:
        response = client.open(url, method=method, **kwargs)
        answers.append(response.get_data(as_text=True))
        return response

    # a wrong password, then the right one
    call("POST", "/api/v1/session", json={"email": user.email, "password": "wrong-" + PASSWORD})
    csrf = call("POST", "/api/v1/session", json={"email": user.email, "password": PASSWORD}).get_json()
    made = client.post("/api/v1/me/tokens", json={"name": "ci"}, headers={"X-CSRF-Token": csrf["csrf_token"]})
    token = made.get_json()["token"]  # shown once, in that answer only
    call("GET", "/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    call("GET", "/api/v1/me/tokens", headers={"Authorization": f"Bearer {token}"})
    call("GET", "/api/v1/me", headers={"Authorization": f"Bearer {token}x"})  # a bad one
    # a cloud account's credentials, and a change of password
    cloud_secret = "cloud-secret-0123456789abcdef"
    account = call(
        "POST",
        "/api/v1/admin/cloud-accounts",
        json={
            "slug": "log-check",
            "name": "Log check",
            "provider": "dummy",
            "credentials": {"secret": cloud_secret},
        },
        headers=admin_h,
    ).get_json()
    call("GET", f"/api/v1/admin/cloud-accounts/{account['id']}", headers=admin_h)
    call("GET", "/api/v1/admin/audit?per_page=100", headers=admin_h)

    logs = caplog.text
    assert f"sign-in refused for {user.email!r}" in logs  # the refused attempt is logged, without it
    for secret in (PASSWORD, "wrong-" + PASSWORD, token, cloud_secret):
        assert secret not in logs, f"a secret reached the logs: {secret[:6]}..."
        assert not any(secret in answer for answer in answers), f"a secret is in an answer: {secret[:6]}..."


@pytest.fixture
def rate_limits(app: Flask) -> Iterator[RateLimits]:
    """Low limits for this test (the suite runs without any), counted from zero."""
    limits: RateLimits = app.extensions["mercato.rate_limits"]
    kept = dict(limits.rules)
    limits.rules.update(sign_in=parse("3/minute"), tokens=parse("2/hour"), usage=parse("2/minute"))
    limits.reset()
    try:
        yield limits
    finally:
        limits.rules.clear()
        limits.rules.update(kept)
        limits.reset()


def test_sign_in_tokens_and_ingestion_are_rate_limited(
    app: Flask,
    make_user: Callable[..., User],
    token_for: Callable[..., dict[str, str]],
    rate_limits: RateLimits,
) -> None:
    user, other = make_user(Role.CUSTOMER, password=PASSWORD), make_user(Role.CUSTOMER, password=PASSWORD)
    client = app.test_client()
    wrong = {"email": user.email, "password": "wrong-password-1"}
    assert [client.post("/api/v1/session", json=wrong).status_code for _ in range(3)] == [401, 401, 401]
    # the fourth, even with the right password, waits: guessing gets 3 tries a minute
    limited = client.post("/api/v1/session", json={"email": user.email, "password": PASSWORD})
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60
    assert (
        limited.mimetype == "application/problem+json"
        and "at most 3 per 1 minute" in limited.get_json()["detail"]
    )
    # the pages' sign-in form counts with the API (the same address): a page says so
    form = client.get("/sign-in").get_data(as_text=True)
    page = client.post(
        "/sign-in", data={"csrf_token": _csrf(form), "email": other.email, "password": PASSWORD}
    )
    assert page.status_code == 429 and "too many requests" in page.get_data(as_text=True)
    # from another address: that e-mail has had its 3 tries; another e-mail goes through
    elsewhere, address = app.test_client(), {"REMOTE_ADDR": "127.0.0.9"}
    again = elsewhere.post(
        "/api/v1/session", json={"email": user.email, "password": PASSWORD}, environ_base=address
    )
    assert again.status_code == 429
    fine = elsewhere.post(
        "/api/v1/session", json={"email": other.email, "password": PASSWORD}, environ_base=address
    )
    assert fine.status_code == 200

    # new API tokens: 2 an hour per user
    headers = token_for(user)
    made = [client.post("/api/v1/me/tokens", json={"name": f"t{i}"}, headers=headers) for i in range(3)]
    assert [m.status_code for m in made] == [201, 201, 429]
    # usage batches: 2 a minute per caller, another caller counts apart
    admin_h, vendor_h = token_for(make_user(Role.ADMIN)), token_for(make_user(Role.VENDOR))
    batches = [
        client.post("/api/v1/usage", json={"records": []}, headers=admin_h).status_code for _ in range(3)
    ]
    assert 429 not in batches[:2] and batches[2] == 429
    assert client.post("/api/v1/usage", json={"records": []}, headers=vendor_h).status_code != 429


def test_an_unknown_rate_limit_store_stops_the_start(app: Flask) -> None:
    with pytest.raises(ConfigError, match="MERCATO_RATE_LIMIT_STORAGE: 'postgresql://x/y'"):
        RateLimits.from_settings("postgresql://x/y", sign_in="1/minute", tokens="", usage="")


XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[click](vbscript:msgbox(1))",
    "![x](javascript:alert(1))",
    '![x" onerror="alert(1)](https://example.com/a.png)',
    "<iframe src=https://example.com></iframe>",
    "<object data=x></object><embed src=x>",
    "<style>body{background:url(javascript:alert(1))}</style>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "`<script>` and ```\n<script>alert(1)</script>\n```",
    '<a href="https://example.com" onclick="alert(1)">x</a>',
    "<form action=javascript:alert(1)><button>x</button></form>",
    "<<script>script>alert(1)<</script>/script>",
]


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_markdown_rendering_lets_no_script_through(payload: str) -> None:
    html = markdown.render(f"Intro\n\n{payload}\n\nOutro")
    tree = lxml.html.fragment_fromstring(html, create_parent="div")
    dangerous_tags = {"script", "iframe", "object", "embed", "svg", "math", "style", "form", "button"}
    assert not [el.tag for el in tree.iter() if isinstance(el.tag, str) and el.tag in dangerous_tags], html
    for element in tree.iter():
        if not isinstance(element.tag, str):
            continue
        for name, value in element.attrib.items():
            assert not name.lower().startswith("on"), html
            assert name.lower() != "style", html
            if name.lower() in ("href", "src", "action", "formaction", "xlink:href"):
                scheme = value.strip().lower().split(":", 1)[0] if ":" in value else ""
                assert scheme in ("", "http", "https", "mailto"), html


SQL_PAYLOADS = [
    "' OR '1'='1",
    "1' OR 1=1--",
    "x'; DROP TABLE users;--",
    "%' OR ''='",
    "1) OR (1=1",
    "\\' OR 1=1 #",
]


def test_sql_injection_payloads_in_every_filter_change_nothing(
    client: FlaskClient,
    shop: dict[str, Any],
    make_user: Callable[..., User],
    token_for: Callable[..., dict[str, str]],
) -> None:
    """Every query parameter of every list in the document, as each role: no 5xx, and no
    more rows than the same list without filters (bound parameters, never SQL text)."""
    buyer = token_for(make_user(Role.CUSTOMER))
    placed = client.post(
        "/api/v1/orders", json={"product": "wiki-server", "plan": "team", "quantity": 5}, headers=buyer
    )
    assert placed.status_code == 201, placed.get_data(as_text=True)
    people = {"customer": buyer, "vendor": token_for(shop["vendor"]), "admin": token_for(shop["admin"])}
    document = client.get("/api/v1/openapi.json").get_json()
    tried = 0
    for path, item in document["paths"].items():
        get = item.get("get")
        if get is None or "{" in path:
            continue
        names = [p["name"] for p in get.get("parameters", []) if p.get("in") == "query"]
        names = [n for n in names if n not in ("page", "per_page")]
        for role, headers in people.items():
            plain = client.get(path, headers=headers)
            baseline = (
                plain.get_json().get("total")
                if plain.is_json and isinstance(plain.get_json(), dict)
                else None
            )
            for name in names:
                for payload in SQL_PAYLOADS:
                    answer = client.get(path, query_string={name: payload}, headers=headers)
                    tried += 1
                    assert answer.status_code < 500, (path, name, payload, answer.get_data(as_text=True))
                    body = answer.get_json(silent=True) if answer.is_json else None
                    if baseline is not None and isinstance(body, dict) and "total" in body:
                        assert body["total"] <= baseline, (path, role, name, payload)
    assert tried > 500  # every filter of every list was tried
    # and the tables are all there
    assert client.get("/api/v1/orders", headers=buyer).get_json()["total"] == 1


# ------------------------------------------------------------------ uploaded files
def test_uploaded_files_are_pictures_served_with_safe_types_and_a_sandbox(
    client: FlaskClient,
    db_session: Session,
    make_user: Callable[..., User],
    token_for: Callable[..., dict[str, str]],
) -> None:
    vendor = token_for(make_user(Role.VENDOR))
    product = create(client, vendor)
    url = f"/api/v1/vendor/products/{product['id']}/logo"
    # what a browser would run is refused, whatever its name says
    for name, data in (
        ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
        ("logo.png", b"<!doctype html><html><script>alert(document.cookie)</script></html>"),
    ):
        refused = upload(client, url, data, vendor, name)
        assert refused.status_code == 422 and refused.get_json()["errors"][0]["field"] == "file"
    # a picture with HTML after its end (a polyglot) is kept as a picture and nothing else
    polyglot = png_logo() + b"<html><script>alert(document.cookie)</script></html>"
    accepted = upload(client, url, polyglot, vendor)
    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    urls = accepted.get_json()["working_version"]["logo"]["urls"]
    assert urls
    for file_url in urls.values():
        served = client.get(file_url)
        assert served.status_code == 200 and b"<script" not in served.data
        assert served.mimetype in ("image/png", "image/webp")  # the original, and renditions
        assert served.headers["X-Content-Type-Options"] == "nosniff"
        policy = served.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "sandbox" in policy
    # a stored file of any other type is never shown inline
    db_session.add(
        StoredFile(key="misc/notes.html", backend="file", size=4, sha256="0" * 64, content_type="text/html")
    )
    db_session.flush()
    storage = client.application.extensions["mercato.storage"]
    storage.put("misc/notes.html", b"<b>x", "text/html")
    other = client.get("/assets/misc/notes.html")
    assert other.status_code == 200 and other.mimetype == "application/octet-stream"
    assert other.headers["Content-Disposition"] == "attachment"
    assert "sandbox" in other.headers["Content-Security-Policy"]


# ------------------------------------------------------------------ pages
def _page_routes(app: Flask) -> list[str]:
    """Every page (the pages blueprint) reached by GET without a path parameter."""
    return sorted(
        str(rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("pages.") and "GET" in (rule.methods or ()) and not rule.arguments
    )


@pytest.mark.parametrize("role", [None, Role.CUSTOMER, Role.VENDOR, Role.ADMIN])
def test_every_page_runs_only_the_platform_s_script_and_cannot_be_framed(
    app: Flask, make_user: Callable[..., User], role: Role | None
) -> None:
    client = app.test_client()
    if role is not None:
        sign_in(client, make_user(role, password=PASSWORD))
    shown = 0
    for route in _page_routes(app):
        page = client.get(route)
        if page.mimetype != "text/html" or page.status_code != 200:
            continue
        shown += 1
        policy = page.headers["Content-Security-Policy"]
        scripts = next(p for p in policy.split(";") if p.strip().startswith("script-src"))
        assert scripts.split() == ["script-src", "'self'"], (route, policy)
        assert "frame-ancestors 'none'" in policy and page.headers["X-Frame-Options"] == "DENY"
        tree = lxml.html.fromstring(page.get_data(as_text=True))
        inline = [s for s in tree.iter("script") if not s.get("src")]
        assert not inline, (route, [lxml.html.tostring(s)[:120] for s in inline])
        assert not [e for e in tree.iter() if any(a.startswith("on") for a in e.attrib)], route
    print(f"{role}: {shown} pages")
    assert shown >= (4 if role is None else 8), f"only {shown} pages answered for {role}"


# ------------------------------------------------------------------ path traversal
TRAVERSALS = [
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "%252e%252e%252fetc%252fpasswd",
    "sha256/../../../etc/passwd",
    "sha256/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "....//....//etc/passwd",
    "..\\..\\etc\\passwd",
    "/etc/passwd",
    "//etc/passwd",
    "sha256/./../../app.py",
    "%c0%ae%c0%ae/etc/passwd",
]


@pytest.mark.parametrize("key", TRAVERSALS)
def test_path_traversal_in_asset_keys_reaches_nothing(client: FlaskClient, key: str, tmp_path: Any) -> None:
    # (a doubled slash is merged by a redirect that stays under /assets/)
    answer = client.get(f"/assets/{key}", follow_redirects=True)
    assert answer.status_code == 404, (key, answer.status_code)
    assert answer.request.path.startswith("/assets/"), answer.request.path
    assert b"root:" not in answer.data and b"create_app" not in answer.data
    # and the store itself refuses the key before touching the disk
    (tmp_path / "store").mkdir()
    (tmp_path / "secret.txt").write_text("root:x:0:0")
    store = FileStorage(tmp_path / "store")
    decoded = urllib.parse.unquote(urllib.parse.unquote(key))
    if ".." in decoded.replace("\\", "/").split("/") or decoded.startswith("/") or "\\" in decoded:
        with pytest.raises(InvalidKey):
            store.get(decoded)
        with pytest.raises(InvalidKey):
            store.put(decoded, b"x", "text/plain")
    assert (tmp_path / "secret.txt").read_text() == "root:x:0:0"
