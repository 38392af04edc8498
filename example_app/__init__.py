"""A small helpdesk that mounts flask-mailoauth: the demo site and the reference integration."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, render_template_string
from flask_sqlalchemy import SQLAlchemy

from flask_mailoauth import MailOAuth

db = SQLAlchemy()
mailoauth = MailOAuth()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app factory: SQLite in the instance folder unless ``DATABASE_URL`` says otherwise."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("SECRET_KEY", "dev-only-change-me"),
        SQLALCHEMY_DATABASE_URI=os.environ.get("DATABASE_URL", "sqlite:///helpdesk.sqlite3"),
        SESSION_COOKIE_NAME="helpdesk_session",  # never the IdP's "_session" on a shared host
    )
    app.config.from_mapping(config or {})
    os.makedirs(app.instance_path, exist_ok=True)
    db.init_app(app)
    mailoauth.init_app(app, db=db)
    with app.app_context():
        db.create_all()

    @app.get("/")
    def index() -> str:
        return render_template_string("<!doctype html><title>Helpdesk</title><h1>Helpdesk</h1>")

    return app
