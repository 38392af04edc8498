"""The models on the host's db: tables, UTC datetimes, secrets at rest, our own transactions."""

from __future__ import annotations

import ast
import inspect
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from flask_sqlalchemy import SQLAlchemy

from flask_mailoauth import models
from flask_mailoauth.crypto import KeyRing, generate_key, parse_key
from flask_mailoauth.errors import DecryptionError
from flask_mailoauth.models import own_session
from flask_mailoauth.testing import seed_account

from .conftest import TEST_KEY

SECRETS = {"client": "client-secret-value", "access": "access-token-value", "refresh": "rt-value"}


def add_account(host, key="support", purpose="mailbox"):
    """Store an account with a client secret and credentials, as the callback would."""
    with host.app.app_context():
        seed_account(
            key,
            purpose,
            address=f"{key}@example.test",
            config={"client_id": "app"},
            client_secret=SECRETS["client"],
            access_token=SECRETS["access"],
            refresh_token=SECRETS["refresh"],
        )


@pytest.fixture
def db_host(make_host, db_url):
    return make_host(db_url=db_url)


def test_tables_are_prefixed_and_seen_by_alembic_autogenerate(make_host, tmp_path):
    host = make_host()
    names = {t for t in host.db.metadata.tables if t.startswith("mailoauth_")}
    assert names == {
        "mailoauth_account",
        "mailoauth_credential",
        "mailoauth_pending",
        "mailoauth_reconsent",
        "mailoauth_event",
        "mailoauth_notice",
    }
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), host.db.metadata)
    added = {d[1].name for d in diff if d[0] == "add_table"}
    assert names <= added
    engine.dispose()


def test_round_trip_with_utc_datetimes_and_cascade(db_host):
    add_account(db_host)
    st = db_host.app.extensions["mailoauth"]
    with db_host.app.app_context(), own_session(st.db) as s:
        account = s.scalars(sa.select(st.models.Account)).one()
        assert account.strict_matching is True
        assert account.enabled is True
        assert account.created_at.tzinfo is UTC
        assert account.credential.expires_at.tzinfo is UTC
        assert (
            st.keyring.decrypt(
                account.credential.refresh_token, aad=account.credential.aad("refresh_token")
            )
            == SECRETS["refresh"]
        )
        s.add(st.models.Event(account_id=account.id, kind="authorized", message="ok"))
        s.add(st.models.Notice(account_id=account.id, condition="secret_expired"))
    with db_host.app.app_context(), own_session(st.db) as s:
        s.delete(s.scalars(sa.select(st.models.Account)).one())
    with db_host.app.app_context(), own_session(st.db) as s:
        for model in (st.models.Credential, st.models.Event, st.models.Notice):
            assert s.scalars(sa.select(model)).all() == []


def test_key_and_purpose_are_unique(db_host):
    add_account(db_host)
    with pytest.raises(sa.exc.IntegrityError):
        add_account(db_host)
    add_account(db_host, purpose="smtp")


def test_naive_datetimes_are_refused(host):
    st = host.app.extensions["mailoauth"]
    add_account(host)
    with (
        host.app.app_context(),
        pytest.raises(sa.exc.StatementError, match="timezone-aware"),
        own_session(st.db) as s,
    ):
        s.scalars(sa.select(st.models.Credential)).one().expires_at = datetime(2030, 1, 1)
    with host.app.app_context(), own_session(st.db) as s:
        cred = s.scalars(sa.select(st.models.Credential)).one()
        cred.expires_at = datetime(2030, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    with host.app.app_context(), own_session(st.db) as s:
        stored = s.scalars(sa.select(st.models.Credential)).one().expires_at
        assert stored == datetime(2030, 1, 1, 0, tzinfo=UTC)


def test_raw_database_holds_no_plaintext_secret(db_host):
    add_account(db_host)
    st = db_host.app.extensions["mailoauth"]
    with db_host.app.app_context(), st.db.engine.connect() as conn:
        dump = ""
        for table in st.db.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                dump += repr(tuple(row))
    assert "support@example.test" in dump
    for secret in SECRETS.values():
        assert secret not in dump
        assert secret.encode().hex() not in dump


def test_ciphertext_swapped_between_rows_fails(host):
    add_account(host, "one")
    add_account(host, "two")
    st = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st.db) as s:
        one, two = s.scalars(sa.select(st.models.Account).order_by(st.models.Account.key)).all()
        with pytest.raises(DecryptionError):
            st.keyring.decrypt(one.client_secret, aad=two.aad("client_secret"))
        with pytest.raises(DecryptionError):
            st.keyring.decrypt(one.credential.access_token, aad=one.credential.aad("refresh_token"))


