"""The settings of a command that takes `--config`: a configuration error is printed, not raised."""

from __future__ import annotations

import sys

from textserve.core.config import ConfigError
from textserve.settings import Settings, load_settings


def settings_or_report(path: str | None) -> Settings | None:
    """The settings loaded from `path` (None: TEXTSERVE_CONFIG_FILE or the defaults); a
    configuration error is printed to stderr and answers None (the command exits with 2)."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
