"""The accounts as a monitoring system reads them: Prometheus text or OpenMetrics, for
``flask mailoauth status --format openmetrics`` and the optional metrics endpoint.

Per-account gauges come from the database (:func:`~flask_mailoauth.health.health`), so every
process and host reports the same; the endpoint adds this process's token request counts
(:mod:`.metrics`). Label values are the account's ``key``, ``purpose`` and ``provider``: never
an address or a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.registry import Collector

from .health import AccountHealth
from .metrics import RefreshMetrics
from .vocabulary import CredentialStatus

#: the ``Accept`` value that asks :func:`scrape` for OpenMetrics
ASK_OPENMETRICS = OPENMETRICS
#: the labels that name an account in every per-account metric
ACCOUNT_LABELS = ("key", "purpose", "provider")
_SECONDS_PER_DAY = 86400


class AccountCollector(Collector):
    """Per-account gauges, read from ``accounts()`` at each scrape; ``now()`` is the clock."""

    def __init__(
        self, accounts: Callable[[], Iterable[AccountHealth]], now: Callable[[], datetime]
    ) -> None:
        self._accounts, self._now = accounts, now

    def collect(self) -> Iterator[Metric]:
        """One family per measure, one sample per account (absent where it has no value)."""
        now = self._now()
        status = _gauge(
            "mailoauth_account_status",
            "1 for the account's token status, 0 for the others.",
            extra=("status",),
        )
        enabled = _gauge("mailoauth_account_enabled", "1 when the account is enabled.")
        attention = _gauge(
            "mailoauth_account_needs_attention",
            "1 when an enabled account has a warning or a status other than active.",
        )
        expires = _gauge(
            "mailoauth_access_token_expires_in_seconds",
            "Seconds until the access token expires (negative: expired).",
        )
        age = _gauge(
            "mailoauth_refresh_token_age_seconds", "Seconds since the refresh token was issued."
        )
        failures = _gauge("mailoauth_refresh_failures", "Refresh attempts failed in a row.")
        secret = _gauge(
            "mailoauth_client_secret_expires_in_days",
            "Days until the client secret's end date (negative: expired).",
        )
        for h in self._accounts():
            labels = [h.key, h.purpose, h.provider]
            for value in CredentialStatus:
                status.add_metric([*labels, value.value], 1.0 if h.status == value else 0.0)
            enabled.add_metric(labels, float(h.enabled))
            attention.add_metric(labels, float(h.needs_attention))
            failures.add_metric(labels, float(h.failure_count))
            if h.expires_at is not None:
                expires.add_metric(labels, (h.expires_at - now).total_seconds())
            if h.refresh_token_issued_at is not None:
                age.add_metric(labels, (now - h.refresh_token_issued_at).total_seconds())
            if h.secret_expires_on is not None:
                secret.add_metric(labels, float((h.secret_expires_on - now.date()).days))
        yield from (status, enabled, attention, expires, age, failures, secret)


def _gauge(name: str, documentation: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=[*ACCOUNT_LABELS, *extra])


class _Counted(Collector):
    """A process's :class:`RefreshMetrics` as one collector of a scrape's registry."""

    def __init__(self, metrics: RefreshMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics.registry.collect())


def scrape(
    accounts: AccountCollector, counted: RefreshMetrics | None, accept: str | None
) -> tuple[bytes, str]:
    """The body and content type of one scrape: the account gauges, and ``counted`` (this
    process's token requests) when given, in the format ``accept`` asks for (OpenMetrics for
    ``application/openmetrics-text``, as Prometheus asks; the Prometheus text format else)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(accounts)
    if counted is not None:
        registry.register(_Counted(counted))
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type
