"""Settings: read from the environment once, validated, frozen.

Nothing reads `os.environ` after start-up; everything receives a `Settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import phonenumbers

DEV_SECRET_KEY = "dev-insecure-key-do-not-use-in-production"

# Every variable the server understands. A BLOOMTEXT_* or contract variable that is
# not listed here is a typo, and start-up refuses it rather than ignoring it.
KNOWN_VARIABLES = frozenset(
    {
        "HOST",
        "PORT",
        "DATABASE_URL",
        "REDIS_URL",
        "PUBLIC_URL",
        "SECRET_KEY",
        "SMTP_URL",
        "MAIL_FROM",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_API_URL",
        "ALLOWED_ORIGINS",
        "DEFAULT_REGION",
        "PORTAL_LINK_TTL_SECONDS",
        "MAX_UPLOAD_BYTES",
        "SIGNUP_OPEN",
        "BLOOMTEXT_ENV",
        "BLOOMTEXT_LOG_LEVEL",
        "BLOOMTEXT_SESSION_IDLE_SECONDS",
        "BLOOMTEXT_SESSION_MAX_SECONDS",
        "BLOOMTEXT_LOGIN_MAX_FAILURES",
        "BLOOMTEXT_LOGIN_WINDOW_SECONDS",
        "BLOOMTEXT_LOGIN_MAX_FAILURES_PER_ADDRESS",
        "BLOOMTEXT_WS_RATE",
        "BLOOMTEXT_WS_BURST",
        "BLOOMTEXT_WS_SEND_QUEUE",
        "BLOOMTEXT_WS_AUTH_TIMEOUT",
        "BLOOMTEXT_WS_PING_SECONDS",
        "BLOOMTEXT_SEND_LANES",
        "METRICS_TOKEN",
        "SEATS_FREE",
        "SEATS_TRIAL",
        "SEATS_PRO",
        "BLOOMTEXT_OUTBOX_WORKER",
        "BLOOMTEXT_MAX_IMPORT_BYTES",
        "BLOOMTEXT_DATA_DIR",
        "BLOOMTEXT_TWILIO_TIMEOUT",
        "BLOOMTEXT_OUTBOX_LEASE_SECONDS",
        "BLOOMTEXT_REMINDER_AFTER_SECONDS",
        "BLOOMTEXT_REMINDER_MAX",
    }
)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or malformed."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "sqlite://data/bloomtext.sqlite3"
    redis_url: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    secret_key: str = DEV_SECRET_KEY
    smtp_url: str | None = None
    mail_from: str = "no-reply@localhost"
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_api_url: str = "https://api.twilio.com"
    allowed_origins: frozenset[str] = field(default_factory=frozenset)
    default_region: str = "US"
    portal_link_ttl_seconds: int = 604800
    max_upload_bytes: int = 26214400
    signup_open: bool = True
    production: bool = False
    log_level: str = "info"
    # Automatic logoff (HIPAA §164.312(a)(2)(iii)): idle and absolute session lifetimes.
    session_idle_seconds: int = 15 * 60
    session_max_seconds: int = 12 * 60 * 60
    login_max_failures: int = 5
    # Per client address: higher, since a clinic's staff often share one public address.
    login_max_failures_per_address: int = 50
    login_window_seconds: int = 15 * 60
    ws_rate: float = 50.0
    ws_burst: int = 200
    ws_send_queue: int = 1000
    ws_auth_timeout: float = 10.0
    # The server pings every socket this often and drops one that has not answered
    # within as long again (a dead peer, a half-open TCP connection).
    ws_ping_seconds: float = 20.0
    max_json_bytes: int = 1024 * 1024
    # A patient import's CSV file (streamed to a temporary file, read row by row).
    max_import_bytes: int = 50 * 1024 * 1024
    # Where files' bytes are kept (`blobs/` under it), next to the default SQLite file.
    data_dir: Path = Path("data")
    # Seconds a call to Twilio may take before it counts as Twilio being unavailable.
    twilio_timeout: float = 10.0
    # Independent send writers per node, conversations hashed onto them; None picks
    # per database (one on SQLite, which has a single writer anyway).
    send_lanes: int | None = None
    metrics_token: str | None = None
    # Seat limit of each plan; None: no limit.
    seats_free: int | None = 5
    seats_trial: int | None = 50
    seats_pro: int | None = None
    # Run the outbox worker inside the web process (the default); off when separate
    # `python -m server worker` processes do it.
    outbox_worker: bool = True
    # How long a worker owns the rows it claimed: past it, another worker takes them over
    # (after checking with Twilio whether an SMS in flight went out).
    outbox_lease_seconds: float = 120.0
    # A secure notice not viewed after this long gets a reminder (no PHI), at most
    # `reminder_max` times, this far apart; 0 reminders: none.
    reminder_after_seconds: float = 86400.0
    reminder_max: int = 1
    ws_max_frame_bytes: int = 64 * 1024

    @property
    def public_origin(self) -> str:
        return origin_of(self.public_url)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _url(env: Mapping[str, str], name: str, schemes: set[str]) -> str | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    parts = urlsplit(raw)
    if parts.scheme not in schemes:
        allowed = ", ".join(sorted(f"{s}://" for s in schemes))
        raise ConfigError(f"{name} must start with one of {allowed}; got {raw!r}")
    return raw


def _database_url(env: Mapping[str, str]) -> str:
    raw = env.get("DATABASE_URL") or ""
    if not raw:
        return "sqlite://" + str(Path("data") / "bloomtext.sqlite3")
    scheme = raw.split("://", 1)[0] if "://" in raw else ""
    if scheme not in {"sqlite", "postgres", "postgresql", "asyncpg", "psycopg"}:
        raise ConfigError(
            "DATABASE_URL must be sqlite://PATH or postgres://USER@HOST:PORT/DB; "
            f"got {raw!r}"
        )
    if scheme == "postgresql":
        raw = "postgres" + raw[len("postgresql") :]
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise ConfigError with a clear message."""
    env = dict(os.environ if env is None else env)
    unknown = sorted(
        name
        for name in env
        if name.startswith("BLOOMTEXT_") and name not in KNOWN_VARIABLES
    )
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")

    mode = (env.get("BLOOMTEXT_ENV") or "development").strip().lower()
    if mode not in {"development", "production"}:
        raise ConfigError(f"BLOOMTEXT_ENV must be development or production, got {mode!r}")
    production = mode == "production"

    host = env.get("HOST") or "127.0.0.1"
    port = _int(env, "PORT", 8000, minimum=0)
    if port > 65535:
        raise ConfigError(f"PORT must be at most 65535, got {port}")

    public_url = env.get("PUBLIC_URL") or f"http://{host}:{port}"
    parts = urlsplit(public_url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"PUBLIC_URL must be an http(s) URL, got {public_url!r}")
    public_url = public_url.rstrip("/")

    secret_key = env.get("SECRET_KEY") or ""
    if not secret_key:
        if production:
            raise ConfigError("SECRET_KEY is required when BLOOMTEXT_ENV=production")
        secret_key = DEV_SECRET_KEY
    elif len(secret_key) < 16:
        raise ConfigError("SECRET_KEY must be at least 16 characters")

    origins_raw = env.get("ALLOWED_ORIGINS") or ""
    origins = {origin_of(o.strip()) for o in origins_raw.split(",") if o.strip()}
    for origin in origins:
        if not origin.startswith(("http://", "https://")):
            raise ConfigError(f"ALLOWED_ORIGINS entries must be http(s) origins, got {origin!r}")
    if not origins:
        origins = {origin_of(public_url)}

    region = (env.get("DEFAULT_REGION") or "US").upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"DEFAULT_REGION must be a two-letter region code, got {region!r}")

    level = (env.get("BLOOMTEXT_LOG_LEVEL") or "info").lower()
    if level not in {"debug", "info", "warning", "error"}:
        raise ConfigError(f"BLOOMTEXT_LOG_LEVEL must be debug, info, warning or error: {level!r}")

    twilio_api_url = _url(env, "TWILIO_API_URL", {"http", "https"}) or "https://api.twilio.com"
    if urlsplit(twilio_api_url).path.strip("/"):
        raise ConfigError(
            f"TWILIO_API_URL is a scheme and host, without a path: {twilio_api_url!r}")

    return Settings(
        host=host,
        port=port,
        database_url=_database_url(env),
        redis_url=_url(env, "REDIS_URL", {"redis", "rediss", "redis+cluster"}),
        public_url=public_url,
        secret_key=secret_key,
        smtp_url=_url(env, "SMTP_URL", {"smtp", "smtp+starttls", "smtps"}),
        mail_from=env.get("MAIL_FROM") or "no-reply@localhost",
        twilio_account_sid=env.get("TWILIO_ACCOUNT_SID") or None,
        twilio_auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
        twilio_api_url=twilio_api_url.rstrip("/"),
        allowed_origins=frozenset(origins),
        default_region=region,
        portal_link_ttl_seconds=_int(env, "PORTAL_LINK_TTL_SECONDS", 604800, minimum=60),
        max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", 26214400, minimum=1),
        max_import_bytes=_int(env, "BLOOMTEXT_MAX_IMPORT_BYTES", 50 * 1024 * 1024, minimum=1),
        data_dir=Path(env.get("BLOOMTEXT_DATA_DIR") or "data"),
        twilio_timeout=float(_int(env, "BLOOMTEXT_TWILIO_TIMEOUT", 10, minimum=1)),
        signup_open=_bool(env, "SIGNUP_OPEN", not production),
        production=production,
        log_level=level,
        session_idle_seconds=_int(env, "BLOOMTEXT_SESSION_IDLE_SECONDS", 15 * 60, minimum=1),
        session_max_seconds=_int(env, "BLOOMTEXT_SESSION_MAX_SECONDS", 12 * 3600, minimum=1),
        login_max_failures=_int(env, "BLOOMTEXT_LOGIN_MAX_FAILURES", 5, minimum=1),
        login_max_failures_per_address=_int(
            env, "BLOOMTEXT_LOGIN_MAX_FAILURES_PER_ADDRESS", 50, minimum=1
        ),
        login_window_seconds=_int(env, "BLOOMTEXT_LOGIN_WINDOW_SECONDS", 15 * 60, minimum=1),
        ws_rate=_float(env, "BLOOMTEXT_WS_RATE", 50.0),
        ws_burst=_int(env, "BLOOMTEXT_WS_BURST", 200, minimum=1),
        ws_send_queue=_int(env, "BLOOMTEXT_WS_SEND_QUEUE", 1000, minimum=10),
        ws_auth_timeout=_float(env, "BLOOMTEXT_WS_AUTH_TIMEOUT", 10.0),
        ws_ping_seconds=_float(env, "BLOOMTEXT_WS_PING_SECONDS", 20.0),
        send_lanes=_lanes(env),
        metrics_token=_metrics_token(env),
        seats_free=_seats(env, "SEATS_FREE", 5),
        seats_trial=_seats(env, "SEATS_TRIAL", 50),
        seats_pro=_seats(env, "SEATS_PRO", None),
        outbox_worker=_outbox_worker(env),
        outbox_lease_seconds=_float(env, "BLOOMTEXT_OUTBOX_LEASE_SECONDS", 120.0),
        reminder_after_seconds=_float(env, "BLOOMTEXT_REMINDER_AFTER_SECONDS", 86400.0),
        reminder_max=_int(env, "BLOOMTEXT_REMINDER_MAX", 1, minimum=0),
    )


def _outbox_worker(env: Mapping[str, str]) -> bool:
    raw = (env.get("BLOOMTEXT_OUTBOX_WORKER") or "in-process").strip().lower()
    if raw not in {"in-process", "off"}:
        raise ConfigError(f"BLOOMTEXT_OUTBOX_WORKER must be in-process or off, got {raw!r}")
    return raw == "in-process"


def _seats(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw == "none":
        return None
    return _int(env, name, 0, minimum=1)


def _lanes(env: Mapping[str, str]) -> int | None:
    if not env.get("BLOOMTEXT_SEND_LANES"):
        return None
    lanes = _int(env, "BLOOMTEXT_SEND_LANES", 1, minimum=1)
    if lanes > 64:
        raise ConfigError(f"BLOOMTEXT_SEND_LANES must be at most 64, got {lanes}")
    return lanes


def _metrics_token(env: Mapping[str, str]) -> str | None:
    token = env.get("METRICS_TOKEN") or None
    if token is not None and len(token) < 16:
        raise ConfigError("METRICS_TOKEN must be at least 16 characters")
    return token
