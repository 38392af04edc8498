"""The authorization-code flow: start it (state, PKCE, nonce), and finish it at the callback.

Finishing validates everything before anything is stored: single-use state bound to the admin's
session, the IdP's error, RFC 9207 ``iss``, the code exchange, the id_token (JWKS signature,
issuer, audience, expiry, nonce) and the identity. Only then are the credentials replaced, in
one transaction; every failure raises :class:`AuthorizationFailed` and leaves them untouched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import jwt
import requests
import sqlalchemy as sa

from . import certificates, reconsent, signals
from .certificates import ClientCertificate
from .errors import (
    AuthorizationFailed,
    DecryptionError,
    MailOAuthError,
    OutboundError,
    TokenRequestFailed,
)
from .i18n import gettext, lazy_gettext
from .models import AccountMixin, clean_text, own_session, row_lock, utcnow
from .oauth import TokenResponse, request_token
from .outbound import OutboundHTTP, OutboundPolicy
from .providers import registry
from .providers.base import ACCESS_LABELS, Identity, Provider
from .reconsent import ReconsentLink
from .state import MailOAuthState
from .tenant_setup import served_protocols, token_roles
from .vocabulary import AccessKind, CredentialStatus, EventKind, EventLevel, FailureKind

#: id_token signature algorithms accepted (never "none", never a shared-secret HMAC)
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]
#: the Flask session key binding pending authorizations to the admin's browser session
SESSION_KEY = "mailoauth_sid"
#: a binding id as :func:`session_binding` makes it; any other value is old or tampered
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")
#: characters of a failure's message, and of its guidance, that a banner shows at most
BANNER_CHARACTERS = 1000
#: what a failed code exchange asks of the admin: nothing retries it
_EXCHANGE_GUIDANCE = lazy_gettext(
    "Start again from the Config button; if it persists, check the Token Endpoint and the "
    "identity provider's logs."
)

logger = logging.getLogger("flask_mailoauth")


@dataclass(frozen=True)
class CallbackOutcome:
    """Where a callback for a known authorization ends: the account, its page, the result."""

    key: str
    purpose: str
    return_url: str
    error: AuthorizationFailed | None = None
    authorized_by: str | None = None


@dataclass(frozen=True)
class PendingAuthorization:
    """A started authorization as the callback read it from its row (then deleted).

    ``session_id`` and ``verifier`` are secrets: they stay out of the repr.
    """

    account_id: int
    key: str
    purpose: str
    nonce: str
    redirect_uri: str
    return_url: str
    expires_at: datetime
    session_id: str = field(repr=False)
    verifier: str = field(repr=False)
    #: the re-consent link it was started from (``reconsent``), if any
    reconsent_id: int | None = None

    def started_in(self, session_id: str) -> bool:
        """Whether it was started in the browser session ``session_id`` (constant time)."""
        return hmac.compare_digest(self.session_id.encode(), session_id.encode())


@dataclass(frozen=True)
class AccountSnapshot:
    """The account the callback authorizes, as read in one short transaction."""

    id: int
    key: str
    purpose: str
    address: str
    provider: Provider
    config: Mapping[str, str]
    strict_matching: bool
    client_secret: str = field(repr=False)
    #: the certificates a ``private_key_jwt`` client tries, the pending one first
    certificates: tuple[ClientCertificate, ...] = field(default=(), repr=False)


def hash_state(state: str) -> str:
    """Pending authorizations are found by a hash of their state, never the state itself."""
    return hashlib.sha256(state.encode()).hexdigest()


def session_binding(session: MutableMapping[str, Any], *, create: bool = False) -> str:
    """The id binding pending authorizations to this browser session, read from ``session``.

    A missing, old or tampered value counts as none: ``create`` (starting an authorization)
    replaces it with a new id; otherwise it reads as ``""``, which no pending authorization
    matches, so the callback says it was started in another browser session.
    """
    value = session.get(SESSION_KEY)
    if isinstance(value, str) and _SESSION_ID.fullmatch(value):
        return value
    if not create:
        return ""
    value = secrets.token_urlsafe(32)
    session[SESSION_KEY] = value
    return value


def begin(
    st: MailOAuthState,
    account: AccountMixin,
    *,
    session_id: str,
    redirect_uri: str,
    return_url: str,
    ttl: int,
    link: ReconsentLink | None = None,
) -> str:
    """Store a pending authorization for ``account`` and return the IdP's authorize URL.

    Started from a re-consent ``link``, it remembers the link (the callback then wants its
    pinned address, and uses the link up) and hints the IdP at the pinned address.
    """
    provider = registry.get(account.provider)
    config = account.config
    state, verifier, nonce = (secrets.token_urlsafe(32) for _ in range(3))
    verifier += secrets.token_urlsafe(32)  # 86 characters, inside RFC 7636's 43..128
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    with own_session(st.db) as s:
        s.execute(
            sa.delete(st.models.PendingAuthorization).where(
                st.models.PendingAuthorization.expires_at < utcnow()
            )
        )
        pending = st.models.PendingAuthorization(
            state_hash=hash_state(state),
            account_id=account.id,
            session_id=session_id,
            nonce=nonce,
            redirect_uri=redirect_uri,
            return_url=return_url,
            expires_at=utcnow() + timedelta(seconds=ttl),
            reconsent_id=link.id if link else None,
        )
        st.seal(pending, "code_verifier", verifier)
        s.add(pending)
    if provider.access(config) != AccessKind.DELEGATED:
        # Nobody signs in: the tenant's administrator consents, and the answer comes back to
        # the callback with the same single-use state.
        return provider.consent_url(config, redirect_uri=redirect_uri, state=state)
    scopes = provider.scopes(config)
    params = {
        "response_type": "code",
        "client_id": config["client_id"],
        "redirect_uri": redirect_uri,
        "scope": " ".join(scopes),
        "state": state,
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        # OpenID Connect's nonce: an OIDC server refuses it on a request without openid.
        **({"nonce": nonce} if _requests_openid(scopes) else {}),
        "login_hint": link.pinned if link else account.address,
        **provider.authorize_params(config),
    }
    return _with_query(provider.endpoints(config).authorization, params)


def _requests_openid(scopes: Sequence[str]) -> bool:
    """Whether the request is OpenID Connect: only then is a nonce sent and an id_token used."""
    return "openid" in scopes


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


def finish(
    st: MailOAuthState,
    args: Mapping[str, str],
    *,
    session_id: str,
    timeout: float,
    may_manage: bool = True,
) -> CallbackOutcome:
    """Complete the authorization from the callback's query ``args``.

    Raises :class:`AuthorizationFailed` when the response matches no pending authorization,
    or when one started from the modal returns to someone who may not manage (``may_manage``:
    the host's access check; only a re-consent link's authorization needs none); otherwise
    the outcome names the account and its page, with the error that stopped it if any.
    """
    state = args.get("state") or ""
    if not state:
        raise AuthorizationFailed(
            gettext(
                "The sign-in response carries no state, so it cannot be matched to an "
                "authorization."
            ),
            gettext("Start again from the Config button."),
        )
    pending = _take_pending(st, state)
    if pending is None:
        raise AuthorizationFailed(
            gettext("This sign-in response is unknown or was already used."),
            gettext("Start again from the Config button; each authorization link works once."),
        )
    if pending.reconsent_id is None and not may_manage:
        raise AuthorizationFailed(
            gettext("You are not allowed to manage mail OAuth settings."),
            gettext("Sign in to the helpdesk as an administrator and start again."),
            code="not_allowed",
        )
    outcome = CallbackOutcome(pending.key, pending.purpose, pending.return_url)
    try:
        who = _complete(st, pending, args, session_id=session_id, timeout=timeout)
    except Exception as exc:  # the safety net: a banner, never a 500
        failure = _banner_safe(exc if isinstance(exc, AuthorizationFailed) else _unexpected(exc))
        _log_event(
            st,
            pending.account_id,
            EventKind.AUTHORIZATION_FAILED,
            EventLevel.ERROR,
            failure.code,
            f"{failure} {failure.guidance}".strip(),
            failure.diagnostics,
        )
        return replace(outcome, error=failure)
    return replace(outcome, authorized_by=who)


def _unexpected(exc: Exception) -> AuthorizationFailed:
    """The banner for an exception no rule foresaw, logged by its type only: its message may
    quote what the IdP sent, or a secret."""
    name = type(exc).__name__
    logger.error("Unexpected %s while completing an authorization; shown as a banner.", name)
    return AuthorizationFailed(
        gettext(
            "The authorization could not be completed: an unexpected error occurred (%(error)s).",
            error=name,
        ),
        gettext(
            "Start again from the Config button; if it persists, report it with the application "
            "log."
        ),
        code="unexpected_error",
    )


def _banner_safe(failure: AuthorizationFailed) -> AuthorizationFailed:
    """``failure`` with its text cleaned and bounded: it may quote the IdP, and it travels in
    the session cookie to a banner on the host's page."""
    return AuthorizationFailed(
        clean_text(str(failure), BANNER_CHARACTERS) or "",
        clean_text(failure.guidance, BANNER_CHARACTERS) or "",
        clean_text(failure.code, 64),
        failure.diagnostics,
    )


