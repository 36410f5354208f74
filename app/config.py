"""Settings read from the environment (twelve-factor), with safe defaults."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from app.locations import default_data_dir


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def listen_address(env: Mapping[str, str]) -> tuple[str, str]:
    """Where the web server listens: HOST (all interfaces) and PORT (8000), as given.

    Heroku-style platforms route to $PORT on all interfaces; Dispatch must reach it.
    """
    return env.get("HOST", "0.0.0.0"), env.get("PORT", "8000")


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment, typed and checked."""

    # None means: start the embedded PostgreSQL under data_dir.
    database_url: str | None = None
    # A checkout's .dispatch-ledger/, else the user's data directory (app.locations).
    data_dir: Path = field(default_factory=default_data_dir)
    # Bodies above this are refused with 413 before they are read.
    max_body_bytes: int = 256 * 1024
    # Dispatch payloads nest four levels deep; anything far deeper is hostile.
    max_json_depth: int = 32
    db_pool_min_size: int = 1
    db_pool_max_size: int = 4
    # Seconds a request waits for a connection before answering 503. While
    # the database is down every request waits this long, so it is short:
    # Vonage retries a 503, and a callback takes milliseconds, so a wait this
    # long means the database is gone or stuck, not busy.
    db_pool_timeout: float = 1.5
    retry_after_seconds: int = 5
    # What refused deliveries may store per reason and hour (bodies and rows).
    # Past it they are still answered and counted, but not kept. Deliveries
    # with a valid signature are always kept whole: they are Vonage's.
    rejects_kept_bytes_per_hour: int = 16 * 1024 * 1024
    # Signed webhooks: the application's signature secret (and the previous
    # one while a rotation is under way). Kept out of repr so it never logs.
    vonage_signature_secret: str | None = field(default=None, repr=False)
    vonage_signature_secret_previous: str | None = field(default=None, repr=False)
    # How far a token's `iat` may be from now, either way, in seconds.
    signature_max_age_seconds: int = 300
    # HTTP Basic credentials, for setups that put them in the webhook URL.
    webhook_basic_user: str | None = None
    webhook_basic_password: str | None = field(default=None, repr=False)
    # Bearer token for the owner's endpoints (POST /workflows, PUT and GET
    # .../definition); unset, they are off: they send messages on the
    # account's behalf, and definitions hold numbers and texts.
    api_token: str | None = field(default=None, repr=False)
    # Bearer token for reading workflows, messages and /metrics (API_TOKEN
    # works too). Unset on a deployment, those need API_TOKEN, or are closed
    # (see read_tokens).
    read_api_token: str | None = field(default=None, repr=False)
    # A deployment is closed until its owner opens it (DESIGN.md: Closed by
    # default): these two open it on purpose, each for one thing.
    allow_unsigned_callbacks: bool = False
    read_api_open: bool = False
    # Set by `dispatch-ledger serve` for the gunicorn it runs on the embedded
    # PostgreSQL: a local service on the developer's machine, open as the
    # quick start promises (and says so when it starts).
    embedded_database: bool = False
    # HTTP Basic password for /dashboard; unset, the dashboard is off.
    dashboard_password: str | None = field(default=None, repr=False)
    # Where the dashboard's overview reads its charts (the funnel and the
    # failover rates over up to 90 days: its heavy queries) and recent
    # workflows: a streaming standby, so that they never compete with the
    # captures. Unset: DATABASE_URL. The rest reads the primary.
    dashboard_database_url: str | None = field(default=None, repr=False)
    # How late a failover or a final report may be before it is listed as overdue.
    overdue_grace_seconds: int = 300
    # A step with no deadline (Dispatch's last step; every Messages API item)
    # that has neither succeeded nor failed this long after it was submitted
    # is overdue. Vonage attempts delivery for up to 72 h by default; a day
    # without an outcome is worth a look.
    last_step_timeout_seconds: int = 86_400
    # Dispatch's API, for sending workflows (point it at a stand-in for tests).
    dispatch_api_url: str = "https://api.nexmo.com"
    dispatch_api_key: str | None = None
    dispatch_api_secret: str | None = field(default=None, repr=False)
    dispatch_application_id: str | None = None
    # PEM text of the application's private key, or a path to the file.
    dispatch_private_key: str | None = field(default=None, repr=False)
    dispatch_timeout_seconds: float = 10.0
    # The web dyno applies captured callbacks: under gunicorn one applier
    # process beside the workers (app/pipeline/applier_process.py), under any other
    # server a thread in each process. Turn it off when separate
    # `dispatch-ledger apply` processes do it.
    apply_in_web: bool = True
    # The CPU priority (nice) of the applier beside gunicorn's workers: the
    # requests come first, the applier takes the CPU they leave.
    apply_niceness: int = 19
    # ... and how far behind it may fall: callbacks waiting longer are applied
    # by the web processes too, at the requests' priority. Under a burst the
    # requests keep the CPU for about this long; under a load the niced
    # applier cannot follow, the ledger stays about this far behind.
    apply_max_lag_seconds: float = 10.0
    # Captured callbacks applied per transaction.
    apply_batch_size: int = 100
    # How often an applier keeps the analytics views' figures of the days that
    # changed (app/store/daily_figures.py): the views are exact either way; the days
    # changed since the last refresh are computed when read, so a longer wait
    # makes the views slower, a shorter one costs the applier more.
    analytics_refresh_seconds: float = 30.0
    # How often an idle applier looks for work its own process did not bring
    # (other processes' captures, failed callbacks due again).
    apply_poll_seconds: float = 1.0
    # Once woken by a capture, an applier waits this long for more, so that
    # it applies many callbacks per transaction instead of one at a time.
    apply_linger_seconds: float = 0.02
    # While captures keep coming, an applier lets them gather up to this long
    # (or a full batch): under load it applies in large, cheap transactions
    # and leaves the CPU to the requests. The applied lag stays about this.
    apply_max_delay_seconds: float = 0.5
    # Concurrent requests of a process share one commit for their captures.
    capture_group_commit: bool = True
    # gunicorn's access log, a line per request on stdout (off: see gunicorn_conf).
    access_log: bool = False
    # Webhooks out (app/outbound): the waits between a failed delivery's
    # attempts, Standard Webhooks' schedule (after the first, immediate one);
    # an endpoint that fails for all of it is disabled.
    endpoint_retry_seconds: str = "5,300,1800,7200,18000,36000,36000"
    # How long a delivery may take, connecting and answering, before it counts as failed.
    endpoint_timeout_seconds: float = 10.0
    # Endpoints must be https and public addresses; these allow http and
    # private or loopback addresses, for local work and tests.
    endpoints_allow_http: bool = False
    endpoints_allow_private: bool = False
    # The applier process sends the webhooks too (so `web:` alone is
    # complete); turn it off when `dispatch-ledger deliver` workers do it.
    deliver_in_applier: bool = True
    # How often a deliverer looks for new events to send.
    deliver_poll_seconds: float = 0.25

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from the environment, refusing malformed values."""
        env = os.environ if env is None else env
        defaults = cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            default = getattr(defaults, f.name)
            # Each setting is parsed by the type of its default (str when None).
            parse: Callable[[str], Any] = str if default is None else type(default)
            values[f.name] = _convert(f.name.upper(), raw.strip(), parse)
        settings = cls(**values)
        settings.check()
        return settings

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """Return a copy with some fields replaced (used by tests and the CLI)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown settings: {sorted(unknown)}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(overrides)
        settings = Settings(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse combinations that would make the service misbehave."""
        positive = (
            "max_body_bytes",
            "max_json_depth",
            "db_pool_max_size",
            "retry_after_seconds",
            "rejects_kept_bytes_per_hour",
            "signature_max_age_seconds",
            "overdue_grace_seconds",
            "last_step_timeout_seconds",
            "apply_batch_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.upper()} must be at least 1")
        if not 0 <= self.db_pool_min_size <= self.db_pool_max_size:
            raise ConfigError("DB_POOL_MIN_SIZE must be between 0 and DB_POOL_MAX_SIZE")
        if not 0 <= self.apply_linger_seconds <= 1:
            raise ConfigError("APPLY_LINGER_SECONDS must be between 0 and 1")
        if not 0 <= self.apply_max_delay_seconds <= 10:
            raise ConfigError("APPLY_MAX_DELAY_SECONDS must be between 0 and 10")
        if self.apply_max_lag_seconds <= 0:
            raise ConfigError("APPLY_MAX_LAG_SECONDS must be positive")
        if not 0 <= self.apply_niceness <= 19:
            raise ConfigError("APPLY_NICENESS must be between 0 and 19")
        if not 0 < self.analytics_refresh_seconds <= 86_400:
            raise ConfigError("ANALYTICS_REFRESH_SECONDS must be more than 0 and at most a day")
        if self.apply_poll_seconds <= 0:
            raise ConfigError("APPLY_POLL_SECONDS must be positive")
        if self.db_pool_timeout <= 0:
            raise ConfigError("DB_POOL_TIMEOUT must be positive")
        if (self.webhook_basic_user is None) != (self.webhook_basic_password is None):
            raise ConfigError("set both WEBHOOK_BASIC_USER and WEBHOOK_BASIC_PASSWORD, or neither")
        if (self.dispatch_api_key is None) != (self.dispatch_api_secret is None):
            raise ConfigError("set both DISPATCH_API_KEY and DISPATCH_API_SECRET, or neither")
        if (self.dispatch_application_id is None) != (self.dispatch_private_key is None):
            raise ConfigError(
                "set both DISPATCH_APPLICATION_ID and DISPATCH_PRIVATE_KEY, or neither"
            )
        if not 0 < self.endpoint_timeout_seconds <= 60:
            raise ConfigError("ENDPOINT_TIMEOUT_SECONDS must be more than 0 and at most 60")
        if not 0 < self.deliver_poll_seconds <= 60:
            raise ConfigError("DELIVER_POLL_SECONDS must be more than 0 and at most 60")
        self.retry_schedule()  # refuses a malformed one
        if self.vonage_signature_secret_previous and not self.vonage_signature_secret:
            raise ConfigError(
                "VONAGE_SIGNATURE_SECRET_PREVIOUS is set without VONAGE_SIGNATURE_SECRET"
            )

    def retry_schedule(self) -> tuple[float, ...]:
        """ENDPOINT_RETRY_SECONDS as seconds: the wait before each retry of a delivery."""
        try:
            waits = tuple(float(part) for part in self.endpoint_retry_seconds.split(","))
        except ValueError:
            waits = ()
        if not waits or any(not 0 < wait <= 7 * 86_400 for wait in waits):
            raise ConfigError(
                "ENDPOINT_RETRY_SECONDS must be seconds separated by commas, each more than 0"
                f" and at most a week (got {self.endpoint_retry_seconds!r})"
            )
        return waits

    @property
    def authenticates(self) -> bool:
        """Whether callbacks must prove they come from Vonage."""
        return bool(self.vonage_signature_secret or self.webhook_basic_user)

    @property
    def deployed(self) -> bool:
        """A deployment: DATABASE_URL names the operator's database, not the embedded one."""
        return self.database_url is not None and not self.embedded_database

    def refuse_to_serve_open(self) -> None:
        """A deployment answers anyone's callbacks only when its owner said so (one line)."""
        if self.deployed and not self.authenticates and not self.allow_unsigned_callbacks:
            raise ConfigError(
                "refusing to serve: DATABASE_URL is set but callbacks cannot be authenticated;"
                " set VONAGE_SIGNATURE_SECRET (or WEBHOOK_BASIC_USER and"
                " WEBHOOK_BASIC_PASSWORD), or ALLOW_UNSIGNED_CALLBACKS=true to accept anyone's"
            )

    def read_tokens(self) -> tuple[str, ...] | None:
        """The bearer tokens that open the read API and /metrics; None: open to anyone.

        An empty tuple: closed to everyone (a deployment that set no token).
        A READ_API_TOKEN is always required once set; otherwise the embedded
        quick start and READ_API_OPEN=true are open, and a deployment takes
        its owner's API_TOKEN or nothing.
        """
        if self.read_api_token:
            return tuple(t for t in (self.read_api_token, self.api_token) if t)
        if self.read_api_open or not self.deployed:
            return None
        return (self.api_token,) if self.api_token else ()


def _convert(name: str, raw: str, parse: Callable[[str], Any]) -> Any:
    if parse is bool:
        return raw.lower() in {"1", "true", "yes", "on"}
    try:
        return parse(raw)
    except ValueError as exc:
        kind = getattr(parse, "__name__", "value")
        raise ConfigError(f"{name}={raw!r} is not a valid {kind}") from exc
