"""The vendors' product editor: details with a description preview, logo and screenshots,
plans and prices, deployment targets, and submitting for review.

Input is checked by the API's schemas and the catalog service, so a page accepts exactly
what ``/api/v1/vendor/products`` accepts, and each refusal is shown next to its field.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from marshmallow import Schema, ValidationError
from wtforms import Field, FieldList, FormField, SelectChoice
from wtforms import Form as BaseForm

from cmw.accounts.auth import Identity
from cmw.accounts.models import Organisation, Role
from cmw.assets.api import storage
from cmw.assets.service import InvalidImage
from cmw.billing import revenue as billing_revenue
from cmw.catalog import presenters
from cmw.catalog import service as catalog_service
from cmw.catalog.markdown import render
from cmw.catalog.models import Category, Plan, Product, ProductVersion, VersionState
from cmw.catalog.pricing import PlanSpec, PricingError, plan_spec_of
from cmw.catalog.schemas import (
    DeploymentTargetSchema,
    PlanSchema,
    ProductCreateSchema,
    ProductUpdateSchema,
    plan_specs,
)
from cmw.catalog.workflow import ConcurrentChange, InvalidTransition
from cmw.extensions import current_session
from cmw.money import format_amount
from cmw.orders import service as orders_service
from cmw.orders.models import Order, Subscription
from cmw.usage import simulation
from deployer import service as deployments
from marketplace.forms import (
    COMPONENT_ROWS,
    ActionForm,
    PlanForm,
    ProductForm,
    TargetForm,
    UploadForm,
)
from marketplace.views import belongs, bp, paged, save_upload, sign_in_first, vendor_identity

#: what the service may refuse, each with a reason a person can act on
REFUSALS = (catalog_service.CatalogError, PricingError, InvalidTransition, ConcurrentChange)


# ----------------------------------------------------------------- helpers
def _own(identity: Identity, product_id: uuid.UUID) -> Product:
    product = current_session().get(Product, product_id)
    if product is None or not belongs(identity, product.marketplace_id, product.vendor_id, Role.VENDOR):
        abort(404)
    return product


def _shown_version(product: Product) -> ProductVersion:
    """The revision the editor shows: the one being worked on, else the live one."""
    version_id = product.working_version_id or product.live_version_id
    version = current_session().get(ProductVersion, version_id)
    assert version is not None
    return version


def _field_at(form: BaseForm, path: str) -> Field | None:
    """The form field a dotted error path names (``components.1.unit_price``), if any."""
    target: Any = form
    for part in path.split("."):
        if isinstance(target, FieldList):
            if not part.isdigit() or int(part) >= len(target.entries):
                return None
            target = target.entries[int(part)]
        elif isinstance(target, FormField):
            target = target.form._fields.get(part)
        elif isinstance(target, BaseForm):
            target = target._fields.get(part)
        else:
            return None
        if target is None:
            return None
    return target if isinstance(target, Field) else None


def _show_error(form: BaseForm, path: str, message: str, fallback: str) -> None:
    field = _field_at(form, path) or form[fallback]
    field.errors = [*field.errors, message]


def _schema_errors(
    form: BaseForm, exc: ValidationError, fallback: str, remap: Callable[[str], str] = str
) -> None:
    """Each schema message next to its field; ``remap`` turns the schema's path into the form's."""

    def walk(messages: Any, prefix: str) -> None:
        if isinstance(messages, dict):
            for key, value in messages.items():
                walk(value, f"{prefix}{key}.")
        else:
            for message in messages if isinstance(messages, list) else [messages]:
                if isinstance(message, dict):
                    walk(message, prefix)
                else:
                    _show_error(form, remap(prefix.rstrip(".")), str(message), fallback)

    walk(exc.normalized_messages(), "")  # type: ignore[no-untyped-call]


def _load(
    schema: Schema, data: dict[str, Any], form: BaseForm, fallback: str, remap: Callable[[str], str] = str
) -> Any:
    """``data`` loaded by the API's schema, or None with the errors shown on the form."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        _schema_errors(form, exc, fallback, remap)
        return None


