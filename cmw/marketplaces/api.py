"""The marketplaces API: the current marketplace's public branding, and the tree for admins."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask.views import MethodView
from flask_smorest import Blueprint

from cmw.accounts.auth import current_marketplace, roles_required
from cmw.accounts.models import Role
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.extensions import current_session
from cmw.marketplaces.models import Marketplace
from cmw.marketplaces.schemas import MarketplaceSchema

blp = Blueprint("marketplaces", __name__, url_prefix="/api/v1", description="Marketplaces (tenants)")


@blp.route("/marketplace")
class CurrentMarketplace(MethodView):
    @blp.response(200, MarketplaceSchema)
    def get(self) -> Marketplace:
        """The marketplace this request is served by, with its branding."""
        return current_marketplace()


@blp.route("/marketplaces")
class Marketplaces(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(MarketplaceSchema))
    @roles_required(Role.ADMIN)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """This marketplace and every marketplace under it (admins)."""
        root = current_marketplace()
        tree = sa.select(Marketplace.id).where(Marketplace.id == root.id).cte("tree", recursive=True)
        tree = tree.union_all(sa.select(Marketplace.id).where(Marketplace.parent_id == tree.c.id))
        stmt = (
            sa.select(Marketplace).where(Marketplace.id.in_(sa.select(tree.c.id))).order_by(Marketplace.slug)
        )
        return paginate(current_session(), stmt, args["page"], args["per_page"])
