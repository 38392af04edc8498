"""Arbitrary token-endpoint JSON through the callback and the refresh, on both databases.

Whatever the hostile IdP answers (any JSON type in any field, huge, unicode, NUL): never a 500,
``access_token()`` raises nothing but ``MailOAuthError``, the refresh lease is always released,
and an answer the product refuses leaves the stored grant as it was. One host per database;
each example starts from the same stored credential.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_mailoauth.errors import MailOAuthError
from flask_mailoauth.state import state
from peers.hostile import DROP

from .hostile_driver import Driver, attempt_refresh

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    # one host per database for all examples; each example resets what it changes
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", "\x00", "a\x00b", "x" * 300, "Bearer", "bearer", "\r\n", "\u202e", "\U0001f600"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
FIELDS = ("access_token", "refresh_token", "token_type", "expires_in", "scope", "id_token")
#: each field: left as the IdP would send it, removed, or anything at all
ANSWER = st.fixed_dictionaries(
    {name: st.just(None) | st.just(DROP) | JSON for name in FIELDS},
    optional={"error": JSON, "error_description": JSON, "extra": JSON},
).map(lambda d: {k: v for k, v in d.items() if v is not None})


def _table(d: Driver) -> sa.Table:
    return state().models.Credential.__table__


def snapshot(d: Driver) -> dict[str, Any]:
    """The stored credential row (typed values), to restore before each example."""
    with d.host.app.app_context(), d.host.db.engine.connect() as conn:
        return dict(conn.execute(_table(d).select()).mappings().one())


def restore(d: Driver, row: dict[str, Any]) -> None:
    """Put the credential row back as it was and forget the process cache."""
    with d.host.app.app_context():
        with d.host.db.engine.begin() as conn:
            conn.execute(_table(d).delete())
            conn.execute(_table(d).insert().values(**row))
        state().cache.clear()


@SETTINGS
@given(answer=ANSWER)
def test_any_token_answer_on_the_callback(driver, answer):
    if not driver.rows():
        driver.authorize()
    before = driver.rows()
    driver.idp.on("POST", "/token", tweak=answer)
    outcome = driver.callback(driver.reauthorize())
    if outcome.refused:
        assert driver.unchanged(before, driver.rows())
    driver.idp.on("POST", "/token")


@SETTINGS
@given(answer=ANSWER, status=st.sampled_from([200, 200, 200, 400, 401, 500, 503]))
def test_any_token_answer_on_refresh(driver, answer, status):
    if driver.baseline is None:
        driver.authorize()
        driver.baseline = snapshot(driver)
    restore(driver, driver.baseline)
    driver.idp.on("POST", "/token", status=status, tweak=answer)
    result, _ = attempt_refresh(driver)  # checks the lease and the grant
    assert isinstance(result, str | MailOAuthError), repr(result)
