"""Logging, configured once per process: a rotating file in the user log directory.

The log holds prompts, model paths and error details, so its files are readable by their
owner only (0600, in a 0700 folder), backups included.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from io import TextIOWrapper
from pathlib import Path

from mixdesk import paths

_configured = False


def app_log_path() -> Path:
    """Return the path of the app's log file."""
    return paths.log_dir() / "mixdesk.log"


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file that only its owner can read, from its first byte."""

    def _open(self) -> TextIOWrapper:
        paths.private_file(Path(self.baseFilename))  # 0600 before anything is written
        return super()._open()


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
        paths.ensure_private_dir(path.parent)
        for backup in path.parent.glob(path.name + ".*"):
            paths.private_file(backup)  # written by a version that left them readable
        handler = PrivateRotatingFileHandler(
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


#: Command-line values that never go to the log: keys, and what the user writes to a model.
HIDDEN_ARGUMENTS = frozenset({"api_key", "prompt", "system"})


def loggable_arguments(values: dict[str, object]) -> dict[str, object]:
    """Parsed command-line values with keys and prompts replaced by ``"<hidden>"``.

    Works on the parsed values rather than on argv, so abbreviations (``--api-k``) and
    ``--api-key=...`` are hidden too.
    """
    return {
        name: "<hidden>" if name in HIDDEN_ARGUMENTS and value is not None else value
        for name, value in values.items()
    }
