"""Blinker signals a host can subscribe to; the sender is the :class:`~flask_mailoauth.MailOAuth`
instance.

Every signal carries ``key`` and ``purpose`` of the account; none carries a secret.
"""

from blinker import Namespace

_signals = Namespace()

#: an admin authorized an account; also ``provider`` (its id) and ``resource_owner`` (who signed
#: in; ``None`` for application access and service accounts, where nobody does). A host whose
#: Authentication select still says "Basic" switches it to ``provider`` here.
authorized = _signals.signal("mailoauth.authorized")
#: an access token was refreshed; also ``expires_at``
refreshed = _signals.signal("mailoauth.refreshed")
#: a refresh failed; also ``failure`` (a :class:`~flask_mailoauth.errors.ProviderFailure`)
refresh_failed = _signals.signal("mailoauth.refresh_failed")
#: the grant is gone and an admin must authorize again; also ``failure``
reauthorization_required = _signals.signal("mailoauth.reauthorization_required")
#: an admin deleted the account's token
token_deleted = _signals.signal("mailoauth.token_deleted")
