"""Hostile identity answers through the real callback, on SQLite and PostgreSQL.

Every case goes modal save -> authorize -> callback with the fake IdP's answer, after a first
authorization succeeded. A refused answer must cost no 500, show a red banner that says what to
do, record an event and leave the stored credentials byte for byte as they were.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import responses
import sqlalchemy as sa

from flask_mailoauth import MailboxSettings
from flask_mailoauth.addresses import canonical_address, same_address
from flask_mailoauth.models import clean_text, utcnow
from flask_mailoauth.state import state

from .flow_steps import MODAL, banners, callback, credentials, csrf, reauthorize, save
from .oauth_fakes import CLIENT_ID, ISSUER, TOKEN_URL, FakeIdP

MS = "https://login.microsoftonline.com"
TID = "9188040d-6c67-4c5b-b112-36a304b66dad"
OTHER_TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"
MS_SCOPES = f"offline_access openid profile email {IMAP_SCOPE}"
DOMAIN = "contoso.test"


# -- the harness: every test here runs on SQLite and on PostgreSQL ------------------------------


@pytest.fixture
def host(make_host, db_url):
    return make_host(db_url=db_url)


@pytest.fixture
def client(host):
    return host.app.test_client()


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def idp(mock) -> FakeIdP:
    return FakeIdP(mock)


def ms_idp(mock: responses.RequestsMock, tenant: str = "common", **claims: Any) -> FakeIdP:
    """A Microsoft-shaped fake: v2.0 routes under ``tenant``, issuer of the token's tenant."""
    return FakeIdP(
        mock,
        issuer=f"{MS}/{TID}/v2.0",
        token_url=f"{MS}/{tenant}/oauth2/v2.0/token",
        jwks_url=f"{MS}/{tenant}/discovery/v2.0/keys",
        id_token_claims={
            "preferred_username": "support@example.test",
            "email": None,
            "email_verified": None,
            "tid": TID,
            "oid": "oid-1",
            **claims,
        },
        answer={"scope": IMAP_SCOPE},  # Microsoft lists no offline_access, no OIDC scopes
    )


def ms_fields(tenant: str = "common", scopes: str = MS_SCOPES) -> dict[str, str]:
    return {
        "idp_cloud": "global",
        "idp_tenant": tenant,
        "idp_authorization_endpoint": f"{MS}/{tenant}/oauth2/v2.0/authorize",
        "idp_token_endpoint": f"{MS}/{tenant}/oauth2/v2.0/token",
        "idp_scopes": scopes,
    }


def query_of(response) -> dict[str, str]:
    assert response.status_code == 303, response.get_data(as_text=True)
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}


def events(host) -> list[tuple]:
    with host.app.app_context(), host.db.engine.connect() as conn:
        query = "select kind, level, code, message from mailoauth_event order by id"
        return [tuple(r) for r in conn.execute(sa.text(query))]


def credential_fields(host) -> dict[str, Any]:
    with host.app.app_context(), host.db.engine.connect() as conn:
        return dict(conn.execute(sa.text("select * from mailoauth_credential")).mappings().one())


def clear_banners(client) -> None:
    with client.session_transaction() as session:
        session.pop("_flashes", None)


def authorize_first(client, host, idp: FakeIdP, provider: str = "generic", **fields: str):
    """A first, successful authorization; returns the next attempt's query and the snapshot."""
    response = callback(client, idp, query_of(save(client, provider=provider, **fields)))
    assert response.status_code == 303
    assert ("success", "OAuth2 Authorization Successful.") in banners(client), banners(client)
    clear_banners(client)
    return reauthorize(client), credentials(host)


def assert_success(client, response) -> None:
    assert response.status_code == 303
    assert ("success", "OAuth2 Authorization Successful.") in banners(client), banners(client)


