"""Faults around a refresh, on SQLite and PostgreSQL: crashes, a slow rotating IdP, a locked or
stopped database, a clock jump, many callers while one worker refreshes.

The IdP here is the scripted ``oauth_fakes.TokenEndpoint`` (``responses``), made strict
where it matters: ``RotatingIdP`` refuses a refresh token it already rotated.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from datetime import timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs

import jwt
import pytest
import responses
import sqlalchemy as sa
import time_machine

from flask_mailoauth import signals, tokens
from flask_mailoauth.errors import (
    MailOAuthError,
    ReauthorizationRequired,
    TemporarilyUnavailable,
)
from flask_mailoauth.health import health
from flask_mailoauth.models import own_session, utcnow
from flask_mailoauth.providers import registry

from .faults import TcpProxy, row_locked
from .oauth_fakes import TOKEN_URL, TokenEndpoint
from .stored import GENERIC, credential, events, store_account, token, tokens_at_once


def set_credential(host, **values):
    """Change the stored credential behind the extension's back, as another process would."""
    st_ = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st_.db) as s:
        cred = s.scalars(sa.select(st_.models.Credential)).one()
        for name, value in values.items():
            setattr(cred, name, value)


def refresh_now(host):
    with host.app.app_context():
        return host.ext.refresh("support")


def wait_for(condition, seconds=10.0):
    until = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < until, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def idp():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield TokenEndpoint(mock)


# -- the lease is released on every path ---------------------------------------------------------


def test_an_exception_in_the_idp_call_releases_the_lease(make_host, db_url, idp, caplog):
    host = make_host(db_url=db_url)
    store_account(host, expires_in=3600)
    idp.answers.append(("raise", RuntimeError("a bug in the transport, quoting rt-0")))
    with pytest.raises(TemporarilyUnavailable, match="RuntimeError") as excinfo:
        refresh_now(host)
    assert "rt-0" not in str(excinfo.value) + caplog.text
    cred = credential(host)[0]
    assert cred.refresh_lease_until is None
    # a typed, classified failure, recorded with backoff like any other
    assert (cred.status, cred.failure_count, cred.last_error_code) == (
        "retrying",
        1,
        "unexpected_error",
    )
    assert cred.next_retry_at > utcnow()
    assert refresh_now(host) == "at-1"  # really refreshed: the IdP was asked
    assert len(idp.calls) == 2


def test_an_exception_in_a_provider_hook_is_a_recorded_failure(make_host, db_url, idp, monkeypatch):
    host = make_host(db_url=db_url)
    store_account(host, expires_in=-5)

    def broken(config):
        raise ValueError("a bug in a provider plugin")

    monkeypatch.setattr(registry.get("generic"), "refresh_params", broken)
    with pytest.raises(TemporarilyUnavailable, match="ValueError"):
        token(host)
    cred = credential(host)[0]
    assert (cred.refresh_lease_until, cred.failure_count) == (None, 1)
    assert idp.calls == []


