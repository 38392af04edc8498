"""The authorization flow against the real IdPs, then the stored token at Dovecot."""

from __future__ import annotations

import sqlalchemy as sa

from .flows import authorize, point_at


def test_generic_provider_end_to_end_then_imap_with_the_stored_token(
    make_host, generic_idp, dovecot
):
    host = make_host()
    authorize(host, generic_idp, "support@example.test")
    point_at(host, dovecot)
    with host.app.app_context():
        imap = host.ext.connect_imap("support")
        try:
            assert imap.state == "SELECTED"
        finally:
            imap.logout()


def test_microsoft_provider_end_to_end_then_imap_with_the_stored_token(
    make_host, ms_idp, ms_dovecot
):
    host = make_host()
    authorize(host, ms_idp, "support@example.test")
    point_at(host, ms_dovecot)
    with host.app.app_context():
        imap = host.ext.connect_imap("support")
        imap.logout()
        page = host.app.test_client().get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert ms_idp.tenant_id in page
    assert "IMAP.AccessAsUser.All" in page


def test_the_raw_database_holds_no_secret_after_the_flow(make_host, generic_idp):
    host = make_host()
    done = authorize(host, generic_idp, "support@example.test")
    with host.app.app_context():
        token = host.ext.access_token("support")
        st = host.app.extensions["mailoauth"]
        with st.db.engine.connect() as conn:
            dump = "".join(
                repr(tuple(row))
                for table in st.db.metadata.sorted_tables
                for row in conn.execute(sa.select(table))
            )
    assert token not in dump
    assert done.client_secret not in dump
