"""Issue 16 point 3: the accounts as Prometheus reads them, from ``status --format
openmetrics`` and the optional metrics endpoint, parsed by the Prometheus client's parsers."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import responses
import sqlalchemy as sa
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from flask_mailoauth import tokens
from flask_mailoauth.errors import MailOAuthError
from flask_mailoauth.models import own_session, utcnow

from .commands import run, update
from .oauth_fakes import TokenEndpoint
from .stored import store_account

TOKEN = "scrape-token-0123456789abcdef"


def samples(
    text: str, *, openmetrics: bool
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from a parsed exposition."""
    parse = parse_openmetrics if openmetrics else parse_prometheus
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse(text)
        for s in family.samples
    }


def account(key: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"key": key, "purpose": "mailbox", "provider": "generic", **extra}.items()))


def three_accounts(host) -> None:
    """support: active, its secret ending in 45 days (before any warning); sales: refused
    after 4 failures; new: never authorized."""
    issued = utcnow() - timedelta(days=2)
    store_account(host, key="support", expires_in=600, refresh_token_issued_at=issued)
    update(host, "Account", secret_expires_on=utcnow().date() + timedelta(days=45))
    store_account(host, key="sales")
    st = host.app.extensions["mailoauth"]
    m = st.models
    with host.app.app_context(), own_session(st.db) as s:
        sales = s.scalars(sa.select(m.Account).where(m.Account.key == "sales")).one()
        s.execute(
            sa.update(m.Credential)
            .where(m.Credential.account_id == sales.id)
            .values(status="reauthorization_required", failure_count=4, last_error="revoked")
        )
    store_account(host, key="new")
    with host.app.app_context(), own_session(st.db) as s:
        new = s.scalars(sa.select(m.Account).where(m.Account.key == "new")).one()
        s.execute(sa.delete(m.Credential).where(m.Credential.account_id == new.id))


def test_status_openmetrics_states_each_account_as_stored(make_host, db_url):
    host = make_host(db_url=db_url)
    three_accounts(host)
    result = run(host, "status", "--format", "openmetrics")
    assert result.exit_code == 1  # the refused and the new account need attention, as in text
    assert result.output.endswith("# EOF\n")
    got = samples(result.output, openmetrics=True)
    status = "mailoauth_account_status"
    assert got[(status, account("support", status="active"))] == 1.0
    assert got[(status, account("support", status="retrying"))] == 0.0
    assert got[(status, account("sales", status="reauthorization_required"))] == 1.0
    assert got[(status, account("new", status="not_authorized"))] == 1.0
    attention = "mailoauth_account_needs_attention"
    assert [got[(attention, account(k))] for k in ("support", "sales", "new")] == [0, 1, 1]
    assert got[("mailoauth_refresh_failures", account("sales"))] == 4.0
    expires = got[("mailoauth_access_token_expires_in_seconds", account("support"))]
    assert 500 < expires <= 600
    age = got[("mailoauth_refresh_token_age_seconds", account("support"))]
    assert 2 * 86400 <= age < 2 * 86400 + 60
    assert got[("mailoauth_client_secret_expires_in_days", account("support"))] == 45.0
    # absent, not zero, where there is nothing to measure
    assert ("mailoauth_access_token_expires_in_seconds", account("new")) not in got
    assert ("mailoauth_client_secret_expires_in_days", account("sales")) not in got
    # the CLI reports no per-process counts: its own process made no token request
    assert not any(name.startswith("mailoauth_refreshes") for name, _ in got)


def test_status_openmetrics_names_no_address_token_or_error_text(host):
    three_accounts(host)
    output = run(host, "status", "--format", "openmetrics").output
    for secret in ("@example.test", "at-0", "rt-0", "client-secret", "revoked"):
        assert secret not in output


def test_status_json_gains_the_measures(host):
    three_accounts(host)
    by_key = {a["key"]: a for a in json.loads(run(host, "status", "--format", "json").output)}
    assert by_key["sales"]["failure_count"] == 4
    assert by_key["support"]["secret_expires_on"] == str(utcnow().date() + timedelta(days=45))
    assert by_key["new"]["refresh_token_issued_at"] is None
    assert json.loads(run(host, "status", "--json").output) == list(by_key.values())


def test_the_endpoint_is_off_unless_configured(host):
    assert host.app.test_client().get("/mailoauth/metrics").status_code == 404


def test_the_endpoint_is_behind_access_check_without_a_token(make_host, db_url):
    denied = make_host(db_url=db_url, access=False, MAILOAUTH_METRICS=True)
    assert denied.app.test_client().get("/mailoauth/metrics").status_code == 403
    allowed = make_host(db_url=db_url, MAILOAUTH_METRICS=True)
    three_accounts(allowed)
    response = allowed.app.test_client().get("/mailoauth/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    got = samples(response.get_data(as_text=True), openmetrics=False)
    assert got[("mailoauth_account_status", account("sales", status="reauthorization_required"))]


def test_with_a_token_only_its_bearer_scrapes_whatever_access_check_says(make_host, db_url):
    host = make_host(
        db_url=db_url, access=False, MAILOAUTH_METRICS=True, **{"MAILOAUTH_METRICS_TOKEN": TOKEN}
    )
    three_accounts(host)
    client = host.app.test_client()
    for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        refused = client.get("/mailoauth/metrics", headers=header)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"mailoauth_account_status" not in refused.data
    scraped = client.get(
        "/mailoauth/metrics",
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Accept": "application/openmetrics-text; version=1.0.0",
        },
    )
    assert scraped.status_code == 200
    assert scraped.content_type.startswith("application/openmetrics-text")
    got = samples(scraped.get_data(as_text=True), openmetrics=True)
    assert got[("mailoauth_account_status", account("support", status="active"))] == 1.0
    # the token opens the metrics only, not the modal
    modal = client.get("/mailoauth/support/mailbox", headers={"Authorization": f"Bearer {TOKEN}"})
    assert modal.status_code == 403


def test_the_endpoint_counts_this_process_token_requests_by_outcome(make_host, db_url):
    host = make_host(db_url=db_url, MAILOAUTH_METRICS=True)
    store_account(host, key="support", expires_in=60)
    store_account(host, key="sales", expires_in=60)
    st = host.app.extensions["mailoauth"]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock)
        idp.rotate()
        idp.answers.append(("error", (400, {"error": "invalid_grant"}, {})))
        with host.app.app_context():
            tokens.refresh(st, "support", "mailbox")
            with pytest.raises(MailOAuthError):
                tokens.refresh(st, "sales", "mailbox")
    text = host.app.test_client().get("/mailoauth/metrics").get_data(as_text=True)
    got = samples(text, openmetrics=False)
    ok = (("outcome", "refreshed"), ("provider", "generic"))
    refused = (("outcome", "reauthorize"), ("provider", "generic"))
    assert got[("mailoauth_refreshes_total", ok)] == 1.0
    assert got[("mailoauth_refreshes_total", refused)] == 1.0
    assert got[("mailoauth_refresh_duration_seconds_count", ok)] == 1.0
    assert got[("mailoauth_refresh_duration_seconds_sum", ok)] > 0
    # one app's counts are its own: another app in this process starts at none
    other = make_host(db_url=db_url, MAILOAUTH_METRICS=True)
    fresh = samples(
        other.app.test_client().get("/mailoauth/metrics").get_data(as_text=True), openmetrics=False
    )
    assert ("mailoauth_refreshes_total", ok) not in fresh