# Each answer once cost an OverflowError, a TypeError or a UnicodeError out of access_token().
HOSTILE_REFRESHES = {
    "huge exp": ("token", {"access_token": jwt.encode({"exp": 10**400}, "k" * 32)}),
    "huge iat": ("token", {"access_token": jwt.encode({"iat": -(10**400)}, "k" * 32)}),
    "Retry-After 1e300": ("error", (503, {}, {"Retry-After": "1e300"})),
    "Retry-After 99999999999": ("error", (503, {}, {"Retry-After": "99999999999"})),
    "Retry-After in 9999": ("error", (503, {}, {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"})),
    "expires_in 2**64": ("token", {"expires_in": 2**64}),
}


@pytest.mark.parametrize(
    ("kind", "value"), HOSTILE_REFRESHES.values(), ids=HOSTILE_REFRESHES.keys()
)
def test_hostile_refresh_answers_are_typed_and_recorded(make_host, db_url, kind, value):
    host = make_host(db_url=db_url, MAILOAUTH_RETRY_MAX=600)
    store_account(host, expires_in=-5)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        if kind == "error":
            TokenEndpoint(mock).answers.append(("error", value))
        else:
            body = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, **value}
            mock.post(TOKEN_URL, json=body)
        try:
            got = token(host)
        except MailOAuthError:
            got = None
    cred, access, _ = credential(host)
    assert cred.refresh_lease_until is None
    if got is None:  # a failure: recorded, with a backoff no longer than MAILOAUTH_RETRY_MAX
        assert (cred.status, cred.failure_count, access) == ("retrying", 1, "at-0")
        assert utcnow() < cred.next_retry_at <= utcnow() + timedelta(seconds=600)
    else:
        assert got == access != "at-0"
        assert cred.expires_at <= utcnow() + timedelta(hours=1)


def test_an_endpoint_host_the_resolver_cannot_encode_is_a_typed_failure(make_host, db_url):
    host = make_host(db_url=db_url)
    config = {**GENERIC, "token_endpoint": f"https://{'a' * 64}.example.test/token"}
    store_account(host, expires_in=-5, config=config)  # stored before save refused such names
    with pytest.raises(MailOAuthError, match="not a valid DNS name"):
        token(host)
    cred = credential(host)[0]
    assert (cred.refresh_lease_until, cred.failure_count) == (None, 1)


def test_an_exception_while_storing_releases_the_lease(make_host, db_url, idp, monkeypatch):
    host = make_host(db_url=db_url)
    store_account(host, expires_in=3600)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug while storing")

    with monkeypatch.context() as patch:
        patch.setattr(tokens, "_success", broken)
        with pytest.raises(RuntimeError):
            refresh_now(host)
    cred, access, refresh = credential(host)
    assert cred.refresh_lease_until is None
    assert (access, refresh) == ("at-0", "rt-0")
    assert refresh_now(host) == "at-2"
    assert len(idp.calls) == 2


def test_refresh_now_behind_a_dead_workers_lease_never_reports_a_refresh_it_did_not_do(
    make_host, db_url, idp
):
    host = make_host(db_url=db_url, MAILOAUTH_LOCK_TIMEOUT=0.4)
    store_account(host, expires_in=3600)  # valid: nothing to wait for but the lease
    set_credential(host, refresh_lease_until=utcnow() + timedelta(seconds=30))
    with pytest.raises(TemporarilyUnavailable, match="another worker"):
        refresh_now(host)
    assert idp.calls == []

    def holder_gives_up():
        time.sleep(0.2)
        set_credential(host, refresh_lease_until=None)  # released without a refresh

    giving_up = threading.Thread(target=holder_gives_up)
    giving_up.start()
    assert refresh_now(host) == "at-1"  # it asked the IdP itself
    giving_up.join()
    assert len(idp.calls) == 1


def test_refresh_now_waiting_for_a_live_holder_reports_the_holders_token(make_host, db_url):
    host = make_host(db_url=db_url)
    store_account(host, expires_in=3600)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, delay=0.5)
        first = threading.Thread(target=refresh_now, args=(host,))
        first.start()
        wait_for(lambda: credential(host)[0].refresh_lease_until is not None)
        assert refresh_now(host) == "at-1"  # waited, and got what the holder obtained
        first.join()
    assert len(idp.calls) == 1


# -- a slow success never loses the grant --------------------------------------------------------


class RotatingIdP(TokenEndpoint):
    """A strict rotating token endpoint: each refresh invalidates the refresh token it used;
    an already rotated one gets ``invalid_grant``. ``hold`` makes the next success wait for
    ``release`` after rotating (a slow answer); ``arrived`` is set when it is held."""

    def __init__(self, mock):
        super().__init__(mock)
        self.valid = "rt-0"
        self.hold = False
        self.arrived, self.release = threading.Event(), threading.Event()
        self.lock = threading.Lock()

    def answer(self, request):
        sent = parse_qs(request.body)["refresh_token"][0]
        with self.lock:
            self.calls.append(parse_qs(request.body))
            if sent != self.valid:
                return 400, {}, '{"error": "invalid_grant", "error_description": "rotated"}'
            self.issued += 1
            issued = self.issued
            self.valid = f"rt-{issued}"
            hold, self.hold = self.hold, False
        if hold:
            self.arrived.set()
            assert self.release.wait(10)
        body = (
            f'{{"access_token": "at-{issued}", "refresh_token": "rt-{issued}", '
            '"token_type": "Bearer", "expires_in": 3600}'
        )
        return 200, {"Content-Type": "application/json"}, body


@pytest.fixture
def rotating():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield RotatingIdP(mock)


def test_a_slow_success_wins_over_the_failure_its_rotation_caused(make_host, db_url, rotating):
    """The first worker's answer is slow; its lease runs out (here: cleared by hand), a second
    worker sends the rotated refresh token and stores invalid_grant; then the first answer
    arrives and is stored: it holds the only valid refresh token."""
    host = make_host(db_url=db_url)
    store_account(host, expires_in=-5)
    rotating.hold = True
    first: list = []
    slow = threading.Thread(target=lambda: first.append(refresh_now(host)))
    slow.start()
    assert rotating.arrived.wait(10)
    set_credential(host, refresh_lease_until=utcnow() - timedelta(seconds=1))
    with pytest.raises(ReauthorizationRequired, match="invalid_grant"):
        refresh_now(host)
    assert credential(host)[0].status == "reauthorization_required"
    rotating.release.set()
    slow.join()

    assert first == ["at-1"]
    cred, access, refresh = credential(host)
    assert (access, refresh) == ("at-1", "rt-1") == ("at-1", rotating.valid)
    assert (cred.status, cred.failure_count, cred.refresh_lease_until) == ("active", 0, None)
    assert [kind for kind, _ in events(host)] == ["refresh_failed", "refreshed"]
    assert token(host) == "at-1"
    assert refresh_now(host) == "at-2"  # the grant lives on
    assert len(rotating.calls) == 3


def test_a_slow_success_loses_to_a_newer_success(make_host, db_url, rotating):
    host = make_host(db_url=db_url)
    store_account(host, expires_in=-5)
    rotating.hold = True
    slow = threading.Thread(target=refresh_now, args=(host,))
    slow.start()
    assert rotating.arrived.wait(10)
    set_credential(host, refresh_lease_until=None)
    # Another worker refreshed with a refresh token the IdP still took (a non-strict IdP).
    rotating.valid = "rt-0"
    assert refresh_now(host) == "at-2"
    rotating.release.set()
    slow.join()
    assert credential(host)[1:] == ("at-2", "rt-2")


def test_the_idp_call_has_a_deadline_shorter_than_the_lease(make_host, db_url, monkeypatch):
    host = make_host(db_url=db_url, MAILOAUTH_HTTP_TIMEOUT=4)
    store_account(host, expires_in=-5)
    seen = {}
    real = tokens.request_token

    def watching(*args, **kwargs):
        seen["deadline"] = kwargs["deadline"]
        seen["lease"] = (credential(host)[0].refresh_lease_until - utcnow()).total_seconds()
        return real(*args, **kwargs)

    monkeypatch.setattr(tokens, "request_token", watching)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        TokenEndpoint(mock)
        assert token(host) == "at-1"
    assert seen["deadline"] == 8
    assert seen["lease"] > seen["deadline"] + 4


# -- the database failing ------------------------------------------------------------------------


class Outage:
    """The host's database made unavailable and back: a SQLite file locked EXCLUSIVE by
    another connection, or PostgreSQL reached through a proxy that is stopped (connections
    cut, new ones refused) and started again."""

    def __init__(self, db_url, tmp_path):
        self.sqlite = db_url.startswith("sqlite")
        self.proxy = None
        self.url = db_url
        self._lock = None
        self.is_down = False
        if not self.sqlite:
            upstream = sa.engine.make_url(db_url)
            self.proxy = TcpProxy(upstream.port).start()
            self.url = upstream.set(port=self.proxy.port).render_as_string(hide_password=False)

    def down(self):
        if self.proxy:
            self.proxy.stop()
        else:
            self._lock = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            self._lock.execute("BEGIN EXCLUSIVE")
        self.is_down = True

    def up(self):
        if not self.is_down:
            return
        if self.proxy:
            self.proxy.start()
        else:
            self._lock.execute("ROLLBACK")
            self._lock.close()
        self.is_down = False

    def close(self):
        self.up()
        if self.proxy:
            self.proxy.stop()


@pytest.fixture
def outage(db_url, tmp_path):
    o = Outage(db_url, tmp_path)
    yield o
    o.close()


def outage_host(make_host, outage, **config):
    """A host on the outage's database that gives up on a lock within a fraction of a second."""
    options = {"connect_args": {"timeout": 0.2}} if outage.sqlite else {"pool_pre_ping": True}
    return make_host(
        db_url=outage.url, MAILOAUTH_LOCK_TIMEOUT=0.3, SQLALCHEMY_ENGINE_OPTIONS=options, **config
    )


def test_a_refresh_the_database_refuses_is_served_from_memory_and_stored_when_it_is_back(
    make_host, outage
):
    host = outage_host(make_host, outage)
    store_account(host, expires_in=-5)
    refreshed = []
    signals.refreshed.connect(lambda sender, **kw: refreshed.append(kw["key"]), weak=False)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, before=outage.down)
        assert token(host) == "at-1"  # the database refused it: served from memory
        assert token(host) == "at-1"  # and again, without asking the IdP
        assert len(idp.calls) == 1
        time.sleep(0.5)  # retries fail meanwhile
        outage.up()
        wait_for(lambda: credential(host)[2] == "rt-1")
    cred, access, _ = credential(host)
    assert (access, cred.status, cred.refresh_lease_until) == ("at-1", "active", None)
    assert [kind for kind, _ in events(host)] == ["refreshed"]
    wait_for(lambda: refreshed)
    assert token(host) == "at-1"


