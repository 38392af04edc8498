"""Errors, guidance, warnings, stored lines and command output speak the admin's language;
log lines stay English.

In the pseudo-language (``tests.pseudo_locale``) every message is the English one in ``⟦…⟧``,
so a message that is not marked, or is assembled from fragments, shows unwrapped.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
import responses
import sqlalchemy as sa
from flask_babel import Babel

from flask_mailoauth import tokens
from flask_mailoauth.errors import ConfigurationError, ReauthorizationRequired
from flask_mailoauth.i18n import LazyText
from flask_mailoauth.models import own_session, utcnow

from .commands import health, run, update
from .oauth_fakes import TokenEndpoint
from .pseudo_locale import PSEUDO, wrapped
from .stored import store_account


def babel_host(make_host, **config):
    """A host with Flask-Babel whose requests speak the pseudo-language."""
    host = make_host(**config)
    Babel(host.app, locale_selector=lambda: PSEUDO)
    return host


def test_error_guidance_is_translated_when_shown(pseudo_locale, make_host):
    host = babel_host(make_host)
    with host.app.test_request_context():
        assert str(ReauthorizationRequired("x").guidance) == wrapped(
            "Open Config and press Authorize again (Token tab), signing in as the mailbox."
        )
        assert str(ConfigurationError.guidance).startswith("⟦Fix the IdP Config")
    # the same error outside a request of a Babel host: English
    assert str(ReauthorizationRequired.guidance).startswith("Open Config")


def test_health_warnings_are_translated(pseudo_locale, make_host):
    host = babel_host(make_host)
    store_account(host)
    update(host, "Account", secret_expires_on=utcnow().date() + timedelta(days=6))
    update(host, "Credential", clock_skew=-90.0)
    with host.app.test_request_context():
        [h] = host.ext.health()
    assert h.warnings == [
        wrapped(
            f"The client secret expires on {utcnow().date() + timedelta(days=6)} (6 days): "
            "create a new one and paste its Value before then (no new consent needed)."
        ),
        wrapped(
            "This host's clock is 90 s behind the identity provider's: tokens are refreshed too "
            "early or too late. Synchronise the clock (NTP)."
        ),
    ]
    assert all(type(w) is str for w in h.warnings)


def test_reauthorization_required_speaks_the_admins_language(pseudo_locale, make_host):
    host = babel_host(make_host)
    store_account(host)
    update(host, "Account", config_signature="changed")
    with host.app.test_request_context(), pytest.raises(ReauthorizationRequired) as raised:
        host.ext.access_token("support")
    assert str(raised.value) == wrapped(
        "support@example.test (mailbox): the IdP Config changed since the token was issued; "
        "authorize again."
    )


def test_the_cli_speaks_the_hosts_default_locale(pseudo_locale, make_host):
    """No request: the locale selector is never asked, BABEL_DEFAULT_LOCALE is used."""
    host = make_host(BABEL_DEFAULT_LOCALE=PSEUDO)
    Babel(host.app, locale_selector=lambda: pytest.fail("no request to select a locale from"))
    assert run(host, "status").output == wrapped("No OAuth2 accounts.") + "\n"
    store_account(host)
    update(host, "Credential", status="reauthorization_required", last_error="AADSTS70008: gone")
    update(host, "Account", enabled=False)
    result = run(host, "status")
    # the mark stays as monitors grep it; the words are the admin's
    assert result.output.splitlines()[0] == (
        "[off] support (mailbox) — "
        + wrapped(f"disabled (token status: {wrapped('reauthorization required')})")
    )
    assert result.exit_code == 0


def test_without_flask_babel_the_cli_stays_english(pseudo_locale, host):
    store_account(host)
    update(host, "Credential", status="reauthorization_required", last_error="revoked")
    assert "[!!] support (mailbox) — reauthorization required" in run(host, "status").output


def test_stored_lines_are_text_in_the_admins_language_and_logs_stay_english(
    pseudo_locale, make_host, db_url, caplog
):
    """A failed and a successful refresh store plain translated text (on SQLite and
    PostgreSQL); every log line they write is English, with no lazy text in its arguments."""
    host = babel_host(make_host, db_url=db_url)
    store_account(host, expires_in=60)
    caplog.set_level(logging.DEBUG, logger="flask_mailoauth")
    with responses.RequestsMock() as mock:
        idp = TokenEndpoint(mock)
        idp.answers.append(("error", (200, "not a JSON object", {})))
        idp.rotate()
        with host.app.test_request_context():
            with pytest.raises(tokens.TemporarilyUnavailable) as raised:
                tokens.refresh(host.app.extensions["mailoauth"], "support", "mailbox")
            tokens.refresh(host.app.extensions["mailoauth"], "support", "mailbox")
    malformed = wrapped(
        "The token endpoint answered HTTP 200 with something else than a JSON object."
    )
    assert malformed in str(raised.value)
    st = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st.db) as s:
        stored = {e.kind: e.message for e in s.scalars(sa.select(st.models.Event).order_by("id"))}
    assert stored["refresh_failed"].startswith(f"invalid_token_response: {malformed} — ⟦")
    assert stored["refreshed"].startswith("⟦Access token refreshed, valid until ")
    assert stored["refreshed"].endswith(" UTC; new refresh token stored⟧")
    records = [r for r in caplog.records if r.name == "flask_mailoauth"]
    assert any("Refresh failed for support (mailbox)" in r.getMessage() for r in records)
    for record in records:
        assert "⟦" not in record.getMessage()
        assert not any(isinstance(arg, LazyText) for arg in record.args or ())


def test_health_json_is_serialisable_text(pseudo_locale, make_host):
    host = make_host(BABEL_DEFAULT_LOCALE=PSEUDO)
    Babel(host.app)
    store_account(host)
    update(host, "Credential", failure_count=4, status="retrying", last_error="HTTP 503")
    result = run(host, "status", "--json")
    [account] = json.loads(result.output)
    assert account["warnings"] == [wrapped("4 refresh attempts failed in a row: HTTP 503")]
    assert account["status"] == "retrying"  # a code for machines, never translated
    with host.app.app_context():
        assert health(host)[("support", "mailbox")].needs_attention
