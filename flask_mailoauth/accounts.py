"""The stored OAuth2 accounts: save the IdP Config, read what the modal and Token tab show,
delete a token. Views call these; these never import views."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import certificates, signals, tenant_setup
from .certificates import CertificateFacts, ClientCertificate
from .errors import CertificateError, DecryptionError, UnknownProvider
from .health import account_health
from .i18n import gettext, lazy_gettext
from .models import (
    EVENTS_SHOWN,
    AccountMixin,
    CredentialMixin,
    EventMixin,
    Models,
    own_session,
    utcnow,
)
from .outbound import OutboundHTTP
from .providers import registry
from .providers.base import Provider
from .revocation import Revoked, revocation_endpoint, revoke
from .state import MailOAuthState
from .tenant_setup import SetupCommand
from .vocabulary import (
    SECRET_AUTHS,
    AccessKind,
    ClientAuth,
    CredentialStatus,
    EventKind,
    EventLevel,
    RevocationOutcome,
)

#: characters of a token the Token tab shows; the rest is shrouded
SHOWN_CHARACTERS = 2

#: why a stored grant cannot be used, and what to press: the Token tab says it, Submit acts on
#: it, in the admin's language (:func:`unusable_reason` turns them into text).
UNUSABLE_REAUTHORIZE = lazy_gettext(
    "The grant is no longer valid (revoked, expired or the password changed): press Authorize "
    "again and sign in as the mailbox."
)
UNUSABLE_CONFIGURATION = lazy_gettext(
    "The identity provider refuses the application's configuration: fix the IdP Config (often: "
    "paste a new client secret's Value) and Submit, or press Authorize again."
)
UNUSABLE_SIGNATURE = lazy_gettext(
    "The IdP Config changed since the token was issued: press Authorize again."
)
UNUSABLE_KEY_GONE = lazy_gettext(
    "The stored token cannot be decrypted: its encryption key is no longer in "
    "MAILOAUTH_ENCRYPTION_KEYS. Press Authorize again (or put the old key back)."
)


class CertificateAction(StrEnum):
    """What Submit does with the account's certificates (the Certificate select's values)."""

    KEEP = ""
    #: a new key pair and self-signed certificate: current without one, else pending
    GENERATE = "generate"
    #: a PEM or PFX file's certificate and key, stored as ``GENERATE`` stores a new one
    IMPORT = "import"
    #: drop the pending certificate of a rollover
    DISCARD = "discard"


#: the actions that store a new certificate
NEW_CERTIFICATE = frozenset({CertificateAction.GENERATE, CertificateAction.IMPORT})


@dataclass(frozen=True)
class CertificateInput:
    """The Certificate part of the IdP Config tab: the action, and the file to import."""

    action: CertificateAction = CertificateAction.KEEP
    file: bytes = field(default=b"", repr=False)
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class AccountInput:
    """What the admin submitted in the modal (``client_secret`` ``None`` keeps the stored one)."""

    provider: str
    enabled: bool
    name: str
    strict_matching: bool
    notes: str
    config: Mapping[str, str]
    client_secret: str | None = field(repr=False)
    secret_expires_on: date | None
    #: the Client Authentication chosen (``None``: the provider's default)
    client_auth: str | None = None
    certificate: CertificateInput = CertificateInput()


@dataclass(frozen=True)
class SaveResult:
    """``errors`` (field -> message) when nothing was saved; else whether to authorize now."""

    errors: dict[str, str] = field(default_factory=dict)
    needs_authorization: bool = False


@dataclass(frozen=True)
class TokenDetails:
    """The Token tab: the credential's state, shrouded tokens, who, when, and recent events."""

    status: str
    resource_owner: str | None
    authorized_by: str | None
    subject: str | None
    tenant: str | None
    scope: str
    audience: str | None
    expires_at: datetime
    expired: bool
    issued_at: datetime
    refreshed_at: datetime | None
    refresh_token_issued_at: datetime
    access_token_shrouded: str
    refresh_token_shrouded: str
    config_signature: str
    signature_current: bool
    failure_count: int
    last_error: str | None
    next_retry_at: datetime | None
    #: why the grant cannot be used and what to press; ``None`` while it works
    unusable: str | None = None


