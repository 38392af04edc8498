"""Issue 16 point 2 in Chromium, against the real IdP: the admin creates a re-consent link for a
dead grant; a browser with no helpdesk session opens it, signs in at the IdP as the pinned
identity, and the account is active again. The same link is refused a second time, for the
wrong identity and after expiry, and it opens neither the modal nor another account."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from example_app.extensions import db, mailoauth
from flask_mailoauth.models import own_session, utcnow
from peers import browser_login_and_consent

from .browser_steps import demo_helpdesk, generic_walkthrough, open_config, shot, use_dovecot

LINK = re.compile(r"https?://127\.0\.0\.1:\d+/mailoauth/reconsent/[A-Za-z0-9_-]{43}")


@pytest.fixture
def authorized(tmp_path, serve_app, generic_idp, dovecot, page):
    """The demo helpdesk with support@example.test authorized by the admin in ``page``."""
    app, server = demo_helpdesk(tmp_path, serve_app)
    use_dovecot(app, dovecot, "generic")
    generic_walkthrough(page, server, generic_idp, prefix="reconsent")
    return app, server


def grant_died(app) -> None:
    """What a revoked grant leaves after the next refresh: reauthorization required."""
    st = app.extensions["mailoauth"]
    with app.app_context(), own_session(st.db) as s:
        s.execute(sa.update(st.models.Credential).values(status="reauthorization_required"))


def status(app) -> str:
    with app.app_context():
        (health,) = mailoauth.health()
        return health.status


def create_link(page, pinned: str = "") -> str:
    """The admin's Token tab: Create re-consent link; the link it shows."""
    dialog = open_config(page)
    dialog.locator("role=tab[name='Token']").click()
    if pinned:
        dialog.locator("#mailoauth-reconsent-pinned").fill(pinned)
    dialog.locator("#mailoauth-reconsent-create").click()
    notice = dialog.locator(".mailoauth-banner-success", has_text="Send this link")
    notice.wait_for()
    link = LINK.search(notice.inner_text())
    assert link, notice.inner_text()
    page.keyboard.press("Escape")
    return link.group(0)


def stranger(browser):
    """A browser context of its own: no helpdesk session, no IdP session."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    return context, context.new_page()


def test_the_owner_fixes_a_dead_grant_through_the_link(authorized, browser, page):
    app, server = authorized
    grant_died(app)
    assert status(app) == "reauthorization_required"
    link = create_link(page)
    context, owner = stranger(browser)
    try:
        owner.goto(link)
        assert "support@example.test" in owner.inner_text("main")
        shot(owner, "reconsent-1-link-page")
        owner.click("#mailoauth-reconsent-start")
        browser_login_and_consent(owner, "support@example.test")
        banner = owner.locator(".mailoauth-banner-success")
        banner.wait_for()
        assert "OAuth2 Authorization Successful" in banner.inner_text()
        shot(owner, "reconsent-2-done")
        assert status(app) == "active"
        with app.app_context():
            imap = mailoauth.connect_imap("1")
            assert imap.state == "SELECTED"
            imap.logout()
        # the same link a second time
        response = owner.goto(link)
        assert response.status == 410
        assert "used already" in owner.inner_text("main")
        # the link opened nothing else: the modal and another account stay closed
        for path in ("/mailoauth/1/mailbox", "/mailoauth/2/mailbox", "/mailoauth/1/smtp"):
            assert owner.goto(server.url_for(path)).status == 403
    finally:
        context.close()
    with app.app_context():
        events = db.session.execute(sa.text("select kind, actor from mailoauth_event")).all()
    assert ("authorized", "support@example.test") in [tuple(e) for e in events][-1:]


def test_the_wrong_identity_and_an_expired_link_are_refused(authorized, browser, page):
    app, _ = authorized
    grant_died(app)
    link = create_link(page)
    context, other = stranger(browser)
    try:
        other.goto(link)
        other.click("#mailoauth-reconsent-start")
        browser_login_and_consent(other, "someone-else@example.test")
        banner = other.locator(".mailoauth-banner-error")
        banner.wait_for()
        assert "This re-consent link is for support@example.test" in banner.inner_text()
        assert status(app) == "reauthorization_required"
        st = app.extensions["mailoauth"]
        with app.app_context(), own_session(st.db) as s:
            s.execute(
                sa.update(st.models.ReconsentLink).values(
                    expires_at=utcnow() - timedelta(minutes=1)
                )
            )
        response = other.goto(link)
        assert response.status == 410
        assert "expired" in other.inner_text("main")
        assert other.locator("#mailoauth-reconsent-start").count() == 0
    finally:
        context.close()
    assert status(app) == "reauthorization_required"
