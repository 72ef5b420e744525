"""Where MixDesk keeps its files: platformdirs locations, overridable by environment variables.

``MIXDESK_DATA_DIR`` moves the data directory (models, conversations); the XDG variables
work as usual on Linux because platformdirs honours them.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from mixdesk import APP_NAME


def data_dir() -> Path:
    """Return the data directory (models, chat database)."""
    override = os.environ.get("MIXDESK_DATA_DIR")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    """Return the configuration directory (settings)."""
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    """Return the cache directory (partial downloads, generated check models)."""
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def log_dir() -> Path:
    """Return the log directory (the app log and the engine logs)."""
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and return it."""
    path.mkdir(parents=True, exist_ok=True)
    return path
