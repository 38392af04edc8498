"""The outbound rules, at the transport: redirects, address policy, size cap, deadline, and
malformed token answers. Transport behaviour is tested against a real HTTP server on 127.0.0.1;
fake DNS answers are never connected to (a socket guard fails the test first)."""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler

import jwt
import pytest
import requests
import responses
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.exceptions import NameResolutionError

from flask_mailoauth.errors import (
    AddressRefused,
    AuthorizationFailed,
    DeadlineExceeded,
    MailOAuthError,
    RedirectRefused,
    ResponseTooLarge,
    TokenRequestFailed,
)
from flask_mailoauth.flow import _signing_key
from flask_mailoauth.models import utcnow
from flask_mailoauth.oauth import (
    MAX_EXPIRES_IN,
    MAX_RETRY_AFTER,
    request_token,
)
from flask_mailoauth.outbound import (
    OutboundHTTP,
    OutboundPolicy,
    _VettedConnection,
    call_timeout,
    session,
)
from flask_mailoauth.providers import registry
from peers.tls import TLSHTTPServer, test_ca

from .flow_steps import banners, callback, credentials, start
from .oauth_fakes import TOKEN_URL, FakeIdP
from .stored import GENERIC, credential, store_account, token

LOOPBACK = OutboundPolicy(allow_insecure_http=True, ca_bundle=str(test_ca().ca_file))
SECRET = "client-secret-xyz"


# -- a real loopback server that records what reached it -------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    body: bytes


Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Server:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.seen.append(Seen(self.command, self.path, body))
            route = state.routes.get(self.path.split("?")[0])
            if route is None:
                send(self, 404, b"{}")
            else:
                route(self)

        do_GET = do_POST = _handle

    httpd = _QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"https://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietServer(TLSHTTPServer):
    def handle_error(self, request, client_address):
        """A client that hung up on a trickle or a redirect is expected here."""


def send(handler, status, body=b"", headers=None, content_type="application/json"):
    """An answer with exactly these headers: no ``Date`` unless the test gives one."""
    handler.send_response_only(status)
    handler.send_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def answer(status=200, body=b"{}", headers=None, content_type="application/json") -> Route:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda h: send(h, status, data, headers, content_type)


def redirect(location, status=302) -> Route:
    return lambda h: send(h, status, b"", {"Location": location})


# -- fake DNS, and a guard that no socket connects anywhere but loopback ---------------------


@pytest.fixture
def net(monkeypatch):
    """``net.dns[name] = [addresses]`` answers getaddrinfo; ``net.connects`` lists every connect
    attempt. Connecting to anything but loopback fails with ECONNREFUSED *before* any packet
    leaves: the test sees the attempt, the network never does."""

    @dataclass
    class Net:
        dns: dict[str, list[str]] = field(default_factory=dict)
        lookups: list[str] = field(default_factory=list)
        connects: list[str] = field(default_factory=list)

    fake = Net()
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, port, *args, **kwargs):
        fake.lookups.append(host)
        if host in fake.dns:
            return [_info(a, port) for a in fake.dns[host]]
        return real_getaddrinfo(host, port, *args, **kwargs)

    def connect(sock, address):
        fake.connects.append(address[0])
        if address[0] not in ("127.0.0.1", "::1"):
            raise ConnectionRefusedError("the socket guard stopped a non-loopback connect")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", _forbidden)
    return fake


def _forbidden(*args, **kwargs):
    raise AssertionError("socket.create_connection bypasses the vetted connect")


def _info(address: str, port):
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, int(port or 443), 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 443)))


# -- redirects -----------------------------------------------------------------------------------


def generic(token_endpoint):
    return {**GENERIC, "token_endpoint": token_endpoint}


def grant(**extra):
    return {"grant_type": "authorization_code", "code": "c", "code_verifier": "v" * 50, **extra}


