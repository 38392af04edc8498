"""The seed's walkthrough in Chromium through the demo helpdesk, against the real IdPs.

Admin Panel > Emails > Emails > a system email > Remote Mailbox > Authentication "OAuth2 -
Microsoft" > Config > IdP Config (copy the Callback Endpoint, fill Client Secret, Client ID,
endpoints) > Submit > sign in as the mailbox and consent > green banner > Config > Token tab.
Then the stored token opens the mailbox at Dovecot. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import pytest

from example_app.extensions import mailoauth

from .browser_steps import (
    demo_helpdesk,
    generic_walkthrough,
    open_config,
    open_remote_mailbox,
    shot,
    use_dovecot,
    walkthrough,
)


@pytest.fixture
def helpdesk(tmp_path, serve_app):
    return demo_helpdesk(tmp_path, serve_app)


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
    generic_walkthrough(page, server, generic_idp, prefix="generic")
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
