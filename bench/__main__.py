"""``python -m bench``: HTTP throughput and latency of the web process under gunicorn.

What it does, all on loopback and all stopping by itself:

1. creates a fresh PostgreSQL database ``mercato_bench_<pid>`` beside the maintenance
   database named by ``MERCATO_TEST_DATABASE_URL``
   (default ``postgresql://postgres@127.0.0.1:5432/postgres``) and uses RabbitMQ at
   ``MERCATO_TEST_BROKER_URL`` (default ``amqp://guest:guest@127.0.0.1:5672//``);
2. migrates it (``flask --app app db upgrade``) and creates a user with an API token;
3. seeds 10,000 published products and 100,000 reviews, then starts gunicorn as
   ``flask mercato serve`` does (2 workers of cmw.webserver, 4 threads each, no access log);
4. runs ``wrk -t2 -c50 -d15s --latency`` against ``/healthz`` (database and broker check),
   ``/api/v1/me`` (token authentication, one user with their grants) and the catalog
   query (a search term and a filter, 20 a page): at 50 connections, at 10, and with a
   query string that changes every request so that no answer comes from the catalog cache;
5. runs wrk at 20 connections against the storefront pages (:mod:`bench.pages`): the
   catalog page with a search term and a filter, its first page without a query, the page
   of a seeded product, the search page with a query string that changes every request,
   and product pages of a different seeded product each request; and measures each page's
   weight without images (HTML as served plus the CSS it links);
6. prints requests/s, p50 and p99 latency and the non-2xx/3xx count per endpoint, the
   pages' weights and whether the pages' targets (p99 < 100 ms at 20 users, < 200 KB) are
   met, writes them to ``var/bench/http.json``, stops gunicorn and drops the database.

``BENCH_DURATION`` changes the duration of each run (``15s``, ``30``, ``1m``);
``BENCH_ONLY=api`` or ``BENCH_ONLY=pages`` runs only that part. The child processes get a
clean environment: inherited ``MERCATO_*`` settings are dropped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from bench import pages
from bench.catalog_seed import seed

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "var" / "bench" / "http.json"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
HOW_TO_START = (
    "Start PostgreSQL and RabbitMQ with `docker compose -f docker/compose.test.yml up -d`, "
    "or point MERCATO_TEST_DATABASE_URL / MERCATO_TEST_BROKER_URL at yours."
)
HOST = "127.0.0.1"
WRK_THREADS = 2
WRK_CONNECTIONS = 50
GUNICORN_WORKERS = 2
GUNICORN_THREADS = int(os.environ.get("BENCH_THREADS", "4"))
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
TOKEN_MARKER = "BENCH_TOKEN="
#: the catalog benchmark: 10,000 products, 100,000 reviews, a search term and one filter
CATALOG_PRODUCTS = int(os.environ.get("BENCH_CATALOG_PRODUCTS", "10000"))
CATALOG_REVIEWS = int(os.environ.get("BENCH_CATALOG_REVIEWS", "100000"))
CATALOG_QUERY = "/api/v1/products?q=backup&category=databases&per_page=20"
CATALOG_MISS = CATALOG_QUERY + " [cache miss]"
#: wrk script: the catalog query with a parameter the API ignores, different every time
MISS_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "%(path)s&nocache=" .. n .. "-" .. math.random(1000000000))
end
"""
USER_EMAIL = "bench@mercato.example"
USER_PASSWORD = "bench-password-2026"


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


@dataclass(frozen=True)
class Result:
    endpoint: str
    requests: int
    seconds: float
    requests_per_second: float
    latency_p50_ms: float
    latency_p75_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    non_2xx_3xx: int
    socket_errors: dict[str, int]