def _take_pending(st: MailOAuthState, state: str) -> PendingAuthorization | None:
    """Find and delete the pending authorization for ``state`` (single use).

    It is looked up by the hash of the state: the lookup's timing tells nothing of the state.
    """
    model = st.models.PendingAuthorization
    timeout = st.config.lock_timeout
    with own_session(st.db) as s, row_lock(s, timeout):
        row = s.scalars(
            sa.select(model).where(model.state_hash == hash_state(state)).with_for_update()
        ).one_or_none()
        if row is None:
            return None
        try:
            verifier = st.reveal(row, "code_verifier")
        except DecryptionError:
            # Encrypted under a key no longer in MAILOAUTH_ENCRYPTION_KEYS; it expires unused.
            raise AuthorizationFailed(
                gettext("This authorization was started under an encryption key that is gone."),
                gettext("Start again from the Config button."),
            ) from None
        pending = PendingAuthorization(
            account_id=row.account.id,
            key=row.account.key,
            purpose=row.account.purpose,
            nonce=row.nonce,
            redirect_uri=row.redirect_uri,
            return_url=row.return_url,
            expires_at=row.expires_at,
            session_id=row.session_id,
            verifier=verifier,
            reconsent_id=row.reconsent_id,
        )
        s.delete(row)
    return pending


