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


def credential_rows(host):
    with host.app.app_context(), host.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("select * from mailoauth_credential"))]


def flashes(client):
    with client.session_transaction() as session:
        return session.get("_flashes", [])


def test_strict_matching_refuses_another_account_and_keeps_the_old_token(make_host, ms_idp):
    host = make_host()
    client = host.app.test_client()
    authorize(host, ms_idp, "support@example.test", client=client)
    before = credential_rows(host)
    with client.session_transaction() as session:
        session.pop("_flashes", None)
    authorize(host, ms_idp, "someone.else@example.test", client=client, expect_success=False)
    messages = [m for c, m in flashes(client) if c == "error"]
    assert any(
        "Strict Matching: expected authorization for support@example.test, not "
        "someone.else@example.test" in m
        for m in messages
    ), messages
    assert credential_rows(host) == before


def test_a_delegate_authorizes_a_shared_mailbox_with_strict_matching_off(make_host, ms_idp):
    host = make_host()
    host.mailboxes["shared"] = type(host.mailboxes["support"])(address="shared@example.test")
    authorize(host, ms_idp, "delegate@example.test", key="shared", strict=False)
    with host.app.app_context():
        assert host.ext.access_token("shared")
    page = host.app.test_client().get("/mailoauth/shared/mailbox").get_data(as_text=True)
    assert "by delegate@example.test on behalf of shared@example.test" in page


def test_client_id_change_needs_consent_but_a_new_secret_does_not(make_host, generic_idp):
    from .flows import csrf_token, idp_fields

    host = make_host()
    client = host.app.test_client()
    done = authorize(host, generic_idp, "support@example.test", client=client)
    before = credential_rows(host)

    def resave(client_id, secret):
        data = {
            "csrf_token": csrf_token(client, "support", "mailbox", "generic"),
            "enabled": "1",
            "name": "support (mailbox)",
            "strict_matching": "y",
            "client_secret": secret,
            **idp_fields(generic_idp, client_id),
        }
        return client.post(
            "/mailoauth/support/mailbox",
            data=data,
            headers={"Referer": "http://localhost/emails/support"},
        )

    rotated = resave(done.client_id, "a-new-secret-value")
    assert rotated.status_code == 303
    assert rotated.headers["Location"] == "/emails/support"
    assert credential_rows(host) == before
    with host.app.app_context():
        assert host.ext.access_token("support")

    other = generic_idp.register_client(
        "http://localhost/mailoauth/callback", auth_method="client_secret_post"
    )
    changed = resave(other.client_id, other.client_secret)
    assert changed.headers["Location"].startswith(generic_idp.authorization_endpoint)
