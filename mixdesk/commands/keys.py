"""Where a terminal command's API key comes from, without putting it where others can read it.

``--api-key KEY`` works but leaves the key in the command line (``ps`` shows it to every user
of the machine, shells keep it in their history); ``MIXDESK_API_KEY`` and ``--api-key-file``
do not. The key found is handed on in memory or on a child's stdin, never in argv or a log.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from mixdesk.core.serving.security import API_KEY_VARIABLE
from mixdesk.errors import InvalidArgumentError


def add_key_arguments(group: argparse._ActionsContainer, *, purpose: str) -> None:
    """Add ``--api-key`` and ``--api-key-file`` to a command (or an argument group).

    Args:
        group: the parser or argument group.
        purpose: what the key is for, as the help says it ("require this key from clients").
    """
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"{purpose} (others on this machine can see a key given here: prefer "
        f"{API_KEY_VARIABLE} or --api-key-file)",
    )
    group.add_argument(
        "--api-key-file", metavar="FILE", type=Path, help="read the key from FILE's first line"
    )


def api_key_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str | None:
    """The key the user gave: ``--api-key``, ``--api-key-file`` or ``MIXDESK_API_KEY``.

    Returns:
        The key, or None if none was given.

    Raises:
        InvalidArgumentError: both options given, or an empty key file.
        OSError: the key file cannot be read.
    """
    flag: str | None = getattr(args, "api_key", None)
    path: Path | None = getattr(args, "api_key_file", None)
    if flag is not None and path is not None:
        raise InvalidArgumentError("Give the API key once: --api-key or --api-key-file, not both.")
    if flag is not None:
        if not flag.strip():
            raise InvalidArgumentError("--api-key is empty; give the key, or leave the option out.")
        return flag.strip()
    if path is not None:
        return read_key_file(path)
    value = (os.environ if environ is None else environ).get(API_KEY_VARIABLE, "").strip()
    return value or None


def read_key_file(path: Path) -> str:
    """The key on the first line of ``path``.

    Raises:
        InvalidArgumentError: the file's first line is empty.
        OSError: the file cannot be read.
    """
    with path.expanduser().open(encoding="utf-8") as fh:
        key = fh.readline().strip()
    if not key:
        raise InvalidArgumentError(
            f"The key file {path} is empty; put the API key on its first line."
        )
    return key


def endpoint_key_from(args: argparse.Namespace, url: str) -> str | None:
    """The key for the endpoint at ``url``: as :func:`api_key_from`, else the app's saved one.

    The app keeps endpoint keys in their own 0600 file (``endpoint-keys.json``), by API root.
    """
    key = api_key_from(args)
    if key is None:
        from mixdesk.core.workspace.settings import load_endpoint_keys

        key = load_endpoint_keys().get(url)
    return key