def test_a_database_that_is_down_is_a_typed_error_or_the_cached_token(make_host, outage, idp):
    host = outage_host(make_host, outage)
    store_account(host, expires_in=3600)
    assert token(host) == "at-0"  # now cached
    outage.down()
    assert token(host) == "at-0"  # served from the cache, no SQL
    host.app.extensions["mailoauth"].cache.clear()
    with pytest.raises(TemporarilyUnavailable, match="database is unavailable"):
        token(host)
    with host.app.app_context(), pytest.raises(TemporarilyUnavailable, match="database"):
        host.ext.refresh("support")
    outage.up()
    assert token(host) == "at-0"
    assert idp.calls == []


def test_a_locked_database_serves_the_valid_token_already_read(make_host, db_url, idp):
    host = make_host(db_url=db_url, MAILOAUTH_LOCK_TIMEOUT=0.3)
    store_account(host, expires_in=60)  # due, still valid
    with row_locked(db_url):
        assert token(host) == "at-0"
        with host.app.app_context(), pytest.raises(TemporarilyUnavailable, match="locked"):
            host.ext.refresh("support")
    set_credential(host, expires_at=utcnow() - timedelta(seconds=5))
    with row_locked(db_url), pytest.raises(TemporarilyUnavailable, match="database"):
        token(host)
    assert idp.calls == []
    assert credential(host)[0].refresh_lease_until is None
    assert token(host) == "at-1"


