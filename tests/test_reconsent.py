"""Issue 16 point 2: re-consent links. The admin creates a link; whoever holds it, with no role
in the helpdesk, authorizes that one account again, once, as the pinned identity."""

from __future__ import annotations

import email
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
import sqlalchemy as sa

from flask_mailoauth.models import own_session, utcnow
from flask_mailoauth.settings import MailboxSettings

from .flow_steps import MODAL, banners, callback, credentials, csrf, start
from .notify_peers import smtp_sink
from .oauth_fakes import AUTHORIZE_URL, FakeIdP
from .stored import store_account

LINK = re.compile(r"http://localhost(/mailoauth/reconsent/[A-Za-z0-9_-]{43})")


@pytest.fixture
def admin_flag():
    return {"admin": True}


@pytest.fixture
def helpdesk(make_host, db_url, admin_flag):
    """A host whose access check the test turns on (the admin) and off (the link's holder)."""
    host = make_host(db_url=db_url, access=None)
    host.ext.access_check(lambda: admin_flag["admin"])
    return host


def authorized(host, client):
    """An account authorized once by the admin, as the callback stores it."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        assert callback(client, idp, start(client)).status_code == 303
    assert len(credentials(host)) == 1


def create_link(client, pinned: str = "") -> str:
    page = client.post(
        f"{MODAL}/reconsent", data={"csrf_token": csrf(client), "pinned": pinned}
    ).get_data(as_text=True)
    match = LINK.search(page)
    assert match, page
    return match.group(1)


def open_and_start(client, link: str) -> dict[str, str]:
    """The holder opens the link and presses the button: the IdP authorize URL's query."""
    page = client.get(link)
    assert page.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    response = client.post(link, data={"csrf_token": token})
    assert response.status_code == 303
    location = response.headers["Location"]
    assert location.startswith(AUTHORIZE_URL)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def links(host):
    with host.app.app_context(), host.db.engine.connect() as conn:
        return conn.execute(sa.text("select * from mailoauth_reconsent")).mappings().all()


def event_lines(host):
    with host.app.app_context(), host.db.engine.connect() as conn:
        return conn.execute(sa.text("select kind, actor, message from mailoauth_event")).all()


def test_the_holder_authorizes_again_once_as_the_pinned_identity(helpdesk, admin_flag):
    admin = helpdesk.app.test_client()
    authorized(helpdesk, admin)
    before = credentials(helpdesk)
    link = create_link(admin)
    token = link.rsplit("/", 1)[1]
    (row,) = links(helpdesk)
    assert row["pinned"] == "support@example.test"
    assert token not in str(dict(row))  # only its hash is stored
    admin_flag["admin"] = False
    holder = helpdesk.app.test_client()  # another browser, no helpdesk session
    page = holder.get(link).get_data(as_text=True)
    assert "support@example.test" in page
    assert holder.get(MODAL).status_code == 403  # the link opens nothing else
    query = open_and_start(holder, link)
    assert query["login_hint"] == "support@example.test"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        response = callback(holder, idp, query)
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/mailoauth/reconsent/done")
    ((category, message),) = banners(holder)
    assert (category, message) == ("success", "OAuth2 Authorization Successful.")
    after = credentials(helpdesk)
    assert len(after) == 1
    assert after != before
    (row,) = links(helpdesk)
    assert row["used_at"] is not None
    assert row["used_by"] == "support@example.test"
    kinds = [(e.kind, e.actor) for e in event_lines(helpdesk)]
    assert ("reconsent_link_created", None) in kinds
    assert kinds[-1] == ("authorized", "support@example.test")
    assert "re-consent link" in event_lines(helpdesk)[-1].message
    # the same link, a second time
    again = holder.get(link)
    assert again.status_code == 410
    assert "used already" in again.get_data(as_text=True)
    refused = holder.post(link, data={"csrf_token": "x"})
    assert refused.status_code == 400  # no valid form, and nothing started either way


def test_the_wrong_identity_stores_nothing_and_leaves_the_link_unused(helpdesk, admin_flag):
    admin = helpdesk.app.test_client()
    authorized(helpdesk, admin)
    before = credentials(helpdesk)
    link = create_link(admin, "delegate@example.test")
    admin_flag["admin"] = False
    holder = helpdesk.app.test_client()
    query = open_and_start(holder, link)
    assert query["login_hint"] == "delegate@example.test"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock, email="support@example.test")  # the mailbox, not the delegate
        callback(holder, idp, query)
    ((category, message),) = banners(holder)
    assert category == "error"
    assert "This re-consent link is for delegate@example.test" in message
    assert credentials(helpdesk) == before
    (row,) = links(helpdesk)
    assert row["used_at"] is None


def test_the_named_delegate_may_authorize_a_shared_mailbox(helpdesk, admin_flag):
    admin = helpdesk.app.test_client()
    authorized(helpdesk, admin)
    link = create_link(admin, "Delegate@Example.test")
    admin_flag["admin"] = False
    holder = helpdesk.app.test_client()
    query = open_and_start(holder, link)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock, email="delegate@example.test")
        callback(holder, idp, query)
    assert banners(holder)[0][0] == "success"


