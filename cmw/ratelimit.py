"""Rate limits on the endpoints worth guessing at or flooding: signing in (per client
address and per e-mail), making API tokens (per user) and usage ingestion (per caller).

Counted with the ``limits`` library in a moving window, in memory by default (one web
process) or in a shared store (``MERCATO_RATE_LIMIT_STORAGE``, e.g. ``redis://``) when
several processes serve. Over the limit: 429 with ``Retry-After``, a problem document in
the API, a page elsewhere."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator

from flask import Flask, abort, current_app, g, request
from limits import RateLimitItem, parse
from limits.errors import ConfigurationError
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from cmw.api.errors import ApiError, is_api_request
from cmw.config import ConfigError

#: (method, endpoint) -> the rule's name; the pages' sign-in forms count with the API's
ENDPOINTS = {
    ("POST", "accounts.SessionResource"): "sign_in",
    ("POST", "pages.sign_in"): "sign_in",
    ("POST", "accounts.TokensResource"): "tokens",
    ("POST", "pages.tokens"): "tokens",
    ("POST", "usage.UsageBatches"): "usage",
}


@dataclasses.dataclass
class RateLimits:
    """The rules (a limit per rule name, or None for none) and their counters."""

    rules: dict[str, RateLimitItem | None]
    storage: Storage

    @classmethod
    def from_settings(cls, storage_uri: str, **rules: str) -> RateLimits:
        try:
            storage = storage_from_string(storage_uri)
        except ConfigurationError as exc:
            raise ConfigError(f"MERCATO_RATE_LIMIT_STORAGE: {storage_uri!r}: {exc}") from None
        if not isinstance(storage, Storage):
            raise ConfigError(f"MERCATO_RATE_LIMIT_STORAGE: {storage_uri!r} is asynchronous; drop 'async+'")
        return cls(
            rules={name: parse(value) if value.strip() else None for name, value in rules.items()},
            storage=storage,
        )

    @property
    def limiter(self) -> MovingWindowRateLimiter:
        return MovingWindowRateLimiter(self.storage)

    def reset(self) -> None:
        self.storage.reset()


def _keys(rule: str) -> Iterator[str]:
    """Whom one request counts against."""
    address = request.remote_addr or "unknown"
    if rule == "sign_in":
        yield f"ip:{address}"
        email = ""
        if request.is_json:
            body = request.get_json(silent=True)
            email = str(body.get("email") or "") if isinstance(body, dict) else ""
        else:
            email = request.form.get("email", "")
        if email:
            yield f"email:{email.strip().lower()[:254]}"
        return
    identity = g.get("identity")
    yield f"user:{identity.user.id}" if identity is not None else f"ip:{address}"


def check() -> None:
    """``before_request``, once the caller is known: count the request against its rule."""
    rule = ENDPOINTS.get((request.method, request.endpoint or ""))
    if rule is None:
        return
    limits: RateLimits = current_app.extensions["mercato.rate_limits"]
    item = limits.rules.get(rule)
    if item is None:
        return
    limiter = limits.limiter
    for key in _keys(rule):
        if not limiter.hit(item, rule, key):
            reset_at, _remaining = limiter.get_window_stats(item, rule, key)
            retry = max(1, math.ceil(reset_at - time.time()))
            detail = f"too many requests: at most {item} here; try again in {retry} s"
            if is_api_request():
                raise ApiError(429, detail, headers={"Retry-After": str(retry)})
            abort(429, description=detail)


def init_app(app: Flask, storage_uri: str, *, sign_in: str, tokens: str, usage: str) -> None:
    app.extensions["mercato.rate_limits"] = RateLimits.from_settings(
        storage_uri, sign_in=sign_in, tokens=tokens, usage=usage
    )
