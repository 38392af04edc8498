"""The blueprint: the Config modal, save, authorize, callback, delete.

Views are thin: they check access, parse input and call ``accounts`` and ``flow``. A view called
by the modal's script (header ``X-Requested-With: mailoauth``) answers with a fragment or JSON;
the same view without script answers with a page or a redirect, so everything works without JS.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from markupsafe import Markup
from werkzeug.utils import secure_filename
from werkzeug.wrappers import Response as BaseResponse
from wtforms import ValidationError

from . import accounts, connections, flow, i18n, monitoring, notify, reconsent, tokens
from .certificates import ClientCertificate
from .errors import AuthorizationFailed, MailboxNotFound, MailOAuthError, UnknownProvider
from .flashes import flash_category
from .forms import AccountForm, account_form
from .health import CONFIG_CHANGED, STATUS_WORDS, health
from .i18n import gettext, lazy_gettext
from .mail import CheckResult
from .models import utcnow
from .providers import registry
from .settings import PURPOSES, MailboxSettings, Purpose
from .state import MailOAuthState, state
from .vocabulary import EventKind, FlashKind, ReconsentState

logger = logging.getLogger("flask_mailoauth")

blueprint = Blueprint(
    "mailoauth",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

NO_ACCESS_CHECK = (
    "flask-mailoauth has no access check, so every view is refused. Register one with "
    "@mailoauth.access_check on a function that returns True for users allowed to manage "
    "mail OAuth settings."
)
#: the Token tab's words for an event's kind (the codes stay classes; statuses: STATUS_WORDS)
EVENT_LABELS = {
    EventKind.AUTHORIZED: lazy_gettext("authorized"),
    EventKind.AUTHORIZATION_FAILED: lazy_gettext("authorization failed"),
    EventKind.CONFIG_SAVED: lazy_gettext("config saved"),
    EventKind.REFRESHED: lazy_gettext("refreshed"),
    EventKind.REFRESH_FAILED: lazy_gettext("refresh failed"),
    EventKind.TOKEN_DELETED: lazy_gettext("token deleted"),
    EventKind.RECONSENT_LINK_CREATED: lazy_gettext("re-consent link created"),
    EventKind.CERTIFICATE_SWITCHED: lazy_gettext("certificate switched"),
}
#: the names of an IdP's error identifiers (``ProviderFailure.diagnostics``), for people
DIAGNOSTIC_LABELS = {
    "trace_id": lazy_gettext("Trace ID (Request ID)"),
    "correlation_id": lazy_gettext("Correlation ID"),
    "timestamp": lazy_gettext("Timestamp"),
}
SCRIPTED = "mailoauth"
#: the views a re-consent link's holder reaches without the host's access check: the link's
#: page, the start of its authorization, the callback (which demands the access check for any
#: authorization not started from a link) and the page that says how it ended
_OPEN_TO_LINK_HOLDERS = frozenset(
    {
        "mailoauth.reconsent_page",
        "mailoauth.reconsent_start",
        "mailoauth.reconsent_done",
        "mailoauth.callback",
    }
)


#: headers on every page of the blueprint: no framing by another site (the host's own pages may,
#: as the modal is fetched into the host's <dialog>), and nothing kept by caches or history
PAGE_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'self'",
    "X-Frame-Options": "SAMEORIGIN",
    "Cache-Control": "no-store",
}


@blueprint.after_request
def page_headers(response: Response) -> Response:
    """Anti-framing and ``no-store`` on every view; the callback also sends no Referer on."""
    if request.endpoint == "mailoauth.static":
        return response
    response.headers.update(PAGE_HEADERS)
    if request.endpoint == "mailoauth.callback":
        # The callback URL carries the code and state: the next page must not see it.
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


@blueprint.before_request
def require_access() -> None:
    """Every view but the static files is behind the host's ``access_check`` (403 without)."""
    if request.endpoint == "mailoauth.static":
        return
    if request.endpoint == "mailoauth.metrics" and state().config.metrics_token is not None:
        return  # the scraper's bearer token stands in for a user (``metrics`` checks it)
    if request.endpoint in _OPEN_TO_LINK_HOLDERS:
        return  # a re-consent link is the key; the callback checks the rest (``flow.finish``)
    hooks = state().hooks
    if hooks.access_check is None:
        abort(403, description=NO_ACCESS_CHECK)
    if not hooks.may_manage():
        abort(403, description=gettext("You are not allowed to manage mail OAuth settings."))


