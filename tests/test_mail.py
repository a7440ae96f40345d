"""E-mail delivery: files by default, SMTP against a real server on loopback."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from cmw.config import Config
from cmw.mail import FileMailer, MailError, SmtpMailer, mailer_for
from tests.servers import SmtpServer


def _message(subject: str = "Your instance is ready") -> EmailMessage:
    message = EmailMessage()
    message["To"] = "customer@example.test"
    message["Subject"] = subject
    message.set_content("URL: https://203.0.113.10/\nLogin: admin")
    return message


def test_the_embedded_default_writes_eml_files(tmp_path: Path) -> None:
    mailer = mailer_for(Config(data_dir=tmp_path).resolved())
    assert isinstance(mailer, FileMailer)
    message_id = mailer.send(_message())
    files = list((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 1
    parsed = message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert parsed["Subject"] == "Your instance is ready"
    assert parsed["Message-ID"] == message_id
    assert parsed["From"] == "Mercato <no-reply@mercato.localhost>"
    assert "Login: admin" in parsed.get_body().get_content()  # type: ignore[union-attr]


def test_smtp_delivers_to_the_server(smtp_server: SmtpServer, tmp_path: Path) -> None:
    smtp_server.clear()
    config = Config(data_dir=tmp_path, smtp_url=f"smtp://{smtp_server.host}:{smtp_server.port}").resolved()
    mailer = mailer_for(config)
    assert isinstance(mailer, SmtpMailer)
    mailer.send(_message("Welcome"))
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ["customer@example.test"]
    assert received.message["Subject"] == "Welcome"


def test_smtp_down_raises_a_mail_error(smtp_server: SmtpServer) -> None:
    mailer = SmtpMailer(f"smtp://{smtp_server.host}:{smtp_server.port}", "x@example.test", timeout=3)
    smtp_server.stop()
    try:
        with pytest.raises(MailError, match="SMTP delivery"):
            mailer.send(_message())
    finally:
        smtp_server.start()
    mailer.send(_message("after the outage"))
    assert smtp_server.wait_for(1)[-1].message["Subject"] == "after the outage"


def test_a_message_without_recipient_is_refused(tmp_path: Path) -> None:
    message = EmailMessage()
    message["Subject"] = "nobody"
    with pytest.raises(MailError, match="no recipient"):
        FileMailer(tmp_path, "x@example.test").send(message)
