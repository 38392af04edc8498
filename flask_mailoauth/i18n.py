"""What an admin reads, in the admin's language: the host's Flask-Babel locale, English without it.

The extension keeps its own catalogue (domain ``flask_mailoauth``), so a host's translations and
ours never collide. The catalogues ship as ``.po`` files and are compiled in memory on first use
per locale: nothing generated is kept in the source tree. Without Flask-Babel on the host (or
outside an application), every function returns the English text, formatted.
"""

from __future__ import annotations

import io
import threading
from functools import cache
from importlib import resources

from flask import current_app, has_app_context, has_request_context

try:  # Flask-Babel is optional: a host that has it gets our translations in its locale.
    from babel import Locale
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    from babel.support import NullTranslations, Translations
    from flask_babel import get_locale
except ImportError:  # pragma: no cover - exercised by the installed-wheel test
    get_locale = None

#: the gettext domain of this extension's messages
DOMAIN = "flask_mailoauth"
_CATALOGUES = resources.files(__package__) / "translations"
_loaded: dict[str, NullTranslations] = {}
_loading = threading.Lock()


@cache
def available_locales() -> list[str]:
    """Locales this extension ships a translation for (besides English)."""
    return sorted(entry.name for entry in _CATALOGUES.iterdir() if entry.is_dir())


def _catalogue(locale: str) -> NullTranslations:
    """The translations for ``locale`` (``de_AT`` falls back to ``de``), compiled once."""
    with _loading:
        if locale not in _loaded:
            translations = NullTranslations()
            for name in (locale, locale.split("_")[0]):
                po = _CATALOGUES / name / "LC_MESSAGES" / f"{DOMAIN}.po"
                if po.is_file():
                    with po.open("rb") as source:
                        catalog = read_po(source, locale=name, domain=DOMAIN)
                    compiled = io.BytesIO()
                    write_mo(compiled, catalog)
                    compiled.seek(0)
                    translations = Translations(compiled, domain=DOMAIN)
                    break
            _loaded[locale] = translations
        return _loaded[locale]


def _locale() -> Locale | None:
    """The host's Flask-Babel locale when it is one we translate into, else ``None`` (English)."""
    if get_locale is None or not has_app_context():
        return None
    babel = current_app.extensions.get("babel")
    if babel is None:
        return None
    # Outside a request (the CLI) a host's locale selector cannot read the request: use the
    # host's default locale, as Flask-Babel's own outgoing mail would.
    chosen = get_locale() if has_request_context() else babel.instance.default_locale
    if chosen is None:
        return None
    locale = Locale.parse(chosen)
    return locale if locale.language in available_locales() else None


def _translations() -> NullTranslations | None:
    """The catalogue of the current locale, or ``None`` to speak English."""
    locale = _locale()
    return None if locale is None else _catalogue(str(locale))


def current_language() -> str:
    """The language our text is in, as an HTML ``lang`` (``de``, ``de-AT``; ``en`` without one)."""
    locale = _locale()
    return "en" if locale is None else str(locale).replace("_", "-")


def gettext(message: str, **variables: object) -> str:
    """``message`` in the admin's language; ``%(name)s`` placeholders filled from ``variables``."""
    translations = _translations()
    text = translations.ugettext(message) if translations else message
    return text % variables if variables else text


def ngettext(singular: str, plural: str, num: int, **variables: object) -> str:
    """The form for ``num`` (available as ``%(num)d``) in the admin's language."""
    translations = _translations()
    if translations:
        text = translations.ungettext(singular, plural, num)
    else:
        text = singular if num == 1 else plural
    return text % {"num": num, **variables}


class LazyText:
    """A message translated when it is shown, for text defined at import time (form labels)."""

    __slots__ = ("message", "variables")

    def __init__(self, message: str, **variables: object) -> None:
        self.message = message
        self.variables = variables

    def __str__(self) -> str:
        return gettext(self.message, **self.variables)

    def __repr__(self) -> str:
        return f"LazyText({self.message!r})"

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def lazy_gettext(message: str, **variables: object) -> LazyText:
    """:func:`gettext` deferred until the text is shown (module-level labels and constants)."""
    return LazyText(message, **variables)


#: the names the templates use; the renderer passes them in, so a host's own ``_`` is untouched
TEMPLATE_FUNCTIONS = {"_": gettext, "ngettext": ngettext}
