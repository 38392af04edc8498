"""Issue 5 end to end: the token lifecycle against the real IdPs, Dovecot and PostgreSQL.

Refresh with and without rotation, tokens that expire in seconds, one refresh for 64 callers in
4 processes, an IdP that goes away and comes back, a revoked grant, the Microsoft shape, and
``flask mailoauth refresh --due`` over 200 accounts from two processes at once.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from flask_mailoauth import MailboxSettings, mail, signals
from flask_mailoauth.errors import ReauthorizationRequired, TemporarilyUnavailable
from flask_mailoauth.models import own_session, utcnow
from flask_mailoauth.testing import seed_account
from peers import HOST
from peers.tls import test_ca

from ..conftest import TEST_KEY
from ..faults import TcpProxy, row_locked
from .flows import authorize, credential, events, point_at

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- helpers
def update_credential(host, key="support", **values):
    """Change the stored credential behind the extension's back (as another process would), and
    drop this process's cache so that the change is seen at once."""
    st = host.app.extensions["mailoauth"]
    m = st.models
    with host.app.app_context(), own_session(st.db) as s:
        cred = s.scalars(sa.select(m.Credential).join(m.Account).where(m.Account.key == key)).one()
        for name, value in values.items():
            setattr(cred, name, value)
    st.cache.clear()


def imap_select(host, key="support"):
    """Sign in to Dovecot with the extension (fresh token) and SELECT INBOX; the state."""
    with host.app.app_context():
        imap = host.ext.connect_imap(key)
        try:
            return imap.state
        finally:
            imap.logout()


def token_post(idp, client_id, client_secret, url, **data):
    """POST to an IdP endpoint with client_secret_post auth (how ``authorize`` registers)."""
    r = requests.post(
        url,
        data={**data, "client_id": client_id, "client_secret": client_secret},
        timeout=10,
        verify=idp.ca_file,
    )
    r.raise_for_status()
    return r.json() if r.content else {}


def revoke(idp, done, token):
    """Revoke ``token`` of an ``Authorized`` account's client at the IdP."""
    token_post(idp, done.client_id, done.client_secret, idp.revocation_endpoint, token=token)


@pytest.fixture
def proxy(generic_idp):
    """A ``TcpProxy`` in front of the generic IdP, stopped at the end of the test."""
    p = TcpProxy(generic_idp.port).start()
    yield p
    p.stop()


# ---------------------------------------------------------------------- 1. rotation
@pytest.mark.parametrize("rotate", [True, False], ids=["rotating", "non-rotating"])
def test_refresh_stores_the_rotated_refresh_token_or_keeps_the_old_one_and_dovecot_accepts(
    make_host, generic_idp, dovecot, rotate
):
    host = make_host()
    authorize(host, generic_idp, "support@example.test", rotate=rotate)
    point_at(host, dovecot)
    _, access_before, refresh_before = credential(host)
    generic_idp.reset()

    with host.app.app_context():
        refreshed = host.ext.refresh("support")

    assert generic_idp.refresh_count() == 1
    cred, access_after, refresh_after = credential(host)
    assert refreshed == access_after != access_before
    if rotate:
        assert refresh_after != refresh_before
    else:
        assert refresh_after == refresh_before
    assert cred.status == "active"
    assert cred.refreshed_at is not None
    assert imap_select(host) == "SELECTED"
    with host.app.app_context():
        assert host.ext.access_token("support") == refreshed  # what Dovecot was given
    assert generic_idp.introspect(refreshed)["active"] is True
    assert generic_idp.refresh_count() == 1  # the IMAP login did not refresh again


# ---------------------------------------------------------------------- 2. short-lived tokens
EXPIRING = "expiring-support@example.test"


def authorize_early_in_a_second(host, idp, email):
    """oidc-provider counts whole seconds (``exp = floor(issued) + 2``): a 2 s token issued late
    in a second dies after barely one. Starting right after a second boundary, it lives ~1.7 s."""
    time.sleep(1 - time.time() % 1)
    return authorize(host, idp, email)


