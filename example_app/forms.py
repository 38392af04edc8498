"""Flask-WTF forms: every POST of the helpdesk carries a CSRF token through them."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    EmailField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
)
from wtforms.validators import InputRequired, Length, NumberRange, Optional, Regexp

from flask_mailoauth.providers import registry

from .models import AUTH_LABELS, BASIC, NONE, SAME

ADDRESS = Regexp(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", message="Enter an email address.")
HOSTNAME = Regexp(r"^[A-Za-z0-9.-]+$", message="Enter a host name, e.g. imap.example.com.")
SECURITY = [
    SelectChoice("", "Default"),
    SelectChoice("ssl", "SSL/TLS"),
    SelectChoice("starttls", "STARTTLS"),
    SelectChoice("none", "None (plaintext)"),
]


class LoginForm(FlaskForm):
    email = EmailField("Email address", validators=[InputRequired(), Length(max=255)])
    password = PasswordField("Password", validators=[InputRequired()])


class ActionForm(FlaskForm):
    """A button that only needs CSRF protection (Fetch now, Log out)."""


class EmailForm(FlaskForm):
    tab = HiddenField()  # the tab to come back to after saving
    # Basic
    address = EmailField("Email Address", validators=[InputRequired(), Length(max=255), ADDRESS])
    name = StringField("Email Name", validators=[InputRequired(), Length(max=255)])
    # Remote Mailbox
    protocol = SelectField(
        "Protocol", choices=[SelectChoice("imap", "IMAP"), SelectChoice("pop3", "POP3")]
    )
    host = StringField("Hostname", validators=[Optional(), Length(max=255), HOSTNAME])
    port = IntegerField("Port Number", validators=[Optional(), NumberRange(1, 65535)])
    security = SelectField("Security", choices=SECURITY)
    folder = StringField("Folder", default="INBOX", validators=[Length(max=255)])
    remote_auth = SelectField("Authentication", id="remote-auth")
    remote_username = StringField("Username", validators=[Length(max=255)])
    remote_password = PasswordField("Password", validators=[Length(max=255)])
    # Outgoing (SMTP)
    smtp_host = StringField(
        "Hostname", id="smtp-host", validators=[Optional(), Length(max=255), HOSTNAME]
    )
    smtp_port = IntegerField(
        "Port Number", id="smtp-port", validators=[Optional(), NumberRange(1, 65535)]
    )
    smtp_security = SelectField("Security", id="smtp-security", choices=SECURITY)
    smtp_auth = SelectField("Authentication", id="smtp-auth")
    smtp_username = StringField("Username", id="smtp-username", validators=[Length(max=255)])
    smtp_password = PasswordField("Password", id="smtp-password", validators=[Length(max=255)])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every registered provider, plugins included, by the name the admin knows it by.
        providers = [SelectChoice(p.id, p.display_name) for p in registry.all()]
        basic = SelectChoice(BASIC, AUTH_LABELS[BASIC])
        self.remote_auth.choices = [*providers, basic]
        self.smtp_auth.choices = [
            SelectChoice(SAME, AUTH_LABELS[SAME]),
            SelectChoice(NONE, AUTH_LABELS[NONE]),
            *providers,
            basic,
        ]

    def validate(self, extra_validators: Any = None) -> bool:
        ok = super().validate(extra_validators)
        # Basic Authentication has no provider to take server defaults from.
        for auth, host, username in BASIC_NEEDS:
            if self[auth].data == BASIC:
                ok &= _require(self[host], "Basic Authentication needs the server's host name.")
                ok &= _require(self[username], "Enter the username for Basic Authentication.")
        return bool(ok)

    def first_error_tab(self) -> str | None:
        for tab, names in TAB_FIELDS.items():
            if any(self[name].errors for name in names):
                return tab
        return None


BASIC_NEEDS = (
    ("remote_auth", "host", "remote_username"),
    ("smtp_auth", "smtp_host", "smtp_username"),
)
TAB_FIELDS = {
    "basic": ("address", "name"),
    "remote": (
        "protocol",
        "host",
        "port",
        "security",
        "folder",
        "remote_auth",
        "remote_username",
        "remote_password",
    ),
    "smtp": (
        "smtp_host",
        "smtp_port",
        "smtp_security",
        "smtp_auth",
        "smtp_username",
        "smtp_password",
    ),
}


def _require(field: Any, message: str) -> bool:
    if (field.data or "").strip() or field.errors:
        return True
    field.errors.append(message)
    return False
