"""The docs' quickstart runs as written, and every configuration key is documented."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_mailoauth import MailboxSettings, MailOAuth
from flask_mailoauth.extension import DEFAULTS
from tests.conftest import TEST_KEY

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


README = DOCS.parent / "README.md"


def loader_host(database: Path) -> dict:
    """A namespace with what the docs' loader examples assume: app, db, SystemEmail, mailoauth."""
    app = Flask("docs_host")
    app.config.update(
        SECRET_KEY="x",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{database}",
        MAILOAUTH_ENCRYPTION_KEYS=[TEST_KEY],
    )
    db = SQLAlchemy(app)

    class SystemEmail(db.Model):
        id: Mapped[int] = mapped_column(primary_key=True)
        address: Mapped[str]
        protocol: Mapped[str] = mapped_column(default="imap")
        host: Mapped[str] = mapped_column(default="")
        port: Mapped[int | None]
        security: Mapped[str] = mapped_column(default="")
        folder: Mapped[str] = mapped_column(default="")
        smtp_host: Mapped[str] = mapped_column(default="")
        smtp_address: Mapped[str] = mapped_column(default="")
        smtp_auth: Mapped[str] = mapped_column(
            default="same"
        )  # "same": SMTP on the mailbox's grant
        smtp_password: Mapped[str] = mapped_column(default="")

    mailoauth = MailOAuth(app, db=db)
    with app.app_context():
        db.create_all()
        db.session.add(SystemEmail(id=1, address="help@example.org", port=993))
        db.session.commit()
    return {
        "app": app,
        "db": db,
        "SystemEmail": SystemEmail,
        "mailoauth": mailoauth,
        "MailboxSettings": MailboxSettings,
        "MailOAuth": MailOAuth,
    }


def readme_python_block() -> str:
    return re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)


def test_the_loader_examples_answer_none_for_keys_that_are_not_ids(tmp_path):
    """Issue 12 point 16: no ``int(key)`` crash (a 500) on a non-numeric key, no legacy
    ``Query.get``; both the README's and docs/integration.rst's loaders run as written."""
    readme = readme_python_block().replace("mailoauth = MailOAuth(app, db=db)", "")
    assert ".query.get(" not in readme
    for name, source in [
        ("integration.rst", first_python_block(DOCS / "integration.rst")),
        ("README.md", readme),
    ]:
        namespace = loader_host(tmp_path / f"{name}.db")
        exec(compile(source, name, "exec"), namespace)  # noqa: S102
        app, load = namespace["app"], namespace["load_mailbox"]
        with app.app_context():
            assert load("1").address == "help@example.org", name
            for key in ("2", "abc", "1 OR 1=1", "", "-1", " 1", "\uff11", "\u00b2"):
                assert load(key) is None, (name, key)
        with app.test_client() as client:
            client.application.extensions["mailoauth"].extension.access_check(lambda: True)
            assert client.get("/mailoauth/abc/mailbox").status_code == 404, name


def install_requires() -> list[str]:
    setup = configparser.ConfigParser()
    setup.read(DOCS.parent / "setup.cfg", encoding="utf-8")
    return [line for line in setup["options"]["install_requires"].splitlines() if line.strip()]


def test_every_dependency_is_listed_with_its_supported_range():
    """Issue 12 point 14: the docs list the range of every dependency, as setup.cfg says."""
    page = (DOCS / "dependencies.rst").read_text(encoding="utf-8")
    listed = re.findall(r"^``([a-z0-9\[\]-]+)``\s+``([^`]+)``", page, re.M)
    required = [re.match(r"([a-z0-9\[\]-]+)(.*)", r).groups() for r in install_requires()]
    assert listed == required
    assert ("wtforms", ">=3.0") in required  # hosts pinning WTForms 3.0/3.1 can install


def python_block_with(path: Path, marker: str) -> str:
    """The ``code-block:: python`` of ``path`` that contains ``marker``."""
    blocks = re.findall(r".. code-block:: python\n\n((?:   .*\n|\n)+)", path.read_text("utf-8"))
    [block] = [b for b in blocks if marker in b]
    return "\n".join(line[3:] for line in block.splitlines())


def test_the_testing_helpers_example_passes_as_written(tmp_path):
    """Issue 12 point 18: the host-test example in docs/integration.rst runs green."""
    integration = DOCS / "integration.rst"
    source = python_block_with(integration, "seed_account")
    for name in ("test_fetch_uses_oauth", "test_refresh"):
        namespace = loader_host(tmp_path / f"{name}.db")
        exec(compile(first_python_block(integration), "loader", "exec"), namespace)  # noqa: S102
        exec(compile(source, "integration.rst", "exec"), namespace)  # noqa: S102
        namespace[name](namespace["app"])
