"""How the engine protocol's messages cross the pipe: one JSON object a line.

Each message (a dataclass of :mod:`.protocol`) is sent as its kind, named once in
:data:`MESSAGES`, with its fields; one generic decoder (:func:`from_dict`) builds nested
dataclasses, tuples and enums back from JSON and ignores a newer peer's unknown fields. An
error crosses as :func:`failure`: its wire code, sentence and plain fields. A text delta, sent
once per streamed update, has a lighter encoder of its own (:func:`encode_delta`).
"""

from __future__ import annotations

import functools
import json
import time
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from enum import Enum
from typing import Any, TypeVar

from mixdesk.core.engine.protocol import (
    BufferReport,
    CancelCommand,
    ChatCommand,
    ChatDone,
    DeviceMemory,
    DryRunCommand,
    EngineCommand,
    EngineFailure,
    EngineInfo,
    GenerationStats,
    LoadCommand,
    LoadProgress,
    ModelInfo,
    ShutdownCommand,
    TextDelta,
)
from mixdesk.errors import MixdeskError, wire_code

#: Every message, by the kind it is sent as: each dataclass names its kind once, here.
MESSAGES: dict[str, type[Any]] = {
    # commands (the app -> the engine)
    "load": LoadCommand,
    "dry_run": DryRunCommand,
    "chat": ChatCommand,
    "cancel": CancelCommand,
    "shutdown": ShutdownCommand,
    # events (the engine -> the app)
    "ready": EngineInfo,
    "load_progress": LoadProgress,
    "loaded": ModelInfo,
    "buffers": BufferReport,
    "device_memory": DeviceMemory,
    "delta": TextDelta,
    "done": ChatDone,
    "error": EngineFailure,
}
_KINDS: dict[type[Any], str] = {cls: kind for kind, cls in MESSAGES.items()}
_COMMANDS = (LoadCommand, DryRunCommand, ChatCommand, CancelCommand, ShutdownCommand)

T = TypeVar("T")


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _value(hint: Any, value: Any) -> Any:
    """``value`` from JSON as the type ``hint`` wants it: nested dataclasses built, lists that
    are tuples made tuples (their items too), ``X | None`` unwrapped."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _value(options[0], value) if value is not None and len(options) == 1 else value
    if isinstance(hint, type) and is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value)  # an unknown value is a ValueError: not a message
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_value(item, v) for v in value)
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a dict, nested dataclasses and tuples included, ignoring
    unknown keys (a newer peer's fields)."""
    hints = _hints(typing.cast(Any, cls))
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: _value(hints[k], v) for k, v in data.items() if k in names})


def failure(err: MixdeskError, message: str, request_id: int = 0) -> EngineFailure:
    """An error as it crosses to the app: its wire code, sentence and plain fields."""
    details = {
        k: v for k, v in vars(err).items() if isinstance(v, (str, int, float, bool)) or v is None
    }
    return EngineFailure(wire_code(err), message, request_id, details)


def encode(message: Any) -> bytes:
    """Encode one message (a dataclass of :data:`MESSAGES`) as a JSON line."""
    body: dict[str, Any] = {"type": _KINDS[type(message)]}
    body.update(asdict(message))
    return (json.dumps(body, separators=(",", ":")) + "\n").encode("utf-8")


def decode(line: bytes | str) -> Any:
    """Read one message line (any kind of :data:`MESSAGES`).

    Raises:
        ValueError, KeyError: not a message.
    """
    body = json.loads(line)
    cls = MESSAGES[body.pop("type")]
    try:
        return from_dict(cls, body)
    except TypeError as err:  # a field missing or of the wrong kind
        raise ValueError(f"not a {cls.__name__}: {err}") from None


def encode_command(command: EngineCommand) -> bytes:
    """Encode a command for the engine's stdin (one JSON line, like an event)."""
    return encode(command)


def decode_command(line: bytes | str) -> EngineCommand:
    """Read one command line.

    Raises:
        ValueError, KeyError, TypeError: not a command (the engine skips such lines).
    """
    message = decode(line)
    if not isinstance(message, _COMMANDS):
        raise ValueError(f"not an engine command: {type(message).__name__}")
    return message


@functools.cache
def _field_names(cls: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _plain(value: Any) -> Any:
    """A dataclass as a dict of its fields (nested ones too), like ``asdict`` without its
    deep copies: a new field is sent as soon as it is declared."""
    if is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    return value


def encode_delta(request_id: int, text: str, stats: GenerationStats) -> bytes:
    """Encode a text delta: the hot path, one per streamed update, so lighter than
    :func:`encode`; every field of ``stats`` goes out, read from the dataclass's own fields."""
    body = {
        "type": "delta",
        "request_id": request_id,
        "text": text,
        "sent_ns": time.monotonic_ns(),
        "stats": _plain(stats),
    }
    return (json.dumps(body, separators=(",", ":")) + "\n").encode("utf-8")
