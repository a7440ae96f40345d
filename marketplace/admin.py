"""The administrators' control panel beyond the review queue and deployments: cloud
accounts with the connection test, and users with their roles and organisations."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import sessionmaker
from wtforms import SelectChoice

from cmw.accounts import oidc
from cmw.accounts import service as accounts
from cmw.accounts.auth import current_marketplace, identity_provider
from cmw.accounts.models import IdentityProvider, Membership, Organisation, OrganisationKind, Role, User
from cmw.audit import service as audit
from cmw.billing import coupons as billing_coupons
from cmw.billing import service as billing
from cmw.billing import taxes
from cmw.billing.errors import BillingError
from cmw.billing.models import BillingRun, BillingSettings, Coupon, CouponRedemption, TaxRate
from cmw.catalog.models import Plan, ProductVersion
from cmw.extensions import current_session
from cmw.marketplaces.models import Marketplace
from cmw.money import parse_amount
from cmw.monitoring import api as monitoring_api
from cmw.monitoring import health
from cmw.orders import service as orders_service
from cmw.orders.models import Order, OrderStatus
from deployer import clouds
from deployer import service as deployments
from deployer.models import CloudAccount
from marketplace.forms import (
    ActionForm,
    CloudAccountForm,
    CouponCreateForm,
    OnBehalfOrderForm,
    SellerForm,
    SignInSettingsForm,
    TaxRateForm,
)
from marketplace.views import admin_identity, bp, paged, pairs, sign_in_first


def _provider_choices() -> list[SelectChoice]:
    return [SelectChoice(p, p) for p in clouds.providers()]


def _account_form(account: CloudAccount | None = None) -> CloudAccountForm:
    form = (
        CloudAccountForm(obj=account)
        if account is not None and request.method == "GET"
        else CloudAccountForm()
    )
    form.provider.choices = _provider_choices()
    if account is not None and request.method == "GET":
        form.credentials.data = ""
        form.driver_options.data = "\n".join(f"{k} = {v}" for k, v in (account.driver_options or {}).items())
    return form


def _values(form: CloudAccountForm, creating: bool) -> dict[str, Any] | None:
    credentials = pairs(form.credentials.data or "", form.credentials)
    options = pairs(form.driver_options.data or "", form.driver_options)
    if credentials is None or options is None:
        return None
    values: dict[str, Any] = {
        "slug": (form.slug.data or "").strip(),
        "name": (form.name.data or "").strip(),
        "provider": form.provider.data,
        "region": (form.region.data or "").strip() or None,
        "driver_options": options,
        "default_network": (form.default_network.data or "").strip() or None,
        "ssh_host": (form.ssh_host.data or "").strip() or None,
        "ssh_port": form.ssh_port.data,
        "ssh_username": (form.ssh_username.data or "").strip(),
        "is_active": bool(form.is_active.data),
    }
    if credentials or creating:
        values["credentials"] = credentials  # left blank on an edit: unchanged
    return values


@bp.get("/admin/cloud-accounts")
def cloud_accounts() -> ResponseReturnValue:
    """The clouds the platform deploys to: provider, region, SSH endpoint, whether active."""
    if admin_identity() is None:
        return sign_in_first()
    if current_marketplace().parent_id is not None:  # the platform's (deployer.api.platform_only)
        abort(404)
    listed = current_session().scalars(
        sa.select(CloudAccount).where(CloudAccount.owner_id.is_(None)).order_by(CloudAccount.name).limit(500)
    )
    return render_template("admin_cloud_accounts.html", accounts=list(listed), form=ActionForm())


@bp.route("/admin/cloud-accounts/new", methods=["GET", "POST"], defaults={"account_id": None})
@bp.route("/admin/cloud-accounts/<uuid:account_id>", methods=["GET", "POST"])
def cloud_account(account_id: uuid.UUID | None) -> ResponseReturnValue:
    """Add a cloud account or change one (credentials left blank stay as they are)."""
    if admin_identity() is None:
        return sign_in_first()
    if current_marketplace().parent_id is not None:  # the platform's (deployer.api.platform_only)
        abort(404)
    session = current_session()
    account = session.get(CloudAccount, account_id) if account_id else None
    if account_id and account is None:
        abort(404)
    form = _account_form(account)
    status = 200
    if request.method == "POST":
        valid = form.validate_on_submit()
        if form.csrf_token.errors:
            abort(400)
        status = 422
        values = _values(form, creating=account is None)
        if valid and values is not None:
            sealer = current_app.extensions["mercato.sealer"]
            try:
                if account is None:
                    account = deployments.create_cloud_account(
                        session, sealer, deployments.CloudAccountInput(**values)
                    )
                else:
                    deployments.update_cloud_account(session, sealer, account, values)
            except deployments.CloudAccountError as exc:
                session.rollback()
                target = form._fields.get(exc.field, form.name)
                target.errors = [*target.errors, str(exc)]
            else:
                session.commit()
                flash(f"{account.name} is saved. Test its connection next.", "info")
                return redirect(url_for("pages.cloud_accounts") + f"#account-{account.slug}")
    return render_template("admin_cloud_account.html", form=form, account=account), status


@bp.post("/admin/cloud-accounts/<uuid:account_id>/test")
def test_cloud_account(account_id: uuid.UUID) -> ResponseReturnValue:
    """Try the account's credentials: list its sizes and images, and say how long it took."""
    if admin_identity() is None:
        return sign_in_first()
    if current_marketplace().parent_id is not None:  # the platform's (deployer.api.platform_only)
        abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    session = current_session()
    account = session.get(CloudAccount, account_id)
    if account is None:
        abort(404)
    try:
        result = deployments.test_cloud_account(current_app.extensions["mercato.sealer"], account)
    except clouds.DeployError as exc:
        flash(f"{account.name} does not work: {exc}", "error")
    else:
        flash(
            f"{account.name} works: {len(result['sizes'])} sizes and {len(result['images'])} images"
            f" listed in {result['seconds']:.1f} s.",
            "info",
        )
    return redirect(url_for("pages.cloud_accounts") + f"#account-{account.slug}")


