"""pgjob's logger ("pgjob") and the PGJOB_DEBUG switch shared with the C layer's tracing."""
from __future__ import annotations

import logging
import os

logger = logging.getLogger("pgjob")

DEBUG_ENABLED = os.environ.get("PGJOB_DEBUG", "") not in ("", "0")

if DEBUG_ENABLED and not logger.handlers:
    # PGJOB_DEBUG=1 must show something even in a program that never configured logging.
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("pgjob[py]: %(levelname)s %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.DEBUG)
