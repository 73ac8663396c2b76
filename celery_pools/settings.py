"""The ``pools_*`` settings, read once from a Celery app's configuration and validated.

Each setting is documented in the README's "Settings" section.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from .errors import PoolConfigError
from .models import (
    DEFAULT_HANDOFF_LEASE,
    DEFAULT_LEASE,
    DEFAULT_STANDBY_MAX,
    DEFAULT_STANDBY_SECONDS,
    DEFAULT_WAIT_IN_PROCESS,
    Model,
    PoolSpec,
    check_pool_name,
)

__all__ = ["REDIS_SCHEMES", "SETTING_PREFIX", "PoolsSettings", "redacted"]

logger = logging.getLogger(__name__)

#: Every celery-pools setting in ``app.conf`` starts with this prefix.
SETTING_PREFIX = "pools_"

#: The URL schemes of a Redis for pool state (``celery_pools.store.connect`` says what each is).
REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)
_ALLOWED_URLS = "a redis://, rediss://, unix://, sentinel:// or redis+cluster:// URL"
# What a Sentinel broker's transport options say about its master, taken when pool state
# lives on the broker's Redis.
_BROKER_SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs")


#: Shortest dashboard token and password accepted.
MIN_SECRET_LENGTH = 16


def _check_secrets(values: Mapping[str, Any]) -> None:
    """Refuse a dashboard token or user password that is not text of at least
    :data:`MIN_SECRET_LENGTH` characters, without repeating it: the error is logged."""
    hidden = "<hidden>"
    token = values.get("dashboard_token")
    if token is not None and (not isinstance(token, str) or len(token) < MIN_SECRET_LENGTH):
        raise PoolConfigError.invalid(
            "pools_dashboard_token", hidden, f"text of {MIN_SECRET_LENGTH} characters or more"
        )
    users = values.get("dashboard_users")
    if users is None:
        return
    if not isinstance(users, Mapping):
        raise PoolConfigError.invalid(
            "pools_dashboard_users", hidden, "a mapping of user name -> password"
        )
    for user, password in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise PoolConfigError.invalid(
                "pools_dashboard_users", user, "user names are non-empty text without ':'"
            )
        if not isinstance(password, str) or len(password) < MIN_SECRET_LENGTH:
            raise PoolConfigError.invalid(
                f"pools_dashboard_users[{user!r}]",
                hidden,
                f"a password of {MIN_SECRET_LENGTH} characters or more",
            )


class PoolsSettings(Model):
    """celery-pools' settings; build them from an app with :meth:`from_app`."""

    redis_url: str | None = None
    key_prefix: str = "celery_pools"
    lease_seconds: float = Field(default=DEFAULT_LEASE, ge=1.0, le=86_400.0)
    require_assignment: bool = False
    retry_backoff_min: float = Field(default=0.25, gt=0.0, le=60.0)
    retry_backoff_max: float = Field(default=2.0, gt=0.0, le=300.0)
    redis_socket_timeout: float = Field(default=5.0, gt=0.0, le=60.0)
    #: Options of the Redis connection: a Sentinel's master_name, TLS files, ...
    redis_transport_options: dict[str, Any] = Field(default_factory=dict)
    #: Replicas every write of pool state waits for (Redis WAIT); 0: none.
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    #: How long a write waits for them at most.
    redis_wait_timeout_seconds: float = Field(default=0.5, gt=0.0, le=10.0)
    suspicious_hold_seconds: float = Field(default=900.0, gt=0.0)
    handoff_lease_seconds: float = Field(default=DEFAULT_HANDOFF_LEASE, gt=0.0, le=3600.0)
    reaper_interval: float = Field(default=0.25, gt=0.0, le=60.0)
    #: How long the slot of a holder that ended without releasing (killed, hard time limit,
    #: terminated) stays taken, its call possibly still in flight; None: one lease.
    abandoned_grace_seconds: float | None = Field(default=None, ge=0.0, le=86_400.0)
    #: Standbys a hand-off pool keeps at most (0: none); the pool sizes them below that.
    standby_max: int = Field(default=DEFAULT_STANDBY_MAX, ge=0, le=1000)
    #: Seconds a standby blocks at most before it goes back to its place in the FIFO.
    standby_seconds: float = Field(default=DEFAULT_STANDBY_SECONDS, gt=0.0, le=30.0)
    #: A countdown waiter whose next try is at most this many seconds away waits for it in its
    #: worker process instead of being sent again (0: always sent again).
    wait_in_process_seconds: float = Field(default=DEFAULT_WAIT_IN_PROCESS, ge=0.0, le=60.0)
    freeze_gc: bool = True
    declare: dict[str, PoolSpec] = Field(default_factory=dict)
    #: The dashboard's operator credentials: a bearer token and/or HTTP Basic users.
    dashboard_token: str | None = None
    dashboard_users: dict[str, str] = Field(default_factory=dict)
    #: Which management tasks an app registers: every one, the read-only ones, or none.
    management_tasks: Literal["all", "read-only", "none"] = "all"

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not value or any(ch in value for ch in "{}: \t\n"):
            raise PoolConfigError.invalid(
                "pools_key_prefix", value, "a non-empty prefix without '{', '}', ':' or spaces"
            )
        return value

    @field_validator("declare", mode="before")
    @classmethod
    def _declare(cls, value: object) -> dict[str, PoolSpec]:
        if not isinstance(value, Mapping):
            raise PoolConfigError.invalid(
                "pools_declare",
                value,
                "a mapping of pool name -> {limit, timeout, wait, instances}",
            )
        return {
            check_pool_name(name, "pools_declare key"): PoolSpec.parse(
                spec, where=f"pools_declare[{name!r}]"
            )
            for name, spec in value.items()
        }

    @classmethod
    def from_app(cls, app: Any) -> PoolsSettings:
        """Read and validate the ``pools_*`` settings of a Celery app."""
        conf = app.conf
        values: dict[str, Any] = {}
        for field in cls.model_fields:
            value = conf.get(SETTING_PREFIX + field)
            if value is not None:
                values[field] = value
        known = {SETTING_PREFIX + field for field in cls.model_fields}
        for key in conf:
            if isinstance(key, str) and key.startswith(SETTING_PREFIX) and key not in known:
                logger.warning("celery-pools: unknown setting %r is ignored", key)
        _check_secrets(values)
        try:
            settings = cls.parse(values)
        except PoolConfigError as exc:
            if exc.field and not exc.field.startswith(SETTING_PREFIX):
                raise PoolConfigError.invalid(
                    SETTING_PREFIX + exc.field, exc.value, exc.allowed
                ) from None
            raise
        low, high = settings.retry_backoff_min, settings.retry_backoff_max
        if low > high:
            # Blames the one that was set, when only one was.
            field = (
                "retry_backoff_max" if "retry_backoff_min" not in values else "retry_backoff_min"
            )
            raise PoolConfigError.invalid(
                SETTING_PREFIX + field,
                getattr(settings, field),
                f"pools_retry_backoff_min ({low:g} s) at most pools_retry_backoff_max ({high:g} s)",
            )
        if settings.standby_max and settings.standby_seconds > settings.redis_socket_timeout - 0.5:
            raise PoolConfigError.invalid(
                "pools_standby_seconds",
                settings.standby_seconds,
                "at most pools_redis_socket_timeout - 0.5 s "
                f"({settings.redis_socket_timeout - 0.5:g} s): a standby blocks on its Redis "
                "connection",
            )
        return settings

    @property
    def abandoned_grace(self) -> float:
        """Seconds an abandoned slot stays taken: ``pools_abandoned_grace_seconds``, by default
        the lease (a holder the pool stops hearing from keeps its slot one lease either way)."""
        grace = self.abandoned_grace_seconds
        return self.lease_seconds if grace is None else grace

    def resolve_redis_url(self, app: Any) -> str:
        """The Redis URL for pool state: ``pools_redis_url``, else a Redis broker's URL.

        Raises :class:`PoolConfigError` naming the setting to set when neither gives a Redis.
        """
        if self.redis_url:
            if not self.redis_url.startswith(REDIS_SCHEMES):
                raise PoolConfigError.invalid(
                    "pools_redis_url", redacted(self.redis_url), _ALLOWED_URLS
                )
            return self.redis_url
        broker = _broker_url(app)
        if broker is not None and broker.startswith(REDIS_SCHEMES):
            return broker
        raise PoolConfigError(
            "celery-pools needs a Redis server for pool state: set the pools_redis_url setting "
            "(for example 'redis://localhost:6379/0'); "
            f"the broker ({_scheme(broker)}) is not Redis",
            field="pools_redis_url",
            value=None,
            allowed=_ALLOWED_URLS,
        )

    def resolve_transport_options(self, app: Any) -> dict[str, Any]:
        """The Redis connection's options: ``pools_redis_transport_options``; when pool state
        lives on a Sentinel broker and they do not name a master, the broker's
        ``master_name`` and ``sentinel_kwargs`` (``broker_transport_options``)."""
        options = dict(self.redis_transport_options)
        broker = _broker_url(app)
        if not self.redis_url and broker is not None and broker.startswith("sentinel://"):
            transport = app.conf.broker_transport_options or {}
            for key in _BROKER_SENTINEL_OPTIONS:
                if key in transport:
                    options.setdefault(key, transport[key])
        return options


def redacted(url: str) -> str:
    """``url`` without its passwords (each ``;``-separated part), for messages and logs."""
    parts = []
    for raw in url.split(";"):
        part = raw.strip()
        try:
            split = urlsplit(part)
        except ValueError:  # an unbalanced IPv6 bracket: show nothing of it
            parts.append("<a URL that does not parse>")
            continue
        if split.password is not None:
            user = split.username or ""
            host = split.netloc.rsplit("@", 1)[1]
            part = split._replace(netloc=f"{user}:***@{host}").geturl()
        parts.append(part)
    return ";".join(parts)


def _broker_url(app: Any) -> str | None:
    """The broker's URL (the first, if several), or None."""
    broker = app.conf.broker_url
    if isinstance(broker, list | tuple):
        broker = broker[0] if broker else None
    if isinstance(broker, str):
        # A failover list (a;b) names the first; a Sentinel URL keeps every sentinel.
        return broker.strip() if broker.startswith("sentinel://") else broker.split(";")[0].strip()
    return None


def _scheme(url: object) -> str:
    if isinstance(url, str) and "://" in url:
        return url.split("://", 1)[0] + "://..."
    return "not configured" if not url else "unrecognised"