# ------------------------------------------------------------------ users
@bp.get("/admin/users")
def admin_users() -> ResponseReturnValue:
    """The marketplace's users with their roles and organisations; search; disable or enable."""
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    q = (request.args.get("q") or "").strip()[:100]
    role_arg = request.args.get("role") or ""
    role = Role(role_arg) if role_arg in {r.value for r in Role} else None
    page = paged(accounts.users_of(identity.marketplace, role, q or None))
    users: list[User] = page["items"]
    grants = session.execute(
        sa.select(Membership.user_id, Membership.role, Organisation.name)
        .outerjoin(Organisation, Organisation.id == Membership.organisation_id)
        .where(
            Membership.marketplace_id == identity.marketplace.id,
            Membership.user_id.in_([u.id for u in users]),
        )
        .order_by(Membership.role)
    ).all()
    roles: dict[uuid.UUID, list[str]] = {}
    for user_id, granted, organisation in grants:
        roles.setdefault(user_id, []).append(
            f"{granted.value}{f' of {organisation}' if organisation else ''}"
        )

    return render_template(
        "admin_users.html",
        page=page,
        roles=roles,
        q=q,
        role=role_arg,
        all_roles=[r.value for r in Role],
        form=ActionForm(),
    )


@bp.post("/admin/users/<uuid:user_id>/<any(disable, enable):action>")
def admin_user_active(user_id: uuid.UUID, action: str) -> ResponseReturnValue:
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    if not ActionForm().validate_on_submit():
        abort(400)
    session = current_session()
    user = session.scalar(
        accounts.users_of(identity.marketplace).where(User.id == user_id).with_for_update(of=User)
    )
    if user is None:
        abort(404)
    try:
        accounts.set_active_by(session, identity.user, user, action == "enable")
    except accounts.CannotChangeUser as exc:
        session.rollback()
        flash(str(exc), "error")
    else:
        session.commit()
        flash(
            f"{user.name} is disabled: their sessions and API tokens stop working."
            if action == "disable"
            else f"{user.name} can sign in again.",
            "info",
        )
    return redirect(
        request.referrer
        if request.referrer and request.referrer.startswith(request.host_url)
        else url_for("pages.admin_users")
    )


