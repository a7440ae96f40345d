"""Page views. They parse forms, call services and render; the rules live in ``cmw``."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    get_template_attribute,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError
from wtforms import SelectChoice

from cmw.accounts import keys
from cmw.accounts import service as accounts
from cmw.accounts.auth import (
    Identity,
    ProviderUnavailable,
    SignUpRefused,
    check_sign_up_allowed,
    commit_sign_up,
    current_identity,
    current_marketplace,
    end_session,
    identity_provider,
    local_sign_in_allowed,
    marketplace_or_none,
    start_session,
)
from cmw.accounts.models import Organisation, Role
from cmw.api.pagination import PageArgs, paginate
from cmw.assets.api import storage
from cmw.assets.models import Image
from cmw.assets.service import image_view, save_image
from cmw.catalog import cache, presenters, reviews, search
from cmw.catalog import service as catalog_service
from cmw.catalog.api import MAX_UPLOAD
from cmw.catalog.models import Plan, Product, ProductVersion, Review
from cmw.catalog.schemas import ProductListArgs
from cmw.catalog.search import Sort
from cmw.catalog.workflow import ConcurrentChange, InvalidTransition
from cmw.db import utcnow
from cmw.extensions import current_session
from cmw.money import format_amount
from cmw.notifications.consumers import in_marketplace, unread_count
from cmw.notifications.models import Notification
from cmw.orders import service as orders
from cmw.orders import subscriptions
from cmw.orders.models import Order, OrderKind, OrderStatus, Subscription, SubscriptionStatus
from deployer import engine as deployer_engine
from deployer import own as own_clouds
from deployer import service as deployments
from deployer.models import Deployment, DeploymentState
from marketplace.forms import (
    ActionForm,
    OrderForm,
    ReplyForm,
    ReviewDecisionForm,
    ReviewForm,
    SignInForm,
    SignOutForm,
    SignUpForm,
    UploadForm,
)

bp = Blueprint("pages", __name__)


@bp.app_context_processor
def branding() -> dict[str, Any]:
    identity = current_identity()
    return {
        "marketplace": marketplace_or_none(),
        "identity": identity,
        # only the signed-in see the sign-out form: a visitor's page makes no CSRF token, so
        # it neither writes their session nor sends a cookie
        "sign_out_form": SignOutForm() if identity is not None else None,
        "marketplace_logo": _marketplace_logo,
    }


def _marketplace_logo() -> dict[str, Any] | None:
    """The marketplace's logo for the page header (a query only when it has one)."""
    marketplace = marketplace_or_none()
    if marketplace is None or marketplace.logo_image_id is None:
        return None
    return image_view(storage(), marketplace.logo)


@bp.app_template_global()
def page_link(number: int) -> str:
    """This page's address with another ``page`` number, its other arguments kept."""
    args: dict[str, Any] = {**(request.view_args or {}), **request.args.to_dict(), "page": number}
    return url_for(request.endpoint or "pages.home", **args)


@bp.app_template_filter("money")
def money(amount: Decimal | str | None, currency: str | None = None) -> str:
    """``12.50 EUR`` with the currency's minor unit at least (``0.021`` keeps its digits)."""
    if amount is None or amount == "":
        return ""
    amount = Decimal(amount)
    places = max(2, -amount.normalize().as_tuple().exponent)  # type: ignore[operator]
    return f"{amount:,.{places}f} {currency or ''}".strip()


@bp.app_template_filter("amount")
def amount(value: Decimal | None) -> str:
    """A quantity as written: ``100``, ``0.5``."""
    return "" if value is None else format_amount(value)


@bp.get("/")
@cache.cached_page
def home() -> ResponseReturnValue:
    session, marketplace, store = current_session(), current_marketplace(), storage()
    featured = search.page(session, marketplace, search.Query(sort=search.Sort.RATING), 1, 4, store)["items"]
    newest = search.page(session, marketplace, search.Query(sort=search.Sort.NEWEST), 1, 8, store)["items"]
    return render_template("home.html", featured=featured, newest=newest, categories=_categories())