def _render(template: str, **context: object) -> str:
    """A template of this extension, with its own ``_`` and ``ngettext`` (never the host's)
    and ``lang``, the language its text is in."""
    return render_template(
        template, **i18n.TEMPLATE_FUNCTIONS, lang=i18n.current_language(), **context
    )


def config_button(
    key: str,
    purpose: str = "mailbox",
    provider_select: str | None = None,
    class_: str = "",
    **attrs: str,
) -> Markup:
    """The Config button next to a host's Authentication select (a Jinja global).

    ``provider_select`` is a CSS selector of the host's select whose value names the provider;
    the modal opens for that provider. ``class_`` and ``attrs`` style it the host's way
    (``class_="btn btn-primary"``, ``title=...``; ``data_x`` renders as ``data-x``). The
    script and style sheet are included once per page.
    """
    first = not g.get("_mailoauth_assets")
    g._mailoauth_assets = True
    # render_template autoescapes; Markup only stops the host template escaping it twice.
    return Markup(  # noqa: S704
        _render(
            "mailoauth/config_button.html",
            key=key,
            purpose=purpose,
            provider_select=provider_select,
            class_=class_,
            attrs={name.replace("_", "-"): value for name, value in attrs.items()},
            include_assets=first,
        )
    )


def _scripted() -> bool:
    return request.headers.get("X-Requested-With") == SCRIPTED


def _mailbox(key: str, purpose: str) -> MailboxSettings:
    if purpose not in PURPOSES:
        abort(404)
    try:
        return state().hooks.mailbox(key)
    except MailboxNotFound:
        abort(404, description=gettext("No mailbox %(key)r.", key=key))


def _address(mailbox: MailboxSettings, purpose: str) -> str:
    return mailbox.sender if purpose == "smtp" else mailbox.address


class _NotAnOAuthChoice(UnknownProvider):
    """The host page asked for a provider that is not registered ("basic", a typo)."""

    def __init__(self, wanted: str) -> None:
        super().__init__(f"{wanted!r} is not an OAuth2 provider.")
        self.wanted = wanted


def _requested_provider() -> str | None:
    """The provider the host page (GET) or the modal (POST) asks for, checked to exist."""
    wanted = request.args.get("provider") or request.form.get("provider")
    if wanted:
        try:
            registry.get(wanted)
        except UnknownProvider:
            raise _NotAnOAuthChoice(wanted) from None
    return wanted


@blueprint.errorhandler(_NotAnOAuthChoice)
def not_an_oauth_choice(exc: _NotAnOAuthChoice) -> Response:
    """Config pressed on a non-OAuth choice (the host's "Basic"): a readable dialog to close."""
    html = _render(
        "mailoauth/not_oauth.html",
        wanted=exc.wanted,
        providers=registry.all(),
        failed_plugins=sorted(registry.failed_plugins()),
        standalone=not _scripted(),
        return_url=_host_page(**request.view_args) if request.view_args else "/",
    )
    return Response(html, status=400)


def callback_url() -> str:
    """The Callback Endpoint: configured, or computed from the request (ProxyFix-aware)."""
    return state().config.callback_url or url_for("mailoauth.callback", _external=True)


def _host_page(key: str, purpose: str) -> str:
    """Where Close and Cancel lead without script: the account's host page, never the modal."""
    url = _return_url(key, purpose)
    return "/" if url.startswith(url_for("mailoauth.modal", key=key, purpose=purpose)) else url


@dataclass(frozen=True)
class Notice:
    """The banner above the Token tab after Refresh now: ``kind`` (``success``/``error``), text."""

    kind: str
    text: str


