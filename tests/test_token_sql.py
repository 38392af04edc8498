"""Issue 14 point 2: the SQL of one refresh, counted with ``before_cursor_execute``, on SQLite
and PostgreSQL; the lock timeouts are set once per connection and never reach the host."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import responses
import sqlalchemy as sa

from flask_mailoauth import tokens
from flask_mailoauth.models import own_session

from .oauth_fakes import TokenEndpoint
from .stored import credential, events, store_account, token, tokens_at_once

#: statements per refresh at most (issue 14): the read, the claim, the store
TARGET = {"sqlite": 5, "postgresql": 3}


@pytest.fixture
def idp() -> Iterator[TokenEndpoint]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield TokenEndpoint(mock)


@contextmanager
def sql(host) -> Iterator[list[tuple[str, object]]]:
    """Every statement the host's engine sends, with the DBAPI connection that sent it."""
    seen: list[tuple[str, object]] = []

    def listen(conn, cursor, statement, *args):
        seen.append((statement, conn.connection.dbapi_connection))

    with host.app.app_context():
        engine = host.db.engine
        sa.event.listen(engine, "before_cursor_execute", listen)
        try:
            yield seen
        finally:
            sa.event.remove(engine, "before_cursor_execute", listen)


def verbs(seen: list[tuple[str, object]]) -> list[str]:
    return [statement.split(None, 1)[0].upper() for statement, _ in seen]


def test_a_refresh_costs_a_read_a_claim_and_a_store(make_host, db_url, idp):
    host = make_host(db_url=db_url)
    dialect = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    store_account(host, expires_in=-10)
    with sql(host) as seen:
        assert token(host) == "at-1"
    assert len(idp.calls) == 1
    assert len(seen) <= TARGET[dialect], verbs(seen)
    # the read, the lease claimed by a guarded UPDATE ... RETURNING, the answer stored
    store = ["WITH"] if dialect == "postgresql" else ["UPDATE", "INSERT"]
    assert verbs(seen) == ["SELECT", "UPDATE", *store]
    assert "RETURNING" in seen[1][0]
    assert credential(host)[0].refresh_lease_until is None
    assert events(host) == [("refreshed", None)]


def test_an_explicit_refresh_and_a_failure_stay_within_the_target(make_host, db_url, idp):
    host = make_host(db_url=db_url)
    dialect = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    store_account(host)
    idp.answers.append(("error", (503, {"error": "temporarily_unavailable"}, {})))
    st_ = host.app.extensions["mailoauth"]
    with sql(host) as seen, pytest.raises(tokens.TemporarilyUnavailable):
        tokens.refresh(st_, "support", "mailbox")
    assert len(seen) <= TARGET[dialect], verbs(seen)
    with sql(host) as seen:
        assert tokens.refresh(st_, "support", "mailbox") == "at-1"
    assert len(seen) <= TARGET[dialect], verbs(seen)
    assert [kind for kind, _ in events(host)] == ["refresh_failed", "refreshed"]


def test_a_late_answer_is_dropped_by_the_guarded_update(make_host, db_url, idp, monkeypatch):
    """The store matches no row once the credential changed during the IdP call (an admin's
    change): nothing of the first answer is written; the caller reads again and refreshes."""
    host = make_host(db_url=db_url)
    store_account(host, expires_in=-10)
    st_ = host.app.extensions["mailoauth"]
    table = st_.models.Credential.__table__
    real = tokens._ask_idp

    def changed_meanwhile(claim, config):
        answer = real(claim, config)
        if len(idp.calls) == 1:
            with own_session(st_.db) as s:
                s.execute(sa.update(table).values(version=table.c.version + 1))
        return answer

    monkeypatch.setattr(tokens, "_ask_idp", changed_meanwhile)
    assert token(host) == "at-2"
    assert len(idp.calls) == 2
    assert credential(host)[2] == "rt-2"
    assert events(host) == [("refreshed", None)]


def server_timeout(host) -> str:
    """The lock timeout a host session sees: PostgreSQL's lock_timeout, SQLite's busy_timeout."""
    with host.app.app_context():
        conn = host.db.session.connection()
        if conn.dialect.name == "postgresql":
            value = str(conn.exec_driver_sql("SHOW lock_timeout").scalar())
        else:
            value = str(conn.exec_driver_sql("PRAGMA busy_timeout").scalar())
        used = conn.connection.dbapi_connection
        host.db.session.remove()
        return value, used


def test_the_lock_timeout_is_set_once_per_connection_and_never_reaches_the_host(
    make_host, db_url, idp
):
    host = make_host(db_url=db_url, MAILOAUTH_LOCK_TIMEOUT=7, SQLALCHEMY_ENGINE_OPTIONS={})
    default, _ = server_timeout(host)
    assert default not in ("7000", "7s")
    store_account(host, expires_in=-10)
    with sql(host) as seen:
        assert token(host) == "at-1"
    ours = {connection for _, connection in seen}
    # the extension's sessions ran with its timeout, set on the connection itself
    with host.app.app_context():
        st_ = host.app.extensions["mailoauth"]
        with own_session(st_.db, lock_timeout=7) as s:
            conn = s.connection()
            show = (
                "SHOW lock_timeout" if conn.dialect.name == "postgresql" else "PRAGMA busy_timeout"
            )
            assert str(conn.exec_driver_sql(show).scalar()) in ("7000", "7s")
    # the host's next session gets a connection the refresh used, with the server's default
    value, used = server_timeout(host)
    assert used in ours
    assert value == default
    # and the extension's next refresh sets it again, without a statement of its own
    store_account(host, expires_in=-10, key="other")
    with sql(host) as seen:
        assert token(host, key="other") == "at-2"
    assert len(seen) == len(["SELECT", "UPDATE"]) + (1 if db_url.startswith("postgresql") else 2)


def test_threads_of_a_process_that_miss_the_cache_together_share_one_read(make_host, idp):
    """A storm's threads cost one read (and one connection) per process, not one each."""
    host = make_host()
    store_account(host)
    with sql(host) as seen:
        with host.app.app_context():

            def slow_read(*args):
                time.sleep(0.3)  # every thread arrives while the first read is under way

            sa.event.listen(host.db.engine, "before_cursor_execute", slow_read)
        results = tokens_at_once(host)
        with host.app.app_context():
            sa.event.remove(host.db.engine, "before_cursor_execute", slow_read)
    assert results == ["at-0"] * 16
    assert verbs(seen) == ["SELECT"]
