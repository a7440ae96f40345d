"""The administrators' page of their own marketplace: its branding (every page and e-mail
shows a change from the next load on), its logo, which of its parent's products it sells,
its default mark-up and commission, and the marketplaces under it. The same services as
the customisation API (``/api/v1/marketplace...``)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm

from cmw.accounts import service as accounts
from cmw.accounts.auth import Identity, current_marketplace
from cmw.accounts.models import Role
from cmw.assets.api import storage as file_storage
from cmw.assets.service import InvalidImage, image_view
from cmw.catalog import service as catalog
from cmw.extensions import current_session
from cmw.marketplaces import pricing, service
from cmw.marketplaces.models import Marketplace
from marketplace.forms import (
    ActionForm,
    BrandingForm,
    ChildMarketplaceForm,
    MarketplacePricingForm,
    UploadForm,
)
from marketplace.views import admin_identity, bp, save_upload, sign_in_first

#: text fields left empty mean "none" rather than ""
_NONE_WHEN_EMPTY = ("domain", "support_email", "email_sender_name")


def _field_error(form: FlaskForm, field: str, message: str) -> None:
    target = form._fields.get(field.split(".")[0]) or next(iter(form._fields.values()))
    target.errors = [*target.errors, message]


def _page(status: int = 200, **forms: FlaskForm) -> ResponseReturnValue:
    session = current_session()
    marketplace = current_marketplace()
    branding = forms.get("branding") or BrandingForm(obj=marketplace, formdata=None)
    prices = forms.get("prices") or MarketplacePricingForm(
        formdata=None,
        data={
            "default_markup_percent": _percent(marketplace.default_markup_percent),
            "commission_percent": _percent(marketplace.commission_percent),
        },
    )
    children = session.scalars(
        sa.select(Marketplace).where(Marketplace.parent_id == marketplace.id).order_by(Marketplace.name)
    )
    base_url = current_app.config["MERCATO"].base_url
    return render_template(
        "admin_marketplace.html",
        branding=branding,
        prices=prices,
        child_form=forms.get("child") or ChildMarketplaceForm(formdata=None),
        upload_form=UploadForm(formdata=None),
        action_form=ActionForm(),
        logo=image_view(file_storage(), marketplace.logo) if marketplace.logo_image_id else None,
        selection=catalog.selection(session, marketplace) if marketplace.parent_id else None,
        children=[(child, service.address(child, base_url)) for child in children],
        can_have_children=marketplace.kind in service.CHILD_KIND,
        address=service.address(marketplace, base_url),
    ), status


def _percent(value: Any) -> str:
    return "" if value is None else format(value.normalize(), "f")


def _admin() -> Identity | None:
    identity = admin_identity()
    if identity is not None and request.method == "POST" and not ActionForm().validate_on_submit():
        abort(400)  # the CSRF token every form here carries
    return identity


@bp.route("/admin/marketplace", methods=["GET", "POST"])
def admin_marketplace() -> ResponseReturnValue:
    """The marketplace's branding, shown to customers from their next page load on."""
    if _admin() is None:
        return sign_in_first()
    if request.method == "GET":
        return _page()
    session = current_session()
    form = BrandingForm()
    if not form.validate():
        return _page(422, branding=form)
    data: dict[str, Any] = {name: (form[name].data or "").strip() for name in service.BRANDING_FIELDS}
    for name in _NONE_WHEN_EMPTY:
        data[name] = data[name] or None
    try:
        service.update_branding(session, current_marketplace(), data)
        session.commit()
    except service.MarketplaceError as exc:
        session.rollback()
        _field_error(form, exc.field, str(exc))
        return _page(422, branding=form)
    flash("The branding is saved: pages and e-mails show it from now on.", "info")
    return redirect(url_for("pages.admin_marketplace"))


