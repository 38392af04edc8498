"""Each e2e peer works as a peer: IdPs (generic, Microsoft-shaped), Dovecot, Postfix,
PostgreSQL and Chromium, against the project's own SASL encoders."""

from __future__ import annotations

import base64
import email
import email.policy
import imaplib
import json
import poplib
import smtplib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from flask_mailoauth.sasl import oauthbearer, xoauth2
from peers import UNUSED_REDIRECT, IdPError, login_and_consent, pkce_pair

ALICE = "alice@example.test"
BOB = "bob@example.test"
MECHS = ("XOAUTH2", "OAUTHBEARER")


# ---------------------------------------------------------------------- minimal mail clients
def sasl(mech: str, user: str, token: str, host: str, port: int) -> bytes:
    return xoauth2(user, token) if mech == "XOAUTH2" else oauthbearer(user, token, host, port)


def imap_login(server, mech: str, user: str, token: str) -> imaplib.IMAP4:
    """AUTHENTICATE with an initial response; raises imaplib.IMAP4.error when refused."""
    m = imaplib.IMAP4(server.host, server.imap_port, timeout=10)
    blob = sasl(mech, user, token, server.host, server.imap_port)
    try:
        # The callback is called again with the error challenge: answer with an empty line.
        m.authenticate(mech, lambda challenge: blob if not challenge else b"")
    except imaplib.IMAP4.error:
        m.shutdown()
        raise
    return m


class POP3Refused(Exception):
    pass


def pop3_login(server, mech: str, user: str, token: str) -> poplib.POP3:
    """RFC 5034 AUTH with an initial response (poplib has no AUTH); raises POP3Refused."""
    p = poplib.POP3(server.host, server.pop3_port, timeout=10)
    blob = sasl(mech, user, token, server.host, server.pop3_port)
    p._putcmd(f"AUTH {mech} {base64.b64encode(blob).decode()}")
    line = p._getline()[0]
    if line == b"+" or line.startswith(b"+ "):  # the error challenge; answer with an empty line
        p._putcmd("")
        line = p._getline()[0]
    if not line.startswith(b"+OK"):
        p.close()
        raise POP3Refused(line.decode(errors="replace"))
    return p


def login(protocol: str, server, mech: str, user: str, token: str) -> None:
    """Log in and out; raises (IMAP4.error | POP3Refused) when refused."""
    if protocol == "imap":
        m = imap_login(server, mech, user, token)
        assert m.select("INBOX")[0] == "OK"
        m.logout()
    else:
        p = pop3_login(server, mech, user, token)
        p.stat()
        p.quit()


REFUSED = (imaplib.IMAP4.error, POP3Refused)


def jwt_claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# ---------------------------------------------------------------------- fixtures of this module
@pytest.fixture(params=["generic", "microsoft"])
def any_idp(request):
    return request.getfixturevalue("generic_idp" if request.param == "generic" else "ms_idp")


@pytest.fixture(scope="module")
def clients():
    """One registered client per (IdP, rotation), made on first use."""
    made = {}

    def get(idp, rotate=None):
        key = (idp.shape, rotate)
        if key not in made:
            made[key] = idp.register_client(UNUSED_REDIRECT, rotate=rotate)
        return made[key]

    return get


@pytest.fixture(params=["dovecot", "ms_dovecot"])
def mail_server(request):
    """A Dovecot with the IdP whose tokens it accepts (``.idp``)."""
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------- IdPs
@pytest.mark.parametrize("rotate", [True, False], ids=["rotating", "non-rotating"])
def test_code_pkce_grant_and_refresh(any_idp, clients, rotate):
    idp = any_idp
    client = clients(idp, rotate)
    tok = idp.code_grant(client, ALICE)
    assert tok["token_type"].lower() == "bearer"
    assert tok["access_token"]
    assert tok["refresh_token"]
    assert tok["id_token"]
    claims = jwt_claims(tok["id_token"])
    assert claims["iss"] == idp.issuer
    if idp.shape == "microsoft":
        # like Microsoft: the sign-in name, no email claim
        assert "email" not in claims
        assert claims["preferred_username"] == ALICE
    else:
        assert claims["email"] == ALICE
    assert claims["aud"] == client.client_id

    new = idp.refresh(client, tok["refresh_token"])
    assert new["access_token"] != tok["access_token"]
    intro = idp.introspect(new["access_token"])
    assert intro["active"] is True
    assert intro["email"] == ALICE
    if rotate:
        assert new["refresh_token"] != tok["refresh_token"]
        # the rotated-out refresh token is dead (and replaying it kills the grant)
        with pytest.raises(IdPError) as err:
            idp.refresh(client, tok["refresh_token"])
        assert err.value.body["error"] == "invalid_grant"
        assert idp.introspect(new["access_token"])["active"] is False
    else:
        assert new.get("refresh_token", tok["refresh_token"]) == tok["refresh_token"]
        again = idp.refresh(client, tok["refresh_token"])
        assert again["access_token"] not in (tok["access_token"], new["access_token"])


