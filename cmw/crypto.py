"""Sealing secrets at rest: cloud credentials, platform SSH keys, one-time passwords.

``Sealer`` wraps cryptography's ``MultiFernet`` (AES-128-CBC with HMAC-SHA256, with a
timestamp): the first key seals, every key opens, so keys can be rotated by putting the
new one first in ``MERCATO_ENCRYPTION_KEY``. Sealed values are ASCII tokens that
reveal nothing, and are never logged or returned by the API.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app


class SealError(ValueError):
    """A sealed value could not be opened: wrong key, or tampered with."""


class Sealer:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SealError(
                "cannot open a sealed value: the encryption key differs or it was altered"
            ) from None

    def seal_json(self, value: Any) -> str:
        return self.seal(json.dumps(value, sort_keys=True))

    def open_json(self, token: str) -> Any:
        return json.loads(self.open(token))

    def rotate(self, token: str) -> str:
        """The value sealed again with the first key."""
        return self._fernet.rotate(token.encode()).decode()


def sealer() -> Sealer:
    """The app's sealer (``create_app`` builds it from the settings)."""
    found: Sealer = current_app.extensions["mercato.sealer"]
    return found