def _complete(
    st: MailOAuthState,
    pending: PendingAuthorization,
    args: Mapping[str, str],
    *,
    session_id: str,
    timeout: float,
) -> str | None:
    """Validate the callback step by step, then store the credentials; returns who signed in."""
    _check_pending(pending, session_id)
    pinned = reconsent.pinned_for(st, pending.reconsent_id) if pending.reconsent_id else None
    account = _load_account(st, pending.account_id)
    if account.provider.access(account.config) != AccessKind.DELEGATED:
        _complete_consent(st, account, args, timeout)
        return None
    issuer = _check_issuer(account, args)
    code = _authorization_code(account.provider, args)
    policy = st.config.outbound
    token = _exchange(account, pending, code, timeout, policy)
    if len(account.certificates) > 1:
        certificates.switched(st, account.id, token.client_certificate)
    claims = _validate_id_token(
        account.provider,
        account.config,
        token.id_token,
        pending.nonce,
        timeout,
        issuer,
        policy=policy,
    )
    identity = _identity(account.provider, account.config, claims, token, timeout, policy=policy)
    if pinned is not None:
        _check_pinned(pinned, identity)
    else:
        _check_identity(account, identity)
    _check_grant(st, account, token)
    through_link = None
    if pending.reconsent_id is not None:
        through_link = gettext(
            "Authorized again through a re-consent link by %(actor)s; scopes: %(scopes)s",
            actor=identity.email or "?",
            scopes=token.scope,
        )
    _store(st, account, token, identity, pending.reconsent_id, message=through_link)
    signals.authorized.send(
        st.extension,
        key=account.key,
        purpose=account.purpose,
        provider=account.provider.id,
        resource_owner=identity.email,
    )
    return identity.email


