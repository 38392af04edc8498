"""Issue 12, the host developer's paths: one port per protocol (point 10), a missing SMTP
account explained (point 11)."""

from __future__ import annotations

import poplib
import socket
from typing import Any

import pytest

from flask_mailoauth import MailboxSettings
from flask_mailoauth.errors import MailConnectionError, NotConfigured, SetupError
from flask_mailoauth.mail import resolve_server
from tests.mail_scripts import USER, ScriptedSessions, pop3_login_script
from tests.stored import store_account


def test_port_is_the_port_of_the_mailbox_protocol_only():
    imap = MailboxSettings(address=USER, host="mail.example.test", port=1993, security="ssl")
    assert resolve_server(imap, "imap", None).port == 1993
    assert resolve_server(imap, "pop3", None).port == 995
    both = MailboxSettings(address=USER, host="mail.example.test", imap_port=1993, pop3_port=1995)
    assert resolve_server(both, "imap", None).port == 1993
    assert resolve_server(both, "pop3", None).port == 1995
    pop = MailboxSettings(address=USER, protocol="pop3", host="mail.example.test", port=1995)
    assert (pop.port_for("pop3"), pop.port_for("imap")) == (1995, None)


def test_port_and_a_protocol_port_that_disagree_are_refused():
    with pytest.raises(ValueError, match=r"port \(993\) and imap_port \(1993\) disagree"):
        MailboxSettings(address=USER, port=993, imap_port=1993)
    assert MailboxSettings(address=USER, port=993, imap_port=993).port_for("imap") == 993


@pytest.fixture
def imap_listener() -> Any:
    """A listening socket standing for the IMAP server; the test checks nobody connected."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.setblocking(False)
        yield sock


def nobody_connected(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def test_connect_pop3_never_uses_the_imap_port(make_host, db_url, imap_listener):
    """As found: an IMAP mailbox with one port; the host's POP3 fetch went to the IMAP server."""
    host = make_host(db_url=db_url, MAILOAUTH_MAIL_TIMEOUT=2)
    store_account(host)
    imap_port = imap_listener.getsockname()[1]
    with ScriptedSessions(
        [b"+OK POP3 ready"], pop3_login_script("at-0", b"+OK Logged in.")
    ) as pop3:
        host.mailboxes["support"] = MailboxSettings(
            address=USER, host="127.0.0.1", port=imap_port, pop3_port=pop3.port, security="none"
        )
        with host.app.app_context():
            conn = host.ext.connect_pop3("support")
        poplib.POP3.close(conn)
    assert nobody_connected(imap_listener)

    # Without a POP3 port the default POP3 port is used (nothing listens there): still not IMAP.
    host.mailboxes["support"] = MailboxSettings(
        address=USER, host="127.0.0.1", port=imap_port, security="none"
    )
    with host.app.app_context(), pytest.raises(MailConnectionError, match=r"127\.0\.0\.1:110\b"):
        host.ext.connect_pop3("support")
    assert nobody_connected(imap_listener)


def test_connect_smtp_without_an_smtp_account_says_how_to_use_the_mailboxs(make_host, db_url):
    host = make_host(db_url=db_url)
    store_account(host, provider="microsoft")
    with host.app.app_context(), pytest.raises(NotConfigured) as caught:
        host.ext.connect_smtp("support")
    message = str(caught.value)
    assert "No SMTP account is configured for mailbox 'support'" in message
    assert 'purpose="mailbox"' in message
    assert "no default" not in message
    with host.app.app_context():
        results = host.ext.test_connection("support", "smtp")
    assert "No SMTP account is configured" in results[0].steps[0].detail


def flashes(client: Any) -> list[tuple[str, str]]:
    with client.session_transaction() as session:
        return session.pop("_flashes", [])


def test_flash_categories_are_the_hosts(make_host, db_url):
    """Point 13: a Bootstrap host maps ``error`` to ``danger``; ``success`` stays."""
    host = make_host(
        db_url=db_url, WTF_CSRF_ENABLED=False, MAILOAUTH_FLASH_CATEGORIES={"error": "danger"}
    )
    client = host.app.test_client()
    assert client.post("/mailoauth/support/mailbox/delete").status_code == 303
    assert flashes(client) == [("danger", "There was no token to delete.")]
    store_account(host)
    client.post("/mailoauth/support/mailbox/delete")
    assert [category for category, _ in flashes(client)] == ["success"]


def test_our_own_page_styles_a_remapped_category_by_its_kind(make_host, db_url):
    """A host's ``danger`` still shows as our red banner on the page without script."""
    host = make_host(
        db_url=db_url, WTF_CSRF_ENABLED=False, MAILOAUTH_FLASH_CATEGORIES={"error": "danger"}
    )
    client = host.app.test_client()
    client.post("/mailoauth/support/mailbox/delete")
    page = client.get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert "mailoauth-banner mailoauth-banner-error" in page
    assert "mailoauth-banner-danger" not in page


def test_the_default_flash_categories_are_success_and_error(make_host, db_url):
    client = make_host(db_url=db_url, WTF_CSRF_ENABLED=False).app.test_client()
    client.post("/mailoauth/support/mailbox/delete")
    assert flashes(client) == [("error", "There was no token to delete.")]


@pytest.mark.parametrize("bad", [{"failure": "danger"}, {"error": ""}, ["danger"]])
def test_flash_categories_that_would_be_ignored_are_refused(make_host, bad):
    with pytest.raises(SetupError, match="MAILOAUTH_FLASH_CATEGORIES must map"):
        make_host(MAILOAUTH_FLASH_CATEGORIES=bad)
