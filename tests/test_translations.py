"""The message catalogue: its template matches the source; German translates all of it, intact."""

from __future__ import annotations

from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.frontend import CommandLineInterface
from babel.messages.pofile import read_po

from flask_mailoauth import i18n

ROOT = Path(__file__).resolve().parents[1]
TRANSLATIONS = ROOT / "flask_mailoauth" / "translations"
TEMPLATE = TRANSLATIONS / f"{i18n.DOMAIN}.pot"


def read(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as source:
        return read_po(source, locale=locale)


def ids(catalog: Catalog) -> set[object]:
    return {message.id for message in catalog if message.id}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Catalog:
    """The catalogue template as docs/translations.rst's ``pybabel extract`` makes it now."""
    out = tmp_path_factory.mktemp("pot") / "now.pot"
    # the documented command, run in-process (argv[0] is the program name)
    options = ["-F", str(ROOT / "babel.cfg"), "-k", "lazy_gettext", "--no-location"]
    CommandLineInterface().run(
        ["pybabel", "-q", "extract", *options, "--sort-output", "-o", str(out), str(ROOT)]
    )
    return read(out)


def test_the_shipped_template_is_current(extracted):
    shipped = read(TEMPLATE)
    assert sorted(map(str, ids(extracted) - ids(shipped))) == [], "run pybabel extract"
    assert sorted(map(str, ids(shipped) - ids(extracted))) == [], "run pybabel extract"


@pytest.mark.parametrize("locale", i18n.available_locales())
def test_every_message_is_translated(locale):
    catalog = read(TRANSLATIONS / locale / "LC_MESSAGES" / f"{i18n.DOMAIN}.po", locale)
    assert ids(catalog) == ids(read(TEMPLATE)), "run pybabel update"
    for message in catalog:
        if not message.id:
            continue
        forms = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(forms), f"untranslated: {message.id!r}"
        assert not message.fuzzy, f"fuzzy: {message.id!r}"
    assert not catalog.obsolete


@pytest.mark.parametrize("locale", i18n.available_locales())
def test_translations_keep_their_placeholders(locale):
    """A renamed or mistyped ``%(name)s`` would raise KeyError on the admin's screen."""
    catalog = read(TRANSLATIONS / locale / "LC_MESSAGES" / f"{i18n.DOMAIN}.po", locale)
    problems = [(message.id, [str(e) for e in errors]) for message, errors in catalog.check()]
    assert problems == []


def test_german_is_shipped():
    assert "de" in i18n.available_locales()