# ------------------------------------------------------------------ billing
@bp.route("/admin/billing", methods=["GET", "POST"])
def admin_billing() -> ResponseReturnValue:
    """Billing runs (and running one now), the seller details printed on invoices, and
    the tax rates."""
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    settings = taxes.settings_of(session, identity.marketplace.id)
    seller_form = _seller_form(settings) if request.method == "GET" else SellerForm()
    status = 200
    if request.method == "POST":
        valid = seller_form.validate_on_submit()
        if seller_form.csrf_token.errors:
            abort(400)
        status = 422
        if valid:
            changes = {
                "seller_legal_name": (seller_form.seller_legal_name.data or "").strip(),
                "seller_country": (seller_form.seller_country.data or "").strip() or None,
                "seller_vat_number": (seller_form.seller_vat_number.data or "").strip() or None,
                "seller_address": [
                    line.strip()
                    for line in (seller_form.seller_address.data or "").splitlines()
                    if line.strip()
                ][:6],
                "payment_terms_days": seller_form.payment_terms_days.data,
                "payment_instructions": seller_form.payment_instructions.data or "",
                "reminder_days": [
                    int(p) for p in (seller_form.reminder_days.data or "").replace(" ", "").split(",") if p
                ],
                "past_due_after_days": seller_form.past_due_after_days.data,
                "suspend_after_days": seller_form.suspend_after_days.data,
                "cancel_after_days": seller_form.cancel_after_days.data,
            }
            try:
                taxes.update_settings(session, identity.marketplace.id, changes)
            except BillingError as exc:
                session.rollback()
                target = seller_form._fields.get(exc.field, seller_form.seller_legal_name)
                target.errors = [*target.errors, exc.message]
            else:
                session.commit()
                flash(
                    "The seller details and dunning are saved: invoices issued from now on print them.",
                    "info",
                )
                return redirect(url_for("pages.admin_billing"))
    else:
        session.commit()  # the settings row, made on first visit
    return _billing_page(status, seller_form=seller_form)


def _seller_form(settings: BillingSettings) -> SellerForm:
    """The seller details form filled in from the stored settings."""
    form = SellerForm(obj=settings, formdata=None)
    form.seller_address.data = "\n".join(settings.seller_address or [])
    form.reminder_days.data = ", ".join(str(d) for d in settings.reminder_days or [])
    return form


def _billing_page(
    status: int,
    *,
    seller_form: SellerForm | None = None,
    rate_form: TaxRateForm | None = None,
    coupon_form: CouponCreateForm | None = None,
) -> ResponseReturnValue:
    """The billing page; the forms not given are shown fresh (the seller's filled in)."""
    session = current_session()
    marketplace_id = current_marketplace().id
    runs = session.scalars(sa.select(BillingRun).order_by(BillingRun.started_at.desc()).limit(20))
    rates = session.scalars(
        sa.select(TaxRate)
        .where(TaxRate.marketplace_id == marketplace_id)
        .order_by(TaxRate.seller_country, TaxRate.buyer_country)
    )
    return (
        render_template(
            "admin_billing.html",
            runs=list(runs),
            rates=list(rates),
            seller_form=seller_form or _seller_form(taxes.settings_of(session, marketplace_id)),
            rate_form=rate_form or TaxRateForm(formdata=None),
            coupon_form=coupon_form or CouponCreateForm(formdata=None),
            coupons=session.execute(
                sa.select(Coupon, sa.func.count(CouponRedemption.id))
                .outerjoin(CouponRedemption, CouponRedemption.coupon_id == Coupon.id)
                .where(Coupon.marketplace_id == marketplace_id)
                .group_by(Coupon.id)
                .order_by(Coupon.code)
            ).all(),
            form=ActionForm(),
        ),
        status,
    )


@bp.post("/admin/billing/run")
def admin_billing_run() -> ResponseReturnValue:
    """Bill everything due now (what the worker does every hour)."""
    if admin_identity() is None:
        return sign_in_first()
    if not ActionForm().validate_on_submit():
        abort(400)
    factory = sessionmaker(bind=current_session().get_bind(), expire_on_commit=False)
    report = billing.run(factory)
    flash(f"Billing run done: {len(report.invoices)} invoice(s) issued, {report.lines} line(s).", "info")
    return redirect(url_for("pages.admin_billing"))


@bp.post("/admin/billing/tax-rates")
def admin_add_tax_rate() -> ResponseReturnValue:
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    form = TaxRateForm()
    valid = form.validate_on_submit()
    if form.csrf_token.errors:
        abort(400)
    if valid:
        try:
            rate = parse_amount((form.rate.data or "").strip())
        except ValueError as exc:
            form.rate.errors = [str(exc)]
        else:
            try:
                seller, buyer = form.seller_country.data or "", form.buyer_country.data or ""
                taxes.add_rate(session, identity.marketplace.id, seller, buyer, rate, form.name.data or "VAT")
            except BillingError as exc:
                session.rollback()
                target = form._fields.get(exc.field, form.rate)
                target.errors = [*target.errors, exc.message]
            else:
                session.commit()
                flash("The tax rate is added.", "info")
                return redirect(url_for("pages.admin_billing") + "#tax-rates")
    return _billing_page(422, rate_form=form)