def assert_refused(client, host, before, response, code: str, *texts: str) -> None:
    """No 500, a red banner naming the problem and its fix, an event, credentials unchanged."""
    assert response.status_code == 303, response.get_data(as_text=True)
    assert credentials(host) == before
    errors = [m for c, m in banners(client) if c == "error"]
    assert len(errors) == 1, banners(client)
    for text in texts:
        assert text in errors[0], errors[0]
    kind, level, event_code, message = events(host)[-1]
    assert (kind, level, event_code) == ("authorization_failed", "error", code), message


# -- Microsoft: the sign-in name, a vouched-for email, never unique_name -------------------------


def test_a_signed_token_of_another_tenant_naming_the_mailbox_as_email_is_refused(
    client, host, mock
):
    idp = ms_idp(mock)
    query, before = authorize_first(client, host, idp, "microsoft", **ms_fields())
    idp.issuer = f"{MS}/{OTHER_TID}/v2.0"
    idp.id_token_claims.update(
        tid=OTHER_TID, preferred_username="mallory@attacker.test", email="support@example.test"
    )
    response = callback(client, idp, query)
    assert_refused(
        client,
        host,
        before,
        response,
        "identity_mismatch",
        "expected authorization for support@example.test, not mallory@attacker.test",
        "only in a claim the provider does not vouch for",
        "xms_edov",
        "Tenant",
    )


@pytest.mark.parametrize("claim", ["unique_name", "email"])
def test_unique_name_and_an_unverified_email_never_match(client, host, mock, claim):
    idp = ms_idp(mock)
    query, before = authorize_first(client, host, idp, "microsoft", **ms_fields())
    idp.id_token_claims.update(
        {"preferred_username": "someone@example.test", claim: "support@example.test"}
    )
    response = callback(client, idp, query)
    assert_refused(client, host, before, response, "identity_mismatch", "not someone@")


@pytest.mark.parametrize(("xms_edov", "accepted"), [(True, True), ("true", False), (False, False)])
def test_email_counts_with_xms_edov_true_only(client, host, mock, xms_edov, accepted):
    idp = ms_idp(mock)
    query, before = authorize_first(client, host, idp, "microsoft", **ms_fields())
    idp.id_token_claims.update(
        preferred_username="admin@example.test", email="support@example.test", xms_edov=xms_edov
    )
    response = callback(client, idp, query)
    if accepted:
        assert_success(client, response)
        assert credential_fields(host)["authorized_by"] == "admin@example.test"
    else:
        assert_refused(client, host, before, response, "identity_mismatch", "xms_edov")


def test_email_counts_when_the_account_is_pinned_to_the_tokens_tenant(client, host, mock):
    idp = ms_idp(mock, tenant=TID)
    query, _ = authorize_first(client, host, idp, "microsoft", **ms_fields(TID))
    idp.id_token_claims.update(
        preferred_username="admin@example.test", email="support@example.test"
    )
    assert_success(client, callback(client, idp, query))


def test_a_guid_tenant_refuses_a_token_of_another_tenant(client, host, mock):
    idp = ms_idp(mock, tenant=TID)
    query, before = authorize_first(client, host, idp, "microsoft", **ms_fields(TID))
    idp.issuer = f"{MS}/{OTHER_TID}/v2.0"
    idp.id_token_claims.update(tid=OTHER_TID)
    response = callback(client, idp, query)
    assert_refused(client, host, before, response, "invalid_id_token", "could not be verified")


def discovery(mock, issuer: str | None = f"{MS}/{TID}/v2.0", status: int = 200) -> None:
    url = f"{MS}/{DOMAIN}/v2.0/.well-known/openid-configuration"
    mock.get(url, json={"issuer": issuer} if issuer else {}, status=status)


def test_a_domain_tenant_is_resolved_and_pinned(client, host, mock):
    discovery(mock)
    idp = ms_idp(mock, tenant=DOMAIN)
    query, before = authorize_first(client, host, idp, "microsoft", **ms_fields(DOMAIN))
    # The tenant's own token may vouch for the mailbox by its email ...
    idp.id_token_claims.update(
        preferred_username="admin@example.test", email="support@example.test"
    )
    assert_success(client, callback(client, idp, query))
    before = credentials(host)
    clear_banners(client)
    # ... a token of any other tenant is refused, whatever it names.
    query = reauthorize(client)
    idp.issuer = f"{MS}/{OTHER_TID}/v2.0"
    idp.id_token_claims.update(tid=OTHER_TID, preferred_username="support@example.test")
    response = callback(client, idp, query)
    assert_refused(client, host, before, response, "tenant_mismatch", OTHER_TID, "pinned to", TID)


