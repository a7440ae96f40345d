"""The customer's own cloud accounts (account panel, "Clouds"): add one with its
credentials (tried with one call to the cloud before it is kept), see them, forget one.
A product ordered into one of them runs there, and only its licence is charged."""

from __future__ import annotations

import uuid
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from cmw.accounts.auth import current_identity
from cmw.accounts.models import Role
from cmw.crypto import sealer
from cmw.extensions import current_config, current_session
from deployer import own
from deployer.service import CloudAccountError
from marketplace.forms import ActionForm, OwnCloudForm
from marketplace.views import bp, pairs, sign_in_first

#: settings of the driver itself rather than credentials (from the form's extra lines)
DRIVER_SETTINGS = frozenset({"host", "port", "secure", "path", "signature_version", "api_version"})


def _settings(form: OwnCloudForm) -> dict[str, Any] | None:
    """The account as ``own.add`` takes it, or None with the form's error set."""
    provider = (
        form.provider.data if form.provider.data != "other" else (form.other_provider.data or "").strip()
    )
    if not provider:
        form.other_provider.errors = ["name the Libcloud provider of your cloud"]
        return None
    extra = pairs(form.extra.data or "", form.extra)
    if extra is None:
        return None
    options = {name: value for name, value in extra.items() if name in DRIVER_SETTINGS}
    credentials = {name: value for name, value in extra.items() if name not in DRIVER_SETTINGS}
    for name in ("key", "secret", "tenant_id", "subscription_id"):
        value = (getattr(form, name).data or "").strip()
        if value:
            credentials[name] = value
    if "key" not in credentials:
        form.key.errors = ["the key (or application id) the cloud gave you"]
        return None
    return {
        "name": (form.name.data or "").strip(),
        "provider": provider,
        "credentials": credentials,
        "region": (form.region.data or "").strip() or None,
        "driver_options": options,
        "ssh_username": (form.ssh_username.data or "ubuntu").strip(),
    }


#: which form field shows an error of ``own.add`` on a setting
_FIELD = {"credentials": "key", "driver_options": "extra", "provider": "other_provider", "slug": "name"}


@bp.route("/account/clouds", methods=["GET", "POST"])
def clouds() -> ResponseReturnValue:
    """Your organisation's own cloud accounts."""
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    customers = sorted(identity.organisations_with(Role.CUSTOMER))
    if not customers:
        abort(403)
    session = current_session()
    form = OwnCloudForm()
    status = 200
    if request.method == "POST":
        settings = _settings(form) if form.validate_on_submit() else None
        if form.csrf_token.errors:
            abort(400)
        if settings is None:
            status = 422
        else:
            try:
                own.add(
                    session,
                    sealer(),
                    customers[0],
                    settings,
                    allow_private=current_config().allow_private_targets,
                )
            except CloudAccountError as exc:
                session.rollback()
                getattr(form, _FIELD.get(exc.field, exc.field), form.key).errors = [str(exc)]
                status = 422
            else:
                session.commit()
                flash("The cloud account works and is saved: choose it when you order.", "info")
                return redirect(url_for("pages.clouds"))
    accounts = own.owned(session, customers[0])
    return render_template("clouds.html", accounts=accounts, form=form, action_form=ActionForm()), status


@bp.post("/account/clouds/<uuid:account_id>/remove")
def remove_cloud(account_id: uuid.UUID) -> ResponseReturnValue:
    identity = current_identity()
    if identity is None:
        return sign_in_first()
    if not ActionForm().validate_on_submit():
        abort(400)
    session = current_session()
    found = next(
        (
            a
            for organisation_id in identity.organisations_with(Role.CUSTOMER)
            if (a := own.find(session, organisation_id, account_id)) is not None
        ),
        None,
    )
    if found is None:
        abort(404)
    try:
        own.remove(session, sealer(), found)
    except own.InUse as exc:
        session.rollback()
        flash(str(exc), "error")
    else:
        session.commit()
        flash(f"{found.name} is forgotten, with its credentials.", "info")
    return redirect(url_for("pages.clouds"))