def _token_warnings(view: accounts.AccountView, notice: Notice | None) -> list[str]:
    """The account's warnings the Token tab shows as notices: each once, so none that its rows
    or the notice above already say (the last error, a changed IdP Config when unusable)."""
    t = view.token
    if t is None:
        return view.warnings
    said = notice.text if notice else ""
    hide_config_changed = bool(t.unusable) and not t.signature_current
    return [
        warning
        for warning in view.warnings
        if warning != t.last_error
        and warning not in said
        and not (hide_config_changed and warning == CONFIG_CHANGED)
    ]


def _last_error_shown(view: accounts.AccountView, notice: Notice | None) -> bool:
    """Whether the notice above already says the stored last error (a refusal quotes it as
    stored, so this holds in any language)."""
    last = view.token.last_error if view.token else None
    return bool(last and notice and last in notice.text)


def _render_modal(
    view: accounts.AccountView,
    form: AccountForm,
    status: int = 200,
    notice: Notice | None = None,
    **extra: object,
) -> Response:
    context = {
        "return_url": _host_page(view.key, view.purpose),
        "notice": notice,
        "warnings": _token_warnings(view, notice),
        "last_error_shown": _last_error_shown(view, notice),
        "status_labels": STATUS_WORDS,
        "event_labels": EVENT_LABELS,
        "diagnostic_labels": DIAGNOSTIC_LABELS,
        # a re-consent link can be e-mailed through the notifications' mailbox, if there is one
        "mail_links": state().config.notify.mailbox not in (None, view.key),
        "account": view,
        "failed_plugins": sorted(registry.failed_plugins()),
        "form": form,
        "provider": form.provider,
        "providers": registry.all(),
        "callback_url": callback_url(),
        "provider_changed": view.exists and view.provider != form.provider.id,
        **extra,
    }
    template = "mailoauth/modal.html" if _scripted() else "mailoauth/page.html"
    return Response(_render(template, **context), status=status)


@blueprint.get("/<key>/<purpose>")
def modal(key: str, purpose: str) -> Response:
    """The Config modal (a fragment for the script, a page without it)."""
    mailbox = _mailbox(key, purpose)
    st = state()
    wanted = _requested_provider()
    view = accounts.view(st, key, purpose, _address(mailbox, purpose), wanted)
    provider = registry.get(wanted or view.provider)
    form = account_form(provider, view, formdata=None)
    return _render_modal(view, form, initial_tab=request.args.get("tab"))


@blueprint.post("/<key>/<purpose>")
def save(key: str, purpose: str) -> BaseResponse:
    """Save the modal; go to the IdP when the grant is missing or no longer matches."""
    mailbox = _mailbox(key, purpose)
    _check_csrf()
    st = state()
    address = _address(mailbox, purpose)
    wanted = _requested_provider()
    view = accounts.view(st, key, purpose, address, wanted)
    form = account_form(registry.get(wanted or view.provider), view)
    if form.validate_on_submit():
        result = accounts.save(
            st,
            key,
            purpose,
            address,
            form.to_input(),
        )
        if not result.errors:
            if result.needs_authorization:
                return _go(_authorization_url(st, key, purpose))
            flash(gettext("Successfully updated."), flash_category(FlashKind.SUCCESS))
            return _go(_return_url(key, purpose))
        form.add_errors(result.errors)
    else:
        # Report the provider's checks too, so the admin sees every problem at once.
        form.add_errors(
            form.provider.validate(
                form.to_input().config,
                allow_insecure_http=st.config.allow_insecure_http,
            )
        )
    view = accounts.view(st, key, purpose, address, form.provider.id)
    return _render_modal(view, form, status=422, initial_tab=form.first_error_tab())


#: certificate download format -> (MIME type, file extension)
CERTIFICATE_FORMATS = {
    "pem": ("application/x-pem-file", "pem"),
    "cer": ("application/pkix-cert", "cer"),
}