# ----------------------------------------------------------------- settings
def admin_database_url() -> str:
    return os.environ.get("MERCATO_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)


def broker_url() -> str:
    return os.environ.get("MERCATO_TEST_BROKER_URL", DEFAULT_BROKER_URL)


def duration() -> tuple[str, float]:
    """``BENCH_DURATION`` as wrk's argument and in seconds; default 15s."""
    raw = os.environ.get("BENCH_DURATION", "15s").strip().lower()
    match = re.fullmatch(r"(\d+)(s|m|h)?", raw)
    if match is None or int(match.group(1)) == 0:
        raise BenchError(f"BENCH_DURATION: {raw!r} is not a duration such as 15s, 30 or 1m")
    value, unit = int(match.group(1)), match.group(2) or "s"
    return f"{value}{unit}", value * {"s": 1, "m": 60, "h": 3600}[unit]


def only() -> set[str]:
    """The parts ``BENCH_ONLY`` asks for: ``api``, ``pages`` or (unset) both."""
    raw = os.environ.get("BENCH_ONLY", "").strip().lower()
    if raw in ("", "all"):
        return {"api", "pages"}
    if raw not in ("api", "pages"):
        raise BenchError(f"BENCH_ONLY: {raw!r} is not api or pages")
    return {raw}


def redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wrk_path() -> str:
    found = shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)
    if found is None:
        raise BenchError("wrk is not installed; run `scripts/ensure-system-packages bench` (as root)")
    return found


# ----------------------------------------------------------------- database
@contextmanager
def fresh_database() -> Iterator[str]:
    """A database created for this run and dropped after it; yields its URL."""
    admin = admin_database_url()
    name = f"mercato_bench_{os.getpid()}"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL at {redact(admin)} is unreachable: {exc}\n{HOW_TO_START}") from None
    with conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield sa.engine.make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def check_broker(url: str) -> None:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure means the same: not reachable
        raise BenchError(f"RabbitMQ at {redact(url)} is unreachable: {exc}\n{HOW_TO_START}") from None


