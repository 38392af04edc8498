"""Every call to an identity provider obeys the outbound rules, implemented once, in the transport.

:class:`OutboundAdapter` is a ``requests`` transport adapter; :func:`mount` puts it on any
session (a plain ``requests.Session`` or requests-oauthlib's ``OAuth2Session``). For every
request that session sends it enforces DESIGN §7:

- the URL of every request and redirect hop is a valid endpoint (https; loopback http only with
  ``MAILOAUTH_ALLOW_INSECURE_HTTP``);
- only GET/HEAD follow redirects (at most :attr:`OutboundPolicy.max_redirects`); any other
  method answered with a redirect is refused, so a token endpoint never forwards its secrets;
- the host is resolved once, at connect time, every address is vetted (no loopback, private,
  link-local, unique-local, multicast or other non-global address unless the host opts in), and
  the socket connects to exactly the vetted address: no DNS-rebinding gap;
- every body is read with a size cap;
- a call given a :func:`call_timeout` with a total deadline is aborted when it passes, however
  slowly the IdP trickles its answer.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from flask import current_app, has_app_context
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import Timeout
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from .errors import (
    AddressRefused,
    DeadlineExceeded,
    RedirectRefused,
    ResponseTooLarge,
    UrlRefused,
)
from .i18n import gettext
from .providers.base import RequestHook, check_endpoint_url

#: redirects a GET may follow (discovery, JWKS, userinfo, resource details)
MAX_REDIRECTS = 3
#: the default of ``MAILOAUTH_MAX_RESPONSE_BYTES``
MAX_RESPONSE_BYTES = 1024 * 1024
#: methods that may follow a redirect; any other (the token POST) never does
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_CHUNK = 64 * 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class OutboundPolicy:
    """The outbound rules in force: built from the app's ``MAILOAUTH_*`` config."""

    allow_insecure_http: bool = False
    #: host names (lower case, no trailing dot) allowed to resolve to non-global addresses
    allowed_private_hosts: frozenset[str] = frozenset()
    #: networks whose non-global addresses may be connected to
    allowed_private_networks: tuple[Network, ...] = ()
    max_response_bytes: int = MAX_RESPONSE_BYTES
    max_redirects: int = MAX_REDIRECTS
    #: the PEM file of CAs an IdP's certificate must chain to; ``None``: the default CA store
    ca_bundle: str | None = None

    @property
    def verify(self) -> str | bool:
        """``requests``' ``verify``: the configured CA bundle, else the default CA store."""
        return self.ca_bundle or True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OutboundPolicy:
        """The policy of a Flask config (``MAILOAUTH_ALLOW_INSECURE_HTTP`` and friends)."""
        entries = config.get("MAILOAUTH_ALLOWED_PRIVATE_HOSTS") or ()
        if isinstance(entries, str):
            entries = entries.replace(",", " ").split()
        hosts: set[str] = set()
        networks: list[Network] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
            except ValueError:
                hosts.add(_host_key(str(entry)))
        return cls(
            allow_insecure_http=bool(config.get("MAILOAUTH_ALLOW_INSECURE_HTTP")),
            allowed_private_hosts=frozenset(hosts),
            allowed_private_networks=tuple(networks),
            max_response_bytes=int(
                config.get("MAILOAUTH_MAX_RESPONSE_BYTES") or MAX_RESPONSE_BYTES
            ),
            ca_bundle=os.fspath(bundle) if (bundle := config.get("MAILOAUTH_CA_BUNDLE")) else None,
        )

    @classmethod
    def current(cls) -> OutboundPolicy:
        """The current app's policy; outside an app context (a provider package's own unit
        tests) the strictest one, the defaults."""
        return cls.from_config(current_app.config) if has_app_context() else cls()

    def permits(self, host: str, address: Address) -> bool:
        """True when a connection to ``host`` may go to ``address``.

        An IPv6 address that embeds an IPv4 one (6to4, Teredo, NAT64) is public only when the
        embedded address is: ``2002:7f00:1::`` reaches 127.0.0.1 through a 6to4 relay.
        """
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address.is_loopback:
            return self.allow_insecure_http
        if _public(address):
            return True
        return _host_key(host) in self.allowed_private_hosts or any(
            address in network for network in self.allowed_private_networks
        )

    def refusal(self, host: str, loopback: bool) -> str:
        """What to tell the admin when ``host`` resolves only to refused addresses."""
        if loopback:
            return gettext(
                "%(host)s resolves to a loopback address, which identity provider calls may only "
                "reach when MAILOAUTH_ALLOW_INSECURE_HTTP is set (tests and local sandboxes).",
                host=host,
            )
        return gettext(
            "%(host)s resolves to a private or otherwise non-public address, which identity "
            "provider calls may not reach. If this identity provider runs on your own network, "
            "add %(host)s (or its network) to MAILOAUTH_ALLOWED_PRIVATE_HOSTS.",
            host=host,
        )