def _complete_consent(
    st: MailOAuthState, account: AccountSnapshot, args: Mapping[str, str], timeout: float
) -> None:
    """An administrator's consent answer: check it, then fetch the first application token
    with the account's grant (:meth:`Provider.token_grant`) and store it."""
    if args.get("error"):
        raise _idp_error(account.provider, args)
    policy = st.config.outbound
    with OutboundHTTP.open(policy, timeout, deadline=2 * timeout) as http:
        try:
            tenant = account.provider.consented_tenant(account.config, args, http)
        except (requests.RequestException, ValueError) as exc:
            raise AuthorizationFailed(
                gettext("The admin consent answer could not be checked: %(reason)s", reason=exc),
                gettext("Try again when the identity provider answers."),
                code="consent_unchecked",
            ) from None
    token = first_token(st, account, timeout)
    identity = Identity(email=None, tenant=tenant)
    message = gettext(
        "Admin consent granted in tenant %(tenant)s; application token obtained (roles: %(roles)s)",
        tenant=tenant or gettext("(none)"),
        roles=" ".join(token_roles(token.access_token)) or gettext("none"),
    )
    _store(st, account, token, identity, message=message)
    signals.authorized.send(
        st.extension,
        key=account.key,
        purpose=account.purpose,
        provider=account.provider.id,
        resource_owner=None,
    )


def needs_consent(account: AccountMixin) -> bool:
    """Whether ``account`` is connected through the IdP in the browser (a sign-in or an admin
    consent); a service account is not: its token is fetched at once (:func:`connect`)."""
    return registry.get(account.provider).access(account.config) != AccessKind.SERVICE_ACCOUNT


def connect(st: MailOAuthState, account_id: int, *, timeout: float) -> None:
    """Connect an access that needs no consent in the browser (a service account): fetch its
    first token and store it, or raise :class:`AuthorizationFailed` (logged) storing nothing."""
    account = _load_account(st, account_id)
    try:
        token = first_token(st, account, timeout)
    except Exception as exc:  # the safety net, as at the callback: a banner, never a 500
        failure = _banner_safe(exc if isinstance(exc, AuthorizationFailed) else _unexpected(exc))
        message = f"{failure} {failure.guidance}".strip()
        _log_event(
            st, account.id, EventKind.AUTHORIZATION_FAILED, EventLevel.ERROR, failure.code, message
        )
        raise failure from None
    message = gettext(
        "Token obtained for %(mailbox)s without a sign-in; access: %(access)s",
        mailbox=account.address,
        access=ACCESS_LABELS[account.provider.access(account.config)],
    )
    _store(st, account, token, Identity(email=None), message=message)
    signals.authorized.send(
        st.extension,
        key=account.key,
        purpose=account.purpose,
        provider=account.provider.id,
        resource_owner=None,
    )


def first_token(st: MailOAuthState, account: AccountSnapshot, timeout: float) -> TokenResponse:
    """The first token of an access nobody signs in for (application access, a service
    account): the account's grant, then the roles the mail protocols need; a refusal raises
    what the banner says."""
    provider, config = account.provider, account.config
    try:
        token = request_token(
            provider,
            config,
            account.client_secret,
            provider.token_grant(
                config,
                refresh_token="",
                client_secret=account.client_secret,
                mailbox=account.address,
            ),
            timeout=timeout,
            deadline=2 * timeout,
            policy=st.config.outbound,
            requested_scopes=provider.scopes(config),
            certificates=account.certificates,
        )
    except TokenRequestFailed as exc:
        failure = exc.failure
        raise AuthorizationFailed(
            gettext(
                "The identity provider refused the application token (%(code)s): %(description)s",
                code=failure.code or gettext("no code"),
                description=failure.description,
            ),
            failure.guidance if failure.kind != FailureKind.TRANSIENT else str(_EXCHANGE_GUIDANCE),
            code=failure.code,
        ) from None
    protocols = served_protocols(st, account.key, account.purpose)
    have = set(token_roles(token.access_token))
    missing = [r for r in provider.required_roles(config, protocols) if r not in have]
    if missing:
        raise AuthorizationFailed(
            gettext(
                "The application token lacks the role %(missing)s (roles: %(roles)s), so the "
                "mail server would refuse it.",
                missing=", ".join(missing),
                roles=" ".join(sorted(have)) or gettext("none"),
            ),
            gettext(
                "In the app registration's API permissions add Office 365 Exchange Online > "
                "Application permissions > %(missing)s, grant admin consent, then consent again.",
                missing=", ".join(missing),
            ),
            code="missing_role",
        )
    return token