def child_environment(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERCATO_")}
    env.update(
        {
            "MERCATO_DATABASE_URL": database_url,
            "MERCATO_BROKER_URL": broker_url(),
            "MERCATO_DATA_DIR": str(data_dir),
            "MERCATO_SECRET_KEY": "bench-secret-key-" + os.urandom(16).hex(),
            "MERCATO_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_step(args: list[str], env: Mapping[str, str], what: str) -> str:
    proc = subprocess.run(
        args, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def create_token_in_child() -> int:
    """``python -m bench --create-token``: run in the child environment by :func:`prepare`."""
    from app import create_app
    from cmw.accounts import service as accounts
    from cmw.accounts.models import Role
    from cmw.db import utcnow
    from cmw.extensions import current_session, db
    from cmw.marketplaces.service import platform

    app = create_app()
    with app.app_context():
        session = current_session()
        marketplace = platform(session)
        user = accounts.create_user(
            session, email=USER_EMAIL, name="Bench User", password=USER_PASSWORD, email_verified=True
        )
        accounts.grant(session, user, marketplace, Role.ADMIN)
        _token, plaintext = accounts.create_token(
            session, user, marketplace, name="bench", expires_at=utcnow() + dt.timedelta(days=1)
        )
        session.commit()
        db.session.remove()
        db.engine.dispose()
    print(TOKEN_MARKER + plaintext)
    return 0


def prepare(env: Mapping[str, str]) -> str:
    """Migrate the database and create the bench user; returns its API token."""
    run_step([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"], env, "flask db upgrade")
    out = run_step([sys.executable, "-m", "bench", "--create-token"], env, "creating the API token")
    for line in out.splitlines():
        if line.startswith(TOKEN_MARKER):
            return line[len(TOKEN_MARKER) :].strip()
    raise BenchError(f"creating the API token printed no token:\n{out}")


# ----------------------------------------------------------------- gunicorn
@contextmanager
def gunicorn(env: Mapping[str, str], port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """gunicorn on loopback, stopped with SIGTERM (then SIGKILL) when the block ends."""
    args = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{HOST}:{port}",
        "--workers", str(GUNICORN_WORKERS),
        "--config", "python:cmw.webserver",  # as `flask mercato serve`
        "--threads", str(GUNICORN_THREADS),
        "--graceful-timeout", "10",
        # no --access-logfile: gunicorn writes no access log unless asked
        "app:create_app()",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # the master did not stop in time: its session holds only its workers
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_healthy(proc: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"gunicorn exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            status, body = get(f"{base}/healthz")
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return
            last = f"{status} {body[:300]}"
        time.sleep(0.25)
    raise BenchError(f"/healthz did not answer 200 within {START_TIMEOUT:.0f}s ({last}):\n{tail(log_path)}")


# ---------------------------------------------------------------------- wrk
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(value: str, unit: str) -> float:
    return round(float(value) * _UNITS_MS[unit], 3)


def parse_wrk(endpoint: str, output: str) -> Result:
    """The figures of one ``wrk --latency`` run."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise BenchError(f"unexpected wrk output for {endpoint} (no {pattern!r}):\n{output}")
        return match

    percentiles = {
        m.group(1): _ms(m.group(2), m.group(3))
        for m in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    }
    if set(percentiles) != {"50", "75", "90", "99"}:
        raise BenchError(f"unexpected wrk output for {endpoint} (latency distribution):\n{output}")
    total = find(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output, re.MULTILINE
    )
    return Result(
        endpoint=endpoint,
        requests=int(total.group(1)),
        seconds=round(_ms(total.group(2), total.group(3)) / 1000, 2),
        requests_per_second=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        latency_p50_ms=percentiles["50"],
        latency_p75_ms=percentiles["75"],
        latency_p90_ms=percentiles["90"],
        latency_p99_ms=percentiles["99"],
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(
            zip(("connect", "read", "write", "timeout"), (int(g) for g in errors.groups()), strict=True)
        )
        if errors
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    )


def run_wrk(
    wrk: str,
    base: str,
    endpoint: str,
    wrk_duration: str,
    seconds: float,
    headers: Mapping[str, str],
    connections: int = WRK_CONNECTIONS,
    label: str | None = None,
    script: Path | None = None,
) -> Result:
    args = [
        wrk,
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{wrk_duration}",
        "--latency",
    ]
    if script is not None:
        args += ["-s", str(script)]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    args.append(base + endpoint)
    print(f"wrk {endpoint} for {wrk_duration} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed on {endpoint} (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    if label is None:
        label = endpoint if connections == WRK_CONNECTIONS else f"{endpoint} [{connections} conn]"
    return parse_wrk(label, proc.stdout)


# -------------------------------------------------------------------- report
def table(results: list[Result]) -> str:
    header = ("endpoint", "requests/s", "p50 ms", "p99 ms", "non-2xx/3xx", "socket errors")
    rows = [
        (
            r.endpoint,
            f"{r.requests_per_second:.1f}",
            f"{r.latency_p50_ms:.2f}",
            f"{r.latency_p99_ms:.2f}",
            str(r.non_2xx_3xx),
            str(sum(r.socket_errors.values())),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])


def write_json(results: list[Result], wrk_duration: str, page_part: dict[str, Any] | None = None) -> None:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "benchmark": "http",
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "server": {
            "gunicorn_workers": GUNICORN_WORKERS,
            "worker_class": "cmw.webserver.Worker",
            "threads": GUNICORN_THREADS,
        },
        "load": {
            "tool": "wrk",
            "threads": WRK_THREADS,
            "connections": WRK_CONNECTIONS,
            "duration": wrk_duration,
        },
        "results": [asdict(r) for r in results],
    }
    if page_part is not None:
        document["pages"] = page_part
    OUTPUT.write_text(json.dumps(document, indent=2) + "\n")


# ---------------------------------------------------------------------- main
def catalog_verdict(results: list[Result]) -> str | None:
    """The catalog target: at least half the requests per second of /api/v1/me, p99 under 100 ms."""
    by_name = {r.endpoint: r for r in results}
    if "/api/v1/me" not in by_name:
        return None
    me, catalog = by_name["/api/v1/me"], by_name[CATALOG_QUERY]
    ratio = catalog.requests_per_second / me.requests_per_second if me.requests_per_second else 0.0
    ok = ratio >= 0.5 and catalog.latency_p99_ms < 100
    miss = by_name[CATALOG_MISS]
    miss_ratio = miss.requests_per_second / me.requests_per_second if me.requests_per_second else 0.0
    return (
        f"catalog query: {ratio:.0%} of /api/v1/me's requests/s (target >= 50%), "
        f"p99 {catalog.latency_p99_ms:.1f} ms (target < 100 ms): {'met' if ok else 'NOT met'}\n"
        f"  without the cache (every query new): {miss_ratio:.0%} of /api/v1/me, "
        f"p99 {miss.latency_p99_ms:.1f} ms"
    )


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Unwind through the context managers so gunicorn stops and the database is dropped.
    raise SystemExit(128 + signum)


def run_api(wrk: str, base: str, token: str, wrk_duration: str, seconds: float, tmp: Path) -> list[Result]:
    """The API endpoints at 50 connections, the catalog query also at 10 and uncached."""
    results: list[Result] = []
    auth = {"Authorization": f"Bearer {token}"}
    status, body = get(f"{base}/api/v1/me", auth)
    if status != 200:
        raise BenchError(f"GET /api/v1/me with the bench token answered {status}: {body[:500]}")
    for endpoint, headers in (("/healthz", {}), ("/api/v1/me", auth), (CATALOG_QUERY, {})):
        results.append(run_wrk(wrk, base, endpoint, wrk_duration, seconds, headers))
    # The same query at low concurrency: its latency without 50 requests queueing.
    results.append(run_wrk(wrk, base, CATALOG_QUERY, wrk_duration, seconds, {}, connections=10))
    # And with every request a different query string, so none is answered from the
    # catalog cache: the cost of the search itself.
    script = tmp / "miss.lua"
    script.write_text(MISS_SCRIPT % {"path": CATALOG_QUERY})
    results.append(
        run_wrk(wrk, base, CATALOG_QUERY, wrk_duration, seconds, {}, label=CATALOG_MISS, script=script)
    )
    return results


def run_pages(
    wrk: str, base: str, slugs: tuple[str, list[str]], wrk_duration: str, seconds: float, tmp: Path
) -> tuple[list[Result], list[pages.PageSize]]:
    """The storefront pages at 20 connections, and their weight."""
    heaviest, spread = slugs
    product = pages.product_path(heaviest)
    fixed = [
        ("catalog page, search and filter", pages.CATALOG_SEARCH),
        ("catalog page, first page", pages.CATALOG_FIRST),
        ("product page", product),
    ]
    sizes = [pages.measure(base, name, path) for name, path in fixed]
    for size, (_name, path) in zip(sizes, fixed, strict=True):
        if size.status != 200:
            raise BenchError(f"GET {path} answered {size.status}")
    results: list[Result] = []
    for _name, path in fixed:
        results.append(
            run_wrk(
                wrk,
                base,
                path,
                wrk_duration,
                seconds,
                {},
                connections=pages.CONNECTIONS,
                label=f"page {path} [{pages.CONNECTIONS} conn]",
            )
        )
    miss = tmp / "pages-miss.lua"
    miss.write_text(pages.MISS_SCRIPT % {"path": pages.CATALOG_SEARCH})
    results.append(
        run_wrk(
            wrk,
            base,
            pages.CATALOG_SEARCH,
            wrk_duration,
            seconds,
            {},
            connections=pages.CONNECTIONS,
            script=miss,
            label=f"page {pages.CATALOG_SEARCH_MISS} [{pages.CONNECTIONS} conn]",
        )
    )
    varied = tmp / "pages-products.lua"
    varied.write_text(pages.varied_script(spread))
    results.append(
        run_wrk(
            wrk,
            base,
            product,
            wrk_duration,
            seconds,
            {},
            connections=pages.CONNECTIONS,
            script=varied,
            label=f"page {pages.PRODUCT_VARIED} [{pages.CONNECTIONS} conn]",
        )
    )
    return results, sizes


def pages_verdict(results: list[Result], sizes: list[pages.PageSize]) -> tuple[list[str], dict[str, Any]]:
    """Lines saying whether each page meets its targets, and the JSON part of the pages.

    The target is judged on the pages asked again and again (as visitors do), and on
    their weight; the runs where every request is new are judged and shown apart: what
    a page costs when nothing of it is cached.
    """
    lines: list[str] = []
    checks: list[dict[str, Any]] = []
    for r in results:
        uncached = pages.CATALOG_SEARCH_MISS in r.endpoint or pages.PRODUCT_VARIED in r.endpoint
        ok, text = pages.latency_verdict(r.endpoint, r.latency_p99_ms)
        lines.append(text + (" (every request new)" if uncached else ""))
        checks.append(
            {
                "page": r.endpoint,
                "target": "p99 < 100 ms",
                "value": r.latency_p99_ms,
                "met": ok,
                "every_request_new": uncached,
            }
        )
    for size in sizes:
        ok, text = pages.size_verdict(size)
        lines.append(text)
        checks.append(
            {
                "page": size.page,
                "target": "< 200 KB",
                "value": size.total_bytes,
                "met": ok,
                "every_request_new": False,
            }
        )
    part: dict[str, Any] = {
        "connections": pages.CONNECTIONS,
        "targets": {"p99_ms_below": pages.P99_TARGET_MS, "bytes_below": pages.SIZE_TARGET_BYTES},
        "sizes": [asdict(s) for s in sizes],
        "checks": checks,
        "targets_met": all(c["met"] for c in checks if not c["every_request_new"]),
        "every_request_new_met": all(c["met"] for c in checks if c["every_request_new"]),
    }
    return lines, part


def run() -> int:
    wrk = wrk_path()
    wrk_duration, seconds = duration()
    parts = only()
    check_broker(broker_url())
    results: list[Result] = []
    page_results: list[Result] = []
    sizes: list[pages.PageSize] = []
    with (
        fresh_database() as database_url,
        tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp,
    ):
        env = child_environment(database_url, Path(tmp) / "var")
        print(f"preparing database {sa.engine.make_url(database_url).database} ...", file=sys.stderr)
        token = prepare(env)
        print(f"seeding {CATALOG_PRODUCTS} products and {CATALOG_REVIEWS} reviews ...", file=sys.stderr)
        seeded = seed(database_url, CATALOG_PRODUCTS, CATALOG_REVIEWS)
        print(f"seeded {seeded['products']} products, {seeded['reviews']} reviews", file=sys.stderr)
        try:
            slugs = pages.pick_slugs(database_url)
        except LookupError as exc:
            raise BenchError(str(exc)) from None
        port = free_port()
        base = f"http://{HOST}:{port}"
        log_path = Path(tmp) / "gunicorn.log"
        with gunicorn(env, port, log_path) as proc:
            wait_healthy(proc, base, log_path)
            if "api" in parts:
                results += run_api(wrk, base, token, wrk_duration, seconds, Path(tmp))
            if "pages" in parts:
                page_results, sizes = run_pages(wrk, base, slugs, wrk_duration, seconds, Path(tmp))
            if proc.poll() is not None:
                raise BenchError(f"gunicorn died during the run:\n{tail(log_path)}")
    verdict_lines, page_part = pages_verdict(page_results, sizes) if "pages" in parts else ([], None)
    everything = results + page_results
    write_json(everything, wrk_duration, page_part)
    print()
    print(
        f"gunicorn {GUNICORN_WORKERS} cmw.webserver workers x {GUNICORN_THREADS} threads; "
        f"wrk {WRK_THREADS} threads, {WRK_CONNECTIONS} connections (pages {pages.CONNECTIONS}), "
        f"{wrk_duration} per endpoint"
    )
    print(table(everything))
    api_verdict = catalog_verdict(results)
    if api_verdict is not None:
        print(api_verdict)
    if page_part is not None:
        print()
        print(pages.size_table(sizes))
        print()
        print("storefront pages (10,000 products, 20 concurrent users):")
        for text in verdict_lines:
            print("  " + text)
        print(
            "  the pages' targets (the same pages asked again, and their weight): "
            + ("met" if page_part["targets_met"] else "NOT met")
        )
        print(
            "  p99 with every request new (nothing from the cache): "
            + ("met" if page_part["every_request_new_met"] else "NOT met")
        )
    print(f"\nwritten to {OUTPUT.relative_to(ROOT)}")
    failed = [r for r in everything if r.non_2xx_3xx]
    if failed:
        names = ", ".join(r.endpoint for r in failed)
        print(
            f"bench: {names} answered non-2xx/3xx responses; the figures are not meaningful", file=sys.stderr
        )
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["--create-token"]:
        return create_token_in_child()
    if argv[1:]:
        print("usage: python -m bench   (BENCH_DURATION=15s by default)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
