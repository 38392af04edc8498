"""The helpdesk's pages: the dashboard and Admin Panel > Emails."""

from __future__ import annotations

from flask import Flask, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from flask_mailoauth.errors import MailOAuthError

from .auth import login_required
from .extensions import db, mailoauth
from .fetch import FetchResult, fetch_newest
from .forms import ActionForm, EmailForm
from .models import BASIC, SAME, SystemEmail, auth_label, is_oauth

TABS = {"basic": "Basic", "remote": "Remote Mailbox", "smtp": "Outgoing (SMTP)"}


def _tab(requested: str | None) -> str:
    return requested if requested in TABS else "basic"


def _attention() -> list:
    """Accounts that need the admin (a grant to renew, a secret about to expire, ...)."""
    try:
        return [item for item in mailoauth.health() if item.needs_attention]
    except MailOAuthError as exc:
        flash(f"Could not check the OAuth2 accounts: {exc} {exc.guidance}".strip(), "error")
        return []


@login_required
def dashboard() -> str:
    emails = db.session.execute(db.select(SystemEmail).order_by(SystemEmail.id)).scalars().all()
    return render_template(
        "dashboard.html",
        emails=emails,
        attention=_attention(),
        by_key={e.key: e for e in emails},
        TABS=TABS,
    )


@login_required
def admin_panel() -> str:
    return render_template("admin.html")


@login_required
def emails() -> str:
    rows = db.session.execute(db.select(SystemEmail).order_by(SystemEmail.address)).scalars()
    return render_template("emails.html", emails=rows.all())


@login_required
def email_new() -> ResponseReturnValue:
    form = EmailForm(data={"remote_auth": BASIC, "smtp_auth": SAME, "folder": "INBOX"})
    if form.validate_on_submit():
        email = SystemEmail()
        if _save(email, form):
            flash("Successfully added.", "success")
            return redirect(url_for("email_detail", id=email.id, tab=_tab(form.tab.data)), 303)
    return _render(None, form, status=_status(form))


@login_required
def email_detail(id: int) -> ResponseReturnValue:
    email = db.get_or_404(SystemEmail, id)
    form = EmailForm(obj=email)
    if form.validate_on_submit() and _save(email, form):
        flash("Successfully updated.", "success")
        return redirect(url_for("email_detail", id=email.id, tab=_tab(form.tab.data)), 303)
    return _render(email, form, status=_status(form))


@login_required
def email_fetch(id: int) -> ResponseReturnValue:
    email = db.get_or_404(SystemEmail, id)
    if not ActionForm().validate_on_submit():
        abort(400, description="The form expired; reload the page and try again.")
    return _render(
        email, EmailForm(obj=email, formdata=None), tab="remote", fetch=fetch_newest(email)
    )


def _status(form: EmailForm) -> int:
    """200 for a page view; a refused save says why: 400 for a bad CSRF token, else 422."""
    if request.method != "POST":
        return 200
    return 400 if form.csrf_token.errors else 422


def _save(email: SystemEmail, form: EmailForm) -> bool:
    """Copy the form onto ``email`` and commit; False (with a field error) on a taken address."""
    address = form.address.data.strip().lower()
    taken = db.session.execute(
        db.select(SystemEmail.id).filter_by(address=address).filter(SystemEmail.id != email.id)
    ).first()
    if taken:
        form.address.errors.append("Another system email has this address.")
        return False
    email.address = address
    email.name = form.name.data.strip()
    email.protocol = form.protocol.data
    email.host = (form.host.data or "").strip()
    email.port = form.port.data
    email.security = form.security.data
    email.folder = (form.folder.data or "").strip() or "INBOX"
    email.remote_auth = form.remote_auth.data
    email.smtp_host = (form.smtp_host.data or "").strip()
    email.smtp_port = form.smtp_port.data
    email.smtp_security = form.smtp_security.data
    email.smtp_auth = form.smtp_auth.data
    # Legacy credentials are kept only while Basic Authentication is in use; a blank
    # password field keeps the stored password (it is never rendered back).
    for prefix, auth in (("remote_", email.remote_auth), ("smtp_", email.smtp_auth)):
        username, password = form[f"{prefix}username"].data, form[f"{prefix}password"].data
        if auth != BASIC:
            username, password = "", ""
        elif not password:
            password = getattr(email, f"{prefix}password")
        setattr(email, f"{prefix}username", (username or "").strip())
        setattr(email, f"{prefix}password", password or "")
    db.session.add(email)
    db.session.commit()
    return True


def _render(
    email: SystemEmail | None,
    form: EmailForm,
    *,
    status: int = 200,
    tab: str | None = None,
    fetch: FetchResult | None = None,
) -> ResponseReturnValue:
    tab = tab or form.first_error_tab() or _tab(request.args.get("tab") or form.tab.data)
    form.tab.data = tab
    body = render_template(
        "email.html",
        email=email,
        form=form,
        tab=tab,
        TABS=TABS,
        fetch=fetch,
        oauth_ids=" ".join(c.value for c in form.remote_auth.choices if is_oauth(c.value)),
        BASIC=BASIC,
        is_oauth=is_oauth,
    )
    return body, status


def init_app(app: Flask) -> None:
    app.add_url_rule("/", "dashboard", dashboard)
    app.add_url_rule("/admin", "admin_panel", admin_panel)
    app.add_url_rule("/admin/emails", "emails", emails)
    app.add_url_rule("/admin/emails/new", "email_new", email_new, methods=["GET", "POST"])
    app.add_url_rule(
        "/admin/emails/<int:id>", "email_detail", email_detail, methods=["GET", "POST"]
    )
    app.add_url_rule("/admin/emails/<int:id>/fetch", "email_fetch", email_fetch, methods=["POST"])
    app.jinja_env.globals["auth_label"] = auth_label
