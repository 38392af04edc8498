"""Accessibility of the Config modal in Chromium (issue 12, points 12 and 21-24).

axe-core (pinned in peers/idp/package.json, installed by scripts/install-peers) runs on
every state of the modal; the keyboard-only path, the no-JS page, ids that never clash with the
host page, errors tied to their fields, and the modal's looks inside a Bootstrap-like host and an
unstyled one. Screenshots land in test-artifacts/screenshots/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import render_template_string

from example_app import create_app
from example_app.extensions import db
from peers import browser_login_and_consent, require_peer
from peers.availability import AXE_JS
from peers.tls import test_ca

from ..conftest import TEST_KEY
from .flows import authorize

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
SUPPORT = "support@example.test"


@pytest.fixture
def helpdesk(db_url, serve_app):
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": db_url,
            "MAILOAUTH_ENCRYPTION_KEYS": [TEST_KEY],
            "MAILOAUTH_ALLOW_INSECURE_HTTP": True,
            "MAILOAUTH_CA_BUNDLE": str(test_ca().ca_file),
        }
    )
    yield app, serve_app(app)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"a11y-{name}.png"), full_page=True)


def axe_violations(page, state: str) -> list[str]:
    """axe-core's violations on the page as it is now, one readable line each."""
    require_peer("axe")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE_JS))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{state}: {v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(" ".join(node["target"]) for node in v["nodes"])
        for v in result["violations"]
    ]


def open_remote_mailbox(page, server) -> None:
    page.goto(server.url_for("/"))
    page.get_by_label("Email address").fill("admin@example.test")
    page.get_by_label("Password").fill("admin")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Admin Panel").first.click()
    page.locator("main").get_by_role("link", name="Emails", exact=True).click()
    page.locator("main").get_by_role("link", name=SUPPORT).click()
    page.get_by_role("tab", name="Remote Mailbox").click()


def open_config(page):
    page.locator("#panel-remote .mailoauth-config-button").click()
    dialog = page.locator("dialog.mailoauth-dialog")
    dialog.get_by_role("heading", name="OAuth2 Authorization").wait_for()
    return dialog


def test_modal_label_focuses_its_own_field_not_the_hosts(helpdesk, page):
    """Point 21: the demo page has its own ``#name``; the modal's ids are all namespaced."""
    _, server = helpdesk
    open_remote_mailbox(page, server)
    assert page.locator("main #name").count() == 1  # the host's own field, as found
    page.locator("#remote-auth").select_option(label="OAuth2 - Microsoft")
    dialog = open_config(page)
    dialog.locator("label", has_text="Name").first.click()
    assert page.evaluate("document.activeElement.id") == "mailoauth-name"
    assert dialog.get_by_role("textbox", name="Name", exact=True).get_attribute("id") == (
        "mailoauth-name"
    )
    ids = dialog.evaluate("d => [...d.querySelectorAll('[id]')].map(e => e.id)")
    assert ids
    assert [i for i in ids if not i.startswith("mailoauth-")] == []
    assert dialog.locator("input[name=csrf_token]").get_attribute("id") == "mailoauth-csrf_token"
    # labels point at the modal's own fields
    for target in dialog.evaluate("d => [...d.querySelectorAll('label[for]')].map(l => l.htmlFor)"):
        assert dialog.locator(f"[id='{target}']").count() == 1, target
    assert not axe_violations(page, "host page with the modal open")


