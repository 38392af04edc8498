"""Provider ids -> provider instances: the built-ins, classes registered by the host, and
third-party providers found through the ``flask_mailoauth.providers`` entry point group.

Entry points are loaded lazily, on the first :func:`get` or :func:`all`. A broken plugin is
logged and skipped: it never takes the host application down.
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import EntryPoint, entry_points

from ..errors import UnknownProvider
from ..i18n import gettext
from .base import Provider, field_problems
from .generic import GenericProvider
from .google import GoogleProvider
from .microsoft import MicrosoftProvider

__all__ = [
    "ENTRY_POINT_GROUP",
    "UnknownProvider",
    "all",
    "failed_plugins",
    "get",
    "register",
    "reload_plugins",
]

#: the entry point group third-party provider packages declare their ``Provider`` subclass in
ENTRY_POINT_GROUP = "flask_mailoauth.providers"
_BUILTINS = (MicrosoftProvider, GoogleProvider, GenericProvider)
#: the built-in provider ids, in the order :func:`all` lists them first
BUILTIN_IDS = tuple(cls.id for cls in _BUILTINS)

logger = logging.getLogger("flask_mailoauth")

_providers: dict[str, Provider] = {}
_plugin_ids: set[str] = set()
_failed: dict[str, str] = {}
_plugins_loaded = False
_lock = threading.RLock()


def register(cls: type[Provider]) -> type[Provider]:
    """Register a :class:`~flask_mailoauth.providers.base.Provider` subclass under its ``id``;
    usable as a class decorator.

    Registering the same class again is a no-op; another class under a taken id is refused,
    and so are invalid field declarations (see :func:`~.base.field_problems`): ``ValueError``.
    """
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"{cls!r} is not a flask_mailoauth Provider subclass.")
    for attribute in ("id", "display_name"):
        if not isinstance(getattr(cls, attribute, None), str) or not getattr(cls, attribute):
            raise ValueError(f"{cls.__qualname__} must set a non-empty {attribute!r}.")
    problems = field_problems(cls.fields)
    if problems:
        raise ValueError(f"{cls.__qualname__} declares invalid fields: {'; '.join(problems)}.")
    with _lock:
        existing = _providers.get(cls.id)
        if existing is not None:
            if type(existing) is cls:
                return cls
            raise ValueError(
                f"Provider id {cls.id!r} is already registered by "
                f"{type(existing).__module__}.{type(existing).__qualname__}; "
                f"{cls.__module__}.{cls.__qualname__} needs another id."
            )
        _providers[cls.id] = cls()
    return cls


def get(provider_id: str) -> Provider:
    """The provider registered under ``provider_id``.

    Raises :class:`~flask_mailoauth.errors.UnknownProvider` if there is none.
    """
    _load_plugins()
    try:
        return _providers[provider_id]
    except KeyError:
        known = ", ".join(p.id for p in all())
        raise UnknownProvider(
            gettext(
                "No provider %(provider)r; known: %(known)s.", provider=provider_id, known=known
            )
        ) from None


def all() -> list[Provider]:
    """Every provider: the built-ins in their fixed order, then the others by id."""
    _load_plugins()
    with _lock:
        others = sorted(set(_providers) - set(BUILTIN_IDS))
        return [_providers[i] for i in (*BUILTIN_IDS, *others) if i in _providers]


def failed_plugins() -> dict[str, str]:
    """The entry points that could not be loaded: their name -> why (as logged)."""
    _load_plugins()
    with _lock:
        return dict(_failed)


def reload_plugins() -> list[str]:
    """Forget the providers loaded from entry points and load them again; their ids, sorted.

    For tests and for hosts that install provider packages at run time.
    """
    global _plugins_loaded
    with _lock:
        for provider_id in _plugin_ids:
            _providers.pop(provider_id, None)
        _plugin_ids.clear()
        _failed.clear()
        _plugins_loaded = False
        _load_plugins()
        return sorted(_plugin_ids)


def _load_plugins() -> None:
    """Load every entry point of :data:`ENTRY_POINT_GROUP` once; skip and log the broken ones."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    with _lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True  # set first: a plugin may call get() while being imported
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            _load_plugin(entry_point)


def _load_plugin(entry_point: EntryPoint) -> None:
    """Register the Provider subclass ``entry_point`` names, or log why it cannot be used."""
    before = set(_providers)
    try:
        cls = entry_point.load()
        register(cls)
    except Exception as exc:
        source = entry_point.dist.name if entry_point.dist else "an unknown distribution"
        reason = f"{type(exc).__name__}: {exc}"
        _failed[entry_point.name] = reason
        logger.warning(
            "Skipping provider plugin %r (%s, from %s): %s",
            entry_point.name,
            entry_point.value,
            source,
            reason,
        )
        return
    if cls.id in before and cls.id not in _plugin_ids:
        return  # the same class was already registered by the host (or imported itself)
    _plugin_ids.add(cls.id)


for _builtin in _BUILTINS:
    register(_builtin)
