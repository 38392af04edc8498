"""Providers' and mail checks' text follows the host's Flask-Babel locale, English without it.

A pseudo catalogue, every message of the providers, the mail checks and the outbound rules
translated as ``⟦message⟧``, shows which text went through the catalogue and which did not.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from flask_babel import Babel

from flask_mailoauth.mail import CheckResult, check_imap
from flask_mailoauth.providers.microsoft import ERRORS, MicrosoftProvider
from tests.mail_scripts import IMAP_GUIDANCE, IMAP_LOGIN, IMAP_LOGOUT, TOKEN, USER, at, imap_server
from tests.scripted_server import Turn

from .pseudo_locale import wrapped

MICROSOFT = MicrosoftProvider()
#: a refresh token Microsoft let expire
EXPIRED = {"error": "invalid_grant", "error_codes": [700082], "error_description": "AADSTS700082"}


@pytest.fixture
def pseudo_host(make_host, db_url, pseudo_locale):
    """A Flask-Babel host in the pseudo-language, on SQLite and PostgreSQL."""
    host = make_host(db_url=db_url)
    Babel(host.app, locale_selector=lambda: pseudo_locale)
    return host


def refused_inbox() -> AbstractContextManager:
    """An IMAP server that accepts the token and refuses INBOX (Exchange's "not connected")."""
    return imap_server(
        b"AUTH=XOAUTH2 SASL-IR",
        IMAP_LOGIN,
        Turn(b"{tag} EXAMINE INBOX", [b"{tag} NO User is authenticated but not connected."]),
        IMAP_LOGOUT,
    )


def run_check(in_context: Callable[[], AbstractContextManager]) -> CheckResult:
    with refused_inbox() as srv, in_context():
        return check_imap(at(srv), USER, TOKEN, timeout=5)


def test_a_microsoft_classification_speaks_the_hosts_locale(pseudo_host):
    english = ERRORS["AADSTS700082"].guidance
    with pseudo_host.app.test_request_context():
        failure = MICROSOFT.classify_error(400, EXPIRED)
        assert failure.guidance == wrapped(english)
        assert type(failure.guidance) is str  # stored and logged as the text of the moment
        assert MICROSOFT.guidance("700082") == wrapped(english)
    assert MICROSOFT.classify_error(400, EXPIRED).guidance == english


def test_a_mail_check_speaks_the_hosts_locale(pseudo_host):
    result = run_check(pseudo_host.app.test_request_context)
    names = [s.name for s in result.steps]
    assert names == [wrapped("connect"), wrapped("sign in"), wrapped("open INBOX")]
    assert result.steps[-1].guidance == wrapped(IMAP_GUIDANCE)
    refusal = "INBOX refused: NO User is authenticated but not connected."
    assert result.steps[-1].detail == wrapped(refusal)


def test_field_labels_and_validation_speak_the_hosts_locale(pseudo_host):
    label = MICROSOFT.field("client_id").label
    with pseudo_host.app.test_request_context():
        assert str(label) == wrapped("Client ID")
        errors = MICROSOFT.validate({"tenant": "bad tenant!"}, allow_insecure_http=False)
        assert errors["client_id"] == wrapped("%(label)s is required.").replace(
            "%(label)s", wrapped("Client ID")
        )
        assert errors["tenant"] == wrapped("Enter common, a tenant ID (a GUID) or a domain.")


def test_english_without_flask_babel(make_host, db_url):
    host = make_host(db_url=db_url)
    result = run_check(host.app.test_request_context)
    assert [s.name for s in result.steps] == ["connect", "sign in", "open INBOX"]
    assert result.steps[-1].guidance == IMAP_GUIDANCE
    with host.app.test_request_context():
        assert MICROSOFT.classify_error(400, EXPIRED).guidance == (
            "The refresh token expired after 90 days unused: authorize again; scheduling "
            "`flask mailoauth refresh --due` daily keeps it alive."
        )
        assert str(MICROSOFT.field("client_id").label) == "Client ID"
        errors = MICROSOFT.validate({}, allow_insecure_http=False)
        assert errors["client_id"] == "Client ID is required."
