"""Billing's refusals."""

from __future__ import annotations


class BillingError(ValueError):
    """A billing request that cannot be done; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
