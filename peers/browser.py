"""Debian's chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Chromium:
    """Holds the Playwright driver and one browser. Attributes: ``browser``, ``version``."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._pw_cm = sync_playwright()
        self._pw = self._pw_cm.start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception:
            self._pw_cm.__exit__(None, None, None)
            raise
        self.version = self.browser.version

    def stop(self) -> None:
        try:
            self.browser.close()
        finally:
            self._pw_cm.__exit__(None, None, None)