# -- waiting only when needed --------------------------------------------------------------------


def test_callers_of_a_due_but_valid_token_do_not_wait_for_the_refresh(make_host, db_url):
    url = db_url
    one, two = make_host(db_url=url), make_host(db_url=url)  # two processes on one database
    store_account(one, expires_in=60)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, delay=1.5)
        barrier, results = threading.Barrier(16), []

        def call(host):
            barrier.wait()
            started = time.monotonic()
            got = token(host)
            results.append((got, time.monotonic() - started))

        threads = [threading.Thread(target=call, args=(h,)) for h in [one, two] * 8]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(idp.calls) == 1
    waited = sorted(results, key=lambda r: r[1])
    assert [got for got, _ in waited] == ["at-0"] * 15 + ["at-1"]
    assert all(seconds < 1.0 for _, seconds in waited[:15]), waited
    assert credential(one)[1] == "at-1"


def test_after_a_permanent_failure_the_valid_token_serves_until_it_expires(make_host, db_url):
    host = make_host(db_url=db_url)
    store_account(host, expires_in=120)  # due within the 300 s leeway
    told = []
    signals.reauthorization_required.connect(lambda sender, **kw: told.append(kw), weak=False)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock)
        idp.answers.append(("error", (400, {"error": "invalid_grant"}, {})))
        assert token(host) == "at-0"
        assert token(host) == "at-0"
        assert len(idp.calls) == 1
    assert [kw["failure"].code for kw in told] == ["invalid_grant"]  # the admin is told at once
    cred = credential(host)[0]
    assert cred.status == "reauthorization_required"
    assert events(host)[-1] == ("refresh_failed", "invalid_grant")
    with host.app.app_context():
        (h,) = health(host.app.extensions["mailoauth"])
    assert h.needs_attention
    expired = utcnow() + timedelta(seconds=125)
    with time_machine.travel(expired), pytest.raises(ReauthorizationRequired, match="again"):
        token(host)
    with host.app.app_context(), pytest.raises(ReauthorizationRequired):
        host.ext.refresh("support")


def test_a_permanent_failure_of_a_token_not_yet_due_stops_serving_it(make_host, db_url, idp):
    host = make_host(db_url=db_url)
    store_account(host, expires_in=3600)
    idp.answers.append(("error", (400, {"error": "invalid_grant"}, {})))
    with host.app.app_context(), pytest.raises(ReauthorizationRequired):
        host.ext.refresh("support")  # Refresh now after a revocation: its tokens may be dead
    with pytest.raises(ReauthorizationRequired):
        token(host)


# -- clocks --------------------------------------------------------------------------------------


def test_a_clock_jump_past_the_expiry_never_serves_the_cached_token(make_host, db_url, idp):
    host = make_host(db_url=db_url)
    store_account(host, expires_in=1800)
    assert token(host) == "at-0"  # cached
    with time_machine.travel(utcnow() + timedelta(hours=1), tick=True):
        assert token(host) == "at-1"  # the stored expiry decides, not the cache's age
    assert len(idp.calls) == 1


