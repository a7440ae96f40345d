"""Pushing customers and subscriptions to HubSpot's CRM API (v3 objects, v4 associations).

A customer organisation is a *company*; its customer users are *contacts* (upserted by
e-mail address) associated with it; a subscription is a *deal* associated with both, its
stage following the subscription (trialing: ``qualifiedtobuy``; active or past due:
``closedwon``; cancelled or expired: ``closedlost``). Only HubSpot's default properties
are written, so a fresh HubSpot account takes them as they are.

Every request is recorded (``crm_calls``) in a transaction of its own, so failed attempts
stay on record; so is each new object's id (``crm_links``), at once, so a retry after a
crash updates the object instead of making a second one. A 429, a 5xx or no answer raises
:class:`CrmUnavailable` and the consumer retries later with back-off; another 4xx raises
:class:`CrmRejected`, which is logged and not retried (the data would be refused again).
Orders never wait for any of this: it runs in the worker, from the event stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from typing import Any

import requests
import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.accounts import service as accounts
from cmw.accounts.models import Organisation, Role, User
from cmw.catalog.service import product_name
from cmw.crm.models import CrmCall, CrmLink
from cmw.orders import service as orders

log = logging.getLogger(__name__)

#: the subscription's status -> the deal's stage in HubSpot's default pipeline
DEAL_STAGES = {
    "trialing": "qualifiedtobuy",
    "active": "closedwon",
    "past_due": "closedwon",
    "cancelled": "closedlost",
    "expired": "closedlost",
}
#: HubSpot-defined association types (v4): deal to company, deal to contact
DEAL_TO_COMPANY, DEAL_TO_CONTACT = 5, 3


class CrmUnavailable(RuntimeError):
    """The CRM did not take the request now (429, 5xx, no answer): try again later."""


class CrmRejected(ValueError):
    """The CRM refused the request (4xx): sending it again would not help."""


@dataclasses.dataclass(frozen=True)
class HubSpot:
    base_url: str
    token: str
    ca_bundle: str = ""
    timeout: float = 10.0

    def call(
        self,
        session: Session,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        kind: str,
        local_id: uuid.UUID | None,
    ) -> dict[str, Any]:
        """Send one request, record it, return the answer's JSON."""
        status, text = None, ""
        try:
            response = requests.request(
                method,
                self.base_url.rstrip("/") + path,
                json=body,
                headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
                timeout=(5, self.timeout),
                verify=self.ca_bundle or True,
                allow_redirects=False,
            )
            status, text = response.status_code, response.text
        except requests.RequestException as exc:
            text = f"{type(exc).__name__}: {exc}"
        _write(
            session,
            CrmCall(
                object_type=kind,
                local_id=local_id,
                method=method,
                path=path,
                request=body or {},
                status=status,
                response=text[:1000],
            ),
        )
        if status is None or status == 429 or status >= 500:
            raise CrmUnavailable(f"{method} {path}: {status or text}")
        if status >= 400:
            raise CrmRejected(f"{method} {path}: HTTP {status}: {text[:300]}")
        try:
            answer: dict[str, Any] = json.loads(text) if text else {}
        except ValueError:
            answer = {}
        return answer


def _write(session: Session, row: CrmCall | CrmLink) -> None:
    """Kept at once, in a transaction of its own, whatever becomes of the consumer's. (SQLite
    has one writer at a time, and the consumer's transaction holds it: there, the row goes
    with the consumer's transaction.)"""
    if session.get_bind().dialect.name == "sqlite":
        session.merge(row)
        session.flush()
        return
    with Session(bind=session.get_bind()) as own:
        own.merge(row)
        own.commit()


def _link(session: Session, kind: str, local_id: uuid.UUID) -> str | None:
    return session.scalar(
        sa.select(CrmLink.remote_id).where(CrmLink.object_type == kind, CrmLink.local_id == local_id)
    )


