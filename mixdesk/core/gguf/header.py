"""Read a GGUF file's header (metadata and tensor table) without touching tensor data.

Works on any readable binary stream: a local file, or a remote file on the Hub read with
HTTP range requests (see :mod:`mixdesk.core.hub.remote_header`). The reader is defensive because the
bytes come from the internet: every length and count is checked against limits before
anything is allocated, the total number of header bytes read is capped, and any problem
becomes a :class:`GGUFHeaderError` whose text says what is wrong; it never hangs or
allocates what a corrupt count asks for.

Layout (little-endian): magic ``GGUF``, version (u32, 2 or 3), tensor count (u64), metadata
count (u64), metadata key/values, tensor infos (name, n_dims, dims, type, offset), then
the tensor data at the next multiple of ``general.alignment`` (32 by default).
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from mixdesk.errors import MixdeskError, NotARegularFileError

MAGIC = b"GGUF"
MAX_HEADER_BYTES = 256 << 20  # a 256k-token vocabulary with scores is about 10 MiB
MAX_STRING_BYTES = 16 << 20
MAX_ARRAY_ITEMS = 64 << 20
#: Tensors in one file: Mixtral 8x22B has about 2,000, the largest MoE models ~10,000 (a
#: million cost 220 MB and 7.5 s to read).
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_DIMS = 4
#: Strings in all of a header's arrays together: the largest real vocabularies have about
#: 260k tokens and as many merges; a header claiming millions more is damaged or hostile.
MAX_STRING_ITEMS = 1 << 22
#: Arrays of numbers up to this many items are kept in full (per-layer settings such as
#: ``ARCH.attention.head_count_kv``); longer ones (the vocabulary's scores), string arrays
#: and the tokenizer's arrays, which nothing in MixDesk reads item by item, are read past and
#: only their length is kept.
KEEP_ARRAY_ITEMS = 4096
#: Items kept in all of a header's arrays together. A real model keeps a few thousand at most
#: (a dozen per-layer settings for 256 layers); a header of 15,000 arrays of 4,096 numbers
#: would otherwise become 61 million Python numbers (2.5 GB) from a 246 MB file.
KEEP_TOTAL_ITEMS = 1 << 16
#: The fewest bytes a tensor entry (name length, dimension count, type, offset) or a metadata
#: entry (key length, value type, a one-byte value) takes: a count is checked against them.
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8
_MIN_KV_BYTES = 8 + 4 + 1
_STRING_HEAD = struct.Struct("<Q")

# GGUF metadata value types -> struct format (scalars)
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

Scalar = int | float | bool | str


class GGUFHeaderError(MixdeskError):
    """The file is not a readable GGUF (bad magic, unknown version, damaged or truncated header)."""


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array that is not kept (the vocabulary, any string array): its item type
    and length (see :data:`KEEP_ARRAY_ITEMS`)."""

    item_type: int
    length: int


