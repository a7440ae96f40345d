"""Support pages: the tickets you take part in (a customer's, a vendor's, all of the
marketplace for its admins), opening one about a subscription, and the thread with
answers, attachments and closing. The same service and checks as the API."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from wtforms import SelectChoice

from cassetto.files import CheckedFile, RefusedFile, check_attachment
from cmw.accounts.auth import Identity, current_identity
from cmw.accounts.models import Role
from cmw.assets.api import storage
from cmw.catalog.service import product_name
from cmw.crypto import sealer
from cmw.extensions import current_config, current_session
from cmw.orders.models import Subscription
from cmw.outbound import OutboundError
from cmw.support import service
from cmw.support.models import AuthorRole, SupportSettings, Ticket, TicketStatus
from marketplace.forms import ActionForm, ForwardingForm, TicketForm, TicketReplyForm
from marketplace.views import admin_identity, bp, no_store, paged, sign_in_first


def _files(form: TicketReplyForm) -> list[CheckedFile] | None:
    """The form's files checked; None (the reasons on the field) when one is refused."""
    uploads = [f for f in (form.files.data or []) if getattr(f, "filename", "")]
    if len(uploads) > service.MAX_ATTACHMENTS:
        form.files.errors = [f"At most {service.MAX_ATTACHMENTS} attachments a message."]
        return None
    checked, errors = [], []
    for upload in uploads:
        try:
            checked.append(
                check_attachment(
                    upload.filename, upload.read(service.MAX_ATTACHMENT + 1), max_bytes=service.MAX_ATTACHMENT
                )
            )
        except RefusedFile as exc:
            errors.append(exc.reason)
    if errors:
        form.files.errors = errors
        return None
    return checked


def _subscriptions(identity: Identity) -> list[SelectChoice]:
    rows = current_session().scalars(
        sa.select(Subscription)
        .where(
            Subscription.marketplace_id == identity.marketplace.id,
            Subscription.customer_id.in_(identity.organisations_with(Role.CUSTOMER)),
        )
        .order_by(Subscription.created_at.desc())
        .limit(100)
    )
    choices = [SelectChoice("", "Something else (the marketplace's support answers)")]
    for subscription in rows:
        name = product_name(current_session(), subscription.product_id)
        choices.append(
            SelectChoice(str(subscription.id), f"{name} ({subscription.status.value.replace('_', ' ')})")
        )
    return choices


