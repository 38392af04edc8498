"""The callbacks and signal handler connecting flask-mailoauth to this helpdesk (to copy)."""

from __future__ import annotations

from flask import url_for

from flask_mailoauth import MailboxSettings
from flask_mailoauth.signals import authorized

from .auth import current_admin
from .extensions import db, mailoauth
from .models import SystemEmail


@mailoauth.mailbox_loader
def load_mailbox(key: str) -> MailboxSettings | None:
    """The system email stored under ``key`` (its id), as the extension needs it."""
    email = db.session.get(SystemEmail, int(key)) if key.isdigit() else None
    if email is None:
        return None
    # Blank fields become None, not "": None lets the provider's defaults apply
    # (outlook.office365.com:993 SSL for Microsoft, imap.gmail.com for Google, ...).
    return MailboxSettings(
        address=email.address,
        protocol=email.protocol,  # type: ignore[arg-type]
        host=email.host or None,
        port=email.port or None,
        security=email.security or None,  # type: ignore[arg-type]
        folder=email.folder or "INBOX",
        smtp_host=email.smtp_host or None,
        smtp_port=email.smtp_port or None,
        smtp_security=email.smtp_security or None,  # type: ignore[arg-type]
        # "Same as Remote Mailbox" sends with the mailbox's grant: Test connection tries SMTP too.
        smtp_purpose=email.smtp_oauth_purpose,  # type: ignore[arg-type]
    )


@authorized.connect_via(mailoauth)
def use_oauth_after_consent(
    sender: object, *, key: str, purpose: str, provider: str, **_: object
) -> None:
    """A successful authorization leaves the email on OAuth2, even when the admin pressed Config
    without Save Changes and the saved Authentication still says Basic (legacy password)."""
    email = db.session.get(SystemEmail, int(key)) if key.isdigit() else None
    if email is None:
        return
    prefix = "smtp_" if purpose == "smtp" else "remote_"
    if getattr(email, f"{prefix}auth") != provider:
        setattr(email, f"{prefix}auth", provider)
        # The legacy password is no longer used: forget it, as Save Changes would.
        setattr(email, f"{prefix}username", "")
        setattr(email, f"{prefix}password", "")
        db.session.commit()


@mailoauth.access_check
def may_manage_mail_oauth() -> bool:
    """Only a logged-in helpdesk admin may open the Config modal (the extension answers 403)."""
    return current_admin() is not None


@mailoauth.account_page
def email_page(key: str, purpose: str) -> str:
    """Where the admin lands after consenting at the IdP: the tab the Config button was on.

    Without this hook the extension returns to the referring page, which after a trip
    through the IdP's login pages is not always the email's page.
    """
    if not key.isdigit():
        return url_for("emails")
    return url_for("email_detail", id=int(key), tab="smtp" if purpose == "smtp" else "remote")
