"""Forms of the pages (Flask-WTF, so each carries its CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    EmailField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional


class SignInForm(FlaskForm):  # type: ignore[misc]
    email = EmailField("E-mail", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])


class SignOutForm(FlaskForm):  # type: ignore[misc]
    pass


class OrderForm(FlaskForm):  # type: ignore[misc]
    """Order a plan (or start the trial) of the product page's product."""

    plan = SelectField("Plan", validators=[DataRequired()])
    quantity = IntegerField("Quantity", default=1, validators=[Optional(), NumberRange(min=1, max=100_000)])
    target = SelectField("Cloud and region", validators=[Optional()])
    ssh_public_key = TextAreaField(
        "Your SSH public key (optional)", validators=[Optional(), Length(max=16_384)]
    )
    trial = BooleanField("Start with the free trial")


class SignUpForm(FlaskForm):  # type: ignore[misc]
    """A new customer: the person and their company."""

    name = StringField("Your name", validators=[DataRequired(), Length(max=120)])
    email = EmailField("E-mail", validators=[DataRequired(), Length(max=254)])
    password = PasswordField(
        "Password (at least 12 characters)", validators=[DataRequired(), Length(max=256)]
    )
    company = StringField("Company", validators=[DataRequired(), Length(max=200)])
    country = StringField("Country (two letters, e.g. IT)", validators=[DataRequired(), Length(min=2, max=2)])


class ActionForm(FlaskForm):  # type: ignore[misc]
    """A button that acts on something (cancel, submit, retry, mark read): its CSRF token is
    all it carries."""


class ReviewForm(FlaskForm):  # type: ignore[misc]
    rating = SelectField(
        "Your rating",
        choices=[
            SelectChoice(v, label)
            for v, label in (("5", "5: excellent"), ("4", "4"), ("3", "3"), ("2", "2"), ("1", "1: poor"))
        ],
    )
    comment = TextAreaField("Comment (optional)", validators=[Optional(), Length(max=5000)])


class ReplyForm(FlaskForm):  # type: ignore[misc]
    reply = TextAreaField("Your reply", validators=[DataRequired(), Length(max=5000)])


class ReviewDecisionForm(FlaskForm):  # type: ignore[misc]
    """Approve a submitted revision, or send it back with the reason."""

    reason = TextAreaField("What the vendor has to change", validators=[Optional(), Length(max=5000)])
