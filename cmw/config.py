"""Settings read once from ``MERCATO_*`` environment variables into a :class:`Config`.

Every setting has an embedded default so ``make run`` works with nothing installed:
SQLite, kombu's filesystem transport, a local asset folder and mail written to files, all
under the data directory. A malformed value raises :class:`ConfigError` naming the
variable and what is accepted, so the process stops at start-up instead of later.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import secrets
from collections.abc import Mapping
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import limits

PREFIX = "MERCATO_"
ENVIRONMENTS = ("development", "production", "test")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class Config:
    """The platform's settings. Build it with :meth:`from_env` or directly in tests."""

    #: development, production or test
    env: str = "development"
    #: folder for the embedded defaults (SQLite file, broker folders, assets, mail)
    data_dir: Path = Path("var")
    #: SQLAlchemy URL; ``postgresql://`` is rewritten to use psycopg 3
    database_url: str = ""
    #: kombu URL; ``filesystem://`` uses folders under ``data_dir``
    broker_url: str = "filesystem://"
    #: ``file:///abs/path`` or ``s3://bucket?endpoint_url=...&region=...``
    storage_url: str = ""
    #: ``smtp://user:password@host:port`` (``?starttls=true``) or ``smtps://``; empty = files
    smtp_url: str = ""
    #: sender address of the platform's e-mails
    mail_from: str = "Mercato <no-reply@mercato.localhost>"
    #: Flask secret key (sessions, CSRF); generated and kept under ``data_dir`` when empty
    secret_key: str = ""
    #: Fernet keys (comma-separated; the first encrypts, all decrypt, for rotation) that
    #: seal credentials and keys at rest; generated and kept under ``data_dir`` when empty
    encryption_key: str = ""
    #: public URL of the web process, used in e-mails and links
    base_url: str = "http://127.0.0.1:8000"
    #: send session cookies over HTTPS only
    session_cookie_secure: bool = False
    #: days a new API token lives unless its owner chooses; 0 = no expiry
    token_ttl_days: int = 90
    #: logging level name
    log_level: str = "INFO"
    #: a bearer token Prometheus must send to read ``/metrics``; empty = no token asked
    metrics_token: str = ""
    #: the worker's own ``/metrics`` port (when it does not share PROMETHEUS_MULTIPROC_DIR
    #: with the web process, as in the containers); 0 = none
    worker_metrics_port: int = 0
    worker_metrics_host: str = "0.0.0.0"  # noqa: S104 - inside its container
    #: outbox relay batch size and idle poll interval in seconds
    outbox_batch_size: int = 100
    outbox_poll_seconds: float = 0.5
    #: the exchange Apache CloudStack's event bus publishes to (its ``exchange`` setting)
    cloudstack_exchange: str = "cloudstack-events"
    #: single sign-on for the platform (and every marketplace without its own provider):
    #: the Keycloak realm's issuer URL (https://sso.example.com/realms/mercato), client id
    #: and secret; empty = local accounts only
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    #: the ``aud`` an API access token must carry; the client id when empty
    oidc_audience: str = ""
    #: realm role -> Mercato role, as ``realm-role=role`` pairs separated by commas
    oidc_roles: str = (
        "mercato-admin=admin,mercato-vendor=vendor,mercato-reseller=reseller,mercato-customer=customer"
    )
    #: the sign-in button's label
    oidc_display_name: str = "Keycloak"
    #: create Keycloak users on sign-up and disable them with their Mercato user
    oidc_provision_users: bool = False
    #: introspect every bearer access token at the realm (seen revocations at once)
    oidc_introspect: bool = False
    #: country of the organisations made for users who arrive through the provider
    oidc_default_country: str = "DE"
    #: the support address tickets' e-mails answer to, as ``<local>+t-<token>@<domain>``
    #: (route that domain's mail to ``POST /api/v1/support/inbound-email``); empty =
    #: ``support@`` the domain of ``mail_from``
    support_address: str = ""
    #: the bearer token the mail gateway sends to ``/api/v1/support/inbound-email``;
    #: empty = that endpoint is off (``flask mercato support inbound-email`` still works)
    inbound_email_token: str = ""
    #: a HubSpot private app's access token (scopes: crm.objects.companies, .contacts and
    #: .deals, read and write); empty = no CRM sync
    hubspot_token: str = ""
    #: HubSpot's API, or a stand-in speaking it
    hubspot_base_url: str = "https://api.hubapi.com"
    #: how often the worker reads running instances' statistics and logs, in seconds
    monitor_interval_seconds: int = 60
    #: days instance statistics and collected log lines are kept
    stats_retention_days: int = 14
    log_retention_days: int = 14
    #: let webhooks, the ticket forwarder and customers' own cloud accounts call loopback
    #: and private addresses (on-premises receivers; the test suite's loopback servers)
    allow_private_targets: bool = False
    #: let anything the platform calls (cloud endpoints included) reach link-local
    #: addresses and the clouds' metadata services (169.254.169.254, ...)
    allow_link_local_targets: bool = False
    #: rate limits (``limits`` notation: ``10/minute``, ``100 per hour``; empty = none):
    #: sign-in attempts per client address and per e-mail, new API tokens per user, usage
    #: batches per caller; and where they are counted (``memory://`` for one process,
    #: ``redis://host:6379`` shared by several)
    rate_limit_sign_in: str = "10/minute"
    rate_limit_tokens: str = "20/hour"
    rate_limit_usage: str = "6000/minute"
    rate_limit_storage: str = "memory://"
    #: a PEM file of the CA certificates trusted for those outbound HTTPS calls instead of
    #: the default set (a private CA); empty = the default set
    outbound_ca_bundle: str = ""

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read every ``MERCATO_*`` variable, apply defaults, validate, return a Config."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(cls)}
        for name, raw in env.items():
            if not name.startswith(PREFIX):
                continue
            key = name[len(PREFIX) :].lower()
            if key not in known:
                # Settings read by other components (MERCATO_TEST_*) are not ours to reject.
                continue
            values[key] = _coerce(cls, key, raw)
        return cls(**values).resolved()

    def resolved(self) -> Config:
        """Fill derived defaults and validate every field; returns a new Config."""
        if self.env not in ENVIRONMENTS:
            raise ConfigError(f"{PREFIX}ENV: {self.env!r} is not one of {', '.join(ENVIRONMENTS)}")
        data_dir = Path(self.data_dir).expanduser().absolute()
        database_url = _database_url(self.database_url or f"sqlite:///{data_dir / 'mercato.db'}")
        broker_url = _broker_url(self.broker_url)
        storage_url = _storage_url(self.storage_url or (data_dir / "assets").as_uri())
        smtp_url = _smtp_url(self.smtp_url)
        if self.env == "production" and not self.secret_key:
            raise ConfigError(f"{PREFIX}SECRET_KEY: required when {PREFIX}ENV=production")
        if self.env == "production" and not self.encryption_key:
            raise ConfigError(f"{PREFIX}ENCRYPTION_KEY: required when {PREFIX}ENV=production")
        for part in filter(None, (k.strip() for k in self.encryption_key.split(","))):
            if not _is_fernet_key(part):
                raise ConfigError(
                    f"{PREFIX}ENCRYPTION_KEY: not a Fernet key (32 url-safe base64-encoded bytes; "
                    "make one with `python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'`)"
                )
        if self.secret_key and len(self.secret_key) < 16:
            raise ConfigError(f"{PREFIX}SECRET_KEY: use at least 16 characters")
        base = urlsplit(self.base_url)
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ConfigError(f"{PREFIX}BASE_URL: {self.base_url!r} is not an http(s) URL")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"{PREFIX}LOG_LEVEL: {self.log_level!r} is not a logging level")
        if self.token_ttl_days < 0:
            raise ConfigError(f"{PREFIX}TOKEN_TTL_DAYS: must be 0 (no expiry) or more")
        if bool(self.oidc_issuer) != bool(self.oidc_client_id):
            raise ConfigError(f"{PREFIX}OIDC_ISSUER and {PREFIX}OIDC_CLIENT_ID: set both or neither")
        if self.oidc_issuer and urlsplit(self.oidc_issuer).scheme not in ("http", "https"):
            raise ConfigError(f"{PREFIX}OIDC_ISSUER: {self.oidc_issuer!r} is not an http(s) URL")
        if self.outbox_batch_size < 1 or self.outbox_poll_seconds <= 0:
            raise ConfigError(f"{PREFIX}OUTBOX_BATCH_SIZE and _POLL_SECONDS must be positive")
        for name in ("sign_in", "tokens", "usage"):
            value = getattr(self, f"rate_limit_{name}")
            try:
                if value.strip():
                    limits.parse(value)
            except ValueError:
                raise ConfigError(
                    f"{PREFIX}RATE_LIMIT_{name.upper()}: {value!r} is not a rate such as 10/minute"
                ) from None
        if self.outbound_ca_bundle and not Path(self.outbound_ca_bundle).is_file():
            raise ConfigError(f"{PREFIX}OUTBOUND_CA_BUNDLE: {self.outbound_ca_bundle!r} is not a file")
        return dataclasses.replace(
            self,
            data_dir=data_dir,
            database_url=database_url,
            broker_url=broker_url,
            storage_url=storage_url,
            smtp_url=smtp_url,
            base_url=self.base_url.rstrip("/"),
            support_address=self.support_address
            or "support@" + (parseaddr(self.mail_from)[1].partition("@")[2] or "mercato.localhost"),
            log_level=self.log_level.upper(),
        )

    # ------------------------------------------------------------- derived
    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def broker_transport_options(self) -> dict[str, Any]:
        """kombu transport options: folders for the filesystem transport, confirms for AMQP."""
        if self.broker_url.startswith("filesystem"):
            root = self.data_dir / "broker"
            return {
                "data_folder_in": str(root / "queues"),
                "data_folder_out": str(root / "queues"),
                "control_folder": str(root / "control"),
                "store_processed": False,
            }
        return {"confirm_publish": True}

    def ensure_data_dirs(self) -> None:
        """Create the folders the embedded defaults write to."""
        for sub in ("", "mail", "assets", "broker/queues", "broker/control"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)

    def effective_secret_key(self) -> str:
        """The configured key, or one generated once and kept under the data directory."""
        if self.secret_key:
            return self.secret_key
        self.ensure_data_dirs()
        path = self.data_dir / "secret_key"
        _write_once(path, secrets.token_urlsafe(48))
        return path.read_text().strip()

    def effective_encryption_keys(self) -> list[str]:
        """The configured Fernet keys, or one generated once and kept under the data directory."""
        keys = [k.strip() for k in self.encryption_key.split(",") if k.strip()]
        if keys:
            return keys
        self.ensure_data_dirs()
        path = self.data_dir / "encryption_key"
        _write_once(path, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        return [path.read_text().strip()]


def _write_once(path: Path, value: str) -> None:
    """Create ``path`` (mode 600) holding ``value`` unless it exists; safe when several
    processes start at once: one writes (to a temporary file, renamed into place), the
    others read what it wrote."""
    if path.exists():
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    try:
        os.link(temporary, path)  # fails if another process got there first: theirs stays
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


def _is_fernet_key(value: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(value.encode())) == 32
    except (ValueError, binascii.Error):
        return False


# ------------------------------------------------------------------- parsing
def _coerce(cls: type[Config], key: str, raw: str) -> Any:
    name = PREFIX + key.upper()
    field_type = {f.name: f.type for f in dataclasses.fields(cls)}[key]
    if field_type == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: {raw!r} is not a boolean (use true or false)")
    if field_type == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}: {raw!r} is not a whole number") from None
    if field_type == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if field_type == "Path":
        return Path(raw)
    return raw


