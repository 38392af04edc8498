"""The demo's language switch: Flask-Babel picks the admin's choice, else the browser's.

The extension follows the host's Flask-Babel locale, so switching here switches the OAuth2 modal,
its banners and flashes. The demo's own pages stay English: it translates only what it ships.
"""

from __future__ import annotations

from flask import Flask, redirect, request, session
from flask_babel import Babel, get_locale
from werkzeug.wrappers import Response

from flask_mailoauth.i18n import available_locales

#: the switch's choices, each named in its own language
LANGUAGES = {"en": "English", "de": "Deutsch"}

babel = Babel()


def select_locale() -> str | None:
    """The admin's choice from the switch, else the best match of the browser's languages."""
    chosen = session.get("language")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(LANGUAGES)


def switch_language() -> Response:
    """Remember the chosen language and go back to the page the switch was on."""
    chosen = request.form.get("language", "")
    if chosen in LANGUAGES:
        session["language"] = chosen
    target = request.form.get("next", "/")
    # only a path on this site: never an absolute or scheme-relative URL from the form
    return redirect(target if target.startswith("/") and not target.startswith("//") else "/")


def init_app(app: Flask) -> None:
    missing = set(LANGUAGES) - {"en", *available_locales()}
    if missing:  # a choice the extension cannot speak would silently show English
        raise RuntimeError(f"flask-mailoauth ships no translation for {sorted(missing)}")
    babel.init_app(app, locale_selector=select_locale)
    app.add_url_rule("/language", "switch_language", switch_language, methods=["POST"])
    app.jinja_env.globals.update(languages=LANGUAGES, current_language=lambda: str(get_locale()))
