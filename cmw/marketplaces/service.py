"""Finding marketplaces and walking the tree; no request access here."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.marketplaces.models import Marketplace, MarketplaceKind


class MarketplaceNotFound(LookupError):
    """No marketplace with that id, slug or domain."""


def platform(session: Session) -> Marketplace:
    """The platform marketplace, created by the first migration."""
    found = session.scalar(sa.select(Marketplace).where(Marketplace.kind == MarketplaceKind.PLATFORM))
    if found is None:
        raise MarketplaceNotFound("the platform marketplace is missing; run `flask db upgrade`")
    return found


def by_host(session: Session, host: str) -> Marketplace:
    """The marketplace served on ``host`` (port ignored), or the platform marketplace.

    One query for both: this runs on every request.
    """
    name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else host
    matches = sa.and_(Marketplace.domain == name, Marketplace.is_active.is_(True))
    found = session.scalar(
        sa.select(Marketplace)
        .where(sa.or_(matches, Marketplace.kind == MarketplaceKind.PLATFORM))
        .order_by(sa.case((matches, 0), else_=1))
        .limit(1)
    )
    if found is None:
        raise MarketplaceNotFound("the platform marketplace is missing; run `flask db upgrade`")
    return found


def ancestors(session: Session, marketplace: Marketplace) -> list[Marketplace]:
    """The marketplace and every marketplace above it, nearest first."""
    chain = [marketplace]
    seen = {marketplace.id}
    current = marketplace
    while current.parent_id is not None and current.parent_id not in seen:
        parent = session.get(Marketplace, current.parent_id)
        if parent is None:
            break
        chain.append(parent)
        seen.add(parent.id)
        current = parent
    return chain


def ancestor_ids(session: Session, marketplace: Marketplace) -> list[uuid.UUID]:
    return [m.id for m in ancestors(session, marketplace)]
