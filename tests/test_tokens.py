"""access_token(): cache, refresh, rotation, one refresh for many callers, failures classified."""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta

import pytest
import requests
import responses
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_mailoauth import signals
from flask_mailoauth.config import Config
from flask_mailoauth.errors import (
    AccountDisabled,
    ConfigurationError,
    NotConfigured,
    ReauthorizationRequired,
    TemporarilyUnavailable,
)
from flask_mailoauth.models import own_session, utcnow
from flask_mailoauth.tokens import _Ready, _Refreshed, backoff

from .oauth_fakes import TokenEndpoint
from .stored import credential, events, store_account, token, tokens_at_once

MS_TOKEN_URL = "https://login.microsoftonline.com/common/oauth2/v2.0/token"


@pytest.fixture
def idp():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield TokenEndpoint(mock)


@contextmanager
def statements(host):
    """Count SQL statements sent by the host's engine."""
    seen: list[str] = []
    with host.app.app_context():
        engine = host.db.engine

        def listen(conn, cursor, statement, *args):
            seen.append(statement)

        sa.event.listen(engine, "before_cursor_execute", listen)
        try:
            yield seen
        finally:
            sa.event.remove(engine, "before_cursor_execute", listen)


# -- valid tokens: no refresh, no SQL in steady state -------------------------------------------


def test_valid_token_costs_one_statement_then_none(host, idp):
    store_account(host)
    with statements(host) as seen:
        assert token(host) == "at-0"
    assert len(seen) == 1
    with statements(host) as seen:
        for _ in range(100):
            assert token(host) == "at-0"
    assert seen == []
    assert idp.calls == []


def test_cache_ttl_bounds_staleness(make_host, idp):
    host = make_host(MAILOAUTH_CACHE_TTL=0)
    store_account(host)
    token(host)
    with statements(host) as seen:
        token(host)
    assert len(seen) == 1


def test_deleting_the_token_drops_it_from_the_cache(host, idp):
    from flask_mailoauth import accounts

    store_account(host)
    token(host)
    with host.app.app_context():
        accounts.delete_token(host.app.extensions["mailoauth"], "support", "mailbox")
    with pytest.raises(NotConfigured, match="configure and authorize"):
        token(host)


def test_unusable_accounts_raise_typed_errors(host, idp):
    with pytest.raises(NotConfigured):
        token(host)
    store_account(host)
    st_ = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st_.db) as s:
        s.scalars(sa.select(st_.models.Account)).one().enabled = False
    with pytest.raises(AccountDisabled):
        token(host)
    with host.app.app_context(), own_session(st_.db) as s:
        account = s.scalars(sa.select(st_.models.Account)).one()
        account.enabled = True
        account.config_signature = "changed"
    with pytest.raises(ReauthorizationRequired, match="IdP Config changed"):
        token(host)
    with pytest.raises(ValueError, match="purpose"):
        token(host, purpose="fax")


# -- refresh -------------------------------------------------------------------------------------


def test_token_within_the_leeway_is_refreshed_and_rotation_stored(host, idp):
    got = []
    signals.refreshed.connect(lambda sender, **kw: got.append(kw), weak=False)
    store_account(host, expires_in=200)
    assert token(host) == "at-1"
    sent = idp.calls[-1]
    assert sent["grant_type"] == ["refresh_token"]
    assert sent["refresh_token"] == ["rt-0"]
    assert sent["client_secret"] == ["client-secret"]
    cred, access, refresh = credential(host)
    assert (access, refresh) == ("at-1", "rt-1")
    assert cred.refreshed_at is not None
    assert cred.refresh_token_issued_at == cred.refreshed_at
    assert cred.expires_at > utcnow() + timedelta(seconds=3500)
    assert ("refreshed", None) in events(host)
    assert got[-1]["key"] == "support"
    assert token(host) == "at-1"
    assert len(idp.calls) == 1