MetaValue = Scalar | list[Scalar] | ArrayInfo


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the table. ``shape`` is in ggml order (``ne[0]`` first)."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int  # from the start of the tensor data
    nbytes: int
    file_index: int = 0

    @property
    def type_name(self) -> str:
        """The ggml type's name, e.g. "Q4_K"."""
        return GGMLQuantizationType(self.ggml_type).name


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF header says."""

    name: str
    version: int
    metadata: dict[str, MetaValue]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int
    file_size: int | None
    bytes_read: int = 0
    array_lengths: dict[str, int] = field(default_factory=dict)
    #: Byte range of the metadata key/values in the file (to copy them verbatim).
    kv_start: int = 0
    kv_end: int = 0

    def get(self, key: str, default: MetaValue | None = None) -> MetaValue | None:
        """A metadata value, or ``default``."""
        return self.metadata.get(key, default)


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...], *, name: str = "") -> int:
    """Bytes of a tensor of ``ggml_type`` and ``shape`` (ggml order), from gguf's own table.

    Raises:
        GGUFHeaderError: unknown type, or a first dimension that is not a whole number of blocks.
    """
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise GGUFHeaderError(f"tensor '{name}' has an unknown ggml type {ggml_type}") from None
    if not shape:
        return size
    if shape[0] % block:
        raise GGUFHeaderError(
            f"tensor '{name}' has a row of {shape[0]} values, not a multiple of its {block}-value blocks"
        )
    count = 1
    for dim in shape[1:]:
        count *= dim
    return count * (shape[0] // block) * size


class _Reader:
    """Buffered, bounded reading of a stream."""

    def __init__(
        self,
        stream: BinaryIO,
        *,
        what: str,
        limit: int,
        file_size: int | None = None,
        chunk: int = 1 << 18,
    ) -> None:
        self._stream = stream
        self._what = what
        self._limit = limit
        self._file_size = file_size
        self._chunk = chunk
        self._buf = b""
        self._pos = 0
        self.consumed = 0
        self.strings = 0
        self.kept = 0

    def expect(self, count: int, item_bytes: int, item: str) -> None:
        """Refuse a count whose items cannot fit in what is left of the file or the header limit.

        Checked before reading, so a header claiming millions of items fails at once instead of
        after millions of reads.
        """
        need = count * item_bytes
        if self.consumed + need > self._limit:
            raise GGUFHeaderError(
                f"{self._what} has a header larger than {self._limit >> 20} MiB ({count} entries "
                f"at {item}); the file is damaged or not a model"
            )
        if self._file_size is not None and self.consumed + need > self._file_size:
            raise GGUFHeaderError(
                f"{self._what} ends inside its header (at {item}, byte {self.consumed}: "
                f"{count} entries cannot fit in the {self._file_size - self.consumed} bytes "
                "left): a truncated download or a damaged header; download it again"
            )

    def count_strings(self, count: int, item: str) -> None:
        """Count strings against the per-header limit (bounds the work a header can ask for)."""
        self.strings += count
        if self.strings > MAX_STRING_ITEMS:
            raise GGUFHeaderError(
                f"{self._what} has a damaged header: more than {MAX_STRING_ITEMS} strings "
                f"(at {item})"
            )

    def skip_strings(self, count: int, item: str) -> None:
        """Read past ``count`` strings (a vocabulary nobody keeps) with little work per string."""
        for _ in range(count):
            if len(self._buf) - self._pos < 8:
                self.string(item)
                continue
            (length,) = _STRING_HEAD.unpack_from(self._buf, self._pos)
            if length > MAX_STRING_BYTES:
                raise GGUFHeaderError(
                    f"{self._what} has a damaged header: a {length}-byte string at {item}"
                )
            if len(self._buf) - self._pos < 8 + length or self.consumed + 8 + length > self._limit:
                self.string(item)
                continue
            self._pos += 8 + length
            self.consumed += 8 + length

    def skip(self, n: int, item: str) -> None:
        """Read past ``n`` bytes a chunk at a time, keeping none of them."""
        while n > 0:
            step = min(n, self._chunk)
            self.read(step, item)
            n -= step

    def keep(self, key: str, length: int) -> bool:
        """Whether to keep an array of ``length`` numbers at ``key`` (counted if so)."""
        if (
            length > KEEP_ARRAY_ITEMS
            or key.startswith("tokenizer.")
            or self.kept + length > KEEP_TOTAL_ITEMS
        ):
            return False
        self.kept += length
        return True

    def read(self, n: int, item: str) -> bytes:
        if self.consumed + n > self._limit:
            raise GGUFHeaderError(
                f"{self._what} has a header larger than {self._limit >> 20} MiB (at {item}); "
                "the file is damaged or not a model"
            )
        while len(self._buf) - self._pos < n:
            more = self._stream.read(max(self._chunk, n - (len(self._buf) - self._pos)))
            if not more:
                raise GGUFHeaderError(
                    f"{self._what} ends inside its header (at {item}, byte {self.consumed}); "
                    "the file is incomplete: download it again"
                )
            self._buf = self._buf[self._pos :] + more
            self._pos = 0
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        self.consumed += n
        return data

    def unpack(self, fmt: str, item: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.read(struct.calcsize(fmt), item))[0]
        return value

    def u32(self, item: str) -> int:
        return int(self.unpack("<I", item))

    def u64(self, item: str) -> int:
        return int(self.unpack("<Q", item))

    def string(self, item: str, limit: int = MAX_STRING_BYTES) -> str:
        length = self.u64(item)
        if length > limit:
            raise GGUFHeaderError(
                f"{self._what} has a damaged header: a {length}-byte string at {item}"
            )
        return self.read(length, item).decode("utf-8", errors="replace")


def _value(r: _Reader, vtype: int, key: str, lengths: dict[str, int]) -> MetaValue:
    if vtype in _SCALARS:
        return r.unpack(_SCALARS[vtype], key)
    if vtype == _STRING:
        return r.string(key)
    if vtype != _ARRAY:
        raise GGUFHeaderError(
            f"{r._what} has a damaged header: unknown value type {vtype} for '{key}'"
        )
    item_type = r.u32(key)
    length = r.u64(key)
    if length > MAX_ARRAY_ITEMS:
        raise GGUFHeaderError(
            f"{r._what} has a damaged header: an array of {length} items at '{key}'"
        )
    lengths[key] = length
    if item_type in _SCALARS:
        fmt = _SCALARS[item_type]
        size = struct.calcsize(fmt)
        r.expect(length, size, key)
        if not r.keep(key, length):
            r.skip(size * length, key)
            return ArrayInfo(item_type, length)
        return [v[0] for v in struct.iter_unpack(fmt, r.read(size * length, key))]
    if item_type == _STRING:
        r.expect(length, 8, key)
        r.count_strings(length, key)
        r.skip_strings(length, key)
        return ArrayInfo(item_type, length)
    raise GGUFHeaderError(f"{r._what} has a damaged header: arrays of type {item_type} at '{key}'")


def read_header(
    stream: BinaryIO, *, name: str, file_size: int | None = None, max_bytes: int = MAX_HEADER_BYTES
) -> GGUFHeader:
    """Parse a GGUF header from ``stream`` (positioned at the start of the file).

    Args:
        stream: a binary stream; only the header is read from it.
        name: how to call the file in messages.
        file_size: the file's size, to check that tensor data lies inside it.
        max_bytes: the most header bytes to read before giving up.

    Raises:
        GGUFHeaderError: the header is not a GGUF header or is damaged.
    """
    r = _Reader(stream, what=name, limit=max_bytes, file_size=file_size)
    version, n_tensors, n_kv = _preamble(r, name)
    metadata: dict[str, MetaValue] = {}
    lengths: dict[str, int] = {}
    kv_start = r.consumed
    for i in range(n_kv):
        key = r.string(f"metadata key {i}", limit=1 << 16)
        vtype = r.u32(key)
        metadata[key] = _value(r, vtype, key, lengths)
    kv_end = r.consumed
    alignment = _alignment(metadata, name)
    tensors = [_tensor_info(r, i, name, alignment) for i in range(n_tensors)]
    data_offset = -(-r.consumed // alignment) * alignment
    if file_size is not None:
        for t in tensors:
            if data_offset + t.offset + t.nbytes > file_size:
                raise GGUFHeaderError(
                    f"{name} is incomplete or damaged: tensor '{t.name}' ends past the end of the "
                    "file; download it again"
                )
    return GGUFHeader(
        name=name,
        version=version,
        metadata=metadata,
        tensors=tensors,
        alignment=alignment,
        data_offset=data_offset,
        file_size=file_size,
        bytes_read=r.consumed,
        array_lengths=lengths,
        kv_start=kv_start,
        kv_end=kv_end,
    )


def _preamble(r: _Reader, name: str) -> tuple[int, int, int]:
    """Check the signature and version; return (version, tensor count, metadata count)."""
    try:
        magic = r.read(4, "the signature")
    except GGUFHeaderError:
        raise GGUFHeaderError(f"{name} is not a GGUF model file (it is too short)") from None
    if magic != MAGIC:
        raise GGUFHeaderError(
            f"{name} is not a GGUF model file (it does not start with the GGUF signature)"
        )
    version = r.u32("the version")
    if version == 1:
        raise GGUFHeaderError(f"{name} uses GGUF version 1 (2023), which llama.cpp no longer reads")
    if version not in (2, 3):
        raise GGUFHeaderError(
            f"{name} has an unknown GGUF version {version} (big-endian or damaged)"
        )
    n_tensors = r.u64("the tensor count")
    n_kv = r.u64("the metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise GGUFHeaderError(
            f"{name} has a damaged header: {n_tensors} tensors and {n_kv} metadata entries"
        )
    r.expect(n_kv, _MIN_KV_BYTES, "the metadata")
    r.expect(n_tensors, _MIN_TENSOR_BYTES, "the tensor table")
    return version, n_tensors, n_kv


def _alignment(metadata: dict[str, MetaValue], name: str) -> int:
    """``general.alignment`` (32 when absent): a power of two up to 1 MiB."""
    alignment = metadata.get("general.alignment", 32)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or not 1 <= alignment <= 1 << 20
        or alignment & (alignment - 1)
    ):
        raise GGUFHeaderError(f"{name} has a damaged header: alignment {alignment!r}")
    return alignment


def _tensor_info(r: _Reader, i: int, name: str, alignment: int) -> TensorInfo:
    """Read entry ``i`` of the tensor table, refusing impossible shapes and offsets."""
    tname = r.string(f"tensor {i}'s name", limit=1 << 16)
    n_dims = r.u32(tname)
    if n_dims > MAX_DIMS:
        raise GGUFHeaderError(
            f"{name} has a damaged header: tensor '{tname}' has {n_dims} dimensions"
        )
    shape = tuple(r.u64(tname) for _ in range(n_dims))
    elements = 1
    for dim in shape:
        elements *= dim
    if elements > 1 << 44:
        raise GGUFHeaderError(f"{name} has a damaged header: tensor '{tname}' has shape {shape}")
    ggml_type = r.u32(tname)
    offset = r.u64(tname)
    nbytes = tensor_nbytes(ggml_type, shape, name=tname)
    if offset % alignment:
        raise GGUFHeaderError(f"{name} has a damaged header: tensor '{tname}' is misaligned")
    return TensorInfo(tname, ggml_type, shape, offset, nbytes)


_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def open_model_file(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a local model file for reading; anything but a regular file is refused at once.

    The file is opened without blocking and checked on the open descriptor, so a FIFO (whose
    plain ``open`` waits for a writer forever) or a device is refused before any read, with
    no window for the path to change in between.

    Raises:
        NotARegularFileError: a FIFO, device, socket or folder.
        OSError: the file cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _NOT_REGULAR if test(mode)), "not a regular file")
            raise NotARegularFileError(str(path), kind)
        if sys.platform != "win32" and flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_local_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Read the header of a local GGUF file.

    Raises:
        GGUFHeaderError: not a GGUF, or damaged.
        NotARegularFileError: a FIFO, device, socket or folder.
        OSError: the file cannot be opened.
    """
    p = Path(path)
    with open_model_file(p) as fh:
        return read_header(fh, name=p.name, file_size=os.fstat(fh.fileno()).st_size)