@bp.post("/admin/billing/tax-rates/<uuid:rate_id>/remove")
def admin_remove_tax_rate(rate_id: uuid.UUID) -> ResponseReturnValue:
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    if not ActionForm().validate_on_submit():
        abort(400)
    session = current_session()
    found = session.get(TaxRate, rate_id)
    if found is None or found.marketplace_id != identity.marketplace.id:
        abort(404)
    session.delete(found)
    session.commit()
    flash("The tax rate is removed.", "info")
    return redirect(url_for("pages.admin_billing") + "#tax-rates")


@bp.post("/admin/billing/coupons")
def admin_add_coupon() -> ResponseReturnValue:
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    form = CouponCreateForm()
    valid = form.validate_on_submit()
    if form.csrf_token.errors:
        abort(400)
    if valid:
        try:
            value = parse_amount((form.value.data or "").strip())
        except ValueError as exc:
            form.value.errors = [str(exc)]
        else:
            data = {
                "code": form.code.data or "",
                "kind": form.kind.data,
                "percent": value if form.kind.data == "percent" else None,
                "amount": value if form.kind.data == "fixed" else None,
                "currency": form.currency.data or None,
                "duration": form.duration.data,
                "periods": form.periods.data,
                "max_redemptions": form.max_redemptions.data,
            }
            try:
                billing_coupons.create(session, identity.marketplace.id, data)
            except BillingError as exc:
                session.rollback()
                target = form._fields.get(
                    {"percent": "value", "amount": "value"}.get(exc.field, exc.field), form.code
                )
                target.errors = [*target.errors, exc.message]
            else:
                session.commit()
                flash("The coupon is created.", "info")
                return redirect(url_for("pages.admin_billing") + "#coupons")
    return _billing_page(422, coupon_form=form)


# ------------------------------------------------------------------ sign-in settings
@bp.route("/admin/sign-in", methods=["GET", "POST"])
def admin_sign_in() -> ResponseReturnValue:
    """Single sign-on for this marketplace, and whether passwords still work."""
    if admin_identity() is None:
        return sign_in_first()
    session = current_session()
    marketplace = current_marketplace()
    own = session.get(IdentityProvider, marketplace.id)
    form = SignInSettingsForm(
        data={
            "local_sign_in": marketplace.local_sign_in,
            "issuer": own.issuer if own else "",
            "client_id": own.client_id if own else "",
            "audience": own.audience if own else "",
            "roles": "\n".join(f"{k} = {v}" for k, v in (own.roles if own else {}).items()),
            "display_name": own.display_name if own else "Keycloak",
            "default_country": own.default_country if own else "DE",
            "provision_users": own.provision_users if own else False,
            "introspect": own.introspect if own else False,
        }
    )
    status = 200
    if request.method == "POST":
        if not form.validate_on_submit():
            if form.csrf_token.errors:
                abort(400)
            status = 422
        elif _save_sign_in(form, marketplace):
            session.commit()
            flash("Sign-in settings saved.", "info")
            return redirect(url_for("pages.admin_sign_in"))
        else:
            session.rollback()
            status = 422
    g.pop("identity_provider", None)
    return render_template(
        "admin_sign_in.html", form=form, own=own, provider=oidc.describe(identity_provider())
    ), status


def _save_sign_in(form: SignInSettingsForm, marketplace: Marketplace) -> bool:
    """Apply the form; False (with the errors on the form) if it is refused."""
    session = current_session()
    data: dict[str, Any] | None = None
    if (form.issuer.data or "").strip():
        roles: dict[str, str] = {}
        for line in (form.roles.data or "").splitlines():
            if not line.strip():
                continue
            name, sep, role = line.partition("=")
            if not sep:
                form.roles.errors = [*form.roles.errors, f"{line.strip()!r} is not realm-role = role"]
                return False
            roles[name.strip()] = role.strip()
        data = {
            "issuer": form.issuer.data.strip(),
            "client_id": (form.client_id.data or "").strip(),
            "client_secret": form.client_secret.data or None,
            "audience": (form.audience.data or "").strip() or None,
            "roles": roles,
            "display_name": (form.display_name.data or "").strip() or "Keycloak",
            "default_country": (form.default_country.data or "").strip() or "DE",
            "provision_users": form.provision_users.data,
            "introspect": form.introspect.data,
        }
        if not data["client_id"]:
            form.client_id.errors = [*form.client_id.errors, "the realm's client id is needed"]
            return False
    try:
        oidc.change_sign_in(
            session,
            marketplace,
            current_app.config["MERCATO"],
            current_app.extensions["mercato.sealer"],
            provider=data,
            local_sign_in=bool(form.local_sign_in.data),
        )
    except oidc.SettingsError as exc:
        name = exc.field.removeprefix("identity_provider.")
        target = form._fields.get(name, form.issuer)
        target.errors = [*target.errors, str(exc)]
        return False
    return True


