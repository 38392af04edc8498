"""The admin's language: Flask-Babel's locale on a host that has it, English everywhere else."""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from flask import render_template_string
from flask_babel import Babel

from flask_mailoauth import i18n
from flask_mailoauth.accounts import shroud
from flask_mailoauth.models import own_session, utcnow
from flask_mailoauth.providers import registry
from flask_mailoauth.vocabulary import CredentialStatus
from tests.stored import credential, store_account

from .pseudo_locale import CLOSE, OPEN, PSEUDO


@pytest.fixture
def german_host(make_host):
    """A host with Flask-Babel whose locale selector says German."""
    host = make_host()
    Babel(host.app, locale_selector=lambda: "de")
    return host


def test_english_without_flask_babel_on_the_host(host):
    with host.app.test_request_context():
        assert i18n.gettext("OAuth2 Authorization") == "OAuth2 Authorization"
        assert i18n.gettext("%(n)s left", n=3) == "3 left"
        assert i18n.ngettext("%(num)d error", "%(num)d errors", 2) == "2 errors"


def test_english_outside_an_application():
    assert i18n.gettext("OAuth2 Authorization") == "OAuth2 Authorization"


GERMAN = Path(i18n.__file__).parent / "translations" / "de" / "LC_MESSAGES" / "flask_mailoauth.po"


@pytest.mark.parametrize("tab", ["info", "idp"])
@pytest.mark.parametrize("provider", ["microsoft", "google", "generic"])
def test_modal_speaks_the_hosts_locale(german_host, provider, tab):
    """No text or read-out attribute of the German modal is left in English."""
    with GERMAN.open("rb") as source:
        catalog = read_po(source, locale="de")
    english = {m.id for m in catalog if isinstance(m.id, str) and m.id and m.string != m.id}
    client = german_host.app.test_client()
    page = client.get(f"/mailoauth/support/mailbox?provider={provider}&tab={tab}")
    reader = _Reader()
    reader.feed(page.get_data(as_text=True))
    shown = {piece.strip() for piece in [*reader.text, *reader.attributes]} - {""}
    assert "OAuth2-Autorisierung" in shown
    assert sorted(shown & english) == []


def test_the_hosts_own_underscore_is_left_alone(german_host):
    """Our templates get our catalogue; the host's templates keep the host's ``_``."""
    with german_host.app.test_request_context():
        assert render_template_string('{{ _("OAuth2 Authorization") }}') == "OAuth2 Authorization"


def test_lazy_text_is_translated_when_shown(german_host):
    label = i18n.lazy_gettext("OAuth2 Authorization")
    with german_host.app.test_request_context():
        assert str(label) == "OAuth2-Autorisierung"
    assert str(label) == "OAuth2 Authorization"


def test_the_cli_uses_the_hosts_default_locale(make_host):
    host = make_host(BABEL_DEFAULT_LOCALE="de")
    Babel(host.app, locale_selector=lambda: pytest.fail("no request to select a locale from"))
    with host.app.app_context():
        assert i18n.gettext("OAuth2 Authorization") == "OAuth2-Autorisierung"


def test_a_regional_locale_falls_back_to_its_language(make_host):
    host = make_host()
    Babel(host.app, locale_selector=lambda: "de_AT")
    with host.app.test_request_context():
        assert i18n.gettext("OAuth2 Authorization") == "OAuth2-Autorisierung"


# --- every string an admin sees is marked: a pseudo translation must cover the whole page ---

SCRIPTED = {"X-Requested-With": "mailoauth"}
STORED_ERROR = "invalid_grant: AADSTS700082: expired."
#: attributes whose values people read (or hear)
READ_ATTRIBUTES = {
    "aria-label",
    "title",
    "placeholder",
    "data-mailoauth-confirm",
    "data-mailoauth-copied-label",
    "data-mailoauth-copied-status",
}
#: data in a page, never translated: dates and times, and what separates or decorates them
DATA_PATTERNS = [
    r"\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?)?( UTC)?",
    r"[\u00d7\u00b7\u2714\u2718()\[\]:\u2014,.\s]",  # the close cross, separators, ticks
]


def account_data(provider: str = "generic") -> list[str]:
    """What the modal shows of the account and its provider (with the provider's fields)."""
    return [
        "support@example.test",
        "mailbox",
        registry.get(provider).display_name,
    ]


@pytest.fixture
def pseudo_host(make_host, pseudo_locale):
    """A host in the pseudo-language: every marked message shows as ⟦…⟧."""
    host = make_host(WTF_CSRF_ENABLED=False)
    Babel(host.app, locale_selector=lambda: pseudo_locale)
    return host


