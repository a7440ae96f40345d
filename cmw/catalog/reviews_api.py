"""The reviews API: read a product's reviews (public), write your organisation's review,
reply as the vendor, hide as an admin."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate
from sqlalchemy.exc import IntegrityError

from cmw.accounts.auth import current_marketplace, require_identity, roles_required
from cmw.accounts.models import Organisation, Role
from cmw.api.errors import ApiError
from cmw.api.pagination import PageArgs, page_of
from cmw.api.views import attributes
from cmw.catalog import reviews, service
from cmw.catalog.models import Product, Review
from cmw.extensions import current_session

blp = Blueprint("reviews", __name__, url_prefix="/api/v1", description="Ratings and reviews")


class ReviewSchema(Schema):
    id = fields.UUID()
    product_id = fields.UUID()
    rating = fields.Integer()
    comment = fields.String()
    reviewer = fields.String(metadata={"description": "the customer organisation's name"})
    vendor_reply = fields.String(allow_none=True)
    vendor_replied_at = fields.AwareDateTime(allow_none=True)
    hidden = fields.Boolean()
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()


class ReviewWriteSchema(Schema):
    rating = fields.Integer(required=True, validate=validate.Range(min=1, max=5))
    comment = fields.String(load_default="", validate=validate.Length(max=5000))
    organisation_id = fields.UUID(
        load_default=None, metadata={"description": "needed when you act for more than one customer"}
    )


class ReplySchema(Schema):
    reply = fields.String(required=True, validate=validate.Length(min=1, max=5000))


class HideSchema(Schema):
    hidden = fields.Boolean(required=True)


def _published(ref: str) -> Product:
    product = service.find_published(current_session(), current_marketplace(), ref)
    if product is None:
        raise ApiError(404, "no such product in this marketplace")
    return product


def _view(review: Review, reviewer: str) -> dict[str, Any]:
    return {
        **attributes(review, ReviewSchema),
        "reviewer": reviewer,
    }


def _review_in_marketplace(review_id: uuid.UUID) -> tuple[Review, Product]:
    """The review, locked (every caller changes it), if its product is in this marketplace."""
    review = current_session().scalar(sa.select(Review).where(Review.id == review_id).with_for_update())
    product = current_session().get(Product, review.product_id) if review else None
    if review is None or product is None or product.marketplace_id != current_marketplace().id:
        raise ApiError(404, "no such review in this marketplace")
    return review, product


@blp.route("/products/<string:ref>/reviews")
class ProductReviews(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(ReviewSchema))
    def get(self, args: dict[str, Any], ref: str) -> dict[str, Any]:
        """Visible reviews of a published product, newest first. No sign-in needed."""
        product = _published(ref)
        found = reviews.visible_page(current_session(), product.id, args["page"], args["per_page"])
        return {**found, "items": [_view(review, name) for review, name in found["items"]]}


@blp.route("/products/<string:ref>/reviews/mine")
class MyReview(MethodView):
    @blp.arguments(ReviewWriteSchema)
    @blp.response(200, ReviewSchema)
    @roles_required(Role.CUSTOMER)
    def put(self, data: dict[str, Any], ref: str) -> dict[str, Any]:
        """Rate the product for your organisation, or change your rating. One per product."""
        identity = require_identity()
        organisation_id = identity.customer(data["organisation_id"])
        product = _published(ref)
        for attempt in range(2):
            try:
                review, _created = reviews.write(
                    current_session(),
                    product,
                    organisation_id,
                    identity.user.id,
                    data["rating"],
                    data["comment"],
                )
                current_session().commit()
                break
            except reviews.NotEligible as exc:
                current_session().rollback()
                raise ApiError(403, str(exc), slug="not-a-subscriber") from None
            except IntegrityError:
                # A colleague's first review won the race: this one becomes an edit of it.
                current_session().rollback()
                if attempt:
                    raise
                product = _published(ref)
        organisation = current_session().get(Organisation, organisation_id)
        return _view(review, organisation.name if organisation else "")


@blp.route("/vendor/reviews/<uuid:review_id>/reply")
class VendorReply(MethodView):
    @blp.arguments(ReplySchema)
    @blp.response(200, ReviewSchema)
    @roles_required(Role.VENDOR)
    def post(self, data: dict[str, Any], review_id: uuid.UUID) -> dict[str, Any]:
        """Reply to a review of one of your products (once)."""
        review, product = _review_in_marketplace(review_id)
        if product.vendor_id not in require_identity().organisations_with(Role.VENDOR):
            raise ApiError(404, "no such review of your products")
        try:
            reviews.reply(current_session(), review, data["reply"].strip())
        except reviews.AlreadyReplied as exc:
            current_session().rollback()
            raise ApiError(409, str(exc), slug="already-replied") from None
        current_session().commit()
        organisation = current_session().get(Organisation, review.organisation_id)
        return _view(review, organisation.name if organisation else "")


@blp.route("/admin/reviews/<uuid:review_id>")
class AdminReview(MethodView):
    @blp.arguments(HideSchema)
    @blp.response(200, ReviewSchema)
    @roles_required(Role.ADMIN)
    def patch(self, data: dict[str, Any], review_id: uuid.UUID) -> dict[str, Any]:
        """Hide an abusive review (or show it again); hidden reviews do not count."""
        review, _product = _review_in_marketplace(review_id)
        reviews.set_hidden(current_session(), review, data["hidden"])
        current_session().commit()
        organisation = current_session().get(Organisation, review.organisation_id)
        return _view(review, organisation.name if organisation else "")
