"""One home per error: every public exception lives in ``flask_mailoauth.errors``, and a CSRF
failure is Flask-WTF's ``CSRFError``, which the host's own error handler answers."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest
import sqlalchemy as sa
from flask_wtf.csrf import CSRFError

import flask_mailoauth
from flask_mailoauth import errors
from flask_mailoauth.models import own_session
from flask_mailoauth.testing import seed_account

MODAL = "/mailoauth/support/mailbox"
POSTS = (MODAL, f"{MODAL}/authorize", f"{MODAL}/delete", f"{MODAL}/refresh", f"{MODAL}/test")


def public_exceptions() -> set[type[BaseException]]:
    """Every public exception class defined anywhere in the package."""
    found: set[type[BaseException]] = set()
    package = flask_mailoauth.__path__
    for info in pkgutil.walk_packages(package, prefix="flask_mailoauth."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("flask_mailoauth")
                and not name.startswith("_")
            ):
                found.add(value)
    return found


def test_every_public_exception_is_defined_in_and_importable_from_errors():
    found = public_exceptions()
    assert errors.MailAuthenticationError in found  # the walk reaches the mail side
    for cls in found:
        assert cls.__module__ == "flask_mailoauth.errors", cls
        assert getattr(errors, cls.__name__) is cls


def test_the_documented_mail_paths_still_import():
    from flask_mailoauth import mail

    assert mail.MailAuthenticationError is errors.MailAuthenticationError
    assert mail.MailConnectionError is errors.MailConnectionError
    assert mail.MailCommandRefused is errors.MailCommandRefused


def credentials(host) -> int:
    with host.app.app_context(), own_session(host.db) as s:
        return s.execute(sa.text("SELECT COUNT(*) FROM mailoauth_credential")).scalar_one()


@pytest.fixture
def guarded(make_host, db_url):
    """A host with CSRF on, its own CSRFError handler and one authorized account."""
    host = make_host(db_url=db_url)
    assert host.app.config.get("WTF_CSRF_ENABLED", True)

    @host.app.errorhandler(CSRFError)
    def refused(error: CSRFError):
        return f"host handler: {error.description}", 419

    with host.app.app_context():
        seed_account("support")
    return host


@pytest.mark.parametrize("url", POSTS)
def test_a_post_without_csrf_token_reaches_the_hosts_csrf_error_handler(guarded, url):
    client = guarded.app.test_client()
    client.get(MODAL)  # a session exists, the token is missing
    response = client.post(url, data={"provider": "generic", "client_secret": "x"})
    assert response.status_code == 419
    assert response.get_data(as_text=True).startswith("host handler: The form expired")
    assert credentials(guarded) == 1


def test_a_forged_token_reaches_the_hosts_handler_and_a_real_one_does_not(guarded):
    client = guarded.app.test_client()
    page = client.get(MODAL).get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    forged = client.post(f"{MODAL}/delete", data={"csrf_token": token[:-2] + "xx"})
    assert forged.status_code == 419
    assert credentials(guarded) == 1
    deleted = client.post(f"{MODAL}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303
    assert credentials(guarded) == 0


def test_without_a_host_handler_a_csrf_failure_is_a_400_that_says_what_to_do(make_host, db_url):
    client = make_host(db_url=db_url).app.test_client()
    client.get(MODAL)
    response = client.post(f"{MODAL}/delete")
    assert response.status_code == 400
    assert "reload the page" in response.get_data(as_text=True)
