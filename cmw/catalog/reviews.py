"""Reviews: a customer organisation rates a product it subscribes or subscribed to, once
(editable); the vendor replies once; admins hide abusive ones. The product's rating count
and sum change in the same transaction, by atomic UPDATEs, so they never drift.

Who may review is the orders feature's knowledge (subscriptions): it installs its rule
with :func:`set_eligibility`. Until then nobody is eligible.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.catalog.models import Product, Review
from cmw.db import utcnow
from cmw.events.service import emit

#: (session, customer organisation id, product id) -> may this organisation review it?
Eligibility = Callable[[Session, uuid.UUID, uuid.UUID], bool]


class ReviewError(Exception):
    pass


class NotEligible(ReviewError):
    pass


class AlreadyReplied(ReviewError):
    pass


def _nobody(_session: Session, _organisation_id: uuid.UUID, _product_id: uuid.UUID) -> bool:
    return False


_eligibility: Eligibility = _nobody


def set_eligibility(rule: Eligibility) -> Eligibility:
    """Install the rule; returns the previous one (for tests)."""
    global _eligibility
    previous, _eligibility = _eligibility, rule
    return previous


def _adjust(session: Session, product_id: uuid.UUID, count: int, total: int) -> None:
    if count or total:
        session.execute(
            sa.update(Product)
            .where(Product.id == product_id)
            .values(rating_count=Product.rating_count + count, rating_sum=Product.rating_sum + total)
            .execution_options(synchronize_session=False)
        )


def write(
    session: Session,
    product: Product,
    organisation_id: uuid.UUID,
    author_id: uuid.UUID,
    rating: int,
    comment: str,
) -> tuple[Review, bool]:
    """Create or edit the organisation's review; returns it and whether it was new."""
    if not 1 <= rating <= 5:
        raise ReviewError("rating: from 1 to 5")
    if not _eligibility(session, organisation_id, product.id):
        raise NotEligible("you can review products your organisation subscribes or subscribed to")
    review = session.scalar(
        sa.select(Review)
        .where(Review.product_id == product.id, Review.organisation_id == organisation_id)
        .with_for_update()
    )
    if review is None:
        review = Review(
            product_id=product.id,
            organisation_id=organisation_id,
            author_id=author_id,
            rating=rating,
            comment=comment,
        )
        session.add(review)
        session.flush()
        _adjust(session, product.id, 1, rating)
        emit(session, "review.created", {"review_id": str(review.id), "product_id": str(product.id)})
        return review, True
    if not review.hidden:
        _adjust(session, product.id, 0, rating - review.rating)
    review.rating, review.comment, review.author_id = rating, comment, author_id
    session.flush()
    return review, False


def reply(session: Session, review: Review, text: str) -> Review:
    """The vendor's one reply."""
    if review.vendor_reply is not None:
        raise AlreadyReplied("this review already has the vendor's reply")
    review.vendor_reply, review.vendor_replied_at = text, utcnow()
    session.flush()
    return review


def set_hidden(session: Session, review: Review, hidden: bool) -> Review:
    """Hide (abusive) or show again; hidden reviews are neither shown nor counted."""
    if review.hidden != hidden:
        sign = -1 if hidden else 1
        _adjust(session, review.product_id, sign, sign * review.rating)
        review.hidden = hidden
        session.flush()
    return review


def visible_page(session: Session, product_id: uuid.UUID, page: int, per_page: int) -> dict[str, Any]:
    """A page of the product's visible reviews, newest first: items are (review, reviewer
    name), each review a row with the columns of :class:`Review`."""
    # the page and the total in one round trip; a page past the last counts on its own
    asked = {"product_id": product_id, "limit": per_page, "offset": (page - 1) * per_page}
    rows = session.connection().execute(_visible_statement(), asked).all()
    if rows:
        total = int(rows[0].total_rows)
    elif page == 1:
        total = 0
    else:
        total = session.scalar(_visible_count_statement(), {"product_id": product_id}) or 0
    return {
        "items": [(row, row.reviewer) for row in rows],
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": -(-total // per_page),
    }


def _visible(*columns: Any) -> sa.Select[*tuple[Any, ...]]:
    visible = sa.and_(Review.product_id == sa.bindparam("product_id"), Review.hidden.is_(False))
    return sa.select(*columns).where(visible)


@functools.cache
def _visible_statement() -> sa.Select[*tuple[Any, ...]]:
    """Built once: building it costs more than running it (a product page runs it)."""
    from cmw.accounts.models import Organisation

    return (
        _visible(
            *Review.__table__.columns,
            Organisation.name.label("reviewer"),
            sa.func.count().over().label("total_rows"),
        )
        .join(Organisation, Organisation.id == Review.organisation_id)
        .order_by(Review.created_at.desc(), Review.id)
        .limit(sa.bindparam("limit"))
        .offset(sa.bindparam("offset"))
    )


@functools.cache
def _visible_count_statement() -> sa.Select[tuple[int]]:
    return _visible(sa.func.count())
