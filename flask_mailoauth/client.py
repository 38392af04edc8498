"""The OAuth client: requests-oauthlib's ``OAuth2Session``, one per worker thread and IdP origin.

A token request on a new connection pays TCP and TLS setup each time; with the IdP 50 ms away
that halves refresh throughput. Each worker thread keeps one :class:`PooledSession` per outbound
policy and ``scheme://host:port``, whose connections stay alive between calls.

Every pooled session is under the outbound rules (``outbound.mount``: URL rules, no
redirect for the token POST, vetted addresses, size cap, deadline; certificates checked against
``MAILOAUTH_CA_BUNDLE``). ``trust_env`` is off, so ``requests`` never scans the environment
per request: the environment's proxies are looked at once per process, only to warn that IdP
calls do not use them.

A session serves one call at a time (:meth:`PooledSession.lend`): the call brings its client
id, redirect URI, scope and the provider's compliance hooks, and the loan takes them back, so no
state of one account's call is left for the next (the shared session mistake of Flask-Dance).
requests-oauthlib's auto-refresh is never used: it fires only inside HTTP requests, and mail
logins are not HTTP.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit
from urllib.request import getproxies

import requests
from oauthlib.oauth2 import BackendApplicationClient, Client, WebApplicationClient
from oauthlib.oauth2.rfc6749.parameters import prepare_token_request
from requests_oauthlib import OAuth2Session

from .outbound import OutboundPolicy, mount
from .providers.base import NO_HOOKS, ComplianceHooks, ResponseHook

logger = logging.getLogger("flask_mailoauth")

#: IdP origins a thread keeps sessions for; the least recently used one is closed beyond that
MAX_ORIGINS = 16
#: requests-oauthlib's logger: its debug lines quote request bodies and tokens
_LIBRARY_LOGGER = "requests_oauthlib.oauth2_session"


#: RFC 7523's grant type: a JWT (signed by the client) stands for the grant
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class AssertionClient(Client):
    """RFC 7523 §2.1's JWT-bearer grant, with an assertion the provider signed (oauthlib's
    ``ServiceApplicationClient`` insists on signing its own claims)."""

    grant_type = JWT_BEARER

    def prepare_request_body(
        self, body: str = "", *, assertion: str, include_client_id: bool = False, **_: object
    ) -> str:
        """The form body: ``grant_type`` and ``assertion`` (and ``client_id`` if asked);
        what else requests-oauthlib passes (``code``, ``redirect_uri``: ``None``) is not sent."""
        body_text: str = prepare_token_request(
            self.grant_type,
            body=body,
            assertion=assertion,
            include_client_id=include_client_id,
            client_id=self.client_id,
        )
        return body_text


class PooledSession(OAuth2Session):
    """An ``OAuth2Session`` under an outbound policy, lent to one call at a time."""

    _client: WebApplicationClient | BackendApplicationClient | AssertionClient

    def __init__(self, policy: OutboundPolicy) -> None:
        super().__init__()
        mount(self, policy)

    @contextmanager
    def lend(
        self,
        client_id: str,
        *,
        check: ResponseHook,
        hooks: ComplianceHooks = NO_HOOKS,
    ) -> Iterator[PooledSession]:
        """The session for one token call of ``client_id``: the provider's token response
        ``hooks`` run in order, then ``check`` (the extension's own reading of the answer).
        The call sets its scope and redirect URI; the loan takes them back with the rest."""
        # A fresh oauthlib client: the previous call's tokens stay with the previous client.
        self._client = WebApplicationClient(client_id)
        self.token = {}
        self.compliance_hook["access_token_response"] = {
            _responses(*hooks.access_token_response, check)
        }
        self.compliance_hook["refresh_token_response"] = {
            _responses(*hooks.refresh_token_response, check)
        }
        try:
            yield self
        finally:
            self._client = WebApplicationClient("")
            self.token = {}
            self.scope = self.redirect_uri = None
            self.compliance_hook["access_token_response"].clear()
            self.compliance_hook["refresh_token_response"].clear()
            self.compliance_hook["protected_request"].clear()

    def use_backend_client(self) -> None:
        """This loan's call is a client_credentials grant: oauthlib's backend client builds
        its body (the loan puts the web client back)."""
        self._client = BackendApplicationClient(self._client.client_id)

    def use_assertion_client(self) -> None:
        """This loan's call is a JWT-bearer grant (``AssertionClient``)."""
        self._client = AssertionClient(self._client.client_id)

    def __del__(self) -> None:
        # A worker thread's sessions go when the thread ends: close their sockets then, not
        # whenever the interpreter gets to it.
        with suppress(Exception):
            self.close()


def _responses(*hooks: ResponseHook) -> ResponseHook:
    """One response hook running ``hooks`` in order (requests-oauthlib keeps hooks in a set)."""

    def run(response: requests.Response) -> requests.Response:
        for hook in hooks:
            response = hook(response)
        return response

    return run


class _Pool(threading.local):
    """This thread's sessions, by policy and origin, least recently used first."""

    def __init__(self) -> None:
        self.sessions: OrderedDict[tuple[OutboundPolicy, str], PooledSession] = OrderedDict()


_pool = _Pool()


def _forget_after_fork() -> None:
    """In a forked child (a pre-forking server's worker), the parent's connections are not
    ours to use: start with no sessions. Dropping them closes only the child's copies."""
    _pool.sessions = OrderedDict()


os.register_at_fork(after_in_child=_forget_after_fork)


def session_for(policy: OutboundPolicy, url: str) -> PooledSession:
    """This thread's session for ``url``'s origin under ``policy``, made on first use."""
    parts = urlsplit(url)
    key = (policy, f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}")
    sessions = _pool.sessions
    found = sessions.get(key)
    if found is not None:
        sessions.move_to_end(key)
        return found
    _environment_checked()
    while len(sessions) >= MAX_ORIGINS:
        _, oldest = sessions.popitem(last=False)
        oldest.close()
    found = sessions[key] = PooledSession(policy)
    return found


def close_sessions() -> None:
    """Close this thread's sessions and their connections (tests; a worker that shuts down)."""
    sessions = _pool.sessions
    while sessions:
        sessions.popitem()[1].close()


@functools.cache
def _environment_checked() -> None:
    """Once per process: say that IdP calls ignore the environment's proxies, and keep
    requests-oauthlib's debug lines (request bodies, tokens) out of the logs."""
    proxies = {scheme for scheme in getproxies() if scheme in ("http", "https", "all")}
    if proxies:
        logger.warning(
            "Proxy settings in the environment (%s) are not used for identity provider calls: "
            "the address policy must hold for the address connected.",
            ", ".join(sorted(proxies)),
        )
    logging.getLogger(_LIBRARY_LOGGER).addFilter(_quiet_debug)


def _quiet_debug(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG
