"""The Config modal's form: the Info tab's fields, then the provider's IdP Config fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from werkzeug.datastructures import FileStorage
from wtforms import (
    BooleanField,
    DateField,
    Field,
    Form,
    PasswordField,
    RadioField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, Optional, ValidationError

try:
    from wtforms import SelectChoice
except ImportError:  # WTForms < 3.3 takes (value, label) pairs, which 3.3 deprecates

    def SelectChoice(value: str, label: str) -> tuple[str, str]:
        """A choice as WTForms 3.0-3.2 take it."""
        return (value, label)


from .accounts import AccountInput, AccountView, CertificateAction, CertificateInput
from .certificates import MAX_FILE_SIZE
from .i18n import gettext, lazy_gettext, ngettext
from .providers.base import ConfigField, Provider
from .vocabulary import ClientAuth

#: form field names of provider fields carry this prefix, so they never clash with Info fields
IDP_PREFIX = "idp_"
#: every id the modal renders starts with this, so none clashes with the host page's own ids
ID_PREFIX = "mailoauth-"
#: the fields on the Info tab; every other field (the provider's, the secret's) is on IdP Config
INFO_FIELDS = frozenset({"enabled", "name", "strict_matching", "notes"})


class MaxLength(Length):
    """``Length(max=n)`` (with its ``maxlength`` attribute) saying so in the admin's language."""

    def __init__(self, max: int) -> None:
        super().__init__(max=max)

    def __call__(self, form: Form, field: Field) -> None:
        if field.data and len(field.data) > self.max:
            raise ValidationError(
                ngettext(
                    "Field cannot be longer than %(num)d character.",
                    "Field cannot be longer than %(num)d characters.",
                    self.max,
                )
            )


class LocalDateField(DateField):
    """A date field whose parse error is in the admin's language (not WTForms' catalogue)."""

    def process_formdata(self, valuelist: list[str]) -> None:
        try:
            super().process_formdata(valuelist)
        except ValueError:
            raise ValueError(gettext("Not a valid date value.")) from None


#: the Client Authentication select's words for each method
CLIENT_AUTH_LABELS = {
    ClientAuth.SECRET_POST: lazy_gettext("Client secret in the request body (client_secret_post)"),
    ClientAuth.SECRET_BASIC: lazy_gettext("Client secret as HTTP Basic (client_secret_basic)"),
    ClientAuth.NONE: lazy_gettext("None: a public client with PKCE (none)"),
    ClientAuth.PRIVATE_KEY_JWT: lazy_gettext("Certificate (private_key_jwt)"),
}

#: "required" in the admin's language, for the fields every provider shares
REQUIRED = lazy_gettext("This field is required.")


class AccountForm(FlaskForm):
    """The fields every provider shares: the Info tab and the client secret."""

    enabled = RadioField(
        lazy_gettext("Status"),
        choices=[
            SelectChoice("1", lazy_gettext("Enabled")),
            SelectChoice("0", lazy_gettext("Disabled")),
        ],
        default="1",
    )
    name = StringField(
        lazy_gettext("Name"), validators=[DataRequired(message=REQUIRED), MaxLength(255)]
    )
    strict_matching = BooleanField(lazy_gettext("Strict Matching"), default=True)
    notes = TextAreaField(lazy_gettext("Internal Notes"), validators=[MaxLength(5000)])
    #: shown when the provider offers more than one; checked by ``accounts.save`` against what
    #: the provider (and its discovery) offers, so an unknown value gets that clear message
    client_auth = SelectField(lazy_gettext("Client Authentication"), validate_choice=False)
    # A Google service account's JSON key (the secret of that access) is about 2,400 characters.
    client_secret = PasswordField(lazy_gettext("Client Secret"), validators=[MaxLength(10000)])
    #: what Submit does with the certificates; its choices depend on what is stored
    certificate_action = SelectField(lazy_gettext("Certificate"), validate_choice=False)
    certificate_file = FileField(
        lazy_gettext("Certificate file (PEM or PFX)"),
        render_kw={"accept": ".pem,.pfx,.p12,application/x-pem-file,application/x-pkcs12"},
    )
    certificate_password = PasswordField(
        lazy_gettext("Password of the file"),
        validators=[MaxLength(1000)],
        # the file's password, never the admin's own: no browser fills it in
        render_kw={"autocomplete": "off"},
    )
    secret_expires_on = LocalDateField(
        lazy_gettext("Client secret expires on"), validators=[Optional()]
    )

    def idp_fields(self) -> list[tuple[ConfigField, Field]]:
        """The provider's fields with their form fields, in display order."""
        return [(f, self[IDP_PREFIX + f.name]) for f in self.provider.fields]

    def _certificate_input(self) -> CertificateInput:
        """The Certificate part: an unknown action keeps what is stored."""
        try:
            action = CertificateAction(self.certificate_action.data or "")
        except ValueError:
            action = CertificateAction.KEEP
        upload = self.certificate_file.data
        # one byte more than allowed: the check then says the file is too big
        data = upload.read(MAX_FILE_SIZE + 1) if isinstance(upload, FileStorage) else b""
        return CertificateInput(action, data, self.certificate_password.data or "")

    def offers_certificates(self) -> bool:
        """Whether the IdP Config tab shows the Certificate part (``private_key_jwt``)."""
        return ClientAuth.PRIVATE_KEY_JWT in self.provider.client_auths

    def chooses_client_auth(self) -> bool:
        """Whether the IdP Config tab shows the Client Authentication select."""
        return len(self.provider.client_auths) > 1

    def tab_errors(self) -> dict[str, int]:
        """How many fields of each tab (``info``, ``idp``) have errors, for the tab's label."""
        counts: dict[str, int] = {}
        for form_field in self:
            if form_field.errors and form_field.name != self.meta.csrf_field_name:
                tab = "info" if form_field.name in INFO_FIELDS else "idp"
                counts[tab] = counts.get(tab, 0) + 1
        return counts

    def first_error_tab(self) -> str | None:
        """The first tab holding a field with an error: where the page opens after Submit."""
        counts = self.tab_errors()
        return next((tab for tab in ("info", "idp") if counts.get(tab)), None)

    def to_input(self) -> AccountInput:
        """The submitted values, as the accounts module takes them."""
        return AccountInput(
            provider=self.provider.id,
            enabled=self.enabled.data == "1",
            name=self.name.data or "",
            strict_matching=bool(self.strict_matching.data),
            notes=self.notes.data or "",
            config={f.name: form_field.data or "" for f, form_field in self.idp_fields()},
            client_auth=self.client_auth.data or None,
            certificate=self._certificate_input(),
            client_secret=self.client_secret.data or None,
            secret_expires_on=self.secret_expires_on.data,
        )

    def add_errors(self, errors: dict[str, str]) -> None:
        """Attach server-side validation errors (from the provider or storage) to fields.

        A field that already has an error keeps just that one.
        """
        for name, message in errors.items():
            target = self._fields.get(IDP_PREFIX + name) or self._fields.get(name)
            if target is None:
                self.form_errors.append(message)
            elif not target.errors:
                target.errors = [message]