def _check_pending(pending: PendingAuthorization, session_id: str) -> None:
    """The authorization is still young and was started in this browser session."""
    if pending.expires_at < utcnow():
        raise AuthorizationFailed(
            gettext("The authorization took longer than allowed and expired."),
            gettext("Start again from the Config button and finish within ten minutes."),
        )
    if not pending.started_in(session_id):
        raise AuthorizationFailed(
            gettext("This sign-in was started in another browser session."),
            gettext("Start again from the Config button in this browser."),
        )


def _check_issuer(account: AccountSnapshot, args: Mapping[str, str]) -> str | None:
    """RFC 9207: the response's ``iss`` names the account's IdP; required if it advertises it."""
    endpoints = account.provider.endpoints(account.config)
    issuer = args.get("iss")
    if issuer is None and endpoints.authorization_response_iss:
        raise AuthorizationFailed(
            gettext(
                "The sign-in response carries no iss although the identity provider advertises "
                "it (RFC 9207), so it cannot be told from a response of another identity "
                "provider."
            ),
            gettext(
                "Start again from the Config button. If the provider no longer sends iss, set "
                "Issuer in Response to Not required on the IdP Config tab."
            ),
            code="iss_missing",
        )
    if issuer is not None:
        expected = endpoints.issuer
        origin = _origin(endpoints.token)
        if (expected and issuer != expected) or (not expected and not issuer.startswith(origin)):
            raise AuthorizationFailed(
                gettext(
                    "The sign-in response names another identity provider (RFC 9207 iss mismatch)."
                ),
                gettext(
                    "Someone may be mixing up identity providers; start again from the Config "
                    "button."
                ),
                code="iss_mismatch",
            )
    return issuer


def _authorization_code(provider: Provider, args: Mapping[str, str]) -> str:
    """The authorization code the IdP sent; its ``error`` instead becomes a banner."""
    if args.get("error"):
        raise _idp_error(provider, args)
    code = args.get("code")
    if not code:
        raise AuthorizationFailed(
            gettext("The identity provider sent no authorization code."),
            gettext("Start again from the Config button."),
        )
    return code


def _exchange(
    account: AccountSnapshot,
    pending: PendingAuthorization,
    code: str,
    timeout: float,
    policy: OutboundPolicy,
) -> TokenResponse:
    """Exchange the code for tokens with the stored redirect URI and PKCE verifier."""
    provider, config = account.provider, account.config
    try:
        return request_token(
            provider,
            config,
            account.client_secret,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": pending.redirect_uri,
                "code_verifier": pending.verifier,
            },
            timeout=timeout,
            deadline=2 * timeout,
            policy=policy,
            requested_scopes=provider.scopes(config),
            certificates=account.certificates,
        )
    except TokenRequestFailed as exc:
        failure = exc.failure
        # A transient failure's guidance promises a retry: true of a refresh, not of this.
        guidance = failure.guidance
        if failure.kind == FailureKind.TRANSIENT:
            guidance = str(_EXCHANGE_GUIDANCE)
        raise AuthorizationFailed(
            gettext(
                "The identity provider refused the code exchange (%(code)s): %(description)s",
                code=failure.code or gettext("no code"),
                description=failure.description,
            ),
            guidance,
            code=failure.code,
            diagnostics=failure.diagnostics,
        ) from None


def _check_identity(account: AccountSnapshot, identity: Identity) -> None:
    """Strict Matching: the IdP must vouch that whoever signed in is the mailbox address."""
    if account.strict_matching and not identity.matches(account.address):
        raise _identity_mismatch(account.address, identity)


def _check_pinned(pinned: str, identity: Identity) -> None:
    """A re-consent link's authorization: the IdP must vouch for the pinned address, whatever
    Strict Matching says (the admin named who signs in when creating the link)."""
    if not identity.matches(pinned):
        raise AuthorizationFailed(
            gettext(
                "This re-consent link is for %(pinned)s; the identity provider vouched for "
                "%(actor)s.",
                pinned=pinned,
                actor=identity.email or gettext("an account whose address could not be read"),
            ),
            gettext("Open the link again and sign in as %(pinned)s.", pinned=pinned),
            code="identity_mismatch",
        )