def test_repr_shows_no_secret(host):
    add_account(host)
    st = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st.db) as s:
        account = s.scalars(sa.select(st.models.Account)).one()
        text = repr(account) + repr(account.credential)
    for secret in SECRETS.values():
        assert secret not in text


def test_our_writes_never_commit_the_hosts_pending_changes(host):
    db = host.db

    class Ticket(db.Model):
        id = sa.Column(sa.Integer, primary_key=True)
        subject = sa.Column(sa.String(50))

    with host.app.app_context():
        db.create_all()
        db.session.add(Ticket(subject="half-typed"))
        add_account(host)
        db.session.rollback()
        assert db.session.query(Ticket).count() == 0
        st = host.app.extensions["mailoauth"]
        with own_session(st.db) as s:
            assert s.query(st.models.Account).count() == 1


def test_rotate_key_reencrypts_everything_under_the_new_primary(make_host, tmp_path):
    url = f"sqlite:///{tmp_path / 'rotate.db'}"
    old = make_host(db_url=url)
    add_account(old)
    new_key = generate_key()
    rotated = make_host(db_url=url, MAILOAUTH_ENCRYPTION_KEYS=[new_key, TEST_KEY])
    result = CliRunner().invoke(
        rotated.app.cli, ["mailoauth", "rotate-key"], obj=_script_info(rotated.app)
    )
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 3 secret(s)" in result.output
    only_new = KeyRing([parse_key(new_key)])
    st = rotated.app.extensions["mailoauth"]
    with rotated.app.app_context(), own_session(st.db) as s:
        account = s.scalars(sa.select(st.models.Account)).one()
        assert (
            only_new.decrypt(account.client_secret, aad=account.aad("client_secret"))
            == (SECRETS["client"])
        )
        cred = account.credential
        assert (
            only_new.decrypt(cred.access_token, aad=cred.aad("access_token")) == SECRETS["access"]
        )
    again = CliRunner().invoke(
        rotated.app.cli, ["mailoauth", "rotate-key"], obj=_script_info(rotated.app)
    )
    assert "Re-encrypted 0 secret(s)" in again.output


def _script_info(app):
    from flask.cli import ScriptInfo

    return ScriptInfo(create_app=lambda: app)


def _typed_relationships() -> dict[str, dict[str, str]]:
    """What each mixin tells the type checker about its relationships (its TYPE_CHECKING
    block): mixin name -> relationship name -> annotation source."""
    typed: dict[str, dict[str, str]] = {}
    for node in ast.parse(inspect.getsource(models)).body:
        if not (isinstance(node, ast.ClassDef) and node.name.endswith("Mixin")):
            continue
        for block in node.body:
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING":
                typed[node.name] = {
                    ast.unparse(line.target): ast.unparse(line.annotation)
                    for line in block.body
                    if isinstance(line, ast.AnnAssign)
                }
    return typed


def test_the_relationships_the_type_checker_is_told_are_the_ones_models_for_binds():
    bound = models.models_for(SQLAlchemy())
    typed = _typed_relationships()
    assert set(typed) == {
        "AccountMixin",
        "CredentialMixin",
        "PendingAuthorizationMixin",
        "ReconsentLinkMixin",
    }
    for model in (
        bound.Account,
        bound.Credential,
        bound.PendingAuthorization,
        bound.Event,
        bound.ReconsentLink,
        bound.Notice,
    ):
        mixin = next(c for c in model.__mro__ if c.__name__.endswith("Mixin"))
        relationships = sa.inspect(model).relationships
        declared = typed.get(mixin.__name__, {})
        assert set(relationships.keys()) == set(declared), mixin.__name__
        for name, annotation in declared.items():
            target = getattr(models, re.findall(r"\w+Mixin", annotation)[0])
            assert issubclass(relationships[name].mapper.class_, target), (mixin, name)
            assert relationships[name].uselist == annotation.startswith("Mapped[list["), name
