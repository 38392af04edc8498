"""Issue 16 point 4: the IdP's own identifiers of an error (Microsoft's trace ID, correlation ID
and timestamp) are kept on the event and shown on the Token tab with where to search them."""

from __future__ import annotations

import pytest
import responses
import sqlalchemy as sa

from flask_mailoauth import tokens
from flask_mailoauth.errors import MailOAuthError
from flask_mailoauth.providers import registry

from .oauth_fakes import TokenEndpoint
from .stored import store_account

MS_TOKEN_URL = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
TRACE = "0a1b2c3d-0000-4e5f-9a8b-112233445566"
CORRELATION = "9f8e7d6c-1111-4a2b-8c3d-aabbccddeeff"
STAMP = "2026-12-01 05:40:11Z"
MS_ERROR = {
    "error": "invalid_grant",
    "error_description": (
        f"AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: {TRACE}"
        f"\r\nCorrelation ID: {CORRELATION}\r\nTimestamp: {STAMP}"
    ),
    "error_codes": [700082],
    "timestamp": STAMP,
    "trace_id": TRACE,
    "correlation_id": CORRELATION,
    "error_uri": "https://login.microsoftonline.com/error?code=700082",
}
KEPT = (("trace_id", TRACE), ("correlation_id", CORRELATION), ("timestamp", STAMP))


def test_microsoft_keeps_its_three_identifiers_from_a_token_error():
    failure = registry.get("microsoft").classify_error(400, MS_ERROR)
    assert failure.diagnostics == KEPT
    assert failure.code == "AADSTS700082"
    assert TRACE not in failure.description  # the description keeps its first line only


def test_a_callback_error_gives_them_in_its_description_only():
    description = MS_ERROR["error_description"]
    found = registry.get("microsoft").diagnostics({"error_description": description})
    assert found == KEPT


@pytest.mark.parametrize(
    "value",
    ["<script>alert(1)</script>", "x" * 65, 12345, None, ["a"], "", " ", "a\nb", "\x00abc"],
    ids=repr,
)
def test_what_cannot_be_an_identifier_is_left_out(value):
    """They come from outside and are stored and shown: only short GUID-like text is kept."""
    body = {**MS_ERROR, "trace_id": value, "error_description": "AADSTS700082: expired"}
    names = [name for name, _ in registry.get("microsoft").classify_error(400, body).diagnostics]
    assert "trace_id" not in names
    assert names == ["correlation_id", "timestamp"]


def test_other_providers_keep_none():
    assert registry.get("generic").classify_error(400, MS_ERROR).diagnostics == ()
    assert registry.get("google").classify_error(400, MS_ERROR).diagnostics == ()


def test_a_refresh_failure_stores_them_on_its_event_and_the_token_tab_shows_them(make_host, db_url):
    host = make_host(db_url=db_url)
    store_account(host, provider="microsoft", expires_in=60)
    st = host.app.extensions["mailoauth"]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, url=MS_TOKEN_URL)
        idp.answers.append(("error", (400, MS_ERROR, {})))
        with host.app.app_context(), pytest.raises(MailOAuthError):
            tokens.refresh(st, "support", "mailbox")
    with host.app.app_context(), host.db.engine.connect() as conn:
        events = st.models.Event.__table__
        stored = conn.execute(
            sa.select(events.c.kind, events.c.diagnostics).where(events.c.kind == "refresh_failed")
        ).one()
    assert stored.diagnostics == dict(KEPT)
    page = host.app.test_client().get("/mailoauth/support/mailbox").get_data(as_text=True)
    for label, value in (
        ("Trace ID (Request ID)", TRACE),
        ("Correlation ID", CORRELATION),
        ("Timestamp", STAMP),
    ):
        assert f"<dt>{label}</dt><dd><code>{value}</code></dd>" in page
    assert "Sign-in logs" in page


def test_without_identifiers_the_token_tab_shows_no_search_hint(host):
    store_account(host, provider="microsoft", expires_in=60)
    st = host.app.extensions["mailoauth"]
    plain = {"error": "invalid_grant", "error_description": "AADSTS700082: expired"}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock, url=MS_TOKEN_URL)
        idp.answers.append(("error", (400, plain, {})))
        with host.app.app_context(), pytest.raises(MailOAuthError):
            tokens.refresh(st, "support", "mailbox")
    page = host.app.test_client().get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert "mailoauth-diagnostics" not in page
    assert "Sign-in logs" not in page
