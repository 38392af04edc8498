"""Issue 12's walkthrough points below the browser, each on SQLite and PostgreSQL: Submit
re-authorizes an unusable grant, the Token tab says what is true once, errors name the
account, Test connection covers every protocol, Config on "basic" is a readable dialog."""

from __future__ import annotations

import pytest
import responses

from flask_mailoauth import MailboxSettings, mail
from flask_mailoauth.accounts import UNUSABLE_KEY_GONE, UNUSABLE_REAUTHORIZE
from flask_mailoauth.crypto import generate_key
from flask_mailoauth.errors import ReauthorizationRequired
from flask_mailoauth.vocabulary import CredentialStatus
from tests.oauth_fakes import TOKEN_URL
from tests.stored import GENERIC, store_account

SCRIPTED = {"X-Requested-With": "mailoauth"}
DEAD = "invalid_grant: AADSTS700082: The refresh token has expired due to inactivity."
FORM = {
    "provider": "generic",
    "enabled": "1",
    "name": "support@example.test (mailbox)",
    "strict_matching": "y",
    **{f"idp_{name}": value for name, value in GENERIC.items()},
}


def host_with(make_host, db_url, **credential):
    h = make_host(db_url=db_url, WTF_CSRF_ENABLED=False)
    store_account(h, **credential)
    return h


def form_of(h) -> dict[str, str]:
    """The modal's fields as stored (Submit with nothing changed)."""
    return dict(FORM)


def test_submit_unchanged_reauthorizes_a_dead_grant(make_host, db_url):
    """Point 2: "reauthorization required", Submit with nothing changed goes to the IdP."""
    h = host_with(
        make_host, db_url, status=CredentialStatus.REAUTHORIZATION_REQUIRED, last_error=DEAD
    )
    client = h.app.test_client()
    answer = client.post("/mailoauth/support/mailbox", data=form_of(h), headers=SCRIPTED)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.json["redirect"].startswith(GENERIC["authorization_endpoint"] + "?")


def test_submit_unchanged_keeps_a_working_grant(make_host, db_url):
    h = host_with(make_host, db_url)
    answer = h.app.test_client().post(
        "/mailoauth/support/mailbox", data=form_of(h), headers=SCRIPTED
    )
    assert answer.json["redirect"] == "/"


def test_submit_reauthorizes_when_the_key_is_gone(make_host, db_url):
    """The token was sealed with a key no longer configured: the tab says so, Submit acts."""
    h = host_with(make_host, db_url)
    h.app.config["MAILOAUTH_ENCRYPTION_KEYS"] = [
        generate_key(),
        *h.app.config["MAILOAUTH_ENCRYPTION_KEYS"],
    ]
    with h.app.app_context():
        st = h.app.extensions["mailoauth"]
        with st.db.engine.begin() as conn:
            conn.execute(
                st.models.Credential.__table__.update().values(
                    access_token=b"sealed with a key now gone"
                )
            )
    client = h.app.test_client()
    page = client.get("/mailoauth/support/mailbox?tab=token").get_data(as_text=True)
    assert str(UNUSABLE_KEY_GONE).split(":")[0] in page
    answer = client.post("/mailoauth/support/mailbox", data=form_of(h), headers=SCRIPTED)
    assert answer.json["redirect"].startswith(GENERIC["authorization_endpoint"] + "?")


def test_token_tab_says_what_is_true_once(make_host, db_url):
    """Point 3: no "refreshed automatically" for a dead grant, and its error shown once;
    the Authorize again button posts to the authorize route."""
    h = host_with(
        make_host,
        db_url,
        status=CredentialStatus.REAUTHORIZATION_REQUIRED,
        last_error=DEAD,
        expires_in=-60,
    )
    page = h.app.test_client().get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert "refreshed automatically" not in page
    assert page.count("The refresh token has expired due to inactivity") == 1
    assert str(UNUSABLE_REAUTHORIZE) in page
    assert 'action="/mailoauth/support/mailbox/authorize"' in page
    assert ">Authorize again</button>" in page


@pytest.fixture
def responses_mock():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def test_refresh_error_names_the_address_not_the_key(make_host, db_url, responses_mock):
    """Point 4: ``Refresh failed: support@example.test (mailbox): ...``, never the key."""
    h = host_with(make_host, db_url)
    responses_mock.post(
        TOKEN_URL,
        status=400,
        json={"error": "invalid_grant", "error_description": "AADSTS700082: expired."},
    )
    client = h.app.test_client()
    page = client.post("/mailoauth/support/mailbox/refresh").get_data(as_text=True)
    assert "Refresh failed: support@example.test (mailbox): invalid_grant" in page
    assert "Refresh failed: support (mailbox)" not in page
    with h.app.app_context(), pytest.raises(ReauthorizationRequired) as caught:
        h.ext.access_token("support")
    assert str(caught.value).startswith("support@example.test (mailbox): ")


def test_connection_test_covers_smtp_on_the_mailboxs_grant(make_host, db_url, monkeypatch):
    """Point 6: SMTP "Same as Remote Mailbox" (``smtp_purpose="mailbox"``): Test connection
    checks IMAP and SMTP with the mailbox's token; with its own SMTP account, IMAP only."""
    h = host_with(make_host, db_url)
    h.mailboxes["support"] = MailboxSettings(
        "support@example.test",
        host="imap.example.test",
        smtp_host="smtp.example.test",
        smtp_purpose="mailbox",
    )
    tokens = []

    def fake(name):
        def check(server, user, token, **_):
            tokens.append(token())
            return mail.CheckResult(name, True)

        return check

    monkeypatch.setattr(mail, "check_imap", fake("IMAP"))
    monkeypatch.setattr(mail, "check_smtp", fake("SMTP"))
    with h.app.app_context():
        results = h.ext.test_connection("support")
        assert [r.protocol for r in results] == ["IMAP", "SMTP"]
        assert tokens == ["at-0", "at-0"]
        h.mailboxes["support"] = MailboxSettings("support@example.test", host="imap.example.test")
        assert [r.protocol for r in h.ext.test_connection("support")] == ["IMAP"]
    with pytest.raises(ValueError, match="smtp_purpose"):
        MailboxSettings("a@example.test", smtp_purpose="imap")  # type: ignore[arg-type]


def test_config_on_a_non_oauth_choice_is_a_dialog_to_close(make_host, db_url):
    """Point 9: ``?provider=basic`` answers a readable message with its close button, as a
    fragment for the script and as a page without it; never Werkzeug's Bad Request."""
    h = make_host(db_url=db_url)
    client = h.app.test_client()
    for headers in (SCRIPTED, {}):
        answer = client.get("/mailoauth/support/mailbox?provider=basic", headers=headers)
        text = answer.get_data(as_text=True)
        assert answer.status_code == 400
        assert "Bad Request" not in text
        assert "(basic) is not an OAuth2 provider" in text
        assert "data-mailoauth-close" in text
        assert "OAuth2 - Microsoft" in text
