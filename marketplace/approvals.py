"""The approval queue: orders of products that require approval, waiting for the auditor,
the vendor (``/vendor/approvals``) or a reseller marketplace's admins (``/admin/approvals``),
who approve them or reject them with a reason. The same service as the API."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from cmw.accounts.auth import Identity, current_identity
from cmw.accounts.models import Organisation
from cmw.catalog.models import Plan
from cmw.catalog.service import product_name
from cmw.extensions import current_session
from cmw.orders import approval
from cmw.orders.models import Order
from marketplace.forms import ActionForm, RejectOrderForm
from marketplace.views import admin_identity, bp, paged, sign_in_first, vendor_identity


def _queue(identity: Identity, panel: str, reject_form: RejectOrderForm | None = None) -> ResponseReturnValue:
    page = paged(approval.queue(identity.marketplace, identity.memberships))
    orders: list[Order] = page["items"]
    session = current_session()
    plan_ids = {o.plan_id for o in orders} | {
        uuid.UUID(o.change_from["plan_id"]) for o in orders if o.change_from
    }
    names = {
        str(i): n for i, n in session.execute(sa.select(Plan.id, Plan.name).where(Plan.id.in_(plan_ids)))
    }
    names |= {
        str(i): n
        for i, n in session.execute(
            sa.select(Organisation.id, Organisation.name).where(
                Organisation.id.in_({o.customer_id for o in orders})
            )
        )
    }
    products = {o.product_id: product_name(session, o.product_id) for o in orders}
    return (
        render_template(
            "approvals.html",
            page=page,
            names=names,
            products=products,
            panel=panel,
            action_form=ActionForm(),
            reject_form=reject_form or RejectOrderForm(formdata=None),
        ),
        422 if reject_form is not None else 200,
    )


@bp.get("/vendor/approvals")
def vendor_approvals() -> ResponseReturnValue:
    """Orders of your products waiting for your approval, oldest first."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    if identity.marketplace.parent_id is not None:
        abort(404)  # on a reseller's marketplace, its admins decide
    return _queue(identity, "vendor")


@bp.get("/admin/approvals")
def admin_approvals() -> ResponseReturnValue:
    """A reseller marketplace's orders waiting for its approval, oldest first."""
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    if identity.marketplace.parent_id is None:
        abort(404)  # on the platform, the vendors decide
    return _queue(identity, "admin")


@bp.post("/approvals/<uuid:order_id>/<any(approve, reject):decision>")
def decide(order_id: uuid.UUID, decision: str) -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    order = session.get(Order, order_id)
    if order is None or order.marketplace_id != identity.marketplace.id:
        abort(404)
    if not approval.can_decide(session, order, identity.memberships):
        abort(403)
    panel = "vendor" if identity.marketplace.parent_id is None else "admin"
    back = url_for("pages.vendor_approvals" if panel == "vendor" else "pages.admin_approvals")
    name = product_name(session, order.product_id)
    act: Callable[..., Order]
    args: tuple[str, ...]
    if decision == "approve":
        if not ActionForm().validate_on_submit():
            abort(400)
        act, args = approval.approve, ()
        done = f"Approved: the customer's order of {name} proceeds, and they are told."
    else:
        form = RejectOrderForm()
        if not form.validate_on_submit():
            if form.csrf_token.errors:
                abort(400)
            form.order_id = order.id
            return _queue(identity, panel, form)
        act, args = approval.reject, (form.reason.data or "",)
        done = f"Rejected: the customer is told why they cannot have {name}."
    try:
        act(session, order.id, identity.user.id, *args)
    except approval.ApprovalError as exc:
        session.rollback()
        flash(f"The order of {name} could not be {decision}d: {exc.message}.", "error")
        return redirect(back)
    session.commit()
    flash(done, "info")
    return redirect(back)
