"""Page views. They parse forms, call services and render; the rules live in ``cmw``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from cmw.accounts import service as accounts
from cmw.accounts.auth import (
    current_identity,
    current_marketplace,
    end_session,
    marketplace_or_none,
    start_session,
)
from cmw.extensions import current_session
from marketplace.forms import SignInForm, SignOutForm

bp = Blueprint("pages", __name__)


@bp.app_context_processor
def branding() -> dict[str, Any]:
    return {
        "marketplace": marketplace_or_none(),
        "identity": current_identity(),
        "sign_out_form": SignOutForm(),
    }


@bp.get("/")
def home() -> ResponseReturnValue:
    return render_template("home.html")


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
