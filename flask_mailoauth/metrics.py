"""What this process counted about token requests: counts and durations by provider and
outcome, in a registry of the app's own (Prometheus client library).

A host may use the library's global registry for its own metrics; these never land in it.
Counts are per process, as every Prometheus client's are: scrape each worker, or read the
per-account gauges (:mod:`.monitoring`), which come from the database and agree everywhere.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from .vocabulary import EventKind, FailureKind

#: the ``outcome`` label of a token request the IdP answered with a token; a failed one is
#: labelled with its :class:`~flask_mailoauth.vocabulary.FailureKind`
SUCCESS = EventKind.REFRESHED.value
#: every ``outcome`` label value
OUTCOMES = (SUCCESS, *(kind.value for kind in FailureKind))
#: the duration histogram's buckets (seconds): a local IdP answers in milliseconds, a slow
#: one within the token request's timeout
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RefreshMetrics:
    """Token requests of the refresh path (refresh, client credentials, service account)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._count = Counter(
            "mailoauth_refreshes",
            "Token requests of the refresh path, by provider and outcome (this process).",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            "mailoauth_refresh_duration_seconds",
            "Time the IdP took to answer a token request, by provider and outcome (this process).",
            ["provider", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )

    def observe(self, provider: str, outcome: str, seconds: float) -> None:
        """Count one token request of ``provider`` that ended with ``outcome``."""
        self._count.labels(provider, outcome).inc()
        self._seconds.labels(provider, outcome).observe(seconds)