def test_axe_clean_on_every_state_and_errors_tied_to_fields(helpdesk, generic_idp, page):
    """Points 23, 24: Info, IdP Config, Submit with errors, success, Token tab: 0 violations."""
    _, server = helpdesk
    violations: list[str] = []
    open_remote_mailbox(page, server)
    page.locator("#remote-auth").select_option(label="OAuth2 - Other Provider")
    dialog = open_config(page)
    assert dialog.locator("[role=banner], header").count() == 0
    violations += axe_violations(page, "Info")
    strict = dialog.get_by_role("checkbox", name="Strict Matching")
    assert "mailoauth-strict-help" in strict.get_attribute("aria-describedby").split()
    dialog.get_by_role("tab", name="IdP Config").click()
    violations += axe_violations(page, "IdP Config")

    # the Copy confirmation goes through a live region
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    callback = dialog.locator("#mailoauth-callback").input_value()
    dialog.get_by_role("button", name="Copy").click()
    status = dialog.locator("#mailoauth-copy-status")
    assert status.get_attribute("role") == "status"
    status.filter(has_text="Copied").wait_for(state="attached")

    # Submit without the Client Secret: the error tied to it, focus on it, the tab says so
    client = generic_idp.register_client(callback, auth_method="client_secret_post")
    dialog.locator("#mailoauth-idp_issuer").fill(generic_idp.issuer)
    dialog.locator("#mailoauth-idp_client_id").fill(client.client_id)
    dialog.get_by_role("button", name="Submit").click()
    dialog.locator(".mailoauth-banner-error").wait_for()
    tab = dialog.get_by_role("tab", name="IdP Config")
    assert tab.get_attribute("aria-selected") == "true"
    assert tab.inner_text() == "IdP Config (1 error)"
    secret = dialog.locator("#mailoauth-client_secret")
    assert secret.get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "mailoauth-client_secret"
    for field in dialog.locator("[aria-invalid=true]").all():
        error_id = f"{field.get_attribute('id')}-error"
        assert error_id in field.get_attribute("aria-describedby").split()
        assert dialog.locator(f"#{error_id}").inner_text().strip()
        border = field.evaluate("e => getComputedStyle(e).borderTopColor")
        assert border == "rgb(165, 29, 45)", border
    shot(page, "errors")
    violations += axe_violations(page, "Submit with errors")

    secret.fill(client.client_secret)
    dialog.get_by_role("button", name="Submit").click()
    browser_login_and_consent(page, SUPPORT)
    page.locator(".flash-success, .mailoauth-banner-success").wait_for()
    violations += axe_violations(page, "success banner")

    page.get_by_role("tab", name="Remote Mailbox").click()
    dialog = open_config(page)
    dialog.get_by_role("tab", name="Token").click()
    dialog.locator("#mailoauth-panel-token").wait_for()
    violations += axe_violations(page, "Token tab")
    assert dialog.get_by_role("button", name="Submit").is_hidden()

    # Recent events wrap at 320 px: nothing scrolls sideways
    page.set_viewport_size({"width": 320, "height": 700})
    # a Microsoft grant's scopes: long URLs without a space to break at
    long_scopes = "https://outlook.office.com/IMAP.AccessAsUser.All" * 3
    dialog.locator(".mailoauth-events li").first.evaluate(
        "(li, text) => { li.textContent = text; }", f"authorized: scopes: {long_scopes}"
    )
    wide = dialog.evaluate(
        "d => [...d.querySelectorAll('.mailoauth-events li, dd')]"
        ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)"
    )
    assert not wide
    assert dialog.evaluate("d => d.scrollWidth <= d.clientWidth + 1")
    shot(page, "token-320px")
    assert not violations, "\n".join(violations)


def test_no_js_page_tabs_links_back_to_host_and_axe_clean(helpdesk, generic_idp, page):
    """Points 22 and 23 ([hidden]): the page without script, its tabs links read by the server."""
    _, server = helpdesk
    open_remote_mailbox(page, server)
    host_page = page.url
    page.context.route("**/mailoauth.js", lambda route: route.abort())
    page.reload()
    page.get_by_role("tab", name="Remote Mailbox").click()
    page.locator("#panel-remote .mailoauth-config-button").click()
    page.get_by_role("heading", name="OAuth2 Authorization").wait_for()
    assert page.locator("dialog").count() == 0  # a page of its own
    assert page.get_by_role("button", name="Refresh now").count() == 0  # no token yet
    violations = axe_violations(page, "no-JS page, Info")
    page.get_by_role("tab", name="IdP Config").click()
    page.wait_for_url("**tab=idp**")
    assert page.locator("#mailoauth-panel-idp").is_visible()
    assert page.locator("#mailoauth-panel-info").is_hidden()
    assert page.get_by_role("tab", name="IdP Config").get_attribute("aria-selected") == "true"
    violations += axe_violations(page, "no-JS page, IdP Config")
    shot(page, "no-js-idp-config")
    page.get_by_role("link", name="Cancel").click()
    page.wait_for_load_state()
    assert page.url.split("#")[0] == host_page.split("#")[0]
    page.go_back()
    page.get_by_role("link", name="Close").click()
    page.wait_for_load_state()
    assert page.url.split("#")[0] == host_page.split("#")[0]
    # Config on "Basic" without script: a page whose Close leads back too
    page.goto(server.url_for("/mailoauth/1/mailbox?provider=basic"), referer=host_page)
    page.locator("#mailoauth-not-oauth").wait_for()
    violations += axe_violations(page, "no-JS page, not an OAuth2 choice")
    page.get_by_role("link", name="Close").last.click()
    page.wait_for_load_state()
    assert page.url.split("#")[0] == host_page.split("#")[0]
    assert not violations, "\n".join(violations)


