"""Running the extension's commands and reading its health and rows, as the tests do."""

from __future__ import annotations

import sqlalchemy as sa
from flask.cli import ScriptInfo

from flask_mailoauth.models import own_session


def run(host, *args):
    runner = host.app.test_cli_runner()
    return runner.invoke(args=["mailoauth", *args], obj=ScriptInfo(create_app=lambda: host.app))


def health(host):
    with host.app.app_context():
        return {(h.key, h.purpose): h for h in host.ext.health()}


def update(host, model, **values):
    st = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st.db) as s:
        row = s.scalars(sa.select(getattr(st.models, model))).first()
        for name, value in values.items():
            setattr(row, name, value)
