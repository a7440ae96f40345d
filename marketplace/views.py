"""Page views. They parse forms, call services and render; the rules live in ``cmw``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError

from cmw.accounts import service as accounts
from cmw.accounts.auth import (
    current_identity,
    current_marketplace,
    end_session,
    marketplace_or_none,
    start_session,
)
from cmw.api.pagination import PageArgs
from cmw.assets.api import storage
from cmw.catalog import presenters, reviews, search
from cmw.catalog import service as catalog_service
from cmw.catalog.models import Category
from cmw.catalog.schemas import ProductListArgs
from cmw.catalog.search import Sort
from cmw.extensions import current_session
from cmw.money import format_amount
from marketplace.forms import SignInForm, SignOutForm

bp = Blueprint("pages", __name__)


@bp.app_context_processor
def branding() -> dict[str, Any]:
    return {
        "marketplace": marketplace_or_none(),
        "identity": current_identity(),
        "sign_out_form": SignOutForm(),
    }


@bp.app_template_filter("money")
def money(amount: Decimal | None, currency: str | None = None) -> str:
    """``12.50 EUR`` with the currency's minor unit at least (``0.021`` keeps its digits)."""
    if amount is None:
        return ""
    places = max(2, -amount.normalize().as_tuple().exponent)  # type: ignore[operator]
    return f"{amount:,.{places}f} {currency or ''}".strip()


@bp.app_template_filter("amount")
def amount(value: Decimal | None) -> str:
    """A quantity as written: ``100``, ``0.5``."""
    return "" if value is None else format_amount(value)


@bp.get("/")
def home() -> ResponseReturnValue:
    session, marketplace, store = current_session(), current_marketplace(), storage()
    featured = search.page(session, marketplace, search.Query(sort=search.Sort.RATING), 1, 4, store)["items"]
    newest = search.page(session, marketplace, search.Query(sort=search.Sort.NEWEST), 1, 8, store)["items"]
    return render_template("home.html", featured=featured, newest=newest, categories=_categories())


def _categories() -> list[Category]:
    return list(current_session().scalars(sa.select(Category).order_by(Category.position, Category.slug)))


#: the catalog page's list arguments: the API's, so both search the same way
_LIST_ARGS = ProductListArgs()
_PAGE_ARGS = PageArgs()
SORTS = [
    (Sort.RELEVANCE, "Best match"),
    (Sort.RATING, "Best rated"),
    (Sort.PRICE, "Price: low to high"),
    (Sort.PRICE_DESC, "Price: high to low"),
    (Sort.NEWEST, "Newest"),
]


@bp.get("/products")
def catalog() -> ResponseReturnValue:
    raw = {k: v for k, v in request.args.items() if v != ""}
    errors: dict[str, list[str]] = {}
    try:
        filters = _LIST_ARGS.load({k: v for k, v in raw.items() if k in _LIST_ARGS.fields})
        paging = _PAGE_ARGS.load({k: v for k, v in raw.items() if k in _PAGE_ARGS.fields})
    except ValidationError as exc:
        messages: dict[str, Any] = exc.normalized_messages()  # type: ignore[no-untyped-call]
        errors = {str(k): [str(m) for m in v] for k, v in messages.items()}
        filters, paging = _LIST_ARGS.load({}), _PAGE_ARGS.load({})
    if filters["currency"]:
        filters["currency"] = filters["currency"].upper()
    result = search.page(
        current_session(),
        current_marketplace(),
        search.Query(**filters),
        paging["page"],
        paging["per_page"],
        storage(),
    )

    def page_url(number: int) -> str:
        values: dict[str, Any] = {**raw, "page": number}
        return url_for("pages.catalog", **values)

    status = 422 if errors else 200
    return (
        render_template(
            "catalog.html",
            result=result,
            args=raw,
            errors=errors,
            categories=_categories(),
            sorts=SORTS,
            page_url=page_url,
        ),
        status,
    )


@bp.get("/products/<string:slug>")
def product(slug: str) -> ResponseReturnValue:
    session = current_session()
    found = catalog_service.find_published(session, current_marketplace(), slug)
    if found is None:
        abort(404)
    view = presenters.public_view(session, storage(), found)
    shown = reviews.visible_page(session, found.id, 1, 20)
    return render_template("product.html", product=view, reviews=shown)


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths, never an open redirect."""
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("pages.home")


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    form = SignInForm()
    error = None
    if form.validate_on_submit():
        try:
            user = accounts.authenticate(current_session(), form.email.data or "", form.password.data or "")
        except accounts.InvalidCredentials as exc:
            current_session().rollback()
            error = str(exc)
        else:
            start_session(user, current_marketplace())
            current_session().commit()
            return redirect(_safe_next(request.args.get("next")))
    status = 401 if error else (422 if form.errors else 200)
    return render_template("sign_in.html", form=form, error=error), status


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    end_session()
    return redirect(url_for("pages.home"))


@bp.get("/account")
def account() -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return redirect(url_for("pages.sign_in", next=request.path))
    return render_template("account.html")