@dataclass(frozen=True)
class ApplicationAccess:
    """The Token tab of an account with application access: the roles its token carries,
    those the mail protocols need but it lacks, and the tenant setup for this mailbox."""

    roles: tuple[str, ...]
    missing_roles: tuple[str, ...]
    service_principal_known: bool
    setup: tuple[SetupCommand, ...]
    script: str


@dataclass(frozen=True)
class AccountView:
    """Everything the modal renders for one account (never a secret in clear)."""

    exists: bool
    key: str
    purpose: str
    address: str
    provider: str
    name: str
    enabled: bool = True
    strict_matching: bool = True
    notes: str = ""
    config: Mapping[str, str] = field(default_factory=dict)
    has_client_secret: bool = False
    secret_expires_on: date | None = None
    token: TokenDetails | None = None
    events: list[EventMixin] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: where to search the IdP's logs for an event's diagnostics (``Provider.diagnostics_help``)
    diagnostics_help: str = ""
    #: set when the account uses application access
    application: ApplicationAccess | None = None
    #: whether a user's grant (with a refresh token) stands behind the token
    delegated: bool = True
    #: the certificate of ``private_key_jwt``, and a rollover's pending one
    certificate: CertificateFacts | None = None
    pending_certificate: CertificateFacts | None = None


def default_name(address: str, purpose: str) -> str:
    """The Name a new account gets: ``"<email> (mailbox|smtp)"``."""
    return f"{address} ({purpose})"


def shroud(secret: str) -> str:
    """The first characters of a token and asterisks, enough to tell two tokens apart."""
    return secret[:SHOWN_CHARACTERS] + "*" * 12 if secret else ""


def view(
    st: MailOAuthState, key: str, purpose: str, address: str, provider: str | None
) -> AccountView:
    """The modal's data for ``key``/``purpose``; ``provider`` is the one the host page selected."""
    m = st.models
    with own_session(st.db) as s:
        account = find(s, m, key, purpose)
        if account is None:
            chosen = registry.get(provider or "microsoft")
            return AccountView(
                exists=False,
                key=key,
                purpose=purpose,
                address=address,
                provider=chosen.id,
                name=default_name(address, purpose),
                config=chosen.defaults(),
            )
        events = s.scalars(
            sa.select(m.Event)
            .where(m.Event.account_id == account.id)
            .order_by(m.Event.at.desc(), m.Event.id.desc())
            .limit(EVENTS_SHOWN)
        ).all()
        return AccountView(
            exists=True,
            key=key,
            purpose=purpose,
            address=address,
            provider=account.provider,
            name=account.name,
            enabled=account.enabled,
            strict_matching=account.strict_matching,
            notes=account.notes,
            config=dict(account.config),
            has_client_secret=account.client_secret is not None,
            secret_expires_on=account.secret_expires_on,
            certificate=certificates.facts(account.certificate),
            pending_certificate=certificates.facts(account.next_certificate),
            token=_token_details(st, account),
            events=list(events),
            warnings=account_health(account, account.credential, st.config, utcnow()).warnings
            if account.credential is not None
            else [],
            diagnostics_help=_diagnostics_help(account.provider),
            application=_application(st, account, address),
            delegated=_delegated(account),
        )


def _diagnostics_help(provider: str) -> str:
    """The provider's :attr:`~flask_mailoauth.providers.base.Provider.diagnostics_help` in the
    admin's language; empty for a provider that is not installed."""
    try:
        return str(registry.get(provider).diagnostics_help)
    except UnknownProvider:
        return ""


def _delegated(account: AccountMixin) -> bool:
    """Whether ``account`` uses delegated access (an unknown provider counts as delegated)."""
    try:
        provider = registry.get(account.provider)
    except UnknownProvider:
        return True
    return provider.access(account.config) == AccessKind.DELEGATED


def _application(
    st: MailOAuthState, account: AccountMixin, address: str
) -> ApplicationAccess | None:
    """The application access details of ``account``, or ``None`` when it is delegated."""
    try:
        provider = registry.get(account.provider)
    except UnknownProvider:
        return None
    config = account.config
    if provider.access(config) != AccessKind.APPLICATION:
        return None
    cred = account.credential
    readable = _readable(st, cred) if cred is not None else None
    roles = tuple(tenant_setup.token_roles(readable[0])) if readable else ()
    protocols = tenant_setup.served_protocols(st, account.key, account.purpose)
    required = provider.required_roles(config, protocols)
    sp_id = provider.value(config, "service_principal_id")
    setup = tenant_setup.commands(provider.value(config, "client_id"), sp_id, address, protocols)
    return ApplicationAccess(
        roles=roles,
        missing_roles=tuple(r for r in required if r not in roles) if readable else (),
        service_principal_known=bool(sp_id),
        setup=tuple(setup),
        script=tenant_setup.script(setup),
    )


