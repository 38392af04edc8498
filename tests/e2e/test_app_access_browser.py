"""Issue 15, point 1 in Chromium: an admin picks Application access, grants admin consent at the
Microsoft-shaped IdP (nobody signs in as the mailbox), reads the roles on the Token tab, copies
the tenant setup with its Copy button, and tests the connection against Dovecot."""

from __future__ import annotations

import pytest

from example_app.extensions import db
from example_app.models import SystemEmail

from .browser_steps import demo_helpdesk, open_config, open_remote_mailbox, shot

SUPPORT = "support@example.test"


@pytest.fixture
def helpdesk(tmp_path, serve_app, ms_dovecot, ms_postfix):
    """The demo helpdesk, its support@ email served by the Microsoft-shaped Dovecot and
    Postfix (the settings the admin fills besides Config)."""
    app, server = demo_helpdesk(tmp_path, serve_app)
    with app.app_context():
        email = db.session.execute(db.select(SystemEmail).filter_by(address=SUPPORT)).scalar_one()
        email.host, email.port, email.security = ms_dovecot.host, ms_dovecot.imap_port, "none"
        email.smtp_host, email.smtp_port = ms_postfix.host, ms_postfix.port
        email.smtp_security = "none"
        db.session.commit()
    return app, server


def test_admin_consent_roles_and_the_copied_tenant_setup(helpdesk, ms_idp, page):
    _, server = helpdesk
    open_remote_mailbox(page, server)
    page.locator("#panel-remote").get_by_label("Authentication").select_option(
        label="OAuth2 - Microsoft"
    )
    dialog = open_config(page)
    dialog.get_by_role("tab", name="IdP Config").click()
    callback = dialog.get_by_label("Callback Endpoint").input_value()
    registration = ms_idp.register_app(callback)
    sp_id = ms_idp.grant_app_mailbox(registration.client_id, SUPPORT)
    tid = ms_idp.tenant_id
    dialog.get_by_label("Access", exact=True).select_option(
        label="Application (admin consent, nobody signs in)"
    )
    dialog.get_by_label("Tenant", exact=True).fill(tid)
    dialog.get_by_label("Client Secret", exact=True).fill(registration.client_secret)
    dialog.get_by_label("Client ID", exact=True).fill(registration.client_id)
    dialog.get_by_label("Authorization Endpoint", exact=True).fill(ms_idp.authorize_url_for(tid))
    dialog.get_by_label("Token Endpoint", exact=True).fill(ms_idp.token_url_for(tid))
    dialog.get_by_label("Service principal object ID", exact=True).fill(sp_id)
    # Submit goes to the admin consent page; the test IdP's administrator accepts at once.
    dialog.get_by_role("button", name="Submit").click()
    success = page.locator(".flash-success").first
    success.wait_for()
    assert "OAuth2 Authorization Successful" in success.inner_text()
    assert registration.client_id in [c["client_id"] for c in ms_idp.consents()]

    dialog = open_config(page)
    dialog.get_by_role("tab", name="Token").click()
    panel = dialog.locator("#mailoauth-panel-token")
    roles = panel.locator("#mailoauth-application-roles").inner_text()
    assert roles == "IMAP.AccessAsApp POP.AccessAsApp SMTP.SendAsApp"
    assert f"granted in tenant {tid}" in panel.inner_text()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    panel.get_by_role("button", name="Copy").click()
    status = dialog.locator("#mailoauth-setup-copy-status")
    status.filter(has_text="Copied").wait_for(state="attached")
    copied = page.evaluate("navigator.clipboard.readText()").splitlines()
    assert copied[:3] == [
        "Connect-ExchangeOnline",
        f"New-ServicePrincipal -AppId '{registration.client_id}' -ObjectId '{sp_id}'",
        f"Add-MailboxPermission -Identity '{SUPPORT}' -User '{sp_id}' -AccessRights FullAccess",
    ]
    shot(page, "app-access-token-tab")

    dialog.get_by_role("button", name="Test connection").click()
    checks = dialog.locator(".mailoauth-checks")
    checks.wait_for()
    assert checks.locator("h3").all_inner_texts() == [
        "✔ IMAP: connection works",
        "✔ SMTP: connection works",
    ]
    assert checks.locator(".mailoauth-step-failed").count() == 0
