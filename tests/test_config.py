"""Configuration is read once and refuses what it does not understand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.config import ConfigError, load_settings


def test_defaults_match_the_contract() -> None:
    s = load_settings({})
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.public_url == "http://127.0.0.1:8000"
    assert s.allowed_origins == frozenset({"http://127.0.0.1:8000"})
    assert s.database_url.startswith("sqlite://") and "data" in s.database_url
    assert s.redis_url is None and s.default_region == "US"
    assert s.portal_link_ttl_seconds == 604800 and s.max_upload_bytes == 26214400
    assert s.signup_open is True


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"SMTP_URL": "smtpx://x"}, "SMTP_URL"),
        ({"SIGNUP_OPEN": "maybe"}, "SIGNUP_OPEN"),
        ({"PUBLIC_URL": "ftp://x"}, "PUBLIC_URL"),
        ({"DEFAULT_REGION": "ZZ"}, "DEFAULT_REGION"),
        ({"BLOOMTEXT_SESION_IDLE_SECONDS": "5"}, "unknown setting"),
        ({"BLOOMTEXT_ENV": "production"}, "SECRET_KEY"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
    ],
)
def test_malformed_or_unknown_values_are_refused(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(env)


def test_production_mode_closes_signup_by_default() -> None:
    s = load_settings({"BLOOMTEXT_ENV": "production", "SECRET_KEY": "x" * 32,
                       "PUBLIC_URL": "https://chat.example.org",
                       "ALLOWED_ORIGINS": "https://chat.example.org,https://app.example.org"})
    assert s.production and not s.signup_open
    assert s.allowed_origins == {"https://chat.example.org", "https://app.example.org"}


def test_the_cli_stops_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve"], env={"PORT": "not-a-port", "PATH": ""},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "PORT" in result.stderr