# ------------------------------------------------------------------ orders
@bp.get("/admin/orders")
def admin_orders() -> ResponseReturnValue:
    """The marketplace's orders, newest first: who ordered what, in which state, for how much;
    by state and by customer name."""
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    status_arg = request.args.get("status") or ""
    q = (request.args.get("q") or "").strip()[:100]
    session = current_session()
    stmt = (
        sa.select(Order)
        .join(Organisation, Organisation.id == Order.customer_id)
        .where(Order.marketplace_id == identity.marketplace.id)
    )
    if status_arg in {s.value for s in OrderStatus}:
        stmt = stmt.where(Order.status == OrderStatus(status_arg))
    if q:
        stmt = stmt.where(Organisation.name.icontains(q, autoescape=True))
    page = paged(stmt.order_by(Order.created_at.desc(), Order.id))
    orders: list[Order] = page["items"]
    names: dict[uuid.UUID, str] = {}
    for column, ids in (
        (Organisation, {o.customer_id for o in orders}),
        (ProductVersion, {o.version_id for o in orders}),
        (Plan, {o.plan_id for o in orders}),
    ):
        for row in session.execute(sa.select(column.id, column.name).where(column.id.in_(ids))):
            names[row[0]] = row[1]
    return render_template(
        "admin_orders.html", page=page, names=names, status=status_arg, statuses=list(OrderStatus), q=q
    )


@bp.route("/admin/orders/new", methods=["GET", "POST"])
def admin_order_for_customer() -> ResponseReturnValue:
    """Order for one of the marketplace's customers (a reseller ordering on its customer's
    behalf: it is the auditor, so the order needs no approval)."""
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    form = OnBehalfOrderForm()
    customers = session.execute(
        sa.select(Organisation.id, Organisation.name)
        .where(
            Organisation.marketplace_id == identity.marketplace.id,
            Organisation.kind == OrganisationKind.CUSTOMER,
        )
        .order_by(Organisation.name)
        .limit(1000)
    ).all()
    form.organisation_id.choices = [SelectChoice("", "(choose)")] + [
        SelectChoice(str(org_id), name) for org_id, name in customers
    ]
    status = 200
    if request.method == "POST":
        status = 422
        if form.validate_on_submit():
            customer = session.get(Organisation, uuid.UUID(form.organisation_id.data))
            assert customer is not None
            try:
                placed = orders_service.place_order(
                    session,
                    identity.marketplace,
                    identity.user,
                    customer,
                    orders_service.OrderRequest(
                        product=(form.product.data or "").strip(),
                        plan=(form.plan.data or "").strip(),
                        quantity=form.quantity.data or 1,
                    ),
                    placer_memberships=identity.memberships,
                )
            except orders_service.OrderError as exc:
                session.rollback()
                getattr(form, exc.field, form.product).errors = [exc.message]
            else:
                session.commit()
                flash(
                    f"Ordered for {customer.name}: the order is {placed.status.value.replace('_', ' ')}.",
                    "info",
                )
                return redirect(url_for("pages.admin_orders"))
        elif form.csrf_token.errors:
            abort(400)
    return render_template("admin_order_new.html", form=form), status


# ------------------------------------------------------------------ monitoring
@bp.get("/admin/alerts")
def admin_alerts() -> ResponseReturnValue:
    """What the platform's own checks say now: the alerts firing, and the figures behind them."""
    if admin_identity() is None:
        return sign_in_first()
    if current_marketplace().parent_id is not None:  # the platform's
        abort(404)
    snap = monitoring_api.current_snapshot()
    current_session().rollback()
    return render_template("admin_alerts.html", snap=snap, alerts=snap.alerts(), thresholds=health)


# ------------------------------------------------------------------ audit log
@bp.get("/admin/audit")
def admin_audit() -> ResponseReturnValue:
    """Who did what to which object and when, newest first; by person, action and object."""
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    filters = {
        name: (request.args.get(name) or "").strip()[:200] for name in ("actor", "action", "object_id")
    }
    marketplace = identity.marketplace
    page = paged(audit.search(marketplace.id, platform=marketplace.parent_id is None, **filters))
    return render_template("admin_audit.html", page=page, filters=filters)
