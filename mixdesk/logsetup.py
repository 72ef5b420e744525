"""Logging, configured once per process: a rotating file in the user log directory."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from mixdesk import paths

_configured = False


def app_log_path() -> Path:
    """Return the path of the app's log file."""
    return paths.log_dir() / "mixdesk.log"


def configure_logging(*, verbose: bool = False) -> Path | None:
    """Send log records to a rotating file, and to stderr when ``verbose``.

    Returns:
        The log file's path, or None if the log directory cannot be written (MixDesk then
        logs to stderr only when verbose, rather than failing).
    """
    global _configured  # noqa: PLW0603 - logging is process-wide by nature
    root = logging.getLogger()
    if _configured:
        return app_log_path()
    _configured = True
    root.setLevel(logging.DEBUG)
    fmt = logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    path: Path | None = app_log_path()
    try:
        assert path is not None
        paths.ensure_dir(path.parent)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=2_000_000, backupCount=3, encoding="utf-8"
        )
        handler.setFormatter(fmt)
        handler.setLevel(logging.DEBUG)
        root.addHandler(handler)
    except OSError:
        path = None
    if verbose:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        err.setLevel(logging.INFO)
        root.addHandler(err)
    return path