def find(session: Session, m: Models, key: str, purpose: str) -> AccountMixin | None:
    """The account stored for ``key`` and ``purpose`` in ``session``, or ``None``."""
    return session.scalars(
        sa.select(m.Account).where(m.Account.key == key, m.Account.purpose == purpose)
    ).one_or_none()


def _readable(st: MailOAuthState, credential: CredentialMixin) -> tuple[str, str] | None:
    """The credential's access and refresh tokens, or ``None`` when no key decrypts them."""
    try:
        return st.reveal(credential, "access_token"), st.reveal(credential, "refresh_token")
    except DecryptionError:
        return None


def unusable_reason(st: MailOAuthState, account: AccountMixin) -> str | None:
    """Why the account's stored grant cannot be used (and what to press), or ``None``."""
    cred = account.credential
    if cred is None:
        return None
    if cred.status == CredentialStatus.REAUTHORIZATION_REQUIRED:
        return str(UNUSABLE_REAUTHORIZE)
    if cred.status == CredentialStatus.CONFIGURATION_ERROR:
        return str(UNUSABLE_CONFIGURATION)
    if cred.config_signature != account.config_signature:
        return str(UNUSABLE_SIGNATURE)
    if _readable(st, cred) is None:
        return str(UNUSABLE_KEY_GONE)
    return None


def _token_details(st: MailOAuthState, account: AccountMixin) -> TokenDetails | None:
    cred = account.credential
    if cred is None:
        return None
    access, refresh = _readable(st, cred) or ("", "")
    return TokenDetails(
        status=cred.status,
        resource_owner=cred.resource_owner,
        authorized_by=cred.authorized_by,
        subject=cred.subject,
        tenant=cred.tenant,
        scope=cred.scope,
        audience=cred.audience,
        expires_at=cred.expires_at,
        expired=cred.expires_at <= utcnow(),
        issued_at=cred.issued_at,
        refreshed_at=cred.refreshed_at,
        refresh_token_issued_at=cred.refresh_token_issued_at,
        access_token_shrouded=shroud(access),
        refresh_token_shrouded=shroud(refresh),
        config_signature=cred.config_signature,
        signature_current=cred.config_signature == account.config_signature,
        failure_count=cred.failure_count,
        last_error=cred.last_error,
        next_retry_at=cred.next_retry_at,
        unusable=unusable_reason(st, account),
    )


