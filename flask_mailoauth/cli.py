"""``flask mailoauth ...``: look at accounts and look after their tokens from a shell or cron."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .extension import state
from .models import SECRET_FIELDS, own_session

mailoauth_cli = AppGroup("mailoauth", help="Manage OAuth2 mail accounts (flask-mailoauth).")


@mailoauth_cli.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every stored secret with the first key of MAILOAUTH_ENCRYPTION_KEYS."""
    st = state()
    tables = {
        st.models.Account: SECRET_FIELDS["mailoauth_account"],
        st.models.Credential: SECRET_FIELDS["mailoauth_credential"],
        st.models.PendingAuthorization: SECRET_FIELDS["mailoauth_pending"],
    }
    changed = 0
    with own_session(st.db) as session:
        for model, fields in tables.items():
            for row in session.query(model).with_for_update():
                for name in fields:
                    blob = getattr(row, name)
                    if blob is not None and not st.keyring.is_primary(blob):
                        plain = st.keyring.decrypt(blob, aad=row.aad(name))
                        setattr(row, name, st.keyring.encrypt(plain, aad=row.aad(name)))
                        changed += 1
    click.echo(f"Re-encrypted {changed} secret(s) with the primary key.")
