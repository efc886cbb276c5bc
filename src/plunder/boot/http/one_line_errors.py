"""Malformed HTTP requests are logged as one line, not as a traceback.

aiohttp logs a request it cannot parse (a header over the limit, garbage instead of HTTP) with
the full traceback. On a provisioning network that is noise anyone can produce; one line with
the reason is what an operator needs.
"""

from __future__ import annotations

import logging


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = "refused a malformed request: %s: %s"
            record.args = (type(error).__name__, " ".join(str(error).split())[:200])
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = None
            record.exc_text = None
        return True


_FILTER = _OneLine()


def install() -> None:
    """Fold aiohttp's server-side error tracebacks into one line each (idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
