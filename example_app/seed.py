"""Demo data: the admin and one Microsoft 365 system email, created when missing."""

from __future__ import annotations

from .auth import seed_admin
from .extensions import db
from .models import SAME, SystemEmail


def seed() -> None:
    seed_admin()
    if db.session.execute(db.select(SystemEmail).limit(1)).first() is None:
        db.session.add(
            SystemEmail(
                address="support@example.test",
                name="Support",
                protocol="imap",
                host="outlook.office365.com",
                port=993,
                security="ssl",
                folder="INBOX",
                remote_auth="microsoft",
                smtp_host="smtp.office365.com",
                smtp_port=587,
                smtp_security="starttls",
                smtp_auth=SAME,
            )
        )
        db.session.commit()
