"""Delete Token revokes the grant at the identity provider (RFC 7009), then deletes the token
locally whatever the IdP answered, and says what happened in the banner and the event log.

The IdP's answers are faked with ``responses`` for each answer class; the hostile IdP (real
sockets on loopback) plays the answers that attack the call: a redirect, a huge body, a slow
answer, an address outbound calls may not reach, a token echoed back. Failures run on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import parse_qs

import pytest
import requests
import responses
import sqlalchemy as sa

from flask_mailoauth.crypto import generate_key
from flask_mailoauth.oauth import client_proof
from flask_mailoauth.outbound import OutboundPolicy
from flask_mailoauth.providers import registry
from flask_mailoauth.revocation import revoke
from flask_mailoauth.vocabulary import RevocationOutcome

from .flow_steps import MODAL, banners, callback, credentials, csrf, start
from .oauth_fakes import ISSUER, FakeIdP

REVOKE_URL = f"{ISSUER}/revoke"
NEXT_STEP = (
    "Open Config and press Submit to authorize again; until then mail is neither fetched nor "
    "sent with OAuth2."
)
NOT_CONFIRMED = "The identity provider did not confirm the revocation:"


@pytest.fixture
def idp():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeIdP(mock)


@pytest.fixture
def host(make_host, db_url):
    return make_host(db_url=db_url)


@pytest.fixture
def client(host):
    return host.app.test_client()


class Revocations:
    """The fake revocation endpoint: answers ``answer`` (status, JSON body) or raises it,
    and records each request's form."""

    def __init__(self, idp: FakeIdP) -> None:
        self.forms: list[dict[str, list[str]]] = []
        self.answer: tuple[int, object] | Exception = (200, {})
        idp.mock.add_callback(responses.POST, REVOKE_URL, callback=self._answer)

    def _answer(self, request):
        self.forms.append(parse_qs(request.body))
        if isinstance(self.answer, Exception):
            raise self.answer
        status, body = self.answer
        return status, {"Content-Type": "application/json"}, json.dumps(body)


@pytest.fixture
def revocations(idp) -> Revocations:
    return Revocations(idp)


def authorize(client, idp, host, **fields: str) -> None:
    """Authorize the support mailbox with the revocation endpoint configured (or ``fields``)."""
    callback(client, idp, start(client, **{"idp_revocation_endpoint": REVOKE_URL, **fields}))
    assert credentials(host)


def delete(client) -> tuple[str, str]:
    """Press Delete Token: the one banner, (kind, text)."""
    response = client.post(f"{MODAL}/delete", data={"csrf_token": csrf(client)})
    assert response.status_code == 303
    (banner,) = [b for b in banners(client) if "Token deleted" in b[1] or "no token" in b[1]]
    return banner


def events(host) -> list[dict]:
    with host.app.app_context(), host.db.engine.connect() as conn:
        rows = conn.execute(sa.text("select kind, level, message from mailoauth_event order by id"))
        return [dict(r) for r in rows.mappings()]


def last_event(host) -> dict:
    return events(host)[-1]


