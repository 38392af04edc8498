"""A small helpdesk that mounts flask-mailoauth: the demo site and the reference integration."""

from __future__ import annotations

import json
import os
from typing import Any

import click
from flask import Flask

from .extensions import db, mailoauth

__all__ = ["create_app", "db", "mailoauth"]


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app factory: SQLite in the instance folder unless ``DATABASE_URL`` says otherwise."""
    from . import auth, integration, language, views  # noqa: F401  (integration registers the callbacks)
    from .seed import seed

    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("SECRET_KEY", "dev-only-change-me"),
        SQLALCHEMY_DATABASE_URI=_database_url(),
        # Not "session"/"_session": on a shared host (or localhost in tests) the IdP's own
        # session cookie would overwrite ours and log the admin out mid-authorization.
        SESSION_COOKIE_NAME="helpdesk_session",
        # Lax, not Strict: the IdP's redirect back to the callback is a cross-site navigation
        # and must carry this cookie, because the pending authorization is bound to it.
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
    )
    # Configuration from the environment, as Flask apps do: FLASK_* (prefix stripped) and every
    # MAILOAUTH_* key as it is named, values read as JSON when they parse (1, true, 5, [..]).
    app.config.from_prefixed_env()
    app.config.from_mapping(_env_config("MAILOAUTH_"))
    app.config.from_mapping(config or {})
    os.makedirs(app.instance_path, exist_ok=True)

    db.init_app(app)
    mailoauth.init_app(app, db=db)
    auth.init_app(app)
    language.init_app(app)
    views.init_app(app)

    @app.cli.command("seed")
    def seed_command() -> None:
        """Create the demo admin and the Support system email if they are missing."""
        seed()
        click.echo("Seeded.")

    with app.app_context():
        db.create_all()
        seed()
    return app


def _env_config(prefix: str) -> dict[str, Any]:
    """The environment variables named ``prefix...``, JSON values decoded like Flask's
    ``from_prefixed_env`` does (a value that is not JSON stays a string)."""
    found: dict[str, Any] = {}
    for name, value in os.environ.items():
        if name.startswith(prefix):
            try:
                found[name] = json.loads(value)
            except ValueError:
                found[name] = value
    return found


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL", "sqlite:///helpdesk.sqlite3")
    # PaaS-style postgres:// URLs name no driver; SQLAlchemy would pick psycopg2, we ship psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