#: NAT64 prefixes (RFC 6052 well-known, RFC 8215 local-use): the last 32 bits are IPv4
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _public(address: Address) -> bool:
    """Whether ``address`` is a public unicast address, including every IPv4 it embeds.

    A NAT64 address (what DNS64 gives an IPv6-only host) is as public as its IPv4 address.
    """
    if any(address in network for network in _NAT64):
        return _public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if not address.is_global or address.is_multicast or address.is_reserved:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    if address.is_site_local:  # fec0::/10, deprecated but still routed on some networks
        return False
    embedded = [address.sixtofour] if address.sixtofour else []
    embedded.extend(address.teredo or ())
    return all(_public(inner) for inner in embedded)


def _host_key(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _address(sockaddr: tuple[Any, ...]) -> Address:
    return ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])


# -- the total deadline ---------------------------------------------------------------------------


class CallTimeout(Timeout):
    """A per-read ``timeout`` plus a total ``deadline`` (seconds) for the whole call.

    ``requests`` passes a ``Timeout`` through untouched, redirects included, so every hop of one
    call shares one deadline.
    """

    def __init__(self, timeout: float, deadline: float | None) -> None:
        super().__init__(connect=timeout, read=timeout)
        self.expires = None if deadline is None else time.monotonic() + deadline


def call_timeout(timeout: float, deadline: float | None = None) -> CallTimeout:
    """The ``timeout=`` argument for a call with a per-read timeout and an optional deadline."""
    return CallTimeout(timeout, deadline)


class _Watchdog:
    """Shuts down the sockets of one call when its deadline passes, waking a blocked read."""

    _local = threading.local()

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.expired = False
        self._done = False
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self._timer = threading.Timer(max(0.0, expires - time.monotonic()), self._expire)
        self._timer.daemon = True

    @classmethod
    def current(cls) -> _Watchdog | None:
        """The watchdog of the call this thread is making, if it has a deadline."""
        return getattr(cls._local, "watchdog", None)

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Arm the timer for the calling thread's call; disarm it on the way out."""
        self._local.watchdog = self
        self._timer.start()
        try:
            yield
        finally:
            with self._lock:
                self._done = True
            self._timer.cancel()
            self._local.watchdog = None

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.expires - time.monotonic())

    def register(self, connection: HTTPConnection) -> None:
        """Watch ``connection``; shut it down at once when the deadline already passed."""
        with self._lock:
            self._connections.append(connection)
            if self.expired:
                _shutdown(connection)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for connection in self._connections:
                _shutdown(connection)


def _shutdown(connection: HTTPConnection) -> None:
    """Shut the connection's socket down (not close: the reading thread owns the close)."""
    sock = connection.sock or getattr(connection, "vetted_socket", None)
    if sock is None:
        return
    # The plain socket's shutdown: SSLSocket.shutdown would tear down TLS state that the reading
    # thread is using.
    with suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


# -- connect-time address check -----------------------------------------------------------------


class _Refused(Exception):
    """Raised inside urllib3, where an ``OSError`` would be retried and wrapped."""


