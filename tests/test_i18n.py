"""The admin's language: Flask-Babel's locale on a host that has it, English everywhere else."""

from __future__ import annotations

import pytest
from flask import render_template_string
from flask_babel import Babel

from flask_mailoauth import i18n


@pytest.fixture
def german_host(make_host):
    """A host with Flask-Babel whose locale selector says German."""
    host = make_host()
    Babel(host.app, locale_selector=lambda: "de")
    return host


def test_english_without_flask_babel_on_the_host(host):
    with host.app.test_request_context():
        assert i18n.gettext("OAuth2 Authorization") == "OAuth2 Authorization"
        assert i18n.gettext("%(n)s left", n=3) == "3 left"
        assert i18n.ngettext("%(num)d error", "%(num)d errors", 2) == "2 errors"


def test_english_outside_an_application():
    assert i18n.gettext("OAuth2 Authorization") == "OAuth2 Authorization"


def test_modal_speaks_the_hosts_locale(german_host):
    client = german_host.app.test_client()
    page = client.get("/mailoauth/support/mailbox?provider=microsoft").get_data(as_text=True)
    assert 'id="mailoauth-title">OAuth2-Autorisierung<' in page


def test_the_hosts_own_underscore_is_left_alone(german_host):
    """Our templates get our catalogue; the host's templates keep the host's ``_``."""
    with german_host.app.test_request_context():
        assert render_template_string('{{ _("OAuth2 Authorization") }}') == "OAuth2 Authorization"


def test_lazy_text_is_translated_when_shown(german_host):
    label = i18n.lazy_gettext("OAuth2 Authorization")
    with german_host.app.test_request_context():
        assert str(label) == "OAuth2-Autorisierung"
    assert str(label) == "OAuth2 Authorization"


def test_the_cli_uses_the_hosts_default_locale(make_host):
    host = make_host(BABEL_DEFAULT_LOCALE="de")
    Babel(host.app, locale_selector=lambda: pytest.fail("no request to select a locale from"))
    with host.app.app_context():
        assert i18n.gettext("OAuth2 Authorization") == "OAuth2-Autorisierung"


def test_a_regional_locale_falls_back_to_its_language(make_host):
    host = make_host()
    Babel(host.app, locale_selector=lambda: "de_AT")
    with host.app.test_request_context():
        assert i18n.gettext("OAuth2 Authorization") == "OAuth2-Autorisierung"
