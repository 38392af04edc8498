"""flask-mailoauth: OAuth2 (XOAUTH2/OAUTHBEARER) for a Flask helpdesk's IMAP, POP3 and SMTP."""

from .extension import MailOAuth
from .settings import MailboxSettings

__version__ = "0.1.0.dev0"
__all__ = ["MailOAuth", "MailboxSettings"]