@bp.post("/admin/marketplace/logo")
def admin_marketplace_logo() -> ResponseReturnValue:
    """Upload the logo: its renditions and the background colour it reads well on are made."""
    identity = _admin()
    if identity is None:
        return sign_in_first()
    session = current_session()
    form = UploadForm()
    if not form.validate():
        flash("; ".join(form.file.errors) or "Choose an image file.", "error")
        return redirect(url_for("pages.admin_marketplace") + "#logo")
    try:
        image = save_upload(identity, form)
    except InvalidImage as exc:
        session.rollback()
        flash(f"That image cannot be used: {exc.reason}.", "error")
    else:
        current_marketplace().logo_image_id = image.id
        session.commit()
        flash("The logo is saved.", "info")
    return redirect(url_for("pages.admin_marketplace") + "#logo")


@bp.post("/admin/marketplace/logo/remove")
def admin_marketplace_logo_remove() -> ResponseReturnValue:
    if _admin() is None:
        return sign_in_first()
    current_marketplace().logo_image_id = None
    current_session().commit()
    flash("The logo is removed: pages show the name alone.", "info")
    return redirect(url_for("pages.admin_marketplace") + "#logo")


@bp.post("/admin/marketplace/selection")
def admin_marketplace_selection() -> ResponseReturnValue:
    """Which of the parent's products this marketplace sells (all of them, or those ticked)."""
    if _admin() is None:
        return sign_in_first()
    session = current_session()
    marketplace = current_marketplace()
    if marketplace.parent_id is None:
        abort(404)
    ids: list[uuid.UUID] = []
    for value in request.form.getlist("product_ids"):
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            abort(400)
    try:
        catalog.select_products(session, marketplace, ids, sells_all=request.form.get("sells_all") == "y")
    except catalog.SelectionError as exc:
        session.rollback()
        flash(str(exc), "error")
    else:
        session.commit()
        flash("The selection is saved: the catalog sells it from now on.", "info")
    return redirect(url_for("pages.admin_marketplace") + "#selection")


@bp.post("/admin/marketplace/pricing")
def admin_marketplace_pricing() -> ResponseReturnValue:
    """The default mark-up over the parent's prices and the commission on own products."""
    if _admin() is None:
        return sign_in_first()
    session = current_session()
    form = MarketplacePricingForm()
    if not form.validate():
        return _page(422, prices=form)
    data: dict[str, Any] = {"commission_percent": form.commission_percent.data.strip()}
    if current_marketplace().parent_id is not None:
        data["default_markup_percent"] = (form.default_markup_percent.data or "").strip() or None
    try:
        pricing.set_pricing(session, current_marketplace(), data)
        session.commit()
    except pricing.MarkupError as exc:
        session.rollback()
        _field_error(form, exc.field, exc.message)
        return _page(422, prices=form)
    flash("The prices are saved: the storefront shows them from now on.", "info")
    return redirect(url_for("pages.admin_marketplace") + "#prices")


@bp.post("/admin/marketplace/children")
def admin_marketplace_child() -> ResponseReturnValue:
    """A marketplace under this one, with its first administrator."""
    if _admin() is None:
        return sign_in_first()
    session = current_session()
    form = ChildMarketplaceForm()
    if not form.validate():
        return _page(422, child=form)
    admin = None
    if email := (form.admin.data or "").strip():
        admin = accounts.find_user(session, email)
        if admin is None:
            _field_error(form, "admin", f"no user has the address {email}; they sign up first")
            return _page(422, child=form)
    data = {
        "name": form.name.data.strip(),
        "slug": form.slug.data.strip(),
        "domain": (form.domain.data or "").strip() or None,
    }
    try:
        child = service.create_child(session, current_marketplace(), data)
        if admin is not None:
            accounts.grant(session, admin, child, Role.ADMIN)
        session.commit()
    except service.MarketplaceError as exc:
        session.rollback()
        _field_error(form, exc.field, str(exc))
        return _page(422, child=form)
    flash(f"{child.name} is created. Its administrators brand it and choose what it sells.", "info")
    return redirect(url_for("pages.admin_marketplace") + "#children")
