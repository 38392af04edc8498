"""A generic provider configured without openid, against the real OpenID Connect test IdP."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from peers import login_and_consent

from ..flow_steps import credentials
from .flows import CALLBACK, csrf_token, idp_fields, point_at


def authorize_without_openid(host, idp, **endpoints: str) -> list[tuple[str, str]]:
    """Save a generic account whose scopes lack openid (``endpoints`` say how the identity is
    read), sign in at the IdP and return to the callback; the banners that follow."""
    client = host.app.test_client()
    registered = idp.register_client(CALLBACK, auth_method="client_secret_post")
    fields = idp_fields(idp, registered.client_id, scopes="email") | endpoints
    saved = client.post(
        "/mailoauth/support/mailbox",
        data={
            "csrf_token": csrf_token(client, "support", "mailbox", "generic"),
            "enabled": "1",
            "name": "support (mailbox)",
            "client_secret": registered.client_secret,
            "strict_matching": "y",
            **fields,
        },
        headers={"Referer": "http://localhost/emails/support"},
    )
    assert saved.status_code == 303, saved.get_data(as_text=True)[:2000]
    authorize_url = saved.headers["Location"]
    query = parse_qs(urlsplit(authorize_url).query)
    assert query["scope"] == ["email"]
    assert "nonce" not in query
    callback_url = login_and_consent(authorize_url, "support@example.test", CALLBACK)
    answer = parse_qs(urlsplit(callback_url).query)
    assert "error" not in answer, answer
    assert answer["code"]
    done = client.get(f"{urlsplit(callback_url).path}?{urlsplit(callback_url).query}")
    assert done.status_code == 303
    with client.session_transaction() as session:
        return list(session.get("_flashes", []))


def test_without_openid_no_nonce_is_sent_and_the_idp_grants_the_code(
    make_host, generic_idp, db_url
):
    host = make_host(db_url=db_url)
    exchanged = generic_idp.stats()["token"].get("authorization_code", 0)
    userinfo = f"{generic_idp.issuer}/me"
    flashes = authorize_without_openid(host, generic_idp, idp_userinfo_endpoint=userinfo)
    # The code exchange worked; this IdP's userinfo answers only tokens granted openid
    # (oidc-provider refuses the rest), so the identity step fails there, readably.
    [(kind, message)] = flashes
    assert kind == "error"
    assert f"{userinfo} did not return the mailbox details" in message
    assert generic_idp.stats()["token"].get("authorization_code") == exchanged + 1
    assert not credentials(host)


def test_without_openid_a_resource_endpoint_names_who_signed_in_end_to_end(
    make_host, generic_idp, dovecot, db_url
):
    """Issue 15 point 7 all the way: no openid, so no nonce and no id_token; the identity
    comes from the resource server's who-am-I endpoint, and the token opens the mailbox."""
    host = make_host(db_url=db_url)
    flashes = authorize_without_openid(
        host,
        generic_idp,
        idp_userinfo_endpoint="",
        idp_resource_endpoint=f"{generic_idp.base_url}/api/me",
    )
    assert flashes == [("success", "OAuth2 Authorization Successful.")]
    [row] = credentials(host)
    assert "support@example.test" in row
    point_at(host, dovecot)
    with host.app.app_context():
        imap = host.ext.connect_imap("support")
        try:
            assert imap.state == "SELECTED"
        finally:
            imap.logout()
