"""The seed's walkthrough in Chromium through the demo helpdesk, against the real IdPs.

Admin Panel > Emails > Emails > a system email > Remote Mailbox > Authentication "OAuth2 -
Microsoft" > Config > IdP Config (copy the Callback Endpoint, fill Client Secret, Client ID,
endpoints) > Submit > sign in as the mailbox and consent > green banner > Config > Token tab.
Then the stored token opens the mailbox at Dovecot. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import pytest

from example_app import create_app
from example_app.extensions import db, mailoauth
from example_app.models import SystemEmail
from peers import browser_login_and_consent
from peers.tls import test_ca

from ..conftest import TEST_KEY
from .browser_steps import open_config, open_remote_mailbox, shot


@pytest.fixture
def helpdesk(tmp_path, serve_app):
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


def test_microsoft_walkthrough_in_chromium(helpdesk, ms_idp, ms_dovecot, page):
    app, server = helpdesk
    use_dovecot(app, ms_dovecot, "microsoft")

    def fill(dialog, client):
        # "the rest prefilled": tenant, cloud and the Outlook scopes stay as they are.
        dialog.locator("#mailoauth-idp_client_id").fill(client.client_id)
        dialog.locator("#mailoauth-idp_authorization_endpoint").fill(
            ms_idp.authorize_url_for("common")
        )
        dialog.locator("#mailoauth-idp_token_endpoint").fill(ms_idp.token_url_for("common"))

    walkthrough(page, server, ms_idp, provider_label="OAuth2 - Microsoft", fill=fill, prefix="ms")
    details = page.locator("#mailoauth-panel-token").inner_text()
    assert ms_idp.tenant_id in details
    with app.app_context():
        imap = mailoauth.connect_imap("1")
        assert imap.state == "SELECTED"
        imap.logout()


def test_generic_walkthrough_in_chromium_then_fetch_now(helpdesk, generic_idp, dovecot, page):
    app, server = helpdesk
    use_dovecot(app, dovecot, "generic")

    def fill(dialog, client):
        dialog.locator("#mailoauth-idp_issuer").fill(generic_idp.issuer)
        dialog.locator("#mailoauth-idp_client_id").fill(client.client_id)

    walkthrough(
        page,
        server,
        generic_idp,
        provider_label="OAuth2 - Other Provider",
        fill=fill,
        prefix="generic",
    )
    page.keyboard.press("Escape")
    page.click("button:has-text('Fetch now')")
    page.locator("#fetch-heading").wait_for()
    assert "Fetching failed" not in page.inner_text("main")


def test_modal_is_usable_at_360_px_and_by_keyboard(helpdesk, page):
    _, server = helpdesk
    page.set_viewport_size({"width": 360, "height": 740})
    open_remote_mailbox(page, server)
    page.select_option("#remote-auth", label="OAuth2 - Microsoft")
    dialog = open_config(page)
    info = dialog.locator("role=tab[name='Info']")
    info.focus()
    page.keyboard.press("ArrowRight")
    assert dialog.locator("role=tab[name='IdP Config']").get_attribute("aria-selected") == "true"
    assert dialog.locator("#mailoauth-panel-idp").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    box = dialog.bounding_box()
    assert box["width"] <= 360
    shot(page, "modal-360px-idp-config")
