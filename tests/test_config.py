"""Settings: embedded defaults, environment parsing, and a clear error for bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmw.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_embedded_under_the_data_dir(tmp_path: Path) -> None:
    config = Config.from_env({"MERCATO_DATA_DIR": str(tmp_path)})
    assert config.database_url == f"sqlite:///{tmp_path / 'mercato.db'}"
    assert config.broker_url == "filesystem://"
    assert config.storage_url == (tmp_path / "assets").as_uri()
    assert config.smtp_url == ""
    options = config.broker_transport_options
    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker" / "queues")
    assert options["control_folder"] == str(tmp_path / "broker" / "control")


def test_environment_overrides_and_postgres_uses_psycopg(tmp_path: Path) -> None:
    config = Config.from_env(
        {
            "MERCATO_DATA_DIR": str(tmp_path),
            "MERCATO_DATABASE_URL": "postgresql://app:pw@db:5432/mercato",
            "MERCATO_BROKER_URL": "amqp://guest:guest@mq:5672//",
            "MERCATO_STORAGE_URL": "s3://assets?endpoint_url=http://minio:9000&region=eu-west-1",
            "MERCATO_SMTP_URL": "smtp://mail:1025",
            "MERCATO_SESSION_COOKIE_SECURE": "true",
            "MERCATO_TOKEN_TTL_DAYS": "30",
            "MERCATO_TEST_DATABASE_URL": "ignored: not a setting of the app",
        }
    )
    assert config.database_url == "postgresql+psycopg://app:pw@db:5432/mercato"
    assert config.broker_transport_options == {"confirm_publish": True}
    assert config.session_cookie_secure is True
    assert config.token_ttl_days == 30


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MERCATO_DATABASE_URL", "mysql://x/y", "unsupported scheme 'mysql'"),
        ("MERCATO_BROKER_URL", "memory://", "unsupported scheme 'memory'"),
        ("MERCATO_STORAGE_URL", "ftp://x", "is not file:///absolute/folder"),
        ("MERCATO_STORAGE_URL", "s3://bucket?colour=red", "unknown option(s) colour"),
        ("MERCATO_SMTP_URL", "smtp://host:notaport", "malformed port"),
        ("MERCATO_SESSION_COOKIE_SECURE", "perhaps", "is not a boolean"),
        ("MERCATO_TOKEN_TTL_DAYS", "ninety", "is not a whole number"),
        ("MERCATO_TOKEN_TTL_DAYS", "-1", "must be 0"),
        ("MERCATO_ENV", "staging", "is not one of"),
        ("MERCATO_BASE_URL", "example.com", "is not an http(s) URL"),
        ("MERCATO_SECRET_KEY", "short", "at least 16 characters"),
        ("MERCATO_RATE_LIMIT_SIGN_IN", "often", "is not a rate such as 10/minute"),
    ],
)
def test_malformed_setting_names_the_variable(tmp_path: Path, name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"MERCATO_DATA_DIR": str(tmp_path), name: value})
    assert str(caught.value).startswith(name + ":")
    assert message in str(caught.value)


def test_production_requires_a_secret_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MERCATO_SECRET_KEY: required"):
        Config.from_env({"MERCATO_DATA_DIR": str(tmp_path), "MERCATO_ENV": "production"})


def test_a_bad_setting_stops_the_process_at_start_up_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERCATO_")}
    env.update({"MERCATO_DATA_DIR": str(tmp_path), "MERCATO_BROKER_URL": "redis://localhost"})
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "mercato", "bootstrap"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "mercato: configuration error: MERCATO_BROKER_URL: unsupported scheme 'redis'" in result.stderr
    assert "Traceback" not in result.stderr


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    config = Config.from_env({"MERCATO_DATA_DIR": str(tmp_path)})
    first = config.effective_secret_key()
    assert len(first) >= 32
    assert config.effective_secret_key() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
