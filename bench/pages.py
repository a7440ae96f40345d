"""The storefront pages' part of ``python -m bench``: what is asked, how big it is, the targets.

The target (the issue): with 10,000 products, the catalog page and the product page answer
with a p99 under 100 ms at 20 concurrent users, and weigh under 200 KB transferred without
images (the HTML as served plus the stylesheets and scripts it links).

:mod:`bench.__main__` runs wrk against these paths; this module picks the seeded slugs,
writes the wrk scripts, measures the pages' weight and says whether the targets are met.
It imports nothing from :mod:`bench.__main__` (which runs as ``__main__``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urljoin

import sqlalchemy as sa

#: concurrent users of the target
CONNECTIONS = 20
P99_TARGET_MS = 100.0
#: 200 KB, counted as 200,000 bytes (the stricter reading)
SIZE_TARGET_BYTES = 200_000

#: the catalog page with a search term and a filter (the API run's query, as a person asks it)
CATALOG_SEARCH = "/products?q=backup&category=databases"
#: the catalog's first page, no query
CATALOG_FIRST = "/products"
#: the search page with a query string that changes every request (no cached answer)
CATALOG_SEARCH_MISS = CATALOG_SEARCH + " [every query new]"
#: the product page of a seeded product drawn at random from all of them, every request
PRODUCT_VARIED = "/products/<slug> [a different product each request]"

#: wrk script: the catalog page with a parameter the page ignores, different every time
MISS_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "%(path)s&nocache=" .. n .. "-" .. math.random(1000000000))
end
"""
#: wrk script: product pages of the listed slugs, a random one each request
VARIED_SCRIPT = """
local slugs = %(slugs)s
request = function()
  return wrk.format("GET", "/products/" .. slugs[math.random(#slugs)])
end
"""


def product_path(slug: str) -> str:
    return f"/products/{slug}"


def pick_slugs(database_url: str) -> tuple[str, list[str]]:
    """A seeded product with the most visible reviews (its page is the heaviest of its
    kind) and every published slug, in an order unrelated to their numbers."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            heaviest = conn.scalar(
                sa.text(
                    "SELECT slug FROM products WHERE status = 'published'"
                    " ORDER BY rating_count DESC, slug LIMIT 1"
                )
            )
            every = list(
                conn.scalars(
                    sa.text("SELECT slug FROM products WHERE status = 'published' ORDER BY md5(slug)")
                )
            )
    finally:
        engine.dispose()
    if heaviest is None or not every:
        raise LookupError("the seeded database has no published product")
    return str(heaviest), [str(s) for s in every]


def varied_script(slugs: list[str]) -> str:
    return VARIED_SCRIPT % {"slugs": "{" + ", ".join(json.dumps(s) for s in slugs) + "}"}


# ----------------------------------------------------------------- weight
@dataclass(frozen=True)
class PageSize:
    page: str
    status: int
    #: the response body as served (no Accept-Encoding: what a client without gzip gets)
    html_bytes: int
    #: whether the server would compress it when asked (Accept-Encoding: gzip)
    compressed_when_asked: bool
    #: linked stylesheets and scripts, each once, bodies as served
    assets: dict[str, int]
    assets_bytes: int
    total_bytes: int
    images_linked: int


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        rel = (values.get("rel") or "").lower().split()
        if tag == "link" and "stylesheet" in rel and values.get("href"):
            self.assets.append(values["href"] or "")
        elif tag == "script" and values.get("src"):
            self.assets.append(values["src"] or "")
        elif tag == "img":
            self.images += 1


def _fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read(), dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers.items())


def measure(base: str, page: str, path: str) -> PageSize:
    """The weight of ``path`` as a browser without a cache loads it, images left out."""
    status, body, _headers = _fetch(base + path)
    _, _, gz_headers = _fetch(base + path, {"Accept-Encoding": "gzip"})
    links = _Links()
    links.feed(body.decode(errors="replace"))
    assets: dict[str, int] = {}
    for href in dict.fromkeys(links.assets):
        _status, asset, _ = _fetch(urljoin(base + path, href))
        assets[href] = len(asset)
    assets_bytes = sum(assets.values())
    return PageSize(
        page=page,
        status=status,
        html_bytes=len(body),
        compressed_when_asked="gzip" in gz_headers.get("Content-Encoding", ""),
        assets=assets,
        assets_bytes=assets_bytes,
        total_bytes=len(body) + assets_bytes,
        images_linked=links.images,
    )


# ---------------------------------------------------------------- verdict
def size_table(sizes: list[PageSize]) -> str:
    header = ("page", "status", "HTML bytes", "CSS/JS bytes", "total bytes", "target < 200 KB")
    rows = [
        (
            s.page,
            str(s.status),
            f"{s.html_bytes:,}",
            f"{s.assets_bytes:,}",
            f"{s.total_bytes:,}",
            "met" if s.total_bytes < SIZE_TARGET_BYTES else "NOT met",
        )
        for s in sizes
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])


def latency_verdict(page: str, p99_ms: float) -> tuple[bool, str]:
    ok = p99_ms < P99_TARGET_MS
    return ok, f"{page}: p99 {p99_ms:.1f} ms at {CONNECTIONS} connections (target < 100 ms): " + (
        "met" if ok else "NOT met"
    )


def size_verdict(size: PageSize) -> tuple[bool, str]:
    ok = size.total_bytes < SIZE_TARGET_BYTES
    return ok, (
        f"{size.page}: {size.total_bytes:,} bytes without images "
        f"({size.html_bytes:,} HTML + {size.assets_bytes:,} CSS/JS; target < 200 KB): "
        + ("met" if ok else "NOT met")
    )
