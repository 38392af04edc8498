"""Hot path: ``access_token()`` on a valid token vs Flask-Dance's ``SQLAlchemyStorage.get``.

Both read a token from the same database through the same Flask-SQLAlchemy ``db``. Calls are
timed in batches, alternating the two, and the median batch gives the time per call; SQL
statements are counted with a ``before_cursor_execute`` listener.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .common import (
    Bench,
    Grant,
    Row,
    StatementCounter,
    add_accounts,
    fmt_ms,
    fmt_ratio,
    generic_config,
    make_app,
    median,
)


@dataclass(frozen=True)
class HotPathResult:
    calls: int
    per_call: float  # seconds, median over batches
    baseline_per_call: float
    first_call_statements: int
    steady_statements: int  # over ``calls`` calls after the first
    baseline_statements: int  # over ``calls`` calls

    @property
    def speedup(self) -> float:
        return self.baseline_per_call / self.per_call


def _flask_dance(bench: Bench):
    """A Flask-Dance OAuthConsumerMixin model and blueprint on the host's ``db``."""
    from flask_dance.consumer import OAuth2ConsumerBlueprint
    from flask_dance.consumer.storage.sqla import OAuthConsumerMixin, SQLAlchemyStorage

    db = bench.db

    class OAuth(OAuthConsumerMixin, db.Model):
        pass

    storage = SQLAlchemyStorage(OAuth, db.session)
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
    return OAuth, storage, blueprint


def measure(db_url: str, calls: int = 10_000, batch: int = 100) -> HotPathResult:
    bench = make_app(db_url, create=False)
    model, storage, blueprint = _flask_dance(bench)
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
    ours: list[float] = []
    theirs: list[float] = []
    with bench.app.app_context(), StatementCounter(bench.db.engine) as counter:
        assert ext.access_token("support") == "at-0"
        first = counter.count
        assert storage.get(blueprint)["access_token"] == "at-flask-dance"
        counter.reset()
        steady = baseline_statements = 0
        for _ in range(batches):
            started = time.perf_counter()
            for _ in range(batch):
                ext.access_token("support")
            ours.append((time.perf_counter() - started) / batch)
            steady += counter.count
            counter.reset()

            started = time.perf_counter()
            for _ in range(batch):
                storage.get(blueprint)
            theirs.append((time.perf_counter() - started) / batch)
            baseline_statements += counter.count
            counter.reset()
        bench.db.session.remove()
    with bench.app.app_context():
        bench.db.engine.dispose()
    return HotPathResult(
        calls=batches * batch,
        per_call=median(ours),
        baseline_per_call=median(theirs),
        first_call_statements=first,
        steady_statements=steady,
        baseline_statements=baseline_statements,
    )


def rows(result: HotPathResult, backend: str) -> list[Row]:
    name = f"hot path ({backend})"
    n = result.calls
    return [
        Row(
            name,
            f"access_token() per call, median of {n:,}",
            fmt_ms(result.per_call),
            f"{fmt_ms(result.baseline_per_call)} Flask-Dance get",
            f"{fmt_ratio(result.speedup)} faster",
            "several x faster",
            result.speedup >= 3,
        ),
        Row(
            name,
            "SQL statements per call, steady state",
            f"{result.steady_statements / n:g} ({result.steady_statements} in {n:,})",
            f"{result.baseline_statements / n:g} Flask-Dance get",
            "-",
            "0",
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