def test_pkce_is_checked(generic_idp, clients):
    client = clients(generic_idp)
    _, challenge = pkce_pair()
    url = generic_idp.authorization_url(client, code_challenge=challenge)
    code = parse_qs(urlsplit(login_and_consent(url, ALICE, UNUSED_REDIRECT)).query)["code"][0]
    r = requests.post(
        generic_idp.token_endpoint,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": UNUSED_REDIRECT,
            "code_verifier": pkce_pair()[0],
        },
        auth=client,
        timeout=5,
        verify=generic_idp.ca_file,
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


def test_generic_discovery(generic_idp):
    meta = requests.get(generic_idp.discovery_url, timeout=5, verify=generic_idp.ca_file).json()
    assert meta["issuer"] == generic_idp.issuer
    assert meta["code_challenge_methods_supported"] == ["S256"]
    for key in (
        "introspection_endpoint",
        "revocation_endpoint",
        "registration_endpoint",
        "token_endpoint",
        "authorization_endpoint",
        "jwks_uri",
    ):
        assert meta[key].startswith(generic_idp.base_url)
    assert "refresh_token" in meta["grant_types_supported"]


def test_microsoft_shape(ms_idp, clients):
    idp = ms_idp
    tid = idp.tenant_id
    meta = requests.get(
        f"{idp.base_url}/{tid}/v2.0/.well-known/openid-configuration",
        timeout=5,
        verify=idp.ca_file,
    ).json()
    assert meta["issuer"] == f"{idp.base_url}/{tid}/v2.0"
    assert meta["authorization_endpoint"] == f"{idp.base_url}/common/oauth2/v2.0/authorize"
    for tenant in ("common", "organizations", tid):
        keys = idp.http.get(f"{idp.base_url}/{tenant}/discovery/v2.0/keys", timeout=5).json()
        assert keys["keys"][0]["kty"] == "RSA"

    client = clients(idp)
    for tenant in ("common", "organizations", tid):
        tok = idp.code_grant(
            client,
            ALICE,
            endpoint=idp.authorize_url_for(tenant),
            token_url=idp.token_url_for(tenant),
            prompt="select_account",
        )
        # like Microsoft: only the resource scopes, no offline_access / OIDC scopes
        assert set(tok["scope"].split()) == {
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "https://outlook.office.com/POP.AccessAsUser.All",
            "https://outlook.office.com/SMTP.Send",
        }
        assert tok["ext_expires_in"] == tok["expires_in"]
        claims = jwt_claims(tok["id_token"])
        assert claims["iss"] == idp.issuer
        assert claims["tid"] == tid
        assert claims["preferred_username"] == ALICE
        assert "email" not in claims
        assert claims["oid"]
        assert claims["name"] == "Test alice"
        assert claims["nonce"]

    # rotation is the Microsoft default
    new = idp.refresh(client, tok["refresh_token"], token_url=idp.token_url_for("organizations"))
    assert new["refresh_token"] != tok["refresh_token"]

    with pytest.raises(IdPError) as err:
        idp.refresh(client, "not-a-refresh-token")
    assert err.value.status_code == 400
    assert err.value.body["error"] == "invalid_grant"
    assert err.value.body["error_codes"] == [700082]
    assert err.value.body["error_description"].startswith("AADSTS700082: The refresh token has")

    with pytest.raises(IdPError) as err:
        idp.refresh(client._replace(client_secret="wrong"), new["refresh_token"])
    assert err.value.status_code == 401
    assert err.value.body["error"] == "invalid_client"
    assert err.value.body["error_codes"] == [7000215]
    assert err.value.body["error_description"].startswith("AADSTS7000215")

    r = idp.http.get(f"{idp.base_url}/not-a-tenant/oauth2/v2.0/authorize", timeout=5)
    assert r.status_code == 400