def test_refresh_without_a_new_refresh_token_keeps_the_old_one(host, idp):
    store_account(host, expires_in=-10)
    idp.answers.append(("keep", 3600))
    assert token(host) == "at-1"
    cred, _, refresh = credential(host)
    assert refresh == "rt-0"
    assert cred.refresh_token_issued_at < cred.refreshed_at


def test_microsoft_refresh_sends_scope_and_tolerates_a_narrower_one(host):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, MS_TOKEN_URL)
        store_account(host, provider="microsoft", expires_in=10)
        assert token(host) == "at-1"
        scope = idp.calls[-1]["scope"][0].split()
        assert "offline_access" in scope
        assert "https://outlook.office.com/IMAP.AccessAsUser.All" in scope


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        ("error", (503, {"error": "temporarily_unavailable"}, {})),
        ("error", (500, {}, {})),
        ("raise", requests.ConnectTimeout("slow")),
        ("raise", requests.ConnectionError("down")),
    ],
)
def test_transient_failure_keeps_credentials_and_returns_the_still_valid_token(host, idp, answer):
    store_account(host, expires_in=100)
    failed = []
    signals.refresh_failed.connect(lambda sender, **kw: failed.append(kw), weak=False)
    idp.answers.append(answer)
    assert token(host) == "at-0"
    cred, access, refresh = credential(host)
    assert (access, refresh) == ("at-0", "rt-0")
    assert cred.status == "retrying"
    assert cred.failure_count == 1
    assert cred.next_retry_at > utcnow()
    assert failed[-1]["failure"].kind == "transient"
    assert token(host) == "at-0"
    assert len(idp.calls) == 1, "no retry before the backoff ends"
    assert events(host)[-1][0] == "refresh_failed"


def test_transient_failure_with_an_expired_token_says_when_it_retries(host, idp):
    store_account(host, expires_in=-5)
    idp.answers.append(("error", (429, {"error": "slow_down"}, {"Retry-After": "120"})))
    with pytest.raises(TemporarilyUnavailable) as info:
        token(host)
    assert info.value.retry_at >= utcnow() + timedelta(seconds=115)
    _cred, _, refresh = credential(host)
    assert refresh == "rt-0"


def test_backoff_is_exponential_jittered_and_capped():
    config = Config.from_mapping({"MAILOAUTH_RETRY_BASE": 30, "MAILOAUTH_RETRY_MAX": 3600})
    for failures, ceiling in [(1, 30), (2, 60), (3, 120), (10, 3600), (30, 3600)]:
        values = [backoff(failures, None, config) for _ in range(50)]
        assert all(ceiling / 2 <= v <= ceiling for v in values)
        assert len(set(values)) > 1
    assert backoff(1, 900, config) == 900


def test_refresh_now_ignores_the_backoff_and_recovers(host, idp):
    store_account(host, expires_in=-5)
    idp.answers.append(("error", (503, {}, {})))
    with pytest.raises(TemporarilyUnavailable):
        token(host)
    with host.app.app_context():
        assert host.ext.refresh("support") == "at-1"
    cred, _, _ = credential(host)
    assert (cred.status, cred.failure_count, cred.next_retry_at) == ("active", 0, None)


def test_invalid_grant_requires_reauthorization_and_stops_retrying(host):
    required = []
    signals.reauthorization_required.connect(lambda sender, **kw: required.append(kw), weak=False)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, MS_TOKEN_URL)
        store_account(host, provider="microsoft", expires_in=-5)
        body = {
            "error": "invalid_grant",
            "error_codes": [700082],
            "error_description": "AADSTS700082: The refresh token has expired due to inactivity.",
        }
        idp.answers.append(("error", (400, body, {})))
        with pytest.raises(ReauthorizationRequired, match="AADSTS700082"):
            token(host)
        with pytest.raises(ReauthorizationRequired):
            token(host)
        assert len(idp.calls) == 1
    cred, access, refresh = credential(host)
    assert (access, refresh) == ("at-0", "rt-0"), "nothing is deleted by a failure"
    assert cred.status == "reauthorization_required"
    assert cred.last_error_code == "AADSTS700082"
    assert required[-1]["failure"].code == "AADSTS700082"
    assert events(host)[-1] == ("refresh_failed", "AADSTS700082")