@pytest.mark.parametrize(
    ("issuer", "status"), [(None, 200), ("https://evil.test/x", 200), (f"{MS}/{TID}/v2.0", 404)]
)
def test_a_domain_tenant_that_cannot_be_resolved_is_refused(client, host, mock, issuer, status):
    discovery(mock)
    idp = ms_idp(mock, tenant=DOMAIN)
    query, before = authorize_first(client, host, idp, "microsoft", **ms_fields(DOMAIN))
    mock.remove(responses.GET, f"{MS}/{DOMAIN}/v2.0/.well-known/openid-configuration")
    discovery(mock, issuer, status)
    response = callback(client, idp, query)
    assert_refused(
        client, host, before, response, "tenant_unresolved", DOMAIN, "Directory (tenant) ID"
    )


# -- generic: email_verified must be JSON true; preferred_username only when configured ---------


@pytest.mark.parametrize("verified", [False, None, "true", 1])
def test_an_email_without_email_verified_true_is_refused(client, host, idp, verified):
    query, before = authorize_first(client, host, idp)
    idp.id_token_claims["email_verified"] = verified
    response = callback(client, idp, query)
    assert_refused(
        client,
        host,
        before,
        response,
        "identity_mismatch",
        "could not be read",
        "email_verified is not true",
    )


def test_preferred_username_counts_only_as_the_configured_attribute(client, host, idp):
    query, before = authorize_first(client, host, idp)
    idp.id_token_claims.update(email=None, preferred_username="support@example.test")
    response = callback(client, idp, query)
    assert_refused(client, host, before, response, "identity_mismatch", "Email Address Attribute")
    clear_banners(client)
    query = query_of(save(client, idp_email_attribute="preferred_username"))
    assert_success(client, callback(client, idp, query))


# -- one address comparison: ASCII case, IDNA domain, nothing else -------------------------------


@pytest.mark.parametrize(
    ("mailbox", "signed_in", "same"),
    [
        ("kasse@example.test", "KASSE@Example.TEST", True),
        ("kasse@bücher.example", "Kasse@xn--bcher-kva.example", True),
        ("kasse@example.test", "\u212aasse@example.test", False),  # Kelvin sign
        ("kasse@example.test", "kaße@example.test", False),
        ("kasse@example.test", "\uff4b\uff41\uff53\uff53\uff45@example.test", False),  # fullwidth
        ("kasse@example.test", "kasse@example.test ", False),
        ("kasse@example.test", " kasse@example.test", False),
        ("kasse@example.test", "kasse\u200b@example.test", False),
        ("kasse@example.test", "kasse@example.test\x00", False),
        ("kasse@example.test", "kasse@example.test\n", False),
        ("kasse@example.test", "kasse@\u212aexample.test", False),
        ("kasse@example.test", "kasse@example.test.", False),
    ],
)
def test_addresses_match_by_ascii_case_and_idna_only(client, host, idp, mailbox, signed_in, same):
    host.mailboxes["support"] = MailboxSettings(address=mailbox)
    idp.email = mailbox
    query, before = authorize_first(client, host, idp)
    idp.email = signed_in
    response = callback(client, idp, query)
    if same:
        assert_success(client, response)
    else:
        assert_refused(client, host, before, response, "identity_mismatch", "Strict Matching")


def test_the_address_rules_directly():
    assert canonical_address("A.B@EXAMPLE.test") == "a.b@example.test"
    assert canonical_address("x@bücher.example") == "x@xn--bcher-kva.example"
    for bad in ("", "no-at", "@example.test", "x@", "x @y.test", "x@y\t.test", None, 5):
        assert canonical_address(bad) is None, bad
    assert not same_address("straße@x.test", "strasse@x.test")
    assert not same_address(None, None)