def _categories() -> tuple[cache.CategoryChoice, ...]:
    return cache.categories(current_session(), current_marketplace())


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
@cache.cached_page
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
    session, marketplace = current_session(), current_marketplace()
    query = search.Query(**filters)
    result = search.page_ids(session, marketplace, query, paging["page"], paging["per_page"])
    card = get_template_attribute("_cards.html", "card")
    result["cards"] = cache.cards_html(
        marketplace,
        result.pop("ids"),
        lambda ids: search.cards(session, ids, storage(), marketplace),
        lambda item: card(item, compare=True),
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


def _saved_key(identity: Identity, key_id: str | None) -> str | None:
    """The public key of one of the caller's saved keys, by id."""
    for key in keys.keys_of(current_session(), identity.user.id) if key_id else []:
        if str(key.id) == key_id:
            return key.public_key
    return None


def _order_form(view: dict[str, Any]) -> OrderForm:
    form = OrderForm()
    identity = current_identity()
    saved = keys.keys_of(current_session(), identity.user.id) if identity else []
    form.saved_key.choices = [SelectChoice("", "(none)")] + [
        SelectChoice(str(k.id), f"{k.name} ({k.fingerprint[:20]}…)") for k in saved
    ]
    form.plan.choices = [SelectChoice(p.code, p.name) for p in view["plans"]]
    targets = view.get("deployment") or []
    form.target.choices = [
        (
            f"{t['cloud_account']}|{t.get('region') or ''}",
            f"{t['cloud_account']} {t.get('region') or ''}".strip(),
        )
        for t in targets
    ]
    customers = sorted(identity.organisations_with(Role.CUSTOMER)) if identity else []
    owned = own_clouds.owned(current_session(), customers[0]) if customers else []
    form.own_cloud_account.choices = [
        SelectChoice("", "The marketplace's cloud (the machine is included)")
    ] + [
        SelectChoice(str(a.id), f"{a.name}, your own {a.provider} account: you pay only the licence")
        for a in owned
    ]
    return form


@bp.route("/products/<string:slug>", methods=["GET", "POST"])
@cache.cached_page
def product(slug: str) -> ResponseReturnValue:
    """The product page; its form places an order (signed-in customers)."""
    session = current_session()
    view = presenters.public_view(session, storage(), current_marketplace(), slug)
    if view is None:
        abort(404)
    identity = current_identity()
    # a visitor who is not signed in is shown no form (a link to sign in instead)
    form = _order_form(view) if identity is not None else None
    error = None
    status = 200
    if request.method == "POST":
        if identity is None:
            return sign_in_first()
        assert form is not None
        customers = sorted(identity.organisations_with(Role.CUSTOMER))
        if not customers:
            error, status = "Only a customer organisation's users can order; sign in as one.", 403
        elif form.validate_on_submit():
            cloud, _, region = (form.target.data or "|").partition("|")
            organisation = session.get(Organisation, customers[0])
            assert organisation is not None
            try:
                placed = orders.place_order(
                    session,
                    identity.marketplace,
                    identity.user,
                    organisation,
                    orders.OrderRequest(
                        product=view["slug"],
                        plan=form.plan.data or "",
                        quantity=form.quantity.data or 1,
                        trial=bool(form.trial.data),
                        cloud_account=cloud or None,
                        region=region or None,
                        own_cloud_account=uuid.UUID(form.own_cloud_account.data)
                        if form.own_cloud_account.data
                        else None,
                        ssh_public_key=form.ssh_public_key.data or _saved_key(identity, form.saved_key.data),
                        variables={
                            v["name"]: request.form.get(f"var-{v['name']}", v.get("default") or "")
                            for v in view["setup_variables"]
                        },
                    ),
                )
            except orders.OrderError as exc:
                session.rollback()
                getattr(form, exc.field, form.plan).errors = [exc.message]
                status = 422
            else:
                session.commit()
                return redirect(url_for("pages.order", order_id=placed.id))
        else:
            status = 422
    shown = reviews.visible_page(session, view["id"], 1, 20)
    is_vendor = identity is not None and view["vendor_id"] in identity.organisations_with(Role.VENDOR)
    return (
        render_template(
            "product.html",
            product=view,
            reviews=shown,
            form=form,
            error=error,
            review_form=ReviewForm() if identity is not None else None,
            reply_form=ReplyForm() if is_vendor else None,
            is_vendor=is_vendor,
        ),
        status,
    )


@bp.post("/products/<string:slug>/review")
def review(slug: str) -> ResponseReturnValue:
    """Rate the product (customers who subscribe or subscribed); once, editable."""
    identity = current_identity()
    if identity is None:
        return redirect(url_for("pages.sign_in", next=url_for("pages.product", slug=slug)))
    session = current_session()
    found = catalog_service.find_published(session, current_marketplace(), slug)
    if found is None:
        abort(404)
    form = ReviewForm()
    customers = sorted(identity.organisations_with(Role.CUSTOMER))
    if not form.validate_on_submit() or not customers:
        flash("Choose a rating from 1 to 5." if customers else "Only customers can rate products.", "error")
        return redirect(url_for("pages.product", slug=slug) + "#reviews")
    try:
        reviews.write(
            session, found, customers[0], identity.user.id, int(form.rating.data), form.comment.data or ""
        )
    except reviews.ReviewError as exc:
        session.rollback()
        flash(str(exc), "error")
    else:
        session.commit()
        flash("Thank you: your review is published.", "info")
    return redirect(url_for("pages.product", slug=slug) + "#reviews")


@bp.post("/reviews/<uuid:review_id>/reply")
def reply(review_id: uuid.UUID) -> ResponseReturnValue:
    """The product's vendor answers a review, once."""
    identity = current_identity()
    if identity is None:
        return redirect(url_for("pages.sign_in"))
    session = current_session()
    found = session.scalar(sa.select(Review).where(Review.id == review_id).with_for_update())
    product = session.get(Product, found.product_id) if found else None
    if product is None or not belongs(identity, product.marketplace_id, product.vendor_id, Role.VENDOR):
        abort(404)
    assert found is not None
    form = ReplyForm()
    if not form.validate_on_submit():
        flash("Write a reply first.", "error")
    else:
        try:
            reviews.reply(session, found, form.reply.data or "")
        except reviews.ReviewError as exc:
            session.rollback()
            flash(str(exc), "error")
        else:
            session.commit()
            flash("Your reply is published.", "info")
    return redirect(url_for("pages.product", slug=product.slug) + "#reviews")


@bp.get("/compare")
def compare() -> ResponseReturnValue:
    """2 to 4 products side by side: ``?products=a,b,c``, or the catalog's ticked ``pick``s."""
    asked = [*request.args.get("products", "").split(","), *request.args.getlist("pick")]
    refs = list(dict.fromkeys(r.strip() for r in asked if r.strip()))[:4]
    session, store, marketplace = current_session(), storage(), current_marketplace()
    found = search.compare_set(session, marketplace, refs) if refs else []
    views = [presenters.public_view(session, store, marketplace, str(p.id)) for p in found]
    status = 200 if len(views) >= 2 else 422
    return render_template("compare.html", products=[v for v in views if v], asked=refs), status


def _plan_names(order: Order) -> dict[str, str]:
    """Names of the order's plan and, for a change, the plan it changes from."""
    ids = {order.plan_id} | ({uuid.UUID(order.change_from["plan_id"])} if order.change_from else set())
    rows = current_session().execute(sa.select(Plan.id, Plan.name).where(Plan.id.in_(ids)))
    return {str(plan_id): name for plan_id, name in rows}


@bp.route("/account/orders/<uuid:order_id>", methods=["GET", "POST"])
def order(order_id: uuid.UUID) -> ResponseReturnValue:
    """One of your orders, following its deployment until the instance is ready. Whoever
    placed the order may see the machine's one-time password here, once (a POST, so neither
    a reload nor a prefetch spends it)."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    placed = session.get(Order, order_id)
    if placed is None or not belongs(identity, placed.marketplace_id, placed.customer_id, Role.CUSTOMER):
        abort(404)
    deployment = (
        session.scalar(sa.select(Deployment).where(Deployment.subscription_id == placed.subscription_id))
        if placed.subscription_id
        else None
    )
    is_placer = placed.placed_by_id == identity.user.id
    password = None
    if request.method == "POST":
        if not ActionForm().validate_on_submit():
            abort(400)
        if deployment is not None and is_placer and deployment.state is DeploymentState.RUNNING:
            password = deployments.take_password(
                session, current_app.extensions["mercato.sealer"], deployment.id
            )
            session.commit()
    history = deployments.history(session, deployment.id) if deployment else []
    product_name = catalog_service.product_name(session, placed.product_id)
    # an order waiting for approval, refused, or a change has no machine to follow
    follows = placed.kind is not OrderKind.CHANGE and placed.status in (
        OrderStatus.PENDING,
        OrderStatus.CONFIRMED,
    )
    busy = follows and (deployment is None or deployment.active)
    response = make_response(
        render_template(
            "order.html",
            order=placed,
            deployment=deployment,
            history=history,
            product_name=product_name,
            busy=busy,
            plan_names=_plan_names(placed),
            password=password,
            is_placer=is_placer,
            can_reveal=is_placer and deployment is not None and deployment.password_sealed is not None,
            form=ActionForm(),
        )
    )
    if password is not None:
        response.headers["Cache-Control"] = "no-store"
    return response


def paged(stmt: sa.Select[Any]) -> dict[str, Any]:
    """A page of ``stmt`` (which orders its rows) by the request's ``page`` and ``per_page``;
    unreadable values give the first page of 25."""
    try:
        paging = _PAGE_ARGS.load({k: v for k, v in request.args.items() if k in ("page", "per_page")})
    except ValidationError:
        paging = {"page": 1, "per_page": 25}
    return paginate(current_session(), stmt, paging["page"], paging["per_page"])


def pairs(text: str, field: Any) -> dict[str, Any] | None:
    """``name = value`` lines as a dict; None (with the error on ``field``) if a line is not one.
    ``true``/``false`` and whole numbers become booleans and integers (driver options and
    credentials typed into a form)."""
    found: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            field.errors = [*field.errors, f"line {number}: write name = value"]
            return None
        raw = value.strip()
        found[name.strip()] = {"true": True, "false": False}.get(
            raw.lower(), int(raw) if raw.isdigit() else raw
        )
    return found


def belongs(identity: Identity, marketplace_id: uuid.UUID, organisation_id: uuid.UUID, role: Role) -> bool:
    """The row is in this marketplace and its organisation is one the caller holds ``role`` for;
    anything else is answered 404, as if it did not exist."""
    return marketplace_id == identity.marketplace.id and organisation_id in identity.organisations_with(role)


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths, never an open redirect."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target  # browsers read /\host as //host
        and not urlsplit(target).netloc
    ):
        return target
    return url_for("pages.home")


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    form = SignInForm()
    error = None
    if request.method == "POST" and not local_sign_in_allowed():
        error = "Sign-in with a password is turned off here: use single sign-on."
        return render_template("sign_in.html", form=form, error=error, provider=identity_provider()), 403
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
    return render_template("sign_in.html", form=form, error=error, provider=identity_provider()), status


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    from marketplace.sso import provider_logout_url  # it registers its pages on this blueprint

    provider_logout = provider_logout_url()
    end_session()
    current_session().commit()
    return redirect(provider_logout or url_for("pages.home"))


@bp.route("/sign-up", methods=["GET", "POST"])
def sign_up() -> ResponseReturnValue:
    """A new customer account: the person, their company, the customer role here."""
    try:
        check_sign_up_allowed()
    except SignUpRefused as exc:
        message = f"{str(exc)[:1].upper()}{str(exc)[1:]}."
        return render_template("sso_failed.html", heading="Sign up", message=message), 403
    form = SignUpForm()
    status = 200
    if form.validate_on_submit():
        session = current_session()
        try:
            user, _organisation = accounts.sign_up(
                session,
                current_marketplace(),
                email=form.email.data or "",
                name=form.name.data or "",
                password=form.password.data or "",
                organisation_name=form.company.data or "",
                billing=accounts.BillingDetails(
                    legal_name=form.company.data or "", country=form.country.data or ""
                ),
            )
        except accounts.EmailTaken:
            session.rollback()
            form.email.errors = ["an account with this e-mail exists; sign in instead"]
        except accounts.WeakPassword as exc:
            session.rollback()
            form.password.errors = [str(exc)]
        except accounts.InvalidBillingDetails as exc:
            session.rollback()
            form.country.errors = [exc.message]
        else:
            try:
                commit_sign_up(user, form.password.data or "")
            except ProviderUnavailable as exc:
                form.email.errors = [str(exc)]
                return render_template("sign_up.html", form=form), 503
            except SignUpRefused as exc:
                form.email.errors = [str(exc)]
                return render_template("sign_up.html", form=form), 409
            start_session(user, current_marketplace())
            session.commit()
            return redirect(_safe_next(request.args.get("next")))
        status = 422
    elif request.method == "POST":
        status = 422
    return render_template("sign_up.html", form=form), status


@bp.get("/account")
def account() -> ResponseReturnValue:
    """Your account: your subscriptions with their instances, and what you can do with them."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    customers = identity.organisations_with(Role.CUSTOMER)
    rows = []
    if customers:
        found = session.scalars(
            sa.select(Subscription)
            .where(
                Subscription.marketplace_id == identity.marketplace.id,
                Subscription.customer_id.in_(customers),
            )
            .order_by(Subscription.created_at.desc())
            .limit(100)
        )
        subscriptions_shown = list(found)
        ids = [sub.id for sub in subscriptions_shown]
        # the page's deployments and orders in one query each, not two per row
        deployments_by_sub = (
            {
                d.subscription_id: d
                for d in session.scalars(sa.select(Deployment).where(Deployment.subscription_id.in_(ids)))
            }
            if ids
            else {}
        )
        orders_by_sub = (
            dict(
                session.execute(
                    sa.select(Order.subscription_id, Order.id).where(Order.subscription_id.in_(ids))
                ).all()
            )
            if ids
            else {}
        )
        for subscription in subscriptions_shown:
            rows.append(
                {
                    "subscription": subscription,
                    "product": catalog_service.product_name(session, subscription.product_id),
                    "deployment": deployments_by_sub.get(subscription.id),
                    "order_id": orders_by_sub.get(subscription.id),
                }
            )
    return render_template("account.html", rows=rows, action_form=ActionForm())


@bp.post("/account/subscriptions/<uuid:subscription_id>/<any(cancel, end_trial, reactivate):action>")
def subscription_action(subscription_id: uuid.UUID, action: str) -> ResponseReturnValue:
    """Cancel at the period's end, end a trial now (nothing to pay, so nothing to wait
    for), or take a scheduled cancellation back."""
    identity = current_identity()
    if identity is None:
        return redirect(url_for("pages.sign_in", next=url_for("pages.account")))
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    session = current_session()
    subscription = session.scalar(
        sa.select(Subscription).where(Subscription.id == subscription_id).with_for_update()
    )
    if subscription is None or not belongs(
        identity, subscription.marketplace_id, subscription.customer_id, Role.CUSTOMER
    ):
        abort(404)
    try:
        if action == "reactivate":
            subscriptions.reactivate(session, subscription, identity.user.id)
        elif action == "end_trial":
            if subscription.status is not SubscriptionStatus.TRIALING:
                raise subscriptions.ChangeError("status", "only a trial can be ended at once")
            subscriptions.cancel(session, subscription, identity.user.id, at_once=True)
        else:
            subscriptions.cancel(session, subscription, identity.user.id, at_once=False)
    except subscriptions.ChangeError as exc:
        session.rollback()
        flash(str(exc), "error")
    else:
        session.commit()
        flash(
            {
                "reactivate": "Your subscription continues.",
                "end_trial": "Your trial has ended; its instance is being removed.",
                "cancel": "Your subscription ends at the end of the period.",
            }[action],
            "info",
        )
    return redirect(url_for("pages.account"))


# ------------------------------------------------------------------ admin
def vendor_identity() -> Identity | None:
    """The signed-in vendor; None if nobody is signed in; 403 for anyone else."""
    identity = current_identity()
    if identity is not None and not identity.organisations_with(Role.VENDOR):
        abort(403)
    return identity


def admin_identity() -> Identity | None:
    """The signed-in administrator; None if nobody is signed in; 403 for anyone else."""
    identity = current_identity()
    if identity is not None and not identity.is_admin:
        abort(403)
    return identity


def save_upload(identity: Identity, form: UploadForm) -> Image:
    """The form's image stored with its renditions (:class:`InvalidImage` if it is not one)."""
    return save_image(
        current_session(),
        storage(),
        form.file.data.read(MAX_UPLOAD + 1),
        marketplace_id=identity.marketplace.id,
        uploaded_by_id=identity.user.id,
        max_bytes=MAX_UPLOAD,
    )


def no_store(body: str, status: int = 200) -> ResponseReturnValue:
    """A page showing a secret: never kept by a cache or the browser's history."""
    response = current_app.make_response((body, status))
    response.headers["Cache-Control"] = "no-store"
    return response


def sign_in_first() -> ResponseReturnValue:
    """To the sign-in page, and back here afterwards."""
    return redirect(url_for("pages.sign_in", next=request.path))


@bp.get("/admin/review")
def review_queue() -> ResponseReturnValue:
    """Submitted products and revisions waiting for an administrator, oldest first."""
    if admin_identity() is None:
        return sign_in_first()
    session = current_session()
    waiting = []
    for product in session.scalars(catalog_service.review_queue(current_marketplace()).limit(100)):
        version = session.get(ProductVersion, product.working_version_id)
        vendor = session.get(Organisation, product.vendor_id)
        waiting.append({"product": product, "version": version, "vendor": vendor.name if vendor else ""})
    return render_template("admin_review.html", waiting=waiting, form=ReviewDecisionForm())


@bp.post("/admin/review/<uuid:product_id>/<any(approve, reject):decision>")
def review_decision(product_id: uuid.UUID, decision: str) -> ResponseReturnValue:
    identity = admin_identity()
    if identity is None:
        return redirect(url_for("pages.sign_in", next=url_for("pages.review_queue")))
    session = current_session()
    product = session.get(Product, product_id)
    if product is None or product.marketplace_id != identity.marketplace.id:
        abort(404)
    form = ReviewDecisionForm()
    if not form.validate_on_submit():
        abort(400)
    name = catalog_service.product_name(session, product.id)
    try:
        if decision == "approve":
            catalog_service.approve(session, product, identity.user)
        else:
            catalog_service.reject(session, product, identity.user, form.reason.data or "")
    except (catalog_service.CatalogError, InvalidTransition, ConcurrentChange) as exc:
        session.rollback()
        flash(f"{name}: {exc}", "error")
    else:
        session.commit()
        flash(
            f"{name} is published." if decision == "approve" else f"{name} went back to its vendor.", "info"
        )
    return redirect(url_for("pages.review_queue"))


# ------------------------------------------------------------------ vendor
@bp.get("/vendor/products")
def vendor_products() -> ResponseReturnValue:
    """Your products: where each stands, the administrator's reason when one came back,
    and submitting a draft for review."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    vendors = identity.organisations_with(Role.VENDOR)
    if not vendors:
        abort(403)
    session = current_session()
    rows = []
    for product in session.scalars(
        sa.select(Product)
        .where(Product.marketplace_id == identity.marketplace.id, Product.vendor_id.in_(vendors))
        .order_by(Product.updated_at.desc())
        .limit(200)
    ):
        working = (
            session.get(ProductVersion, product.working_version_id) if product.working_version_id else None
        )
        rows.append(
            {
                "product": product,
                "working": working,
                "name": catalog_service.product_name(session, product.id),
            }
        )
    return render_template("vendor_products.html", rows=rows, form=ActionForm())


@bp.post("/vendor/products/<uuid:product_id>/submit")
def vendor_submit(product_id: uuid.UUID) -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return redirect(url_for("pages.sign_in", next=url_for("pages.vendor_products")))
    session = current_session()
    product = session.get(Product, product_id)
    if product is None or not belongs(identity, product.marketplace_id, product.vendor_id, Role.VENDOR):
        abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    name = catalog_service.product_name(session, product.id)
    try:
        catalog_service.submit(session, product)
    except (catalog_service.CatalogError, InvalidTransition, ConcurrentChange) as exc:
        session.rollback()
        flash(f"{name}: {exc}", "error")
    else:
        session.commit()
        flash(f"{name} is submitted; an administrator reviews it next.", "info")
    return redirect(url_for("pages.vendor_products"))


@bp.get("/admin/deployments")
def admin_deployments() -> ResponseReturnValue:
    """Every deployment of the marketplace, newest first, failed ones with their reason."""
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    state = request.args.get("state") or None
    stmt = sa.select(Deployment).where(Deployment.marketplace_id == identity.marketplace.id)
    if state in {s.value for s in DeploymentState}:
        stmt = stmt.where(Deployment.state == DeploymentState(state))
    rows = [
        {"deployment": d, "product": catalog_service.product_name(session, d.product_id)}
        for d in session.scalars(stmt.order_by(Deployment.created_at.desc()).limit(200))
    ]
    return render_template(
        "admin_deployments.html",
        rows=rows,
        state=state,
        states=list(DeploymentState),
        form=ActionForm(),
    )


@bp.post("/admin/deployments/<uuid:deployment_id>/<any(retry, remove):action>")
def admin_deployment_action(deployment_id: uuid.UUID, action: str) -> ResponseReturnValue:
    identity = admin_identity()
    if identity is None:
        return redirect(url_for("pages.sign_in", next=url_for("pages.admin_deployments")))
    session = current_session()
    deployment = session.get(Deployment, deployment_id)
    if deployment is None or deployment.marketplace_id != identity.marketplace.id:
        abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        if action == "retry":
            deployments.retry(session, deployment)
        else:
            deployments.request_removal(session, deployment.subscription_id)
    except deployments.NotRetryable as exc:
        session.rollback()
        flash(str(exc), "error")
    else:
        session.commit()
        deployer_engine.WAKE.set()
        flash("Started again." if action == "retry" else "Being removed.", "info")
    return redirect(url_for("pages.admin_deployments"))


@bp.get("/account/notifications")
def notifications() -> ResponseReturnValue:
    """Your notifications here, newest first; opening the page leaves them unread until you
    mark them read."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    try:
        number = max(1, int(request.args.get("page", "1")))
    except ValueError:
        number = 1
    stmt = sa.select(Notification).where(
        Notification.user_id == identity.user.id, in_marketplace(identity.marketplace.id)
    )
    found = paginate(session, stmt.order_by(Notification.created_at.desc(), Notification.id), number, 20)
    unread = unread_count(session, identity.user.id, identity.marketplace.id)
    return render_template("notifications.html", found=found, unread=unread, form=ActionForm())


@bp.post("/account/notifications/read-all")
def notifications_read() -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return redirect(url_for("pages.sign_in", next=url_for("pages.notifications")))
    if not ActionForm().validate_on_submit():
        abort(400)
    session = current_session()
    session.execute(
        sa.update(Notification)
        .where(
            Notification.user_id == identity.user.id,
            Notification.read_at.is_(None),
            in_marketplace(identity.marketplace.id),
        )
        .values(read_at=utcnow())
    )
    session.commit()
    return redirect(url_for("pages.notifications"))