def _identity_mismatch(address: str, identity: Identity) -> AuthorizationFailed:
    """Strict Matching's refusal; it says how to fix an address the IdP named unverified."""
    if identity.email:
        message = gettext(
            "Strict Matching: expected authorization for %(address)s, not %(actor)s.",
            address=address,
            actor=identity.email,
        )
    else:
        message = gettext(
            "Strict Matching: expected authorization for %(address)s, not an account whose "
            "address could not be read.",
            address=address,
        )
    if identity.names_unverified(address):
        message = gettext(
            "%(mismatch)s The token names %(address)s only in a claim the provider does not "
            "vouch for.",
            mismatch=message,
            address=address,
        )
        return AuthorizationFailed(message, identity.advice, code="identity_mismatch")
    guidance = gettext(
        "Sign in as %(address)s, or turn Strict Matching off on the Info tab to let a delegate "
        "authorize a shared mailbox or alias.",
        address=address,
    )
    return AuthorizationFailed(message, guidance, code="identity_mismatch")


def _check_grant(st: MailOAuthState, account: AccountSnapshot, token: TokenResponse) -> None:
    """Refuse a grant that cannot serve the account: a mail scope or offline access missing.

    A refresh token is what proves offline access (Microsoft leaves ``offline_access`` out of
    the granted scopes and still sends one).
    """
    protocols = _protocols(st, account.key, account.purpose)
    missing = account.provider.missing_scopes(account.config, token.scope.split(), protocols)
    if missing:
        if not token.refresh_token:
            missing.append("offline_access")
        raise AuthorizationFailed(
            gettext(
                "Consent was only partly given: the grant lacks %(missing)s (granted: "
                "%(granted)s), so the mail server would refuse the token.",
                missing=", ".join(missing),
                granted=token.scope or gettext("nothing"),
            ),
            gettext(
                "Authorize again and accept every permission on the consent screen; if it did "
                "not offer them, add them to the Scopes and to the application's API permissions "
                "(with admin consent where the tenant requires it)."
            ),
            code="partial_consent",
        )
    if not token.refresh_token:
        raise AuthorizationFailed(
            gettext("Unable to obtain a refresh token: is offline_access granted?"),
            gettext(
                "Request the offline_access scope (Google: access_type=offline) and consent again."
            ),
            code="no_refresh_token",
        )


def _protocols(st: MailOAuthState, key: str, purpose: str) -> tuple[str, ...]:
    """The mail protocols the account's token is for; none when the host no longer knows it."""
    if purpose == "smtp":
        return ("smtp",)
    try:
        return (st.hooks.mailbox(key).protocol,)
    except MailOAuthError:
        return ()


def _load_account(st: MailOAuthState, account_id: int) -> AccountSnapshot:
    """The account as it is now, its client secret revealed; gone means deleted meanwhile."""
    with own_session(st.db) as s:
        account = s.get(st.models.Account, account_id)
        if account is None:
            raise AuthorizationFailed(gettext("The account was deleted during the authorization."))
        secret = ""
        if account.client_secret is not None:
            secret = st.reveal(account, "client_secret")
        provider = registry.get(account.provider)
        method = provider.client_auth(account.config)
        return AccountSnapshot(
            id=account.id,
            key=account.key,
            purpose=account.purpose,
            address=account.address,
            provider=provider,
            config=MappingProxyType(dict(account.config)),
            strict_matching=account.strict_matching,
            client_secret=secret,
            certificates=certificates.for_token_requests(st, account, method).to_try,
        )


def _idp_error(provider: Provider, args: Mapping[str, str]) -> AuthorizationFailed:
    """The IdP's ``error``/``error_description`` turned into a banner with guidance."""
    error = clean_text(args.get("error", ""), 100) or ""
    description = clean_text(args.get("error_description", ""), 500) or ""
    code = provider.callback_error_code(error, description)
    guidance = provider.guidance(code) or provider.guidance(error) or gettext("Authorize again.")
    if description:
        text = gettext(
            "The identity provider answered %(error)s: %(description)s",
            error=error,
            description=description,
        )
    else:
        text = gettext("The identity provider answered %(error)s", error=error)
    raw = {"error": error, "error_description": args.get("error_description", "")[:4000]}
    return AuthorizationFailed(text, guidance, code, provider.diagnostics(raw))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


