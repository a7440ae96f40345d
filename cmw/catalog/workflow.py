"""The publication workflow as explicit transition tables, applied with compare-and-set.

A product's status and its working version's state move together: the tables say which
(status, action) and (state, action) pairs are allowed and where they lead. Each change is
an ``UPDATE ... WHERE id = :id AND status = :expected`` checked for one row, so two admins
deciding at once cannot both win.
"""

from __future__ import annotations

import enum
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.catalog.models import Product, ProductStatus, ProductVersion, VersionState


class Action(enum.StrEnum):
    #: the vendor changes the working version
    EDIT = "edit"
    #: the vendor asks for review
    SUBMIT = "submit"
    #: the vendor takes a submission back to edit it
    WITHDRAW = "withdraw"
    #: an admin accepts the submitted version; it goes live
    APPROVE = "approve"
    #: an admin sends the submitted version back to draft with a reason
    REJECT = "reject"
    #: the vendor or an admin stops selling the product
    RETIRE = "retire"


class InvalidTransition(Exception):
    """The action is not allowed in the current state."""

    def __init__(self, action: Action, current: str, detail: str | None = None) -> None:
        super().__init__(detail or f"cannot {action.value} a product that is {current.replace('_', ' ')}")
        self.action = action
        self.current = current


class ConcurrentChange(Exception):
    """Someone else changed the product between our read and our write."""


#: product status transitions: (status, action) -> new status
PRODUCT_TRANSITIONS: dict[tuple[ProductStatus, Action], ProductStatus] = {
    (ProductStatus.DRAFT, Action.EDIT): ProductStatus.DRAFT,
    (ProductStatus.DRAFT, Action.SUBMIT): ProductStatus.IN_REVIEW,
    (ProductStatus.DRAFT, Action.RETIRE): ProductStatus.RETIRED,
    (ProductStatus.IN_REVIEW, Action.WITHDRAW): ProductStatus.DRAFT,
    (ProductStatus.IN_REVIEW, Action.APPROVE): ProductStatus.PUBLISHED,
    (ProductStatus.IN_REVIEW, Action.REJECT): ProductStatus.DRAFT,
    # A published product's next revision goes through review while it stays published.
    (ProductStatus.PUBLISHED, Action.EDIT): ProductStatus.PUBLISHED,
    (ProductStatus.PUBLISHED, Action.SUBMIT): ProductStatus.PUBLISHED,
    (ProductStatus.PUBLISHED, Action.WITHDRAW): ProductStatus.PUBLISHED,
    (ProductStatus.PUBLISHED, Action.APPROVE): ProductStatus.PUBLISHED,
    (ProductStatus.PUBLISHED, Action.REJECT): ProductStatus.PUBLISHED,
    (ProductStatus.PUBLISHED, Action.RETIRE): ProductStatus.RETIRED,
}

#: working version transitions: (state, action) -> new state
VERSION_TRANSITIONS: dict[tuple[VersionState, Action], VersionState] = {
    (VersionState.DRAFT, Action.EDIT): VersionState.DRAFT,
    (VersionState.DRAFT, Action.SUBMIT): VersionState.IN_REVIEW,
    (VersionState.IN_REVIEW, Action.WITHDRAW): VersionState.DRAFT,
    (VersionState.IN_REVIEW, Action.APPROVE): VersionState.APPROVED,
    (VersionState.IN_REVIEW, Action.REJECT): VersionState.DRAFT,
}


def next_status(status: ProductStatus, action: Action) -> ProductStatus:
    try:
        return PRODUCT_TRANSITIONS[(status, action)]
    except KeyError:
        raise InvalidTransition(action, status.value) from None


def next_state(state: VersionState, action: Action) -> VersionState:
    try:
        return VERSION_TRANSITIONS[(state, action)]
    except KeyError:
        raise InvalidTransition(
            action,
            f"{state.value} revision",
            f"cannot {action.value} a revision that is {state.value.replace('_', ' ')}",
        ) from None


def save_status(
    session: Session, product: Product, expected: ProductStatus, new: ProductStatus, **values: object
) -> None:
    """Compare-and-set the product's status (and other columns) in one UPDATE."""
    result = session.execute(
        sa.update(Product)
        .where(Product.id == product.id, Product.status == expected)
        .values(status=new, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ConcurrentChange(f"product {product.id} changed while we were working on it")
    session.refresh(product)


def save_state(
    session: Session, version_id: uuid.UUID, expected: VersionState, new: VersionState, **values: object
) -> None:
    result = session.execute(
        sa.update(ProductVersion)
        .where(ProductVersion.id == version_id, ProductVersion.state == expected)
        .values(state=new, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ConcurrentChange(f"revision {version_id} changed while we were working on it")