def test_a_token_about_to_expire_is_refreshed_before_use_and_dovecot_accepts_the_new_one(
    make_host, generic_idp, dovecot
):
    """At the default leeway (300 s) a 2 s token is used for the first half of its life, then
    refreshed while it is still valid: a mail session never starts with a dying token."""
    host = make_host()
    point_at(host, dovecot, address=EXPIRING)
    authorize_early_in_a_second(host, generic_idp, EXPIRING)
    first, first_access, _ = credential(host)
    dies_at = generic_idp.introspect(first_access)["exp"]  # the IdP's own expiry (epoch s)
    due_at = (first.expires_at - (first.expires_at - first.issued_at) / 2).timestamp()
    generic_idp.reset()

    with host.app.app_context():
        assert host.ext.access_token("support") == first_access  # fresh: used as is
    assert generic_idp.refresh_count() == 0

    call_at = due_at + 0.1
    assert call_at < dies_at - 0.2, "setup: the token must still live when it is due"
    time.sleep(max(0.0, call_at - time.time()))
    assert generic_idp.introspect(first_access)["active"] is True  # still valid at the IdP...
    with host.app.app_context():
        fresh = host.ext.access_token("support")  # ...but due: refreshed before use
    assert fresh != first_access
    assert generic_idp.refresh_count() == 1
    assert imap_select(host) == "SELECTED"  # with the new token, not a refresh more
    assert generic_idp.refresh_count() == 1
    time.sleep(max(0.0, dies_at + 0.1 - time.time()))
    assert generic_idp.introspect(first_access)["active"] is False  # the old one died


def test_an_expired_token_is_refused_by_dovecot_and_access_token_gives_an_accepted_one(
    make_host, generic_idp, dovecot
):
    host = make_host()
    point_at(host, dovecot, address=EXPIRING)
    authorize(host, generic_idp, EXPIRING)
    first, expired, _ = credential(host)
    time.sleep(max(0.0, (first.expires_at - utcnow()).total_seconds() + 0.2))
    generic_idp.reset()

    server = mail.resolve_server(host.mailboxes["support"], "imap", None)
    conn = mail.open_imap(server, timeout=5)
    try:
        with pytest.raises(mail.MailAuthenticationError):
            mail.imap_login(conn, EXPIRING, expired)
    finally:
        conn.shutdown()
    assert generic_idp.refresh_count() == 0

    assert imap_select(host) == "SELECTED"
    assert generic_idp.refresh_count() == 1
    _, stored, _ = credential(host)
    assert stored != expired


def test_a_token_living_less_than_the_leeway_is_refreshed_once_for_16_callers(
    make_host, generic_idp, tmp_path
):
    """The leeway (300 s) exceeds the whole lifetime of the token (2 s, like Keycloak's default
    300 s access tokens at the default leeway): a token just refreshed must not be refreshed
    again by every caller queued behind the refresh."""
    host = make_host(db_url=f"sqlite:///{tmp_path / 'short.db'}")
    host.mailboxes["support"] = MailboxSettings(address=EXPIRING)
    authorize(host, generic_idp, EXPIRING)
    update_credential(host, expires_at=utcnow() - timedelta(seconds=1))
    generic_idp.reset()
    barrier, answers = threading.Barrier(16), []

    def call():
        with host.app.app_context():
            barrier.wait(timeout=10)
            answers.append(host.ext.access_token("support"))

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert generic_idp.refresh_count() == 1
    assert len(set(answers)) == 1


# ---------------------------------------------------------------------- 3. across processes
PROCESSES, THREADS = 4, 16


