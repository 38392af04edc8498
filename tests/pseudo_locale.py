"""A pseudo-language for tests: every extracted message, translated as itself in ⟦…⟧.

Text on a page that is not wrapped was never marked for translation.
"""

from __future__ import annotations

from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import write_po

from flask_mailoauth import i18n

ROOT = Path(__file__).resolve().parents[1]
#: a locale the extension does not ship
PSEUDO = "eo"
OPEN, CLOSE = "⟦", "⟧"


def wrapped(text: str) -> str:
    return f"{OPEN}{text}{CLOSE}"


def extracted_messages() -> list[str | tuple[str, ...]]:
    """Every msgid ``pybabel extract -F babel.cfg -k lazy_gettext`` finds in the package."""
    with (ROOT / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    keywords = {**DEFAULT_KEYWORDS, "lazy_gettext": None}
    found = extract_from_dir(str(ROOT), method_map, options_map, keywords=keywords)
    return [message for _file, _line, message, _comments, _context in found]


def write_catalogues(root: Path) -> Path:
    """A translations folder under ``root`` holding the pseudo-language's catalogue."""
    catalog = Catalog(locale=PSEUDO, domain=i18n.DOMAIN)
    for message in extracted_messages():
        if isinstance(message, tuple):
            catalog.add(message[:2], tuple(wrapped(text) for text in message[:2]))
        else:
            catalog.add(message, wrapped(message))
    po = root / PSEUDO / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"
    po.parent.mkdir(parents=True)
    with po.open("wb") as out:
        write_po(out, catalog)
    return root