def _form_field(spec: ConfigField) -> Field:
    validators: list[Callable[[Form, Field], None]] = [MaxLength(2000)]
    if spec.required:
        validators.insert(
            0, DataRequired(message=lazy_gettext("%(label)s is required.", label=spec.label))
        )
    else:
        validators.insert(0, Optional())
    if spec.kind == "select":
        return SelectField(
            spec.label,
            choices=[SelectChoice(value, label) for value, label in spec.choices],
            default=spec.default,
            description=spec.help,
        )
    return StringField(
        spec.label, validators=validators, default=spec.default, description=spec.help
    )


def account_form(provider: Provider, account: AccountView, **kwargs: Any) -> AccountForm:
    """The form class for ``provider``, bound to the request and prefilled from ``account``."""
    form_class = type(
        f"{type(provider).__name__}AccountForm",
        (AccountForm,),
        {IDP_PREFIX + f.name: _form_field(f) for f in provider.fields},
    )
    same_provider = account.provider == provider.id
    config = account.config if same_provider else provider.defaults()
    data = {
        "enabled": "1" if account.enabled else "0",
        "name": account.name,
        "strict_matching": account.strict_matching,
        "notes": account.notes,
        "secret_expires_on": account.secret_expires_on,
        **{IDP_PREFIX + f.name: config.get(f.name, f.default) for f in provider.fields},
    }
    data["client_auth"] = provider.client_auth(config)
    form: AccountForm = form_class(data=data, **kwargs)
    form.provider = provider
    form.certificate_action.choices = _certificate_actions(account)
    form.client_auth.choices = [
        SelectChoice(a.value, CLIENT_AUTH_LABELS[a]) for a in provider.client_auth_choices(config)
    ]
    _namespace_ids(form)
    return form


def _certificate_actions(account: AccountView) -> list[Any]:
    """The Certificate select's choices: a new certificate becomes the pending one when one is
    stored (a rollover), and a pending one may be discarded."""
    actions = [
        SelectChoice(CertificateAction.KEEP.value, lazy_gettext("Keep as it is")),
        SelectChoice(
            CertificateAction.GENERATE.value,
            lazy_gettext("Generate a new key pair and certificate (rollover)")
            if account.certificate
            else lazy_gettext("Generate a key pair and certificate"),
        ),
        SelectChoice(CertificateAction.IMPORT.value, lazy_gettext("Import a PEM or PFX file")),
    ]
    if account.pending_certificate:
        actions.append(
            SelectChoice(
                CertificateAction.DISCARD.value, lazy_gettext("Discard the new certificate")
            )
        )
    return actions


def _namespace_ids(form: AccountForm) -> None:
    """Give every field (the CSRF field too) an id under ``ID_PREFIX``; posted names stay."""
    for form_field in form:
        form_field.id = ID_PREFIX + form_field.name
        form_field.label.field_id = form_field.id