# -- protocol strictness ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("azp", "accepted"), [(None, False), ("someone-else", False), (CLIENT_ID, True)]
)
def test_several_audiences_need_azp_equal_to_the_client_id(client, host, idp, azp, accepted):
    query, before = authorize_first(client, host, idp)
    idp.audience = [CLIENT_ID, "another-app"]
    idp.id_token_claims["azp"] = azp
    response = callback(client, idp, query)
    if accepted:
        assert_success(client, response)
    else:
        assert_refused(client, host, before, response, "invalid_azp", "azp", "Client ID")


def test_iss_is_required_when_the_provider_advertises_it(client, host, idp):
    authorize_first(client, host, idp)
    saved = save(client, secret="", idp_iss_parameter="required")
    assert ("success", "Successfully updated.") in banners(client), saved.get_data(as_text=True)
    clear_banners(client)
    before = credentials(host)
    response = callback(client, idp, reauthorize(client))
    assert_refused(client, host, before, response, "iss_missing", "RFC 9207", "Not required")
    clear_banners(client)
    assert_success(client, callback(client, idp, reauthorize(client), iss=ISSUER))


def test_discovery_records_that_iss_is_advertised(client, host, mock):
    document = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": TOKEN_URL,
        "jwks_uri": f"{ISSUER}/jwks",
        "authorization_response_iss_parameter_supported": True,
    }
    mock.get(f"{ISSUER}/.well-known/openid-configuration", json=document)
    blank = {"idp_authorization_endpoint": "", "idp_token_endpoint": "", "idp_jwks_uri": ""}
    query_of(save(client, **blank))
    page = client.get(MODAL).get_data(as_text=True)
    assert '<option selected value="required">' in page


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("idp_token_endpoint", "https://idp.example.test/to\nken"),
        ("idp_token_endpoint", "https://idp.example.test/to\tken"),
        ("idp_authorization_endpoint", "https://idp.example.test/auth\rorize"),
        ("idp_jwks_uri", "https://idp.example.test/jw\x00ks"),
        ("idp_issuer", "https://idp.example.test\x7f"),
        ("idp_scopes", "openid email\r\nX-Injected: 1 offline_access"),
        ("idp_scopes", "openid\temail offline_access"),
        ("idp_client_id", "helpdesk\u2028app"),
        ("idp_email_attribute", "em\u200bail"),
    ],
)
def test_control_characters_are_refused_at_save(client, host, idp, field, value):
    _, before = authorize_first(client, host, idp)
    with host.app.app_context(), host.db.engine.connect() as conn:
        config = conn.execute(sa.text("select config from mailoauth_account")).scalar_one()
    response = save(client, **{field: value})
    assert response.status_code == 422
    assert "control character" in response.get_data(as_text=True)
    assert credentials(host) == before
    with host.app.app_context(), host.db.engine.connect() as conn:
        assert conn.execute(sa.text("select config from mailoauth_account")).scalar_one() == config


# -- headers ------------------------------------------------------------------------------------


def assert_page_headers(response) -> None:
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'self'"
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert response.headers["Cache-Control"] == "no-store"


def test_every_page_sends_anti_framing_and_no_store(client, host, idp, make_host, db_url):
    assert_page_headers(client.get(MODAL))
    assert_page_headers(client.get(MODAL, headers={"X-Requested-With": "mailoauth"}))
    assert_page_headers(save(client, idp_client_id=""))  # 422
    start = save(client)
    assert_page_headers(start)
    response = callback(client, idp, query_of(start))
    assert_page_headers(response)
    assert response.headers["Referrer-Policy"] == "no-referrer"
    unknown = client.get("/mailoauth/callback?state=forged&code=x")
    assert unknown.status_code == 400
    assert_page_headers(unknown)
    assert unknown.headers["Referrer-Policy"] == "no-referrer"
    for post in ("refresh", "delete", "authorize"):
        assert_page_headers(client.post(f"{MODAL}/{post}", data={"csrf_token": csrf(client)}))
    assert_page_headers(make_host(access=False, db_url=db_url).app.test_client().get(MODAL))
    static = client.get("/mailoauth/static/mailoauth/mailoauth.js")
    assert "no-store" not in static.headers.get("Cache-Control", "")
    static.close()


