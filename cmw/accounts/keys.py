"""Users' SSH public keys: checked the same way wherever one is given (an order, the
saved keys of the control panel), and kept for the next order."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.accounts.models import SshKey, User
from cmw.events.service import emit

_SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) ([A-Za-z0-9+/]+={0,2})(?: [^\r\n]*)?$"
)
#: saved keys per user
MAX_KEYS = 20


class KeyError_(ValueError):
    """An SSH key that cannot be taken; the message says why."""


def check_public_key(value: str) -> tuple[str, str]:
    """The key line, checked (an OpenSSH public key whose data names the same type), and
    its SHA256 fingerprint as ``ssh-keygen -l`` prints it."""
    line = value.strip()
    match = _SSH_KEY.match(line)
    problem = "not an OpenSSH public key line such as 'ssh-ed25519 AAAA... you@host'"
    if match is None:
        raise KeyError_(problem)
    try:
        blob = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise KeyError_(problem) from None
    length = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + length].decode("ascii", "replace") != match.group(1):
        raise KeyError_("the key's type and its data do not match")
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return line, fingerprint


def keys_of(session: Session, user_id: uuid.UUID) -> list[SshKey]:
    return list(
        session.scalars(sa.select(SshKey).where(SshKey.user_id == user_id).order_by(SshKey.created_at))
    )


def add_key(session: Session, user: User, name: str, value: str) -> SshKey:
    line, fingerprint = check_public_key(value)
    if not name.strip():
        raise KeyError_("give the key a name, such as 'laptop'")
    existing = keys_of(session, user.id)
    if any(k.fingerprint == fingerprint for k in existing):
        raise KeyError_("this key is saved already")
    if len(existing) >= MAX_KEYS:
        raise KeyError_(f"at most {MAX_KEYS} keys: remove one first")
    key = SshKey(user_id=user.id, name=name.strip()[:100], public_key=line, fingerprint=fingerprint)
    session.add(key)
    session.flush()
    _changed(session, user.id)
    return key


def remove_key(session: Session, key: SshKey) -> None:
    """Forget the key; where it gives vendor support access, it is taken off the instances."""
    session.delete(key)
    session.flush()
    _changed(session, key.user_id)


def _changed(session: Session, user_id: uuid.UUID) -> None:
    # the deployer rewrites the support keys of the user's vendors' instances
    emit(session, "ssh_key.changed", {"user_id": str(user_id)})
