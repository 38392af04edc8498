"""The extension shell: init_app, app factory, two apps, callbacks and helpful errors."""

from __future__ import annotations

import logging

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_mailoauth import MailboxSettings, MailOAuth, connections, mail
from flask_mailoauth.errors import MailboxNotFound, SetupError
from flask_mailoauth.extension import DEFAULTS
from flask_mailoauth.providers.base import MailServer
from flask_mailoauth.state import state


def test_init_app_registers_state_defaults_blueprint_and_cli(host):
    app = host.app
    st = app.extensions["mailoauth"]
    assert st.extension is host.ext
    assert st.db is host.db
    for key in DEFAULTS:
        assert key in app.config
    assert "mailoauth" in app.blueprints
    assert "mailoauth_config_button" in app.jinja_env.globals
    assert "mailoauth" in app.cli.commands
    assert not hasattr(host.ext, "app")


def test_app_factory_and_two_apps_in_one_process(tmp_path):
    db = SQLAlchemy()
    ext = MailOAuth(db=db)

    def create_app(name, prefix):
        app = Flask(name)
        app.config.update(
            SECRET_KEY=name,
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / name}.db",
            MAILOAUTH_URL_PREFIX=prefix,
        )
        db.init_app(app)
        ext.init_app(app)
        return app

    one, two = create_app("one", "/oauth-one"), create_app("two", "/oauth-two")
    assert one.extensions["mailoauth"].extension is two.extensions["mailoauth"].extension
    assert one.extensions["mailoauth"].keyring is not two.extensions["mailoauth"].keyring
    assert any(r.rule.startswith("/oauth-one/") for r in one.url_map.iter_rules())
    assert any(r.rule.startswith("/oauth-two/") for r in two.url_map.iter_rules())
    assert not any(r.rule.startswith("/oauth-one/") for r in two.url_map.iter_rules())


def test_db_found_from_flask_sqlalchemy_when_not_passed(tmp_path):
    app = Flask("implicit")
    app.config.update(SECRET_KEY="x", SQLALCHEMY_DATABASE_URI="sqlite://")
    db = SQLAlchemy(app)
    MailOAuth(app)
    assert app.extensions["mailoauth"].db is db


def test_double_registration_is_refused(host):
    with pytest.raises(RuntimeError, match="already been registered"):
        host.ext.init_app(host.app, db=host.db)


def test_missing_db_says_how_to_fix():
    app = Flask("nodb")
    with pytest.raises(SetupError, match=r"MailOAuth\(app, db=db\)"):
        MailOAuth(app)


def test_missing_init_app_says_so():
    app = Flask("bare")
    with app.app_context(), pytest.raises(SetupError, match="Did you forget to call"):
        state()


def test_mailbox_loader_errors_tell_the_host_what_to_do(make_host):
    h = make_host()
    with h.app.app_context():
        state().hooks.mailbox_loader = None  # as if the host never registered one
    with h.app.app_context(), pytest.raises(SetupError, match=r"@mailoauth\.mailbox_loader"):
        h.ext.mailbox("support")
    h.ext.mailbox_loader(lambda key: None)
    with h.app.app_context(), pytest.raises(MailboxNotFound, match="'nope'"):
        h.ext.mailbox("nope")
    h.ext.mailbox_loader(lambda key: {"address": "x@example.test"})
    with h.app.app_context(), pytest.raises(SetupError, match="must return MailboxSettings"):
        h.ext.mailbox("support")


def test_mailbox_settings_validate_their_input():
    assert MailboxSettings("a@example.test").sender == "a@example.test"
    assert (
        MailboxSettings("a@example.test", smtp_address="b@example.test").sender == "b@example.test"
    )
    with pytest.raises(ValueError, match="email address"):
        MailboxSettings("not-an-address")
    with pytest.raises(ValueError, match="imap"):
        MailboxSettings("a@example.test", protocol="smtp")
    with pytest.raises(ValueError, match="security"):
        MailboxSettings("a@example.test", security="tls")


def test_smtp_connection_test_signs_in_as_smtp_address_and_tries_the_mailbox_as_sender(
    make_host, monkeypatch
):
    """A delegate signing in for a shared mailbox: the sender probe is the mailbox's own
    address, so a missing Send As right shows (it used to probe the sign-in address itself)."""
    h = make_host()
    h.mailboxes["shared"] = MailboxSettings(
        "shared@example.test",
        smtp_host="smtp.example.test",
        smtp_security="starttls",
        smtp_address="delegate@example.test",
    )
    calls = []

    def check_smtp(server, user, token, *, mail_from=None, timeout):
        calls.append((server, user, mail_from))
        return mail.CheckResult("SMTP", True)

    monkeypatch.setattr(mail, "check_smtp", check_smtp)
    with h.app.app_context():
        assert h.ext.test_connection("shared", "smtp") == [mail.CheckResult("SMTP", True)]
    assert calls == [
        (
            MailServer("smtp.example.test", 587, "starttls"),
            "delegate@example.test",
            "shared@example.test",
        )
    ]


def test_without_access_check_every_view_is_403_and_says_how_to_register_one(make_host):
    h = make_host(access=None)
    client = h.app.test_client()
    for url in ("/mailoauth/support/mailbox", "/mailoauth/support/smtp"):
        response = client.get(url)
        assert response.status_code == 403
        assert b"@mailoauth.access_check" in response.data
    # The callback is open to a re-consent link's holder; it refuses anything else itself.
    refused = client.get("/mailoauth/callback")
    assert refused.status_code == 400
    assert b"carries no state" in refused.data


def test_access_check_returning_false_is_403(make_host):
    client = make_host(access=False).app.test_client()
    response = client.get("/mailoauth/support/mailbox")
    assert response.status_code == 403
    assert b"not allowed" in response.data


def test_key_derived_from_secret_key_warns(make_host, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_mailoauth"):
        make_host(MAILOAUTH_ENCRYPTION_KEYS=None)
    assert "MAILOAUTH_ENCRYPTION_KEYS is not set" in caplog.text


def test_bad_encryption_key_is_refused_with_the_way_to_make_one(make_host):
    with pytest.raises(SetupError, match="generate_key") as info:
        make_host(MAILOAUTH_ENCRYPTION_KEYS="too-short")
    assert "MAILOAUTH_ENCRYPTION_KEYS" in str(info.value)
    assert "too-short" not in str(info.value)


def test_no_key_at_all_is_refused(tmp_path):
    app = Flask("nokey")
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://")
    with pytest.raises(SetupError, match="MAILOAUTH_ENCRYPTION_KEYS"):
        MailOAuth(app, db=SQLAlchemy(app))


def test_same_as_remote_mailbox_smtp_uses_the_mailbox_accounts_provider_servers(host):
    from flask_mailoauth.mail import MailServer

    from .stored import store_account

    store_account(host, provider="microsoft")  # a mailbox account only, no SMTP one
    with host.app.app_context():
        _, server = connections.server_for(state(), "support", "smtp", "mailbox")
    assert server == MailServer("smtp.office365.com", 587, "starttls")
