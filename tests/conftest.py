"""Settings for the whole test session."""

from __future__ import annotations

import logging

# The HTTP client logs each request at INFO; failures are easier to read without them.
for _noisy in ("httpx", "httpx2"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