def _validate_id_token(
    provider: Provider,
    config: Mapping[str, str],
    id_token: str | None,
    nonce: str,
    timeout: float,
    callback_issuer: str | None,
    *,
    policy: OutboundPolicy,
) -> dict[str, Any] | None:
    """Verify the id_token (signature by JWKS, iss, aud, exp, nonce); ``None`` without one.

    Without openid in the scopes no nonce was sent, so an id_token cannot be bound to this
    request: it is ignored, and the identity comes from userinfo or the resource endpoint.
    """
    if not _requests_openid(provider.scopes(config)):
        return None
    if not id_token:
        raise AuthorizationFailed(
            gettext("The identity provider returned no id_token although openid was requested."),
            gettext("Check that the application may use OpenID Connect."),
            code="no_id_token",
        )
    try:
        unverified = jwt.decode(id_token, options={"verify_signature": False})
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError:
        raise AuthorizationFailed(
            gettext("The id_token could not be verified: it is malformed."),
            code="invalid_id_token",
        ) from None
    expected_issuer = provider.expected_issuer(config, unverified)
    jwks_uri = provider.endpoints(config).jwks_uri
    if not jwks_uri:
        raise AuthorizationFailed(
            gettext("The id_token could not be verified: no JWKS URI is configured."),
            gettext("Fill the JWKS URI or the issuer."),
            code="invalid_id_token",
        )
    key = _signing_key(jwks_uri, header, timeout, policy=policy)
    try:
        claims = jwt.decode(
            id_token,
            key=key,
            algorithms=ID_TOKEN_ALGORITHMS,
            audience=config["client_id"],
            issuer=expected_issuer,
            leeway=60,
            options={"require": ["exp", "iat", "aud", "iss", "sub"]},
        )
    except jwt.PyJWTError as exc:
        raise AuthorizationFailed(
            gettext("The id_token could not be verified: %(reason)s.", reason=exc),
            gettext(
                "Check the Client ID and the issuer; the clocks of this server and the IdP must "
                "agree."
            ),
            code="invalid_id_token",
        ) from None
    if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
        raise AuthorizationFailed(
            gettext("The id_token could not be verified: the nonce does not match."),
            code="invalid_nonce",
        )
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if (len(audiences) > 1 or "azp" in claims) and claims.get("azp") != config["client_id"]:
        raise AuthorizationFailed(
            gettext(
                "The id_token could not be verified: it was issued to several audiences (or "
                "another party) and its authorized party (azp) is not this Client ID."
            ),
            gettext(
                "Check the Client ID; a token issued to another application is never accepted."
            ),
            code="invalid_azp",
        )
    if callback_issuer is not None and callback_issuer != claims["iss"]:
        raise AuthorizationFailed(
            gettext("The sign-in response and the id_token name different issuers."),
            code="iss_mismatch",
        )
    return claims


def _signing_key(
    jwks_uri: str, header: Mapping[str, Any], timeout: float, *, policy: OutboundPolicy
) -> Any:  # PyJWT types a JWK's key as Any: a public key object (or bytes) by algorithm
    """The JWKS key that signed the id_token (by ``kid``, else the only key).

    Fetched under the outbound ``policy``: a redirect must stay on https, the address is vetted.
    """
    try:
        with OutboundHTTP.open(policy, timeout, deadline=2 * timeout) as http:
            response = http.get(jwks_uri)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):  # PyJWKSet.from_dict needs a JSON object
            raise ValueError("the JWKS is not a JSON object")
        jwks = jwt.PyJWKSet.from_dict(document)
    except OutboundError as exc:
        raise AuthorizationFailed(
            gettext(
                "The identity provider's signing keys (JWKS) could not be fetched: %(reason)s",
                reason=exc,
            ),
            gettext("Check the JWKS URI."),
            code="jwks_unavailable",
        ) from None
    except (requests.RequestException, ValueError, TypeError, RecursionError, jwt.PyJWTError):
        raise AuthorizationFailed(
            gettext("The identity provider's signing keys (JWKS) could not be fetched."),
            gettext("Check the JWKS URI; try again when the identity provider is reachable."),
            code="jwks_unavailable",
        ) from None
    kid = header.get("kid")
    keys = [k for k in jwks.keys if kid is None or k.key_id == kid]
    if len(keys) != 1:
        raise AuthorizationFailed(
            gettext("The id_token was signed with a key the identity provider does not publish."),
            code="invalid_id_token",
        )
    return keys[0].key


