"""MixDesk's KV state file: a conversation's llama.cpp sequence state, safe to read back.

llama.cpp's own state loader trusts its input (it has had heap overflows on crafted files),
so a state reaches it only inside this format, and only after everything here is checked:

====================  =========================================================
``MIXDKV\\r\\n``        8 bytes of magic
version               u32, :data:`FORMAT_VERSION`
header length         u32, at most :data:`MAX_HEADER_BYTES`
header                JSON: the :class:`KvKey`, the token count, the state's size, the
                      conversation it belongs to, the model's path and a payload
tokens                u32 little-endian each: the exact token prefix the state holds
state                 the bytes of ``llama_state_seq_get_data``
checksum              HMAC-SHA256 (32 bytes) over everything before it, keyed with a
                      secret of this installation
====================  =========================================================

:func:`read_header` checks the magic, version, header, sizes (the file's length must be
exactly what the header says, and within a cap) and token ids; :func:`read_state` also checks
the key and the checksum before it returns the state. A keyed checksum means a state file
someone else made (a crafted one, or one from another machine) never reaches llama.cpp.
Files are written atomically (a temporary file, then ``os.replace``) with mode 0600.

Pure Python: no llama.cpp here.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import stat
import struct
import sys
import tempfile
from array import array
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

MAGIC = b"MIXDKV\r\n"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
DIGEST_BYTES = 32
_PREFIX = struct.Struct("<8sII")
#: How much of a model file :func:`model_identity` hashes: the header's first MiB, the last
#: MiB and this many samples between them.
_SAMPLES, _SAMPLE_BYTES, _EDGE_BYTES = 64, 64 * 1024, 1 << 20
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


class StateFileError(ValueError):
    """A state file that must not reach llama.cpp; ``reason`` says why (for the log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ModelIdentity:
    """Which model file (every part of a split model): sizes, modification times and a
    sha256 of its first and last MiB and 64 samples between (milliseconds, where a whole
    26 GB file would take minutes)."""

    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class KvKey:
    """Everything that changes a KV state besides its tokens: a state is used only under the
    very key it was saved with."""

    model: ModelIdentity
    n_vocab: int
    n_ctx: int
    type_k: str
    type_v: str
    flash_attn: bool
    #: sha256 of the chat template's text and source.
    template_sha256: str
    #: sha256 of what places and computes the layers (GPU layers, tensor split, tensors kept
    #: in RAM, op offload, batch size): another placement may round differently.
    compute_sha256: str
    #: The llama-cpp-python version (llama.cpp's state layout may change between versions).
    llama_cpp_version: str

    def digest(self) -> str:
        """A short name for this key (the cache's folder name)."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class StateHeader:
    """A state file's header and token prefix."""

    key: KvKey
    tokens: tuple[int, ...]
    state_size: int
    #: The conversation the state belongs to (the app's cache key).
    conversation: str
    #: The model file it was computed with (to delete it with the model).
    model_path: str
    #: Anything the writer keeps with it (``mixdesk chat --session``: the conversation).
    payload: str = ""

    @property
    def data_offset(self) -> int:
        """Where the state bytes start (after the header and the tokens)."""
        return _PREFIX.size + len(self._json()) + 4 * len(self.tokens)

    @property
    def file_size(self) -> int:
        """The exact size of a file holding this header."""
        return self.data_offset + self.state_size + DIGEST_BYTES

    def _json(self) -> bytes:
        body = asdict(self)
        body["n_tokens"] = len(body.pop("tokens"))
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def digest(text: str) -> str:
    """sha256 of ``text`` (template hashes, file names of conversations)."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def model_parts(path: Path) -> list[Path]:
    """Every file of a model: the parts of a split model (``NAME-00001-of-00003.gguf``)."""
    match = _SPLIT.match(path.name)
    if match is None:
        return [path]
    n = int(match["n"])
    return [path.with_name(f"{match['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


def model_identity(path: Path) -> ModelIdentity:
    """Identify a model file (all its parts) by sizes, times and sampled content.

    Raises:
        OSError: a part cannot be read.
    """
    h = hashlib.sha256()
    size = mtime = 0
    for part in model_parts(path):
        with part.open("rb") as fh:
            info = os.fstat(fh.fileno())
            size += info.st_size
            mtime = max(mtime, info.st_mtime_ns)
            h.update(struct.pack("<Q", info.st_size))
            for offset, length in _sample_spans(info.st_size):
                fh.seek(offset)
                h.update(fh.read(length))
    return ModelIdentity(size=size, mtime_ns=mtime, sha256=h.hexdigest())


def _sample_spans(size: int) -> list[tuple[int, int]]:
    if size <= 2 * _EDGE_BYTES + _SAMPLES * _SAMPLE_BYTES:
        return [(0, size)]
    step = (size - 2 * _EDGE_BYTES) // (_SAMPLES + 1)
    middle = [(_EDGE_BYTES + step * (i + 1), _SAMPLE_BYTES) for i in range(_SAMPLES)]
    return [(0, _EDGE_BYTES), *middle, (size - _EDGE_BYTES, _EDGE_BYTES)]


def write_state(
    path: Path, header: StateHeader, state: bytes | memoryview, *, secret: bytes
) -> int:
    """Write a state file atomically (mode 0600); returns its size.

    Raises:
        OSError: it could not be written (nothing is left behind).
    """
    if len(state) != header.state_size:
        raise ValueError(f"state is {len(state)} bytes, the header says {header.state_size}")
    head = header._json()
    tokens = array("I", header.tokens)
    if sys.byteorder != "little":
        tokens.byteswap()
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:  # mkstemp makes it 0600
            for chunk in (_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)), head, tokens, state):
                fh.write(chunk)
                mac.update(chunk)
            fh.write(mac.digest())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return header.file_size


def _open_plain(path: Path, *, max_bytes: int) -> tuple[IO[bytes], int]:
    """``path`` opened to read, refusing links, non-files and files over ``max_bytes``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise StateFileError(f"cannot open: {err.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise StateFileError("not a plain file")
    if info.st_size > max_bytes:
        os.close(fd)
        raise StateFileError(f"{info.st_size} bytes, over the cap of {max_bytes}")
    return os.fdopen(fd, "rb"), info.st_size


def read_header(path: Path, *, max_bytes: int) -> StateHeader:
    """Read and check a state file's header and tokens (not its checksum).

    Raises:
        StateFileError: not a state file of this format, or not the size its header says.
    """
    fh, size = _open_plain(path, max_bytes=max_bytes)
    with fh:
        return _header(fh, size, max_bytes=max_bytes)


def _header(fh: IO[bytes], size: int, *, max_bytes: int) -> StateHeader:
    prefix = fh.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise StateFileError("truncated before its header")
    magic, version, head_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise StateFileError("not a MixDesk state file (magic)")
    if version != FORMAT_VERSION:
        raise StateFileError(f"format version {version}, not {FORMAT_VERSION}")
    if head_len > MAX_HEADER_BYTES or _PREFIX.size + head_len > size:
        raise StateFileError(f"header of {head_len} bytes")
    try:
        body = json.loads(fh.read(head_len))
        header = _from_json(body)
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        raise StateFileError(f"unreadable header ({err})") from None
    n_tokens = body["n_tokens"]
    if header.state_size > max_bytes or n_tokens > header.key.n_ctx:
        raise StateFileError(f"a state of {header.state_size} bytes and {n_tokens} tokens")
    raw = fh.read(4 * n_tokens)
    if len(raw) != 4 * n_tokens:
        raise StateFileError("truncated in its tokens")
    tokens = array("I")
    tokens.frombytes(raw)
    if sys.byteorder != "little":
        tokens.byteswap()
    if tokens and max(tokens) >= header.key.n_vocab:
        raise StateFileError("a token id outside the vocabulary")
    header = StateHeader(**{**_fields(header), "tokens": tuple(tokens)})
    if size != header.file_size:
        raise StateFileError(f"{size} bytes where its header says {header.file_size}")
    return header


def read_state(
    path: Path, *, key: KvKey, secret: bytes, max_bytes: int
) -> tuple[StateHeader, bytearray]:
    """Read a state file whole, checking everything: header, sizes, tokens, key, checksum.

    Returns:
        The header, and the state bytes for ``llama_state_seq_set_data``.

    Raises:
        StateFileError: anything does not match; nothing of it may reach llama.cpp.
    """
    fh, size = _open_plain(path, max_bytes=max_bytes)
    with fh:
        header = _header(fh, size, max_bytes=max_bytes)
        if header.key != key:
            raise StateFileError("saved for another model or other settings")
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        fh.seek(0)
        mac.update(fh.read(header.data_offset))
        state = bytearray(header.state_size)
        if fh.readinto(state) != header.state_size:  # type: ignore[attr-defined]
            raise StateFileError("truncated in its state")
        mac.update(state)
        if not hmac.compare_digest(fh.read(DIGEST_BYTES), mac.digest()):
            raise StateFileError("checksum mismatch")
    return header, state


def _fields(header: StateHeader) -> dict[str, Any]:
    return {f.name: getattr(header, f.name) for f in fields(header)}


def _from_json(body: dict[str, Any]) -> StateHeader:
    """The header from its JSON, every field of the type it must have (TypeError if not)."""
    key = dict(body["key"])
    model = ModelIdentity(**_typed(key.pop("model"), ModelIdentity))
    kv = KvKey(model=model, **_typed(key, KvKey, skip="model"))
    rest = _typed(
        {k: v for k, v in body.items() if k not in ("key", "n_tokens")},
        StateHeader,
        skip=("key", "tokens"),
    )
    if not isinstance(body["n_tokens"], int) or body["n_tokens"] < 0 or rest["state_size"] < 0:
        raise TypeError("negative sizes")
    return StateHeader(key=kv, tokens=(), **rest)


_TYPES = {"int": int, "str": str, "bool": bool}


def _typed(
    values: dict[str, Any], cls: type[Any], skip: str | tuple[str, ...] = ()
) -> dict[str, Any]:
    """``values`` if it has exactly ``cls``'s fields (less ``skip``), each of its type."""
    wanted = {f.name: f.type for f in fields(cls) if f.name not in skip}
    if set(values) != set(wanted):
        raise TypeError(f"fields {sorted(values)}, not {sorted(wanted)}")
    for name, kind in wanted.items():
        value, want = values[name], _TYPES[str(kind)]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise TypeError(f"{name} is {type(value).__name__}")
    return values