def ask(url, policy=LOOPBACK, deadline=None, timeout=5):
    return request_token(
        registry.get("generic"),
        generic(url),
        SECRET,
        grant(),
        timeout=timeout,
        requested_scopes=["openid"],
        deadline=deadline,
        policy=policy,
    )


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_token_endpoint_never_follows_a_redirect(server, net, status):
    server.routes["/token"] = redirect(f"{server.url}/stolen", status)
    server.routes["/stolen"] = answer(body={"access_token": "x"})
    with pytest.raises(TokenRequestFailed) as excinfo:
        ask(f"{server.url}/token")
    failure = excinfo.value.failure
    assert (failure.kind, failure.code) == ("configuration", "token_endpoint_redirect")
    assert f"{server.url}/token" in failure.description
    assert server.paths() == ["/token"]  # the redirect target got nothing
    assert SECRET not in str(excinfo.value)


def test_a_post_on_any_outbound_session_never_follows_a_redirect(server, net):
    server.routes["/token"] = redirect(f"{server.url}/stolen", 307)
    with session(LOOPBACK) as http, pytest.raises(RedirectRefused):
        http.post(f"{server.url}/token", data={"client_secret": SECRET})
    assert server.paths() == ["/token"]


def test_gets_follow_a_few_redirects(server, net):
    server.routes["/a"] = redirect("/b")
    server.routes["/b"] = redirect(f"{server.url}/c", 307)
    server.routes["/c"] = answer(body={"keys": []})
    with OutboundHTTP.open(LOOPBACK, 5) as http:
        assert http.get(f"{server.url}/a").json() == {"keys": []}
    assert server.paths() == ["/a", "/b", "/c"]


def test_gets_follow_at_most_three_redirects(server, net):
    for hop in range(5):
        server.routes[f"/{hop}"] = redirect(f"/{hop + 1}")
    with OutboundHTTP.open(LOOPBACK, 5) as http, pytest.raises(RedirectRefused, match="more than"):
        http.get(f"{server.url}/0")
    assert server.paths() == ["/0", "/1", "/2", "/3"]


def test_a_jwks_redirect_to_plain_http_elsewhere_is_refused(server, net):
    server.routes["/jwks"] = redirect("http://keys.example.test/jwks")
    with pytest.raises(AuthorizationFailed) as excinfo:
        _signing_key(f"{server.url}/jwks", {"kid": "k1"}, 5, policy=LOOPBACK)
    assert excinfo.value.code == "jwks_unavailable"
    assert "must use https" in str(excinfo.value)
    assert "keys.example.test" not in net.lookups
    assert net.connects == ["127.0.0.1"]


def test_a_redirect_to_a_private_address_is_refused_before_connecting(server, net):
    net.dns["internal.example.test"] = ["10.0.0.1"]
    server.routes["/userinfo"] = redirect("https://internal.example.test/admin")
    with OutboundHTTP.open(LOOPBACK, 5) as http, pytest.raises(AddressRefused) as excinfo:
        http.get(f"{server.url}/userinfo")
    assert "MAILOAUTH_ALLOWED_PRIVATE_HOSTS" in str(excinfo.value)
    assert net.connects == ["127.0.0.1"]  # refused before any connect to 10.0.0.1


# -- the address policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "10.0.0.1",
        "192.168.1.10",
        "100.64.0.1",
        "fe80::1",
        "fc00::1",
        "224.0.0.1",
        "0.0.0.0",  # noqa: S104 - an address refused, never bound
        "::ffff:10.0.0.1",
        "fec0::1",  # site-local
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a00:1",  # local-use NAT64 of 10.0.0.1
    ],
)
def test_non_global_addresses_are_refused_before_connecting(net, address):
    net.dns["idp.example.test"] = [address]
    with OutboundHTTP.open(LOOPBACK, 5) as http, pytest.raises(AddressRefused) as excinfo:
        http.get("https://idp.example.test/.well-known/openid-configuration")
    message = str(excinfo.value)
    assert "add idp.example.test" in message
    assert "MAILOAUTH_ALLOWED_PRIVATE_HOSTS" in message
    assert address not in message
    assert net.connects == []


@pytest.mark.parametrize("address", ["2002:808:808::1", "64:ff9b::808:808", "2606:4700::1"])
def test_ipv6_addresses_embedding_a_public_ipv4_are_permitted(address):
    assert OutboundPolicy().permits("idp.example.test", ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["2002:7f00:1::", "64:ff9b::7f00:1"])
