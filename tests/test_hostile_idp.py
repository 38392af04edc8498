"""The product against an identity provider that attacks it (issue 11, points 1-6, 8, 10, 14).

Every test runs on SQLite and PostgreSQL, through the real views (callback, "Refresh now") and
through ``access_token()``. The shared rules are checked by ``tests.hostile_driver``: never a
500, the grant unchanged by a refused answer, the refresh lease released after every attempt,
no secret on any page, banner or log line; the ``hostile`` fixture fails a test in which any
connection tried to leave loopback (the socket guard refuses it before a packet is sent).
"""

from __future__ import annotations

import math
import socket
import threading
import time

import pytest

from flask_mailoauth.errors import ConfigurationError, MailOAuthError
from flask_mailoauth.models import utcnow
from peers.guard import GUARD, LeftLoopback
from peers.hostile import CLIENT_ID, DROP

from .hostile_driver import Driver, assert_refused_refresh, attempt_refresh

TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
OTHER_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
#: what Microsoft grants for the default scopes: the Outlook permissions, no offline_access
MICROSOFT_GRANTED = (
    "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/POP.AccessAsUser.All"
    " https://outlook.office.com/SMTP.Send openid profile email"
)
MIB = 1 << 20


def refused_reauthorization(d: Driver) -> str:
    """A new authorization against the hostile IdP (after a good one) must be refused and
    leave every column of the stored credentials as it was; returns the banner."""
    before = d.rows()
    outcome = d.callback(d.reauthorize())
    assert outcome.refused, f"accepted: {outcome.text}"
    assert d.unchanged(before, d.rows()), "a refused authorization changed the credentials"
    return outcome.text


# -- the guard itself ---------------------------------------------------------------------------


def test_the_socket_guard_refuses_a_connection_outside_loopback_without_sending_anything():
    with GUARD.expected() as taken, socket.socket() as sock:
        sock.settimeout(0.01)
        started = time.monotonic()
        with pytest.raises(LeftLoopback):
            sock.connect(("10.0.0.1", 443))
        with pytest.raises(LeftLoopback):
            sock.connect_ex(("169.254.169.254", 80))
    assert time.monotonic() - started < 0.01  # refused before any packet, not timed out
    assert taken == [("10.0.0.1", 443), ("169.254.169.254", 80)]


def test_the_socket_guard_lets_loopback_and_unix_sockets_through(hostile, tmp_path):
    with socket.create_connection(("127.0.0.1", hostile.port), timeout=2):
        pass
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(FileNotFoundError):
        sock.connect(str(tmp_path / "no-such-socket"))


# -- point 1: no redirect followed blindly ------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_from_the_token_endpoint_on_the_callback_sends_nothing_on(driver, status):
    hostile = driver.idp
    driver.authorize()
    before = driver.rows()
    hostile.redirect("POST", "/token", f"{hostile.url}/elsewhere", status)
    outcome = driver.callback(driver.reauthorize())
    assert outcome.refused, outcome.text
    assert driver.unchanged(before, driver.rows())
    assert hostile.seen("/elsewhere") == [], "the redirect target got the code exchange"


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_from_the_token_endpoint_on_refresh_is_a_configuration_error(driver, status):
    hostile = driver.idp
    driver.authorize()
    hostile.redirect("POST", "/token", f"{hostile.url}/elsewhere", status)
    result, outcome = attempt_refresh(driver)
    assert isinstance(result, ConfigurationError), repr(result)
    assert outcome.refused
    assert hostile.seen("/elsewhere") == [], "the redirect target got the refresh token"


def test_a_jwks_redirect_to_plain_http_off_loopback_is_refused(driver, resolve):
    hostile = driver.idp
    resolve({"keys.test": "127.0.0.1"})  # a plain-http host that is not a loopback name
    hostile.on("GET", "/published-keys", json=hostile.jwks())
    driver.authorize()
    hostile.redirect("GET", "/jwks", f"http://keys.test:{hostile.port}/published-keys")
    refused_reauthorization(driver)
    assert hostile.seen("/published-keys") == [], "the JWKS redirect was followed over http"


