"""The helpdesk's own admin login: a session cookie holding the admin's id."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from flask import Flask, abort, flash, redirect, render_template, request, session, url_for
from flask_wtf.csrf import generate_csrf
from werkzeug.wrappers import Response

from .extensions import db
from .forms import ActionForm, LoginForm
from .models import Admin

SEEDED_ADMIN = "admin@example.test"


def current_admin() -> Admin | None:
    admin_id = session.get("admin_id")
    return db.session.get(Admin, admin_id) if isinstance(admin_id, int) else None


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_admin() is None:
            return redirect(url_for("login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped


def _local(url: str | None) -> str | None:
    """``url`` when it is a path on this site, so ``?next=`` cannot redirect elsewhere."""
    if url and url.startswith("/") and not url.startswith("//") and "\\" not in url:
        return url
    return None


def login() -> str | Response:
    form = LoginForm()
    if form.validate_on_submit():
        admin = db.session.execute(
            db.select(Admin).filter_by(email=form.email.data.strip().lower())
        ).scalar_one_or_none()
        if admin is not None and admin.check_password(form.password.data):
            session.clear()  # a fresh session on login: no fixation
            session["admin_id"] = admin.id
            return redirect(_local(request.args.get("next")) or url_for("dashboard"), code=303)
        flash("Wrong email address or password.", "error")
    return render_template("login.html", form=form)


def logout() -> Response:
    if not ActionForm().validate_on_submit():
        abort(400, description="The form expired; reload the page and try again.")
    session.clear()
    flash("You are logged out.", "success")
    return redirect(url_for("login"), code=303)


def seed_admin() -> None:
    """Create the demo admin unless there is one; its password comes from the environment."""
    if db.session.execute(db.select(Admin).limit(1)).first() is None:
        admin = Admin(email=SEEDED_ADMIN)
        admin.set_password(os.environ.get("HELPDESK_ADMIN_PASSWORD", "admin"))
        db.session.add(admin)
        db.session.commit()


def init_app(app: Flask) -> None:
    app.add_url_rule("/login", "login", login, methods=["GET", "POST"])
    app.add_url_rule("/logout", "logout", logout, methods=["POST"])
    app.jinja_env.globals["current_admin"] = current_admin
    app.jinja_env.globals["csrf_token"] = generate_csrf
