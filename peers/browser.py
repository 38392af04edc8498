"""Debian's chromium driven by Playwright (never `playwright install`).

The test IdPs serve https with a certificate of the test CA (:mod:`peers.tls`). Chromium on
Linux reads its trust store from an NSS database, which this machine has no tool to write;
the browser trusts exactly the IdPs' server key instead (``--ignore-certificate-errors-spki-list``,
honoured because Playwright runs it with its own ``--user-data-dir``). Every other certificate is
checked as usual: no ``ignore_https_errors``.
"""

from __future__ import annotations

from .tls import test_ca

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
            self.browser = self._pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    *CHROMIUM_ARGS,
                    f"--ignore-certificate-errors-spki-list={test_ca().server_spki()}",
                ],
            )
        except Exception:
            self._pw_cm.__exit__(None, None, None)
            raise
        self.version = self.browser.version

    def stop(self) -> None:
        try:
            self.browser.close()
        finally:
            self._pw_cm.__exit__(None, None, None)
