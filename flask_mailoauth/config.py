"""The ``MAILOAUTH_*`` settings, checked once at ``init_app`` into a frozen :class:`Config`.

A bad value is a :class:`~flask_mailoauth.errors.SetupError` naming the key and what it must be,
raised while the app is built, never later in a request or a cron run. The domain modules
(tokens, flow, accounts, health, CLI) read the :class:`Config` held by the app's state, never
``current_app.config``; a host that changes ``MAILOAUTH_*`` after ``init_app`` changes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from . import crypto
from .errors import SetupError
from .outbound import OutboundPolicy
from .vocabulary import FlashKind

logger = logging.getLogger("flask_mailoauth")

#: every configuration key with its default; documented in docs/configuration.rst
DEFAULTS: dict[str, object] = {
    # where the blueprint is mounted; the callback is <prefix>/callback
    "MAILOAUTH_URL_PREFIX": "/mailoauth",
    # the absolute Callback Endpoint, when the computed one is wrong (unusual proxies)
    "MAILOAUTH_CALLBACK_URL": None,
    # URL-safe base64 keys, a list or a comma-separated string; the first encrypts
    "MAILOAUTH_ENCRYPTION_KEYS": None,
    # accept http:// endpoints on loopback hosts (tests and local sandboxes only)
    "MAILOAUTH_ALLOW_INSECURE_HTTP": False,
    # host names and CIDR networks of on-premises IdPs that may resolve to private addresses
    "MAILOAUTH_ALLOWED_PRIVATE_HOSTS": (),
    # a PEM file of the CAs IdP certificates are checked against (None: the default CA store)
    "MAILOAUTH_CA_BUNDLE": None,
    # bytes read at most from any IdP answer; a larger one is refused
    "MAILOAUTH_MAX_RESPONSE_BYTES": 1024 * 1024,
    # seconds of validity below which an access token is refreshed before use
    "MAILOAUTH_REFRESH_LEEWAY": 300,
    # seconds a process may serve a token from memory without looking at the database
    "MAILOAUTH_CACHE_TTL": 60,
    # tokens a process keeps in memory at most, least recently used dropped first
    "MAILOAUTH_CACHE_SIZE": 1024,
    # seconds to wait for another worker's refresh before giving up
    "MAILOAUTH_LOCK_TIMEOUT": 30,
    # seconds for each call to the IdP
    "MAILOAUTH_HTTP_TIMEOUT": 10,
    # seconds a process keeps retrying to store a refreshed token the database refused
    "MAILOAUTH_STORE_RETRY": 300,
    # seconds for each mail server connection
    "MAILOAUTH_MAIL_TIMEOUT": 30,
    # seconds a started authorization stays valid
    "MAILOAUTH_PENDING_TTL": 600,
    # days a re-consent link works (once) after the admin creates it
    "MAILOAUTH_RECONSENT_DAYS": 7,
    # first and longest wait, in seconds, between retries after transient refresh failures
    "MAILOAUTH_RETRY_BASE": 30,
    "MAILOAUTH_RETRY_MAX": 3600,
    # consecutive refresh failures that raise a warning
    "MAILOAUTH_FAILURE_WARNING_THRESHOLD": 3,
    # warn when the refresh token has not been used for this many days (Microsoft: 90 max)
    "MAILOAUTH_IDLE_WARNING_DAYS": 80,
    # warn this many days before the client secret's end date
    "MAILOAUTH_SECRET_WARNING_DAYS": (30, 7),
    # accounts refreshed at once by `flask mailoauth refresh --due`
    "MAILOAUTH_REFRESH_CONCURRENCY": 8,
    # days an account's events are kept; older ones go with `flask mailoauth prune` and after
    # `flask mailoauth refresh --due`; 0 or None keeps them forever
    "MAILOAUTH_EVENT_RETENTION_DAYS": 90,
    # the host's flash categories for our messages, e.g. {"error": "danger"} for Bootstrap
    "MAILOAUTH_FLASH_CATEGORIES": {},
    # serve the accounts' metrics at <prefix>/metrics (Prometheus text or OpenMetrics)
    "MAILOAUTH_METRICS": False,
    # a bearer token the metrics endpoint requires instead of the host's access_check
    "MAILOAUTH_METRICS_TOKEN": None,
    # hours between reminders of a condition that is not resolved (docs/operations.rst)
    "MAILOAUTH_NOTIFY_REMINDER_HOURS": 24,
    # an http(s) URL notifications are POSTed to as signed JSON, and the HMAC key that signs them
    "MAILOAUTH_NOTIFY_WEBHOOK_URL": None,
    "MAILOAUTH_NOTIFY_WEBHOOK_SECRET": None,
    # addresses notifications are e-mailed to, through the SMTP account of mailbox key
    # MAILOAUTH_NOTIFY_MAILBOX
    "MAILOAUTH_NOTIFY_EMAIL_TO": (),
    "MAILOAUTH_NOTIFY_MAILBOX": None,
}
#: the fewest characters a metrics bearer token may have
METRICS_TOKEN_MIN_LENGTH = 16
#: the fewest characters a webhook signing secret may have
WEBHOOK_SECRET_MIN_LENGTH = 16


@dataclass(frozen=True)
class Config:
    """The extension's settings of one app, checked; times are in seconds."""

    url_prefix: str
    callback_url: str | None
    #: what IdP calls may reach (``MAILOAUTH_ALLOW_INSECURE_HTTP``, ``..._ALLOWED_PRIVATE_HOSTS``,
    #: ``..._MAX_RESPONSE_BYTES``, ``MAILOAUTH_CA_BUNDLE``)
    outbound: OutboundPolicy
    refresh_leeway: float
    cache_ttl: float
    cache_size: int
    lock_timeout: float
    http_timeout: float
    store_retry: float
    mail_timeout: float
    pending_ttl: int
    reconsent_days: int
    retry_base: float
    retry_max: float
    failure_warning_threshold: int
    idle_warning_days: int
    secret_warning_days: tuple[int, ...]
    refresh_concurrency: int
    #: days events are kept; ``None``: forever
    event_retention_days: int | None
    flash_categories: Mapping[str, str]
    #: whether ``<prefix>/metrics`` answers (``MAILOAUTH_METRICS``)
    metrics_endpoint: bool = False
    #: the bearer token the metrics endpoint requires; ``None``: the host's access_check
    metrics_token: str | None = field(default=None, repr=False)
    #: where notifications go (``MAILOAUTH_NOTIFY_*``)
    notify: NotifyConfig = field(default_factory=lambda: NotifyConfig())

    @property
    def allow_insecure_http(self) -> bool:
        """Whether loopback ``http://`` IdP endpoints are accepted (tests, sandboxes)."""
        return self.outbound.allow_insecure_http

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> Config:
        """The settings in a Flask config (defaults for missing keys); ``SetupError`` naming the
        first key whose value is unusable."""
        values = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
        retry_base = _seconds(values, "MAILOAUTH_RETRY_BASE", positive=True)
        retry_max = _seconds(values, "MAILOAUTH_RETRY_MAX", positive=True)
        if retry_max < retry_base:
            raise SetupError(
                f"MAILOAUTH_RETRY_MAX ({retry_max:g}) must not be shorter than "
                f"MAILOAUTH_RETRY_BASE ({retry_base:g})."
            )
        return cls(
            url_prefix=_url_prefix(values["MAILOAUTH_URL_PREFIX"]),
            callback_url=_callback_url(values["MAILOAUTH_CALLBACK_URL"]),
            outbound=_outbound(values),
            refresh_leeway=_seconds(values, "MAILOAUTH_REFRESH_LEEWAY"),
            cache_ttl=_seconds(values, "MAILOAUTH_CACHE_TTL"),
            cache_size=_whole(values, "MAILOAUTH_CACHE_SIZE", minimum=1),
            lock_timeout=_seconds(values, "MAILOAUTH_LOCK_TIMEOUT", positive=True),
            http_timeout=_seconds(values, "MAILOAUTH_HTTP_TIMEOUT", positive=True),
            store_retry=_seconds(values, "MAILOAUTH_STORE_RETRY"),
            mail_timeout=_seconds(values, "MAILOAUTH_MAIL_TIMEOUT", positive=True),
            pending_ttl=_whole(values, "MAILOAUTH_PENDING_TTL", minimum=1),
            reconsent_days=_whole(values, "MAILOAUTH_RECONSENT_DAYS", minimum=1),
            retry_base=retry_base,
            retry_max=retry_max,
            failure_warning_threshold=_whole(
                values, "MAILOAUTH_FAILURE_WARNING_THRESHOLD", minimum=1
            ),
            idle_warning_days=_whole(values, "MAILOAUTH_IDLE_WARNING_DAYS", minimum=1),
            secret_warning_days=_days(values["MAILOAUTH_SECRET_WARNING_DAYS"]),
            refresh_concurrency=_whole(values, "MAILOAUTH_REFRESH_CONCURRENCY", minimum=1),
            event_retention_days=_retention(values),
            flash_categories=_flash_categories(values["MAILOAUTH_FLASH_CATEGORIES"]),
            metrics_endpoint=_flag(values, "MAILOAUTH_METRICS"),
            metrics_token=_metrics_token(values["MAILOAUTH_METRICS_TOKEN"]),
            notify=_notify(values),
        )


