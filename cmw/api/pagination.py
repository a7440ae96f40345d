"""Page-number pagination for list endpoints: ``?page=1&per_page=20``, at most 100 a page.

The body is an envelope ``{items, page, per_page, total, pages}`` so a client needs no
headers to page through a list.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any

import sqlalchemy as sa
from marshmallow import Schema, fields, validate
from sqlalchemy.orm import Session

MAX_PER_PAGE = 100


class PageArgs(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))
    per_page = fields.Integer(load_default=20, validate=validate.Range(min=1, max=MAX_PER_PAGE))


def paginate(session: Session, stmt: sa.Select[Any], page: int, per_page: int) -> dict[str, Any]:
    """Run ``stmt`` for one page; ``stmt`` must have a deterministic ORDER BY."""
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.order_by(None).subquery())) or 0
    items = session.scalars(stmt.limit(per_page).offset((page - 1) * per_page)).all()
    return {
        "items": list(items),
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": math.ceil(total / per_page) if total else 0,
    }


def paginate_rows(
    session: Session, stmt: Any, page: int, per_page: int, convert: Callable[[Any], Any]
) -> dict[str, Any]:
    """Like :func:`paginate` for a statement selecting several columns or entities; each
    row becomes an item through ``convert``."""
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows = session.execute(stmt.limit(per_page).offset((page - 1) * per_page))
    return {
        "items": [convert(row) for row in rows],
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": math.ceil(total / per_page) if total else 0,
    }


@cache
def page_of(item_schema: type[Schema]) -> type[Schema]:
    """The envelope schema for a page of ``item_schema`` (one class per item schema)."""
    name = item_schema.__name__.removesuffix("Schema") + "PageSchema"
    return type(
        name,
        (Schema,),
        {
            "items": fields.List(fields.Nested(item_schema), required=True),
            "page": fields.Integer(required=True),
            "per_page": fields.Integer(required=True),
            "total": fields.Integer(required=True),
            "pages": fields.Integer(required=True),
        },
    )
