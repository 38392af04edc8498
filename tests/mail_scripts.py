"""Scripts for the scripted mail server that more than one test module plays: the mailbox user,
a POP3 XOAUTH2 sign-in, and a server that plays one script per connection."""

from __future__ import annotations

import base64
from typing import Any

from flask_mailoauth.sasl import xoauth2

from .scripted_server import ScriptedServer, Turn

USER = "support@example.test"

POP_CAPA = Turn(b"CAPA", [b"+OK", b"USER", b"SASL XOAUTH2", b"."])


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