def test_expired_client_secret_is_a_configuration_error_with_the_fix(host):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, MS_TOKEN_URL)
        store_account(host, provider="microsoft", expires_in=-5)
        idp.answers.append(
            (
                "error",
                (
                    401,
                    {
                        "error": "invalid_client",
                        "error_codes": [7000222],
                        "error_description": "AADSTS7000222: expired",
                    },
                    {},
                ),
            )
        )
        with pytest.raises(ConfigurationError, match="AADSTS7000222"):
            token(host)
    cred, _, refresh = credential(host)
    assert cred.status == "configuration_error"
    assert refresh == "rt-0"
    assert "secret" in cred.last_error.lower()


def test_a_garbage_answer_is_transient_and_loses_nothing(host, idp):
    store_account(host, expires_in=100)
    idp.answers.append(("error", (200, ["not", "an", "object"], {})))
    assert token(host) == "at-0"
    assert credential(host)[2] == "rt-0"


# -- one refresh for many callers ---------------------------------------------------------------


def test_concurrent_callers_cause_exactly_one_refresh(make_host, tmp_path):
    host = make_host(db_url=f"sqlite:///{tmp_path / 'race.db'}")
    store_account(host, expires_in=-5)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, delay=0.2)
        results = tokens_at_once(host)
    assert len(idp.calls) == 1
    assert results == ["at-1"] * 16


def test_a_token_living_less_than_the_leeway_is_used_for_half_its_life(host, idp):
    """Keycloak's access tokens live 300 s by default, the default leeway: without a cap on the
    leeway, such a token would be due as soon as issued and every call would refresh."""
    store_account(host, expires_in=300, issued_at=utcnow())
    assert token(host) == "at-0"
    assert idp.calls == []
    st_ = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st_.db) as s:
        cred = s.scalars(sa.select(st_.models.Credential)).one()
        cred.issued_at = utcnow() - timedelta(seconds=200)
        cred.expires_at = utcnow() + timedelta(seconds=100)
    st_.cache.clear()  # as another process's change, seen after MAILOAUTH_CACHE_TTL
    assert token(host) == "at-1"  # a third of its life left: refreshed before use
    assert len(idp.calls) == 1


def test_concurrent_callers_refresh_a_short_lived_token_once(make_host, tmp_path):
    host = make_host(db_url=f"sqlite:///{tmp_path / 'short.db'}")
    store_account(host, expires_in=-5)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, delay=0.2)
        for _ in range(16):
            idp.rotate(lifetime=120)  # shorter than the 300 s leeway
        results = tokens_at_once(host)
    assert len(idp.calls) == 1
    assert results == ["at-1"] * 16


# -- no sequence of outcomes loses the refresh token --------------------------------------------

OUTCOMES = st.sampled_from(
    [
        ("rotate", 3600),
        ("keep", 3600),
        ("error", (503, {"error": "server_error"}, {})),
        ("error", (429, {}, {"Retry-After": "1"})),
        ("raise", requests.ReadTimeout("slow")),
        ("error", (200, {"no": "token"}, {})),
        ("error", (400, {"error": "invalid_grant"}, {})),
        ("error", (401, {"error": "invalid_client"}, {})),
    ]
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(outcomes=st.lists(OUTCOMES, min_size=1, max_size=8))
def test_no_sequence_of_refresh_outcomes_loses_the_refresh_token(make_host, tmp_path, outcomes):
    host = make_host(db_url=f"sqlite:///{tmp_path / uuid.uuid4().hex}.db")
    store_account(host, expires_in=-5)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock)
        latest = "rt-0"
        for outcome in outcomes:
            idp.answers[:] = [outcome]
            calls = len(idp.calls)
            try:
                with host.app.app_context():
                    host.ext.refresh("support")
            except (TemporarilyUnavailable, ReauthorizationRequired, ConfigurationError):
                pass
            if outcome[0] == "rotate" and len(idp.calls) > calls:
                latest = f"rt-{idp.issued}"
            assert credential(host)[2] == latest