def save(
    st: MailOAuthState,
    key: str,
    purpose: str,
    address: str,
    data: AccountInput,
) -> SaveResult:
    """Validate and store the modal's input; tell whether the grant must be (re)authorized.

    A change to a signed field (provider, tenant, client id, endpoints, scopes) invalidates the
    grant; the client secret, its end date and the client authentication do not: the grant
    belongs to the client id, however the client proves itself, so rotating a secret or moving
    to a certificate needs no re-consent.
    """
    provider = registry.get(data.provider)
    allow_insecure_http, timeout = st.config.allow_insecure_http, st.config.http_timeout
    config = {f.name: provider.value(data.config, f.name) for f in provider.fields}
    errors = provider.validate(config, allow_insecure_http=allow_insecure_http)
    if not errors:
        try:
            with OutboundHTTP.open(st.config.outbound, timeout, deadline=2 * timeout) as http:
                config = provider.complete(config, http)
        except ValueError as exc:
            errors["__all__"] = str(exc)
        else:
            # What discovery filled in obeys the same rules as what the admin typed (https...).
            errors = provider.validate(config, allow_insecure_http=allow_insecure_http)
    name = data.name.strip() or default_name(address, purpose)
    imported = _imported(data.certificate, errors)
    m = st.models
    with own_session(st.db) as s:
        account = find(s, m, key, purpose)
        shown = account.config if account is not None and account.provider == provider.id else {}
        method = _client_auth(provider, config, data.client_auth, shown, errors)
        if len(provider.client_auths) > 1:
            config["client_auth"] = method
        taken = s.scalars(sa.select(m.Account.id).where(m.Account.name == name)).first()
        if taken is not None and (account is None or taken != account.id):
            errors["name"] = gettext(
                "The name %(name)s is already used by another account.", name=repr(name)
            )
        if (
            method in SECRET_AUTHS
            and not data.client_secret
            and (account is None or account.client_secret is None)
        ):
            errors["client_secret"] = gettext(
                "Client Secret is required (paste the secret's Value)."
            )
        elif data.client_secret and "client_secret" not in errors:
            problem = provider.secret_problem(config, data.client_secret)
            if problem:
                errors["client_secret"] = problem
        if (
            method == ClientAuth.PRIVATE_KEY_JWT
            and data.certificate.action not in NEW_CERTIFICATE
            and (account is None or account.certificate is None)
        ):
            errors["certificate_action"] = gettext(
                "Certificate authentication needs a certificate: generate one, or import a PEM "
                "or PFX file."
            )
        if errors:
            return SaveResult(errors=errors)
        created = account is None
        auth_changed = account is not None and provider.client_auth(account.config) != method
        if account is None:
            account = m.Account(key=key, purpose=purpose, address=address)
            s.add(account)
        dropped = not created and account.provider != provider.id and account.credential is not None
        if dropped:
            s.delete(account.credential)
        account.provider = provider.id
        account.address = address
        account.name = name
        account.enabled = data.enabled
        account.strict_matching = data.strict_matching
        account.notes = data.notes
        account.config = config
        account.secret_expires_on = data.secret_expires_on
        account.config_signature = provider.config_signature(config)
        if data.client_secret:
            st.seal(account, "client_secret", data.client_secret)
        _change_certificates(st, account, data.certificate.action, imported, name)
        s.flush()
        credential = None if dropped else account.credential
        if (
            (data.client_secret or auth_changed)
            and credential is not None
            and credential.status == CredentialStatus.CONFIGURATION_ERROR
        ):
            # A new secret (or another way to authenticate the client) is the usual fix for a
            # configuration error: let the next use retry.
            credential.status, credential.next_retry_at = CredentialStatus.ACTIVE, None
        # Submit authorizes whenever the stored grant cannot be used, changed or not.
        needs = credential is None or unusable_reason(st, account) is not None
        s.add(
            m.Event(
                account_id=account.id,
                kind=EventKind.CONFIG_SAVED,
                message=_saved_message(dropped=dropped, needs_authorization=needs),
            )
        )
    st.cache.pop((key, purpose), None)
    return SaveResult(needs_authorization=needs and data.enabled)


def _client_auth(
    provider: Provider,
    config: Mapping[str, str],
    chosen: str | None,
    shown: Mapping[str, str],
    errors: dict[str, str],
) -> ClientAuth:
    """The client authentication chosen for ``config``, or an error on the ``client_auth``
    field when the provider (or what its IdP accepts) does not offer it.

    The select's preselected value (the default for the ``shown`` config) left as it was
    follows what this save learnt: when discovery has just narrowed the choices, it becomes
    their default. Only a method the admin picked gets the error.
    """
    choices = provider.client_auth_choices(config)
    method = next((a for a in choices if a == chosen), None)
    if method is None and chosen == provider.client_auth(shown):
        return choices[0]
    if chosen and method is None:
        errors["client_auth"] = gettext(
            "The identity provider does not accept %(method)s here; choose one of: %(choices)s.",
            method=chosen,
            choices=", ".join(choices),
        )
    return method or provider.client_auth(config)


def _imported(given: CertificateInput, errors: dict[str, str]) -> ClientCertificate | None:
    """The certificate and key of the file to import, or an error on its field."""
    if given.action != CertificateAction.IMPORT:
        return None
    try:
        return certificates.load(given.file, given.password)
    except CertificateError as exc:
        errors["certificate_file"] = str(exc)
        return None


def _change_certificates(
    st: MailOAuthState,
    account: AccountMixin,
    action: CertificateAction,
    imported: ClientCertificate | None,
    name: str,
) -> None:
    """Store a generated or imported certificate (current without one, else pending), or
    drop the pending one."""
    if action == CertificateAction.DISCARD:
        certificates.discard_pending(account)
        return
    new = imported
    if action == CertificateAction.GENERATE:
        new = certificates.generate(name)
    if new is not None:
        certificates.store(st, account, new)


def certificate_pem(st: MailOAuthState, key: str, purpose: str, *, pending: bool) -> str | None:
    """The account's certificate (PEM; the pending one with ``pending``), for download."""
    with own_session(st.db) as s:
        account = find(s, st.models, key, purpose)
        if account is None:
            return None
        return account.next_certificate if pending else account.certificate