@dataclass(frozen=True)
class NotifyConfig:
    """The notification channels besides the host's ``@mailoauth.notifier`` callback."""

    reminder_hours: float = 24
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    email_to: tuple[str, ...] = ()
    #: the host's key of the mailbox whose SMTP account sends the notification e-mails
    mailbox: str | None = None


def keyring(config: Mapping[str, Any]) -> crypto.KeyRing:
    """The key ring from ``MAILOAUTH_ENCRYPTION_KEYS``, or one derived from ``SECRET_KEY``.

    A malformed key is a ``SetupError`` that names its position, never the key itself.
    """
    configured = config.get("MAILOAUTH_ENCRYPTION_KEYS")
    if isinstance(configured, str):
        configured = [k for k in configured.split(",") if k.strip()]
    if configured:
        if not isinstance(configured, list | tuple) or not all(
            isinstance(k, str) for k in configured
        ):
            raise SetupError(
                "MAILOAUTH_ENCRYPTION_KEYS must be a list of keys or a comma-separated string, "
                f"not a {type(configured).__name__}."
            )
        keys = []
        for position, text in enumerate(configured, start=1):
            try:
                keys.append(crypto.parse_key(text))
            except ValueError as exc:
                raise SetupError(f"{exc} (key {position} of {len(configured)})") from None
        return crypto.KeyRing(keys)
    secret_key = config.get("SECRET_KEY")
    if not secret_key:
        raise SetupError(
            "flask-mailoauth encrypts secrets at rest and needs a key: set "
            "MAILOAUTH_ENCRYPTION_KEYS (recommended) or SECRET_KEY before init_app."
        )
    logger.warning(
        "MAILOAUTH_ENCRYPTION_KEYS is not set: tokens are encrypted with a key derived from "
        "SECRET_KEY. Set MAILOAUTH_ENCRYPTION_KEYS so that rotating SECRET_KEY does not make "
        "stored tokens unreadable."
    )
    return crypto.KeyRing([crypto.derive_key(secret_key)])


