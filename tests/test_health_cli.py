"""Warnings before breakage, and the `flask mailoauth` commands cron and monitoring use."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta

import responses
import sqlalchemy as sa

from flask_mailoauth import tokens
from flask_mailoauth.models import own_session, utcnow

from .commands import health, run, update
from .oauth_fakes import TokenEndpoint
from .stored import credential, store_account


def test_a_fresh_account_is_healthy(host):
    store_account(host)
    h = health(host)[("support", "mailbox")]
    assert (h.status, h.warnings, h.needs_attention) == ("active", [], False)


def test_idle_refresh_token_warns_before_the_90_day_limit(host):
    store_account(host)
    update(host, "Credential", issued_at=utcnow() - timedelta(days=81))
    [warning] = health(host)[("support", "mailbox")].warnings
    assert "not been used for 81 days" in warning
    assert "refresh --due" in warning


def test_client_secret_end_date_warns_30_and_7_days_ahead_and_after(host):
    store_account(host)
    today = utcnow().date()
    for days, text in [(45, None), (29, "expires on"), (6, "expires on"), (-1, "expired on")]:
        update(host, "Account", secret_expires_on=today + timedelta(days=days))
        warnings = health(host)[("support", "mailbox")].warnings
        if text is None:
            assert warnings == []
        else:
            assert text in warnings[0]


def test_repeated_failures_and_reauthorization_need_attention(host):
    store_account(host)
    update(host, "Credential", failure_count=3, status="retrying", last_error="HTTP 503")
    h = health(host)[("support", "mailbox")]
    assert h.needs_attention
    assert "3 refresh attempts failed" in h.warnings[0]
    update(host, "Credential", status="reauthorization_required", last_error="AADSTS700082: ...")
    assert health(host)[("support", "mailbox")].warnings[0].startswith("AADSTS700082")


def test_google_testing_mode_warns_of_the_7_day_expiry(host):
    store_account(
        host,
        provider="google",
        config={
            "client_id": "x",
            "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
            "token_endpoint": "https://oauth2.googleapis.com/token",
            "scopes": "openid email https://mail.google.com/",
            "publishing_status": "testing",
        },
    )
    warnings = health(host)[("support", "mailbox")].warnings
    assert any("Testing get refresh tokens that expire after 7 days" in w for w in warnings)
    assert any("stops working on" in w for w in warnings)


def test_status_exits_non_zero_when_an_account_needs_attention(host):
    store_account(host)
    ok = run(host, "status")
    assert ok.exit_code == 0, ok.output
    assert "[ok] support (mailbox)" in ok.output
    update(host, "Credential", status="reauthorization_required", last_error="revoked")
    bad = run(host, "status")
    assert bad.exit_code == 1
    assert "[!!] support (mailbox)" in bad.output
    data = json.loads(run(host, "status", "--json").output)
    assert data[0]["needs_attention"] is True
    assert data[0]["warnings"] == ["revoked"]


def test_list_shows_every_account(host):
    store_account(host)
    store_account(host, key="sales", purpose="smtp")
    output = run(host, "list").output
    assert "support\tmailbox\tgeneric\tactive" in output
    assert "sales\tsmtp\tgeneric\tactive" in output


def test_refresh_due_refreshes_only_accounts_about_to_expire(host):
    store_account(host, key="due", expires_in=60)
    store_account(host, key="fresh", expires_in=3600)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock)
        result = run(host, "refresh", "--due")
    assert result.exit_code == 0, result.output
    assert "Refreshed 1 of 1 account(s)." in result.output
    assert [c["refresh_token"] for c in idp.calls] == [["rt-0"]]
    assert credential(host, "due")[1] == "at-1"
    assert credential(host, "fresh")[1] == "at-0"


def test_refresh_one_key_forces_it_and_reports_failures(host):
    store_account(host)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock)
        idp.answers.append(("error", (400, {"error": "invalid_grant"}, {})))
        result = run(host, "refresh", "support")
    assert result.exit_code == 1
    assert "invalid_grant" in result.output
    assert "Refreshed 0 of 1" in result.output
    assert run(host, "refresh").exit_code == 2
    assert "No authorized account" in run(host, "refresh", "nope").output


def test_refresh_now_button_shows_the_outcome_on_the_token_tab(host):
    import re

    store_account(host)
    client = host.app.test_client()
    page = client.get("/mailoauth/support/mailbox").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        TokenEndpoint(mock)
        response = client.post("/mailoauth/support/mailbox/refresh", data={"csrf_token": csrf})
    page = response.get_data(as_text=True)
    assert "The access token was refreshed." in page
    token_tab = re.search(r'<a [^>]*id="mailoauth-tab-token"[^>]*>', page).group(0)
    assert 'aria-selected="true"' in token_tab


def test_a_new_client_secret_lets_a_configuration_error_retry(host):
    import re

    from .oauth_fakes import GENERIC_CONFIG

    store_account(host)
    update(host, "Credential", status="configuration_error", last_error="AADSTS7000222")
    client = host.app.test_client()
    page = client.get("/mailoauth/support/mailbox").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    config = {**GENERIC_CONFIG, "idp_client_id": "app"}
    response = client.post(
        "/mailoauth/support/mailbox",
        data={
            "csrf_token": csrf,
            "provider": "generic",
            "enabled": "1",
            "name": "support (mailbox)",
            "client_secret": "the-new-secret",
            **config,
        },
    )
    assert response.status_code == 303, response.get_data(as_text=True)[:800]
    cred, access, _ = credential(host)
    assert cred.status == "active"
    with host.app.app_context():
        assert host.ext.access_token("support") == access


def test_refresh_due_does_not_count_accounts_another_worker_refreshed(host, monkeypatch):
    from flask_mailoauth import cli

    store_account(host, key="due", expires_in=60)
    store_account(host, key="meanwhile", expires_in=3600)
    # The second account was due when listed, and another host refreshed it since.
    targets = [
        cli.Target(key, "mailbox", f"{key}@example.test", f"{key} (mailbox)")
        for key in ("due", "meanwhile")
    ]
    monkeypatch.setattr(cli, "_targets", lambda *a: targets)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock)
        result = run(host, "refresh", "--due")
    assert result.exit_code == 0, result.output
    assert "Refreshed 1 of 2 account(s). 1 no longer due" in result.output
    assert len(idp.calls) == 1


def test_refresh_due_counts_a_transient_failure_as_a_failure(host):
    store_account(host, key="due", expires_in=60)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        TokenEndpoint(mock).answers.append(("error", (503, {}, {})))
        result = run(host, "refresh", "--due")
    assert result.exit_code == 1
    assert "Refreshed 0 of 1 account(s)." in result.output
    assert "unavailable" in result.output


def test_the_token_tab_shows_the_failures_and_the_next_retry(host):
    store_account(host)
    retry = utcnow() + timedelta(minutes=5)
    update(
        host,
        "Credential",
        status="retrying",
        failure_count=2,
        last_error="HTTP 503",
        next_retry_at=retry,
    )
    page = host.app.test_client().get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert "HTTP 503 (2 failures in a row)" in page
    assert f"{retry:%Y-%m-%d %H:%M:%S} UTC" in page


def test_refresh_due_survives_an_unexpected_exception_for_one_account(
    make_host, db_url, monkeypatch, caplog
):
    """40 due accounts; refreshing one raises a raw OperationalError ("database is locked").
    The other 39 are refreshed, the summary counts the failure once, the exit code is 1, and
    nothing of the exception's message (SQL parameters) reaches the output or the log."""
    host = make_host(db_url=db_url)
    keys = [f"acct-{n:02d}" for n in range(40)]
    for key in keys:
        store_account(host, key=key, expires_in=60)
    secret = "SECRET-SQL-PARAMETER"
    refresh_if_due = tokens.refresh_if_due

    def locked_for_one(st, key, purpose):
        if key == "acct-17":
            raise sa.exc.OperationalError(
                "UPDATE mailoauth_credential SET access_token=?",
                {"access_token": secret},
                sqlite3.OperationalError("database is locked"),
            )
        return refresh_if_due(st, key, purpose)

    monkeypatch.setattr(tokens, "refresh_if_due", locked_for_one)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock)
        result = run(host, "refresh", "--due")
    assert result.exit_code == 1, result.output
    assert "Refreshed 39 of 40 account(s). 1 failed." in result.output
    [failure] = [line for line in result.output.splitlines() if "acct-17" in line]
    assert failure.startswith(
        "acct-17@example.test (mailbox): unexpected sqlalchemy.exc.OperationalError"
    )
    assert failure.count("acct-17@example.test") == 1
    assert len(idp.calls) == 39
    for key in keys:
        assert (credential(host, key)[1] == "at-0") is (key == "acct-17")
    assert secret not in result.output
    assert "database is locked" not in result.output
    assert secret not in caplog.text
    [logged] = [r for r in caplog.records if "acct-17" in r.getMessage()]
    assert "sqlalchemy.exc.OperationalError" in logged.getMessage()


