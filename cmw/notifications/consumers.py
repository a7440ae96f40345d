"""Event consumers: ``NotificationConsumer`` turns events into notifications for the
customer's users and asks for one e-mail each; ``EmailConsumer`` renders and sends those
e-mails. Sending is its own consumer, so a failing SMTP server is retried with back-off
(and parked after the last attempt) without touching the order that caused it."""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from email.utils import formataddr, parseaddr

import sqlalchemy as sa
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.orm import Session

from cmw.accounts import service as accounts
from cmw.accounts.models import Role, User
from cmw.catalog import service as catalog
from cmw.crypto import Sealer
from cmw.events.consumer import Event, EventConsumer, as_uuid
from cmw.events.service import emit
from cmw.mail import Mailer
from cmw.marketplaces.models import Marketplace
from cmw.marketplaces.service import address, platform
from cmw.notifications.messages import AUDITOR_MESSAGES, MESSAGES
from cmw.notifications.models import Notification
from cmw.orders import service as orders
from deployer import service as deployments

_templates = Environment(
    loader=PackageLoader("cmw.notifications", "templates"),
    autoescape=select_autoescape(["html"]),
    keep_trailing_newline=True,
)


#: topics the product's vendor is told of as well
VENDOR_TOPICS = frozenset({"deployment.failed"})


class NotificationConsumer(EventConsumer):
    name = "notifications"
    batch_size = 10  # database changes only
    topics = tuple(MESSAGES)

    def handle(self, session: Session, event: Event) -> None:
        wording = MESSAGES.get(event.topic)
        customer_id = as_uuid(event.payload.get("customer_id"))
        if wording is None or customer_id is None:
            return
        product_id = as_uuid(event.payload.get("product_id"))
        if product_id is None and (subscription_id := as_uuid(event.payload.get("subscription_id"))):
            product_id = orders.product_of_subscription(session, subscription_id)
        product = catalog.product_name(session, product_id) if product_id else "your product"
        message = wording(event.payload, product)
        recipients = accounts.members(session, customer_id, Role.CUSTOMER)
        if event.topic in VENDOR_TOPICS and (vendor_id := as_uuid(event.payload.get("vendor_id"))):
            recipients += accounts.members(session, vendor_id, Role.VENDOR)
        # the one-time password of a ready machine goes to whoever ordered it, in the e-mail only
        password_to = None
        if event.topic == "deployment.ready" and (
            subscription_id := as_uuid(event.payload.get("subscription_id"))
        ):
            password_to = orders.placed_by(session, subscription_id)
        notices = [(user, message) for user in recipients]
        if (auditor_wording := AUDITOR_MESSAGES.get(event.topic)) is not None:
            told = {user.id for user in recipients}
            auditors = [user for user in self._auditors(session, event) if user.id not in told]
            notices += [(user, auditor_wording(event.payload, product)) for user in auditors]
        for user, said in notices:
            notification = Notification(
                id=uuid.uuid4(),  # known now: the e-mail's event names it, one flush writes both
                user_id=user.id,
                marketplace_id=event.marketplace_id,
                event_id=event.id,
                kind=event.topic,
                title=said.title,
                body=said.body,
                link=said.link,
            )
            session.add(notification)
            payload = {"notification_id": str(notification.id), "user_id": str(user.id)}
            if password_to == user.id:
                payload["password_of_deployment"] = str(event.payload["deployment_id"])
            emit(session, "notification.email", payload, marketplace_id=event.marketplace_id)
        session.flush()  # one flush for the event's notifications and e-mails: a failure is its own

    @staticmethod
    def _auditors(session: Session, event: Event) -> list[User]:
        """Who decides on the order: the vendor's users, or the reseller marketplace's admins."""
        if event.payload.get("auditor") == "vendor":
            vendor_id = as_uuid(event.payload.get("vendor_id"))
            return accounts.members(session, vendor_id, Role.VENDOR) if vendor_id else []
        return accounts.admins_of(session, event.marketplace_id) if event.marketplace_id else []


class EmailConsumer(EventConsumer):
    name = "email"
    topics = ("notification.email",)
    max_attempts = 8
    retry_delay = 1.0

    def __init__(self, mailer: Mailer, base_url: str, mail_from: str, sealer: Sealer) -> None:
        self.mailer = mailer
        self.base_url = base_url
        self.mail_from = mail_from
        self.sealer = sealer

    def handle(self, session: Session, event: Event) -> None:
        notification_id = as_uuid(event.payload.get("notification_id"))
        notification = session.get(Notification, notification_id) if notification_id else None
        if notification is None:
            return
        user = session.get(User, notification.user_id)
        if user is None or not user.is_active:
            return
        marketplace = (
            session.get(Marketplace, notification.marketplace_id) if notification.marketplace_id else None
        ) or platform(session)
        secret = None
        if deployment_id := as_uuid(event.payload.get("password_of_deployment")):
            # a copy: the order page shows the password once too, then forgets it
            password = deployments.read_password(session, self.sealer, deployment_id)
            if password is not None:
                secret = ("One-time password", password)
        self.mailer.send(self.render(notification, user, marketplace, secret))

    def render(
        self,
        notification: Notification,
        user: User,
        marketplace: Marketplace,
        secret: tuple[str, str] | None = None,
    ) -> EmailMessage:
        home = address(marketplace, self.base_url)
        logo = marketplace.logo
        context = {
            "title": notification.title,
            "body": notification.body,
            "secret": secret,
            "link": notification.link,
            # links and the logo point at the marketplace's own address; the logo through
            # the files route, which does not expire (a presigned S3 URL would)
            "base_url": home,
            "logo": (
                {"url": f"{home}/assets/{logo.thumb.key}", "background": logo.background_colour}
                if logo is not None
                else None
            ),
            "marketplace": marketplace,
        }
        message = EmailMessage()
        _, sender = parseaddr(self.mail_from)
        message["From"] = formataddr((marketplace.email_sender_name or marketplace.name, sender))
        message["To"] = formataddr((user.name, user.email))
        message["Subject"] = notification.title
        # one per notification: a resend (a worker killed between sending and recording
        # it) carries the same id, which mail systems collapse
        message["Message-ID"] = f"<notification-{notification.id}@{sender.partition('@')[2] or 'mercato'}>"
        message.set_content(_templates.get_template("email.txt").render(context))
        message.add_alternative(_templates.get_template("email.html").render(context), subtype="html")
        return message


def in_marketplace(marketplace_id: uuid.UUID) -> sa.ColumnElement[bool]:
    """Notifications shown in a marketplace: its own and the platform-wide ones."""
    return sa.or_(Notification.marketplace_id == marketplace_id, Notification.marketplace_id.is_(None))


def unread_count(session: Session, user_id: uuid.UUID, marketplace_id: uuid.UUID) -> int:
    return (
        session.scalar(
            sa.select(sa.func.count())
            .select_from(Notification)
            .where(
                Notification.user_id == user_id,
                Notification.read_at.is_(None),
                in_marketplace(marketplace_id),
            )
        )
        or 0
    )