def test_a_jwks_redirect_to_an_internal_address_is_refused_without_a_connection(driver):
    driver.authorize()
    driver.idp.redirect("GET", "/jwks", "http://10.0.0.1/keys")
    refused_reauthorization(driver)


# -- point 2: outbound address policy -----------------------------------------------------------

INTERNAL = {
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "private": "https://internal.test/x",
    "link-local-v6": "https://[fe80::1]/x",
    "unique-local-v6": "https://ula.test/x",
}
INTERNAL_NAMES = {"internal.test": "10.0.0.1", "ula.test": "fd00::1"}


@pytest.mark.parametrize("target", INTERNAL.values(), ids=INTERNAL.keys())
def test_a_discovery_redirect_to_an_internal_address_is_refused_without_a_connection(
    driver, resolve, target
):
    resolve(INTERNAL_NAMES)
    driver.idp.redirect("GET", "/.well-known/openid-configuration", target)
    response = driver.save(
        **driver.generic_fields(
            idp_authorization_endpoint="", idp_token_endpoint="", idp_jwks_uri=""
        )
    )
    assert response.status_code == 422


@pytest.mark.parametrize("target", INTERNAL.values(), ids=INTERNAL.keys())
def test_a_userinfo_redirect_to_an_internal_address_is_refused_without_a_connection(
    driver, resolve, target
):
    resolve(INTERNAL_NAMES)
    hostile = driver.idp
    driver.authorize(**driver.generic_fields(idp_userinfo_endpoint=f"{hostile.url}/userinfo"))
    before = driver.rows()
    hostile.claims.update(email=DROP, email_verified=DROP)  # the address must come from userinfo
    hostile.redirect("GET", "/userinfo", target)
    outcome = driver.callback(driver.reauthorize())
    assert outcome.refused
    assert driver.unchanged(before, driver.rows())


@pytest.mark.parametrize("host", ["internal.test", "169.254.169.254", "[fe80::1]", "ula.test"])
def test_endpoints_on_internal_addresses_are_never_connected_to(driver, resolve, host):
    resolve(INTERNAL_NAMES)
    url = f"https://{host}"
    response = driver.save(
        **driver.generic_fields(
            idp_issuer=url,
            idp_authorization_endpoint=f"{url}/authorize",
            idp_token_endpoint=f"{url}/token",
            idp_jwks_uri=f"{url}/jwks",
        )
    )
    if response.status_code == 303:  # refused at save, or at the code exchange below
        outcome = driver.callback(driver._query(response))
        assert outcome.refused


def test_a_discovery_error_does_not_echo_what_the_target_returned(driver):
    marker = "INTERNAL-CONTENT-7f3a9c"
    driver.idp.discovery.update(issuer=marker)
    response = driver.save(
        **driver.generic_fields(
            idp_authorization_endpoint="", idp_token_endpoint="", idp_jwks_uri=""
        )
    )
    assert response.status_code == 422
    assert marker not in response.get_data(as_text=True)


# -- point 3 (and 14): malformed token answers ---------------------------------------------------

MALFORMED = {
    "expires_in abc": {"expires_in": "abc"},
    "expires_in 3600.0 string": {"expires_in": "3600.0"},
    "expires_in NaN": {"expires_in": math.nan},
    "expires_in Infinity": {"expires_in": math.inf},
    "expires_in list": {"expires_in": [1]},
    "expires_in 1e308": {"expires_in": 1e308},
    "expires_in 2**64": {"expires_in": 2**64},
    "access_token number": {"access_token": 12345},
    "access_token list": {"access_token": ["a", "b"]},
    "access_token object": {"access_token": {"t": "x"}},
    "refresh_token number": {"refresh_token": 67890},
    "refresh_token list": {"refresh_token": ["r"]},
    "scope number": {"scope": 42},
    "token_type mac": {"token_type": "mac"},
    "token_type missing value": {"token_type": ""},
    "body over 1 MiB": {"padding": "x" * (MIB + 10)},
}