# -- the answer classes -------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_revoked_grant_is_deleted_and_the_banner_says_so(client, idp, host, revocations):
    authorize(client, idp, host)
    assert delete(client) == (
        "success",
        f"Token deleted. The identity provider confirmed the revocation. {NEXT_STEP}",
    )
    assert credentials(host) == []
    (form,) = revocations.forms
    assert form == {
        "token": ["refresh-token-1"],
        "token_type_hint": ["refresh_token"],
        "client_id": ["helpdesk-app"],
        "client_secret": ["client-secret-1"],
    }
    assert last_event(host) == {
        "kind": "token_deleted",
        "level": "info",
        "message": "Token deleted by an admin. The identity provider confirmed the revocation.",
    }


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_without_a_refresh_token_the_access_token_is_revoked(client, idp, host, revocations):
    authorize(client, idp, host)
    with host.app.app_context():  # as a grant without refresh token is stored: sealed ""
        st = host.app.extensions["mailoauth"]
        stored = st.db.session.execute(sa.select(st.models.Credential)).scalar_one()
        st.seal(stored, "refresh_token", "")
        st.db.session.commit()
    assert delete(client)[0] == "success"
    (form,) = revocations.forms
    assert (form["token"], form["token_type_hint"]) == (["access-token-1"], ["access_token"])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_provider_without_revocation_deletes_and_says_the_grant_lives_on(
    client, idp, host, revocations
):
    authorize(client, idp, host, idp_revocation_endpoint="")
    kind, text = delete(client)
    assert kind == "success"
    assert "The provider offers no revocation: the grant stays valid at the identity" in text
    assert revocations.forms == []
    assert credentials(host) == []
    assert last_event(host)["level"] == "info"


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        pytest.param(
            (400, {"error": "unsupported_token_type", "error_description": "no refresh tokens"}),
            "The revocation endpoint answered HTTP 400 (unsupported_token_type: no refresh "
            "tokens).",
            id="400 unsupported_token_type",
        ),
        pytest.param(
            (401, {"error": "invalid_client"}),
            "The revocation endpoint answered HTTP 401 (invalid_client).",
            id="401 invalid_client",
        ),
        pytest.param(
            (503, "not json"),
            "The revocation endpoint answered HTTP 503.",
            id="503",
        ),
        pytest.param(
            requests.ConnectionError("refused"),
            f"The revocation endpoint {REVOKE_URL} could not be reached.",
            id="unreachable",
        ),
        pytest.param(
            requests.ReadTimeout("slow"),
            f"The revocation endpoint {REVOKE_URL} could not be reached.",
            id="timeout",
        ),
        pytest.param(
            ValueError("a bug"),
            "The revocation request failed unexpectedly (ValueError).",
            id="unexpected",
        ),
    ],
)
def test_whatever_the_idp_answers_the_token_is_deleted_and_the_banner_says_what_happened(
    client, idp, host, revocations, answer, said, caplog
):
    authorize(client, idp, host)
    revocations.answer = answer
    caplog.set_level(logging.DEBUG)
    kind, text = delete(client)
    assert kind == "error"
    assert text.startswith(f"Token deleted. {NOT_CONFIRMED} {said} The grant may stay valid")
    assert text.endswith(NEXT_STEP)
    assert credentials(host) == []
    event = last_event(host)
    assert (event["kind"], event["level"]) == ("token_deleted", "warning")
    assert event["message"].startswith(f"Token deleted by an admin. {NOT_CONFIRMED} {said}")
    assert "refresh-token-1" not in caplog.text
    assert "client-secret-1" not in caplog.text
    # nothing is left to revoke or delete
    assert delete(client) == ("error", "There was no token to delete.")
    assert len(revocations.forms) == 1


def test_an_idp_that_echoes_the_token_is_not_quoted(client, idp, host, revocations, caplog):
    authorize(client, idp, host)
    revocations.answer = (400, {"error": "invalid_request", "error_description": "refresh-token-1"})
    caplog.set_level(logging.DEBUG)
    _, text = delete(client)
    assert "HTTP 400 (invalid_request: ...)" in text
    assert "refresh-token-1" not in text + caplog.text + last_event(host)["message"]


@pytest.mark.parametrize(
    ("endpoint", "said"),
    [
        (REVOKE_URL, "The stored token cannot be decrypted, so it could not be sent."),
        ("", "The provider offers no revocation"),
    ],
)
def test_an_undecryptable_token_is_deleted_without_a_request(
    make_host, db_url, idp, revocations, endpoint, said
):
    host = make_host(db_url=db_url)
    authorize(host.app.test_client(), idp, host, idp_revocation_endpoint=endpoint)
    other = make_host(db_url=db_url, MAILOAUTH_ENCRYPTION_KEYS=[generate_key()])
    kind, text = delete(other.app.test_client())
    assert kind == ("error" if endpoint else "success")
    assert said in text
    assert revocations.forms == []
    assert credentials(host) == []


def test_revoke_never_raises_even_for_a_broken_provider():
    class Broken(type(registry.get("generic"))):
        def endpoints(self, config):
            raise RuntimeError("broken")

    revoked = revoke(
        Broken(),
        {},
        "",
        refresh_token="rt",
        access_token="at",
        policy=OutboundPolicy(),
        timeout=1,
    )
    assert revoked.outcome == RevocationOutcome.FAILED
    assert revoked.detail == "The revocation request failed unexpectedly (RuntimeError)."
    assert not revoked.settled