def _has_errors(form: BaseForm) -> bool:
    return any(field.errors for field in _leaves(form))


def _leaves(form: BaseForm) -> list[Field]:
    found: list[Field] = []
    for field in form:
        if isinstance(field, FieldList):
            for entry in field.entries:
                found.extend(_leaves(entry.form) if isinstance(entry, FormField) else [entry])
        elif isinstance(field, FormField):
            found.extend(_leaves(field.form))
        else:
            found.append(field)
    return found


def _blank(value: str | None) -> str | None:
    return (value or "").strip() or None


def _act(
    product_id: uuid.UUID, change: Callable[[Product], object], done: str, anchor: str = ""
) -> ResponseReturnValue:
    """A button of the editor: check the caller and the CSRF token, make ``change`` to the
    product (``LookupError``: what it names is not there, 404), say how it went, go back."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    product = _own(identity, product_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        change(product)
    except LookupError:
        abort(404)
    except REFUSALS as exc:
        session.rollback()
        flash(getattr(exc, "message", str(exc)), "error")
    else:
        session.commit()
        flash(done, "info")
    return redirect(url_for("pages.vendor_edit_product", product_id=product.id) + anchor)


# ----------------------------------------------------------------- details
def _category_choices() -> list[SelectChoice]:
    categories = current_session().scalars(sa.select(Category).order_by(Category.position, Category.slug))
    return [SelectChoice(c.slug, c.name) for c in categories]


def _content(form: ProductForm) -> dict[str, Any]:
    tags = [t.strip() for t in (form.tags.data or "").split(",") if t.strip()]
    return {
        "slug": (form.slug.data or "").strip(),
        "name": (form.name.data or "").strip(),
        "short_description": (form.short_description.data or "").strip(),
        "long_description": form.long_description.data or "",
        "category": form.category.data,
        "tags": tags,
        "product_type": form.product_type.data,
        "trial_days": form.trial_days.data or 0,
        "requires_approval": bool(form.requires_approval.data),
        "website": _blank(form.website.data),
        "support_email": _blank(form.support_email.data),
    }


def _fill(form: ProductForm, product: Product, version: ProductVersion) -> None:
    form.slug.data = product.slug
    form.name.data = version.name
    form.short_description.data = version.short_description
    form.long_description.data = version.long_description
    form.category.data = version.category_slug
    form.tags.data = ", ".join(version.tags or [])
    form.product_type.data = version.product_type.value
    form.trial_days.data = version.trial_days
    form.requires_approval.data = version.requires_approval
    form.website.data = version.website or ""
    form.support_email.data = version.support_email or ""


@bp.route("/vendor/products/new", methods=["GET", "POST"])
def vendor_new_product() -> ResponseReturnValue:
    """A new product, in draft: its details first, then images, plans and deployment."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    form = ProductForm()
    form.category.choices = _category_choices()
    status = 200
    if request.method == "POST":
        valid = form.validate_on_submit()
        if form.csrf_token.errors:
            abort(400)
        status = 422
        data = _load(ProductCreateSchema(), _content(form), form, "name")
        if valid and data is not None and not _has_errors(form):
            vendor = session.get(Organisation, sorted(identity.organisations_with(Role.VENDOR))[0])
            assert vendor is not None
            slug = data.pop("slug")
            data.pop("vendor_id", None)
            try:
                product = catalog_service.create_product(
                    session, identity.marketplace, vendor, slug=slug, content=data
                )
            except REFUSALS as exc:
                session.rollback()
                _show_error(form, getattr(exc, "field", ""), getattr(exc, "message", str(exc)), "name")
            else:
                session.commit()
                flash(f"{product.slug} is created as a draft. Add a logo, plans and where it runs.", "info")
                return redirect(url_for("pages.vendor_edit_product", product_id=product.id))
    return render_template("vendor_new.html", form=form), status


