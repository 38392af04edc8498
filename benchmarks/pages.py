"""Pages: the Config modal's render and a full callback against the real local IdP.

Requests go through Flask's test client (no network between the browser and the app). The
modal (``GET /mailoauth/<key>/mailbox``) is rendered for an authorized account; its baseline is a
bare route of the same app rendering a one-line template. Each callback is a real one: the
authorization is started from the modal (not timed), the user signs in at the local IdP (not
timed), and ``GET /mailoauth/callback`` is timed: code exchange at the IdP, id_token check
against the IdP's JWKS, storing the tokens. Its baseline is the bare code exchange with
the harness's ``IdP.exchange_code`` (``requests``) at the same IdP, for a code obtained the same
way. SQL statements are counted per request.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import render_template_string

from peers.idp import login_and_consent

from .common import (
    Peers,
    Row,
    Spread,
    StatementCounter,
    fmt_ratio,
    fmt_runs,
    make_app,
)

CALLBACK = "http://localhost/mailoauth/callback"
KEY = "support"
EMAIL = f"{KEY}@example.test"


@dataclass(frozen=True)
class PagesResult:
    renders: int
    modal: Spread  # seconds per render
    modal_statements: int
    bare_page: Spread
    callbacks: int
    callback: Spread
    callback_statements: int
    code_exchange: Spread


def _csrf(client, provider: str = "generic") -> str:
    page = client.get(f"/mailoauth/{KEY}/mailbox?provider={provider}").get_data(as_text=True)
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)


def measure(peers: Peers, renders: int = 200, callbacks: int = 20) -> PagesResult:
    idp = peers.idp
    registered = idp.register_client(CALLBACK, auth_method="client_secret_post")
    bench = make_app(f"sqlite:///{peers.workdir / f'pages-{time.monotonic_ns()}.sqlite3'}")
    bench.app.add_url_rule(
        "/bare", "bare", lambda: render_template_string("<p>{{ name }}</p>", name="bare")
    )
    client = bench.app.test_client()
    saved = client.post(
        f"/mailoauth/{KEY}/mailbox",
        data={
            "csrf_token": _csrf(client),
            "enabled": "1",
            "name": f"{KEY} (mailbox)",
            "client_secret": registered.client_secret,
            "strict_matching": "y",
            "provider": "generic",
            "idp_issuer": idp.issuer,
            "idp_client_id": registered.client_id,
            "idp_scopes": "openid email offline_access",
            "idp_email_attribute": "email",
        },
        headers={"Referer": f"http://localhost/emails/{KEY}"},
    )
    assert saved.status_code == 303, saved.get_data(as_text=True)[:2000]
    location = saved.headers["Location"]
    with bench.app.app_context():
        engine = bench.db.engine

    callback_times: list[float] = []
    exchange_times: list[float] = []
    callback_statements = 0
    with StatementCounter(engine) as counter:
        for i in range(callbacks):
            if i:  # start again from the modal's "Authorize" button
                started = client.post(
                    f"/mailoauth/{KEY}/mailbox/authorize", data={"csrf_token": _csrf(client)}
                )
                assert started.status_code == 303, started.status_code
                location = started.headers["Location"]
            back = urlsplit(login_and_consent(location, EMAIL, CALLBACK))
            counter.reset()
            t = time.perf_counter()
            done = client.get(f"{back.path}?{back.query}")
            callback_times.append(time.perf_counter() - t)
            callback_statements = counter.count
            assert done.status_code == 303, done.get_data(as_text=True)[:2000]
            with client.session_transaction() as session:
                flashes = session.pop("_flashes", [])
            assert ("success", "OAuth2 Authorization Successful.") in flashes, flashes

            code, verifier = idp.authorization_code(registered, EMAIL, CALLBACK)
            t = time.perf_counter()
            idp.exchange_code(registered, code, verifier, CALLBACK)  # raises unless 200
            exchange_times.append(time.perf_counter() - t)

        modal_times: list[float] = []
        bare_times: list[float] = []
        modal_statements = 0
        for _ in range(renders):
            counter.reset()
            t = time.perf_counter()
            page = client.get(f"/mailoauth/{KEY}/mailbox")
            modal_times.append(time.perf_counter() - t)
            modal_statements = counter.count
            assert page.status_code == 200
            t = time.perf_counter()
            client.get("/bare")
            bare_times.append(time.perf_counter() - t)
    with bench.app.app_context():
        bench.db.engine.dispose()
    return PagesResult(
        renders=renders,
        modal=Spread.of(modal_times),
        modal_statements=modal_statements,
        bare_page=Spread.of(bare_times),
        callbacks=callbacks,
        callback=Spread.of(callback_times),
        callback_statements=callback_statements,
        code_exchange=Spread.of(exchange_times),
    )


def rows(result: PagesResult) -> list[Row]:
    name = "pages (SQLite)"
    return [
        Row(
            name,
            f"modal render, authorized account ({fmt_runs(result.renders)})",
            f"{result.modal.fmt()}, {result.modal_statements} SQL",
            f"{result.bare_page.fmt()} bare Flask page",
            f"{fmt_ratio(result.modal.median / result.bare_page.median)} the time",
            "-",
            None,
        ),
        Row(
            name,
            f"callback, real local IdP ({fmt_runs(result.callbacks)})",
            f"{result.callback.fmt()}, {result.callback_statements} SQL",
            f"{result.code_exchange.fmt()} bare code exchange",
            f"{fmt_ratio(result.callback.median / result.code_exchange.median)} the time",
            "-",
            None,
        ),
    ]
