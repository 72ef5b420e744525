"""What the terminal front end prints: never a control character from a model, a file or the network.

Model output, GGUF metadata (a model's name), file names from the Hub and error sentences can
all carry escape sequences that retitle the terminal, clear it, move the cursor or worse.
``mixdesk`` replaces its stdout and stderr by :class:`SanitizedStream` for the length of a
command, so every write loses its control characters (all but newline and tab); MixDesk's own
progress lines pass their cursor controls through :func:`write_control`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

#: C0 controls but tab and newline, DEL, and the C1 controls (``\x9b`` starts a sequence too).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: What ``json.dumps(..., ensure_ascii=False)`` leaves raw: DEL and the C1 controls.
_JSON_RAW_CONTROL = re.compile("[\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` without control characters, except newline and tab."""
    return _CONTROL.sub("", text)


def json_safe(document: str) -> str:
    """A JSON document with DEL and C1 controls escaped (``\\u009b``): the same data, safe to print."""
    return _JSON_RAW_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", document)


class SanitizedStream:
    """A text stream whose writes lose their control characters; everything else is passed on."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(terminal_safe(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def write_control(self, sequence: str) -> None:
        """Write MixDesk's own cursor control (``\\r``, erase line) as it is."""
        self.stream.write(sequence)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def write_control(stream: Any, sequence: str) -> None:
    """Write a cursor control of MixDesk's own to ``stream`` (also through a SanitizedStream)."""
    getattr(stream, "write_control", stream.write)(sequence)


@contextmanager
def sanitized_output() -> Iterator[None]:
    """Sanitise sys.stdout and sys.stderr for the duration of a command."""
    saved = sys.stdout, sys.stderr
    sys.stdout = SanitizedStream(saved[0])
    sys.stderr = SanitizedStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