@bp.route("/vendor/products/<uuid:product_id>", methods=["GET", "POST"])
def vendor_edit_product(product_id: uuid.UUID) -> ResponseReturnValue:
    """The editor: details (with a preview of the description), images, plans, deployment."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    product = _own(identity, product_id)
    form = ProductForm()
    form.category.choices = _category_choices()
    preview = None
    status = 200
    if request.method == "POST":
        valid = form.validate_on_submit()
        if form.csrf_token.errors:
            abort(400)
        if "preview" in request.form:
            preview = render(form.long_description.data or "")
        else:
            status = 422
            data = _load(ProductUpdateSchema(), _content(form), form, "name")
            if valid and data is not None and not _has_errors(form):
                try:
                    catalog_service.update_product(session, product, data)
                except REFUSALS as exc:
                    session.rollback()
                    _show_error(
                        form, getattr(exc, "field", ""), getattr(exc, "message", str(exc)), "product_type"
                    )
                else:
                    session.commit()
                    flash("Your changes are saved.", "info")
                    return redirect(url_for("pages.vendor_edit_product", product_id=product.id))
    else:
        _fill(form, product, _shown_version(product))
    return _editor(product, form, preview, status)


def _editor(product: Product, form: ProductForm, preview: str | None, status: int) -> ResponseReturnValue:
    session = current_session()
    version = _shown_version(product)
    images = presenters.images_of(session, storage(), version)
    return (
        render_template(
            "vendor_edit.html",
            product=product,
            version=version,
            editable=version.state is not VersionState.IN_REVIEW,
            live=version.id == product.live_version_id,
            form=form,
            preview=preview,
            logo=images["logo"],
            screenshots=images["screenshots"],
            upload_form=UploadForm(),
            action_form=ActionForm(),
            name=version.name,
        ),
        status,
    )


# ----------------------------------------------------------------- images
@bp.post("/vendor/products/<uuid:product_id>/<any(logo, screenshots):kind>")
def vendor_upload(product_id: uuid.UUID, kind: str) -> ResponseReturnValue:
    """Upload the logo (its background colour is computed) or add a screenshot."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    product = _own(identity, product_id)
    form = UploadForm()
    back = url_for("pages.vendor_edit_product", product_id=product.id) + f"#{kind}"
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        flash("; ".join(form.file.errors) or "Choose an image file.", "error")
        return redirect(back)
    try:
        image = save_upload(identity, form)
        if kind == "logo":
            catalog_service.set_logo(session, product, image)
        else:
            catalog_service.add_screenshot(session, product, image)
    except InvalidImage as exc:
        session.rollback()
        flash(f"That image cannot be used: {exc.reason}.", "error")
    except REFUSALS as exc:
        session.rollback()
        flash(getattr(exc, "message", str(exc)), "error")
    else:
        session.commit()
        flash("The logo is saved." if kind == "logo" else "The screenshot is added.", "info")
    return redirect(back)


@bp.post("/vendor/products/<uuid:product_id>/screenshots/<uuid:image_id>/remove")
def vendor_remove_screenshot(product_id: uuid.UUID, image_id: uuid.UUID) -> ResponseReturnValue:
    return _act(
        product_id,
        lambda product: catalog_service.remove_screenshot(current_session(), product, image_id),
        "The screenshot is removed.",
        "#screenshots",
    )


# ----------------------------------------------------------------- plans
TIER = re.compile(
    r"^\s*(?P<start>[0-9.]+)\s*-\s*(?P<up_to>[0-9.]*)\s*:\s*(?P<price>[0-9.]+)\s*(?:\+\s*(?P<flat>[0-9.]+))?\s*$"
)


def _tiers_text(tiers: list[dict[str, Any]] | None) -> str:
    lines = []
    for t in tiers or ():
        flat = t.get("flat_fee") or "0"
        extra = f" + {flat}" if flat not in ("0", "0.00") else ""
        lines.append(f"{t['from']}-{t['up_to'] or ''}: {t['unit_price']}{extra}")
    return "\n".join(lines)


