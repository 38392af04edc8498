"""The demo command's sandbox mode, driven in Chromium by the seed's steps, through Fetch now."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import requests

from peers import REPO_ROOT, browser_login_and_consent, free_port, require_peer
from peers.tls import SHARED_DIR_ENV, test_ca

from .browser_steps import open_config, open_remote_mailbox, shot


@pytest.fixture
def demo():
    """``python -m example_app`` in sandbox mode on a free port; its banner's values."""
    for peer in ("idp", "dovecot", "postfix"):
        require_peer(peer)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "example_app"],
        cwd=REPO_ROOT,
        # the demo's IdP uses this process's test CA, whose key the browser trusts
        env={
            **os.environ,
            "PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            SHARED_DIR_ENV: str(test_ca().directory),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Fetch now on Remote Mailbox" in line:
                break
        banner = "".join(lines)
        assert "SANDBOX mode" in banner, banner
        url = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                if requests.get(url, timeout=1).status_code < 500:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        values = dict(
            re.findall(
                r"^\s+(Client ID|Client Secret|Authorization Endpoint|"
                r"Token Endpoint|Mailbox login):\s+(\S+)",
                banner,
                re.M,
            )
        )
        yield url, values
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Traceback" not in rest, rest


class Server:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def url_for(self, path):
        return self.url + path


def test_the_sandbox_demo_walkthrough_from_admin_panel_to_fetch_now(demo, page):
    require_peer("chromium")
    url, values = demo
    server = Server(url)
    open_remote_mailbox(page, server)
    page.select_option("#remote-auth", label="OAuth2 - Microsoft")
    dialog = open_config(page)
    dialog.locator("role=tab[name='IdP Config']").click()
    assert dialog.locator("#mailoauth-callback").input_value() == server.url_for(
        "/mailoauth/callback"
    )
    dialog.locator("#mailoauth-client_secret").fill(values["Client Secret"])
    dialog.locator("#mailoauth-idp_client_id").fill(values["Client ID"])
    dialog.locator("#mailoauth-idp_authorization_endpoint").fill(values["Authorization Endpoint"])
    dialog.locator("#mailoauth-idp_token_endpoint").fill(values["Token Endpoint"])
    dialog.locator("button", has_text="Submit").click()
    browser_login_and_consent(page, values["Mailbox login"])
    page.locator("text=OAuth2 Authorization Successful").wait_for()
    dialog = open_config(page)
    dialog.locator("role=tab[name='Token']").click()
    assert values["Mailbox login"] in dialog.locator("#mailoauth-panel-token").inner_text()
    shot(page, "demo-sandbox-token-tab")
    page.keyboard.press("Escape")
    page.click("button:has-text('Fetch now')")
    page.locator("#fetch-heading").wait_for()
    listing = page.locator(".fetch").inner_text()
    assert "Printer on floor 3 is jammed" in listing
    assert "Password reset for the VPN" in listing
    shot(page, "demo-sandbox-fetch-now")
