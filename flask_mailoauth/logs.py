"""The extension's logger, ``flask_mailoauth``, and its way into the host's ``app.logger``.

Flask apps usually configure ``app.logger`` (a file, Sentry, ...), a logger our records never
pass through: they propagate to the root logger only. :class:`AppLoggerBridge` hands each of
our records to the handlers of the current app's logger that the record would not reach by
propagation anyway, so every line is written once wherever the host looks.
"""

from __future__ import annotations

import logging

from flask import current_app, has_app_context

logger = logging.getLogger("flask_mailoauth")


def _chain(start: logging.Logger | None) -> list[logging.Handler]:
    """The handlers a record logged on ``start`` reaches by propagation."""
    found: list[logging.Handler] = []
    current = start
    while current is not None:
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    return found


class AppLoggerBridge(logging.Handler):
    """Passes our records to ``current_app.logger``'s handlers, never twice to one handler."""

    def emit(self, record: logging.LogRecord) -> None:
        ours = [h for h in _chain(logger) if h is not self]
        handled = bool(ours)
        if has_app_context() and current_app.logger.isEnabledFor(record.levelno):
            for handler in _chain(current_app.logger):
                if handler not in ours and record.levelno >= handler.level:
                    handler.handle(record)
                    handled = True
        last_resort = logging.lastResort
        if not handled and last_resort is not None and record.levelno >= last_resort.level:
            # what logging does when no handler at all is configured: stderr, not silence
            last_resort.handle(record)


def bridge_to_app_logger() -> None:
    """Attach the bridge to ``flask_mailoauth`` once per process (called by ``init_app``)."""
    if not any(isinstance(h, AppLoggerBridge) for h in logger.handlers):
        logger.addHandler(AppLoggerBridge())
