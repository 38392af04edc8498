"""Issue 13 point 2: one vocabulary, whose values are the strings already stored (no migration)."""

from __future__ import annotations

import json

import sqlalchemy as sa

from flask_mailoauth.errors import FailureKind as ErrorsFailureKind
from flask_mailoauth.providers import registry
from flask_mailoauth.providers.base import Provider
from flask_mailoauth.settings import PURPOSES
from flask_mailoauth.testing import seed_account
from flask_mailoauth.vocabulary import (
    AccessKind,
    ClientAuth,
    CredentialStatus,
    EventKind,
    EventLevel,
    FailureKind,
)


def test_the_stored_values_are_the_ones_rows_already_hold():
    assert [s.value for s in CredentialStatus] == [
        "active",
        "retrying",
        "reauthorization_required",
        "configuration_error",
        "not_authorized",
    ]
    assert [k.value for k in FailureKind] == ["transient", "reauthorize", "configuration"]
    assert [k.value for k in EventKind] == [
        "authorized",
        "authorization_failed",
        "config_saved",
        "refreshed",
        "refresh_failed",
        "token_deleted",
        "reconsent_link_created",
        "certificate_switched",
    ]
    assert [lv.value for lv in EventLevel] == ["info", "warning", "error"]
    assert ErrorsFailureKind is FailureKind


def test_a_status_written_as_a_member_is_stored_as_its_plain_value(make_host, db_url):
    """Both drivers store the value, not the member's name, and read back a plain string that
    equals the member."""
    h = make_host(db_url=db_url)
    with h.app.app_context():
        seed_account("support", status=CredentialStatus.RETRYING)
        m = h.app.extensions["mailoauth"].models
        with h.db.engine.connect() as conn:
            stored = conn.execute(sa.select(m.Credential.__table__.c.status)).scalar_one()
    assert type(stored) is str
    assert stored == "retrying" == CredentialStatus.RETRYING
    result = h.app.test_cli_runner().invoke(args=["mailoauth", "status", "--json"])
    assert json.loads(result.output)[0]["status"] == "retrying"


def test_the_cli_offers_the_purposes_of_the_one_list(host):
    runner = host.app.test_cli_runner()
    result = runner.invoke(args=["mailoauth", "refresh", "x", "--purpose", "other"])
    assert result.exit_code == 2
    for purpose in PURPOSES:
        assert repr(purpose) in result.output


def test_the_config_signature_is_the_providers():
    """It changes with a signed field, not with another one."""
    provider = registry.get("generic")
    config = provider.defaults() | {"client_id": "c"}
    [unsigned, *_] = [f.name for f in provider.fields if not f.signed]
    signature = provider.config_signature(config)
    assert provider.config_signature(config | {unsigned: "other"}) == signature
    assert provider.config_signature(config | {"client_id": "d"}) != signature


def test_a_provider_reads_its_access_and_client_auth_falling_back_to_its_default():
    """Issue 15 point 6: the stored ``access`` and ``client_auth`` values count only when the
    provider declares them; anything else (missing, unknown, unsupported) is the default."""

    class Both(Provider):
        id = "both"
        display_name = "Both"
        access_kinds = (AccessKind.DELEGATED, AccessKind.APPLICATION)
        client_auths = (ClientAuth.SECRET_BASIC, ClientAuth.NONE)

    p = Both()
    assert p.access({}) is AccessKind.DELEGATED
    assert p.access({"access": " application "}) is AccessKind.APPLICATION
    assert p.access({"access": "service_account"}) is AccessKind.DELEGATED
    assert p.client_auth({"client_auth": "none"}) is ClientAuth.NONE
    assert p.client_auth({"client_auth": "client_secret_post"}) is ClientAuth.SECRET_BASIC
    assert p.client_auth({"client_auth": 'none"'}) is ClientAuth.SECRET_BASIC
    assert [a.value for a in ClientAuth] == [
        "none",
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ]
