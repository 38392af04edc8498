"""Issue 14 point 4: events are kept MAILOAUTH_EVENT_RETENTION_DAYS, pruned by
``flask mailoauth prune`` and after ``refresh --due``; each account keeps its latest ones."""

from __future__ import annotations

from datetime import timedelta

import pytest
import responses
import sqlalchemy as sa

from flask_mailoauth import accounts
from flask_mailoauth.models import EVENTS_SHOWN, own_session, utcnow

from .commands import run
from .oauth_fakes import TokenEndpoint
from .stored import store_account


def add_events(host, key: str, ages_in_days: list[float]) -> None:
    st_ = host.app.extensions["mailoauth"]
    m = st_.models
    with host.app.app_context(), own_session(st_.db) as s:
        account = s.scalars(sa.select(m.Account).where(m.Account.key == key)).one()
        for n, age in enumerate(ages_in_days):
            at = utcnow() - timedelta(days=age)
            s.add(m.Event(account_id=account.id, kind="refreshed", message=f"{key} {n}", at=at))


def messages(host, key: str) -> list[str]:
    st_ = host.app.extensions["mailoauth"]
    m = st_.models
    with host.app.app_context(), own_session(st_.db) as s:
        query = sa.select(m.Event.message).join(m.Account).where(m.Account.key == key)
        return list(s.scalars(query.order_by(m.Event.at.desc(), m.Event.id.desc())))


@pytest.fixture
def busy(make_host, db_url):
    """Two accounts: "support" with 15 events 100-114 days old and 2 recent ones, "sales" with
    3 events 200 days old."""
    host = make_host(db_url=db_url)
    host.mailboxes["sales"] = host.mailboxes["support"]
    store_account(host)
    store_account(host, key="sales")
    add_events(host, "support", [100 + n for n in range(15)] + [1, 0.5])
    add_events(host, "sales", [200, 201, 202])
    return host


def test_prune_deletes_old_events_but_keeps_each_accounts_latest(busy):
    result = run(busy, "prune")
    assert result.exit_code == 0, result.output
    # support: 17 events, the latest 10 are the 2 recent and the 8 youngest old ones
    assert result.output.strip() == "Deleted 7 events older than 90 days."
    kept = messages(busy, "support")
    assert kept == ["support 16", "support 15"] + [f"support {n}" for n in range(8)]
    assert len(kept) == EVENTS_SHOWN
    assert messages(busy, "sales") == ["sales 0", "sales 1", "sales 2"]
    # the Token tab still shows the latest events
    st_ = busy.app.extensions["mailoauth"]
    with busy.app.test_request_context():
        shown = accounts.view(st_, "support", "mailbox", "support@example.test", None).events
    assert [e.message for e in shown] == kept
    assert run(busy, "prune").output.strip() == "Deleted 0 events older than 90 days."


def test_prune_days_and_keeping_forever(make_host, db_url):
    host = make_host(db_url=db_url, MAILOAUTH_EVENT_RETENTION_DAYS=0)
    store_account(host)
    add_events(host, "support", [400 + n for n in range(12)])
    result = run(host, "prune")
    assert "kept forever" in result.output
    assert len(messages(host, "support")) == 12
    assert run(host, "prune", "--days", "30").output.strip() == (
        "Deleted 2 events older than 30 days."
    )
    assert run(host, "prune", "--days", "0").exit_code == 2


def test_refresh_due_prunes_after_its_run(make_host, db_url):
    host = make_host(db_url=db_url, MAILOAUTH_EVENT_RETENTION_DAYS=30)
    store_account(host, expires_in=-10)
    add_events(host, "support", [40 + n for n in range(12)])
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock)
        result = run(host, "refresh", "--due")
    assert result.exit_code == 0, result.output
    assert len(idp.calls) == 1
    lines = result.output.strip().splitlines()
    assert lines[0] == "Refreshed 1 of 1 account(s)."
    assert lines[1] == "Deleted 3 events older than 30 days."  # 13 events, the latest 10 stay
    assert messages(host, "support")[0].startswith("Access token refreshed")
    # a single refresh does not prune
    assert "Deleted" not in run(host, "refresh", "support").output


def test_the_event_index_serves_an_accounts_latest_events(make_host, db_url):
    host = make_host(db_url=db_url)
    with host.app.app_context():
        indexes = sa.inspect(host.db.engine).get_indexes("mailoauth_event")
    columns = {tuple(ix["column_names"]) for ix in indexes}
    assert ("account_id", "at") in columns
