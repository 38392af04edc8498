"""The extension's flashed messages: the host's category for each kind, and back."""

from __future__ import annotations

from .state import state
from .vocabulary import FlashKind


def flash_category(kind: FlashKind) -> str:
    """The host's flash category for ``kind`` (``MAILOAUTH_FLASH_CATEGORIES``, else the kind)."""
    return state().config.flash_categories.get(kind.value, kind.value)


def banner_kind(category: str) -> str:
    """The kind (``success``/``error``) a flashed ``category`` stands for: our own pages style
    their banners by kind, whatever category the host maps it to."""
    for kind, mapped in state().config.flash_categories.items():
        if mapped == category:
            return kind
    return category
