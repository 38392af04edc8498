"""A small existing helpdesk that adds flask-mailoauth using only its docs: an app factory,
Flask-Login, Flask-Migrate and a Bootstrap-styled page. Installed from the built wheel into a
fresh virtualenv by tests/e2e/test_host_integration.py; never imported by the test suite."""

from __future__ import annotations

import os

import click
from flask import Flask, abort, redirect, render_template, request, url_for
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_mailoauth import MailboxSettings, MailOAuth
from flask_mailoauth.providers import registry

db = SQLAlchemy()
migrate = Migrate()
login = LoginManager()
mailoauth = MailOAuth()


class SystemEmail(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(db.String(320))
    protocol: Mapped[str] = mapped_column(db.String(8), default="imap")
    auth: Mapped[str] = mapped_column(db.String(32), default="basic")


class Admin(UserMixin):
    id = "admin"


@login.user_loader
def load_user(user_id: str) -> Admin | None:
    return Admin() if user_id == "admin" else None


@mailoauth.mailbox_loader
def load_mailbox(key: str) -> MailboxSettings | None:
    if not (key.isascii() and key.isdigit()):  # keys come from URLs: not one of your ids
        return None
    email = db.session.get(SystemEmail, int(key))
    if email is None:
        return None
    return MailboxSettings(address=email.address, protocol=email.protocol)


@mailoauth.access_check
def can_manage() -> bool:
    return current_user.is_authenticated


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="host-secret",
        SQLALCHEMY_DATABASE_URI=os.environ["DATABASE_URL"],
        MAILOAUTH_ENCRYPTION_KEYS=os.environ["MAILOAUTH_ENCRYPTION_KEYS"],
        MAILOAUTH_FLASH_CATEGORIES={"error": "danger"},
    )
    db.init_app(app)
    migrate.init_app(app, db)
    login.init_app(app)
    mailoauth.init_app(app, db=db)

    @app.get("/login")
    def sign_in():
        login_user(Admin())
        return redirect(url_for("email", email_id=1))

    @app.get("/emails/<int:email_id>")
    @login_required
    def email(email_id: int):
        found = db.session.get(SystemEmail, email_id) or abort(404)
        choices = [("basic", "Basic Authentication")] + [
            (p.id, p.display_name) for p in registry.all()
        ]
        return render_template("email.html", email=found, choices=choices, args=request.args)

    @app.cli.command("seed")
    def seed() -> None:
        """Add the support mailbox."""
        db.session.add(SystemEmail(id=1, address="support@example.test"))
        db.session.commit()
        click.echo("seeded")

    return app
