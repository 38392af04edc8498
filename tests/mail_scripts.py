"""Scripts for the scripted mail server that more than one test module plays: the mailbox user
and token, IMAP and POP3 XOAUTH2 sign-ins, and a server that plays one script per connection."""

from __future__ import annotations

import base64
from typing import Any

from flask_mailoauth.providers.base import MailServer
from flask_mailoauth.sasl import xoauth2

from .scripted_server import ScriptedServer, Turn

USER = "support@example.test"

POP_CAPA = Turn(b"CAPA", [b"+OK", b"USER", b"SASL XOAUTH2", b"."])
TOKEN = "tok-SECRET-1234567890"
XOAUTH2 = base64.b64encode(xoauth2(USER, TOKEN))
IMAP_GUIDANCE = (
    "The sign-in worked but the mail server refused the token: check the IMAP scopes were "
    "consented and IMAP is enabled on the mailbox."
)


IMAP_LOGIN = Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, [b"{tag} OK Logged in"])
IMAP_LOGOUT = Turn(b"{tag} LOGOUT", [b"* BYE", b"{tag} OK done"])


def at(srv: ScriptedServer, security: str = "none") -> MailServer:
    return MailServer(srv.host, srv.port, security)  # type: ignore[arg-type]


def imap_server(capabilities: bytes, *turns: Turn, **kw: Any) -> ScriptedServer:
    return ScriptedServer(
        [b"* OK IMAP4rev1 ready"],
        [
            Turn(
                b"{tag} CAPABILITY", [b"* CAPABILITY IMAP4rev1 " + capabilities, b"{tag} OK done"]
            ),
            *turns,
        ],
        **kw,
    )


class ScriptedSessions(ScriptedServer):
    """Plays one script per connection, in order: a sign-in retried on a new connection.

    :attr:`sessions` holds the lines received on each connection that was made.
    """

    def __init__(self, greeting: list[bytes], *scripts: list[Turn], **kw: Any) -> None:
        super().__init__(greeting, scripts[0], **kw)
        self.scripts = scripts
        self.sessions: list[list[bytes]] = []

    def _serve(self) -> None:
        for script in self.scripts:
            self.turns, self.received = list(script), []
            self.sessions.append(self.received)
            super()._serve()
            if self.failure is not None:
                self.sessions.pop()
                return


def b64_xoauth2(token: str) -> bytes:
    return base64.b64encode(xoauth2(USER, token))


def pop3_login_script(token: str, reply: bytes) -> list[Turn]:
    return [POP_CAPA, Turn(b"AUTH XOAUTH2", [b"+ "]), Turn(b64_xoauth2(token), [reply])]