def _parse_tiers(text: str) -> list[dict[str, Any]] | None:
    tiers = []
    for line in text.splitlines():
        if not line.strip():
            continue
        match = TIER.match(line)
        if match is None:
            return None
        tiers.append(
            {
                "from": match["start"],
                "up_to": match["up_to"] or None,
                "unit_price": match["price"],
                "flat_fee": match["flat"] or "0",
            }
        )
    return tiers


def _fill_plan(form: PlanForm, plan: Plan) -> None:
    form.code.data = plan.code
    form.name.data = plan.name
    form.description.data = plan.description
    form.currency.data = plan.currency
    form.billing_period.data = plan.billing_period.value
    while len(form.components.entries) < len(plan.components) + 1:
        form.components.append_entry()
    for entry, c in zip(form.components.entries, plan.components, strict=False):
        row = entry.form
        row.kind.data = c.kind.value
        row.label.data = c.label
        row.unit_price.data = "" if c.unit_price is None else format_amount(c.unit_price)
        row.metric.data = c.metric or ""
        row.unit.data = c.unit or ""
        row.pricing_model.data = c.pricing_model.value if c.pricing_model else ""
        row.included_quantity.data = format_amount(c.included_quantity) if c.included_quantity else ""
        row.tiers.data = _tiers_text(c.tiers)
        row.min_quantity.data = c.min_quantity
        row.max_quantity.data = c.max_quantity
        row.infrastructure.data = c.infrastructure
    form.vm_cores.data = (plan.vm_size or {}).get("cores")
    form.vm_ram_mib.data = (plan.vm_size or {}).get("ram_mib")
    form.data_disk_gib.data = plan.data_disk_gib


def _plan_data(form: PlanForm) -> tuple[dict[str, Any], list[int]]:
    """The plan as the API takes it, and which form rows its components came from."""
    components, rows = [], []
    for index, entry in enumerate(form.components.entries):
        row = entry.form
        if not row.kind.data:
            continue
        tiers = _parse_tiers(row.tiers.data or "")
        if tiers is None:
            row.tiers.errors = ["write each tier as from-up to: price, e.g. 0-100: 0.10 (last: 100-: 0.05)"]
            tiers = []
        components.append(
            {
                "kind": row.kind.data,
                "label": (row.label.data or "").strip(),
                "unit_price": _blank(row.unit_price.data),
                "metric": _blank(row.metric.data),
                "unit": _blank(row.unit.data),
                "pricing_model": row.pricing_model.data or None,
                "included_quantity": _blank(row.included_quantity.data) or "0",
                "tiers": tiers,
                "min_quantity": row.min_quantity.data,
                "max_quantity": row.max_quantity.data,
                "infrastructure": bool(row.infrastructure.data),
            }
        )
        rows.append(index)
    data = {
        "code": (form.code.data or "").strip(),
        "name": (form.name.data or "").strip(),
        "description": form.description.data or "",
        "currency": (form.currency.data or "").strip().upper(),
        "billing_period": form.billing_period.data,
        "components": components,
        "data_disk_gib": form.data_disk_gib.data or None,
    }
    if form.vm_cores.data or form.vm_ram_mib.data:
        data["vm_size"] = {"cores": form.vm_cores.data, "ram_mib": form.vm_ram_mib.data}
    return data, rows


def _row_path(path: str, rows: list[int]) -> str:
    """Component ``n`` of the plan is form row ``rows[n]`` (blank rows are skipped); the
    plan's machine is in the form's ``vm_*`` fields."""
    if path.startswith("vm_size"):
        return {"vm_size.cores": "vm_cores", "vm_size.ram_mib": "vm_ram_mib"}.get(path, "vm_cores")
    parts = path.split(".")
    if len(parts) > 1 and parts[0] == "components" and parts[1].isdigit() and int(parts[1]) < len(rows):
        parts[1] = str(rows[int(parts[1])])
    return ".".join(parts)