def test_loopback_embedded_in_ipv6_is_not_loopback(address):
    assert not LOOPBACK.permits("idp.example.test", ipaddress.ip_address(address))


def test_a_dns_label_over_63_characters_is_a_typed_failure(net):
    url = f"https://{'a' * 64}.example.test/token"
    with pytest.raises(TokenRequestFailed) as excinfo:
        ask(url)
    assert excinfo.value.failure.kind == "configuration"
    assert "not a valid DNS name" in excinfo.value.failure.description
    assert net.connects == []


def test_a_name_idna_cannot_encode_is_a_name_resolution_error(net):
    connection = _VettedConnection(f"{'a' * 64}.example.test", 443, policy=LOOPBACK)
    with pytest.raises(NameResolutionError):
        connection._new_conn()
    assert net.connects == []


def test_loopback_is_refused_without_insecure_http(server, net):
    url = server.url.replace("http://", "https://")
    with OutboundHTTP.open(OutboundPolicy(), 5) as http, pytest.raises(AddressRefused) as excinfo:
        http.get(f"{url}/jwks")
    assert "MAILOAUTH_ALLOW_INSECURE_HTTP" in str(excinfo.value)
    assert net.connects == []
    assert server.seen == []


@pytest.mark.parametrize(
    "allowed", ["corp-idp.example.test", "CORP-IDP.example.test.", "10.0.0.0/8"]
)
def test_an_allowed_private_host_is_connected(net, allowed):
    net.dns["corp-idp.example.test"] = ["10.0.0.7"]
    policy = OutboundPolicy.from_config({"MAILOAUTH_ALLOWED_PRIVATE_HOSTS": [allowed]})
    with OutboundHTTP.open(policy, 5) as http, pytest.raises(requests.ConnectionError) as excinfo:
        http.get("https://corp-idp.example.test/token")
    assert not isinstance(excinfo.value, AddressRefused)
    assert net.connects == ["10.0.0.7"]  # allowed; the guard stopped the packet


def test_the_allowed_hosts_setting_accepts_a_string():
    policy = OutboundPolicy.from_config(
        {"MAILOAUTH_ALLOWED_PRIVATE_HOSTS": "sso.corp.example, 10.20.0.0/16 fd00::/8"}
    )
    assert policy.allowed_private_hosts == {"sso.corp.example"}
    assert [str(n) for n in policy.allowed_private_networks] == ["10.20.0.0/16", "fd00::/8"]
    assert policy.max_response_bytes == 1024 * 1024


def test_dns_rebinding_connects_only_to_the_vetted_address(net):
    answers = iter([["93.184.216.34", "127.0.0.1"], ["127.0.0.1"], ["127.0.0.1"]])
    net.dns = _Rebinding("rebind.example.test", answers)  # type: ignore[assignment]
    with OutboundHTTP.open(OutboundPolicy(), 5) as http, pytest.raises(requests.ConnectionError):
        http.get("https://rebind.example.test/jwks")
    assert net.lookups.count("rebind.example.test") == 1
    assert net.connects == ["93.184.216.34"]


class _Rebinding(dict):
    """A DNS that answers ``name`` differently each time it is asked."""

    def __init__(self, name, answers):
        super().__init__()
        self.name, self.answers = name, answers

    def __contains__(self, host):
        return host == self.name

    def __getitem__(self, host):
        return next(self.answers)


# -- size cap and total deadline ------------------------------------------------------------------


def test_a_body_over_the_cap_is_refused(server, net):
    big = b"[" + b"1," * 700_000 + b"1]"
    server.routes["/big"] = answer(body=big)
    server.routes["/chunked"] = _chunked(big)
    with OutboundHTTP.open(LOOPBACK, 5) as http:
        for path in ("/big", "/chunked"):
            with pytest.raises(ResponseTooLarge, match="MAILOAUTH_MAX_RESPONSE_BYTES"):
                http.get(f"{server.url}{path}")


