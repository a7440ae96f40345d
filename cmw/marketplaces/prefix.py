"""The development path prefix: ``/m/<slug>/...`` serves marketplace ``<slug>`` on any
host, for running several marketplaces on one machine without DNS. The prefix moves
into ``SCRIPT_NAME``, so every link the pages make (``url_for``) keeps it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from cmw.marketplaces.models import SLUG_PATTERN

PREFIX = re.compile(rf"^/m/({SLUG_PATTERN})(/.*)?$")
ENVIRON_KEY = "mercato.marketplace_slug"


class MarketplacePrefix:
    """WSGI middleware: takes ``/m/<slug>`` off the path and remembers the slug."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        match = PREFIX.match(environ.get("PATH_INFO", ""))
        if match is not None:
            environ[ENVIRON_KEY] = match.group(1)
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + f"/m/{match.group(1)}"
            environ["PATH_INFO"] = match.group(2) or "/"
        result: Iterable[bytes] = self.app(environ, start_response)
        return result