@bp.route("/vendor/products/<uuid:product_id>/plans/new", methods=["GET", "POST"], defaults={"code": None})
@bp.route("/vendor/products/<uuid:product_id>/plans/<string:code>", methods=["GET", "POST"])
def vendor_plan(product_id: uuid.UUID, code: str | None) -> ResponseReturnValue:
    """Add a plan, or change one; the product's other plans stay as they are."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    product = _own(identity, product_id)
    version = _shown_version(product)
    plans = list(version.plans)
    current = next((p for p in plans if p.code == code), None) if code else None
    if code and current is None:
        abort(404)
    form = PlanForm()
    status = 200
    if request.method == "POST":
        status = 422
        valid = form.validate_on_submit()
        if form.csrf_token.errors:
            abort(400)
        data, rows = _plan_data(form)
        if not data["components"]:
            form.components.entries[0].form.kind.errors = ["a plan needs at least one price component"]
        loaded = (
            _load(PlanSchema(), data, form, "code", lambda path: _row_path(path, rows)) if valid else None
        )
        if loaded is not None and not _has_errors(form):
            spec = plan_specs([loaded])[0]
            position = plans.index(current) if current else len(plans)
            specs: list[PlanSpec] = [plan_spec_of(p) for p in plans]
            specs[position : position + 1] = [spec]
            try:
                catalog_service.set_plans(session, product, specs)
            except REFUSALS as exc:
                session.rollback()
                path = getattr(exc, "field", "")
                prefix = f"plans.{position}."
                if path.startswith(prefix):
                    path = _row_path(path.removeprefix(prefix), rows)
                _show_error(form, path, getattr(exc, "message", str(exc)), "code")
            else:
                session.commit()
                flash(f"The plan {spec.name} is saved.", "info")
                return redirect(url_for("pages.vendor_edit_product", product_id=product.id) + "#plans")
    elif current is not None:
        _fill_plan(form, current)
    return (
        render_template(
            "vendor_plan.html",
            product=product,
            name=version.name,
            form=form,
            plan=current,
            rows=COMPONENT_ROWS,
        ),
        status,
    )


@bp.post("/vendor/products/<uuid:product_id>/plans/<string:code>/remove")
def vendor_remove_plan(product_id: uuid.UUID, code: str) -> ResponseReturnValue:
    def remove(product: Product) -> None:
        plans = list(_shown_version(product).plans)
        if not any(p.code == code for p in plans):
            raise LookupError(code)
        catalog_service.set_plans(
            current_session(), product, [plan_spec_of(p) for p in plans if p.code != code]
        )

    return _act(product_id, remove, "The plan is removed.", "#plans")


# ----------------------------------------------------------------- deployment
PORT = re.compile(
    r"^\s*(?P<port>\d{1,5})\s*(?:/\s*(?P<protocol>tcp|udp))?\s*(?:from\s+(?P<cidr>\S+))?\s*$", re.I
)


def _ports_text(ports: list[dict[str, Any]]) -> str:
    parts = []
    for p in ports:
        text = f"{p['port']}/{p.get('protocol', 'tcp')}"
        if p.get("cidr") and p["cidr"] != "0.0.0.0/0":
            text += f" from {p['cidr']}"
        parts.append(text)
    return ", ".join(parts)


def _parse_ports(text: str) -> list[dict[str, Any]] | None:
    ports = []
    for item in text.split(","):
        if not item.strip():
            continue
        match = PORT.match(item)
        if match is None:
            return None
        port: dict[str, Any] = {"port": int(match["port"]), "protocol": (match["protocol"] or "tcp").lower()}
        if match["cidr"]:
            port["cidr"] = match["cidr"]
        ports.append(port)
    return ports


def _target_data(form: TargetForm) -> dict[str, Any]:
    ports = _parse_ports(form.inbound_ports.data or "")
    if ports is None:
        form.inbound_ports.errors = [
            *form.inbound_ports.errors,
            "write ports like 443, 80/tcp, 53/udp from 10.0.0.0/8",
        ]
        ports = []
    return {
        "cloud_account": form.cloud_account.data,
        "region": _blank(form.region.data),
        "image": (form.image.data or "").strip(),
        "size": {
            "cores": form.cores.data,
            "ram_mib": form.ram_mib.data,
            "root_disk_gib": form.root_disk_gib.data,
        },
        "data_disk_gib": form.data_disk_gib.data,
        "inbound_ports": ports,
        "setup_script": form.setup_script.data or None,
        "app_url_template": _blank(form.app_url_template.data),
        "default_login": _blank(form.default_login.data),
        "final_snapshot": bool(form.final_snapshot.data),
    }


def _fill_target(form: TargetForm, target: dict[str, Any]) -> None:
    form.cloud_account.data = target["cloud_account"]
    form.region.data = target.get("region") or ""
    form.image.data = target["image"]
    form.cores.data = target["size"]["cores"]
    form.ram_mib.data = target["size"]["ram_mib"]
    form.root_disk_gib.data = target["size"]["root_disk_gib"]
    form.data_disk_gib.data = target.get("data_disk_gib")
    form.inbound_ports.data = _ports_text(target.get("inbound_ports") or [])
    form.setup_script.data = target.get("setup_script") or ""
    form.app_url_template.data = target.get("app_url_template") or ""
    form.default_login.data = target.get("default_login") or ""
    form.final_snapshot.data = bool(target.get("final_snapshot"))


@bp.route("/vendor/products/<uuid:product_id>/targets/new", methods=["GET", "POST"], defaults={"index": None})
@bp.route("/vendor/products/<uuid:product_id>/targets/<int:index>", methods=["GET", "POST"])
def vendor_target(product_id: uuid.UUID, index: int | None) -> ResponseReturnValue:
    """Add or change where the product runs: a cloud account, region, image and VM size."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    product = _own(identity, product_id)
    version = _shown_version(product)
    targets = list(version.deployment or [])
    if index is not None and index >= len(targets):
        abort(404)
    form = TargetForm()
    form.cloud_account.choices = [
        SelectChoice(slug, f"{name} ({slug})") for slug, name in deployments.account_choices(session)
    ]
    status = 200
    if request.method == "POST":
        status = 422
        valid = form.validate_on_submit()
        if form.csrf_token.errors:
            abort(400)
        data = _target_data(form)
        loaded = (
            _load(DeploymentTargetSchema(), data, form, "image", lambda path: path.removeprefix("size."))
            if valid
            else None
        )
        if loaded is not None and not _has_errors(form):
            position = len(targets) if index is None else index
            targets[position : position + 1] = [DeploymentTargetSchema().dump(loaded)]
            try:
                catalog_service.update_product(session, product, {"deployment": targets})
            except REFUSALS as exc:
                session.rollback()
                path = getattr(exc, "field", "").removeprefix(f"deployment.{position}.")
                _show_error(form, path, getattr(exc, "message", str(exc)), "cloud_account")
            else:
                session.commit()
                flash("The deployment target is saved.", "info")
                return redirect(url_for("pages.vendor_edit_product", product_id=product.id) + "#deployment")
    elif index is not None:
        _fill_target(form, targets[index])
    return (
        render_template("vendor_target.html", product=product, name=version.name, form=form, index=index),
        status,
    )


