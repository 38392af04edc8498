"""Mail addresses from outside, compared one way everywhere.

Two addresses are the same when they are equal after ASCII lower-casing the whole address and
IDNA-encoding its domain (IDNA 2008, no UTS 46 mapping). Nothing else makes them equal: no
Unicode case folding (``ß`` is not ``ss``, the Kelvin sign is not ``K``), no trimming of
whitespace, and an address with whitespace or control characters equals nothing.
"""

from __future__ import annotations

import string
import unicodedata

import idna

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def canonical_address(value: object) -> str | None:
    """The comparable form of ``value``, or ``None`` when it is not a usable address."""
    if not isinstance(value, str) or not value.isprintable():
        return None  # isprintable() is False for controls and every space but U+0020 ...
    if any(unicodedata.category(c).startswith("Z") for c in value):
        return None  # ... which is refused here with the other separators
    local, at, domain = value.translate(_ASCII_LOWER).rpartition("@")
    if not (at and local and domain):
        return None
    try:
        encoded = idna.encode(domain, uts46=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    return f"{local}@{encoded}"


def same_address(first: object, second: object) -> bool:
    """True when both are usable addresses and the same mailbox by the rules above."""
    a, b = canonical_address(first), canonical_address(second)
    return a is not None and a == b
