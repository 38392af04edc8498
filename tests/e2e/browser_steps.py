"""The admin's steps in Chromium through the demo helpdesk, shared by the browser walkthroughs:
sign in and open the Remote Mailbox tab, open the Config modal, keep a screenshot."""

from __future__ import annotations

from pathlib import Path

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_remote_mailbox(page, server) -> None:
    page.goto(server.url_for("/"))
    page.fill("input[name=email]", "admin@example.test")
    page.fill("input[name=password]", "admin")
    page.click("main button[type=submit]")  # the header holds the language switch
    page.click("text=Admin Panel")
    page.click("main a:text-is('Emails')")
    page.click("main a:text-is('support@example.test')")
    page.click("role=tab[name='Remote Mailbox']")


def open_config(page):
    page.click("#panel-remote .mailoauth-config-button")
    dialog = page.locator("dialog.mailoauth-dialog")
    dialog.locator("h2", has_text="OAuth2 Authorization").wait_for()
    return dialog
