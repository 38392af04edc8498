"""The docs' quickstart runs as written, and every configuration key is documented."""

from __future__ import annotations

import re
from pathlib import Path

from flask_mailoauth.extension import DEFAULTS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def first_python_block(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    block = re.search(r".. code-block:: python\n\n((?:   .*\n|\n)+)", text).group(1)
    return "\n".join(line[3:] for line in block.splitlines())


def test_the_quickstart_snippet_mounts_the_extension(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "quickstart"}
    exec(compile(first_python_block(DOCS / "quickstart.rst"), "quickstart.rst", "exec"), namespace)  # noqa: S102
    app = namespace["app"]
    client = app.test_client()
    assert client.get("/mailoauth/support/mailbox").status_code == 403
    with client.session_transaction() as session:
        session["is_admin"] = True
    page = client.get("/mailoauth/support/mailbox?provider=microsoft")
    assert page.status_code == 200
    assert "support@example.org" in page.get_data(as_text=True)
    assert "MAILOAUTH_ENCRYPTION_KEYS is not set" in caplog.text


def test_every_configuration_key_is_documented():
    docs = (DOCS / "configuration.rst").read_text(encoding="utf-8")
    for key in DEFAULTS:
        assert f"``{key}``" in docs, key
