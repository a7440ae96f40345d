"""Vendor webhooks: endpoints, the deliveries an event makes, signing and sending.

An event about a vendor's product (``order.placed``, ``subscription.changed``,
``deployment.state_changed``, ``invoice.issued``, ...) becomes one delivery per active
endpoint of that vendor that takes its type, in the consumer's transaction
(:func:`fan_out`). The worker's periodic sender (:func:`deliver_due`) posts what is due
and records each attempt; an answer other than 2xx is tried again with exponential
back-off (30 seconds, doubling, at most 2 hours apart) for a day, then the delivery is
marked failed and the vendor may replay it.

Each request is signed: ``Mercato-Signature: t=<unix seconds>,v1=<hex>`` where ``hex`` is
HMAC-SHA256, keyed with the endpoint's secret, over ``"<t>." + body`` (the raw bytes).
Receivers compute the same, compare in constant time, and refuse a ``t`` more than five
minutes old. ``Mercato-Event`` names the type and ``Mercato-Delivery`` the delivery; the
body's ``id`` is the event's id, the same on every retry and replay, for deduplication.
Delivery is at least once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.billing.revenue import vendor_lines
from cmw.catalog.service import vendor_of
from cmw.crypto import Sealer
from cmw.db import utcnow
from cmw.events.consumer import as_uuid
from cmw.orders.service import product_of_subscription
from cmw.outbound import OutboundError, check_url
from cmw.webhooks.models import DeliveryState, WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

#: the event types a vendor can receive
TOPICS = (
    "order.placed",
    "order.awaiting_approval",
    "order.approved",
    "order.rejected",
    "subscription.activated",
    "subscription.trial_started",
    "subscription.changed",
    "subscription.cancelled",
    "subscription.expired",
    "subscription.renewed",
    "subscription.past_due",
    "subscription.suspended",
    "subscription.resumed",
    "deployment.state_changed",
    "deployment.ready",
    "deployment.failed",
    "deployment.reconfigured",
    "deployment.reconfigure_failed",
    "invoice.issued",
)
#: sent by "Send a test event"
PING = "webhook.ping"
SIGNATURE_HEADER = "Mercato-Signature"
RETRY_FOR = dt.timedelta(days=1)
FIRST_RETRY = dt.timedelta(seconds=30)
LONGEST_RETRY = dt.timedelta(hours=2)
#: how long a claimed delivery stays with the sender before another may take it
LEASE = dt.timedelta(minutes=2)
#: what vendors are not shown of a customer's event
PRIVATE_FIELDS = frozenset({"ssh_public_key", "login", "password", "target"})
MAX_ENDPOINTS = 20


class WebhookError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


# ------------------------------------------------------------------ endpoints
def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _url(url: str, allow_private: bool) -> str:
    try:
        return check_url(url, allow_private=allow_private)
    except OutboundError as exc:
        raise WebhookError("url", f"the URL {exc}") from None


def _topics(topics: Iterable[str]) -> list[str]:
    chosen = sorted(set(topics))
    unknown = [t for t in chosen if t not in TOPICS]
    if unknown:
        raise WebhookError(
            "topics", f"unknown event type(s): {', '.join(unknown)}; known: {', '.join(TOPICS)}"
        )
    return chosen


#: session.info key: the vendors with an active endpoint, as read in the current transaction
_LISTENING = "mercato.webhook_listeners"


def create_endpoint(
    session: Session,
    sealer: Sealer,
    vendor_id: uuid.UUID,
    *,
    url: str,
    topics: Iterable[str] = (),
    description: str = "",
    created_by: uuid.UUID | None = None,
    allow_private: bool = False,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (shown once)."""
    count = session.scalar(
        sa.select(sa.func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.vendor_id == vendor_id)
    )
    if (count or 0) >= MAX_ENDPOINTS:
        raise WebhookError("url", f"a vendor may register up to {MAX_ENDPOINTS} endpoints")
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        vendor_id=vendor_id,
        url=_url(url, allow_private),
        topics=_topics(topics),
        description=description.strip(),
        secret_sealed=sealer.seal(secret),
        created_by_id=created_by,
        active=True,
    )
    session.add(endpoint)
    session.flush()
    session.info.pop(_LISTENING, None)  # this transaction's later events see it
    return endpoint, secret


def update_endpoint(
    session: Session, endpoint: WebhookEndpoint, changes: dict[str, Any], *, allow_private: bool = False
) -> WebhookEndpoint:
    if "url" in changes:
        endpoint.url = _url(changes["url"], allow_private)
    if "topics" in changes:
        endpoint.topics = _topics(changes["topics"])
    if "description" in changes:
        endpoint.description = str(changes["description"]).strip()
    if "active" in changes:
        endpoint.active = bool(changes["active"])
        session.info.pop(_LISTENING, None)
    session.flush()
    return endpoint