def _identity(
    provider: Provider,
    config: Mapping[str, str],
    claims: Mapping[str, Any] | None,
    token: TokenResponse,
    timeout: float,
    *,
    policy: OutboundPolicy,
) -> Identity:
    """Who signed in, by the provider's rules; its HTTP calls go through the outbound policy,
    those with the access token through the provider's ``protected_request`` hooks too."""
    protected = provider.compliance_hooks(config).protected_request
    with OutboundHTTP.open(policy, timeout, deadline=2 * timeout, protected=protected) as http:
        try:
            return provider.identity(config, claims=claims, token=token.raw, http=http)
        except (requests.RequestException, ValueError) as exc:
            raise AuthorizationFailed(
                gettext("The signed-in account could not be identified: %(reason)s", reason=exc),
                gettext(
                    "Check the userinfo or Resource Details endpoint and the Email Address "
                    "Attribute."
                ),
                code="identity_unavailable",
            ) from None


def _audience(token: TokenResponse) -> str | None:
    """The access token's ``aud`` when it is a JWT (display only: never trusted for identity)."""
    try:
        aud = jwt.decode(token.access_token, options={"verify_signature": False}).get("aud")
    except jwt.PyJWTError:
        return None
    if isinstance(aud, list):  # only its strings: the IdP may put anything in the list
        return " ".join(a for a in aud if isinstance(a, str)) or None
    return str(aud) if aud else None


def _store(
    st: MailOAuthState,
    account: AccountSnapshot,
    token: TokenResponse,
    identity: Identity,
    reconsent_id: int | None = None,
    *,
    message: str | None = None,
) -> None:
    """Replace the account's credentials and log the event (``message``, else who signed in),
    in one transaction; with ``reconsent_id``, that transaction also uses the link up, or
    stores nothing."""
    m = st.models
    now = utcnow()
    with own_session(st.db) as s:
        row = s.get(m.Account, account.id, with_for_update=True)
        if row is None:
            raise AuthorizationFailed(
                gettext("The account was deleted during the authorization."),
                gettext("Open Config and submit the IdP Config again."),
            )
        if reconsent_id is not None:
            reconsent.claim(s, m, reconsent_id, identity.email)
        if row.credential is not None:
            s.delete(row.credential)
            s.flush()
        credential = m.Credential(
            account_id=row.id,
            expires_at=token.expires_at,
            token_type=token.token_type,
            scope=token.scope,
            audience=_audience(token),
            resource_owner=row.address,
            authorized_by=identity.email,
            subject=identity.subject,
            tenant=identity.tenant,
            config_signature=account.provider.config_signature(account.config),
            issued_at=now,
            refresh_token_issued_at=now,
            clock_skew=token.clock_skew,
            status=CredentialStatus.ACTIVE,
        )
        st.seal(credential, "access_token", token.access_token)
        st.seal(credential, "refresh_token", token.refresh_token or "")
        s.add(credential)
        s.add(
            m.Event(
                account_id=row.id,
                kind=EventKind.AUTHORIZED,
                actor=identity.email,
                message=message or _authorized_message(identity, row.address, token.scope),
            )
        )
    st.cache.pop((account.key, account.purpose), None)


def _authorized_message(identity: Identity, address: str, scope: str) -> str:
    """The event log's line for a new grant: who signed in, for whom, which scopes."""
    if identity.email and not identity.matches(address):
        return gettext(
            "Authorized by %(actor)s on behalf of %(address)s; scopes: %(scopes)s",
            actor=identity.email,
            address=address,
            scopes=scope,
        )
    if identity.email:
        return gettext(
            "Authorized as %(actor)s; scopes: %(scopes)s", actor=identity.email, scopes=scope
        )
    return gettext("Authorized; scopes: %(scopes)s", scopes=scope)


def _log_event(
    st: MailOAuthState,
    account_id: int,
    kind: EventKind,
    level: EventLevel,
    code: str | None,
    message: str,
    diagnostics: tuple[tuple[str, str], ...] = (),
) -> None:
    with own_session(st.db) as s:
        s.add(
            st.models.Event(
                account_id=account_id,
                kind=kind,
                level=level,
                code=code,
                message=message[:2000],
                diagnostics=dict(diagnostics) or None,
            )
        )