def _save_link(session: Session, kind: str, local_id: uuid.UUID, remote_id: str) -> None:
    _write(session, CrmLink(object_type=kind, local_id=local_id, remote_id=remote_id))


def _upsert(
    session: Session, crm: HubSpot, kind: str, local_id: uuid.UUID, properties: dict[str, str], **create: Any
) -> str:
    """Create the object the first time (with ``create``'s extra fields), update it after."""
    plural = {"company": "companies", "deal": "deals"}[kind]
    remote = _link(session, kind, local_id)
    if remote is not None:
        crm.call(
            session, "PATCH", f"/crm/v3/objects/{plural}/{remote}", {"properties": properties}, kind, local_id
        )
        return remote
    made = crm.call(
        session, "POST", f"/crm/v3/objects/{plural}", {"properties": properties, **create}, kind, local_id
    )
    remote = str(made["id"])
    _save_link(session, kind, local_id, remote)
    return remote


def sync_company(session: Session, crm: HubSpot, organisation_id: uuid.UUID) -> tuple[str, list[str]] | None:
    """The organisation as a company and its customer users as contacts associated with it;
    returns the company's id and the contacts' ids (None: not a customer organisation)."""
    organisation = session.get(Organisation, organisation_id)
    if organisation is None or organisation.kind.value != "customer":
        return None
    company = _upsert(
        session,
        crm,
        "company",
        organisation.id,
        {
            "name": organisation.legal_name or organisation.name,
            "country": organisation.country,
            "city": organisation.city,
            "zip": organisation.postal_code,
            "address": organisation.address_line1,
        },
    )
    users = accounts.members(session, organisation.id, Role.CUSTOMER)
    if not users:
        return company, []
    answer = crm.call(
        session,
        "POST",
        "/crm/v3/objects/contacts/batch/upsert",
        {
            "inputs": [
                {"idProperty": "email", "id": u.email, "properties": _contact(u, organisation)} for u in users
            ]
        },
        "contact",
        organisation.id,
    )
    contacts = []
    by_email = {
        str(r.get("properties", {}).get("email", "")).lower(): str(r["id"]) for r in answer.get("results", [])
    }
    for user in users:
        contact = by_email.get(user.email.lower())
        if contact is None:
            continue
        if _link(session, "contact", user.id) != contact:
            crm.call(
                session,
                "PUT",
                f"/crm/v4/objects/contact/{contact}/associations/default/company/{company}",
                None,
                "contact",
                user.id,
            )
            _save_link(session, "contact", user.id, contact)
        contacts.append(contact)
    return company, contacts


def _contact(user: User, organisation: Organisation) -> dict[str, str]:
    first, _, last = user.name.strip().partition(" ")
    return {"email": user.email, "firstname": first, "lastname": last, "company": organisation.name}


def sync_deal(session: Session, crm: HubSpot, subscription_id: uuid.UUID) -> str | None:
    """The subscription as a deal, associated with its company and contacts."""
    facts = orders.summary(session, subscription_id)
    if facts is None:
        return None
    synced = sync_company(session, crm, facts["customer_id"])
    if synced is None:
        return None
    company, contacts = synced
    customer = session.get(Organisation, facts["customer_id"])
    assert customer is not None
    properties = {
        "dealname": f"{product_name(session, facts['product_id'])} · {facts['plan']} · {customer.name}",
        "pipeline": "default",
        "dealstage": DEAL_STAGES.get(facts["status"], "closedwon"),
        "closedate": facts["started_at"].isoformat(),
    }
    if facts["amount"] is not None:
        properties.update(amount=facts["amount"], deal_currency_code=facts["currency"])
    associations = [
        {
            "to": {"id": company},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": DEAL_TO_COMPANY}],
        }
    ] + [
        {
            "to": {"id": c},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": DEAL_TO_CONTACT}],
        }
        for c in contacts
    ]
    return _upsert(session, crm, "deal", subscription_id, properties, associations=associations)
