"""What the host tells us about a mailbox."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MailProtocol = Literal["imap", "pop3"]
#: a mail server's protocol: the mailbox's own, or SMTP
ServerProtocol = MailProtocol | Literal["smtp"]
Security = Literal["ssl", "starttls", "none"]
Purpose = Literal["mailbox", "smtp"]
PURPOSES: tuple[Purpose, ...] = ("mailbox", "smtp")


@dataclass(frozen=True)
class MailboxSettings:
    """A host's system email, as its ``mailbox_loader`` describes it.

    Only ``address`` is required; servers left out fall back to the provider's defaults
    (e.g. outlook.office365.com for Microsoft). ``host`` and ``security`` serve IMAP and POP3
    alike; ``port`` is the port of ``protocol`` only, never of the other one: a POP3
    connection of an IMAP mailbox uses ``pop3_port`` or a default POP3 port. ``imap_port`` and
    ``pop3_port`` name each protocol's port explicitly. ``smtp_address`` is the account SMTP
    signs in as (a delegate with Send As on a shared mailbox, say); it defaults to
    ``address``, which stays the sender the connection test tries. ``smtp_purpose`` names the
    OAuth2 account SMTP signs in with: ``"smtp"`` (its own, the default), ``"mailbox"`` (the
    mailbox's grant, a host's "Same as Remote Mailbox") or ``None`` (SMTP does not use OAuth2);
    Test connection tests SMTP with the account named here.
    """

    address: str
    protocol: MailProtocol = "imap"
    host: str | None = None
    port: int | None = None
    security: Security | None = None
    folder: str = "INBOX"
    imap_port: int | None = None
    pop3_port: int | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: Security | None = None
    smtp_address: str | None = None
    smtp_purpose: Purpose | None = "smtp"

    def __post_init__(self) -> None:
        if not self.address or "@" not in self.address:
            raise ValueError(
                f"MailboxSettings.address must be an email address, not {self.address!r}."
            )
        if self.protocol not in ("imap", "pop3"):
            raise ValueError("MailboxSettings.protocol must be 'imap' or 'pop3'.")
        for value in (self.security, self.smtp_security):
            if value not in (None, "ssl", "starttls", "none"):
                raise ValueError("security must be 'ssl', 'starttls' or 'none'.")
        if self.smtp_purpose not in (*PURPOSES, None):
            raise ValueError("MailboxSettings.smtp_purpose must be 'smtp', 'mailbox' or None.")

        own = self.imap_port if self.protocol == "imap" else self.pop3_port
        if self.port and own and self.port != own:
            raise ValueError(
                f"MailboxSettings.port ({self.port}) and {self.protocol}_port ({own}) disagree: "
                f"port is the {self.protocol.upper()} port; set one of them."
            )

    def port_for(self, protocol: MailProtocol) -> int | None:
        """The port the host set for ``protocol`` (imap, pop3), or None for the default.

        ``port`` counts only for the mailbox's own ``protocol``.
        """
        explicit = self.imap_port if protocol == "imap" else self.pop3_port
        return explicit or (self.port if protocol == self.protocol else None)

    @property
    def sender(self) -> str:
        """The address SMTP uses."""
        return self.smtp_address or self.address