def _database_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return "postgresql+psycopg" + url[len(scheme) :]
    if scheme == "sqlite":
        return url
    raise ConfigError(
        f"{PREFIX}DATABASE_URL: unsupported scheme {scheme!r}; "
        "use postgresql://user@host:5432/name or sqlite:///path/to/file.db"
    )


def _broker_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme in ("amqp", "amqps", "pyamqp", "filesystem"):
        return url
    raise ConfigError(
        f"{PREFIX}BROKER_URL: unsupported scheme {scheme!r}; "
        "use amqp://user:password@host:5672/vhost or filesystem://"
    )


def _storage_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.path:
        return url
    if parts.scheme == "s3" and parts.netloc:
        allowed = {"endpoint_url", "region", "prefix"}
        unknown = set(parse_qs(parts.query)) - allowed
        if unknown:
            raise ConfigError(
                f"{PREFIX}STORAGE_URL: unknown option(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        return url
    raise ConfigError(
        f"{PREFIX}STORAGE_URL: {url!r} is not file:///absolute/folder "
        "or s3://bucket?endpoint_url=...&region=..."
    )


def _smtp_url(url: str) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError(f"{PREFIX}SMTP_URL: {url!r} is not smtp://host:port or smtps://host:port")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"{PREFIX}SMTP_URL: {url!r} has a malformed port") from None
    return url
