"""The demo helpdesk (example_app): login, Admin Panel > Emails and its extension wiring."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from example_app import create_app, db
from example_app.integration import load_mailbox
from example_app.models import SystemEmail
from flask_mailoauth.crypto import generate_key

KEY = generate_key()
CSRF = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')


# Not named "app": pytest-flask would push one request context around the whole test.
@pytest.fixture
def helpdesk(tmp_path):
    return create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/h.db",
            "MAILOAUTH_ENCRYPTION_KEYS": [KEY],
        }
    )


@pytest.fixture
def client(helpdesk):
    return helpdesk.test_client()


def csrf(client, url: str) -> str:
    return CSRF.search(client.get(url).get_data(as_text=True)).group(1)


def login(client, password: str = "admin"):
    token = csrf(client, "/login")
    return client.post(
        "/login",
        data={"email": "admin@example.test", "password": password, "csrf_token": token},
    )


@pytest.fixture
def admin(client):
    assert login(client).status_code == 303
    return client


def support(helpdesk) -> SystemEmail:
    with helpdesk.app_context():
        email = db.session.execute(db.select(SystemEmail)).scalar_one()
        db.session.expunge(email)
        return email


def email_form(client, email: SystemEmail, **changes: object) -> dict[str, object]:
    data = {
        "csrf_token": csrf(client, f"/admin/emails/{email.id}"),
        "tab": "remote",
        "address": email.address,
        "name": email.name,
        "protocol": email.protocol,
        "host": email.host,
        "port": email.port,
        "security": email.security,
        "folder": email.folder,
        "remote_auth": email.remote_auth,
        "smtp_host": email.smtp_host,
        "smtp_port": email.smtp_port,
        "smtp_security": email.smtp_security,
        "smtp_auth": email.smtp_auth,
    }
    data.update(changes)
    return data


@pytest.mark.parametrize("path", ["/", "/admin", "/admin/emails", "/admin/emails/1"])
def test_pages_require_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.location.startswith("/login?next=")


def test_extension_views_refuse_anonymous_users(client):
    assert client.get("/mailoauth/1/mailbox").status_code == 403


def test_wrong_password_is_refused(client):
    response = login(client, password="wrong")
    assert response.status_code == 200
    assert "Wrong email address or password." in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_login_then_logout(client):
    response = login(client)
    assert response.status_code == 303
    assert response.location == "/"
    page = client.get("/").get_data(as_text=True)
    assert "Dashboard" in page
    assert 'href="/admin"' in page
    client.post("/logout", data={"csrf_token": csrf(client, "/")})
    assert client.get("/").status_code == 302


def test_login_returns_to_a_local_next_only(client):
    token = csrf(client, "/login")
    form = {"email": "admin@example.test", "password": "admin", "csrf_token": token}
    assert client.post("/login?next=//evil.test/x", data=form).location == "/"
    client.post("/logout", data={"csrf_token": csrf(client, "/")})
    token = csrf(client, "/login")
    form["csrf_token"] = token
    assert client.post("/login?next=/admin/emails", data=form).location == "/admin/emails"


def test_session_cookie_is_not_the_idps(helpdesk, client):
    login(client)
    assert client.get_cookie("helpdesk_session") is not None
    assert client.get_cookie("_session") is None


def test_emails_list_shows_the_seeded_email(admin):
    page = admin.get("/admin/emails").get_data(as_text=True)
    assert "support@example.test" in page
    assert "Support" in page
    assert "IMAP · OAuth2 - Microsoft" in page
    assert "Same as Remote Mailbox" in page
    assert "Add New Email" in page


def test_email_page_has_the_three_tabs(admin, helpdesk):
    email = support(helpdesk)
    page = admin.get(f"/admin/emails/{email.id}").get_data(as_text=True)
    for tab, label in (
        ("basic", "Basic"),
        ("remote", "Remote Mailbox"),
        ("smtp", "Outgoing (SMTP)"),
    ):
        assert re.search(rf'role="tab" id="tab-{tab}"[^>]*>{re.escape(label)}</a>', page)
        assert f'id="panel-{tab}"' in page
    assert f'href="/admin/emails/{email.id}?tab=remote"' in page
    remote = admin.get(f"/admin/emails/{email.id}?tab=remote").get_data(as_text=True)
    assert re.search(r'id="panel-remote" aria-labelledby="tab-remote"\s*>', remote)


def options(page: str, select_id: str) -> list[str]:
    select = re.search(rf'<select id="{select_id}".*?</select>', page, re.S).group(0)
    return re.findall(r"<option[^>]*>([^<]*)</option>", select)


def test_authentication_selects_list_every_provider(admin, helpdesk):
    page = admin.get(f"/admin/emails/{support(helpdesk).id}").get_data(as_text=True)
    providers = ["OAuth2 - Microsoft", "OAuth2 - Google", "OAuth2 - Other Provider"]
    remote = options(page, "remote-auth")
    assert set(providers) <= set(remote)
    assert remote[-1] == "Basic Authentication (Legacy)"
    assert re.search(r'<option selected value="microsoft">', page)
    smtp = options(page, "smtp-auth")
    assert smtp[:2] == ["Same as Remote Mailbox", "None"]
    assert set(providers) <= set(smtp)
    assert smtp[-1] == "Basic Authentication (Legacy)"


def test_config_buttons_open_the_modal_for_the_email(admin, helpdesk):
    key = support(helpdesk).key
    page = admin.get(f"/admin/emails/{key}").get_data(as_text=True)
    mailbox = re.search(rf'<a[^>]*href="/mailoauth/{key}/mailbox"[^>]*>', page, re.S).group(0)
    assert 'data-mailoauth-provider-select="#remote-auth"' in mailbox
    smtp = re.search(rf'<a[^>]*href="/mailoauth/{key}/smtp"[^>]*>', page, re.S).group(0)
    assert 'data-mailoauth-provider-select="#smtp-auth"' in smtp
    # the logged-in admin passes the extension's access check
    assert admin.get(f"/mailoauth/{key}/mailbox").status_code == 200


def test_saving_an_email(admin, helpdesk):
    email = support(helpdesk)
    response = admin.post(
        f"/admin/emails/{email.id}",
        data=email_form(admin, email, name="Help", host="", port="", tab="smtp"),
    )
    assert response.status_code == 303
    assert response.location == f"/admin/emails/{email.id}?tab=smtp"
    page = admin.get(response.location).get_data(as_text=True)
    assert '<div class="flash flash-success" role="status">Successfully updated.</div>' in page
    saved = support(helpdesk)
    assert (saved.name, saved.host, saved.port) == ("Help", "", None)


def test_bad_input_shows_a_field_error_and_changes_nothing(admin, helpdesk):
    email = support(helpdesk)
    response = admin.post(
        f"/admin/emails/{email.id}", data=email_form(admin, email, port="abc", name="Changed")
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert '<p class="error" id="port-error">Not a valid integer value.</p>' in page
    assert 'aria-describedby="port-error"' in page
    assert re.search(r'id="panel-remote" aria-labelledby="tab-remote"\s*>', page)
    assert support(helpdesk).name == "Support"


def test_basic_authentication_needs_host_and_username(admin, helpdesk):
    email = support(helpdesk)
    response = admin.post(
        f"/admin/emails/{email.id}",
        data=email_form(admin, email, remote_auth="basic", host="", remote_username=""),
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Basic Authentication needs the server&#39;s host name." in page
    assert "Enter the username for Basic Authentication." in page
    assert support(helpdesk).remote_auth == "microsoft"


def test_adding_an_email(admin, helpdesk):
    token = csrf(admin, "/admin/emails/new")
    response = admin.post(
        "/admin/emails/new",
        data={
            "csrf_token": token,
            "address": "Sales@Example.test",
            "name": "Sales",
            "protocol": "pop3",
            "security": "",
            "folder": "",
            "remote_auth": "google",
            "smtp_security": "",
            "smtp_auth": "none",
        },
    )
    assert response.status_code == 303
    with helpdesk.app_context():
        sales = db.session.execute(db.select(SystemEmail).filter_by(name="Sales")).scalar_one()
        assert (sales.address, sales.protocol, sales.folder) == (
            "sales@example.test",
            "pop3",
            "INBOX",
        )


def test_csrf_is_enforced(admin, helpdesk):
    email = support(helpdesk)
    data = email_form(admin, email, name="Forged")
    del data["csrf_token"]
    assert admin.post(f"/admin/emails/{email.id}", data=data).status_code == 400
    assert support(helpdesk).name == "Support"
    assert admin.post(f"/admin/emails/{email.id}/fetch").status_code == 400
    assert admin.post("/logout").status_code == 400
    anonymous = helpdesk.test_client()
    form = {"email": "admin@example.test", "password": "admin"}
    assert anonymous.post("/login", data=form).status_code == 200
    assert anonymous.get("/").status_code == 302


def test_flashed_banners_render(admin, helpdesk):
    with admin.session_transaction() as session:
        session["_flashes"] = [
            ("success", "OAuth2 Authorization Successful."),
            ("error", "Something <b>failed</b>."),
        ]
    page = admin.get(f"/admin/emails/{support(helpdesk).id}?tab=remote").get_data(as_text=True)
    assert (
        '<div class="flash flash-success" role="status">OAuth2 Authorization Successful.</div>'
        in page
    )
    assert 'class="flash flash-error" role="alert">Something &lt;b&gt;failed&lt;/b&gt;.' in page


def test_loader_maps_blank_values_to_none(helpdesk):
    with helpdesk.app_context():
        email = db.session.execute(db.select(SystemEmail)).scalar_one()
        email.host, email.port, email.security, email.smtp_host = "", None, "", ""
        db.session.commit()
        settings = load_mailbox(email.key)
        assert settings.address == "support@example.test"
        assert settings.protocol == "imap"
        assert (settings.host, settings.port, settings.security) == (None, None, None)
        assert settings.smtp_host is None
        assert settings.smtp_port == 587
        assert settings.smtp_security == "starttls"
        assert load_mailbox("999") is None
        assert load_mailbox("not-a-key") is None


def test_account_page_is_the_tab_of_the_purpose(helpdesk):
    hooks = helpdesk.extensions["mailoauth"].hooks
    with helpdesk.test_request_context():
        assert hooks.account_page("1", "mailbox") == "/admin/emails/1?tab=remote"
        assert hooks.account_page("1", "smtp") == "/admin/emails/1?tab=smtp"


class FakeIMAP:
    def select(self, mailbox, readonly=False):
        assert mailbox == '"INBOX"'
        return "OK", [b"12"]

    def search(self, charset, *criteria):
        return "OK", [b" ".join(str(n).encode() for n in range(1, 13))]

    def fetch(self, numbers, parts):
        assert numbers == "3,4,5,6,7,8,9,10,11,12"
        return "OK", [
            (
                f"{n} (BODY[HEADER.FIELDS (FROM SUBJECT DATE)] {{40}}".encode(),
                f"From: a{n}@example.test\r\nSubject: =?utf-8?q?Caf=C3=A9_{n}?=\r\n\r\n".encode(),
            )
            for n in range(3, 13)
        ] + [b")"]

    def logout(self):
        return "BYE", []


def test_fetch_now_lists_the_newest_messages(admin, helpdesk, monkeypatch):
    import example_app.fetch

    class Ext:
        def connect_imap(self, key):
            assert key == email.key
            return FakeIMAP()

    email = support(helpdesk)
    monkeypatch.setattr(example_app.fetch, "mailoauth", Ext())
    page = admin.post(
        f"/admin/emails/{email.id}/fetch", data={"csrf_token": csrf(admin, "/admin/emails/1")}
    ).get_data(as_text=True)
    assert "10 of 12 messages, newest first." in page
    assert page.index("Café 12") < page.index("Café 3")
    assert "Café 2<" not in page


def test_fetch_now_shows_errors_readably(admin, helpdesk, monkeypatch):
    import example_app.fetch
    from flask_mailoauth.errors import ReauthorizationRequired

    class Ext:
        def connect_imap(self, key):
            raise ReauthorizationRequired("The refresh token was revoked; authorize again.")

    monkeypatch.setattr(example_app.fetch, "mailoauth", Ext())
    page = admin.post(
        "/admin/emails/1/fetch", data={"csrf_token": csrf(admin, "/admin/emails/1")}
    ).get_data(as_text=True)
    assert "Fetching failed: The refresh token was revoked; authorize again." in page


def test_dashboard_lists_accounts_needing_attention(admin, monkeypatch):
    import example_app.views

    health = SimpleNamespace(
        key="1",
        purpose="mailbox",
        status="reauthorization_required",
        warnings=["The refresh token expires in 3 days."],
        needs_attention=True,
    )

    class Ext:
        def health(self):
            return [health, SimpleNamespace(key="1", purpose="smtp", needs_attention=False)]

    page = admin.get("/").get_data(as_text=True)
    assert "need attention" not in page
    monkeypatch.setattr(example_app.views, "mailoauth", Ext())
    page = admin.get("/").get_data(as_text=True)
    assert "Mail accounts that need attention" in page
    assert 'href="/admin/emails/1?tab=remote">support@example.test</a>' in page
    assert "The refresh token expires in 3 days." in page


def test_seed_command_is_idempotent(helpdesk):
    result = helpdesk.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code == 0, result.output
    with helpdesk.app_context():
        assert db.session.execute(db.select(db.func.count(SystemEmail.id))).scalar() == 1


@pytest.mark.parametrize(
    ("remote", "smtp", "purpose"),
    [
        ("microsoft", "same", "mailbox"),
        ("basic", "same", None),
        ("microsoft", "google", "smtp"),
        ("microsoft", "none", None),
        ("google", "basic", None),
    ],
)
def test_smtp_oauth_purpose(remote, smtp, purpose):
    email = SystemEmail(id=1, address="a@example.test", remote_auth=remote, smtp_auth=smtp)
    assert email.smtp_oauth_purpose == purpose


def test_fetch_now_over_pop3_reads_the_last_ten_headers(admin, helpdesk, monkeypatch):
    import example_app.fetch

    class FakePOP3:
        def stat(self):
            return 3, 300

        def top(self, number, lines):
            assert lines == 0
            return b"+OK", [f"Subject: Message {number}".encode(), b""], 20

        def quit(self):
            return b"+OK"

    class Ext:
        def connect_pop3(self, key):
            return FakePOP3()

    with helpdesk.app_context():
        db.session.execute(db.update(SystemEmail).values(protocol="pop3"))
        db.session.commit()
    monkeypatch.setattr(example_app.fetch, "mailoauth", Ext())
    page = admin.post(
        "/admin/emails/1/fetch", data={"csrf_token": csrf(admin, "/admin/emails/1")}
    ).get_data(as_text=True)
    assert "3 of 3 messages, newest first." in page
    assert page.index("Message 3") < page.index("Message 2") < page.index("Message 1")


def test_language_switch_speaks_german_in_the_extension(admin, helpdesk):
    key = support(helpdesk).key
    token = csrf(admin, "/admin/emails")
    answer = admin.post(
        "/language", data={"csrf_token": token, "language": "de", "next": "/admin/emails"}
    )
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/admin/emails"
    page = admin.get("/admin/emails").get_data(as_text=True)
    assert '<html lang="de">' in page
    assert '<option value="de" lang="de" selected>Deutsch</option>' in page
    modal = admin.get(f"/mailoauth/{key}/mailbox").get_data(as_text=True)
    assert "OAuth2-Autorisierung" in modal


def test_language_follows_the_browser_until_switched(client):
    page = client.get("/login", headers={"Accept-Language": "de-DE,de;q=0.9"})
    assert '<html lang="de">' in page.get_data(as_text=True)
    assert '<html lang="en">' in client.get("/login").get_data(as_text=True)


@pytest.mark.parametrize("target", ["https://evil.test/", "//evil.test/x", "javascript:x"])
def test_language_switch_returns_only_to_this_site(admin, target):
    token = csrf(admin, "/admin/emails")
    answer = admin.post("/language", data={"csrf_token": token, "language": "de", "next": target})
    assert answer.headers["Location"] == "/"