# -- partial consent ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "granted", "refresh", "missing"),
    [
        ("imap", "https://outlook.office.com/SMTP.Send", "rt", [IMAP_SCOPE]),
        ("imap", "", "rt", [IMAP_SCOPE]),
        ("imap", "https://outlook.office.com/SMTP.Send", None, [IMAP_SCOPE, "offline_access"]),
        ("pop3", IMAP_SCOPE, "rt", ["https://outlook.office.com/POP.AccessAsUser.All"]),
    ],
)
def test_partial_consent_names_what_is_missing_and_stores_nothing(
    client, host, mock, protocol, granted, refresh, missing
):
    host.mailboxes["support"] = MailboxSettings(address="support@example.test", protocol=protocol)
    scopes = f"{MS_SCOPES} https://outlook.office.com/POP.AccessAsUser.All"
    idp = ms_idp(mock)
    idp.answer["scope"] = " ".join(scopes.split()[4:])
    query, before = authorize_first(client, host, idp, "microsoft", **ms_fields(scopes=scopes))
    idp.answer["scope"] = granted or " "
    idp.refresh_token = refresh
    response = callback(client, idp, query)
    assert_refused(
        client,
        host,
        before,
        response,
        "partial_consent",
        f"lacks {', '.join(missing)}",
        "accept every permission",
    )


def test_a_refresh_token_proves_offline_access_without_it_in_the_scope(client, host, mock):
    idp = ms_idp(mock)
    query, _ = authorize_first(client, host, idp, "microsoft", **ms_fields())
    assert "offline_access" not in idp.answer["scope"]
    assert_success(client, callback(client, idp, query))


def test_google_needs_the_gmail_scope_granted(client, host, mock):
    google = {
        "idp_authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
        "idp_token_endpoint": "https://oauth2.googleapis.com/token",
        "idp_scopes": "openid email https://mail.google.com/",
    }
    idp = FakeIdP(
        mock,
        issuer="https://accounts.google.com",
        token_url="https://oauth2.googleapis.com/token",
        jwks_url="https://www.googleapis.com/oauth2/v3/certs",
        answer={"scope": "openid email https://mail.google.com/"},
    )
    query, before = authorize_first(client, host, idp, "google", **google)
    idp.answer["scope"] = "openid email"
    response = callback(client, idp, query)
    assert_refused(client, host, before, response, "partial_consent", "https://mail.google.com/")


# -- PostgreSQL takes whatever the IdP says -------------------------------------------------------


def test_a_long_error_and_a_nul_in_its_description_are_stored_cleaned(client, host, idp):
    query, before = authorize_first(client, host, idp)
    response = callback(
        client,
        idp,
        query,
        code=None,
        error="e" * 100,
        error_description="bad\x00thing\x1b[31m\r\nhappened",
    )
    assert_refused(client, host, before, response, "e" * 64, "bad", "thing")
    message = events(host)[-1][3]
    assert "\x00" not in message
    assert "\x1b" not in message
    assert "\r" not in message


def test_a_hostile_token_error_body_is_stored_cleaned(client, host, idp):
    query, before = authorize_first(client, host, idp)
    idp.mock.remove(responses.POST, TOKEN_URL)
    body = json.dumps({"error": "x" * 100, "error_description": "nul\x00 lone\ud800 surrogate"})
    idp.mock.post(TOKEN_URL, body=body, status=400, content_type="application/json")
    response = callback(client, idp, query)
    assert_refused(client, host, before, response, "x" * 64, "nul lone surrogate")