def test_one_refresh_for_16_threads_in_each_of_4_processes(make_host, generic_idp, db_url):
    """Every process builds its own app on the same database; 64 callers ask at once for a token
    that has expired: the IdP sees one refresh, everyone gets the token it returned."""
    host = make_host(db_url=db_url)
    authorize(host, generic_idp, "support@example.test")
    _, before, _ = credential(host)
    update_credential(host, expires_at=utcnow() - timedelta(seconds=5))
    with host.app.app_context():
        host.db.engine.dispose()  # the children must not inherit anything; nothing is open
    generic_idp.reset()

    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(PROCESSES), ctx.Queue()
    from .lifecycle_app import race_for_token

    children = [
        ctx.Process(
            target=race_for_token,
            args=(db_url, TEST_KEY, str(test_ca().ca_file), start, THREADS, results),
        )
        for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    try:
        answers = [results.get(timeout=60) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
        results.close()
        results.join_thread()
    assert [child.exitcode for child in children] == [0] * PROCESSES
    tokens = [token for _pid, got in answers for token in got]
    assert len(tokens) == PROCESSES * THREADS
    assert len({pid for pid, _ in answers}) == PROCESSES
    _, stored, _ = credential(host)
    assert set(tokens) == {stored}, [t for t in tokens if t != stored][:3]
    assert stored != before
    assert generic_idp.refresh_count() == 1
    assert len(events(host, "refreshed")) == 1


# ---------------------------------------------------------------------- 4. IdP unreachable
def test_idp_unreachable_mid_run_keeps_the_token_then_recovers(
    make_host, generic_idp, dovecot, proxy
):
    """The account's token endpoint is typed by hand as a proxy in front of the IdP (the issuer
    stays the IdP's, discovery fills only the blanks). Stopping the proxy makes the IdP
    unreachable (connection refused) while it keeps its grants."""
    host = make_host()
    authorize(
        host,
        generic_idp,
        "support@example.test",
        idp_token_endpoint=f"https://{HOST}:{proxy.port}/token",
    )
    assert proxy.connections == 1  # the code exchange went through the typed endpoint
    point_at(host, dovecot)
    _, current, refresh_token = credential(host)
    # an hour-long token with a minute left: due (within the 300 s leeway), still valid
    update_credential(
        host,
        issued_at=utcnow() - timedelta(seconds=3540),
        expires_at=utcnow() + timedelta(seconds=60),
    )
    generic_idp.reset()
    proxy.stop()

    with host.app.app_context():
        assert host.ext.access_token("support") == current  # refresh failed: current token
    cred, access, kept = credential(host)
    assert (access, kept) == (current, refresh_token)
    assert cred.status == "retrying"
    assert cred.failure_count == 1
    assert cred.next_retry_at > utcnow() + timedelta(seconds=10)  # MAILOAUTH_RETRY_BASE 30
    failed = events(host, "refresh_failed")
    assert [(e.level, e.code) for e in failed] == [("warning", "network_error")]
    assert "could not be reached" in failed[0].message
    assert imap_select(host) == "SELECTED"  # the kept token still works at Dovecot

    proxy.start()
    with host.app.app_context():
        assert host.ext.access_token("support") == current  # in backoff: no new attempt
    assert proxy.connections == 1
    generic_idp.fail_next(1, 503, grant_type="refresh_token")
    with host.app.app_context(), pytest.raises(TemporarilyUnavailable, match="unavailable"):
        host.ext.refresh("support")  # "Refresh now": reached, answered 503, and says so
    with host.app.app_context():
        assert host.ext.access_token("support") == current  # mail goes on meanwhile
    cred, _, _ = credential(host)
    assert (cred.status, cred.failure_count) == ("retrying", 2)
    assert events(host, "refresh_failed")[-1].code == "temporarily_unavailable"
    page = host.app.test_client().get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert "temporarily_unavailable" in page

    update_credential(host, expires_at=utcnow() - timedelta(seconds=1))
    with host.app.app_context(), pytest.raises(TemporarilyUnavailable) as info:
        host.ext.access_token("support")  # expired, and waiting to retry: says when
    assert info.value.retry_at == credential(host)[0].next_retry_at

    with host.app.app_context():
        fresh = host.ext.refresh("support")  # "Refresh now" ignores the backoff: recovered
    cred, access, _ = credential(host)
    assert fresh == access != current
    assert (cred.status, cred.failure_count, cred.next_retry_at) == ("active", 0, None)
    assert generic_idp.refresh_count() == 2  # the 503 and the recovery; none while down
    # the exchange's connection, then one kept alive for the 503 and the recovery
    assert proxy.connections == 2
    assert imap_select(host) == "SELECTED"


# ---------------------------------------------------------------------- 5. revoked grant
def test_a_grant_revoked_at_the_idp_requires_reauthorization_and_stops_calling_it(
    make_host, generic_idp, dovecot
):
    host = make_host()
    done = authorize(host, generic_idp, "support@example.test", rotate=True)
    point_at(host, dovecot)
    _, access, refresh_token = credential(host)
    revoke(generic_idp, done, refresh_token)  # oidc-provider: revoking it revokes the grant
    assert generic_idp.introspect(access)["active"] is False  # the grant's tokens died with it
    generic_idp.reset()
    signalled = []

    def receiver(sender, **kw):
        signalled.append((sender, kw))

    signals.reauthorization_required.connect(receiver)
    try:
        with host.app.app_context(), pytest.raises(ReauthorizationRequired, match="invalid_grant"):
            host.ext.refresh("support")
    finally:
        signals.reauthorization_required.disconnect(receiver)

    assert generic_idp.refresh_count() == 1
    assert [(s, kw["key"], kw["failure"].code) for s, kw in signalled] == [
        (host.ext, "support", "invalid_grant")
    ]
    cred, kept_access, kept_refresh = credential(host)  # the row is still there, untouched
    assert (kept_access, kept_refresh) == (access, refresh_token)
    assert cred.status == "reauthorization_required"
    assert cred.next_retry_at is None
    assert events(host, "refresh_failed")[-1].code == "invalid_grant"
    with host.app.app_context():
        for _ in range(3):
            with pytest.raises(ReauthorizationRequired, match="authorize again"):
                host.ext.access_token("support")
        with pytest.raises(ReauthorizationRequired):
            host.ext.connect_imap("support")
        (health,) = host.ext.health()
    assert health.needs_attention
    assert generic_idp.stats()["total"] == 1  # nothing more reached the IdP


# ---------------------------------------------------------------------- 6. Microsoft shape
def test_microsoft_refresh_sends_scope_accepts_no_offline_access_and_shows_aadsts700082(
    make_host, ms_idp, ms_dovecot
):
    host = make_host()
    done = authorize(host, ms_idp, "support@example.test")  # Microsoft rotates by default
    point_at(host, ms_dovecot)
    _, access_before, refresh_before = credential(host)
    # The refresh as the IdP received it (over TLS the wire shows nothing readable).
    ms_idp.reset()
    with host.app.app_context():
        fresh = host.ext.refresh("support")
    (sent,) = ms_idp.stats()["forms"]
    assert sent["grant_type"] == "refresh_token"
    sent_scope = sent["scope"].split()
    assert "offline_access" in sent_scope
    assert "https://outlook.office.com/IMAP.AccessAsUser.All" in sent_scope
    assert ms_idp.refresh_count() == 1

    cred, access, refresh_token = credential(host)
    assert fresh == access != access_before
    assert refresh_token != refresh_before  # the rotated one is stored
    assert cred.status == "active"
    granted = cred.scope.split()
    assert "offline_access" not in granted  # Microsoft leaves it out: accepted as is
    assert "https://outlook.office.com/IMAP.AccessAsUser.All" in granted
    assert imap_select(host) == "SELECTED"

    revoke(ms_idp, done, refresh_token)
    with host.app.app_context(), pytest.raises(ReauthorizationRequired, match="AADSTS700082"):
        host.ext.refresh("support")
    cred, _, _ = credential(host)
    assert (cred.status, cred.last_error_code) == ("reauthorization_required", "AADSTS700082")
    with host.app.app_context():
        page = host.app.test_client().get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert "AADSTS700082" in page
    assert "90 days unused" in page  # the provider's one-line guidance


# ---------------------------------------------------------------------- 7. refresh --due
ACCOUNTS = 200


@pytest.fixture(scope="module")
def bulk_grants(generic_idp):
    """(client, [token response] * 200): real grants of 200 mailboxes, from a client that does
    not rotate refresh tokens, so that the same grants serve the SQLite and PostgreSQL runs."""
    client = generic_idp.register_client(rotate=False, auth_method="client_secret_post")
    emails = [f"bulk-{n:03d}@example.test" for n in range(ACCOUNTS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        grants = list(pool.map(lambda e: generic_idp.code_grant(client, e), emails))
    return client, grants


def store_bulk_accounts(host, idp, client, grants):
    """One authorized generic account per grant (key ``bulk-NNN``), every token expired."""
    config = {
        "issuer": idp.issuer,
        "client_id": client.client_id,
        "authorization_endpoint": idp.authorization_endpoint,
        "token_endpoint": idp.token_endpoint,
        "jwks_uri": idp.metadata["jwks_uri"],
        "scopes": "openid email offline_access",
        "email_attribute": "email",
    }
    long_ago = utcnow() - timedelta(hours=2)
    with host.app.app_context():
        for n, grant in enumerate(grants):
            key = f"bulk-{n:03d}"
            seed_account(
                key,
                address=f"{key}@example.test",
                name=f"{key} (mailbox)",
                config=config,
                client_secret=client.client_secret,
                access_token=grant["access_token"],
                refresh_token=grant["refresh_token"],
                expires_in=-60,
                issued_at=long_ago,
                scope=grant["scope"],
            )


def test_refresh_due_from_two_processes_refreshes_each_of_200_accounts_once(
    make_host, generic_idp, bulk_grants, db_url
):
    client, grants = bulk_grants
    host = make_host(db_url=db_url)
    store_bulk_accounts(host, generic_idp, client, grants)
    generic_idp.reset()
    env = {
        **os.environ,
        "MAILOAUTH_E2E_DB_URL": db_url,
        "MAILOAUTH_E2E_KEY": TEST_KEY,
        "MAILOAUTH_E2E_CA_BUNDLE": str(test_ca().ca_file),
    }
    command = [
        sys.executable,
        "-m",
        "flask",
        "--app",
        "tests.e2e.lifecycle_app:create_app",
        "mailoauth",
        "refresh",
        "--due",
    ]
    started = time.monotonic()
    runs = [
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    seconds = time.monotonic() - started
    print(
        f"refresh --due, 2 processes, {ACCOUNTS} accounts ({db_url.split(':')[0]}): {seconds:.2f} s"
    )
    assert [run.returncode for run in runs] == [0, 0], outputs
    print([out.strip() for out, _err in outputs])
    due = [int(re.search(r"Refreshed \d+ of (\d+) account", out).group(1)) for out, _ in outputs]
    assert min(due) > 0, outputs  # both found due accounts: they ran at the same time

    assert generic_idp.stats()["token"] == {"refresh_token": ACCOUNTS}  # each exactly once
    st = host.app.extensions["mailoauth"]
    m = st.models
    with host.app.app_context(), own_session(st.db) as s:
        rows = s.execute(sa.select(m.Account.key, m.Credential).join(m.Credential)).all()
        refreshed = s.execute(
            sa.select(m.Event.account_id, sa.func.count())
            .where(m.Event.kind == "refreshed")
            .group_by(m.Event.account_id)
        ).all()
        fresh = {key: st.reveal(cred, "access_token") for key, cred in rows}
        assert all(cred.status == "active" for _key, cred in rows)
        assert all(cred.expires_at > utcnow() + timedelta(minutes=50) for _key, cred in rows)
    assert len(rows) == ACCOUNTS
    assert sorted(count for _id, count in refreshed) == [1] * ACCOUNTS
    old = {grant["access_token"] for grant in grants}
    assert not old & set(fresh.values())
    assert len(set(fresh.values())) == ACCOUNTS
    assert generic_idp.introspect(fresh["bulk-042"])["active"] is True


# ---------------------------------------------------------------------- 8. faults, strict rotation
def token_of(host, key="support"):
    with host.app.app_context():
        return host.ext.access_token(key)


def test_a_slow_rotated_answer_the_database_refuses_is_kept_and_the_grant_survives(
    make_host, generic_idp, proxy, db_url
):
    """The strict rotating IdP (a used refresh token revokes the grant) answers a refresh one
    line every 0.25 s, longer than the per-read timeout; meanwhile callers of the due but valid
    token get it at once, and the database is locked when the answer arrives. The new tokens
    are served from memory, stored once the lock is gone, and the grant refreshes again."""
    host = make_host(db_url=db_url, MAILOAUTH_HTTP_TIMEOUT=2, MAILOAUTH_LOCK_TIMEOUT=0.5)
    authorize(
        host,
        generic_idp,
        "support@example.test",
        rotate=True,
        idp_token_endpoint=f"https://{HOST}:{proxy.port}/token",
    )
    _, current, first_refresh = credential(host)
    update_credential(
        host,
        issued_at=utcnow() - timedelta(seconds=3540),
        expires_at=utcnow() + timedelta(seconds=60),
    )
    generic_idp.reset()
    proxy.trickle = 0.25
    slow: list = []

    def holder():
        with host.app.app_context():
            started = time.monotonic()
            slow.append(host.ext.access_token("support"))
            slow.append(time.monotonic() - started)

    holding = threading.Thread(target=holder)
    holding.start()
    deadline = time.monotonic() + 5
    while credential(host)[0].refresh_lease_until is None:
        assert time.monotonic() < deadline, "no lease taken"
        time.sleep(0.02)
    with row_locked(db_url):
        with ThreadPoolExecutor(8) as pool:
            started = time.monotonic()
            others = list(pool.map(lambda _: token_of(host), range(8)))
            assert time.monotonic() - started < 1.0  # nobody waited for the slow answer
        assert others == [current] * 8
        holding.join(timeout=30)
        fresh, seconds = slow
        assert fresh != current
        assert seconds > 2  # longer than the per-read timeout, within the total deadline
        assert credential(host)[2] == first_refresh  # the database refused it so far
        with host.app.app_context():
            assert host.ext.access_token("support") == fresh  # from memory
    deadline = time.monotonic() + 10
    while credential(host)[1] != fresh:
        assert time.monotonic() < deadline, "the kept answer was never stored"
        time.sleep(0.1)
    cred, _, rotated = credential(host)
    assert rotated != first_refresh
    assert (cred.status, cred.refresh_lease_until) == ("active", None)
    assert generic_idp.refresh_count() == 1
    proxy.trickle = 0.0
    with host.app.app_context():
        again = host.ext.refresh("support")  # the stored rotated refresh token still works
    assert again != fresh
    assert generic_idp.refresh_count() == 2
    assert credential(host)[0].status == "active"
    assert generic_idp.introspect(again)["active"] is True