@blueprint.get("/<key>/<purpose>/certificate.<fmt>")
def certificate(key: str, purpose: str, fmt: str) -> Response:
    """The account's certificate (``?pending=1``: the rollover's new one) to upload to the
    identity provider: PEM, or DER as ``.cer``. Never the private key."""
    _mailbox(key, purpose)
    if fmt not in CERTIFICATE_FORMATS:
        abort(404)
    pending = request.args.get("pending") == "1"
    pem = accounts.certificate_pem(state(), key, purpose, pending=pending)
    if pem is None:
        abort(404)
    mimetype, extension = CERTIFICATE_FORMATS[fmt]
    body = pem.encode() if fmt == "pem" else ClientCertificate(pem, "").der
    name = f"{key}-{purpose}{'-new' if pending else ''}.{extension}"
    return Response(
        body,
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="{secure_filename(name)}"'},
    )


@blueprint.post("/<key>/<purpose>/authorize")
def authorize(key: str, purpose: str) -> BaseResponse:
    """Start (again) the authorization of a saved account."""
    _mailbox(key, purpose)
    _check_csrf()
    return _go(_authorization_url(state(), key, purpose))


def _check_csrf() -> None:
    """Flask-WTF's CSRF check for every POST of the extension, raising Flask-WTF's
    ``CSRFError`` (a 400) so that a host's ``@app.errorhandler(CSRFError)`` answers for it."""
    if not current_app.config.get("WTF_CSRF_ENABLED", True):
        return  # the host turned CSRF off (usually in its tests), as for every Flask-WTF form
    try:
        validate_csrf(request.form.get("csrf_token"))
    except ValidationError as exc:
        raise CSRFError(
            gettext("The form expired or was forged (%(reason)s); reload the page.", reason=exc)
        ) from None


def _authorization_url(st: MailOAuthState, key: str, purpose: str) -> str:
    """Where the browser goes to authorize: the IdP, or, for an access that needs no consent
    (a service account), back to the host's page once its token was fetched."""
    account = accounts.account_for_authorization(st, key, purpose)
    if account is None:
        abort(404, description=gettext("Save the IdP Config first."))
    if not flow.needs_consent(account):
        try:
            flow.connect(st, account.id, timeout=st.config.http_timeout)
        except AuthorizationFailed as failure:
            text = gettext(
                "OAuth2 authorization failed: %(error)s %(guidance)s",
                error=failure,
                guidance=failure.guidance,
            )
            flash(text, flash_category(FlashKind.ERROR))
        else:
            flash(gettext("OAuth2 Authorization Successful."), flash_category(FlashKind.SUCCESS))
        return _return_url(key, purpose)
    return flow.begin(
        st,
        account,
        session_id=flow.session_binding(session, create=True),
        redirect_uri=callback_url(),
        return_url=_return_url(key, purpose),
        ttl=st.config.pending_ttl,
    )


def _return_url(key: str, purpose: str) -> str:
    """The host page for this account: the host's hook, else the same-origin referring page."""
    hook = state().hooks.account_page
    if hook is not None:
        return hook(key, purpose)
    return same_origin_path(request.referrer) or "/"


def same_origin_path(url: str | None) -> str | None:
    """``url`` as a local path when it points at this host, else ``None`` (no open redirect)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.netloc and parts.netloc != request.host:
        return None
    if parts.scheme not in ("", "http", "https") or not parts.path.startswith("/"):
        return None
    if parts.path.startswith("//") or "\\" in parts.path:
        return None
    query = f"?{parts.query}" if parts.query else ""
    return parts.path + query + (f"#{parts.fragment}" if parts.fragment else "")


def _go(url: str) -> BaseResponse:
    """Send the browser to ``url``: JSON for the modal's script, a redirect without it."""
    if _scripted():
        return jsonify(redirect=url)
    return redirect(url, code=303)


@blueprint.get("/callback")
def callback() -> BaseResponse:
    """Where the IdP sends the admin back: finish, then return to the account's page."""
    st = state()
    try:
        outcome = flow.finish(
            st,
            request.args,
            session_id=flow.session_binding(session),
            timeout=st.config.http_timeout,
            may_manage=st.hooks.access_check is not None and st.hooks.may_manage(),
        )
    except AuthorizationFailed as failure:
        return Response(_render("mailoauth/callback_error.html", failure=failure), status=400)
    if outcome.error is None:
        flash(gettext("OAuth2 Authorization Successful."), flash_category(FlashKind.SUCCESS))
    else:
        flash(
            gettext(
                "OAuth2 authorization failed: %(error)s %(guidance)s",
                error=outcome.error,
                guidance=outcome.error.guidance,
            ),
            flash_category(FlashKind.ERROR),
        )
    return redirect(same_origin_path(outcome.return_url) or "/", code=303)


