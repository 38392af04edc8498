"""Application (app-only) access to Exchange Online: what the tenant must set up, and how to tell
which step is missing.

An application token opens a mailbox only after the tenant's Exchange administrator registered
the application's service principal and granted it the mailbox (Microsoft's "Authenticate an
IMAP, POP or SMTP connection using OAuth", client credentials). This module writes those
PowerShell commands for one mailbox, quoted safely, reads the roles an application token carries,
and maps Exchange's app-only refusals to the step that is missing.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import jwt

from .errors import MailOAuthError
from .i18n import LazyText, gettext, lazy_gettext
from .settings import ServerProtocol
from .state import MailOAuthState

#: PowerShell's single-quote characters: inside a single-quoted string each is doubled to stand
#: for itself (PowerShell also closes a string on the typographic ones)
_QUOTES = "'\u2018\u2019\u201a\u201b"
#: what the commands show where the admin has not given the service principal's object id
SERVICE_PRINCIPAL_PLACEHOLDER = "<ObjectId of the Enterprise application>"


class Step(StrEnum):
    """A step of the tenant setup, in the order it is run."""

    #: New-ServicePrincipal: Exchange learns the application
    REGISTER = "register"
    #: Add-MailboxPermission ... FullAccess: the application may open the mailbox
    FULL_ACCESS = "full_access"
    #: Add-RecipientPermission ... SendAs: the application may send as the mailbox
    SEND_AS = "send_as"
    #: Set-CASMailbox ... -SmtpClientAuthenticationDisabled $false: SMTP AUTH allowed
    SMTP_AUTH = "smtp_auth"


STEP_TITLES: dict[Step, LazyText] = {
    Step.REGISTER: lazy_gettext("Register the application's service principal in Exchange"),
    Step.FULL_ACCESS: lazy_gettext("Let the application open the mailbox"),
    Step.SEND_AS: lazy_gettext("Let the application send as the mailbox"),
    Step.SMTP_AUTH: lazy_gettext("Allow SMTP AUTH for the mailbox"),
}


@dataclass(frozen=True)
class SetupCommand:
    """One step's PowerShell command, values filled in and quoted."""

    step: Step
    number: int
    title: str
    command: str


def quote(value: str) -> str:
    """``value`` as a PowerShell single-quoted string: no variable, subexpression or escape is
    expanded in one, and a quote character inside is doubled, so nothing breaks out. Control
    characters (never part of an address or an id) are dropped."""
    kept = "".join(c for c in value if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))
    return "'" + "".join(c * 2 if c in _QUOTES else c for c in kept) + "'"


def commands(
    app_id: str, service_principal_id: str, mailbox: str, protocols: Sequence[str]
) -> list[SetupCommand]:
    """The tenant setup for ``mailbox``: register the service principal, grant it the mailbox,
    and when ``protocols`` include SMTP, Send As and SMTP AUTH."""
    sp = quote(service_principal_id or SERVICE_PRINCIPAL_PLACEHOLDER)
    box = quote(mailbox)
    lines = [
        (Step.REGISTER, f"New-ServicePrincipal -AppId {quote(app_id)} -ObjectId {sp}"),
        (
            Step.FULL_ACCESS,
            f"Add-MailboxPermission -Identity {box} -User {sp} -AccessRights FullAccess",
        ),
    ]
    if "smtp" in protocols:
        lines += [
            (
                Step.SEND_AS,
                f"Add-RecipientPermission -Identity {box} -Trustee {sp} -AccessRights SendAs "
                "-Confirm:$false",
            ),
            (
                Step.SMTP_AUTH,
                f"Set-CASMailbox -Identity {box} -SmtpClientAuthenticationDisabled $false",
            ),
        ]
    return [
        SetupCommand(step, number, str(STEP_TITLES[step]), command)
        for number, (step, command) in enumerate(lines, start=1)
    ]


def script(setup: Sequence[SetupCommand]) -> str:
    """The commands as one script to paste into an Exchange Online PowerShell session."""
    return "\n".join(["Connect-ExchangeOnline", *(c.command for c in setup)])


def token_roles(access_token: str) -> list[str]:
    """The ``roles`` claim of a JWT access token, read without verification (display and the
    consent check only: the mail server judges the token); empty when there is none."""
    try:
        roles = jwt.decode(access_token, options={"verify_signature": False}).get("roles")
    except (jwt.PyJWTError, ValueError, TypeError):
        return []
    if isinstance(roles, str):
        roles = roles.split()
    return [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []


def served_protocols(st: MailOAuthState, key: str, purpose: str) -> tuple[ServerProtocol, ...]:
    """The mail protocols an account's token serves: SMTP for ``smtp``; for ``mailbox`` its
    IMAP or POP3, and SMTP too when the host sends with the mailbox's token. None when the
    host no longer knows the mailbox."""
    if purpose == "smtp":
        return ("smtp",)
    try:
        settings = st.hooks.mailbox(key)
    except MailOAuthError:
        return ()
    return (settings.protocol, *(("smtp",) if settings.smtp_purpose == "mailbox" else ()))


#: the step index (see ``mail._run_check``) of a check's sign-in; later ones are probes
SIGN_IN_STEP = 2


def missing_step(protocol: str, failed_index: int, reply: str) -> Step | None:
    """The tenant setup step an app-only refusal points to, for the check step at
    ``failed_index`` that failed with ``reply``; ``None`` when it is not such a refusal.

    Exchange refuses a valid application token at sign-in (IMAP/POP "AUTHENTICATE failed",
    SMTP 535 5.7.3) when the service principal is unknown or lacks the mailbox; after the
    sign-in it says "User is authenticated but not connected" when the mailbox permission is
    missing; SMTP 5.7.139 means SMTP AUTH is off for the mailbox; a refused sender lacks Send As.
    """
    if protocol == "SMTP" and "5.7.139" in reply:
        return Step.SMTP_AUTH
    if failed_index == SIGN_IN_STEP:
        return Step.REGISTER
    if failed_index > SIGN_IN_STEP:
        return Step.SEND_AS if protocol == "SMTP" else Step.FULL_ACCESS
    return None


def guidance(step: Step) -> str:
    """What to do about a missing ``step``, naming it as the Token tab's panel numbers it."""
    if step == Step.REGISTER:
        return gettext(
            "Exchange Online refused the application token for this mailbox: run "
            "New-ServicePrincipal and Add-MailboxPermission ... FullAccess from the tenant setup "
            "on the Token tab (permissions take effect after up to an hour)."
        )
    if step == Step.FULL_ACCESS:
        return gettext(
            'The application is signed in but may not open this mailbox ("User is '
            'authenticated but not connected"): run Add-MailboxPermission ... FullAccess from '
            "the tenant setup on the Token tab."
        )
    if step == Step.SEND_AS:
        return gettext(
            "The application may not send as this mailbox: run Add-RecipientPermission ... "
            "SendAs from the tenant setup on the Token tab."
        )
    return gettext(
        "SMTP AUTH is disabled for this mailbox (5.7.139): run Set-CASMailbox ... "
        "-SmtpClientAuthenticationDisabled $false from the tenant setup on the Token tab, or "
        "allow SMTP AUTH for the organisation."
    )
