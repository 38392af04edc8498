"""The seed's walkthrough in Chromium, by its labels, against the Microsoft-shaped IdP, with the
turns an admin takes in real life (issue 12, points 1-3, 7 and 9, and the Show list).

The IdP behaves like Microsoft's: no ``email`` claim, ``scope`` without ``offline_access``,
rotated refresh tokens and AADSTS error bodies. Each failure runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from example_app import create_app
from example_app.extensions import db
from example_app.models import SystemEmail
from peers import browser_login_and_consent
from peers.tls import test_ca

from ..conftest import TEST_KEY

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
SUPPORT = "support@example.test"
DEAD_GRANT = {
    "error": "invalid_grant",
    "error_description": "AADSTS700082: The refresh token has expired due to inactivity.",
    "error_codes": [700082],
}


@pytest.fixture
def helpdesk(db_url, serve_app):
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": db_url,
            "MAILOAUTH_ENCRYPTION_KEYS": [TEST_KEY],
            "MAILOAUTH_ALLOW_INSECURE_HTTP": True,
            "MAILOAUTH_CA_BUNDLE": str(test_ca().ca_file),
        }
    )
    yield app, serve_app(app)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"admin-{name}.png"), full_page=True)


def sign_in(page, server) -> None:
    page.goto(server.url_for("/"))
    page.get_by_label("Email address").fill("admin@example.test")
    page.get_by_label("Password").fill("admin")
    page.get_by_role("button", name="Log in").click()


def open_email(page, address: str) -> None:
    """Admin Panel > Emails > Emails > click a System Email > Remote Mailbox."""
    page.get_by_role("link", name="Admin Panel").first.click()
    page.locator("main").get_by_role("link", name="Emails", exact=True).click()
    page.locator("main").get_by_role("link", name=address, exact=True).click()
    page.get_by_role("tab", name="Remote Mailbox").click()


def save_with_basic(page, dovecot) -> None:
    """The email as it was before OAuth2: Basic Authentication (Legacy) against the server."""
    panel = page.locator("#panel-remote")
    panel.get_by_label("Hostname").fill(dovecot.host)
    panel.get_by_label("Port Number").fill(str(dovecot.imap_port))
    panel.get_by_label("Security").select_option(label="None (plaintext)")
    panel.get_by_label("Authentication").select_option(label="Basic Authentication (Legacy)")
    panel.get_by_label("Username").fill(SUPPORT)
    panel.get_by_label("Password").fill("the-old-password")
    page.get_by_role("button", name="Save Changes").click()
    page.locator(".flash-success", has_text="Successfully updated.").wait_for()


def open_config(page):
    page.locator("#panel-remote").get_by_role("button", name="Config").click()
    dialog = page.locator("dialog.mailoauth-dialog")
    dialog.get_by_role("heading", name="OAuth2 Authorization").wait_for()
    return dialog


def fill_idp_config(page, dialog, idp, secret: str | None = None) -> None:
    """IdP Config: copy the Callback Endpoint, register the app, paste the secret's Value,
    the Application (client) ID and the v2 endpoints; the rest stays prefilled."""
    dialog.get_by_role("tab", name="IdP Config").click()
    callback = dialog.get_by_label("Callback Endpoint").input_value()
    client = idp.register_client(callback, auth_method="client_secret_post")
    dialog.get_by_label("Client Secret", exact=True).fill(secret or client.client_secret)
    dialog.get_by_label("Client ID", exact=True).fill(client.client_id)
    dialog.get_by_label("Authorization Endpoint", exact=True).fill(idp.authorize_url_for("common"))
    dialog.get_by_label("Token Endpoint", exact=True).fill(idp.token_url_for("common"))


def submit_and_sign_in(page, dialog, who: str = SUPPORT) -> None:
    dialog.get_by_role("button", name="Submit").click()
    browser_login_and_consent(page, who)


def banner(page, kind: str) -> str:
    flash = page.locator(f".flash-{kind}").first
    flash.wait_for()
    return flash.inner_text()


def token_tab(page):
    dialog = open_config(page)
    dialog.get_by_role("tab", name="Token").click()
    return dialog


def authorize_by_the_guide(page, server, idp, dovecot) -> None:
    sign_in(page, server)
    open_email(page, SUPPORT)
    save_with_basic(page, dovecot)
    page.locator("#panel-remote").get_by_label("Authentication").select_option(
        label="OAuth2 - Microsoft"
    )
    # The guide: Config, then Submit in the popup; it never says "Save Changes" first.
    dialog = open_config(page)
    fill_idp_config(page, dialog, idp)
    submit_and_sign_in(page, dialog)
    assert "OAuth2 Authorization Successful" in banner(page, "success")


def test_config_without_save_changes_leaves_the_email_on_oauth2(helpdesk, ms_idp, ms_dovecot, page):
    """Point 1: Basic saved, OAuth2 - Microsoft picked, Config without Save Changes, Submit,
    sign in, Accept: the email now says OAuth2 and Fetch now uses the token."""
    app, server = helpdesk
    authorize_by_the_guide(page, server, ms_idp, ms_dovecot)
    shot(page, "1-after-consent")
    remote = page.locator("#panel-remote")
    assert remote.get_by_label("Authentication").evaluate(
        "s => s.options[s.selectedIndex].text"
    ) == ("OAuth2 - Microsoft")
    with app.app_context():
        email = db.session.execute(db.select(SystemEmail).filter_by(address=SUPPORT)).scalar_one()
        assert (email.remote_auth, email.remote_password) == ("microsoft", "")
    page.get_by_role("button", name="Fetch now").click()
    page.locator("#fetch-heading").wait_for()
    assert "Fetching failed" not in page.inner_text("main")
    # The Token tab of a token without an email claim still names the mailbox.
    details = token_tab(page).locator("#mailoauth-panel-token").inner_text()
    assert SUPPORT in details
    assert "offline_access" not in details


def test_dead_refresh_token_then_authorize_again(helpdesk, ms_idp, ms_dovecot, page):
    """Points 2, 3, 4 and 7: the grant dies (AADSTS700082); the Token tab says so once, by
    the mailbox's address, Fetch now shows the error with its guidance, and Authorize again
    brings the account back to active."""
    _, server = helpdesk
    authorize_by_the_guide(page, server, ms_idp, ms_dovecot)
    dialog = token_tab(page)
    ms_idp.fail_next(status=400, body=DEAD_GRANT, grant_type="refresh_token")
    dialog.get_by_role("button", name="Refresh now").click()
    panel = dialog.locator("#mailoauth-panel-token")
    panel.locator(".mailoauth-status").get_by_text("reauthorization required").wait_for()
    shot(page, "2-reauthorization-required")
    text = dialog.inner_text()
    assert "refreshed automatically" not in text
    assert text.count("The refresh token has expired due to inactivity") == 1, text
    assert f"Refresh failed: {SUPPORT} (mailbox): " in text
    assert "1 (mailbox)" not in text
    assert "press Authorize again" in text
    page.keyboard.press("Escape")

    # Submit with nothing changed goes to the IdP, not "Successfully updated."
    dialog = open_config(page)
    dialog.get_by_role("tab", name="IdP Config").click()
    dialog.get_by_role("button", name="Submit").click()
    page.wait_for_url(lambda url: url.startswith(ms_idp.base_url))
    page.goto(server.url_for("/"))
    open_email(page, SUPPORT)

    page.get_by_role("button", name="Fetch now").click()
    error = page.locator("#fetch-error")
    error.wait_for()
    assert f"{SUPPORT} (mailbox)" in error.inner_text()
    assert "press Authorize again" in error.locator(".guidance").inner_text()
    shot(page, "3-fetch-error-with-guidance")

    dialog = token_tab(page)
    dialog.get_by_role("button", name="Authorize again").click()
    browser_login_and_consent(page, SUPPORT)
    assert "OAuth2 Authorization Successful" in banner(page, "success")
    status = token_tab(page).locator(".mailoauth-status").inner_text()
    assert status == "active"
    shot(page, "4-active-again")


def test_wrong_user_with_strict_matching(helpdesk, ms_idp, ms_dovecot, page):
    """Strict Matching on, someone else signs in: refused, saying who and what to do."""
    _, server = helpdesk
    sign_in(page, server)
    open_email(page, SUPPORT)
    dialog = open_config(page)
    fill_idp_config(page, dialog, ms_idp)
    submit_and_sign_in(page, dialog, who="someone.else@example.test")
    text = banner(page, "error")
    shot(page, "5-wrong-user")
    assert "someone.else@example.test" in text
    assert "Strict Matching" in text


def test_secret_id_instead_of_its_value(helpdesk, ms_idp, ms_dovecot, page):
    """The Secret ID pasted for the Value: AADSTS7000215 on the callback, with the fix."""
    _, server = helpdesk
    sign_in(page, server)
    open_email(page, SUPPORT)
    dialog = open_config(page)
    fill_idp_config(page, dialog, ms_idp, secret="8f1e2d3c-0000-4a5b-9c8d-7e6f5a4b3c2d")
    submit_and_sign_in(page, dialog)
    text = banner(page, "error")
    shot(page, "6-secret-id")
    assert "AADSTS7000215" in text
    assert "Value" in text


def test_shared_mailbox_authorized_by_a_delegate(helpdesk, ms_idp, ms_dovecot, page):
    """Strict Matching off: a delegate signs in for the shared mailbox; the Token tab says so."""
    _, server = helpdesk
    sign_in(page, server)
    open_email(page, SUPPORT)
    dialog = open_config(page)
    dialog.get_by_label("Strict Matching").uncheck()
    fill_idp_config(page, dialog, ms_idp)
    submit_and_sign_in(page, dialog, who="delegate@example.test")
    assert "OAuth2 Authorization Successful" in banner(page, "success")
    details = token_tab(page).locator("#mailoauth-panel-token").inner_text()
    shot(page, "7-delegate")
    assert "delegate@example.test" in details


def test_config_on_basic_shows_a_dialog_to_close(helpdesk, page):
    """Point 9: the host's select says Basic and its Config button is pressed anyway: a
    readable message with its close button, not Werkzeug's "Bad Request"."""
    _, server = helpdesk
    sign_in(page, server)
    open_email(page, SUPPORT)
    remote = page.locator("#panel-remote")
    remote.get_by_label("Authentication").select_option(label="Basic Authentication (Legacy)")
    # The demo hides Config for Basic; a host that does not still gets a usable dialog.
    remote.locator("[data-show-when]").first.evaluate("el => el.hidden = false")
    dialog = open_config(page)
    text = dialog.inner_text()
    shot(page, "8-config-on-basic")
    assert "Bad Request" not in text
    assert "is not an OAuth2 provider" in text
    assert "OAuth2 - Microsoft" in text
    dialog.get_by_role("button", name="Close", exact=True).last.click()
    assert not dialog.is_visible()