def test_the_revocation_request_authenticates_the_client_as_its_grants_do():
    """A public client sends its id alone, a post client its secret in the body, a Basic
    client an Authorization header and nothing in the body."""
    generic = registry.get("generic")
    url = "https://idp.example.test/revoke"
    public = client_proof(generic, {"client_id": "app", "client_auth": "none"}, "")
    assert (public.body(url), public.auth()) == ({"client_id": "app"}, None)
    post = client_proof(generic, {"client_id": "app", "client_auth": "client_secret_post"}, "s")
    assert post.body(url) == {"client_id": "app", "client_secret": "s"}
    basic = client_proof(generic, {"client_id": "app", "client_auth": "client_secret_basic"}, "s")
    assert basic.body(url) == {}
    assert basic.auth() is not None


# -- the hostile IdP ------------------------------------------------------------------------------


def hostile_delete(driver, **fields: str):
    """Authorize against the hostile IdP with ``/revoke`` as revocation endpoint, then press
    Delete Token; the outcome, after checking the token is gone whatever happened."""
    revoke_url = fields.pop("revoke_url", f"{driver.idp.url}/revoke")
    driver.authorize(**driver.generic_fields(idp_revocation_endpoint=revoke_url, **fields))
    outcome = driver.delete_token()
    assert driver.rows() == []
    return outcome


def test_hostile_a_good_revocation(driver):
    driver.idp.on("POST", "/revoke", status=200, body=b"")
    outcome = hostile_delete(driver)
    assert outcome.kind == "success", outcome.text
    (seen,) = driver.idp.seen("/revoke")
    assert seen.form["token_type_hint"] == "refresh_token"
    assert seen.form["token"] in driver.idp.issued


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_hostile_a_redirect_is_not_followed(driver, status):
    hostile = driver.idp
    hostile.redirect("POST", "/revoke", f"{hostile.url}/elsewhere", status)
    outcome = hostile_delete(driver)
    assert outcome.refused
    assert f"answered POST with a redirect (HTTP {status})" in outcome.text
    assert hostile.seen("/elsewhere") == [], "the redirect target got the token"


def test_hostile_a_huge_answer_is_not_read(driver):
    driver.idp.on("POST", "/revoke", status=200, body=b"x" * (2 << 20))
    outcome = hostile_delete(driver)
    assert outcome.refused
    assert "MAILOAUTH_MAX_RESPONSE_BYTES" in outcome.text


@pytest.mark.parametrize("host_config", [{"MAILOAUTH_HTTP_TIMEOUT": 1}])
def test_hostile_a_slow_answer_is_cut_at_the_deadline(driver):
    driver.idp.on("POST", "/revoke", status=200, body=b"{}", drip=(0.4, 50))
    started = time.monotonic()
    outcome = hostile_delete(driver)
    assert time.monotonic() - started < 8  # the authorization, then at most the 2 s deadline
    assert outcome.refused
    assert "did not answer within the call's deadline" in outcome.text


def test_hostile_a_refused_address_is_never_called(driver, resolve):
    resolve({"revoke.example.test": "10.0.0.1"})
    outcome = hostile_delete(driver, revoke_url="https://revoke.example.test/revoke")
    assert outcome.refused
    assert "private or otherwise non-public address" in outcome.text


def test_hostile_an_echoed_token_is_never_shown(driver):
    """An IdP that quotes the tokens back: the driver fixture then scans every page, banner
    and log line for every token issued."""
    driver.authorize(**driver.generic_fields(idp_revocation_endpoint=f"{driver.idp.url}/revoke"))
    echoed = {"error": "invalid_request", "error_description": " ".join(driver.idp.issued)}
    driver.idp.on("POST", "/revoke", status=400, json=echoed)
    outcome = driver.delete_token()
    assert outcome.refused
    assert "HTTP 400 (invalid_request:" in outcome.text
    assert driver.rows() == []
