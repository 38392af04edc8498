"""The helpdesk's own tables: its admins and its system emails."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from flask_mailoauth.providers import registry

from .extensions import db

#: Authentication values besides the provider ids (``microsoft``, ``google``, ...)
BASIC = "basic"
SAME = "same"
NONE = "none"
AUTH_LABELS = {
    BASIC: "Basic Authentication (Legacy)",
    SAME: "Same as Remote Mailbox",
    NONE: "None",
}


def auth_label(value: str) -> str:
    """What the admin sees for an Authentication value."""
    if value in AUTH_LABELS:
        return AUTH_LABELS[value]
    return next((p.display_name for p in registry.all() if p.id == value), value)


def is_oauth(value: str) -> bool:
    return value not in AUTH_LABELS


class Admin(db.Model):
    __tablename__ = "helpdesk_admin"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class SystemEmail(db.Model):
    """A system email: a mailbox the helpdesk fetches from and the SMTP account it sends with."""

    __tablename__ = "helpdesk_email"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    # Remote Mailbox
    protocol: Mapped[str] = mapped_column(String(8), default="imap")
    host: Mapped[str] = mapped_column(String(255), default="")
    port: Mapped[int | None]
    security: Mapped[str] = mapped_column(String(16), default="")
    folder: Mapped[str] = mapped_column(String(255), default="INBOX")
    remote_auth: Mapped[str] = mapped_column(String(64), default=BASIC)
    remote_username: Mapped[str] = mapped_column(String(255), default="")
    # Demo only: a production helpdesk encrypts legacy passwords at rest.
    remote_password: Mapped[str] = mapped_column(String(255), default="")
    # Outgoing (SMTP)
    smtp_host: Mapped[str] = mapped_column(String(255), default="")
    smtp_port: Mapped[int | None]
    smtp_security: Mapped[str] = mapped_column(String(16), default="")
    smtp_auth: Mapped[str] = mapped_column(String(64), default=SAME)
    smtp_username: Mapped[str] = mapped_column(String(255), default="")
    smtp_password: Mapped[str] = mapped_column(String(255), default="")

    @property
    def key(self) -> str:
        """The stable key flask-mailoauth stores this mailbox's OAuth2 accounts under."""
        return str(self.id)

    @property
    def smtp_oauth_purpose(self) -> str | None:
        """The extension account SMTP sends with (``connect_smtp(key, purpose=...)``), or None.

        "Same as Remote Mailbox" reuses the mailbox's grant: purpose "mailbox". Microsoft's and
        Google's default scopes cover SMTP too, so one consent serves both and no separate
        "smtp" account is authorized.
        """
        if self.smtp_auth == SAME:
            return "mailbox" if is_oauth(self.remote_auth) else None
        return "smtp" if is_oauth(self.smtp_auth) else None
