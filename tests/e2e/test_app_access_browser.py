"""Issue 15, point 1 in Chromium: an admin picks Application access, grants admin consent at the
Microsoft-shaped IdP (nobody signs in as the mailbox), reads the roles on the Token tab, copies
the tenant setup with its Copy button, and tests the connection against Dovecot."""

from __future__ import annotations

from .test_admin_walkthrough_browser import (  # noqa: F401 - helpdesk is a fixture
    SUPPORT,
    banner,
    helpdesk,
    open_config,
    open_email,
    save_with_basic,
    shot,
    sign_in,
    token_tab,
)


def test_admin_consent_roles_and_the_copied_tenant_setup(helpdesk, ms_idp, ms_dovecot, page):  # noqa: F811
    _, server = helpdesk
    sign_in(page, server)
    open_email(page, SUPPORT)
    save_with_basic(page, ms_dovecot)
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
    assert "OAuth2 Authorization Successful" in banner(page, "success")
    assert registration.client_id in [c["client_id"] for c in ms_idp.consents()]

    dialog = token_tab(page)
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
    assert checks.locator("h3").inner_text() == "✔ IMAP: connection works"
    assert checks.locator(".mailoauth-step-failed").count() == 0
