"""Whatever arrives at the callback or the save endpoint, the answer is never a 500."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .flow_steps import MODAL, csrf, start
from .oauth_fakes import GENERIC_CONFIG, FakeIdP

text = st.text(max_size=80)
params = st.dictionaries(
    st.sampled_from(["state", "code", "error", "error_description", "iss", "session_state", "x"]),
    text,
    max_size=6,
)
fields = st.dictionaries(
    st.sampled_from(
        [
            "provider",
            "enabled",
            "name",
            "strict_matching",
            "notes",
            "client_secret",
            "secret_expires_on",
            *GENERIC_CONFIG,
        ]
    ),
    text,
    max_size=12,
)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def idp():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeIdP(mock)


@SETTINGS
@given(query=params, raw=st.text(max_size=120))
def test_callback_never_fails_with_a_server_error(host, idp, query, raw):
    client = host.app.test_client()
    assert client.get("/mailoauth/callback?" + urlencode(query)).status_code < 500
    assert client.get("/mailoauth/callback?" + raw).status_code < 500


@SETTINGS
@given(query=params)
def test_callback_with_a_real_state_and_random_rest_never_fails(host, idp, query):
    client = host.app.test_client()
    state = start(client)["state"]
    assert (
        client.get("/mailoauth/callback?" + urlencode({**query, "state": state})).status_code < 500
    )


@SETTINGS
@given(body=fields, with_token=st.booleans())
def test_save_never_fails_with_a_server_error(host, idp, body, with_token):
    client = host.app.test_client()
    data = {**body, "csrf_token": csrf(client)} if with_token else body
    response = client.post(MODAL, data=data)
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