def test_refresh_names_each_failing_account_once(make_host, db_url):
    """The typed errors start with "key (purpose):"; the line names the account once, by
    address and purpose."""
    host = make_host(db_url=db_url)
    store_account(host)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        TokenEndpoint(mock).answers.append(("error", (400, {"error": "invalid_grant"}, {})))
        result = run(host, "refresh", "support")
    assert result.exit_code == 1
    [line] = [line for line in result.output.splitlines() if "invalid_grant" in line]
    assert line.startswith("support@example.test (mailbox): invalid_grant")
    assert "support (mailbox)" not in line
    assert result.output.splitlines()[-1] == "Refreshed 0 of 1 account(s). 1 failed."


def test_status_shows_a_disabled_account_as_disabled_not_ok(make_host, db_url):
    """A disabled account is "[off] … disabled (token status: …)" and does not fail the exit
    code; an enabled account that needs attention still does."""
    host = make_host(db_url=db_url)
    store_account(host)
    update(host, "Account", enabled=False)
    update(host, "Credential", status="reauthorization_required", last_error="revoked")
    result = run(host, "status")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "[off] support (mailbox) — disabled (token status: reauthorization required)"
    )
    assert "[ok]" not in result.output
    [data] = json.loads(run(host, "status", "--json").output)
    assert (data["enabled"], data["status"], data["needs_attention"]) == (
        False,
        "reauthorization_required",
        False,
    )
    store_account(host, key="sales")
    store_account(host, key="broken")
    _set_status(host, "broken", "configuration_error")
    bad = run(host, "status")
    assert bad.exit_code == 1
    assert "[!!] broken (mailbox) — configuration error" in bad.output
    assert "[ok] sales (mailbox) — active" in bad.output
    assert "[off] support (mailbox)" in bad.output


def _set_status(host, key, status):
    st = host.app.extensions["mailoauth"]
    m = st.models
    with host.app.app_context(), own_session(st.db) as s:
        cred = s.scalars(sa.select(m.Credential).join(m.Account).where(m.Account.key == key)).one()
        cred.status = status
