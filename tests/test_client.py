"""The OAuth client (issue 14, point 1): requests-oauthlib's ``OAuth2Session``, one per worker
thread and IdP origin, keeping its connections alive; compliance hooks; nothing of one call
left for the next. Against a real https token endpoint on 127.0.0.1 (the test CA)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

import pytest
import requests

from flask_mailoauth import client
from flask_mailoauth.errors import TokenRequestFailed
from flask_mailoauth.models import utcnow
from flask_mailoauth.oauth import MAX_EXPIRES_IN, request_token
from flask_mailoauth.outbound import OutboundHTTP, OutboundPolicy
from flask_mailoauth.providers import ComplianceHooks, registry
from flask_mailoauth.providers.generic import GenericProvider
from peers.tls import TLSHTTPServer, test_ca

from .stored import GENERIC

POLICY = OutboundPolicy(allow_insecure_http=True, ca_bundle=str(test_ca().ca_file))
SECRET = "client-secret-in-the-body"
SCOPES = ["openid", "email", "offline_access"]


@dataclass
class TokenServer:
    """What reached the token endpoint: one entry per TCP connection, one per request."""

    url: str = ""
    connections: int = 0
    bodies: list[dict[str, list[str]]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    answer: dict = field(
        default_factory=lambda: {
            "access_token": "at",
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "openid email",  # offline_access left out, as Microsoft does
        }
    )


@pytest.fixture
def endpoint() -> Iterator[TokenServer]:
    seen = TokenServer()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            seen.bodies.append(parse_qs(body))
            self.do_GET()

        def do_GET(self):
            seen.paths.append(self.path)
            seen.headers.append(dict(self.headers))
            data = json.dumps(seen.answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Counting(TLSHTTPServer):
        def finish_request(self, request, client_address):
            seen.connections += 1
            super().finish_request(request, client_address)

    httpd = Counting(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    seen.url = f"https://127.0.0.1:{httpd.server_address[1]}/token"
    try:
        yield seen
    finally:
        client.close_sessions()
        httpd.shutdown()
        httpd.server_close()


def refresh(url: str, provider=None, **extra: str):
    provider = provider or registry.get("generic")
    return request_token(
        provider,
        {**GENERIC, "token_endpoint": url},
        SECRET,
        {"grant_type": "refresh_token", "refresh_token": "rt-1", **extra},
        timeout=5,
        requested_scopes=SCOPES,
        policy=POLICY,
    )


def test_refreshes_from_one_thread_share_one_kept_alive_connection(endpoint):
    answers = [refresh(endpoint.url) for _ in range(5)]
    assert [a.access_token for a in answers] == ["at"] * 5
    assert len(endpoint.bodies) == 5
    assert endpoint.connections == 1


def test_each_thread_has_its_own_session(endpoint):
    refresh(endpoint.url)

    def other() -> None:
        try:
            refresh(endpoint.url)
            refresh(endpoint.url)
        finally:
            client.close_sessions()

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    refresh(endpoint.url)
    assert len(endpoint.bodies) == 4
    assert endpoint.connections == 2  # this thread's, kept; the worker's


def test_sessions_are_per_origin_and_policy():
    a = client.session_for(POLICY, "https://login.example.test/a/token")
    try:
        assert client.session_for(POLICY, "HTTPS://LOGIN.example.test/b/token") is a
        assert client.session_for(POLICY, "https://login.example.test:8443/token") is not a
        assert client.session_for(OutboundPolicy(), "https://login.example.test/token") is not a
    finally:
        client.close_sessions()


def test_a_forked_child_starts_without_the_parents_sessions():
    parent = client.session_for(POLICY, "https://login.example.test/token")
    try:
        client._forget_after_fork()  # what os.fork runs in the child
        assert client.session_for(POLICY, "https://login.example.test/token") is not parent
    finally:
        parent.close()
        client.close_sessions()


def test_a_thread_keeps_at_most_a_few_origins():
    first = client.session_for(POLICY, "https://idp0.example.test/token")
    try:
        for n in range(1, client.MAX_ORIGINS + 1):
            client.session_for(POLICY, f"https://idp{n}.example.test/token")
        assert len(client._pool.sessions) == client.MAX_ORIGINS
        assert client.session_for(POLICY, "https://idp0.example.test/token") is not first
    finally:
        client.close_sessions()


def test_the_refresh_sends_the_secret_in_the_body_and_never_basic_auth(endpoint):
    refresh(endpoint.url)
    (body,) = endpoint.bodies
    assert body == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["rt-1"],
        "client_id": ["app"],
        "client_secret": [SECRET],
    }
    assert "Authorization" not in endpoint.headers[0]


def test_the_code_exchange_sends_the_pkce_verifier_and_redirect_uri(endpoint):
    request_token(
        registry.get("generic"),
        {**GENERIC, "token_endpoint": endpoint.url},
        SECRET,
        {
            "grant_type": "authorization_code",
            "code": "the-code",
            "redirect_uri": "https://helpdesk.example.test/mailoauth/callback",
            "code_verifier": "v" * 50,
        },
        timeout=5,
        requested_scopes=SCOPES,
        policy=POLICY,
    )
    (body,) = endpoint.bodies
    assert body == {
        "grant_type": ["authorization_code"],
        "code": ["the-code"],
        "redirect_uri": ["https://helpdesk.example.test/mailoauth/callback"],
        "code_verifier": ["v" * 50],
        "client_id": ["app"],
        "client_secret": [SECRET],
    }
    assert "Authorization" not in endpoint.headers[0]


def test_a_changed_scope_is_an_answer_not_a_failure(endpoint):
    """oauthlib raises a Warning when the granted scope differs; its token is used."""
    answer = refresh(endpoint.url, scope="openid email offline_access")
    assert answer.scope == "openid email"
    assert endpoint.bodies[0]["scope"] == ["openid email offline_access"]


def test_a_loan_leaves_nothing_of_its_call_behind(endpoint):
    refresh(endpoint.url, scope="openid email offline_access")
    session = client.session_for(POLICY, endpoint.url)
    assert session.token == {}
    assert session.client_id == ""  # no client: the next loan brings its own
    assert session.scope is None
    assert all(not hooks for hooks in session.compliance_hook.values())


def test_an_http_token_endpoint_is_refused_before_sending(endpoint):
    with pytest.raises(TokenRequestFailed) as refused:
        refresh(endpoint.url.replace("https://", "http://"))
    assert (refused.value.failure.kind, refused.value.failure.code) == (
        "configuration",
        "insecure_transport",
    )
    assert endpoint.bodies == []


class MillisecondProvider(GenericProvider):
    """An IdP that sends ``expires_in`` in milliseconds, fixed by a compliance hook."""

    id = "milliseconds"

    def compliance_hooks(self, config):
        return ComplianceHooks(refresh_token_response=(_seconds, _mark))


def _seconds(response: requests.Response) -> requests.Response:
    data = response.json()
    data["expires_in"] = data["expires_in"] // 1000
    response._content = json.dumps(data).encode()
    return response


def _mark(response: requests.Response) -> requests.Response:
    """Runs after ``_seconds``: sees its result."""
    assert response.json()["expires_in"] == 3600
    return response


def test_compliance_hooks_fix_the_answer_in_order_before_it_is_checked(endpoint):
    endpoint.answer["expires_in"] = 3_600_000
    unfixed = refresh(endpoint.url)  # read as 1000 hours, cut to a day
    assert (unfixed.expires_at - utcnow()).total_seconds() == pytest.approx(MAX_EXPIRES_IN, abs=5)
    fixed = refresh(endpoint.url, provider=MillisecondProvider())
    assert (fixed.expires_at - utcnow()).total_seconds() == pytest.approx(3600, abs=5)


def test_the_environment_is_not_scanned_per_request(endpoint, monkeypatch):
    def scanned(*args, **kwargs):
        raise AssertionError("the environment was scanned for this request")

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", scanned)
    monkeypatch.setattr(requests.utils, "get_environ_proxies", scanned)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    assert refresh(endpoint.url).access_token == "at"


def test_environment_proxies_are_named_once_as_unused(monkeypatch, caplog):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    client._environment_checked.cache_clear()
    try:
        client.session_for(POLICY, "https://a.example.test/token")
        client.session_for(POLICY, "https://b.example.test/token")
    finally:
        client.close_sessions()
    warned = [r for r in caplog.records if "not used for identity provider calls" in r.message]
    assert len(warned) == 1
    assert "proxy.example.test" not in warned[0].message


def test_requests_oauthlib_debug_lines_never_show_the_secret(endpoint, caplog):
    caplog.set_level(logging.DEBUG)
    refresh(endpoint.url)
    assert SECRET not in caplog.text
    assert "rt-1" not in caplog.text


def _userinfo_fix(url: str, headers: dict[str, str], body):
    """A protected_request hook: this IdP wants the token in a header of its own."""
    headers = {**headers, "X-Access-Token": headers["Authorization"].removeprefix("Bearer ")}
    return f"{url}?schema=openid", headers, body


def test_protected_request_hooks_change_only_calls_with_the_access_token(endpoint):
    userinfo = endpoint.url.replace("/token", "/userinfo")
    with OutboundHTTP.open(POLICY, 5, protected=(_userinfo_fix,)) as http:
        http.get(userinfo, headers={"Authorization": "Bearer at-1"})
        http.get(userinfo, headers={"Accept": "application/json"})
    assert endpoint.paths == ["/userinfo?schema=openid", "/userinfo"]
    assert endpoint.headers[0]["X-Access-Token"] == "at-1"
    assert "X-Access-Token" not in endpoint.headers[1]