def test_token_stats_and_injected_failures(any_idp, clients):
    idp = any_idp
    client = clients(idp, rotate=False)
    tok = idp.code_grant(client, ALICE)

    def raw_refresh():
        return requests.post(
            idp.token_endpoint,
            auth=client,
            timeout=5,
            verify=idp.ca_file,
            data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
        )

    idp.reset()
    with ThreadPoolExecutor(8) as pool:  # concurrent calls are all counted
        assert {r.status_code for r in pool.map(lambda _: raw_refresh(), range(8))} == {200}
    stats = idp.stats()
    assert stats["token"] == {"refresh_token": 8}
    assert stats["total"] == 8

    idp.reset()
    idp.fail_next(
        2, status=429, body={"error": "slow_down"}, retry_after=7, grant_type="refresh_token"
    )
    idp.code_grant(client, BOB)  # another grant type passes the pending failures by
    for _ in range(2):
        r = raw_refresh()
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "7"
        assert r.json() == {"error": "slow_down"}
    idp.fail_next(status=503, body="<html>busy</html>")
    r = raw_refresh()
    assert (r.status_code, r.text) == (503, "<html>busy</html>")
    assert "Retry-After" not in r.headers
    assert raw_refresh().status_code == 200  # the queue is empty again
    stats = idp.stats()
    assert stats["token"] == {"refresh_token": 4, "authorization_code": 1}
    assert stats["injected"] == 3
    assert stats["statuses"] == {"200": 2, "429": 2, "503": 1}
    assert stats["pending_failures"] == 0
    idp.reset()
    assert idp.stats()["total"] == 0


# ---------------------------------------------------------------------- Dovecot IMAP/POP3
@pytest.fixture(scope="module")
def expiring_token(clients):
    """Per IdP: (user, token response, expiry time) of an account whose access tokens live
    ``idp.expiring_ttl`` seconds; obtained early so later tests rarely have to wait."""
    made = {}

    def get(idp):
        if idp.shape not in made:
            user = f"expiring-{uuid.uuid4().hex[:8]}@example.test"
            tok = idp.code_grant(clients(idp), user)
            made[idp.shape] = (user, tok, time.monotonic() + idp.expiring_ttl + 0.5)
        return made[idp.shape]

    return get


def test_mail_login_accepted(mail_server, clients, expiring_token):
    idp = mail_server.idp
    client = clients(idp)
    user, expiring, _ = expiring_token(idp)  # fetched now, checked after expiry further down
    tokens = {
        ALICE: idp.code_grant(client, ALICE)["access_token"],
        BOB: idp.code_grant(client, BOB)["access_token"],
        user: expiring["access_token"],
    }
    for protocol in ("imap", "pop3"):
        for mech in MECHS:
            for email_, token in tokens.items():
                login(protocol, mail_server, mech, email_, token)


def test_no_auth_penalty(dovecot):
    """Repeated refusals stay fast: anvil's auth penalty (2 s, 4 s, ...) is off."""
    for _ in range(3):
        start = time.monotonic()
        with pytest.raises(REFUSED):
            login("imap", dovecot, "XOAUTH2", ALICE, "not-a-token")
        assert time.monotonic() - start < 1.5


# ---------------------------------------------------------------------- Postfix
def _smtp_auth(s: smtplib.SMTP, mech: str, user: str, token: str, port: int):
    blob = sasl(mech, user, token, s._host, port).decode()
    return s.auth(
        mech, lambda challenge=None: blob if challenge is None else "", initial_response_ok=True
    )


def _wait_for_subject(mail_server, user, token, subject, timeout=10.0):
    m = imap_login(mail_server, "XOAUTH2", user, token)
    try:
        deadline = time.monotonic() + timeout
        while True:
            m.select("INBOX")
            hits = m.search(None, "SUBJECT", f'"{subject}"')[1][0].split()
            if hits or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert hits, f"{subject!r} not delivered to {user}"
        raw = m.fetch(hits[-1], "(RFC822)")[1][0][1]
        return email.message_from_bytes(raw, policy=email.policy.default)
    finally:
        m.logout()


@pytest.mark.parametrize("mech", MECHS)
def test_smtp_send_and_read_back(postfix, dovecot, clients, mech):
    client = clients(dovecot.idp)
    token = dovecot.idp.code_grant(client, ALICE)["access_token"]
    subject = f"e2e {mech} {uuid.uuid4()}"
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ALICE, BOB, subject
    msg.set_content("hello over OAuth2\n")
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname="localhost", timeout=10) as s:
        s.ehlo()
        assert set(s.esmtp_features["auth"].split()) >= {"XOAUTH2", "OAUTHBEARER"}
        code, _ = _smtp_auth(s, mech, ALICE, token, postfix.port)
        assert code == 235
        assert s.send_message(msg) == {}
    bob = dovecot.idp.code_grant(client, BOB)["access_token"]
    got = _wait_for_subject(dovecot, BOB, bob, subject)
    assert got["From"] == ALICE
    assert got.get_content().strip() == "hello over OAuth2"


def test_smtp_refuses_bad_token_and_send_as(postfix, dovecot, clients):
    client = clients(dovecot.idp)
    token = dovecot.idp.code_grant(client, ALICE)["access_token"]
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname="localhost", timeout=10) as s:
        s.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            _smtp_auth(s, "XOAUTH2", ALICE, "not-a-token", postfix.port)
        assert err.value.smtp_code == 535
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname="localhost", timeout=10) as s:
        s.ehlo()
        _smtp_auth(s, "XOAUTH2", ALICE, token, postfix.port)
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            s.sendmail(BOB, [ALICE], "Subject: spoof\r\n\r\nx\r\n")
        assert err.value.smtp_code == 553
        assert b"5.7.1" in err.value.smtp_error
        with pytest.raises(smtplib.SMTPSenderRefused):
            s.sendmail("shared@example.test", [ALICE], "Subject: not a delegate\r\n\r\nx\r\n")


def test_smtp_delegate_may_send_as_shared(postfix, dovecot, clients):
    client = clients(dovecot.idp)
    token = dovecot.idp.code_grant(client, "delegate@example.test")["access_token"]
    subject = f"e2e send-as {uuid.uuid4()}"
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname="localhost", timeout=10) as s:
        s.ehlo()
        _smtp_auth(s, "XOAUTH2", "delegate@example.test", token, postfix.port)
        s.sendmail(
            "shared@example.test",
            [ALICE],
            f"From: shared@example.test\r\nSubject: {subject}\r\n\r\nx\r\n",
        )
    alice = dovecot.idp.code_grant(client, ALICE)["access_token"]
    assert _wait_for_subject(dovecot, ALICE, alice, subject)["From"] == "shared@example.test"


# ---------------------------------------------------------------------- databases
def test_database_reachable_through_sqlalchemy(db_url):
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    try:
        meta = sa.MetaData()
        table = sa.Table(
            "t",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("email", sa.String(200)),
        )
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"email": ALICE}, {"email": BOB}])
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 2
            if db_url.startswith("postgresql"):
                assert conn.execute(sa.text("select version()")).scalar().startswith("PostgreSQL")
    finally:
        engine.dispose()


def test_postgres_database_is_fresh(postgres):
    a, b = postgres.create_database(), postgres.create_database()
    assert a != b
    postgres.drop_database(a)
    postgres.drop_database(b)


# ---------------------------------------------------------------------- browser
def test_chromium_loads_the_example_app(page, serve_app, tmp_path):
    from example_app import create_app

    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'app.db'}", "TESTING": True}
    )
    srv = serve_app(app)
    response = page.goto(srv.url_for("/"))
    assert response is not None
    assert response.status == 200
    shot = tmp_path / "index.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_browser_login_and_consent(page, serve_app, generic_idp, browser_login_and_consent):
    from flask import Flask, request

    callback_app = Flask("callback")

    @callback_app.get("/callback")
    def callback():
        return f"<p id='code'>{request.args.get('code', 'none')}</p>"

    srv = serve_app(callback_app)
    redirect_uri = srv.url_for("/callback")
    client = generic_idp.register_client(redirect_uri)
    page.goto(generic_idp.authorization_url(client, redirect_uri))
    browser_login_and_consent(page, ALICE)
    page.wait_for_selector("#code")
    assert page.url.startswith(redirect_uri)
    assert page.inner_text("#code") != "none"


# ---------------------------------------------------------------------- refusals (last: the
# expiring tokens fetched at the start have expired by now, so nobody waits)
def test_mail_login_refused(mail_server, clients, expiring_token):
    """Bad, foreign, revoked and expired tokens, over IMAP and POP3, with both mechanisms.

    The attempts run concurrently: Dovecot 2.3.19 answers each refusal ~0.5 s late (its
    delayed-failure queue is flushed on a fixed 500 ms timer even with auth_failure_delay = 0).
    """
    idp = mail_server.idp
    client = clients(idp)
    bob = idp.code_grant(client, BOB)["access_token"]
    revoked = idp.code_grant(client, ALICE)["access_token"]
    login("imap", mail_server, "XOAUTH2", ALICE, revoked)
    idp.revoke(client, revoked)
    user, expiring, expires_at = expiring_token(idp)
    time.sleep(max(0.0, expires_at - time.monotonic()))
    cases = {
        "bad": (ALICE, "not-a-token"),
        "foreign": (ALICE, bob),
        "revoked": (ALICE, revoked),
        "expired": (user, expiring["access_token"]),
    }

    def attempt(args):
        label, protocol, mech = args
        try:
            login(protocol, mail_server, mech, *cases[label])
        except REFUSED:
            return None
        return f"{label} token accepted over {protocol} {mech}"

    matrix = [(label, p, m) for label in cases for p in ("imap", "pop3") for m in MECHS]
    with ThreadPoolExecutor(len(matrix)) as pool:
        accepted = [r for r in pool.map(attempt, matrix) if r]
    assert accepted == []
    # the expired account gets back in with a refreshed token
    fresh = idp.refresh(client, expiring["refresh_token"])["access_token"]
    login("pop3", mail_server, "OAUTHBEARER", user, fresh)