@bp.post("/vendor/products/<uuid:product_id>/targets/<int:index>/remove")
def vendor_remove_target(product_id: uuid.UUID, index: int) -> ResponseReturnValue:
    def remove(product: Product) -> None:
        targets = list(_shown_version(product).deployment or [])
        if index >= len(targets):
            raise LookupError(index)
        del targets[index]
        catalog_service.update_product(current_session(), product, {"deployment": targets})

    return _act(product_id, remove, "The deployment target is removed.", "#deployment")


@bp.post("/vendor/products/<uuid:product_id>/withdraw")
def vendor_withdraw(product_id: uuid.UUID) -> ResponseReturnValue:
    """Take a submission back from the review queue to change it."""
    return _act(
        product_id,
        lambda product: catalog_service.withdraw(current_session(), product),
        "The submission is withdrawn: you can change it and submit it again.",
    )


# ----------------------------------------------------------------- sales
@bp.get("/vendor/sales")
def vendor_sales() -> ResponseReturnValue:
    """Who bought your products: subscriptions with their customer, plan and instance,
    newest first and paginated, and the latest orders."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    vendors = identity.organisations_with(Role.VENDOR)
    in_marketplace = Subscription.marketplace_id == identity.marketplace.id
    page = paged(
        sa.select(Subscription)
        .where(in_marketplace, orders_service.of_vendors(Subscription, vendors))
        .order_by(Subscription.created_at.desc(), Subscription.id),
    )
    subscriptions_shown: list[Subscription] = page["items"]
    machines = deployments.of_subscriptions(session, [s.id for s in subscriptions_shown])
    recent = list(
        session.scalars(
            sa.select(Order)
            .where(Order.marketplace_id == identity.marketplace.id, orders_service.of_vendors(Order, vendors))
            .order_by(Order.created_at.desc(), Order.id)
            .limit(10)
        )
    )
    counts = dict(
        session.execute(
            sa.select(Subscription.status, sa.func.count())
            .where(in_marketplace, orders_service.of_vendors(Subscription, vendors))
            .group_by(Subscription.status)
        ).all()
    )
    names = _names(
        session,
        {s.customer_id for s in subscriptions_shown} | {o.customer_id for o in recent},
        {s.product_id for s in subscriptions_shown} | {o.product_id for o in recent},
        {s.plan_id for s in subscriptions_shown} | {o.plan_id for o in recent},
    )
    revenue = billing_revenue.vendor_revenue(session, identity.marketplace.id, vendors)
    return render_template(
        "vendor_sales.html",
        revenue=revenue,
        chart=_chart(revenue),
        page=page,
        machines=machines,
        recent=recent,
        counts={status.value: n for status, n in counts.items()},
        names=names,
    )


def _chart(revenue: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bars of an SVG chart per currency: month, amount and height in percent of the tallest."""
    by_currency: dict[str, list[dict[str, Any]]] = {}
    for row in revenue:
        by_currency.setdefault(row["currency"], []).append(row)
    charts = []
    for currency, rows in sorted(by_currency.items()):
        top = max((r["invoiced"] for r in rows), default=Decimal(0)) or Decimal(1)
        bars = [{**r, "height": float(max(r["invoiced"], Decimal(0)) / top * 100)} for r in rows]
        charts.append({"currency": currency, "bars": bars})
    return charts


def _names(
    session: Any, organisations: set[uuid.UUID], products: set[uuid.UUID], plans: set[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """Display names of the page's customers, products and plans, in one query each."""
    found: dict[uuid.UUID, str] = {}
    if organisations:
        found.update(
            session.execute(
                sa.select(Organisation.id, Organisation.name).where(Organisation.id.in_(organisations))
            ).all()
        )
    for product_id in products:
        found[product_id] = catalog_service.product_name(session, product_id)
    if plans:
        found.update(session.execute(sa.select(Plan.id, Plan.name).where(Plan.id.in_(plans))).all())
    return found


@bp.get("/vendor/products/<uuid:product_id>/simulation")
def vendor_simulation(product_id: uuid.UUID) -> ResponseReturnValue:
    """The draft's prices on the last days of real usage, beside the published prices."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    product = _own(identity, product_id)
    try:
        days = min(max(int(request.args.get("days", "30")), 1), 365)
    except ValueError:
        days = 30
    found = simulation.simulate(current_session(), product, days)
    return render_template("vendor_simulation.html", product=product, simulation=found, totals=found.totals())
