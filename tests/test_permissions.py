"""The permission matrix (issue 13): every operation of the OpenAPI document, for every role,
in its own tenant and in a foreign one, walked from the document, so a new endpoint fails this test
until its row is written in ``EXPECTED``.

Marketplace A holds one of everything (``tests.test_isolation.sides``). Each operation is
called with A's objects in its path:

- anonymously;
- by A's customer, vendor and admin: their own tenant;
- by a foreign tenant: another customer and another vendor of A (the same marketplace),
  and the admin of a sibling marketplace B.

Bodies are ``{}``: whether the caller may call the operation at all is decided before its
input is read (401 and 403 come before 422). Every call runs in a savepoint rolled back
after it, so each cell starts from the same data, whatever the one before it deleted.

Each cell reads:

- ``.``: let through: a success, or an answer about the input (400, 409, 422);
- ``A``: 401, sign in first;
- ``R``: 403, the role may not;
- ``H``: hidden: 404 in the own tenant's cells; in the foreign tenant's, the same answer
  as for an object that does not exist, and no success (with ``{}`` for a body, that is
  often the 422 of the input, read before the object is looked up).

A row is ``anonymous customer vendor admin``; each role's own tenant first, then the
foreign one (``.H``: its own objects, not the others'). An operation without an object in
its path has one letter per role.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from cmw.accounts.models import Role
from tests.test_isolation import A_HOST, B_HOST, PARAMETERS, operations, sides  # noqa: F401

ROLES = (Role.CUSTOMER, Role.VENDOR, Role.ADMIN)

#: the answer of each cell (see the module's docstring)
EXPECTED: dict[str, str] = {
    "POST /api/v1/session": ". . . .",
    "DELETE /api/v1/session": ". . . .",
    "GET /api/v1/me": "A . . .",
    "PATCH /api/v1/me": "A . . .",
    "GET /api/v1/me/export": "A . . .",
    "POST /api/v1/me/erasure": "A . . .",
    "POST /api/v1/me/sign-out-everywhere": "A . . .",
    "GET /api/v1/me/tokens": "A . . .",
    "POST /api/v1/me/tokens": "A . . .",
    # a token is its owner's alone (the customer's here)
    "DELETE /api/v1/me/tokens/{token_id}": "A .H HH HH",
    "GET /api/v1/users": "A R R .",
    "POST /api/v1/users": ". . . .",
    "GET /api/v1/users/{user_id}": "A RR RR .H",
    "PATCH /api/v1/users/{user_id}": "A RR RR .H",
    "POST /api/v1/users/{user_id}/memberships": "A RR RR .H",
    "DELETE /api/v1/users/{user_id}/memberships/{membership_id}": "A RR RR .H",
    "GET /api/v1/organisations": "A . . .",
    "POST /api/v1/organisations": "A R R .",
    "GET /api/v1/organisations/{organisation_id}": "A .H HH .H",
    "PATCH /api/v1/organisations/{organisation_id}": "A .H HH .H",
    "GET /api/v1/admin/sign-in": "A R R .",
    "PUT /api/v1/admin/sign-in": "A R R .",
    "GET /api/v1/marketplace": ". . . .",
    "PATCH /api/v1/marketplace": "A R R .",
    "PUT /api/v1/marketplace/logo": "A R R .",
    "DELETE /api/v1/marketplace/logo": "A R R .",
    "GET /api/v1/marketplace/selection": "A R R .",
    "PUT /api/v1/marketplace/selection": "A R R .",
    "GET /api/v1/marketplace/pricing": "A R R .",
    "PUT /api/v1/marketplace/pricing": "A R R .",
    "GET /api/v1/marketplace/prices/{product}": "A RR RR HH",
    "PUT /api/v1/marketplace/prices/{product}": "A RR RR HH",
    "DELETE /api/v1/marketplace/prices/{product}": "A RR RR HH",
    "GET /api/v1/marketplaces": "A R R .",
    "POST /api/v1/marketplaces": "A R R .",
    "GET /api/v1/categories": ". . . .",
    "GET /api/v1/products": ". . . .",
    "GET /api/v1/products/compare": ". . . .",
    # public; B does not sell A's product
    "GET /api/v1/products/{ref}": ". .. .. .H",
    "GET /api/v1/vendor/products": "A R . R",
    "POST /api/v1/vendor/products": "A R . R",
    "GET /api/v1/vendor/products/{product_id}": "A RR .H RR",
    "PATCH /api/v1/vendor/products/{product_id}": "A RR .H RR",
    "PUT /api/v1/vendor/products/{product_id}/plans": "A RR .H RR",
    "PUT /api/v1/vendor/products/{product_id}/logo": "A RR .H RR",
    "POST /api/v1/vendor/products/{product_id}/screenshots": "A RR .H RR",
    "DELETE /api/v1/vendor/products/{product_id}/screenshots/{image_id}": "A RR .H RR",
    "POST /api/v1/vendor/products/{product_id}/submit": "A RR .H RR",
    "POST /api/v1/vendor/products/{product_id}/withdraw": "A RR .H RR",
    "POST /api/v1/vendor/products/{product_id}/retire": "A RR .H RR",
    "GET /api/v1/admin/products": "A R R .",
    "GET /api/v1/admin/products/{product_id}": "A RR RR .H",
    "POST /api/v1/admin/products/{product_id}/approve": "A RR RR .H",
    "POST /api/v1/admin/products/{product_id}/reject": "A RR RR .H",
    "POST /api/v1/admin/products/{product_id}/retire": "A RR RR .H",
    "GET /api/v1/products/{ref}/reviews": ". .. .. .H",
    "PUT /api/v1/products/{ref}/reviews/mine": "A .H RR RR",
    "POST /api/v1/vendor/reviews/{review_id}/reply": "A RR .H RR",
    "PATCH /api/v1/admin/reviews/{review_id}": "A RR RR .H",
    "GET /api/v1/orders": "A . . .",
    "POST /api/v1/orders": "A . R .",
    "GET /api/v1/orders/{order_id}": "A .H .H .H",
    "GET /api/v1/orders/approvals": "A R . .",
    # on a reseller's marketplace the reseller (its admin) decides, not the vendor; rejecting
    # reads the reason first, so it answers the vendor 422 before 403
    "POST /api/v1/orders/{order_id}/approve": "A RR RR .H",
    "POST /api/v1/orders/{order_id}/reject": "A RR .H .H",
    "GET /api/v1/subscriptions": "A . . .",
    "GET /api/v1/subscriptions/{subscription_id}": "A .H .H .H",
    "PUT /api/v1/subscriptions/{subscription_id}/plan": "A .H RR .H",
    "PUT /api/v1/subscriptions/{subscription_id}/quantity": "A .H RR .H",
    "POST /api/v1/subscriptions/{subscription_id}/cancel": "A .H RR .H",
    "POST /api/v1/subscriptions/{subscription_id}/reactivate": "A .H RR .H",
    "GET /api/v1/subscriptions/{subscription_id}/variables": "A .H RR .H",
    "PUT /api/v1/subscriptions/{subscription_id}/variables": "A .H RR .H",
    "GET /api/v1/vendor/customers": "A R . R",
    "GET /api/v1/me/notifications": "A . . .",
    "POST /api/v1/me/notifications/{notification_id}/read": "A .H HH HH",
    "POST /api/v1/me/notifications/read-all": "A . . .",
    # the platform's own: A (a child marketplace) has none to show its admin
    "GET /api/v1/admin/cloud-accounts": "A R R H",
    "POST /api/v1/admin/cloud-accounts": "A R R .",
    "GET /api/v1/admin/cloud-accounts/{account_id}": "A RR RR HH",
    "PATCH /api/v1/admin/cloud-accounts/{account_id}": "A RR RR HH",
    "POST /api/v1/admin/cloud-accounts/{account_id}/test": "A RR RR HH",
    "GET /api/v1/customer/cloud-accounts": "A . R R",
    "POST /api/v1/customer/cloud-accounts": "A . R R",
    # the object is a platform account: no customer's own
    "GET /api/v1/customer/cloud-accounts/{account_id}": "A HH RR RR",
    "DELETE /api/v1/customer/cloud-accounts/{account_id}": "A HH RR RR",
    "GET /api/v1/deployments": "A . . .",
    "GET /api/v1/deployments/{deployment_id}": "A .H .H .H",
    "POST /api/v1/admin/deployments/{deployment_id}/retry": "A RR RR .H",
    "POST /api/v1/admin/deployments/{deployment_id}/remove": "A RR RR .H",
    "GET /api/v1/deployments/{deployment_id}/stats": "A .H .H .H",
    "GET /api/v1/deployments/{deployment_id}/logs": "A .H .H .H",
    "POST /api/v1/cost-estimates": ". . . .",
    "POST /api/v1/usage": "A R . .",
    "GET /api/v1/subscriptions/{subscription_id}/cost": "A .H .H .H",
    "GET /api/v1/costs": "A . R R",
    "PUT /api/v1/budget": "A . R R",
    "DELETE /api/v1/budget": "A . R R",
    "GET /api/v1/admin/cloud-event-rules": "A R R .",
    "PUT /api/v1/admin/cloud-event-rules": "A R R .",
    "GET /api/v1/vendor/products/{product_id}/price-simulation": "A RR .H RR",
    "GET /api/v1/invoices": "A . R .",
    "GET /api/v1/invoices/{invoice_id}": "A .H RR .H",
    "PATCH /api/v1/admin/invoices/{invoice_id}": "A RR RR .H",
    "POST /api/v1/admin/invoices/{invoice_id}/payments": "A RR RR .H",
    "POST /api/v1/admin/invoices/{invoice_id}/credit-notes": "A RR RR .H",
    "GET /api/v1/credit-notes": "A . R .",
    "GET /api/v1/invoices/{invoice_id}/pdf": "A .H RR .H",
    "GET /api/v1/invoices/{invoice_id}/ubl": "A .H RR .H",
    "GET /api/v1/credit-notes/{note_id}/pdf": "A .H RR .H",
    "GET /api/v1/credit-notes/{note_id}/ubl": "A .H RR .H",
    "GET /api/v1/marketplace/revenue": "A R R .",
    "GET /api/v1/vendor/revenue": "A R . R",
    "GET /api/v1/admin/billing-settings": "A R R .",
    "PATCH /api/v1/admin/billing-settings": "A R R .",
    "GET /api/v1/admin/tax-rates": "A R R .",
    "POST /api/v1/admin/tax-rates": "A R R .",
    "DELETE /api/v1/admin/tax-rates/{rate_id}": "A RR RR .H",
    "GET /api/v1/admin/coupons": "A R R .",
    "POST /api/v1/admin/coupons": "A R R .",
    "POST /api/v1/subscriptions/{subscription_id}/coupon": "A .H RR RR",
    # the platform's: a child marketplace's admin is told 404
    "GET /api/v1/admin/alerts": "A R R H",
    "GET /api/v1/admin/audit": "A R R .",
    "GET /api/v1/vendor/webhooks": "A R . R",
    "POST /api/v1/vendor/webhooks": "A R . R",
    "GET /api/v1/vendor/webhooks/{endpoint_id}": "A RR .H RR",
    "PATCH /api/v1/vendor/webhooks/{endpoint_id}": "A RR .H RR",
    "DELETE /api/v1/vendor/webhooks/{endpoint_id}": "A RR .H RR",
    "POST /api/v1/vendor/webhooks/{endpoint_id}/secret": "A RR .H RR",
    "POST /api/v1/vendor/webhooks/{endpoint_id}/test": "A RR .H RR",
    "GET /api/v1/vendor/webhooks/{endpoint_id}/deliveries": "A RR .H RR",
    "GET /api/v1/vendor/webhooks/deliveries/{delivery_id}": "A RR .H RR",
    "POST /api/v1/vendor/webhooks/deliveries/{delivery_id}/replay": "A RR .H RR",
    "GET /api/v1/support/tickets": "A . . .",
    "POST /api/v1/support/tickets": "A . R R",
    "GET /api/v1/support/tickets/{ticket_id}": "A .H HH .H",
    "POST /api/v1/support/tickets/{ticket_id}/messages": "A .H .H .H",
    "POST /api/v1/support/tickets/{ticket_id}/close": "A .H HH .H",
    # the mail forwarder's webhook: 404 until an admin sets up forwarding (with its secret)
    "POST /api/v1/support/inbound-email": "H H H H",
    "GET /api/v1/admin/support/forwarding": "A R R .",
    "PUT /api/v1/admin/support/forwarding": "A R R .",
    "GET /api/v1/support/attachments/{attachment_id}": "A .H HH .H",
}


def classify(answer: Any, control: Any | None = None) -> str:
    """One cell; ``control``: the same call for an object that does not exist (the foreign
    tenant's cells)."""
    assert answer.status_code < 500, answer.get_data(as_text=True)
    if answer.status_code == 401:
        return "A"
    if answer.status_code == 403:
        return "R"
    if control is None:
        return "H" if answer.status_code == 404 else "."
    if answer.status_code == control.status_code and not 200 <= answer.status_code < 300:
        return "H"
    return "."


def observe(client: FlaskClient, db_session: Session, method: str, url: str, headers: dict[str, str],
            host: str) -> Any:  # fmt: skip
    """One call, undone afterwards."""
    savepoint = db_session.connection().begin_nested()
    try:
        body = {} if method in ("POST", "PUT", "PATCH") else None
        return client.open(url, method=method, json=body, headers=headers, base_url=f"http://{host}")
    finally:
        savepoint.rollback()


def test_every_operation_answers_each_role_and_tenant_as_the_table_says(
    client: FlaskClient,
    db_session: Session,
    sides: dict[str, Any],  # noqa: F811
) -> None:
    objects = sides["objects"]
    observed: dict[str, str] = {}
    for method, path in operations(client):
        names = re.findall(r"{(\w+)}", path)
        ours = nowhere = path
        for name in names:
            ours = ours.replace(f"{{{name}}}", objects[PARAMETERS[name]])
            nowhere = nowhere.replace(f"{{{name}}}", str(uuid.uuid4()))
        cells = [classify(observe(client, db_session, method, ours, {}, A_HOST))]
        for role in ROLES:
            own = observe(client, db_session, method, ours, sides["a"][role], A_HOST)
            if not names:
                cells.append(classify(own))
                continue
            foreign_headers, host = (
                (sides["b"][role], B_HOST) if role is Role.ADMIN else (sides["a_others"][role], A_HOST)
            )
            foreign = observe(client, db_session, method, ours, foreign_headers, host)
            foreign_control = observe(client, db_session, method, nowhere, foreign_headers, host)
            cells.append(classify(own) + classify(foreign, foreign_control))
        observed[f"{method} {path}"] = " ".join(cells)
    if os.environ.get("MERCATO_PRINT_PERMISSIONS"):
        print("\nEXPECTED = {")
        for key, cells in observed.items():
            print(f'    "{key}": "{cells}",')
        print("}")
    missing = sorted(set(observed) - set(EXPECTED))
    assert not missing, "write the expected answers of these operations in EXPECTED:\n" + "\n".join(
        f'    "{key}": "{observed[key]}",' for key in missing
    )
    gone = sorted(set(EXPECTED) - set(observed))
    assert not gone, f"these operations are no longer in the document: {gone}"
    wrong = {key: (EXPECTED[key], cells) for key, cells in observed.items() if EXPECTED[key] != cells}
    assert not wrong, "\n".join(
        f"{key}: expected {want!r}, got {got!r}" for key, (want, got) in wrong.items()
    )
