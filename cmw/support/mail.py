"""Tickets by e-mail: the e-mails a thread sends, and replies coming back into it.

Every ticket e-mail has ``Reply-To: <support local part>+t-<ticket's reply token>@<domain>``,
a ``Message-ID`` of its own and ``References``/``In-Reply-To`` naming the thread
(``<ticket.<id>@<domain>>``), and a line telling people to write above it. A reply is
threaded by the token in its recipient addresses, else by the thread it references, else
by the ``[T-XXXXXXXX]`` reference in its subject; it is accepted only from someone who
takes part in the ticket (or from the external ticket system it is forwarded to). Quoted
text below the line (or below "On ... wrote:") is cut; attachments go through the same
checks as uploads, and a refused one is named in the message instead of being dropped
silently. The e-mail's Message-ID makes a redelivered reply count once.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formataddr, getaddresses, make_msgid, parseaddr
from html.parser import HTMLParser

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cassetto import Storage
from cassetto.files import CheckedFile, RefusedFile, check_attachment
from cmw.accounts import service as accounts
from cmw.marketplaces.models import Marketplace
from cmw.support import service
from cmw.support.models import AuthorRole, Ticket, TicketMessage

REPLY_LINE = "-- Reply above this line to answer in the ticket --"
_TOKEN = re.compile(r"\+t-([A-Za-z0-9_-]{16,40})@", re.IGNORECASE)
_THREAD = re.compile(r"<ticket\.([0-9a-f-]{36})@", re.IGNORECASE)
_REF = re.compile(r"\[(T-[2-9A-HJ-NP-Z]{8})\]")
_WROTE = re.compile(r"^\s*(On .{5,200}wrote:|Am .{5,200}schrieb .{1,100}:|Il .{5,200}ha scritto:)\s*$")


class InboundError(ValueError):
    """The e-mail cannot be added to a ticket; the reason says why."""


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = parseaddr(address)[1].partition("@")
    return local or "support", domain or "mercato.localhost"


def reply_address(support_address: str, ticket: Ticket) -> str:
    local, domain = split_address(support_address)
    return f"{local}+t-{ticket.reply_token}@{domain}"


def thread_id(ticket: Ticket, support_address: str) -> str:
    return f"<ticket.{ticket.id}@{split_address(support_address)[1]}>"


def compose(
    ticket: Ticket,
    message: TicketMessage,
    *,
    to: tuple[str, str],
    marketplace: Marketplace,
    mail_from: str,
    support_address: str,
    link: str,
) -> EmailMessage:
    """The e-mail telling ``to`` (name, address) of ``message``."""
    opening = message.id == ticket.messages[0].id if ticket.messages else True
    email = EmailMessage()
    _, sender = parseaddr(mail_from)
    email["From"] = formataddr((f"{marketplace.email_sender_name or marketplace.name} Support", sender))
    email["To"] = formataddr(to)
    email["Reply-To"] = reply_address(support_address, ticket)
    email["Subject"] = f"{'' if opening else 'Re: '}[{ticket.ref}] {ticket.subject}"
    email["Message-ID"] = make_msgid("ticket-message", split_address(support_address)[1])
    email["In-Reply-To"] = email["References"] = thread_id(ticket, support_address)
    email["Auto-Submitted"] = "auto-generated"
    files = "".join(f"\n  - {a.filename} ({a.size:,} bytes)" for a in message.attachments)
    author = f"{message.author_name or message.author_email} ({message.author_role})"
    email.set_content(
        f"{REPLY_LINE}\n\n"
        f'{author} wrote in ticket {ticket.ref}, "{ticket.subject}":\n\n'
        f"{message.body}\n"
        + (f"\nAttachments (open the ticket to download them):{files}\n" if files else "")
        + f"\nThe ticket: {link}\n"
    )
    return email


# ------------------------------------------------------------------ inbound
@dataclasses.dataclass
class Received:
    ticket: Ticket
    message: TicketMessage | None
    duplicate: bool = False
    refused: list[str] = dataclasses.field(default_factory=list)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "li", "tr", "blockquote"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _html_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return "".join(parser.parts)


def new_part(text: str) -> str:
    """What the writer wrote, without the quoted thread below it."""
    kept: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if REPLY_LINE[3:-3].strip().lower() in line.lower() or _WROTE.match(line):
            break
        if line.startswith(">"):
            continue
        kept.append(line)
    return "\n".join(kept).strip()


def _find_ticket(session: Session, email: EmailMessage) -> Ticket | None:
    addresses = " ".join(
        f"<{address}>"
        for _, address in getaddresses(
            [
                str(v)
                for h in ("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To")
                for v in email.get_all(h, [])
            ]
        )
    )
    if token := _TOKEN.search(addresses):
        found = session.scalar(sa.select(Ticket).where(Ticket.reply_token == token.group(1)))
        if found is not None:
            return found
    for header in ("In-Reply-To", "References"):
        for thread in _THREAD.finditer(str(email.get(header, ""))):
            found = session.get(Ticket, uuid.UUID(thread.group(1)))
            if found is not None:
                return found
    if ref := _REF.search(str(email.get("Subject", ""))):
        return session.scalar(sa.select(Ticket).where(Ticket.ref == ref.group(1)))
    return None


def _author(session: Session, ticket: Ticket, sender: str, display: str) -> service.Author | None:
    user = accounts.find_user(session, sender)
    marketplace = session.get(Marketplace, ticket.marketplace_id)
    if user is not None and user.is_active and marketplace is not None:
        role = service.participant(ticket, accounts.memberships_in(session, user, marketplace))
        if role is not None:
            return service.Author.of(user, role)
    forwarding = service.forwarding(session, ticket.marketplace_id)
    if forwarding and forwarding.forward_email and forwarding.forward_email.lower() == sender.lower():
        return service.Author(None, sender, display or "Support desk", AuthorRole.EXTERNAL)
    return None


def receive(
    session: Session, storage: Storage, raw: bytes, *, max_attachment: int = 10 * 1024 * 1024
) -> Received:
    """Add an e-mail reply to its ticket; :class:`InboundError` when it belongs nowhere."""
    email = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(email, EmailMessage)
    message_id = str(email.get("Message-ID", "")).strip()[:300] or None
    ticket = _find_ticket(session, email)
    if ticket is None:
        raise InboundError(
            "the e-mail names no ticket: no reply address, thread or [T-...] reference matched"
        )
    if message_id is not None:
        seen = session.scalar(sa.select(TicketMessage).where(TicketMessage.email_message_id == message_id))
        if seen is not None:
            return Received(ticket, seen, duplicate=True)
    display, sender = parseaddr(str(email.get("From", "")))
    if str(email.get("Auto-Submitted", "no")).lower() not in ("", "no"):
        raise InboundError("automatic e-mails (out of office, bounces) are not added to tickets")
    author = _author(session, ticket, sender, display)
    if author is None:
        raise InboundError(f"{sender or 'the sender'} does not take part in ticket {ticket.ref}")
    body_part = email.get_body(preferencelist=("plain", "html"))
    text = ""
    if body_part is not None:
        content = body_part.get_content()  # type: ignore[attr-defined]
        text = _html_text(content) if body_part.get_content_type() == "text/html" else content
    files: list[CheckedFile] = []
    refused: list[str] = []
    for part in email.iter_attachments():
        name = part.get_filename()
        data = part.get_payload(decode=True) or b""
        try:
            files.append(
                check_attachment(name, data if isinstance(data, bytes) else b"", max_bytes=max_attachment)
            )
        except RefusedFile as exc:
            refused.append(exc.reason)
    if len(files) > service.MAX_ATTACHMENTS:
        refused.extend(f"{f.filename}: more than {service.MAX_ATTACHMENTS} attachments" for f in files[5:])
        files = files[: service.MAX_ATTACHMENTS]
    body = new_part(text)
    if refused:
        body += "\n\n[Attachments not accepted: " + "; ".join(refused) + "]"
    if not body.strip():
        raise InboundError("the e-mail has no text above the quoted thread")
    added = service.add_message(
        session, storage, ticket, author, body, files=files, via="email", email_message_id=message_id
    )
    return Received(ticket, added, refused=refused)
