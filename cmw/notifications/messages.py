"""What each event tells the customer: a title, a text and a link. One table, so adding
a notification is adding a row."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Message:
    title: str
    body: str
    link: str | None = None


def _order_link(p: dict[str, Any]) -> str:
    return f"/account/orders/{p.get('order_id', '')}"


def _asked(p: dict[str, Any]) -> str:
    """What the order asks for, in words."""
    return {"trial": "trial", "change": "change of plan or quantity"}.get(str(p.get("kind")), "order")


def _subscription_link(p: dict[str, Any]) -> str:
    return f"/account/subscriptions/{p.get('subscription_id', '')}"


#: topic -> how to word it, from the event payload and the product's name
MESSAGES: dict[str, Callable[[dict[str, Any], str], Message]] = {
    "deployment.unreachable": lambda p, product: Message(
        f"{product}: your instance does not answer",
        f"Your instance of {product} ({p.get('address') or 'no address'}) has not answered since"
        f" {str(p.get('since', ''))[:16].replace('T', ' ')} UTC. We keep trying and tell you when it is back;"
        " open a support ticket if you did not stop it yourself.",
        _subscription_link(p),
    ),
    "deployment.reachable": lambda p, product: Message(
        f"{product}: your instance answers again",
        f"Your instance of {product} ({p.get('address') or 'no address'}) answers again.",
        _subscription_link(p),
    ),
    "invoice.issued": lambda p, product: Message(
        f"Invoice {p.get('number', '')}",
        f"Invoice {p.get('number', '')} for {p.get('total', '')} {p.get('currency', '')} is issued;"
        f" it is due on {str(p.get('due_at', ''))[:10]}.",
        f"/account/invoices/{p.get('invoice_id', '')}",
    ),
    "invoice.overdue": lambda p, product: Message(
        f"Invoice {p.get('number', '')} is overdue",
        f"Invoice {p.get('number', '')} was due on {str(p.get('due_at', ''))[:10]};"
        f" {p.get('outstanding', '')} {p.get('currency', '')} is still to pay."
        " Unpaid invoices put your subscriptions on hold and, in the end, cancel them.",
        f"/account/invoices/{p.get('invoice_id', '')}",
    ),
    "subscription.past_due": lambda p, product: Message(
        f"{product}: payment overdue",
        f"Your subscription to {product} is past due because {p.get('reason', 'an invoice is unpaid')}."
        " Pay it to keep the subscription.",
        _subscription_link(p),
    ),
    "subscription.suspended": lambda p, product: Message(
        f"{product}: instance suspended",
        f"Your {product} instance has been stopped because {p.get('reason', 'an invoice is unpaid')}."
        " Its data is kept: pay the invoice and it starts again.",
        _subscription_link(p),
    ),
    "subscription.resumed": lambda p, product: Message(
        f"{product}: instance running again",
        f"Thank you for your payment: your {product} instance is starting again.",
        _subscription_link(p),
    ),
    "budget.warning": lambda p, _product: Message(
        f"{p.get('percent', 80)}% of your budget is spent",
        f"Your live costs this month are {p.get('spent', '')} {p.get('currency', '')} of your"
        f" {p.get('budget', '')} {p.get('currency', '')} budget; at this rate the month ends at"
        f" {p.get('projected', '')} {p.get('currency', '')}.",
        "/account/costs",
    ),
    "budget.exceeded": lambda p, _product: Message(
        "Your budget is spent",
        f"Your live costs this month are {p.get('spent', '')} {p.get('currency', '')}, over your"
        f" {p.get('budget', '')} {p.get('currency', '')} budget.",
        "/account/costs",
    ),
    "invoice.paid": lambda p, product: Message(
        f"Invoice {p.get('number', '')} is paid",
        f"Thank you: invoice {p.get('number', '')} is paid in full.",
        f"/account/invoices/{p.get('invoice_id', '')}",
    ),
    "credit_note.issued": lambda p, product: Message(
        f"Credit note {p.get('number', '')}",
        f"Credit note {p.get('number', '')} credits {p.get('total', '')} {p.get('currency', '')}"
        f" of invoice {p.get('invoice_number', '')}: {p.get('reason', '')}",
        f"/account/invoices/{p.get('invoice_id', '')}",
    ),
    "order.placed": lambda p, product: Message(
        f"Order confirmed: {product}",
        f"Your order for {product} is confirmed. We are preparing your instance "
        "and will write again when it is ready.",
        f"/account/orders/{p.get('order_id', '')}",
    ),
    "subscription.trial_started": lambda p, product: Message(
        f"Your {product} trial has started",
        f"Your free trial of {product} has started. We will remind you three days before it ends.",
        _subscription_link(p),
    ),
    "subscription.trial_ending": lambda p, product: Message(
        f"Your {product} trial ends in {p.get('days_left', 3)} days",
        f"Your trial of {product} ends on {str(p.get('trial_end', ''))[:10]}. "
        "Add a payment method to keep it running; otherwise it stops and its instance is removed.",
        _subscription_link(p),
    ),
    "subscription.expired": lambda p, product: Message(
        f"Your {product} trial has ended",
        f"Your trial of {product} has ended and its instance will be removed. "
        "You can order it again at any time.",
        _subscription_link(p),
    ),
    "subscription.activated": lambda p, product: Message(
        f"{product} is active",
        f"Your subscription to {product} is active."
        + (" Your trial has converted to a paid plan." if p.get("converted_from_trial") else ""),
        _subscription_link(p),
    ),
    "subscription.changed": lambda p, product: Message(
        f"Your {product} subscription changed",
        f"Your subscription to {product} changed ({str(p.get('change', 'update')).replace('_', ' ')}"
        + (", effective at the end of the period" if p.get("effective") == "period_end" else "")
        + ").",
        _subscription_link(p),
    ),
    "deployment.ready": lambda p, product: Message(
        f"{product} is ready",
        f"Your instance of {product} is ready"
        + (f" at {p['url']}" if p.get("url") else (f" at {p['address']}" if p.get("address") else ""))
        + (f". Sign in as {p['login']}" if p.get("login") else "")
        + ". Whoever placed the order finds the one-time password in their e-mail and, once,"
        " on the order page; change it when you first sign in.",
        _subscription_link(p),
    ),
    "deployment.failed": lambda p, product: Message(
        f"{product} could not be set up",
        f"We could not set up the instance of {product}: {p.get('reason') or 'an error'}. "
        "Nothing was left running and you will not be charged for it.",
        _subscription_link(p),
    ),
    "deployment.reconfigured": lambda p, product: Message(
        f"{product} runs with your new settings",
        f"The setup of your instance of {product} ran again with the settings you changed.",
        _subscription_link(p),
    ),
    "deployment.reconfigure_failed": lambda p, product: Message(
        f"Your new settings for {product} could not be applied",
        f"The setup of your instance of {product} failed with the settings you changed: "
        f"{p.get('reason') or 'an error'}. The instance keeps running as it was; correct the "
        "settings and save them again, or open a support ticket.",
        _subscription_link(p),
    ),
    "subscription.cancelled": lambda p, product: Message(
        f"Your {product} subscription has ended",
        f"Your subscription to {product} has been cancelled.",
        _subscription_link(p),
    ),
    "order.awaiting_approval": lambda p, product: Message(
        f"Your order of {product} waits for approval",
        f"Your {_asked(p)} of {product} needs the approval of "
        + ("its vendor" if p.get("auditor") == "vendor" else "the marketplace")
        + ". We tell you as soon as it is decided.",
        _order_link(p),
    ),
    "order.approved": lambda p, product: Message(
        f"Your order of {product} is approved",
        f"Your {_asked(p)} of {product} is approved"
        + ("; the change is made." if p.get("kind") == "change" else "; we are setting it up now."),
        _order_link(p),
    ),
    "order.rejected": lambda p, product: Message(
        f"Your order of {product} was not approved",
        f"Your {_asked(p)} of {product} was not approved: {p.get('reason') or 'no reason given'}."
        " Nothing was charged. Open a support ticket if you have questions.",
        _order_link(p),
    ),
}

#: topic -> how to word it for the order's auditor (the vendor, or the reseller's admins)
AUDITOR_MESSAGES: dict[str, Callable[[dict[str, Any], str], Message]] = {
    "order.awaiting_approval": lambda p, product: Message(
        f"An order of {product} waits for your approval",
        f"A customer asks for a {_asked(p)} of {product}. Approve it, or reject it with a reason.",
        "/vendor/approvals" if p.get("auditor") == "vendor" else "/admin/approvals",
    ),
}