class _Reader(HTMLParser):
    """The text people read in a page: its text nodes and its read-out attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.attributes: list[str] = []
        self.lang: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if name in READ_ATTRIBUTES and value:
                self.attributes.append(value)
            if tag == "html" and name == "lang":
                self.lang.append(value)

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def untranslated(text: str, data: list[str]) -> list[str]:
    """What is left of ``text`` once every ⟦translation⟧ (nested too) and the data is gone."""
    while True:
        shorter = re.sub(f"{OPEN}[^{OPEN}{CLOSE}]*{CLOSE}", "", text)
        if shorter == text:
            break
        text = shorter
    for value in sorted(data, key=len, reverse=True):
        text = text.replace(value, "")
    for pattern in DATA_PATTERNS:
        text = re.sub(pattern, "\n", text)
    return [piece for piece in text.split("\n") if piece.strip()]


def assert_all_translated(html: str, data: list[str]) -> _Reader:
    reader = _Reader()
    reader.feed(html)
    left = untranslated("\n".join(reader.text), data)
    assert left == [], "\n".join(left)
    for value in reader.attributes:
        assert untranslated(value, data) == [], value
    return reader


def _events(host, *rows: tuple[str, str, str | None, str]) -> None:
    st = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st.db) as s:
        account = s.query(st.models.Account).one()
        for kind, level, code, message in rows:
            s.add(
                st.models.Event(
                    account_id=account.id, kind=kind, level=level, code=code, message=message
                )
            )
        s.commit()


def test_every_string_of_the_modal_is_marked(pseudo_host):
    """Info, IdP Config and a troubled Token tab (error, retry, events, a failed connection
    check), as fragment and as page: nothing but ⟦translations⟧ and data."""
    h = pseudo_host
    store_account(
        h,
        status=CredentialStatus.RETRYING,
        failure_count=2,
        last_error=STORED_ERROR,
        resource_owner="support@example.test",
        next_retry_at=utcnow() + timedelta(minutes=5),
        expires_in=-60,
    )
    _events(
        h,
        ("refresh_failed", "warning", "invalid_grant", STORED_ERROR),
        ("config_saved", "info", None, "stored text"),
    )
    # the real check: its token step fails (the account waits for its retry)
    data = [
        *account_data(),
        "IMAP",
        STORED_ERROR,
        "stored text",
        "invalid_grant",
        "openid email offline_access",
        shroud("at-0"),
        shroud("rt-0"),
        credential(h)[0].config_signature[:16],
    ]
    client = h.app.test_client()
    for headers in (SCRIPTED, {}):
        page = client.post("/mailoauth/support/mailbox/test", headers=headers)
        html = page.get_data(as_text=True)
        assert 'id="mailoauth-panel-token"' in html
        assert "mailoauth-checks" in html
        assert_all_translated(html, data)


def test_a_form_with_errors_is_marked(pseudo_host):
    """Validation errors, their banner and the tabs' error counts are in the admin's language."""
    client = pseudo_host.app.test_client()
    notes = "x" * 5001
    form = {
        "provider": "microsoft",
        "enabled": "1",
        "name": "",
        "idp_client_id": "",
        "notes": notes,
        "secret_expires_on": "someday",
    }
    page = client.post("/mailoauth/support/mailbox", data=form)
    assert page.status_code == 422
    html = page.get_data(as_text=True)
    for said in (
        "This field is required.",
        "Field cannot be longer than 5000 characters.",
        "Not a valid date value.",
        "(2 errors)",
        "Please correct the fields marked below.",
    ):
        assert f"{OPEN}{said}{CLOSE}" in html, said
    assert f"{OPEN}{OPEN}Client ID{CLOSE} is required.{CLOSE}" in html or (
        f"{OPEN}Client ID is required.{CLOSE}" in html
    )
    assert_all_translated(html, [*account_data("microsoft"), notes, "common"])


@pytest.mark.parametrize("headers", [SCRIPTED, {}])
def test_the_not_oauth_dialog_is_marked(pseudo_host, headers):
    client = pseudo_host.app.test_client()
    page = client.get("/mailoauth/support/mailbox?provider=basic", headers=headers)
    names = [p.display_name for p in registry.all()]
    reader = assert_all_translated(page.get_data(as_text=True), ["basic", *names])
    assert reader.lang == ([] if headers else [PSEUDO])


def test_the_callback_error_page_and_flashes_are_marked(pseudo_host):
    client = pseudo_host.app.test_client()
    page = client.get("/mailoauth/callback?state=unknown&code=x")
    assert page.status_code == 400
    reader = _Reader()
    reader.feed(page.get_data(as_text=True))
    assert reader.lang == [PSEUDO]
    assert reader.text[reader.text.index("\n", 1) :]  # the page has a body
    title = [t for t in reader.text if t.strip()][:2]
    assert all(t.startswith(OPEN) for t in title), title
    store_account(pseudo_host)
    client.post("/mailoauth/support/mailbox/delete")
    client.post("/mailoauth/support/mailbox/delete")
    html = client.get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert html.count(f'mailoauth-banner-success" role="status">{OPEN}Token deleted.') == 1
    assert f'mailoauth-banner-error" role="status">{OPEN}There was no token' in html
    assert_all_translated(html, account_data())


def test_the_config_button_is_marked(pseudo_host):
    with pseudo_host.app.test_request_context():
        html = render_template_string("{{ mailoauth_config_button('support') }}")
    assert f">{OPEN}Config{CLOSE}</a>" in html


def test_the_page_says_its_language(german_host):
    client = german_host.app.test_client()
    page = client.get("/mailoauth/support/mailbox?provider=microsoft").get_data(as_text=True)
    assert '<html lang="de">' in page
    assert 'id="mailoauth-title">OAuth2-Autorisierung<' in page


def test_english_pages_say_english(host):
    page = host.app.test_client().get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert '<html lang="en">' in page