# -- the refresh lease: no database lock while the IdP answers ----------------------------------


def test_two_processes_sharing_one_database_cause_one_refresh(make_host, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    one, two = make_host(db_url=url), make_host(db_url=url)  # two app states: two "processes"
    store_account(one, expires_in=-5)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, delay=0.3)
        results = tokens_at_once(one, two)
    assert len(idp.calls) == 1
    assert results == ["at-1"] * 16


def test_the_hosts_writes_go_on_while_the_idp_answers(make_host, tmp_path):
    import sqlite3

    path = tmp_path / "busy.db"
    host = make_host(db_url=f"sqlite:///{path}")
    store_account(host, expires_in=-5)
    with sqlite3.connect(path) as setup:
        setup.execute("create table tickets (subject text)")
    written = []

    def host_writes():
        time.sleep(0.3)  # the refresh is waiting for the IdP now
        conn = sqlite3.connect(path, timeout=0.2)
        try:
            with conn:
                conn.execute("insert into tickets values ('written during the refresh')")
            written.append(True)
        finally:
            conn.close()

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        TokenEndpoint(mock, delay=1.0)
        writer = threading.Thread(target=host_writes)
        writer.start()
        assert token(host) == "at-1"
        writer.join()
    assert written == [True]


def test_a_result_arriving_after_a_reauthorization_is_dropped(host):
    store_account(host, expires_in=-5)
    st_ = host.app.extensions["mailoauth"]

    def admin_reauthorizes():
        with host.app.app_context(), own_session(st_.db) as s:
            cred = s.scalars(sa.select(st_.models.Credential)).one()
            st_.seal(cred, "access_token", "at-from-the-new-consent")
            st_.seal(cred, "refresh_token", "rt-from-the-new-consent")
            cred.expires_at = utcnow() + timedelta(hours=1)
            cred.refresh_lease_until = None
            cred.version += 1

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, before=admin_reauthorizes)
        assert token(host) == "at-from-the-new-consent"
        assert len(idp.calls) == 1
    assert credential(host)[2] == "rt-from-the-new-consent"


def test_a_dead_workers_lease_delays_callers_until_it_runs_out(make_host, idp):
    host = make_host(MAILOAUTH_LOCK_TIMEOUT=0.3)
    store_account(host, expires_in=-5)
    update = {"refresh_lease_until": utcnow() + timedelta(seconds=1)}
    st_ = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st_.db) as s:
        cred = s.scalars(sa.select(st_.models.Credential)).one()
        for name, value in update.items():
            setattr(cred, name, value)
    with pytest.raises(TemporarilyUnavailable, match="another worker"):
        token(host)
    assert idp.calls == []
    time.sleep(1.1)
    assert token(host) == "at-1"
    cred, _, _ = credential(host)
    assert cred.refresh_lease_until is None


def test_an_explicit_refresh_reports_a_transient_failure_access_token_keeps_serving(host, idp):
    store_account(host, expires_in=3600)
    idp.answers.append(("error", (503, {"error": "temporarily_unavailable"}, {})))
    with host.app.app_context(), pytest.raises(TemporarilyUnavailable, match="unavailable"):
        host.ext.refresh("support")
    assert token(host) == "at-0"
    assert credential(host)[0].status == "retrying"


def test_the_refresh_results_keep_the_token_out_of_the_repr():
    shown = repr(_Ready("ACCESS-TOKEN")) + repr(_Refreshed("ACCESS-TOKEN", asked_idp=True))
    assert "ACCESS-TOKEN" not in shown
    assert "asked_idp=True" in shown
