"""The customers' control panel beyond the subscriptions list: a subscription's page (plan,
quantity, instance and history, changing plan or quantity), API tokens, the profile; and
the cost estimator customers use before ordering."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from wtforms import SelectChoice

from cmw.accounts import gdpr, keys
from cmw.accounts import service as accounts
from cmw.accounts.auth import Identity, current_identity, current_marketplace, end_session
from cmw.accounts.models import ApiToken, Role, SshKey, User
from cmw.billing import coupons as billing_coupons
from cmw.billing import payments as billing_payments
from cmw.billing.api import credit_note_response, pdf_response, ubl_response
from cmw.billing.errors import BillingError
from cmw.billing.models import Coupon, CouponRedemption, CreditNote, Invoice, InvoiceStatus, Payment
from cmw.catalog import service as catalog_service
from cmw.catalog.models import Plan
from cmw.extensions import current_session
from cmw.marketplaces import pricing
from cmw.money import format_amount, parse_amount
from cmw.orders import approval, subscriptions
from cmw.orders.models import Order, Subscription
from cmw.usage import budgets, estimates
from cmw.usage import live as live_costs
from cmw.usage.api import costs_of
from cmw.usage.models import Budget
from deployer import service as deployments
from deployer import variables as setup_variables
from deployer.models import Deployment
from marketplace.forms import (
    ActionForm,
    BudgetForm,
    ChangePlanForm,
    CouponForm,
    DetailsForm,
    EraseForm,
    PasswordForm,
    QuantityForm,
    SshKeyForm,
    TokenForm,
)
from marketplace.views import belongs, bp, no_store, paged, sign_in_first


def _own_subscription(identity: Identity, subscription_id: uuid.UUID, lock: bool = False) -> Subscription:
    stmt = sa.select(Subscription).where(Subscription.id == subscription_id)
    subscription = current_session().scalar(stmt.with_for_update() if lock else stmt)
    if subscription is None or not belongs(
        identity, subscription.marketplace_id, subscription.customer_id, Role.CUSTOMER
    ):
        abort(404)
    return subscription


def _plan_label(plan: Plan, quantity: int) -> str:
    monthly = subscriptions.monthly_price(plan, subscriptions.quantity_on(plan, quantity))
    return f"{plan.name}: {monthly:,.2f} {plan.currency} a month"


@bp.get("/account/subscriptions/<uuid:subscription_id>")
def subscription(subscription_id: uuid.UUID) -> ResponseReturnValue:
    """One subscription: its plan, quantity and period, its instance and what happened to
    it, and changing plan (upgrades now, downgrades at the period's end) or quantity."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    found = _own_subscription(identity, subscription_id)
    return _subscription_page(found, ChangePlanForm(formdata=None), QuantityForm(formdata=None), 200)


def _subscription_page(
    found: Subscription,
    plan_form: ChangePlanForm,
    quantity_form: QuantityForm,
    status: int,
    setup_values: dict[str, str] | None = None,
    setup_errors: dict[str, str] | None = None,
) -> ResponseReturnValue:
    session = current_session()
    setup = setup_variables.view(session, found)
    for variable in setup["variables"]:
        variable["value"] = (setup_values or {}).get(variable["name"], variable["value"])
        variable["error"] = (setup_errors or {}).get(variable["name"])
    plan = session.get(Plan, found.plan_id)
    assert plan is not None
    pending = session.get(Plan, found.pending_plan_id) if found.pending_plan_id else None
    others = subscriptions.plans_to_change_to(session, found)
    plan_form.plan.choices = [SelectChoice(str(p.id), _plan_label(p, found.quantity)) for p in others]
    if quantity_form.quantity.data is None:
        quantity_form.quantity.data = found.quantity
    per_unit = any(c.kind.value == "per_unit" for c in plan.components)
    deployment = session.scalar(sa.select(Deployment).where(Deployment.subscription_id == found.id))
    order_id = session.scalar(sa.select(Order.id).where(Order.subscription_id == found.id))
    actors = {
        u.id: u.name
        for u in session.scalars(
            sa.select(User).where(
                User.id.in_({c.actor_id for c in subscriptions.changes(session, found.id)} - {None})
            )
        )
    }
    return (
        render_template(
            "subscription.html",
            subscription=found,
            product=catalog_service.product_name(session, found.product_id),
            plan=plan,
            pending=pending,
            plan_form=plan_form,
            quantity_form=quantity_form,
            per_unit=per_unit,
            deployment=deployment,
            history=deployments.history(session, deployment.id) if deployment else [],
            changes=subscriptions.changes(session, found.id),
            actors=actors,
            order_id=order_id,
            action_form=ActionForm(),
            coupon_form=CouponForm(formdata=None),
            coupon=session.execute(
                sa.select(Coupon.code, CouponRedemption.periods_applied)
                .join(CouponRedemption, CouponRedemption.coupon_id == Coupon.id)
                .where(CouponRedemption.subscription_id == found.id)
            ).first(),
            live=found.status in subscriptions.LIVE,
            cost=next(iter(live_costs.costs(session, [found])), None),
            setup=setup,
            setup_error=(setup_errors or {}).get(""),
            changeable=deployment is not None
            and deployment.state not in setup_variables.GONE
            and deployment.desired != deployments.REMOVED,
        ),
        status,
    )


@bp.post("/account/subscriptions/<uuid:subscription_id>/variables")
def change_setup_variables(subscription_id: uuid.UUID) -> ResponseReturnValue:
    """The settings of the instance the customer may change: saved, and the vendor's setup
    runs again with them; errors next to their fields, nothing saved."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    found = _own_subscription(identity, subscription_id, lock=True)
    if not ActionForm().validate_on_submit():
        abort(400)
    names = [v["name"] for v in setup_variables.view(session, found)["variables"]]
    given = {name: request.form[f"var-{name}"] for name in names if f"var-{name}" in request.form}
    errors = {
        name: "At most 1,000 characters."
        for name, value in given.items()
        if len(value) > 1000 or "\0" in value
    }
    changed: list[str] = []
    if not errors:
        try:
            changed = setup_variables.change(session, found, given, identity.user.id)
        except setup_variables.VariablesError as exc:
            session.rollback()
            errors = {"": exc.message}
            found = _own_subscription(identity, subscription_id)
    if errors:
        plan_form, quantity_form = ChangePlanForm(formdata=None), QuantityForm(formdata=None)
        return _subscription_page(found, plan_form, quantity_form, 422, given, errors)
    session.commit()
    flash(
        "Saved: the setup runs again on your instance with the new settings; we tell you when it is done."
        if changed
        else "Nothing changed: those are the settings your instance has.",
        "info",
    )
    return redirect(url_for("pages.subscription", subscription_id=found.id) + "#settings")


@bp.post("/account/subscriptions/<uuid:subscription_id>/coupon")
def redeem_coupon(subscription_id: uuid.UUID) -> ResponseReturnValue:
    """Redeem a coupon code on the subscription: its next periods' fees are discounted."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    found = _own_subscription(identity, subscription_id, lock=True)
    form = CouponForm()
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        flash("Type the coupon code.", "error")
    else:
        try:
            billing_coupons.redeem(session, found, form.code.data or "", identity.user.id)
        except BillingError as exc:
            session.rollback()
            flash(f"That coupon cannot be used: {exc.message}.", "error")
        else:
            session.commit()
            flash("The coupon is applied: it shows as a discount on your next invoices.", "info")
    return redirect(url_for("pages.subscription", subscription_id=subscription_id))


@bp.post("/account/subscriptions/<uuid:subscription_id>/<any(plan, quantity):what>")
def change_subscription(subscription_id: uuid.UUID, what: str) -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    found = _own_subscription(identity, subscription_id, lock=True)
    plan_form = ChangePlanForm() if what == "plan" else ChangePlanForm(formdata=None)
    quantity_form = QuantityForm() if what == "quantity" else QuantityForm(formdata=None)
    form = plan_form if what == "plan" else quantity_form
    if what == "plan":
        plan_form.plan.choices = [
            SelectChoice(str(p.id), p.name) for p in subscriptions.plans_to_change_to(session, found)
        ]
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        return _subscription_page(found, plan_form, quantity_form, 422)
    try:
        new_plan = session.get(Plan, uuid.UUID(plan_form.plan.data)) if what == "plan" else None
        waiting = approval.request_change(
            session,
            found,
            plan=new_plan,
            quantity=quantity_form.quantity.data if what == "quantity" else None,
            user_id=identity.user.id,
            memberships=identity.memberships,
        )
        if waiting is not None:
            message = "Your change waits for approval; we tell you as soon as it is decided."
        elif new_plan is not None:
            when = subscriptions.change_plan(session, found, new_plan, identity.user.id)
            message = {
                "now": f"You are on {new_plan.name} from now on.",
                "on_resize": f"Your machine is being resized for {new_plan.name}; you move to it, "
                "and are billed for it, as soon as that is done.",
            }.get(
                when,
                f"You move to {new_plan.name} when the period ends, {found.current_period_end:%d %b %Y}.",
            )
        else:
            subscriptions.change_quantity(session, found, quantity_form.quantity.data, identity.user.id)
            message = f"The quantity is now {found.quantity}."
    except (subscriptions.ChangeError, approval.ApprovalError) as exc:
        session.rollback()
        getattr(form, exc.field, form[next(iter(form._fields))]).errors = [exc.message]
        found = _own_subscription(identity, subscription_id)
        return _subscription_page(found, plan_form, quantity_form, 422)
    session.commit()
    flash(message, "info")
    return redirect(url_for("pages.subscription", subscription_id=found.id))


@bp.post("/account/sign-out-everywhere")
def sign_out_everywhere() -> ResponseReturnValue:
    """End every browser session of the user, on every device, this one included."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    if not ActionForm().validate_on_submit():
        abort(400)
    accounts.end_all_sessions(current_session(), identity.user)
    end_session()
    current_session().commit()
    flash("You are signed out everywhere. Sign in again here.", "info")
    return redirect(url_for("pages.sign_in"))


# ------------------------------------------------------------------ API tokens
@bp.route("/account/tokens", methods=["GET", "POST"])
def tokens() -> ResponseReturnValue:
    """Personal API tokens for this marketplace: create one (its secret is shown once), revoke."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    form = TokenForm()
    secret = None
    status = 200
    if request.method == "POST":
        if form.validate_on_submit():
            days = int(form.expires_in_days.data or 0)
            _token, secret = accounts.create_token(
                session,
                identity.user,
                identity.marketplace,
                name=form.name.data or "",
                expires_at=accounts.default_token_expiry(days),
            )
            session.commit()
            form = TokenForm(formdata=None)
        elif form.csrf_token.errors:
            abort(400)
        else:
            status = 422
    listed = session.scalars(
        sa.select(ApiToken)
        .where(ApiToken.user_id == identity.user.id, ApiToken.marketplace_id == identity.marketplace.id)
        .order_by(ApiToken.created_at.desc())
        .limit(100)
    )
    body = render_template(
        "tokens.html", tokens=list(listed), form=form, secret=secret, action_form=ActionForm()
    )
    return no_store(body, status) if secret is not None else (body, status)


@bp.post("/account/tokens/<uuid:token_id>/revoke")
def revoke_token(token_id: uuid.UUID) -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    if not ActionForm().validate_on_submit():
        abort(400)
    session = current_session()
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != identity.user.id or token.marketplace_id != identity.marketplace.id:
        abort(404)
    accounts.revoke_token(session, token)
    session.commit()
    flash(f"The token {token.name} is revoked: requests with it are refused from now on.", "info")
    return redirect(url_for("pages.tokens"))


# ------------------------------------------------------------------ profile
@bp.route("/account/profile", methods=["GET", "POST"])
def profile() -> ResponseReturnValue:
    """Who you are here, and changing your password."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    form = PasswordForm()
    status = 200
    if request.method == "POST":
        status = 422
        if form.validate_on_submit():
            user = session.get(User, identity.user.id)
            assert user is not None
            try:
                accounts.authenticate(session, user.email, form.current.data or "")
            except accounts.InvalidCredentials:
                form.current.errors = ["this is not your current password"]
            else:
                try:
                    accounts.set_password(session, user, form.new.data or "")
                except accounts.WeakPassword as exc:
                    session.rollback()
                    form.new.errors = [str(exc)]
                else:
                    session.commit()
                    flash("Your password is changed.", "info")
                    return redirect(url_for("pages.profile"))
        elif form.csrf_token.errors:
            abort(400)
    return _profile(form=form), status


def _profile(**forms: Any) -> str:
    identity = current_identity()
    assert identity is not None
    details = DetailsForm(formdata=None, name=identity.user.name, language=identity.user.language)
    defaults = {
        "form": PasswordForm(formdata=None),
        "details_form": details,
        "erase_form": EraseForm(formdata=None),
        "action_form": ActionForm(),
    }
    return render_template("profile.html", **{**defaults, **forms})


@bp.post("/account/profile/details")
def profile_details() -> ResponseReturnValue:
    """Your name and language (the language reaches the instances you order)."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    form = DetailsForm()
    if form.validate_on_submit():
        session = current_session()
        user = session.get(User, identity.user.id)
        assert user is not None
        user.name = (form.name.data or "").strip() or user.name
        user.language = form.language.data or "en"
        session.commit()
        flash("Your name and language are saved.", "info")
        return redirect(url_for("pages.profile"))
    if form.csrf_token.errors:
        abort(400)
    return _profile(details_form=form), 422


@bp.get("/account/data")
def my_data() -> ResponseReturnValue:
    """Everything held about you, as a ZIP of JSON files (GDPR)."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    user = session.get(User, identity.user.id)
    assert user is not None
    return Response(
        gdpr.export(session, user),
        mimetype="application/zip",
        headers={
            "Content-Disposition": 'attachment; filename="mercato-data.zip"',
            "Cache-Control": "no-store",
        },
    )


@bp.post("/account/erase")
def erase_me() -> ResponseReturnValue:
    """Erase your personal data (GDPR), then you are signed out."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    form = EraseForm()
    user = session.get(User, identity.user.id)
    assert user is not None
    if form.validate_on_submit():
        if (form.confirm_email.data or "").strip().lower() != user.email.lower():
            form.confirm_email.errors = ["this is not the e-mail address you sign in with"]
        else:
            try:
                gdpr.erase(session, user)
            except gdpr.ErasureRefused as exc:
                session.rollback()
                form.confirm_email.errors = [str(exc)]
            else:
                end_session()
                session.commit()
                flash(
                    "Your personal data is erased and you are signed out. "
                    "Invoices are kept, as the law requires.",
                    "info",
                )
                return redirect(url_for("pages.home"))
    elif form.csrf_token.errors:
        abort(400)
    return _profile(erase_form=form), 422


# ------------------------------------------------------------------ cost estimator
@bp.get("/products/<string:slug>/estimate")
def estimate(slug: str) -> ResponseReturnValue:
    """The product page's cost estimator: plan, quantity, expected usage per month and a
    number of months in; the estimate with its breakdown out (the API's calculation)."""
    session = current_session()
    found = catalog_service.find_published(session, current_marketplace(), slug)
    if found is None:
        abort(404)
    live = found.live_version
    assert live is not None
    metered = estimate_inputs(live.plans)
    errors: dict[str, str] = {}
    args = request.args
    plan = next((p for p in live.plans if p.code == args.get("plan")), live.plans[0] if live.plans else None)
    quantity = _int_arg("quantity", 1, 1, 100_000, errors)
    months = _int_arg("months", 12, 1, 120, errors)
    usage: dict[str, Decimal] = {}
    for metric in (str(m["metric"]) for m in metered):
        raw = (args.get(f"u.{metric}") or "").strip()
        if not raw:
            continue
        try:
            usage[metric] = parse_amount(raw)
        except ValueError as exc:
            errors[f"u.{metric}"] = str(exc)
    result = None
    if plan is not None and not errors:
        own = {c.metric for c in plan.components if c.metric}
        specs = pricing.price_list(session, current_marketplace(), found).specs(plan)
        item = estimates.Item(plan, quantity, {k: v for k, v in usage.items() if k in own}, live.name, specs)
        try:
            result = estimates.estimate([item], months)
        except estimates.EstimateError as exc:
            errors[exc.field.replace("usage.", "u.", 1)] = exc.message
    return (
        render_template(
            "estimate.html",
            product=found,
            name=live.name,
            plans=live.plans,
            plan=plan,
            metered=metered,
            quantity=quantity,
            months=months,
            usage=args,
            errors=errors,
            result=result,
        ),
        422 if errors else 200,
    )


def estimate_inputs(plans: list[Plan]) -> list[dict[str, str | None]]:
    """One input per metric any plan meters: its metric, label and unit."""
    seen: dict[str, dict[str, str | None]] = {}
    for plan in plans:
        for c in plan.components:
            if c.metric and c.metric not in seen:
                seen[c.metric] = {"metric": c.metric, "label": c.label, "unit": c.unit}
    return list(seen.values())


def _int_arg(name: str, default: int, low: int, high: int, errors: dict[str, str]) -> int:
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        errors[name] = f"a whole number from {low} to {high}"
        return default
    return int(raw)


# ------------------------------------------------------------------ invoices
@bp.get("/account/invoices")
def invoices() -> ResponseReturnValue:
    """Your organisations' invoices, newest first."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    page = paged(
        sa.select(Invoice)
        .where(
            Invoice.marketplace_id == identity.marketplace.id,
            Invoice.customer_id.in_(identity.organisations_with(Role.CUSTOMER)),
            Invoice.status != InvoiceStatus.DRAFT,
        )
        .order_by(Invoice.issued_at.desc(), Invoice.id),
    )
    return render_template("invoices.html", page=page)


def _own_invoice(identity: Identity, invoice_id: uuid.UUID) -> Invoice:
    """An issued invoice of one of the caller's customer organisations; anything else is 404."""
    found = current_session().get(Invoice, invoice_id)
    if (
        found is None
        or found.status is InvoiceStatus.DRAFT
        or not belongs(identity, found.marketplace_id, found.customer_id, Role.CUSTOMER)
    ):
        abort(404)
    return found


@bp.get("/account/invoices/<uuid:invoice_id>")
def invoice(invoice_id: uuid.UUID) -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    found = _own_invoice(identity, invoice_id)
    session = current_session()
    return render_template(
        "invoice.html",
        invoice=found,
        payments=session.scalars(
            sa.select(Payment).where(Payment.invoice_id == found.id).order_by(Payment.received_at)
        ).all(),
        credit_notes=session.scalars(
            sa.select(CreditNote).where(CreditNote.invoice_id == found.id).order_by(CreditNote.sequence)
        ).all(),
        outstanding=billing_payments.outstanding(session, found),
    )


@bp.get("/account/invoices/<uuid:invoice_id>/pdf")
def invoice_pdf(invoice_id: uuid.UUID) -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    return pdf_response(_own_invoice(identity, invoice_id))


@bp.get("/account/invoices/<uuid:invoice_id>/ubl")
def invoice_ubl(invoice_id: uuid.UUID) -> ResponseReturnValue:
    """The e-invoice (UBL 2.1) for the customer's accounting system."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    return ubl_response(_own_invoice(identity, invoice_id))


@bp.get("/account/credit-notes/<uuid:note_id>/<any(pdf, ubl):kind>")
def credit_note_document(note_id: uuid.UUID, kind: str) -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    found = current_session().get(CreditNote, note_id)
    if found is None or not belongs(identity, found.marketplace_id, found.customer_id, Role.CUSTOMER):
        abort(404)
    return credit_note_response(found, kind)


# ------------------------------------------------------------------ live costs and budget
@bp.route("/account/costs", methods=["GET", "POST"])
def costs() -> ResponseReturnValue:
    """The live cost of each subscription this period, the totals, and the budget."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    customers = sorted(identity.organisations_with(Role.CUSTOMER))
    if not customers:
        abort(404)
    organisation_id = customers[0]
    session = current_session()
    form = BudgetForm()
    status = 200
    if request.method == "POST":
        if not form.validate_on_submit():
            if form.csrf_token.errors:
                abort(400)
            status = 422
        elif request.form.get("remove"):
            budget = session.get(Budget, organisation_id)
            if budget is not None:
                session.delete(budget)
            session.commit()
            flash("The budget is removed.", "info")
            return redirect(url_for("pages.costs"))
        else:
            try:
                amount = parse_amount((form.amount.data or "").strip())
                budgets.set_budget(
                    session, identity.marketplace.id, organisation_id, amount, form.currency.data or ""
                )
            except budgets.BudgetError as exc:
                session.rollback()
                getattr(form, exc.field).errors = [exc.message]
                status = 422
            except ValueError:
                session.rollback()
                form.amount.errors = ["a number, such as 250 or 99.50"]
                status = 422
            else:
                session.commit()
                flash("The budget is saved: you are told at 80% and 100% of it.", "info")
                return redirect(url_for("pages.costs"))
    found = costs_of(organisation_id)
    if request.method == "GET" and found["budget"]:
        form.amount.data = format_amount(found["budget"]["amount"])
        form.currency.data = found["budget"]["currency"]
    return render_template("costs.html", costs=found, form=form), status


# ------------------------------------------------------------------ SSH keys
@bp.route("/account/ssh-keys", methods=["GET", "POST"])
def ssh_keys() -> ResponseReturnValue:
    """Your SSH public keys, to pick when ordering (installed for the machine's login user)."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    form = SshKeyForm()
    status = 200
    if request.method == "POST":
        if form.validate_on_submit():
            user = session.get(User, identity.user.id)
            assert user is not None
            try:
                keys.add_key(session, user, form.name.data or "", form.public_key.data or "")
            except keys.KeyError_ as exc:
                session.rollback()
                form.public_key.errors = [str(exc)]
                status = 422
            else:
                session.commit()
                flash("The key is saved: choose it when you order.", "info")
                return redirect(url_for("pages.ssh_keys"))
        elif form.csrf_token.errors:
            abort(400)
        else:
            status = 422
    return (
        render_template(
            "ssh_keys.html", keys=keys.keys_of(session, identity.user.id), form=form, action_form=ActionForm()
        ),
        status,
    )


@bp.post("/account/ssh-keys/<uuid:key_id>/remove")
def remove_ssh_key(key_id: uuid.UUID) -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    if not ActionForm().validate_on_submit():
        abort(400)
    session = current_session()
    found = session.get(SshKey, key_id)
    if found is None or found.user_id != identity.user.id:
        abort(404)
    keys.remove_key(session, found)
    session.commit()
    flash(
        f"The key {found.name} is removed. Machines it was given to when you ordered keep it; "
        "as vendor support access it is taken off your products' instances.",
        "info",
    )
    return redirect(url_for("pages.ssh_keys"))
