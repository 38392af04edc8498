"""Issue 15 point 5 against the real oidc-provider: a public client and an HTTP Basic client
each authorize, refresh, and sign in to Dovecot with the token."""

from __future__ import annotations

import pytest

from flask_mailoauth import tokens
from flask_mailoauth.state import state

from .flows import authorize, point_at


@pytest.mark.parametrize("method", ["none", "client_secret_basic"])
def test_a_client_authorizes_refreshes_and_signs_in_to_imap(
    make_host, generic_idp, dovecot, method
):
    host = make_host()
    authorize(host, generic_idp, "support@example.test", auth_method=method)
    page = host.app.test_client().get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert f'selected value="{method}"' in page
    generic_idp.reset()
    with host.app.app_context():
        before = host.ext.access_token("support")
        after = tokens.refresh(state(), "support", "mailbox")
    assert after != before
    assert generic_idp.stats()["statuses"] == {"200": 1}
    assert generic_idp.refresh_count() == 1
    point_at(host, dovecot)
    with host.app.app_context():
        imap = host.ext.connect_imap("support")
        try:
            assert imap.state == "SELECTED"
        finally:
            imap.logout()