def test_long_token_type_audience_and_subject_never_cost_a_500(client, host, idp):
    query, before = authorize_first(client, host, idp)
    key = "k" * 32
    idp.answer.update(
        token_type="Bearer" + "x" * 34,
        access_token=jwt.encode({"aud": "a" * 300}, key, algorithm="HS256"),
    )
    idp.id_token_claims["sub"] = "s" * 300
    response = callback(client, idp, query)
    assert response.status_code == 303
    if credentials(host) != before:  # stored: every field cut to its column
        row = credential_fields(host)
        assert len(row["token_type"]) <= 32
        assert row["audience"] == "a" * 255
        assert row["subject"] == "s" * 255
    else:  # or refused as a malformed answer, with a banner and an event
        assert [m for c, m in banners(client) if c == "error"]
        assert events(host)[-1][0] == "authorization_failed"
    idp.answer.pop("token_type")
    clear_banners(client)
    assert_success(client, callback(client, idp, reauthorize(client)))
    row = credential_fields(host)
    assert (row["audience"], row["subject"]) == ("a" * 255, "s" * 255)


def test_the_model_cleans_every_outside_column(host):
    with host.app.app_context():
        m = state().models
        with host.db.session() as s:
            account = m.Account(key="k", purpose="mailbox", name="n", address="a@b.test")
            account.provider, account.config = "generic", {}
            s.add(account)
            s.flush()
            credential = m.Credential(
                account_id=account.id,
                access_token=b"x",
                refresh_token=b"y",
                expires_at=utcnow(),
                config_signature="sig",
                token_type="T" * 40,
                scope="s\x00" * 3000,
                audience="a" * 300,
                subject="\ud800" + "s" * 300,
                tenant=["not", "a", "string"],
                last_error_code="c" * 100,
                last_error="nul\x00",
                authorized_by="x" * 400,
            )
            s.add(credential)
            s.add(m.Event(account_id=account.id, kind="k", code="c" * 99, actor="\x00" * 9))
            s.commit()
            stored = s.get(m.Credential, credential.id)
            s.expire_all()
            assert len(stored.token_type) == 32
            assert stored.scope == "s" * 3000
            assert (len(stored.audience), len(stored.subject)) == (255, 255)
            assert stored.tenant == "['not', 'a', 'string']"
            assert (stored.last_error_code, stored.last_error) == ("c" * 64, "nul")
            assert len(stored.authorized_by) == 320
            event = s.scalars(sa.select(m.Event)).one()
            assert (event.code, event.actor) == ("c" * 64, "")


@pytest.mark.parametrize(
    ("value", "length", "cleaned"),
    [
        (None, 10, None),
        ("a\x00b", 10, "ab"),
        ("a\r\nb\tc", 10, "a  b c"),
        ("\u202eevil\u200b", 10, "evil"),
        ("x" * 20, 5, "xxxxx"),
        (42, 10, "42"),
        ("lone\udc80", 10, "lone"),
    ],
)
def test_clean_text(value, length, cleaned):
    assert clean_text(value, length) == cleaned


@pytest.mark.parametrize(
    ("granted", "missing"),
    [("openid", "mail.read, mail.send"), ("openid mail.read email", "mail.send")],
)
def test_a_generic_grant_needs_every_configured_non_identity_scope(
    client, host, idp, granted, missing
):
    scopes = "openid email profile offline_access mail.read mail.send"
    idp.answer["scope"] = scopes
    query, before = authorize_first(client, host, idp, idp_scopes=scopes)
    idp.answer["scope"] = granted
    response = callback(client, idp, query)
    assert_refused(client, host, before, response, "partial_consent", f"lacks {missing}")


@pytest.mark.parametrize("granted", [None, "mail.read openid"])
def test_a_generic_grant_may_leave_out_identity_scopes_or_the_scope(client, host, idp, granted):
    scopes = "openid email offline_access mail.read"
    idp.answer["scope"] = scopes
    query, _ = authorize_first(client, host, idp, idp_scopes=scopes)
    idp.answer["scope"] = granted  # None: the IdP names no scope, so it granted what was asked
    assert_success(client, callback(client, idp, query))