@blueprint.post("/<key>/<purpose>/delete")
def delete(key: str, purpose: str) -> BaseResponse:
    """Delete the account's token (the configuration stays), revoking it at the IdP first
    when the provider can; the banner says what the IdP made of it."""
    _mailbox(key, purpose)
    _check_csrf()
    revoked = accounts.delete_token(state(), key, purpose)
    if revoked is None:
        flash(gettext("There was no token to delete."), flash_category(FlashKind.ERROR))
    else:
        flash(
            gettext(
                "Token deleted. %(revocation)s Open Config and press Submit to authorize again; "
                "until then mail is neither fetched nor sent with OAuth2.",
                revocation=accounts.revocation_report(revoked),
            ),
            flash_category(FlashKind.SUCCESS if revoked.settled else FlashKind.ERROR),
        )
    return _go(_return_url(key, purpose))


def _token_tab(
    key: str, purpose: str, *, notice: Notice | None = None, checks: list[CheckResult] | None = None
) -> Response:
    """The modal reopened on its Token tab, with a notice or check results."""
    mailbox = _mailbox(key, purpose)
    view = accounts.view(state(), key, purpose, _address(mailbox, purpose), None)
    form = account_form(registry.get(view.provider), view, formdata=None)
    return _render_modal(view, form, notice=notice, initial_tab="token", checks=checks)


@blueprint.post("/<key>/<purpose>/refresh")
def refresh(key: str, purpose: str) -> Response:
    """Refresh the access token now (also after a backoff), and show the outcome."""
    _mailbox(key, purpose)
    _check_csrf()
    try:
        tokens.refresh(state(), key, purpose)
    except MailOAuthError as exc:
        text = gettext("Refresh failed: %(error)s %(guidance)s", error=exc, guidance=exc.guidance)
        notice = Notice("error", text.strip())
    else:
        notice = Notice("success", gettext("The access token was refreshed."))
    return _token_tab(key, purpose, notice=notice)


@blueprint.post("/<key>/<purpose>/test")
def test(key: str, purpose: str) -> Response:
    """Sign in to the mail server with the token and show each step's result."""
    _mailbox(key, purpose)
    _check_csrf()
    checked = cast(Purpose, purpose)  # _mailbox answered 404 for any other purpose
    checks = connections.check(state(), key, checked, timeout=state().config.mail_timeout)
    return _token_tab(key, purpose, checks=checks)