def _number(values: Mapping[str, Any], key: str) -> float:
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise SetupError(f"{key} must be a number, not {value!r}.")
    return value


def _seconds(values: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    """A number of seconds: never negative, above zero when ``positive``."""
    value = _number(values, key)
    if value < 0 or (positive and value == 0) or value == float("inf"):
        bound = "more than 0" if positive else "0 or more"
        raise SetupError(f"{key} must be a finite number of seconds, {bound}; got {value!r}.")
    return value


def _whole(values: Mapping[str, Any], key: str, *, minimum: int) -> int:
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SetupError(f"{key} must be a whole number of at least {minimum}, not {value!r}.")
    return value


def _retention(values: Mapping[str, Any]) -> int | None:
    """``MAILOAUTH_EVENT_RETENTION_DAYS``: ``None`` (0 or ``None``: keep forever) or days."""
    if values["MAILOAUTH_EVENT_RETENTION_DAYS"] is None:
        return None
    return _whole(values, "MAILOAUTH_EVENT_RETENTION_DAYS", minimum=0) or None


def _flag(values: Mapping[str, Any], key: str) -> bool:
    """A switch: ``True``/``False``, or ``1``/``0`` as Flask's ``from_prefixed_env`` reads
    them from the environment."""
    value = values[key]
    if value not in (True, False) or not isinstance(value, int):
        raise SetupError(f"{key} must be True or False, not {value!r}.")
    return bool(value)


def _metrics_token(value: object) -> str | None:
    """``MAILOAUTH_METRICS_TOKEN``: ``None``, or a token long enough not to be guessed (the
    error never repeats it)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value.strip()) < METRICS_TOKEN_MIN_LENGTH:
        raise SetupError(
            f"MAILOAUTH_METRICS_TOKEN must be a string of at least {METRICS_TOKEN_MIN_LENGTH} "
            "characters (for example secrets.token_urlsafe()), or None."
        )
    return value.strip()


def _notify(values: Mapping[str, Any]) -> NotifyConfig:
    url, secret = values["MAILOAUTH_NOTIFY_WEBHOOK_URL"], values["MAILOAUTH_NOTIFY_WEBHOOK_SECRET"]
    if url is not None and not (
        isinstance(url, str) and urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc
    ):
        raise SetupError(
            f"MAILOAUTH_NOTIFY_WEBHOOK_URL must be an absolute http(s) URL or None; got {url!r}."
        )
    if (url is not None or secret is not None) and (
        not isinstance(secret, str) or len(secret) < WEBHOOK_SECRET_MIN_LENGTH
    ):
        raise SetupError(
            "MAILOAUTH_NOTIFY_WEBHOOK_SECRET must be a string of at least "
            f"{WEBHOOK_SECRET_MIN_LENGTH} characters that signs the webhook's requests (for "
            "example secrets.token_urlsafe()), set together with MAILOAUTH_NOTIFY_WEBHOOK_URL."
        )
    recipients = values["MAILOAUTH_NOTIFY_EMAIL_TO"] or ()
    if isinstance(recipients, str):
        recipients = [r.strip() for r in recipients.split(",") if r.strip()]
    if not isinstance(recipients, list | tuple) or not all(
        isinstance(r, str) and "@" in r and not any(c in r for c in "\r\n,<>") for r in recipients
    ):
        raise SetupError(
            "MAILOAUTH_NOTIFY_EMAIL_TO must be e-mail addresses, as a list or a comma-separated "
            f"string; got {recipients!r}."
        )
    mailbox = values["MAILOAUTH_NOTIFY_MAILBOX"]
    if (recipients or mailbox is not None) and not (isinstance(mailbox, str) and mailbox):
        raise SetupError(
            "MAILOAUTH_NOTIFY_MAILBOX must be the key of the mailbox whose SMTP account sends "
            f"the notification e-mails to MAILOAUTH_NOTIFY_EMAIL_TO; got {mailbox!r}."
        )
    return NotifyConfig(
        reminder_hours=_hours(values, "MAILOAUTH_NOTIFY_REMINDER_HOURS"),
        webhook_url=url,
        webhook_secret=secret,
        email_to=tuple(recipients),
        mailbox=mailbox,
    )


def _hours(values: Mapping[str, Any], key: str) -> float:
    value = _number(values, key)
    if value <= 0 or value == float("inf"):
        raise SetupError(f"{key} must be a finite number of hours, more than 0; got {value!r}.")
    return value


def _url_prefix(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "//" in value:
        raise SetupError(f"MAILOAUTH_URL_PREFIX must be a path starting with '/', not {value!r}.")
    return value


def _callback_url(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.netloc:
            return value
    raise SetupError(
        "MAILOAUTH_CALLBACK_URL must be an absolute http(s) URL (the Callback Endpoint), or "
        f"None to compute it; got {value!r}."
    )


def _outbound(values: Mapping[str, Any]) -> OutboundPolicy:
    insecure = values["MAILOAUTH_ALLOW_INSECURE_HTTP"]
    if insecure not in (True, False):  # 1 and 0 too: what from_prefixed_env makes of "1"
        raise SetupError(f"MAILOAUTH_ALLOW_INSECURE_HTTP must be True or False, not {insecure!r}.")
    hosts = values["MAILOAUTH_ALLOWED_PRIVATE_HOSTS"]
    if hosts is None:
        hosts = ()
    if not isinstance(hosts, str) and not (
        isinstance(hosts, list | tuple | set | frozenset) and all(isinstance(h, str) for h in hosts)
    ):
        raise SetupError(
            "MAILOAUTH_ALLOWED_PRIVATE_HOSTS must be host names and CIDR networks, as a list or a "
            f"comma- or space-separated string; got {hosts!r}."
        )
    _whole(values, "MAILOAUTH_MAX_RESPONSE_BYTES", minimum=1)
    _ca_bundle(values["MAILOAUTH_CA_BUNDLE"])
    return OutboundPolicy.from_config(
        {
            **values,
            "MAILOAUTH_ALLOW_INSECURE_HTTP": bool(insecure),
            "MAILOAUTH_ALLOWED_PRIVATE_HOSTS": hosts,
        }
    )


def _ca_bundle(value: object) -> None:
    """Refuse a ``MAILOAUTH_CA_BUNDLE`` that is not a readable file: every IdP call would fail."""
    if value is None:
        return
    if not isinstance(value, str | os.PathLike) or not os.path.isfile(value):
        raise SetupError(
            "MAILOAUTH_CA_BUNDLE must be the path of a PEM file of CA certificates (or None for "
            f"the default CA store); {value!r} is not a file."
        )


def _days(value: object) -> tuple[int, ...]:
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise SetupError(
            "MAILOAUTH_SECRET_WARNING_DAYS must be a non-empty list of whole numbers of days "
            f"(0 or more), e.g. (30, 7); got {value!r}."
        )
    return tuple(value)


def _flash_categories(categories: object) -> Mapping[str, str]:
    """Refuse a ``MAILOAUTH_FLASH_CATEGORIES`` that would silently be ignored."""
    kinds = {k.value for k in FlashKind}
    if not isinstance(categories, dict) or not all(
        key in kinds and isinstance(value, str) and value for key, value in categories.items()
    ):
        raise SetupError(
            "MAILOAUTH_FLASH_CATEGORIES must map 'success' and/or 'error' to your flash "
            f"categories, e.g. {{'error': 'danger'}} for Bootstrap; got {categories!r}."
        )
    return MappingProxyType(dict(categories))
