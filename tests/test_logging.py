"""Issue 12 point 15: the extension's warnings reach a host's ``app.logger`` handlers or its root
logging, one line each, never twice."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import requests
import responses
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_mailoauth import MailOAuth
from flask_mailoauth.errors import TemporarilyUnavailable
from tests.oauth_fakes import TokenEndpoint
from tests.stored import store_account

WARNING = "Token endpoint https://idp.example.test/token unreachable: ConnectionError"


@pytest.fixture
def idp() -> Iterator[TokenEndpoint]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield TokenEndpoint(mock)


@pytest.fixture
def sink() -> Iterator[tuple[logging.Handler, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    yield handler, stream
    handler.close()


def unreachable_refresh(host, idp: TokenEndpoint) -> None:
    """A refresh while the IdP is down: the extension logs its warning."""
    store_account(host)
    idp.answers.append(("raise", requests.ConnectionError("down")))
    with host.app.app_context(), pytest.raises(TemporarilyUnavailable):
        host.ext.refresh("support")


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if "unreachable" in line]


def test_a_host_that_configures_app_logger_sees_the_warning_once(make_host, db_url, idp, sink):
    host = make_host(db_url=db_url)
    handler, stream = sink
    host.app.logger.addHandler(handler)
    unreachable_refresh(host, idp)
    assert lines(stream) == [f"WARNING flask_mailoauth: {WARNING}"]


def test_a_host_that_configures_root_logging_sees_the_warning_once(make_host, db_url, idp, sink):
    host = make_host(db_url=db_url)
    handler, stream = sink
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        unreachable_refresh(host, idp)
    finally:
        root.removeHandler(handler)
    assert lines(stream) == [f"WARNING flask_mailoauth: {WARNING}"]


def test_one_handler_on_both_app_logger_and_root_writes_once(make_host, db_url, idp, sink):
    host = make_host(db_url=db_url)
    handler, stream = sink
    host.app.logger.addHandler(handler)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        unreachable_refresh(host, idp)
    finally:
        root.removeHandler(handler)
    assert len(lines(stream)) == 1


def test_an_app_logger_level_above_warning_keeps_it_out(make_host, db_url, idp, sink):
    host = make_host(db_url=db_url)
    handler, stream = sink
    host.app.logger.addHandler(handler)
    host.app.logger.setLevel(logging.ERROR)
    unreachable_refresh(host, idp)
    assert lines(stream) == []


def test_the_missing_key_warning_of_init_app_reaches_app_logger(sink):
    """The warning of ``init_app`` itself, before any request, reaches app.logger too."""
    app = Flask("keyless")
    app.config.update(SECRET_KEY="x", SQLALCHEMY_DATABASE_URI="sqlite://")
    handler, stream = sink
    app.logger.addHandler(handler)
    MailOAuth(app, db=SQLAlchemy(app))
    warned = [line for line in stream.getvalue().splitlines() if "ENCRYPTION_KEYS" in line]
    assert len(warned) == 1
    assert warned[0].startswith("WARNING flask_mailoauth: MAILOAUTH_ENCRYPTION_KEYS is not set")