class _VettedConnection(HTTPConnection):
    """Resolves its host once, vets every address, and connects to exactly a vetted one."""

    def __init__(self, *args: Any, policy: OutboundPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy
        self.vetted_socket: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        host = self._dns_host
        try:
            infos = socket.getaddrinfo(host, self.port, allowed_gai_family(), socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:  # a name IDNA cannot encode
            # urllib3 types the reason as a gaierror; it only formats it into the message
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        vetted = [info for info in infos if self.policy.permits(host, _address(info[4]))]
        if not vetted:
            loopback = any(_address(info[4]).is_loopback for info in infos)
            raise _Refused(self.policy.refusal(self.host, loopback))
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in vetted:
            try:
                sock = self._connect(family, kind, proto, sockaddr)
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
                ) from exc
            except OSError as exc:
                error = exc
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            self.vetted_socket = sock
            self._watch()
            return sock
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")

    def _connect(
        self, family: int, kind: int, proto: int, sockaddr: tuple[Any, ...]
    ) -> socket.socket:
        """A socket connected to ``sockaddr``, with urllib3's options and timeout."""
        sock = socket.socket(family, kind, proto)
        try:
            for option in self.socket_options or ():
                sock.setsockopt(*option)
            # urllib3 types the timeout as a float, yet its pools store the default sentinel
            if self.timeout is not _DEFAULT_TIMEOUT:  # type: ignore[comparison-overlap]
                sock.settimeout(self.timeout)
            if self.source_address:
                sock.bind(self.source_address)
            sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        """Send a request; a reused keep-alive connection joins the current call's watchdog."""
        self._watch()
        super().request(*args, **kwargs)

    def _watch(self) -> None:
        watchdog = _Watchdog.current()
        if watchdog is not None:
            watchdog.register(self)


class _VettedHTTPSConnection(_VettedConnection, HTTPSConnection):
    """TLS over a vetted address; SNI and certificate verification still use the host name."""


class _VettedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _VettedConnection


class _VettedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _VettedHTTPSConnection


class _VettedPoolManager(PoolManager):
    """A pool manager whose pools make vetted connections under ``policy``."""

    def __init__(self, *args: Any, policy: OutboundPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy
        self.pool_classes_by_scheme = {
            "http": _VettedHTTPConnectionPool,
            "https": _VettedHTTPSConnectionPool,
        }

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.conn_kw["policy"] = self.policy
        return pool


# -- the adapter ---------------------------------------------------------------------------------


class OutboundAdapter(HTTPAdapter):
    """The transport of IdP calls: URL rules, redirects, address vetting, size cap, deadline."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        super().__init__(max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        """Pools that vet the address of every new connection."""
        self._pool_connections, self._pool_maxsize, self._pool_block = connections, maxsize, block
        self.poolmanager = _VettedPoolManager(
            num_pools=connections, maxsize=maxsize, block=block, policy=self.policy, **pool_kwargs
        )

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` under the policy; the body is always read (capped) before returning."""
        url = request.url or ""
        problem = check_endpoint_url(url, allow_insecure_http=self.policy.allow_insecure_http)
        if problem:
            raise UrlRefused(
                gettext(
                    "Refused to call %(origin)s: %(problem)s", origin=_origin(url), problem=problem
                ),
                request=request,
            )
        if select_proxy(url, proxies):
            raise AddressRefused(
                gettext(
                    "Identity provider calls do not go through proxies: the address policy must "
                    "hold for the address actually connected. Unset the proxy for this host."
                ),
                request=request,
            )
        expires = getattr(timeout, "expires", None)
        if expires is None:
            return self._send(request, timeout, verify, cert, proxies)
        watchdog = _Watchdog(expires)
        remaining = watchdog.remaining()
        if remaining <= 0:
            raise _deadline(request)
        read = timeout.read_timeout
        timeout = Timeout(
            connect=min(timeout.connect_timeout or remaining, remaining),
            read=min(read, remaining) if isinstance(read, int | float) else remaining,
        )
        try:
            with watchdog.watching():
                response = self._send(request, timeout, verify, cert, proxies)
        except (requests.RequestException, OSError):
            if watchdog.expired:
                raise _deadline(request) from None
            raise
        if watchdog.expired:
            raise _deadline(request)
        return response

    def _send(
        self, request: requests.PreparedRequest, timeout: Any, verify: Any, cert: Any, proxies: Any
    ) -> requests.Response:
        try:
            response = super().send(
                request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
        except _Refused as refused:
            raise AddressRefused(str(refused), request=request) from None
        try:
            self._check_redirect(request, response)
            self._read(response)
        except BaseException:
            response.close()
            raise
        return response

    def _check_redirect(
        self, request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        """Refuse a redirect from an unsafe method, or to a URL that breaks the endpoint rules."""
        if not response.is_redirect:
            return
        url = request.url or ""
        endpoint = _origin(url) + urlsplit(url).path
        if request.method not in _SAFE_METHODS:
            raise RedirectRefused(
                gettext(
                    "%(endpoint)s answered %(method)s with a redirect (HTTP %(status)s), which is "
                    "never followed: it would carry the request's credentials elsewhere. Enter "
                    "the endpoint's final URL.",
                    endpoint=endpoint,
                    method=request.method,
                    status=response.status_code,
                ),
                request=request,
                response=response,
            )
        target = urljoin(url, response.headers.get("location", ""))
        problem = check_endpoint_url(target, allow_insecure_http=self.policy.allow_insecure_http)
        if problem:
            raise RedirectRefused(
                gettext(
                    "%(endpoint)s redirects to a URL that is refused: %(problem)s",
                    endpoint=endpoint,
                    problem=problem,
                ),
                request=request,
                response=response,
            )

    def _read(self, response: requests.Response) -> None:
        """Read the whole body, refusing it past the size cap; a typed error, never MemoryError."""
        cap = self.policy.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise _too_large(response, cap)
        chunks, size = [], 0
        for chunk in response.iter_content(_CHUNK):
            size += len(chunk)
            if size > cap:
                raise _too_large(response, cap)
            chunks.append(chunk)
        response._content = b"".join(chunks)  # what Response.content caches
        release = getattr(response.raw, "release_conn", None)
        if release is not None:
            release()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _deadline(request: requests.PreparedRequest) -> DeadlineExceeded:
    return DeadlineExceeded(
        gettext(
            "%(origin)s did not answer within the call's deadline; the call was aborted. Try "
            "again; if it persists, the identity provider is too slow.",
            origin=_origin(request.url or ""),
        ),
        request=request,
    )


def _too_large(response: requests.Response, cap: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        gettext(
            "%(origin)s answered with more than %(cap)s bytes, the limit set by "
            "MAILOAUTH_MAX_RESPONSE_BYTES; the answer was not read.",
            origin=_origin(response.url or ""),
            cap=cap,
        ),
        response=response,
    )


def mount(session: requests.Session, policy: OutboundPolicy) -> requests.Session:
    """Put ``session``'s http:// and https:// traffic under ``policy`` and return it.

    Environment proxies are not used: the address policy must hold for the address connected.
    Certificates are checked against ``MAILOAUTH_CA_BUNDLE`` when set.
    """
    adapter = OutboundAdapter(policy)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.max_redirects = policy.max_redirects
    session.trust_env = False
    session.verify = policy.verify
    return session


def session(policy: OutboundPolicy) -> requests.Session:
    """A new ``requests.Session`` under ``policy``."""
    return mount(requests.Session(), policy)


@dataclass
class OutboundHTTP:
    """What provider hooks call ``http.get`` on: a session under the policy, with the configured
    per-read ``timeout`` and an optional total ``deadline`` on every call."""

    session: requests.Session
    timeout: float
    deadline: float | None = None
    #: the provider's requests-oauthlib ``protected_request`` compliance hooks, run in order on
    #: every call that carries the access token (``Authorization: Bearer ...``)
    protected: tuple[RequestHook, ...] = ()

    @classmethod
    @contextmanager
    def open(
        cls,
        policy: OutboundPolicy,
        timeout: float,
        deadline: float | None = None,
        protected: tuple[RequestHook, ...] = (),
    ) -> Iterator[OutboundHTTP]:
        """A fresh session under ``policy`` for the duration of a ``with`` block."""
        with session(policy) as http:
            yield cls(http, timeout, deadline, protected)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        """``GET url``, following at most the policy's redirects, each hop under the rules."""
        kwargs.setdefault("timeout", call_timeout(self.timeout, self.deadline))
        headers = dict(kwargs.pop("headers", None) or {})
        if str(headers.get("Authorization", "")).startswith("Bearer "):
            for hook in self.protected:
                url, headers, _ = hook(url, headers, None)
        try:
            return self.session.get(url, headers=headers, **kwargs)
        except requests.TooManyRedirects:
            raise RedirectRefused(
                gettext(
                    "%(origin)s redirected more than %(max)s times; enter the endpoint's final "
                    "URL.",
                    origin=_origin(url),
                    max=self.session.max_redirects,
                )
            ) from None
