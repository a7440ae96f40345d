"""Mercato's application factory and the ``flask mercato`` commands.

``create_app(config=None)`` reads ``MERCATO_*`` settings from the environment when no
config is given; tests pass a :class:`cmw.config.Config` (or a mapping of its fields).
Run the web process with ``flask --app app run`` or ``gunicorn 'app:create_app()'``.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask

from cassetto import storage_from_url
from cmw import cli, outbound, ratelimit
from cmw.accounts.auth import authorize_early, load_identity, record_token_use
from cmw.accounts.consumers import KeycloakUsers
from cmw.api import spec
from cmw.api.guards import refuse_nul, security_headers
from cmw.assets.api import bp as assets_bp
from cmw.audit import service as audit
from cmw.billing.documents import FailedDeployments, InvoiceDocuments
from cmw.catalog import reviews
from cmw.config import Config, ConfigError
from cmw.crm.consumer import CrmSync
from cmw.crm.service import HubSpot
from cmw.crypto import Sealer
from cmw.db import check_liveness_on_checkout, configure_sqlite
from cmw.extensions import close_session, csrf, db, migrate
from cmw.health import bp as health_bp
from cmw.mail import mailer_for
from cmw.marketplaces.prefix import MarketplacePrefix
from cmw.monitoring.api import bp as monitoring_bp
from cmw.monitoring.requests import record_request, start_timing
from cmw.notifications.consumers import EmailConsumer, NotificationConsumer
from cmw.orders import service as orders_service
from cmw.support.consumers import TicketForwarder, TicketMail
from cmw.usage.cloud import CloudStackEvents
from cmw.usage.consumer import UsageRecords
from cmw.webhooks.consumer import VendorWebhooks
from cmw.webhooks.service import Sender
from deployer.consumer import DeploymentRequests

# the control panel's modules add their routes to the pages blueprint
from marketplace import account as _account_pages  # noqa: F401
from marketplace import admin as _admin_pages  # noqa: F401
from marketplace import approvals as _approval_pages  # noqa: F401
from marketplace import branding as _branding_pages  # noqa: F401
from marketplace import clouds as _cloud_pages  # noqa: F401
from marketplace import instances as _instance_pages  # noqa: F401
from marketplace import sso as _sso_pages  # noqa: F401
from marketplace import support as _support_pages  # noqa: F401
from marketplace import vendor as _vendor_pages  # noqa: F401
from marketplace import webhooks as _webhook_pages  # noqa: F401
from marketplace.views import bp as pages_bp

ROOT = Path(__file__).resolve().parent


def create_app(config: Config | Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app: settings, extensions, blueprints, error handlers, commands."""
    if config is None:
        try:
            config = Config.from_env()
        except ConfigError as exc:
            # A start-up error for the operator: one line naming the setting, no traceback.
            print(f"mercato: configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    elif isinstance(config, Config):
        config = config.resolved()  # idempotent: fills defaults a hand-built Config left empty
    else:
        config = Config(**dict(config)).resolved()
    app = Flask(
        "mercato",
        root_path=str(ROOT),
        template_folder=str(ROOT / "marketplace" / "templates"),
        static_folder=str(ROOT / "marketplace" / "static"),
    )
    configure(app, config)
    app.wsgi_app = MarketplacePrefix(app.wsgi_app)  # type: ignore[method-assign]
    register_extensions(app)
    register_blueprints(app)
    register_commands(app)
    register_rules()
    # What exists now (modules, the app, the schema) lives as long as the process: keep
    # it out of the cyclic collector's scans, which otherwise walk it again and again
    # while a request allocates (a fifth of the CPU of a 5,000-record usage batch).
    gc.collect()
    gc.freeze()
    return app


def configure(app: Flask, config: Config) -> None:
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config.ensure_data_dirs()
    outbound.configure(
        allow_private=config.allow_private_targets, allow_link_local=config.allow_link_local_targets
    )
    app.config.update(
        MERCATO=config,
        SECRET_KEY=config.effective_secret_key(),
        SQLALCHEMY_DATABASE_URI=config.database_url,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.session_cookie_secure,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(days=14),
        # CSRF is enforced in load_identity, where we know whether a session is in play.
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_HEADERS=["X-CSRF-Token", "X-CSRFToken"],
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
        JSON_SORT_KEYS=False,
        TESTING=config.env == "test",
    )


def register_extensions(app: Flask) -> None:
    config: Config = app.config["MERCATO"]
    # Built once per process: the file or S3 asset store named by MERCATO_STORAGE_URL.
    app.extensions["mercato.storage"] = storage_from_url(config.storage_url)
    ratelimit.init_app(
        app,
        config.rate_limit_storage,
        sign_in=config.rate_limit_sign_in,
        tokens=config.rate_limit_tokens,
        usage=config.rate_limit_usage,
    )
    # Seals cloud credentials, platform keys and one-time passwords at rest.
    sealer = app.extensions["mercato.sealer"] = Sealer(config.effective_encryption_keys())
    mailer = mailer_for(config)
    # What `flask mercato worker` consumes.
    app.extensions["mercato.consumers"] = [
        NotificationConsumer(),
        EmailConsumer(mailer, config.base_url, config.mail_from, sealer),
        UsageRecords(),
        CloudStackEvents(config.cloudstack_exchange),
        DeploymentRequests(),
        InvoiceDocuments(app.extensions["mercato.storage"]),
        FailedDeployments(),
        KeycloakUsers(config, sealer),
        VendorWebhooks(),
        *(
            [CrmSync(HubSpot(config.hubspot_base_url, config.hubspot_token, config.outbound_ca_bundle))]
            if config.hubspot_token
            else []
        ),
        TicketMail(mailer, config.base_url, config.mail_from, config.support_address),
        TicketForwarder(
            mailer,
            config.base_url,
            config.mail_from,
            config.support_address,
            sealer,
            Sender(allow_private=config.allow_private_targets, ca_bundle=config.outbound_ca_bundle),
        ),
    ]
    db.init_app(app)
    app.teardown_appcontext(close_session)  # runs before Flask-SQLAlchemy's (reverse order)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"), compare_type=True)
    csrf.init_app(app)
    with app.app_context():
        if app.config["MERCATO"].is_sqlite:
            configure_sqlite(db.engine)
        else:
            check_liveness_on_checkout(db.engine)
    # Models are imported so metadata is complete for Alembic and create_all.
    import_models()


def import_models() -> sa.MetaData:
    from cmw.accounts import models as _accounts  # noqa: F401
    from cmw.assets import models as _assets  # noqa: F401
    from cmw.audit import models as _audit  # noqa: F401
    from cmw.billing import models as _billing  # noqa: F401
    from cmw.catalog import cache as _catalog_cache  # noqa: F401  (its session events)
    from cmw.catalog import models as _catalog  # noqa: F401
    from cmw.crm import models as _crm  # noqa: F401
    from cmw.events import models as _events  # noqa: F401
    from cmw.marketplaces import models as _marketplaces  # noqa: F401
    from cmw.notifications import models as _notifications  # noqa: F401
    from cmw.orders import models as _orders  # noqa: F401
    from cmw.support import models as _support  # noqa: F401
    from cmw.usage import models as _usage  # noqa: F401
    from cmw.webhooks import models as _webhooks  # noqa: F401
    from deployer import models as _deployer  # noqa: F401
    from deployer import telemetry as _telemetry  # noqa: F401

    return db.metadata


def register_blueprints(app: Flask) -> None:
    # timed from first to last: the identity and token bookkeeping are part of the answer
    app.before_request(start_timing)
    app.before_request(refuse_nul)
    app.before_request(load_identity)
    app.before_request(authorize_early)
    app.before_request(ratelimit.check)
    app.after_request(record_token_use)
    app.after_request(record_request)
    app.after_request(audit.record_request)
    app.after_request(security_headers)
    app.register_blueprint(health_bp)
    app.register_blueprint(monitoring_bp)
    app.register_blueprint(assets_bp)
    spec.register(app)
    app.register_blueprint(pages_bp)


def register_rules() -> None:
    # Reviews are open to organisations that subscribe or subscribed (orders knows who).
    reviews.set_eligibility(orders_service.has_subscribed)


def register_commands(app: Flask) -> None:
    app.cli.add_command(cli.mercato)
