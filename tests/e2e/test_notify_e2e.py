"""Issue 16 point 1 end to end: a notification e-mailed through a healthy mailbox's real SMTP
sign-in (Postfix with Dovecot SASL, the token issued by the real IdP) and read back over IMAP."""

from __future__ import annotations

import uuid

from flask_mailoauth import notify

from ..notify_peers import refuse
from ..stored import store_account
from .flows import authorize, point_at, wait_for_subject

SUPPORT = "support@example.test"


def test_a_broken_account_is_emailed_through_the_healthy_mailbox_and_read_back(
    make_host, generic_idp, dovecot, postfix
):
    host = make_host(MAILOAUTH_NOTIFY_EMAIL_TO=[SUPPORT], MAILOAUTH_NOTIFY_MAILBOX="support")
    authorize(host, generic_idp, SUPPORT)
    point_at(host, dovecot, postfix=postfix, smtp_purpose="mailbox")
    broken = f"sales-{uuid.uuid4().hex[:8]}"
    store_account(host, key=broken)
    refuse(host, key=broken)
    with host.app.app_context():
        [sent] = notify.check(host.app.extensions["mailoauth"])
        imap = host.ext.connect_imap("support")
        try:
            got = wait_for_subject(imap, sent.subject)
        finally:
            imap.logout()
    assert sent.key == broken
    assert got["From"] == SUPPORT
    assert got["Auto-Submitted"] == "auto-generated"
    body = got.get_content()
    assert "Provider's code: AADSTS700082" in body
    assert "What to do: Open the account's Config" in body