def _chunked(body: bytes) -> Route:
    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for offset in range(0, len(body), 65536):
            piece = body[offset : offset + 65536]
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")

    return route


def test_a_token_answer_over_the_cap_is_a_typed_failure(server, net):
    server.routes["/token"] = answer(body={"access_token": "a" * 2_000_000})
    with pytest.raises(TokenRequestFailed) as excinfo:
        ask(f"{server.url}/token")
    assert excinfo.value.failure.code == "invalid_token_response"


def _trickle(handler):
    """A header line every 0.2 s, forever: each read is quick, the call never ends."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    try:
        for n in range(200):
            handler.wfile.write(b"X-Slow-%d: 1\r\n" % n)
            handler.wfile.flush()
            time.sleep(0.2)
    except OSError:
        return


def test_a_trickling_answer_is_aborted_at_the_deadline(server, net):
    server.routes["/token"] = _trickle
    started = time.monotonic()
    with pytest.raises(TokenRequestFailed) as excinfo:
        ask(f"{server.url}/token", deadline=1.0, timeout=2)
    assert time.monotonic() - started < 2.5
    assert (excinfo.value.failure.kind, excinfo.value.failure.code) == ("transient", "timeout")


def test_the_deadline_covers_every_redirect_hop(server, net):
    server.routes["/a"] = redirect("/slow")
    server.routes["/slow"] = _trickle
    started = time.monotonic()
    with session(LOOPBACK) as http, pytest.raises(DeadlineExceeded):
        http.get(f"{server.url}/a", timeout=call_timeout(2, deadline=1.0))
    assert time.monotonic() - started < 2.5


def test_without_a_deadline_the_read_timeout_still_holds(server, net):
    server.routes["/token"] = lambda h: time.sleep(1.5)
    with session(LOOPBACK) as http, pytest.raises(requests.Timeout):
        http.get(f"{server.url}/token", timeout=0.3)


# -- malformed token answers ---------------------------------------------------------------------

GOOD = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt"}
MALFORMED = [
    *({"expires_in": v} for v in ["abc", "3600.0", 3600.0, "-5", -5, 0, True, [1], 1e308, {}]),
    *({"access_token": v} for v in [5, None, "", ["at"], "a\x00b", "a\nb", "é"]),
    *({"refresh_token": v} for v in [5, "", {}, "r\x01t"]),
    *({"id_token": v} for v in [1, "", [None]]),
    *({"scope": v} for v in [5, True, [1], {"a": 1}, ["ok", None]]),
]


@pytest.mark.parametrize("change", MALFORMED, ids=repr)
def test_a_malformed_field_is_a_typed_failure(server, net, change):
    server.routes["/token"] = answer(body={**GOOD, **change})
    with pytest.raises(TokenRequestFailed) as excinfo:
        ask(f"{server.url}/token")
    failure = excinfo.value.failure
    assert (failure.kind, failure.code) == ("transient", "invalid_token_response")
    assert next(iter(change)) in failure.description


@pytest.mark.parametrize("raw", [b'{"access_token": "at", "expires_in": NaN}',
                                 b'{"access_token": "at", "expires_in": Infinity}'])  # fmt: skip
def test_nan_and_infinity_are_refused(server, net, raw):
    server.routes["/token"] = answer(body=raw)
    with pytest.raises(TokenRequestFailed, match="expires_in"):
        ask(f"{server.url}/token")


@pytest.mark.parametrize("token_type", ["mac", "DPoP", 5, None, ""])
def test_a_non_bearer_token_is_a_configuration_failure(server, net, token_type):
    server.routes["/token"] = answer(body={**GOOD, "token_type": token_type})
    with pytest.raises(TokenRequestFailed) as excinfo:
        ask(f"{server.url}/token")
    assert excinfo.value.failure.kind == "configuration"
    assert "Bearer" in excinfo.value.failure.description


@pytest.mark.parametrize("body", [b"<html>ok</html>", b"[1, 2]", b'"text"', b"", b"null"])
def test_a_200_that_is_not_a_json_object_says_so(server, net, body):
    server.routes["/token"] = answer(body=body, content_type="text/html")
    with pytest.raises(TokenRequestFailed) as excinfo:
        ask(f"{server.url}/token")
    failure = excinfo.value.failure
    assert failure.code == "invalid_token_response"
    assert "JSON object" in failure.description
    assert "HTTP 502" not in str(excinfo.value)


def test_accepted_variants(server, net):
    server.routes["/token"] = answer(
        body={**GOOD, "token_type": "bearer", "expires_in": "7200", "scope": ["a b", "c"]}
    )
    answer_ = ask(f"{server.url}/token")
    assert answer_.token_type == "Bearer"
    assert answer_.scope == "a b c"
    assert timedelta(seconds=7190) < answer_.expires_at - utcnow() <= timedelta(seconds=7200)


@pytest.mark.parametrize("expires_in", [30 * 24 * 3600, str(10 * 365 * 24 * 3600)])
def test_long_lifetimes_are_clamped(server, net, expires_in):
    server.routes["/token"] = answer(body={**GOOD, "expires_in": expires_in})
    assert ask(f"{server.url}/token").expires_at <= utcnow() + timedelta(seconds=MAX_EXPIRES_IN)


@pytest.mark.parametrize(
    "expires_in", [2**64, str(2**64), "9" * 5000, 10**400, 10 * 365 * 24 * 3600 + 1]
)
def test_absurd_lifetimes_are_typed_failures(server, net, expires_in):
    server.routes["/token"] = answer(body={**GOOD, "expires_in": expires_in})
    with pytest.raises(TokenRequestFailed) as excinfo:
        ask(f"{server.url}/token")
    failure = excinfo.value.failure
    assert (failure.kind, failure.code) == ("transient", "invalid_token_response")
    assert "expires_in" in failure.description


@pytest.mark.parametrize("body", [{}, {"token_type": "Bearer"}, {"refresh_token": "rt"}])
def test_a_200_without_an_access_token_is_a_malformed_answer(server, net, body):
    server.routes["/token"] = answer(body=body)
    with pytest.raises(TokenRequestFailed) as excinfo:
        ask(f"{server.url}/token")
    failure = excinfo.value.failure
    assert failure.code == "invalid_token_response"
    assert "access_token" in failure.description
    assert "502" not in str(excinfo.value)


@pytest.mark.parametrize("claims", [{"exp": 10**400, "iat": 10**400}, {"iat": -(10**400)},
                                    {"exp": 1e308}, {"iat": "soon"}])  # fmt: skip
def test_insane_jwt_clock_claims_are_ignored(server, net, claims):
    access = jwt.encode(claims, "k" * 32, algorithm="HS256")
    server.routes["/token"] = answer(body={**GOOD, "access_token": access})
    answer_ = ask(f"{server.url}/token")
    assert answer_.clock_skew is None
    assert answer_.expires_at - utcnow() <= timedelta(seconds=3600)


@pytest.mark.parametrize(
    "retry_after", ["1e300", "99999999999", "Fri, 31 Dec 9999 23:59:59 GMT", "inf"]
)
def test_retry_after_is_capped(server, net, retry_after):
    server.routes["/token"] = answer(503, {"error": "x"}, headers={"Retry-After": retry_after})
    with pytest.raises(TokenRequestFailed) as excinfo:
        ask(f"{server.url}/token")
    assert (excinfo.value.failure.retry_after or 0) <= MAX_RETRY_AFTER


# -- clock skew ------------------------------------------------------------------------------------


def test_the_date_header_measures_the_skew_and_bounds_the_expiry(server, net):
    idp_clock = utcnow() - timedelta(hours=2)  # the host is 2 h fast
    server.routes["/token"] = answer(body=GOOD, headers={"Date": format_datetime(idp_clock, True)})
    answer_ = ask(f"{server.url}/token")
    assert answer_.clock_skew == pytest.approx(7200, abs=3)
    # expiry by the IdP's clock: when the host clock is corrected, no dead token is served
    assert answer_.expires_at == pytest.approx(
        idp_clock + timedelta(hours=1), abs=timedelta(seconds=3)
    )


def test_a_jwt_access_token_tells_the_idp_clock(server, net):
    now = int(time.time())
    access = jwt.encode({"iat": now - 600, "exp": now - 600 + 1800}, "k" * 32, algorithm="HS256")
    server.routes["/token"] = answer(body={**GOOD, "access_token": access, "expires_in": None})
    answer_ = ask(f"{server.url}/token")
    assert answer_.clock_skew == pytest.approx(600, abs=3)  # no Date: iat is the IdP's clock
    assert answer_.expires_at.timestamp() == pytest.approx(now + 1200, abs=3)


def test_a_slow_host_clock_keeps_the_host_expiry(server, net):
    idp_clock = utcnow() + timedelta(minutes=5)
    server.routes["/token"] = answer(body=GOOD, headers={"Date": format_datetime(idp_clock, True)})
    answer_ = ask(f"{server.url}/token")
    assert answer_.clock_skew == pytest.approx(-300, abs=3)
    assert answer_.expires_at - utcnow() <= timedelta(seconds=3600)


# -- anything goes: only TokenRequestFailed ever leaves request_token ------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.text(alphabet="\x00\x01\n é0123456789.eE-", max_size=30)
    | st.just("x" * 100_000),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
FIELDS = ["access_token", "refresh_token", "id_token", "expires_in", "scope", "token_type"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, JSON)).map(
            lambda d: {**GOOD, **d}
        ),
        JSON,
    ),
    date=st.one_of(st.none(), st.text(max_size=40)),
)
def test_any_answer_is_a_token_or_a_typed_failure(body, date):
    raw = json.dumps(body, allow_nan=True)
    headers = {"Date": date} if date and date.isprintable() and date.isascii() else {}
    with responses.RequestsMock() as mock:
        mock.post(TOKEN_URL, body=raw, headers=headers, content_type="application/json")
        try:
            answer_ = ask(TOKEN_URL)
        except TokenRequestFailed:
            return  # the only exception allowed out
    assert isinstance(answer_.access_token, str)
    assert answer_.access_token.isprintable()
    assert utcnow() - timedelta(days=1) < answer_.expires_at
    assert answer_.expires_at <= utcnow() + timedelta(seconds=MAX_EXPIRES_IN)
    assert answer_.clock_skew is None or math.isfinite(answer_.clock_skew)


# -- through the product, on SQLite and PostgreSQL ---------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {**GOOD, "expires_in": "abc"},
        {**GOOD, "access_token": 5},
        {**GOOD, "scope": 5},
        {**GOOD, "token_type": "mac"},
        "<html>",
    ],
    ids=repr,
)
def test_a_malformed_refresh_answer_changes_nothing(make_host, db_url, body):
    host = make_host(db_url=db_url)
    store_account(host, expires_in=100)  # due, still valid
    before = credential(host)
    with responses.RequestsMock() as mock:
        mock.post(TOKEN_URL, body=body if isinstance(body, str) else json.dumps(body))
        with suppress(MailOAuthError):  # a typed error is allowed; nothing else is
            assert token(host) == "at-0"  # the still-valid token is served
    after = credential(host)
    assert (after[1], after[2]) == (before[1], before[2])  # tokens unchanged
    with host.app.app_context(), host.db.engine.connect() as conn:
        lease = conn.execute(sa.text("select refresh_lease_until from mailoauth_credential"))
        assert lease.scalar() is None


@pytest.mark.parametrize(
    "body",
    [{**GOOD, "expires_in": [1]}, {**GOOD, "refresh_token": 7}, {**GOOD, "token_type": "mac"}, "x"],
    ids=repr,
)
def test_a_malformed_code_exchange_answer_is_a_banner(make_host, db_url, body):
    host = make_host(db_url=db_url)
    client = host.app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        query = start(client)
        mock.replace(
            responses.POST, TOKEN_URL, body=body if isinstance(body, str) else json.dumps(body)
        )
        response = callback(client, idp, query)
    assert response.status_code == 303
    assert credentials(host) == []
    (category, message), *_ = banners(client)
    assert category == "error"
    assert "invalid_token_response" in message
