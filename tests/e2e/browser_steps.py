"""The admin's steps in Chromium through the demo helpdesk, shared by the browser walkthroughs:
serve the demo, sign in and open the Remote Mailbox tab, open the Config modal, authorize,
keep a screenshot."""

from __future__ import annotations

from pathlib import Path

from example_app import create_app
from example_app.extensions import db
from example_app.models import SystemEmail
from peers import browser_login_and_consent
from peers.tls import test_ca

from ..conftest import TEST_KEY

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_remote_mailbox(page, server) -> None:
    page.goto(server.url_for("/"))
    page.fill("input[name=email]", "admin@example.test")
    page.fill("input[name=password]", "admin")
    page.click("main button[type=submit]")  # the header holds the language switch
    page.click("text=Admin Panel")
    page.click("main a:text-is('Emails')")
    page.click("main a:text-is('support@example.test')")
    page.click("role=tab[name='Remote Mailbox']")


def open_config(page):
    page.click("#panel-remote .mailoauth-config-button")
    dialog = page.locator("dialog.mailoauth-dialog")
    dialog.locator("h2", has_text="OAuth2 Authorization").wait_for()
    return dialog


def demo_helpdesk(tmp_path, serve_app):
    """The demo helpdesk on SQLite, served on loopback: ``(app, server)``."""
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'helpdesk.sqlite3'}",
            "MAILOAUTH_ENCRYPTION_KEYS": [TEST_KEY],
            "MAILOAUTH_ALLOW_INSECURE_HTTP": True,
            "MAILOAUTH_CA_BUNDLE": str(test_ca().ca_file),
        }
    )
    return app, serve_app(app)


def use_dovecot(app, dovecot, provider: str) -> None:
    """The rest of the mailbox settings the admin fills after authorizing (step not shown)."""
    with app.app_context():
        email = db.session.get(SystemEmail, 1)
        email.host, email.port, email.security = dovecot.host, dovecot.imap_port, "none"
        email.remote_auth = provider
        db.session.commit()


def walkthrough(page, server, idp, *, provider_label: str, fill, prefix: str) -> None:
    open_remote_mailbox(page, server)
    page.select_option("#remote-auth", label=provider_label)
    dialog = open_config(page)
    shot(page, f"{prefix}-1-info-tab")
    dialog.locator("role=tab[name='IdP Config']").click()
    callback = dialog.locator("#mailoauth-callback").input_value()
    assert callback == server.url_for("/mailoauth/callback")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    dialog.locator("button", has_text="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == callback
    client = idp.register_client(callback, auth_method="client_secret_post")
    dialog.locator("#mailoauth-client_secret").fill(client.client_secret)
    fill(dialog, client)
    shot(page, f"{prefix}-2-idp-config-tab")
    dialog.locator("button", has_text="Submit").click()
    browser_login_and_consent(page, "support@example.test")
    banner = page.locator(".flash-success, .mailoauth-banner-success")
    banner.wait_for()
    assert "OAuth2 Authorization Successful" in banner.inner_text()
    shot(page, f"{prefix}-3-success-banner")
    dialog = open_config(page)
    dialog.locator("role=tab[name='Token']").click()
    details = dialog.locator("#mailoauth-panel-token").inner_text()
    assert "support@example.test" in details
    assert "Expires" in details
    assert "Delete Token" in dialog.inner_text()
    shot(page, f"{prefix}-4-token-tab")


def generic_walkthrough(page, server, idp, prefix: str) -> None:
    """The walkthrough with "OAuth2 - Other Provider": the issuer and the client id typed, the
    rest found by discovery; the modal closed at the end."""

    def fill(dialog, client):
        dialog.locator("#mailoauth-idp_issuer").fill(idp.issuer)
        dialog.locator("#mailoauth-idp_client_id").fill(client.client_id)

    walkthrough(
        page, server, idp, provider_label="OAuth2 - Other Provider", fill=fill, prefix=prefix
    )
    page.keyboard.press("Escape")
