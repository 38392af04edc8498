"""The extension's flashed messages: what kind each is, and the host's category for that kind."""

from __future__ import annotations

from enum import StrEnum

from flask import current_app

from .errors import SetupError


class FlashKind(StrEnum):
    """What a flashed message of the extension says; the category is the host's choice."""

    SUCCESS = "success"
    ERROR = "error"


def flash_category(kind: FlashKind) -> str:
    """The host's flash category for ``kind`` (``MAILOAUTH_FLASH_CATEGORIES``, else the kind)."""
    return current_app.config["MAILOAUTH_FLASH_CATEGORIES"].get(kind.value, kind.value)


def banner_kind(category: str) -> str:
    """The kind (``success``/``error``) a flashed ``category`` stands for: our own pages style
    their banners by kind, whatever category the host maps it to."""
    for kind, mapped in current_app.config["MAILOAUTH_FLASH_CATEGORIES"].items():
        if mapped == category:
            return kind
    return category


def check_flash_categories(categories: object) -> None:
    """Refuse a ``MAILOAUTH_FLASH_CATEGORIES`` that would silently be ignored."""
    kinds = {k.value for k in FlashKind}
    if not isinstance(categories, dict) or not all(
        key in kinds and isinstance(value, str) and value for key, value in categories.items()
    ):
        raise SetupError(
            "MAILOAUTH_FLASH_CATEGORIES must map 'success' and/or 'error' to your flash "
            f"categories, e.g. {{'error': 'danger'}} for Bootstrap; got {categories!r}."
        )