def rotate_secret(session: Session, sealer: Sealer, endpoint: WebhookEndpoint) -> str:
    secret = new_secret()
    endpoint.secret_sealed = sealer.seal(secret)
    session.flush()
    return secret


def takes(endpoint: WebhookEndpoint, topic: str) -> bool:
    return topic == PING or not endpoint.topics or topic in endpoint.topics


# ------------------------------------------------------------------ deliveries
def body_of(event_id: str, topic: str, data: dict[str, Any], at: dt.datetime) -> str:
    return json.dumps(
        {"id": event_id, "type": topic, "created_at": at.isoformat(), "data": data},
        separators=(",", ":"),
        sort_keys=True,
    )


def enqueue(
    session: Session,
    endpoint: WebhookEndpoint,
    event_id: str,
    topic: str,
    data: dict[str, Any],
    now: dt.datetime,
) -> WebhookDelivery | None:
    """A delivery of the event to the endpoint, unless there is one already."""
    if session.scalar(
        sa.select(WebhookDelivery.id).where(
            WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.event_id == event_id
        )
    ):
        return None
    delivery = WebhookDelivery(
        id=uuid.uuid4(),
        endpoint_id=endpoint.id,
        event_id=event_id,
        topic=topic,
        body=body_of(event_id, topic, data, now),
        state=DeliveryState.PENDING,
        attempts=0,
        next_attempt_at=now,
        retry_until=now + RETRY_FOR,
        created_at=now,
    )
    session.add(delivery)
    return delivery


def recipients(session: Session, topic: str, payload: dict[str, Any]) -> dict[uuid.UUID, dict[str, Any]]:
    """Which vendors an event concerns, and the data each of them is sent."""
    shared = {k: v for k, v in payload.items() if k not in PRIVATE_FIELDS}
    if topic == "invoice.issued":
        invoice_id = as_uuid(payload.get("invoice_id"))
        if invoice_id is None:
            return {}
        shared.pop("total", None)  # the whole invoice's total covers other vendors' lines too
        return {
            vendor: {**shared, "vendor_id": str(vendor), "lines": lines}
            for vendor, lines in vendor_lines(session, invoice_id).items()
        }
    product_id = as_uuid(payload.get("product_id"))
    if product_id is None and (subscription_id := as_uuid(payload.get("subscription_id"))):
        product_id = product_of_subscription(session, subscription_id)
    vendor = vendor_of(session, product_id) if product_id else None
    if vendor is None:
        return {}
    return {vendor: {**shared, "product_id": str(product_id), "vendor_id": str(vendor)}}


def _listening(session: Session) -> frozenset[uuid.UUID]:
    """The vendors with an active endpoint. Most vendors have none: one small query says
    which do, before an event's vendors are looked up at all. Read once per transaction:
    the consumer fans out a batch of events in one, and an endpoint made while the batch
    is applied takes the events emitted after it, which are not in the batch."""
    transaction = session.get_transaction()
    cached = session.info.get(_LISTENING)
    if cached is not None and cached[0] is transaction:
        return cached[1]
    found = frozenset(
        session.scalars(
            sa.select(WebhookEndpoint.vendor_id).where(WebhookEndpoint.active.is_(True)).distinct()
        )
    )
    session.info[_LISTENING] = (transaction, found)
    return found


def fan_out(
    session: Session,
    event_id: str,
    topic: str,
    payload: dict[str, Any],
    marketplace_id: uuid.UUID | None = None,
    now: dt.datetime | None = None,
) -> int:
    """One delivery per endpoint the event is for; returns how many were made."""
    now = now or utcnow()
    made = 0
    listening = _listening(session)
    if not listening:
        return 0
    for vendor, data in recipients(session, topic, payload).items():
        if vendor not in listening:
            continue
        if marketplace_id is not None:
            data = {**data, "marketplace_id": str(marketplace_id)}
        for endpoint in session.scalars(
            sa.select(WebhookEndpoint).where(
                WebhookEndpoint.vendor_id == vendor, WebhookEndpoint.active.is_(True)
            )
        ):
            if takes(endpoint, topic) and enqueue(session, endpoint, event_id, topic, data, now):
                made += 1
    session.flush()
    return made


def ping(session: Session, endpoint: WebhookEndpoint, now: dt.datetime | None = None) -> WebhookDelivery:
    """A test event for the endpoint, sent like any other."""
    now = now or utcnow()
    event_id = f"ping-{uuid.uuid4()}"
    delivery = enqueue(
        session,
        endpoint,
        event_id,
        PING,
        {"endpoint_id": str(endpoint.id), "vendor_id": str(endpoint.vendor_id)},
        now,
    )
    assert delivery is not None
    session.flush()
    return delivery


