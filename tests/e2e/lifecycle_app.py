"""A host app built from the environment, for processes the token lifecycle tests start.

``flask --app tests.e2e.lifecycle_app:create_app mailoauth ...`` reads the database URL from
``MAILOAUTH_E2E_DB_URL``, the encryption key from ``MAILOAUTH_E2E_KEY`` (the parent test's
``TEST_KEY``: a child process importing ``tests.conftest`` would generate another one) and the
test IdPs' CA from ``MAILOAUTH_E2E_CA_BUNDLE`` (likewise: the parent's ``peers.tls`` CA).
:func:`race_for_token` is the body of a ``multiprocessing`` "spawn" child.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_mailoauth import MailOAuth


def create_app(
    db_url: str | None = None, key: str | None = None, ca_bundle: str | None = None
) -> Flask:
    """A minimal host: the extension on a Flask-SQLAlchemy ``db``; the tables already exist."""
    app = Flask("lifecycle_host")
    app.config.update(
        SECRET_KEY="lifecycle-secret-key",
        SQLALCHEMY_DATABASE_URI=db_url or os.environ["MAILOAUTH_E2E_DB_URL"],
        MAILOAUTH_ENCRYPTION_KEYS=[key or os.environ["MAILOAUTH_E2E_KEY"]],
        MAILOAUTH_ALLOW_INSECURE_HTTP=True,
        MAILOAUTH_CA_BUNDLE=ca_bundle or os.environ["MAILOAUTH_E2E_CA_BUNDLE"],
    )
    db = SQLAlchemy()
    db.init_app(app)
    MailOAuth(app, db=db)
    return app


def race_for_token(
    db_url: str, key: str, ca_bundle: str, start: Any, threads: int, results: Any
) -> None:
    """Build a host, wait at the cross-process barrier ``start``, then ``threads`` threads ask
    for the ``support`` mailbox's token at once; put the list of answers on ``results``."""
    app = create_app(db_url, key, ca_bundle)
    ext: MailOAuth = app.extensions["mailoauth"].extension
    together = threading.Barrier(threads)
    answers: list[str] = []

    def call() -> None:
        with app.app_context():
            together.wait(timeout=60)
            try:
                answers.append(ext.access_token("support"))
            except Exception as exc:  # reported to the parent, which fails the test
                answers.append(f"error: {exc!r}")

    workers = [threading.Thread(target=call) for _ in range(threads)]
    start.wait(timeout=60)
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()
    results.put((os.getpid(), answers))