@bp.route("/account/tickets", methods=["GET", "POST"])
def tickets() -> ResponseReturnValue:
    """Your tickets, the latest activity first; customers open new ones here."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    customers = identity.organisations_with(Role.CUSTOMER)
    form, status = None, 200
    if customers:
        form = TicketForm()
        form.about.choices = _subscriptions(identity)
        if request.args.get("about") and request.method == "GET":
            form.about.data = request.args["about"]
    if request.method == "POST":
        if form is None:
            abort(403)
        if form.validate_on_submit() and (files := _files(form)) is not None:
            session = current_session()
            try:
                about = uuid.UUID(form.about.data) if form.about.data else None
            except ValueError:
                about = uuid.uuid4()  # a forged choice: refused below as not theirs
            try:
                ticket = service.open_ticket(
                    session,
                    storage(),
                    marketplace_id=identity.marketplace.id,
                    customer_id=min(customers),
                    author=service.Author.of(identity.user, AuthorRole.CUSTOMER),
                    subject=form.subject.data or "",
                    body=form.body.data or "",
                    subscription_id=about,
                    files=files,
                    via="web",
                )
            except service.TicketError as exc:
                session.rollback()
                field = {"subscription_id": "about", "deployment_id": "about"}.get(exc.field, exc.field)
                getattr(form, field).errors.append(exc.message)
                status = 422
            else:
                session.commit()
                flash(f"Ticket {ticket.ref} is open; you will get an e-mail when it is answered.")
                return redirect(url_for("pages.ticket", ticket_id=ticket.id))
        elif form.csrf_token.errors:
            abort(400)
        else:
            status = 422
    stmt = service.visible(identity.marketplace.id, identity.memberships)
    wanted = request.args.get("status")
    if wanted in {s.value for s in TicketStatus}:
        stmt = stmt.where(Ticket.status == TicketStatus(wanted))
    page = paged(stmt.order_by(Ticket.updated_at.desc(), Ticket.id))
    return (
        render_template(
            "tickets.html",
            page=page,
            form=form,
            wanted=wanted,
            page_link=lambda n: url_for("pages.tickets", status=wanted, page=n),
        ),
        status,
    )


@bp.route("/account/tickets/<uuid:ticket_id>", methods=["GET", "POST"])
def ticket(ticket_id: uuid.UUID) -> ResponseReturnValue:
    """A ticket's thread: answer (with attachments), or close it."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    found = session.get(Ticket, ticket_id)
    role = service.participant(found, identity.memberships) if found else None
    if found is None or role is None or found.marketplace_id != identity.marketplace.id:
        abort(404)
    form, status = TicketReplyForm(), 200
    if request.method == "POST":
        if request.form.get("action") == "close":
            if not ActionForm().validate_on_submit():
                abort(400)
            service.close(session, found, service.Author.of(identity.user, role))
            session.commit()
            flash("The ticket is closed. Write again to open it anew.")
            return redirect(url_for("pages.ticket", ticket_id=found.id))
        if form.validate_on_submit() and (files := _files(form)) is not None:
            try:
                service.add_message(
                    session,
                    storage(),
                    found,
                    service.Author.of(identity.user, role),
                    form.body.data or "",
                    files=files,
                    via="web",
                )
            except service.TicketError as exc:
                session.rollback()
                form.body.errors.append(exc.message)
                status = 422
            else:
                session.commit()
                flash("Your answer is in the thread.")
                return redirect(url_for("pages.ticket", ticket_id=found.id, _anchor="latest"))
        elif form.csrf_token.errors:
            abort(400)
        else:
            status = 422
    about = None
    if found.subscription_id and (subscription := session.get(Subscription, found.subscription_id)):
        about = product_name(session, subscription.product_id)
    return (
        render_template(
            "ticket.html", ticket=found, role=role, form=form, about=about, action_form=ActionForm()
        ),
        status,
    )


@bp.route("/admin/support", methods=["GET", "POST"])
def admin_support() -> ResponseReturnValue:
    """Where the marketplace forwards its customers' ticket messages: an external ticket
    system's webhook (its signing secret shown once) and/or e-mail address."""
    identity = admin_identity()
    if identity is None:
        return sign_in_first()
    session = current_session()
    marketplace_id = identity.marketplace.id
    current = session.get(SupportSettings, marketplace_id)
    form, secret, status = ForwardingForm(obj=current), None, 200
    if request.method == "POST":
        if form.validate_on_submit():
            try:
                current, secret = service.set_forwarding(
                    session,
                    sealer(),
                    marketplace_id,
                    url=form.forward_url.data,
                    email=form.forward_email.data,
                    allow_private=current_config().allow_private_targets,
                )
            except OutboundError as exc:
                session.rollback()
                form.forward_url.errors.append(f"The URL {exc}.")
                status = 422
            else:
                session.commit()
                flash(
                    "Saved: customers' messages are forwarded as shown."
                    if current.forward_url or current.forward_email
                    else "Saved: nothing is forwarded."
                )
                if secret is None:
                    return redirect(url_for("pages.admin_support"))
        elif form.csrf_token.errors:
            abort(400)
        else:
            status = 422
    counts = dict(
        session.execute(
            sa.select(Ticket.status, sa.func.count())
            .where(Ticket.marketplace_id == marketplace_id)
            .group_by(Ticket.status)
        ).all()
    )
    body = render_template(
        "admin_support.html", form=form, current=current, secret=secret, counts=counts, statuses=TicketStatus
    )
    return no_store(body, status) if secret else (body, status)