def focused(page) -> str:
    """The focused element, as ``tag#id`` (or its text when it has no id)."""
    return page.evaluate(
        "(() => { const e = document.activeElement;"
        " return e.tagName.toLowerCase() + '#' + (e.id || e.textContent.trim()); })()"
    )


def contrast(rgb_a: str, rgb_b: str) -> float:
    """WCAG contrast ratio of two ``rgb(r, g, b)`` colours."""

    def luminance(rgb: str) -> float:
        channels = [int(c) / 255 for c in rgb[rgb.index("(") + 1 : -1].split(",")[:3]]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    high, low = sorted((luminance(rgb_a), luminance(rgb_b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_keyboard_only_open_tabs_copy_submit_escape(helpdesk, page):
    """Point 24 (keyboard) and 23 (a real Config button, Space opens it, a 3:1 focus ring)."""
    _, server = helpdesk
    open_remote_mailbox(page, server)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    select = page.locator("#remote-auth")
    select.select_option(label="OAuth2 - Microsoft")
    select.focus()
    page.keyboard.press("Tab")
    button = page.locator("#panel-remote .mailoauth-config-button")
    assert button.evaluate("e => e.tagName") == "BUTTON"
    assert button.evaluate("e => e === document.activeElement")
    ring = button.evaluate(
        "e => { const s = getComputedStyle(e);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth), s.outlineColor]; }"
    )
    assert ring[0] == "solid"
    assert ring[1] >= 2
    page_background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    background = "rgb(255, 255, 255)" if "0)" in page_background else page_background
    assert contrast(ring[2], background) >= 3
    page.keyboard.press("Space")
    dialog = page.locator("dialog.mailoauth-dialog")
    dialog.get_by_role("heading", name="OAuth2 Authorization").wait_for()
    assert focused(page) == "a#mailoauth-tab-info"
    page.keyboard.press("ArrowRight")
    assert focused(page) == "a#mailoauth-tab-idp"
    assert dialog.locator("#mailoauth-panel-idp").is_visible()
    page.keyboard.press("ArrowLeft")
    assert dialog.locator("#mailoauth-panel-info").is_visible()
    page.keyboard.press("End")
    assert focused(page) == "a#mailoauth-tab-idp"
    page.keyboard.press("Tab")
    assert focused(page) == "section#mailoauth-panel-idp"
    page.keyboard.press("Tab")
    assert focused(page) == "input#mailoauth-callback"
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    dialog.locator("#mailoauth-copy-status").filter(has_text="Copied").wait_for(state="attached")
    callback = dialog.locator("#mailoauth-callback").input_value()
    assert page.evaluate("navigator.clipboard.readText()") == callback
    while focused(page) != "input#mailoauth-idp_tenant":
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # submits: no Client ID, no secret
    dialog.locator(".mailoauth-banner-error").wait_for()
    assert focused(page) == "input#mailoauth-idp_client_id"
    assert "error" in dialog.get_by_role("tab", name="IdP Config").inner_text()
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert button.evaluate("e => e === document.activeElement")


#: what Bootstrap 5's reboot and components do to a page, without a CDN: huge headings, pink
#: code, upper-case buttons, floating legends, its own focus ring
BOOTSTRAP_LIKE = """
*, ::before, ::after { box-sizing: border-box; }
body { font-family: Georgia, serif; line-height: 1.5; color: #212529; margin: 0; }
h1, h2, h3, h4, h5, h6 { margin-top: 0; margin-bottom: .5rem; font-weight: 500; line-height: 1.2;
  color: #0b3d91; }
h2 { font-size: calc(1.325rem + .9vw); } h3 { font-size: calc(1.3rem + .6vw); }
p { margin-top: 0; margin-bottom: 1rem; }
code { font-size: .875em; color: #d63384; word-wrap: break-word; }
label { display: inline-block; margin-bottom: .5rem; font-size: 1.2rem; }
legend { float: left; width: 100%; padding: 0; margin-bottom: .5rem;
  font-size: calc(1.275rem + .3vw); line-height: inherit; }
button { border-radius: 0; text-transform: uppercase; letter-spacing: .2em; }
input, button, select, textarea { margin: 0; font-family: inherit; font-size: 1.3rem;
  line-height: inherit; }
input { width: 50%; }
a { color: #0d6efd; }
.btn { display: inline-block; padding: .375rem .75rem; font-size: 1rem; border: 1px solid
  transparent; border-radius: .375rem; text-transform: none; letter-spacing: normal; }
.btn-primary { color: #fff; background-color: #0d6efd; border-color: #0d6efd; }
.btn:focus-visible { outline: 0; box-shadow: 0 0 0 .25rem rgba(49, 132, 253, .5); }
"""

HOST_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Mailboxes</title>{% if css %}<style>{{ css }}</style>{% endif %}</head>
<body><main><h1>Mailboxes</h1><h2>support@example.test</h2>
<p>Authentication: OAuth2 <code>generic</code>
{{ mailoauth_config_button("support", "mailbox", class_=button_class, title="OAuth2 settings",
   data_host="1") }}</p></main></body></html>"""

#: what the modal's look is made of, read from computed styles
MODAL_STYLES = """d => {
  const s = (sel, prop) => getComputedStyle(d.querySelector(sel))[prop];
  return {
    h2: s("h2", "fontSize"), h2color: s("h2", "color"), code: s("code", "color"),
    codeSize: s("code", "fontSize"), legend: s("legend", "fontSize"),
    legendFloat: s("legend", "float"), tab: s("[role=tab]", "textTransform"),
    submit: s("button[type=submit]", "textTransform"),
    spacing: s("button[type=submit]", "letterSpacing"), label: s("label", "fontSize"),
    h3: s("h3", "fontSize"), width: d.getBoundingClientRect().width,
  };
}"""


def test_modal_holds_its_styles_in_a_bootstrap_host_and_an_unstyled_one(
    make_host, db_url, generic_idp, serve_app, page
):
    """Point 12: the macro takes the host's classes and attributes; host rules do not leak in."""
    host = make_host(db_url=db_url)

    @host.app.get("/<look>")
    def host_page(look: str) -> str:
        bootstrap = look == "bootstrap"
        return render_template_string(
            HOST_PAGE,
            css=BOOTSTRAP_LIKE if bootstrap else "",
            button_class="btn btn-primary" if bootstrap else "",
        )

    authorize(host, generic_idp, SUPPORT)
    server = serve_app(host.app)
    looks = {}
    for look in ("bootstrap", "plain"):
        page.goto(server.url_for(f"/{look}"))
        button = page.get_by_role("button", name="Config")
        assert button.get_attribute("title") == "OAuth2 settings"
        assert button.get_attribute("data-host") == "1"
        if look == "bootstrap":
            assert "btn btn-primary" in button.get_attribute("class")
            assert button.evaluate("e => getComputedStyle(e).backgroundColor") == (
                "rgb(13, 110, 253)"
            )
        button.click()
        dialog = page.locator("dialog.mailoauth-dialog")
        dialog.get_by_role("tab", name="Token").click()
        dialog.locator("#mailoauth-panel-token code").first.wait_for()
        page.mouse.move(0, 0)
        shot(page, f"host-{look}-token")
        looks[look] = dialog.evaluate(MODAL_STYLES)
        dialog.get_by_role("tab", name="Info").click()
        shot(page, f"host-{look}-info")
        assert not axe_violations(page, f"{look} host")
    bootstrap, plain = looks["bootstrap"], looks["plain"]
    assert bootstrap == plain
    assert plain["h2"] == "20px"
    assert plain["code"] == "rgb(26, 26, 26)"  # the modal's text colour, not Bootstrap's pink
    assert plain["h2color"] == "rgb(26, 26, 26)"
    assert plain["legendFloat"] == "none"
    assert plain["tab"] == plain["submit"] == "none"
    assert plain["spacing"] == "normal"