def test_an_expired_link_is_refused_and_so_is_an_authorization_it_started(helpdesk, admin_flag):
    admin = helpdesk.app.test_client()
    authorized(helpdesk, admin)
    before = credentials(helpdesk)
    link = create_link(admin)
    admin_flag["admin"] = False
    holder = helpdesk.app.test_client()
    query = open_and_start(holder, link)  # started in time ...
    st = helpdesk.app.extensions["mailoauth"]
    with helpdesk.app.app_context(), own_session(st.db) as s:
        s.execute(
            sa.update(st.models.ReconsentLink).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        callback(holder, FakeIdP(mock), query)  # ... finished too late
    assert "expired" in banners(holder)[0][1]
    assert credentials(helpdesk) == before
    assert holder.get(link).status_code == 410


def test_two_authorizations_from_one_link_store_one_grant(helpdesk, admin_flag):
    admin = helpdesk.app.test_client()
    authorized(helpdesk, admin)
    link = create_link(admin)
    admin_flag["admin"] = False
    first, second = helpdesk.app.test_client(), helpdesk.app.test_client()
    queries = [open_and_start(first, link), open_and_start(second, link)]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        callback(first, idp, queries[0])
        stored = credentials(helpdesk)
        callback(second, idp, queries[1])
    assert banners(first)[0][0] == "success"
    assert "used already" in banners(second)[0][1]
    assert credentials(helpdesk) == stored


def test_an_authorization_started_in_the_modal_needs_the_access_check_at_the_callback(
    helpdesk, admin_flag
):
    admin = helpdesk.app.test_client()
    query = start(admin)
    admin_flag["admin"] = False  # the admin's role was taken away meanwhile
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        response = callback(admin, FakeIdP(mock), query)
    assert response.status_code == 400
    assert "not allowed" in response.get_data(as_text=True)
    assert credentials(helpdesk) == []


@pytest.mark.parametrize("pinned", ["not an address", "a@b@", "x" * 400 + "@example.test"])
def test_a_bad_pinned_address_creates_nothing(helpdesk, pinned):
    admin = helpdesk.app.test_client()
    authorized(helpdesk, admin)
    page = admin.post(
        f"{MODAL}/reconsent", data={"csrf_token": csrf(admin), "pinned": pinned}
    ).get_data(as_text=True)
    assert "Enter the address of who signs in" in page
    assert links(helpdesk) == []


def test_unknown_links_and_keys_named_reconsent(helpdesk, admin_flag):
    admin_flag["admin"] = False
    holder = helpdesk.app.test_client()
    assert holder.get("/mailoauth/reconsent/" + "A" * 43).status_code == 404
    # a short path segment is not a link: it stays the modal's, behind the access check
    assert holder.get("/mailoauth/reconsent/mailbox").status_code == 403


def test_creating_a_link_needs_the_access_check_and_csrf(helpdesk, admin_flag):
    admin = helpdesk.app.test_client()
    authorized(helpdesk, admin)
    assert admin.post(f"{MODAL}/reconsent", data={"csrf_token": "forged"}).status_code == 400
    token = csrf(admin)
    admin_flag["admin"] = False
    assert admin.post(f"{MODAL}/reconsent", data={"csrf_token": token}).status_code == 403
    assert links(helpdesk) == []


def test_an_account_without_a_user_grant_gets_no_link(helpdesk):
    """Application access has no user to send a link to: an administrator consents."""
    admin = helpdesk.app.test_client()
    authorized(helpdesk, admin)
    st = helpdesk.app.extensions["mailoauth"]
    with helpdesk.app.app_context(), own_session(st.db) as s:
        account = s.scalars(sa.select(st.models.Account)).one()
        account.provider = "microsoft"
        account.config = {**account.config, "access": "application", "tenant": "contoso.test"}
    page = admin.post(f"{MODAL}/reconsent", data={"csrf_token": csrf(admin)}).get_data(as_text=True)
    assert "Re-consent links are for delegated access" in page
    assert "mailoauth-reconsent-create" not in page
    assert links(helpdesk) == []


def test_the_link_is_e_mailed_through_the_notifications_mailbox(make_host, db_url):
    with smtp_sink() as sink:
        host = make_host(db_url=db_url, MAILOAUTH_NOTIFY_MAILBOX="alerts")
        host.mailboxes["alerts"] = MailboxSettings(
            address="alerts@example.test",
            smtp_host=sink.host,
            smtp_port=sink.port,
            smtp_security="none",
        )
        admin = host.app.test_client()
        authorized(host, admin)
        store_account(host, key="alerts", purpose="smtp", access="alerts-token")
        page = admin.post(
            f"{MODAL}/reconsent",
            data={"csrf_token": csrf(admin), "pinned": "owner@example.test", "email": "1"},
        ).get_data(as_text=True)
        [(auth, sender, recipients, text)] = sink.messages
    assert "The link was e-mailed to owner@example.test" in page
    assert LINK.search(page) is None  # shown nowhere but in the mail
    assert auth.startswith("AUTH XOAUTH2 ")
    assert "alerts@example.test" in sender
    assert [r.split(":", 1)[1].strip(" <>") for r in recipients] == ["owner@example.test"]
    mail = email.message_from_string(text)
    assert mail["Subject"] == "Authorize support@example.test again"
    assert LINK.search(mail.get_payload(decode=True).decode())


def test_without_a_mailbox_to_send_through_the_link_is_shown_instead(helpdesk):
    admin = helpdesk.app.test_client()
    authorized(helpdesk, admin)
    page = admin.post(
        f"{MODAL}/reconsent", data={"csrf_token": csrf(admin), "email": "1"}
    ).get_data(as_text=True)
    assert "The link was not e-mailed (MAILOAUTH_NOTIFY_MAILBOX is not set" in page
    assert LINK.search(page)
    assert "mailoauth-reconsent-email" not in page  # no checkbox without a mailbox
