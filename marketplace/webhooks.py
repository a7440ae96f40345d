"""The vendors' webhook pages: endpoints (the signing secret shown once), each endpoint's
deliveries with their answers, a delivery's body and attempts, replay and a test event.
The same service as ``/api/v1/vendor/webhooks`` checks every input."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from wtforms import SelectChoice

from cmw.accounts.auth import Identity
from cmw.accounts.models import Role
from cmw.crypto import sealer
from cmw.extensions import current_config, current_session
from cmw.webhooks import service
from cmw.webhooks.models import DeliveryState, WebhookDelivery, WebhookEndpoint
from marketplace.forms import ActionForm, WebhookForm
from marketplace.views import bp, no_store, paged, sign_in_first, vendor_identity


def _endpoint(identity: Identity, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = current_session().get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.vendor_id not in identity.organisations_with(Role.VENDOR):
        abort(404)
    return endpoint


def _form() -> WebhookForm:
    form = WebhookForm()
    form.topics.choices = [SelectChoice(t, t) for t in service.TOPICS]
    return form


@bp.route("/vendor/webhooks", methods=["GET", "POST"])
def vendor_webhooks() -> ResponseReturnValue:
    """Your endpoints with their latest outcome, and a form to add one."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    vendors = identity.organisations_with(Role.VENDOR)
    form, secret, status = _form(), None, 200
    if request.method == "POST":
        if not form.validate_on_submit():
            if form.csrf_token.errors:
                abort(400)
            status = 422
        else:
            try:
                _made, secret = service.create_endpoint(
                    session,
                    sealer(),
                    min(vendors),
                    url=form.url.data or "",
                    topics=form.topics.data or [],
                    description=form.description.data or "",
                    created_by=identity.user.id,
                    allow_private=current_config().allow_private_targets,
                )
                session.commit()
                form = _form()
                form.process(formdata=None)
            except service.WebhookError as exc:
                session.rollback()
                getattr(form, exc.field).errors.append(exc.message)
                status = 422
    endpoints = list(
        session.scalars(
            sa.select(WebhookEndpoint)
            .where(WebhookEndpoint.vendor_id.in_(vendors))
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
    )
    counts: dict[tuple[uuid.UUID, DeliveryState], int] = {
        (endpoint_id, state): n
        for endpoint_id, state, n in session.execute(
            sa.select(WebhookDelivery.endpoint_id, WebhookDelivery.state, sa.func.count())
            .where(WebhookDelivery.endpoint_id.in_([e.id for e in endpoints]))
            .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.state)
        )
    }
    body = render_template(
        "vendor_webhooks.html",
        endpoints=endpoints,
        counts=counts,
        form=form,
        secret=secret,
    )
    return no_store(body, status) if secret else (body, status)


@bp.get("/vendor/webhooks/<uuid:endpoint_id>")
def vendor_webhook(endpoint_id: uuid.UUID) -> ResponseReturnValue:
    """One endpoint: its deliveries, newest first, by state."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    endpoint = _endpoint(identity, endpoint_id)
    stmt = sa.select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    state = request.args.get("state")
    if state in {s.value for s in DeliveryState}:
        stmt = stmt.where(WebhookDelivery.state == DeliveryState(state))
    else:
        state = None
    page = paged(stmt.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id))
    return render_template(
        "vendor_webhook.html",
        endpoint=endpoint,
        page=page,
        state=state,
        states=[s.value for s in DeliveryState],
        action_form=ActionForm(),
        page_link=lambda n: url_for("pages.vendor_webhook", endpoint_id=endpoint.id, state=state, page=n),
    )


@bp.post("/vendor/webhooks/<uuid:endpoint_id>/<any(test, pause, resume, secret, delete):action>")
def vendor_webhook_action(endpoint_id: uuid.UUID, action: str) -> ResponseReturnValue:
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    if not ActionForm().validate_on_submit():
        abort(400)
    session = current_session()
    endpoint = _endpoint(identity, endpoint_id)
    if action == "delete":
        session.delete(endpoint)
        session.commit()
        flash(f"The endpoint {endpoint.url} is removed, with its delivery log.")
        return redirect(url_for("pages.vendor_webhooks"))
    if action == "secret":
        secret = service.rotate_secret(session, sealer(), endpoint)
        session.commit()
        return no_store(render_template("vendor_webhook_secret.html", endpoint=endpoint, secret=secret))
    if action == "test":
        service.ping(session, endpoint)
        flash("A test event (webhook.ping) is on its way; it shows below in a moment.")
    else:
        service.update_endpoint(session, endpoint, {"active": action == "resume"})
        flash("Deliveries resumed." if action == "resume" else "Paused: no new deliveries until you resume.")
    session.commit()
    return redirect(url_for("pages.vendor_webhook", endpoint_id=endpoint.id))


@bp.get("/vendor/webhooks/deliveries/<uuid:delivery_id>")
def vendor_webhook_delivery(delivery_id: uuid.UUID) -> ResponseReturnValue:
    """A delivery: the body sent, and each attempt with its answer."""
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    delivery = current_session().get(WebhookDelivery, delivery_id)
    if delivery is None:
        abort(404)
    _endpoint(identity, delivery.endpoint_id)
    return render_template("vendor_webhook_delivery.html", delivery=delivery, action_form=ActionForm())


@bp.post("/vendor/webhooks/deliveries/<uuid:delivery_id>/replay")
def vendor_webhook_replay(delivery_id: uuid.UUID) -> ResponseReturnValue:
    identity = vendor_identity()
    if identity is None:
        return sign_in_first()
    if not ActionForm().validate_on_submit():
        abort(400)
    session = current_session()
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        abort(404)
    _endpoint(identity, delivery.endpoint_id)
    service.replay(session, delivery)
    session.commit()
    flash("Sent again: the same event, signed anew. The attempt shows below in a moment.")
    return redirect(url_for("pages.vendor_webhook_delivery", delivery_id=delivery.id))
