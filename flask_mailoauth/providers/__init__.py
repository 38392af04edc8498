"""Identity providers: the registry, the base class third-party providers extend, and the
built-in Microsoft, Google and generic OAuth2/OIDC providers."""

from . import registry
from .base import (
    ComplianceHooks,
    ConfigField,
    Endpoints,
    ErrorAdvice,
    HTTPClient,
    Identity,
    MailServer,
    MailServers,
    Provider,
    check_endpoint_url,
    classify_oauth_error,
    split_scopes,
)
from .generic import GenericProvider
from .google import GoogleProvider
from .microsoft import MicrosoftProvider

__all__ = [
    "ComplianceHooks",
    "ConfigField",
    "Endpoints",
    "ErrorAdvice",
    "GenericProvider",
    "GoogleProvider",
    "HTTPClient",
    "Identity",
    "MailServer",
    "MailServers",
    "MicrosoftProvider",
    "Provider",
    "check_endpoint_url",
    "classify_oauth_error",
    "registry",
    "split_scopes",
]