def replay(session: Session, delivery: WebhookDelivery, now: dt.datetime | None = None) -> WebhookDelivery:
    """Send the delivery again, the same body, with a new day of retries."""
    now = now or utcnow()
    delivery.state = DeliveryState.PENDING
    delivery.next_attempt_at = now
    delivery.retry_until = now + RETRY_FOR
    session.flush()
    return delivery


def backoff(attempts: int) -> dt.timedelta:
    """The wait after the ``attempts``-th failed attempt."""
    return min(FIRST_RETRY * 2 ** max(0, attempts - 1), LONGEST_RETRY)


# ------------------------------------------------------------------ sending
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Mercato-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclasses.dataclass(frozen=True)
class Job:
    delivery_id: uuid.UUID
    url: str
    secret: str
    topic: str
    body: str


@dataclasses.dataclass(frozen=True)
class Result:
    status: int | None
    error: str | None
    duration_ms: int
    response: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Sender:
    """Posts a job to its endpoint, signed; never raises."""

    def __init__(self, *, allow_private: bool = False, ca_bundle: str = "", timeout: float = 10.0) -> None:
        self.allow_private, self.verify, self.timeout = allow_private, ca_bundle or True, timeout

    def send(self, job: Job) -> Result:
        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        body = job.body.encode()
        try:
            check_url(job.url, allow_private=self.allow_private)
            with requests.post(
                job.url,
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "Mercato-Webhooks/1",
                    "Mercato-Event": job.topic,
                    "Mercato-Delivery": str(job.delivery_id),
                    SIGNATURE_HEADER: sign(job.secret, int(time.time()), body),
                },
                timeout=(5, self.timeout),
                allow_redirects=False,
                verify=self.verify,
                stream=True,
            ) as response:
                excerpt = response.raw.read(2000, decode_content=True).decode("utf-8", "replace")[:500]
                return Result(response.status_code, None, took(), excerpt)
        except OutboundError as exc:
            return Result(None, f"the URL {exc}", took(), None)
        except requests.RequestException as exc:
            return Result(None, f"{type(exc).__name__}: {exc}"[:1000], took(), None)


def record(session: Session, delivery: WebhookDelivery, result: Result, now: dt.datetime) -> None:
    """Log an attempt and decide what comes next."""
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            attempted_at=now,
            status=result.status,
            error=result.error,
            duration_ms=result.duration_ms,
            response=result.response,
        )
    )
    delivery.attempts += 1
    delivery.last_status = result.status
    if result.ok:
        delivery.state = DeliveryState.DELIVERED
        delivery.delivered_at = now
        delivery.last_error = None
        delivery.next_attempt_at = None
        return
    delivery.last_error = result.error or f"the endpoint answered HTTP {result.status}"
    following = now + backoff(delivery.attempts)
    if following > delivery.retry_until:
        delivery.state = DeliveryState.FAILED
        delivery.next_attempt_at = None
    else:
        delivery.next_attempt_at = following


def deliver_due(
    session_factory: Callable[[], Session],
    sealer: Sealer,
    sender: Sender,
    now: dt.datetime | None = None,
    limit: int = 50,
) -> dict[str, int]:
    """Send what is due at ``now``: claim it (``SKIP LOCKED``, with a lease so a sender
    that dies is replaced), post outside any transaction, record each outcome."""
    now = now or utcnow()
    with session_factory() as session:
        due = session.scalars(
            sa.select(WebhookDelivery)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(
                WebhookDelivery.state == DeliveryState.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                WebhookEndpoint.active.is_(True),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        ).all()
        jobs = []
        for delivery in due:
            delivery.next_attempt_at = now + LEASE
            jobs.append(
                Job(
                    delivery.id,
                    delivery.endpoint.url,
                    sealer.open(delivery.endpoint.secret_sealed),
                    delivery.topic,
                    delivery.body,
                )
            )
        session.commit()
    if not jobs:
        return {"sent": 0, "delivered": 0}
    with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        results = list(pool.map(sender.send, jobs))
    delivered = 0
    with session_factory() as session:
        for job, result in zip(jobs, results, strict=True):
            sent = session.get(WebhookDelivery, job.delivery_id)
            if sent is None:  # its endpoint was deleted meanwhile
                continue
            record(session, sent, result, now)
            delivered += result.ok
            if not result.ok:
                log.info("webhook %s to %s: %s", job.topic, job.url, sent.last_error)
        session.commit()
    return {"sent": len(jobs), "delivered": delivered}


def send_forever(
    session_factory: Callable[[], Session],
    sealer: Sealer,
    sender: Sender,
    stop: threading.Event,
    idle_seconds: float = 1.0,
) -> None:
    """The worker's webhook thread: send what is due until ``stop`` is set."""
    while not stop.is_set():
        try:
            if deliver_due(session_factory, sealer, sender)["sent"]:
                continue
        except Exception:
            log.exception("webhook sending failed; trying again shortly")
        stop.wait(idle_seconds)
