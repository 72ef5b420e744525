"""Read a GGUF file's header (metadata and tensor table) without touching tensor data.

Works on any readable binary stream: a local file, or a remote file on the Hub read with
HTTP range requests (see :mod:`mixdesk.core.hub.remote_header`). The reader is defensive because the
bytes come from the internet: every length and count is checked against limits before
anything is allocated, the total number of header bytes read is capped, and any problem
becomes a :class:`~mixdesk.core.gguf.header_values.GGUFHeaderError` whose text says what is
wrong; it never hangs or allocates what a corrupt count asks for. This module reads the
header's layout and keeps the tensor table; the bounded reading of bytes and metadata values
is :mod:`mixdesk.core.gguf.header_values`.

Layout (little-endian): magic ``GGUF``, version (u32, 2 or 3), tensor count (u64), metadata
count (u64), metadata key/values, tensor infos (name, n_dims, dims, type, offset), then
the tensor data at the next multiple of ``general.alignment`` (32 by default).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from mixdesk.core.gguf.header_values import (
    GGUFHeaderError,
    HeaderReader,
    MetaValue,
    read_value,
)
from mixdesk.errors import NotARegularFileError

MAGIC = b"GGUF"
MAX_HEADER_BYTES = 256 << 20  # a 256k-token vocabulary with scores is about 10 MiB
#: Tensors in one file: Mixtral 8x22B has about 2,000, the largest MoE models ~10,000 (a
#: million cost 220 MB and 7.5 s to read).
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_DIMS = 4
#: The fewest bytes a tensor entry (name length, dimension count, type, offset) or a metadata
#: entry (key length, value type, a one-byte value) takes: a count is checked against them.
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8
_MIN_KV_BYTES = 8 + 4 + 1


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
    r = HeaderReader(stream, what=name, limit=max_bytes, file_size=file_size)
    version, n_tensors, n_kv = _preamble(r, name)
    metadata: dict[str, MetaValue] = {}
    lengths: dict[str, int] = {}
    kv_start = r.consumed
    for i in range(n_kv):
        key = r.string(f"metadata key {i}", limit=1 << 16)
        vtype = r.u32(key)
        metadata[key] = read_value(r, vtype, key, lengths)
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


def _preamble(r: HeaderReader, name: str) -> tuple[int, int, int]:
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


def _tensor_info(r: HeaderReader, i: int, name: str, alignment: int) -> TensorInfo:
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
