"""Sending e-mail: SMTP in production, ``.eml`` files under the data directory by default.

``mailer_for(config)`` picks the backend from ``MERCATO_SMTP_URL``. Messages are built by
the caller (``email.message.EmailMessage``); a mailer only delivers them. Delivery errors
raise :class:`MailError` so the caller (a notification consumer) can retry.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import tempfile
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from cmw.config import Config


class MailError(RuntimeError):
    """The message could not be handed over; nothing was delivered."""


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> str:
        """Deliver ``message``; returns its Message-ID."""
        ...


def _complete(message: EmailMessage, default_from: str) -> str:
    if "From" not in message:
        message["From"] = default_from
    if "Date" not in message:
        message["Date"] = formatdate(localtime=False)
    if "Message-ID" not in message:
        message["Message-ID"] = make_msgid(domain="mercato")
    if not message.get_all("To") and not message.get_all("Cc") and not message.get_all("Bcc"):
        raise MailError("the message has no recipient")
    return str(message["Message-ID"])


class FileMailer:
    """Writes each message to ``folder`` as an ``.eml`` file (the embedded default)."""

    def __init__(self, folder: Path, default_from: str) -> None:
        self.folder = folder
        self.default_from = default_from

    def send(self, message: EmailMessage) -> str:
        message_id = _complete(message, self.default_from)
        self.folder.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a message.
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(message.as_bytes())
        os.replace(tmp, self.folder / f"{uuid.uuid4().hex}.eml")
        return message_id


class SmtpMailer:
    """Delivers through an SMTP server: ``smtp://`` (``?starttls=true``) or ``smtps://``."""

    def __init__(self, url: str, default_from: str, timeout: float = 15.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "localhost"
        self.implicit_tls = parts.scheme == "smtps"
        self.port = parts.port or (465 if self.implicit_tls else 25)
        options = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
        self.starttls = options.get("starttls") in ("1", "true", "yes")
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.default_from = default_from
        self.timeout = timeout

    def send(self, message: EmailMessage) -> str:
        message_id = _complete(message, self.default_from)
        context = ssl.create_default_context()
        try:
            client: smtplib.SMTP
            if self.implicit_tls:
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with client:
                if self.starttls:
                    client.starttls(context=context)
                if self.username:
                    client.login(self.username, self.password or "")
                client.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(f"SMTP delivery to {self.host}:{self.port} failed: {exc}") from exc
        return message_id


def mailer_for(config: Config) -> Mailer:
    if config.smtp_url:
        return SmtpMailer(config.smtp_url, config.mail_from)
    return FileMailer(config.data_dir / "mail", config.mail_from)