def test_the_clock_skew_of_the_answer_is_stored_and_a_large_one_is_a_warning(
    make_host, db_url, idp, monkeypatch
):
    host = make_host(db_url=db_url)
    store_account(host, expires_in=-5)
    skews = iter([7200.0, 20.0])
    real = tokens.request_token

    def skewed(*args, **kwargs):
        answer = real(*args, **kwargs)
        return dataclasses.replace(answer, clock_skew=next(skews))

    monkeypatch.setattr(tokens, "request_token", skewed)

    def warnings():
        with host.app.app_context():
            (h,) = health(host.app.extensions["mailoauth"])
        return [w for w in h.warnings if "clock" in w]

    assert token(host) == "at-1"
    assert credential(host)[0].clock_skew == 7200.0
    (warning,) = warnings()
    assert "7200 s ahead of the identity provider" in warning
    refresh_now(host)
    assert credential(host)[0].clock_skew == 20.0
    assert warnings() == []


def test_the_refresh_token_is_never_in_a_fault_message(make_host, db_url):
    host = make_host(db_url=db_url, MAILOAUTH_LOCK_TIMEOUT=0.3)
    store_account(host, expires_in=-5, refresh="rt-secret-value", access="at-secret-value")
    with row_locked(db_url), pytest.raises(TemporarilyUnavailable) as info:
        token(host)
    assert "secret-value" not in str(info.value)
    assert TOKEN_URL not in str(info.value)


def test_a_cached_token_is_served_while_the_database_is_down(make_host, outage, idp):
    # every call past the TTL asks the database
    host = outage_host(make_host, outage, MAILOAUTH_CACHE_TTL=0)
    store_account(host, expires_in=3600)
    assert token(host) == "at-0"  # read, and cached
    outage.down()
    assert token(host) == "at-0"  # past the TTL the database refuses: the cached token serves
    assert token(host) == "at-0"
    expired = time_machine.travel(utcnow() + timedelta(hours=1))  # really expired now
    with expired, pytest.raises(TemporarilyUnavailable, match="database is unavailable"):
        token(host)
    outage.up()
    assert idp.calls == []


class SkewedIdP:
    """A token endpoint whose clock is ``fast`` seconds behind the host's (its ``Date``)."""

    def __init__(self, mock, fast, lifetime, delay=0.0):
        self.fast, self.lifetime, self.delay, self.calls = fast, lifetime, delay, 0
        mock.add_callback(responses.POST, TOKEN_URL, callback=self.answer)

    def answer(self, request):
        time.sleep(self.delay)
        self.calls += 1
        body = {
            "access_token": f"at-{self.calls}",
            "refresh_token": f"rt-{self.calls}",
            "token_type": "Bearer",
            "expires_in": self.lifetime,
        }
        idp_clock = utcnow() - timedelta(seconds=self.fast)
        headers = {"Date": format_datetime(idp_clock, usegmt=True)}
        return 200, {"Content-Type": "application/json", **headers}, json.dumps(body)


@pytest.mark.parametrize(("lifetime", "fast"), [(300, 160), (3600, 7200)])
def test_a_fast_host_clock_never_causes_a_refresh_storm(make_host, db_url, lifetime, fast):
    host = make_host(db_url=db_url, MAILOAUTH_CACHE_TTL=0)  # every call reads the row
    store_account(host, expires_in=-5)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = SkewedIdP(mock, fast, lifetime)
        assert [token(host) for _ in range(10)] == ["at-1"] * 10
        assert idp.calls == 1
        refreshed = utcnow()
        # The host clock is corrected: it now reads the IdP's time. Still valid: served.
        idp.fast = 0
        with time_machine.travel(refreshed - timedelta(seconds=fast - lifetime // 4)):
            assert token(host) == "at-1"
        assert idp.calls == 1
        # Corrected, after the token really expired: never served, refreshed.
        with time_machine.travel(refreshed - timedelta(seconds=fast - lifetime - 10)):
            assert token(host) == "at-2"
        assert idp.calls == 2


def test_waiters_of_a_fast_host_take_the_holders_token(make_host, db_url):
    one, two = make_host(db_url=db_url), make_host(db_url=db_url)  # two processes
    store_account(one, expires_in=-5)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = SkewedIdP(mock, 7200, 3600, delay=0.5)
        results = tokens_at_once(one, two, callers=8)
    assert results == ["at-1"] * 8
    assert idp.calls == 1
