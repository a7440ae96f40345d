"""Finding marketplaces and walking the tree; no request access here."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cassetto.colour import contrast_ratio
from cmw.marketplaces.models import ALLOWED_PARENT, SLUG_PATTERN, Marketplace, MarketplaceKind


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


def address(marketplace: Marketplace, base_url: str) -> str:
    """Where people reach ``marketplace`` (links and images in its e-mails): the platform's
    base URL for the platform; a child's own host name, with the base URL's scheme and
    port; a child without one, the base URL with its ``/m/<slug>`` prefix."""
    if marketplace.parent_id is None:
        return base_url
    if marketplace.domain:
        base = urlsplit(base_url)
        return f"{base.scheme}://{marketplace.domain}{f':{base.port}' if base.port else ''}"
    return f"{base_url}/m/{marketplace.slug}"


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


def by_slug(session: Session, slug: str) -> Marketplace | None:
    """The active marketplace with ``slug`` (the development path prefix ``/m/<slug>``)."""
    found: Marketplace | None = session.scalar(
        sa.select(Marketplace).where(Marketplace.slug == slug, Marketplace.is_active.is_(True))
    )
    return found


# ------------------------------------------------------------------ the tree and branding
#: the kind of marketplace each kind may have under it
CHILD_KIND: dict[MarketplaceKind, MarketplaceKind] = {
    parent: child for child, parent in ALLOWED_PARENT.items() if parent is not None
}
#: WCAG AA for normal text: the header's white text on the primary colour (and the primary
#: colour as text on white), the buttons' black text on the accent colour
MIN_CONTRAST = 4.5
SLUG = re.compile(rf"^{SLUG_PATTERN}$")
HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
BRANDING_FIELDS = (
    "name",
    "domain",
    "description",
    "primary_colour",
    "accent_colour",
    "support_email",
    "legal_footer",
    "email_sender_name",
)


class MarketplaceError(ValueError):
    """Invalid marketplace details; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_colours(primary: str, accent: str) -> None:
    for field, value in (("primary_colour", primary), ("accent_colour", accent)):
        if not COLOUR.match(value or ""):
            raise MarketplaceError(field, f"{value!r} is not a colour like #1f4e79")
    ratio = contrast_ratio(primary, "#ffffff")
    if ratio < MIN_CONTRAST:
        raise MarketplaceError(
            "primary_colour",
            f"white text on {primary} has a contrast of {ratio:.1f}:1; it needs at least "
            f"{MIN_CONTRAST}:1 (choose a darker colour)",
        )
    ratio = contrast_ratio(accent, "#000000")
    if ratio < MIN_CONTRAST:
        raise MarketplaceError(
            "accent_colour",
            f"black text on {accent} has a contrast of {ratio:.1f}:1; it needs at least "
            f"{MIN_CONTRAST}:1 (choose a lighter colour)",
        )


def normalise_domain(value: str | None) -> str | None:
    """A host name as browsers send it (lowercase, no port, no trailing dot), or None."""
    if value is None or not value.strip():
        return None
    host = value.strip().lower().rstrip(".")
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(HOST_LABEL.match(label) for label in labels):
        raise MarketplaceError("domain", f"{value!r} is not a host name like shop.example.com")
    return host


def create_child(session: Session, parent: Marketplace, data: dict[str, Any]) -> Marketplace:
    """A distributor under the platform, or a reseller under a distributor. Flushes."""
    kind = CHILD_KIND.get(parent.kind)
    if kind is None:
        raise MarketplaceError("parent", "a reseller marketplace has no marketplaces under it")
    slug = str(data.get("slug", "")).strip().lower()
    if not SLUG.match(slug):
        raise MarketplaceError("slug", "use lowercase letters, digits and hyphens (at most 63)")
    if session.scalar(sa.select(Marketplace.id).where(Marketplace.slug == slug)) is not None:
        raise MarketplaceError("slug", f"{slug!r} is taken")
    marketplace = Marketplace(kind=kind, parent_id=parent.id, slug=slug, name=slug)
    _apply_branding(session, marketplace, {"primary_colour": "#1f4e79", "accent_colour": "#e07a1f", **data})
    session.add(marketplace)
    _flush(session, "slug", "the short name or host name is taken")
    return marketplace


def update_branding(session: Session, marketplace: Marketplace, data: dict[str, Any]) -> Marketplace:
    """Change the name, host name, texts, colours, support contact or sender name. Flushes."""
    _apply_branding(session, marketplace, data)
    _flush(session, "domain", "the host name is taken by another marketplace")
    return marketplace


def _flush(session: Session, field: str, message: str) -> None:
    """Flush; a unique name taken by a concurrent request since it was checked is a
    :class:`MarketplaceError` like the check's (the caller rolls back)."""
    try:
        session.flush()
    except sa.exc.IntegrityError:
        raise MarketplaceError(field, message) from None


def _apply_branding(session: Session, marketplace: Marketplace, data: dict[str, Any]) -> None:
    if "name" in data and not str(data["name"] or "").strip():
        raise MarketplaceError("name", "a marketplace needs a name")
    primary = data.get("primary_colour", marketplace.primary_colour)
    accent = data.get("accent_colour", marketplace.accent_colour)
    check_colours(primary, accent)
    if "domain" in data:
        domain = normalise_domain(data["domain"])
        if domain is not None:
            taken = session.scalar(
                sa.select(Marketplace.id).where(
                    Marketplace.domain == domain, Marketplace.id != marketplace.id
                )
            )
            if taken is not None:
                raise MarketplaceError("domain", f"the host name {domain} is taken by another marketplace")
        data = {**data, "domain": domain}
    for field in BRANDING_FIELDS:
        if field in data:
            value = data[field]
            setattr(marketplace, field, value.strip() if isinstance(value, str) else value)


def subtree(marketplace_id: uuid.UUID) -> sa.Select[tuple[uuid.UUID]]:
    """The ids of the marketplace and every marketplace under it, as a query."""
    tree = sa.select(Marketplace.id).where(Marketplace.id == marketplace_id).cte("tree", recursive=True)
    tree = tree.union_all(sa.select(Marketplace.id).where(Marketplace.parent_id == tree.c.id))
    return sa.select(tree.c.id)


def subtree_ids(session: Session, marketplace_id: uuid.UUID) -> list[uuid.UUID]:
    """The marketplace and every marketplace under it."""
    return list(session.scalars(subtree(marketplace_id)))