@pytest.mark.parametrize("tweak", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_token_answer_is_refused_on_the_callback(driver, tweak):
    driver.authorize()
    driver.idp.on("POST", "/token", tweak=tweak)
    refused_reauthorization(driver)


@pytest.mark.parametrize("tweak", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_token_answer_is_refused_on_refresh(driver, tweak):
    driver.authorize()
    driver.idp.on("POST", "/token", tweak=tweak)
    assert_refused_refresh(driver)


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer"])
def test_bearer_is_accepted_in_any_case(driver, token_type):
    driver.authorize()
    driver.idp.on("POST", "/token", tweak={"token_type": token_type})
    outcome = driver.callback(driver.reauthorize())
    assert outcome.kind == "success", outcome.text


NOT_JSON = {
    "text": b"<html>upstream proxy error</html>",
    "nul bytes": b'{"access_token": "a\x00b", \x00\x00}',
    "json array": b'["access_token"]',
    "json string": b'"access_token"',
    "huge non-json": b"\x00" * (2 * MIB),
}


@pytest.mark.parametrize("body", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_a_200_that_is_not_a_token_answer_is_refused_and_not_called_http_502(driver, body):
    driver.authorize()
    driver.idp.on("POST", "/token", body=body)
    assert "HTTP 502" not in refused_reauthorization(driver)
    assert_refused_refresh(driver)


@pytest.mark.parametrize("host_config", [{"MAILOAUTH_HTTP_TIMEOUT": 1}])
def test_a_slow_trickling_answer_never_costs_a_500_or_the_lease(driver):
    driver.authorize()
    driver.idp.on("POST", "/token", tweak={"expires_in": "abc"}, trickle=(0.2, 5))
    assert_refused_refresh(driver)


# -- point 4: PostgreSQL takes whatever the IdP says ---------------------------------------------

ERRORS = {
    "100-char error": {"error": "e" * 100, "error_description": "too long a code"},
    "NUL in description": {"error": "invalid_request", "error_description": "bad\x00thing"},
    "NUL in error": {"error": "invalid\x00request"},
    "control characters": {"error": "server_error", "error_description": "a\r\nb\x1b[31mc\x7f"},
    "huge description": {"error": "server_error", "error_description": "d" * 100_000},
    "error not a string": {"error": ["x"], "error_description": {"a": 1}},
}


@pytest.mark.parametrize("status", [400, 503])
@pytest.mark.parametrize("body", ERRORS.values(), ids=ERRORS.keys())
def test_any_error_answer_is_shown_and_recorded(driver, body, status):
    driver.authorize()
    driver.idp.on("POST", "/token", status=status, json=body)
    refused_reauthorization(driver)
    failures = driver.rows()[0]["failure_count"]
    assert_refused_refresh(driver)
    row = driver.rows()[0]
    assert row["failure_count"] >= failures + 1, "the refresh failure was not recorded"
    for column in ("last_error_code", "last_error"):
        assert "\x00" not in (row[column] or "")


OUTSIDE_STRINGS = {
    "40-char token_type": {"tweak": {"token_type": "Bearer" + "x" * 34}},
    "300-char sub": {"claims": {"sub": "s" * 300}},
    "300-char aud": {"claims": {"aud": [CLIENT_ID, "a" * 300], "azp": CLIENT_ID}},
    "NUL in name": {"claims": {"name": "Sup\x00port"}},
    "NUL in sub": {"claims": {"sub": "sub\x00ject"}},
    "NUL in scope": {"tweak": {"scope": "openid email offline_access \x00x"}},
    "huge scope": {"tweak": {"scope": "openid email offline_access " + "s " * 50_000}},
}


@pytest.mark.parametrize("case", OUTSIDE_STRINGS.values(), ids=OUTSIDE_STRINGS.keys())
def test_strings_from_outside_are_stored_normalised_or_refused(driver, case):
    hostile = driver.idp
    driver.authorize()
    before = driver.rows()
    hostile.claims.update(case.get("claims", {}))
    if "tweak" in case:
        hostile.on("POST", "/token", tweak=case["tweak"])
    outcome = driver.callback(driver.reauthorize())
    if outcome.refused:
        assert driver.unchanged(before, driver.rows())
    for row in driver.rows():
        for name, value in row.items():
            if isinstance(value, str):
                assert "\x00" not in value, name
    if "tweak" not in case:
        return
    if outcome.refused:
        assert_refused_refresh(driver)
    else:
        attempt_refresh(driver)


# -- point 5: identity only from verified claims -------------------------------------------------


def microsoft(driver: Driver, tenant: str = "common") -> None:
    """Authorize a Microsoft account once (a good sign-in), tenant as given."""
    driver.idp.issuer = f"{driver.idp.url}/{TENANT}/v2.0"
    driver.idp.claims.update(preferred_username="support@example.test", tid=TENANT, email=DROP)
    driver.idp.scope = MICROSOFT_GRANTED
    driver.authorize("microsoft", **driver.microsoft_fields(tenant))


def refused_microsoft_sign_in(driver: Driver, tid: str, **claims) -> str:
    before = driver.rows()
    driver.idp.issuer = f"{driver.idp.url}/{tid}/v2.0"
    driver.idp.claims.update(tid=tid, **claims)
    outcome = driver.callback(driver.reauthorize())
    assert outcome.refused, f"accepted: {outcome.text}"
    assert driver.unchanged(before, driver.rows())
    return outcome.text


def test_microsoft_another_tenants_user_with_our_address_as_email_is_refused(driver):
    microsoft(driver)
    text = refused_microsoft_sign_in(
        driver,
        OTHER_TENANT,
        preferred_username="mallory@attacker.test",
        email="support@example.test",
    )
    assert "xms_edov" in text or "Tenant" in text  # the refusal says how to fix it


def test_microsoft_unique_name_never_matches(driver):
    microsoft(driver)
    refused_microsoft_sign_in(
        driver, OTHER_TENANT, preferred_username=DROP, unique_name="support@example.test"
    )


def test_microsoft_a_verified_email_matches(driver):
    microsoft(driver)
    driver.idp.issuer = f"{driver.idp.url}/{OTHER_TENANT}/v2.0"
    driver.idp.claims.update(
        tid=OTHER_TENANT,
        preferred_username="guest@partner.test",
        email="support@example.test",
        xms_edov=True,
    )
    assert driver.callback(driver.reauthorize()).kind == "success"


def test_microsoft_pinned_tenant_by_id_refuses_another_tenant(driver):
    microsoft(driver, TENANT)
    refused_microsoft_sign_in(driver, OTHER_TENANT, preferred_username="support@example.test")


def test_microsoft_pinned_tenant_by_domain_refuses_another_tenant(driver):
    driver.idp.tenant_domains["example.test"] = TENANT  # what the domain's discovery names
    microsoft(driver, "example.test")
    refused_microsoft_sign_in(driver, OTHER_TENANT, preferred_username="support@example.test")


GENERIC_UNVERIFIED = {
    "email_verified false": {"email_verified": False},
    "email_verified missing": {"email_verified": DROP},
    "email_verified string": {"email_verified": "yes"},
    "preferred_username only": {
        "email": DROP,
        "email_verified": DROP,
        "preferred_username": "support@example.test",
    },
}


@pytest.mark.parametrize("claims", GENERIC_UNVERIFIED.values(), ids=GENERIC_UNVERIFIED.keys())
def test_generic_identity_only_from_a_verified_email(driver, claims):
    driver.authorize()
    driver.idp.claims.update(claims)
    before = driver.rows()
    outcome = driver.callback(driver.reauthorize())
    assert outcome.refused, outcome.text
    assert driver.unchanged(before, driver.rows())


LOOKALIKES = {
    "trailing space": "support@example.test ",
    "leading tab": "\tsupport@example.test",
    "newline": "support@example.test\n",
    "long s folds to s": "\u017fupport@example.test",
    "NUL": "support@example.test\x00",
    "fullwidth at": "support\uff20example.test",
}


@pytest.mark.parametrize("email", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_lookalike_addresses_never_match(driver, email):
    driver.authorize()
    driver.idp.claims.update(email=email)
    before = driver.rows()
    outcome = driver.callback(driver.reauthorize())
    assert outcome.refused, outcome.text
    assert driver.unchanged(before, driver.rows())


def test_ascii_case_differences_still_match(driver):
    driver.authorize()
    driver.idp.claims.update(email="SUPPORT@Example.TEST")
    assert driver.callback(driver.reauthorize()).kind == "success"


# -- point 6: protocol strictness ----------------------------------------------------------------

ID_TOKENS = {
    "several audiences, no azp": {"aud": [CLIENT_ID, "other-app"]},
    "several audiences, azp of another": {"aud": [CLIENT_ID, "other-app"], "azp": "other-app"},
    "wrong audience": {"aud": "other-app"},
    "another issuer": {"iss": "http://127.0.0.1:1/evil"},
    "expired": {"exp": 1, "iat": 0},
    "no exp": {"exp": DROP},
    "wrong nonce": {"nonce": "forged"},
}


@pytest.mark.parametrize("claims", ID_TOKENS.values(), ids=ID_TOKENS.keys())
def test_an_id_token_that_does_not_hold_is_refused(driver, claims):
    driver.authorize()
    driver.idp.claims.update(claims)
    before = driver.rows()
    assert driver.callback(driver.reauthorize()).refused
    assert driver.unchanged(before, driver.rows())


SIGNATURES = {
    "alg none": {"alg": "none"},
    "HS256 with the client secret": {"alg": "HS256"},
    "unpublished key": {"key": "unpublished"},
    "unpublished key, unknown kid": {"key": "unpublished", "kid": "k9"},
}


@pytest.mark.parametrize("how", SIGNATURES.values(), ids=SIGNATURES.keys())
def test_an_id_token_not_signed_by_a_published_key_is_refused(driver, how):
    hostile = driver.idp
    driver.authorize()
    before = driver.rows()
    query = driver.reauthorize()
    options = dict(how)
    if options.get("key") == "unpublished":
        options["key"] = hostile.unpublished_key
    hostile.on("POST", "/token", tweak={"id_token": hostile.id_token(**options)})
    assert driver.callback(query).refused
    assert driver.unchanged(before, driver.rows())


def test_several_audiences_with_our_azp_are_accepted(driver):
    driver.authorize()
    driver.idp.claims.update(aud=[CLIENT_ID, "other-app"], azp=CLIENT_ID)
    assert driver.callback(driver.reauthorize()).kind == "success"


def discovered(driver: Driver) -> None:
    """Authorize an account whose endpoints come from discovery advertising RFC 9207."""
    driver.idp.discovery.update(authorization_response_iss_parameter_supported=True)
    fields = driver.generic_fields(
        idp_authorization_endpoint="", idp_token_endpoint="", idp_jwks_uri=""
    )
    outcome = driver.callback(driver.start(**fields), iss=driver.idp.url)
    assert outcome.kind == "success", outcome.text


def test_a_missing_iss_is_refused_when_discovery_advertises_rfc9207(driver):
    discovered(driver)
    before = driver.rows()
    assert driver.callback(driver.reauthorize()).refused
    assert driver.unchanged(before, driver.rows())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("idp_token_endpoint", "/token\r\nX-Injected: 1"),
        ("idp_authorization_endpoint", "/author\nize"),
        ("idp_jwks_uri", "/jw\tks"),
        ("idp_scopes", "openid email offline_access\r\nX-Injected: 1"),
        ("idp_scopes", "openid\x00email offline_access"),
    ],
)
def test_control_characters_in_endpoints_and_scopes_are_refused_at_save(driver, field, value):
    if value.startswith("/"):
        value = driver.idp.url + value
    response = driver.save(**driver.generic_fields(**{field: value}))
    assert response.status_code == 422


def test_a_pasted_endpoint_is_trimmed_of_its_line_break_not_stored_with_it(driver):
    """Around a value, a line break is what copy and paste adds: trimmed; inside, refused."""
    response = driver.save(
        **driver.generic_fields(idp_authorization_endpoint=f"{driver.idp.url}/authorize\n")
    )
    assert response.status_code != 422
    assert driver.account_config()["authorization_endpoint"] == f"{driver.idp.url}/authorize"


# -- point 8: partial consent --------------------------------------------------------------------


def test_a_grant_without_offline_access_is_refused_naming_it(driver):
    """Offline access is proven by a refresh token (Microsoft and oidc-provider leave
    ``offline_access`` out of the granted scope while sending one): a grant without either is
    refused, naming the scope."""
    driver.authorize()
    driver.idp.on("POST", "/token", tweak={"scope": "openid email", "refresh_token": DROP})
    assert "offline_access" in refused_reauthorization(driver)


def test_a_microsoft_grant_without_the_mail_scope_is_refused_naming_it(driver):
    microsoft(driver)
    before = driver.rows()
    driver.idp.on("POST", "/common/oauth2/v2.0/token", tweak={"scope": "openid profile email"})
    outcome = driver.callback(driver.reauthorize())
    assert outcome.refused, outcome.text
    assert "IMAP.AccessAsUser.All" in outcome.text
    assert driver.unchanged(before, driver.rows())


# -- point 10: a slow success never loses the grant ----------------------------------------------


def wait_for(probe, seconds: float):
    """Poll ``probe`` until it returns something true; that value."""
    deadline = time.monotonic() + seconds
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
    return value


@pytest.mark.parametrize(
    "host_config", [{"MAILOAUTH_HTTP_TIMEOUT": 1, "MAILOAUTH_LOCK_TIMEOUT": 30}]
)
def test_a_slow_rotation_longer_than_the_lease_never_loses_the_grant(driver, make_host):
    """The IdP rotates, then drips a header line every 0.5 s for longer than the lease; a second
    worker (another host on the same database) comes once the lease is over. Whatever happens,
    the refresh token the IdP delivered (or, if none was, the one still valid) is stored."""
    hostile = driver.idp
    driver.authorize()
    lease = 2 * 1 + 5  # the lease today: the IdP drips for 1.5 s longer
    hostile.once("POST", "/token", drip=(0.5, int((lease + 1.5) / 0.5)))
    driver.make_due()
    first: list[object] = []
    worker = threading.Thread(target=lambda: first.append(driver.access_token()))
    worker.start()
    lease_until = wait_for(driver.lease_until, 5)
    wait_for(lambda: driver.lease_until() is None or utcnow() > lease_until, lease + 5)
    time.sleep(1.1)  # the IdP notices a caller that hung up at its next header line
    second = driver.access_token_of(make_host(db_url=driver.db_url, MAILOAUTH_HTTP_TIMEOUT=1))
    worker.join(30)
    assert not worker.is_alive()
    for result in (first[0], second):
        assert isinstance(result, str | MailOAuthError), repr(result)
    assert driver.lease() is None
    assert not hostile.refresh_token_lost(driver.stored_refresh_token()), (
        "the IdP delivered a rotated refresh token that the product did not store"
    )
    row = driver.rows()[0]
    assert row["status"] != "reauthorization_required", row["last_error"]
    assert driver.stored_refresh_token() == hostile.valid_refresh, "the stored grant is dead"
    assert driver.refresh_now().kind == "success"
    assert not hostile.refresh_token_lost(driver.stored_refresh_token())


def test_a_good_refresh_stores_the_rotated_token(driver):
    driver.authorize()
    result, outcome = attempt_refresh(driver)
    assert isinstance(result, str)
    assert outcome.kind == "success"
    assert not driver.idp.refresh_token_lost(driver.stored_refresh_token())
    assert driver.idp.rotations == 3  # code exchange, access_token(), "Refresh now"
