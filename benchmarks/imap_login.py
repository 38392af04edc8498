"""IMAP login through a proxy adding 20 ms each way: SASL-IR vs ``imaplib.IMAP4.authenticate``.

The real local Dovecot checks each token by introspection at the real local IdP. Both clients
use XOAUTH2 with the same token on a fresh connection; only the sign-in is timed (from the
AUTHENTICATE line to the tagged OK), alternating the two. The proxy also counts round trips
during the sign-in: the times the client speaks after the server.
"""

from __future__ import annotations

import contextlib
import imaplib
import time
from dataclasses import dataclass

from flask_mailoauth.mail import imap_login
from flask_mailoauth.sasl import xoauth2

from .common import (
    DelayProxy,
    Peers,
    Row,
    Spread,
    fmt_ratio,
    fmt_runs,
    median,
    register_post_client,
)

USER = "bench@example.test"


@dataclass(frozen=True)
class ImapResult:
    logins: int
    sasl_ir: Spread  # seconds per sign-in
    imaplib: Spread
    sasl_ir_trips: int  # round trips per login (median)
    imaplib_trips: int
    delay: float


def _sasl_ir(conn: imaplib.IMAP4, token: str) -> None:
    imap_login(conn, USER, token, mechanism="XOAUTH2")


def _imaplib(conn: imaplib.IMAP4, token: str) -> None:
    typ, _ = conn.authenticate("XOAUTH2", lambda _challenge: xoauth2(USER, token))
    assert typ == "OK", typ


def measure(peers: Peers, logins: int = 20, delay: float = 0.020) -> ImapResult:
    idp, dovecot = peers.idp, peers.dovecot
    client = register_post_client(idp)
    token = idp.code_grant(client, USER)["access_token"]
    proxy = DelayProxy((dovecot.host, dovecot.imap_port), delay)
    times: dict[str, list[float]] = {"sasl-ir": [], "imaplib": []}
    trips: dict[str, list[int]] = {"sasl-ir": [], "imaplib": []}
    try:
        for i in range(logins * 2 + 2):
            name, login = ("sasl-ir", _sasl_ir) if i % 2 == 0 else ("imaplib", _imaplib)
            conn = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=10)
            try:
                assert "SASL-IR" in conn.capabilities, conn.capabilities
                trips_before = proxy.round_trips
                started = time.perf_counter()
                login(conn, token)
                elapsed = time.perf_counter() - started
                if i >= 2:  # the first of each warms up Dovecot's auth and imap processes
                    times[name].append(elapsed)
                    trips[name].append(proxy.round_trips - trips_before)
                assert conn.state == "AUTH", conn.state
            finally:
                with contextlib.suppress(Exception):
                    conn.logout()
    finally:
        proxy.close()
    return ImapResult(
        logins=logins,
        sasl_ir=Spread.of(times["sasl-ir"]),
        imaplib=Spread.of(times["imaplib"]),
        sasl_ir_trips=round(median(trips["sasl-ir"])),
        imaplib_trips=round(median(trips["imaplib"])),
        delay=delay,
    )


def rows(result: ImapResult) -> list[Row]:
    ratio = result.sasl_ir.median / result.imaplib.median
    name = "IMAP login"
    delay = f"{result.delay * 1000:.0f} ms"
    return [
        Row(
            name,
            f"sign-in via a {delay}-each-way proxy ({fmt_runs(result.logins)})",
            f"{result.sasl_ir.fmt()} imap_login (SASL-IR)",
            f"{result.imaplib.fmt()} IMAP4.authenticate",
            f"{fmt_ratio(ratio)} the time",
            "about 0.5x",
            ratio <= 0.6,
        ),
        Row(
            name,
            "round trips per sign-in (median)",
            str(result.sasl_ir_trips),
            str(result.imaplib_trips),
            "-",
            "1 vs 2",
            result.sasl_ir_trips == 1,
        ),
    ]