@blueprint.get("/metrics")
def metrics() -> Response:
    """Every account's gauges and this process's token request counts, for Prometheus
    (``MAILOAUTH_METRICS``); with ``MAILOAUTH_METRICS_TOKEN``, for its bearer only."""
    st = state()
    if not st.config.metrics_endpoint:
        abort(404)
    if st.config.metrics_token is not None and not _bearer_is(st.config.metrics_token):
        response = Response(gettext("A valid bearer token is required."), status=401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="mailoauth-metrics"'
        return response
    accounts_now = monitoring.AccountCollector(lambda: health(st), utcnow)
    body, content_type = monitoring.scrape(accounts_now, st.metrics, request.headers.get("Accept"))
    return Response(body, content_type=content_type)


def _bearer_is(token: str) -> bool:
    """Whether the request's ``Authorization: Bearer`` value is ``token`` (compared in
    constant time)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


@blueprint.post("/<key>/<purpose>/reconsent")
def create_reconsent(key: str, purpose: str) -> Response:
    """Create a re-consent link for this account and show it, once, on the Token tab."""
    _mailbox(key, purpose)
    _check_csrf()
    st = state()
    account = accounts.account_for_authorization(st, key, purpose)
    if account is None:
        abort(404, description=gettext("Save the IdP Config first."))
    try:
        token, link = reconsent.create(
            st, account, request.form.get("pinned"), st.config.reconsent_days
        )
    except ValueError as exc:
        return _token_tab(key, purpose, notice=Notice("error", str(exc)))
    url = url_for("mailoauth.reconsent_page", token=token, _external=True)
    until = link.expires_at.strftime("%Y-%m-%d %H:%M")
    if request.form.get("email"):
        return _token_tab(key, purpose, notice=_mail_reconsent(st, link, url, until))
    text = gettext(
        "Send this link to %(pinned)s. It works once, until %(time)s UTC, and only to "
        "authorize %(address)s again: %(url)s",
        pinned=link.pinned,
        time=until,
        address=link.address,
        url=url,
    )
    return _token_tab(key, purpose, notice=Notice("success", text))


def _mail_reconsent(
    st: MailOAuthState, link: reconsent.ReconsentLink, url: str, until: str
) -> Notice:
    """E-mail the link to its pinned address through ``MAILOAUTH_NOTIFY_MAILBOX``; the notice
    says it went, or why not and the link to pass on by hand."""
    text = gettext(
        "The helpdesk reads and sends mail for %(address)s with your permission, which has to "
        "be given again. Open this link, sign in as %(pinned)s and accept. It works once, "
        "until %(time)s UTC:\n\n%(url)s",
        address=link.address,
        pinned=link.pinned,
        time=until,
        url=url,
    )
    subject = gettext("Authorize %(address)s again", address=link.address)
    try:
        notify.system_mail(st, [link.pinned], subject, text, about=link.key)
    except (MailOAuthError, OSError) as exc:
        logger.warning("The re-consent link for %s was not e-mailed: %s", link.key, exc)
        return Notice(
            "error",
            gettext(
                "The link was not e-mailed (%(reason)s). Send it to %(pinned)s yourself: %(url)s",
                reason=exc,
                pinned=link.pinned,
                url=url,
            ),
        )
    return Notice(
        "success",
        gettext(
            "The link was e-mailed to %(pinned)s. It works once, until %(time)s UTC.",
            pinned=link.pinned,
            time=until,
        ),
    )


@blueprint.get("/reconsent/<string(minlength=40, maxlength=100):token>")
def reconsent_page(token: str) -> Response:
    """The page a re-consent link opens: which mailbox, who signs in, a button to start.

    A token is 43 characters: the length rule leaves ``/reconsent/mailbox`` to the modal of a
    mailbox whose key is ``reconsent``."""
    link = reconsent.find(state(), token)
    return _reconsent_page(token, link)


@blueprint.post("/reconsent/<string(minlength=40, maxlength=100):token>")
def reconsent_start(token: str) -> BaseResponse:
    """Start the link's authorization: to the IdP, hinting the pinned address."""
    _check_csrf()
    st = state()
    link = reconsent.find(st, token)
    if link is None or link.account is None or link.state(utcnow()) != ReconsentState.USABLE:
        return _reconsent_page(token, link)
    return redirect(
        flow.begin(
            st,
            link.account,
            session_id=flow.session_binding(session, create=True),
            redirect_uri=callback_url(),
            return_url=url_for("mailoauth.reconsent_done"),
            ttl=st.config.pending_ttl,
            link=link,
        ),
        code=303,
    )


@blueprint.get("/reconsent/done")
def reconsent_done() -> Response:
    """Where a re-consent link's authorization ends: its outcome (flashed), nothing else."""
    return Response(_render("mailoauth/reconsent.html", link=None, done=True))


def _reconsent_page(token: str, link: reconsent.ReconsentLink | None) -> Response:
    """The link's page, or why it cannot be used (404 unknown, 410 used or expired)."""
    if link is None:
        return Response(_render("mailoauth/reconsent.html", link=None, done=False), status=404)
    link_state = link.state(utcnow())
    status = 200 if link_state == ReconsentState.USABLE else 410
    page = _render(
        "mailoauth/reconsent.html",
        link=link,
        state=link_state,
        token=token,
        done=False,
        csrf_token=generate_csrf(),
    )
    return Response(page, status=status)
