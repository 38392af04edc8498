"""The message a notification carries (:mod:`.notify` sends it): what broke, since when, the
provider's code, what to do, and the link to the account's page."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .i18n import gettext
from .vocabulary import Condition, NoticeKind


@dataclass(frozen=True)
class Notification:
    """One message about one condition of one account, in the admin's language (the host's
    Flask-Babel default locale): ``title``, ``detail`` and ``action`` as it was made, the
    labels of :attr:`subject` and :meth:`text` when they are called (the callback runs in an
    app context)."""

    kind: NoticeKind
    condition: Condition
    key: str
    purpose: str
    #: the account's name, address and provider id
    account: str
    address: str
    provider: str
    #: when the condition was found
    since: datetime
    #: when this message was claimed
    at: datetime
    #: the provider's error code (``AADSTS700082``, ``invalid_grant``), when it gave one
    code: str | None
    #: what broke, in words
    title: str
    #: the warning as the Token tab shows it (empty in a recovery message)
    detail: str
    #: what to do (empty in a recovery message)
    action: str
    #: the host's page of the account (``@mailoauth.account_page``), if it has one
    url: str | None
    #: reminders sent before this one
    reminders: int = 0

    @property
    def subject(self) -> str:
        """A one-line subject: which account, what, and whether it is resolved."""
        words = {"account": self.account, "title": self.title}
        if self.kind == NoticeKind.RECOVERED:
            return gettext("Resolved: %(title)s (%(account)s)", **words)
        if self.kind == NoticeKind.REMINDER:
            return gettext("Reminder: %(title)s (%(account)s)", **words)
        return gettext("%(title)s (%(account)s)", **words)

    def text(self) -> str:
        """The plain-text body: what broke, since when, the provider's code, what to do, the
        link."""
        since = self.since.strftime("%Y-%m-%d %H:%M")
        lines = [f"{self.subject}", "", gettext("Mailbox: %(address)s", address=self.address)]
        lines.append(gettext("Since: %(time)s UTC", time=since))
        if self.kind == NoticeKind.RECOVERED:
            lines.append(gettext("Resolved: %(time)s UTC", time=self.at.strftime("%Y-%m-%d %H:%M")))
        if self.code:
            lines.append(gettext("Provider's code: %(code)s", code=self.code))
        if self.detail:
            lines.append(gettext("What happened: %(detail)s", detail=self.detail))
        if self.action:
            lines.append(gettext("What to do: %(action)s", action=self.action))
        if self.url:
            lines.append(gettext("Account: %(url)s", url=self.url))
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: the webhook's body."""
        return {
            "kind": self.kind.value,
            "condition": self.condition.value,
            "key": self.key,
            "purpose": self.purpose,
            "account": self.account,
            "address": self.address,
            "provider": self.provider,
            "since": self.since.isoformat(),
            "at": self.at.isoformat(),
            "code": self.code,
            "subject": self.subject,
            "title": self.title,
            "detail": self.detail,
            "action": self.action,
            "url": self.url,
            "reminders": self.reminders,
        }


#: the host's ``@mailoauth.notifier`` callback
Notifier = Callable[[Notification], object]