def _saved_message(*, dropped: bool, needs_authorization: bool) -> str:
    """The event log's line for a saved IdP Config: what became of the stored grant."""
    if dropped:  # no credential left: it always needs an authorization
        return gettext(
            "IdP Config saved; the provider changed, old credentials removed; authorization "
            "required"
        )
    if needs_authorization:
        return gettext("IdP Config saved; authorization required")
    return gettext("IdP Config saved; the current token stays valid")


def account_for_authorization(st: MailOAuthState, key: str, purpose: str) -> AccountMixin | None:
    """The stored account (detached), or ``None`` when the modal was never submitted."""
    with own_session(st.db) as s:
        account = find(s, st.models, key, purpose)
        if account is not None:
            s.expunge(account)
        return account


def delete_token(st: MailOAuthState, key: str, purpose: str) -> Revoked | None:
    """Delete the account's credentials (not its configuration) and revoke the grant at the
    identity provider when the provider can (RFC 7009); ``None`` when there were none.

    The row goes first, in its own transaction, so that no refresh can bring the grant back
    and no transaction waits on the IdP; whatever the IdP then answers, the token stays
    deleted, and the event log says what the IdP made of it.
    """
    m = st.models
    with own_session(st.db) as s:
        account = find(s, m, key, purpose)
        if account is None or account.credential is None:
            return None
        provider_id, config = account.provider, dict(account.config)
        try:
            revealed: tuple[str, str, str] | None = (
                st.reveal(account, "client_secret") if account.client_secret else "",
                st.reveal(account.credential, "refresh_token"),
                st.reveal(account.credential, "access_token"),
            )
            certificate = certificates.stored(st, account).current
        except DecryptionError:
            revealed, certificate = None, None
        s.delete(account.credential)
    st.cache.pop((key, purpose), None)
    revoked = _revoke(st, provider_id, config, revealed, certificate)
    with own_session(st.db) as s:
        account = find(s, m, key, purpose)
        if account is not None:
            s.add(
                m.Event(
                    account_id=account.id,
                    kind=EventKind.TOKEN_DELETED,
                    level=EventLevel.INFO if revoked.settled else EventLevel.WARNING,
                    message=gettext(
                        "Token deleted by an admin. %(revocation)s",
                        revocation=revocation_report(revoked),
                    ),
                )
            )
    signals.token_deleted.send(st.extension, key=key, purpose=purpose)
    return revoked


def _revoke(
    st: MailOAuthState,
    provider_id: str,
    config: Mapping[str, str],
    revealed: tuple[str, str, str] | None,
    certificate: ClientCertificate | None,
) -> Revoked:
    """Revoke the deleted grant: the client secret, refresh and access token ``revealed``,
    ``None`` when they could not be decrypted; ``certificate`` signs the client's assertion
    when the client authenticates with one."""
    try:
        provider = registry.get(provider_id)
    except UnknownProvider as exc:
        return Revoked(RevocationOutcome.FAILED, str(exc))
    if revealed is None:
        if not revocation_endpoint(provider, config):
            return Revoked(RevocationOutcome.NOT_SUPPORTED)
        return Revoked(
            RevocationOutcome.FAILED,
            gettext("The stored token cannot be decrypted, so it could not be sent."),
        )
    client_secret, refresh_token, access_token = revealed
    timeout = st.config.http_timeout
    return revoke(
        provider,
        config,
        client_secret,
        refresh_token=refresh_token,
        access_token=access_token,
        policy=st.config.outbound,
        timeout=timeout,
        deadline=2 * timeout,
        certificate=certificate,
    )


def revocation_report(revoked: Revoked) -> str:
    """One or two sentences on what the identity provider made of the revocation request."""
    if revoked.outcome == RevocationOutcome.REVOKED:
        return gettext("The identity provider confirmed the revocation.")
    if revoked.outcome == RevocationOutcome.NOT_SUPPORTED:
        return gettext(
            "The provider offers no revocation: the grant stays valid at the identity provider "
            "until it expires or is revoked there."
        )
    return gettext(
        "The identity provider did not confirm the revocation: %(detail)s The grant may stay "
        "valid until it expires; revoke it at the identity provider if it must stop working now.",
        detail=revoked.detail,
    )
