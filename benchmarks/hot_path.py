"""Hot path: ``access_token()`` on a valid token vs Flask-Dance's ``SQLAlchemyStorage.get``.

Flask-Dance is measured twice on the same database and ``db``: without a cache (its default)
and with the cache its docs recommend (Flask-Caching, ``SimpleCache``: in-process, the nearest
to the extension's own per-process cache). Calls are timed in batches, rotating the three
sides, and the table shows the time per call as median [min, max] over the batches; SQL
statements are counted with a ``before_cursor_execute`` listener. The extension's "0 SQL" holds
within ``MAILOAUTH_CACHE_TTL``; past it one statement re-reads the row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .common import (
    Bench,
    Grant,
    Row,
    Spread,
    StatementCounter,
    add_accounts,
    fmt_ratio,
    generic_config,
    make_app,
)


@dataclass(frozen=True)
class HotPathResult:
    calls: int  # per side
    batch: int
    cache_ttl: int  # MAILOAUTH_CACHE_TTL, seconds
    per_call: Spread  # seconds per call, one value per batch
    uncached_per_call: Spread  # Flask-Dance without a cache
    cached_per_call: Spread  # Flask-Dance with Flask-Caching's SimpleCache
    first_call_statements: int
    steady_statements: int  # over ``calls`` calls after the first
    uncached_statements: int  # over ``calls`` calls
    cached_statements: int  # over ``calls`` calls after a first (cold) one

    @property
    def speedup(self) -> float:
        """Flask-Dance's uncached time per call over ours."""
        return self.uncached_per_call.median / self.per_call.median

    @property
    def cached_ratio(self) -> float:
        """Our time per call over Flask-Dance's cached one (<= 1: no slower)."""
        return self.per_call.median / self.cached_per_call.median


def _flask_dance(bench: Bench) -> tuple[Any, Any, Any, Any]:
    """A Flask-Dance OAuthConsumerMixin model and blueprint on the host's ``db``, and its
    ``SQLAlchemyStorage`` without and with a Flask-Caching ``SimpleCache``."""
    from flask_caching import Cache
    from flask_dance.consumer import OAuth2ConsumerBlueprint
    from flask_dance.consumer.storage.sqla import OAuthConsumerMixin, SQLAlchemyStorage

    db = bench.db

    class OAuth(OAuthConsumerMixin, db.Model):
        pass

    storage = SQLAlchemyStorage(OAuth, db.session)
    cache = Cache(bench.app, config={"CACHE_TYPE": "SimpleCache"})
    cached = SQLAlchemyStorage(OAuth, db.session, cache=cache)
    blueprint = OAuth2ConsumerBlueprint(
        "idp",
        __name__,
        client_id="app",
        client_secret="client-secret",
        base_url="https://idp.example.test",
        token_url="https://idp.example.test/token",
        authorization_url="https://idp.example.test/auth",
        storage=storage,
    )
    bench.app.register_blueprint(blueprint, url_prefix="/login")
    return OAuth, storage, cached, blueprint


def _timed_batch(call: Callable[[], object], batch: int, counter: StatementCounter) -> float:
    """Seconds per call over ``batch`` calls; the counter is left holding their statements."""
    counter.reset()
    started = time.perf_counter()
    for _ in range(batch):
        call()
    return (time.perf_counter() - started) / batch


def measure(db_url: str, calls: int = 10_000, batch: int = 100) -> HotPathResult:
    bench = make_app(db_url, create=False)
    model, storage, cached, blueprint = _flask_dance(bench)
    with bench.app.app_context():
        bench.db.create_all()
        bench.db.session.add(
            model(
                provider=blueprint.name,
                token={
                    "access_token": "at-flask-dance",
                    "token_type": "Bearer",
                    "expires_at": time.time() + 3600,
                },
            )
        )
        bench.db.session.commit()
    add_accounts(
        bench, generic_config(None, "app"), "client-secret", [Grant("support", "at-0", "rt-0")]
    )

    ext = bench.ext
    batches = max(1, calls // batch)
    sides: dict[str, Callable[[], object]] = {
        "ours": lambda: ext.access_token("support"),
        "uncached": lambda: storage.get(blueprint),
        "cached": lambda: cached.get(blueprint),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    statements = dict.fromkeys(sides, 0)
    with bench.app.app_context(), StatementCounter(bench.db.engine) as counter:
        assert ext.access_token("support") == "at-0"
        first = counter.count
        assert storage.get(blueprint)["access_token"] == "at-flask-dance"
        assert cached.get(blueprint)["access_token"] == "at-flask-dance"  # fills the cache
        for _ in range(batches):
            for name, call in sides.items():
                times[name].append(_timed_batch(call, batch, counter))
                statements[name] += counter.count
        bench.db.session.remove()
    with bench.app.app_context():
        bench.db.engine.dispose()
    return HotPathResult(
        calls=batches * batch,
        batch=batch,
        cache_ttl=bench.st.config.cache_ttl,
        per_call=Spread.of(times["ours"]),
        uncached_per_call=Spread.of(times["uncached"]),
        cached_per_call=Spread.of(times["cached"]),
        first_call_statements=first,
        steady_statements=statements["ours"],
        uncached_statements=statements["uncached"],
        cached_statements=statements["cached"],
    )


def rows(result: HotPathResult, backend: str) -> list[Row]:
    name = f"hot path ({backend})"
    n = result.calls
    per_call = f"access_token() per call, {n // result.batch} batches of {result.batch}"
    ttl = f"within MAILOAUTH_CACHE_TTL ({result.cache_ttl} s)"
    return [
        Row(
            name,
            per_call,
            result.per_call.fmt(),
            f"{result.uncached_per_call.fmt()} Flask-Dance get, no cache",
            f"{fmt_ratio(result.speedup)} faster",
            "-",
            None,
        ),
        Row(
            name,
            per_call,
            result.per_call.fmt(),
            f"{result.cached_per_call.fmt()} Flask-Dance get, SimpleCache",
            f"{fmt_ratio(result.cached_ratio)} the time",
            "no slower",
            result.cached_ratio <= 1,
        ),
        Row(
            name,
            "SQL statements per call, steady state",
            f"0 {ttl}" if result.steady_statements == 0 else f"{result.steady_statements / n:g}",
            f"{result.uncached_statements / n:g} no cache, "
            f"{result.cached_statements / n:g} SimpleCache",
            "-",
            f"0 {ttl}",
            result.steady_statements == 0,
        ),
        Row(
            name,
            "SQL statements, first call (cold cache)",
            str(result.first_call_statements),
            "-",
            "-",
            "<= 1",
            result.first_call_statements <= 1,
        ),
    ]
