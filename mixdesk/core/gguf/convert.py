"""Convert TheBloke's legacy Mixtral files into the merged layout current llama.cpp loads.

December 2023 Mixtral GGUFs store each expert as its own 2-D tensor
(``blk.N.ffn_gate.E.weight``, E = 0..7); llama.cpp has read only merged 3-D tensors
(``blk.N.ffn_gate_exps.weight``, shape n_expert x rows x cols) since November 2024
(ggml-org/llama.cpp#10244). All experts of one kind in a layer share one type, so merging is
a byte-level concatenation of their data in expert order: no re-quantisation, no loss.

The header alone decides where every tensor byte goes (:func:`merged_layout`), so a
download writes each expert's bytes straight to their place as they arrive
(:mod:`mixdesk.core.gguf.merge_stream`), and a file already on disk is converted range by range
(:func:`convert_legacy`): metadata bytes copied verbatim, tensor data in chunks, so memory
stays small even for a 26 GB file. The output is written to a temporary name, checked (its
header re-read and every tensor's size compared), and only then renamed into place.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixdesk.core.gguf.header import GGUFHeader, TensorInfo, read_local_header
from mixdesk.core.gguf.header_values import GGUFHeaderError
from mixdesk.errors import MixdeskError

log = logging.getLogger(__name__)

_EXPERT = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)\.(\d+)\.weight$")
_CHUNK = 8 << 20


class ConversionError(MixdeskError):
    """A legacy file could not be converted."""


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion did."""

    source: Path
    output: Path
    merged_tensors: int
    bytes_written: int
    seconds: float


@dataclass(frozen=True)
class _OutTensor:
    name: str
    ggml_type: int
    shape: tuple[int, ...]
    sources: tuple[TensorInfo, ...]  # copied in this order

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.sources)


def needs_conversion(header: GGUFHeader) -> bool:
    """Whether a header is in the legacy per-expert layout."""
    return any(_EXPERT.match(t.name) for t in header.tensors)


def _plan_tensors(header: GGUFHeader) -> list[_OutTensor]:
    groups: dict[tuple[int, str], dict[int, TensorInfo]] = {}
    for t in header.tensors:
        if m := _EXPERT.match(t.name):
            groups.setdefault((int(m.group(1)), m.group(2)), {})[int(m.group(3))] = t
    out: list[_OutTensor] = []
    emitted: set[tuple[int, str]] = set()
    for t in header.tensors:
        m = _EXPERT.match(t.name)
        if not m:
            out.append(_OutTensor(t.name, t.ggml_type, t.shape, (t,)))
            continue
        key = (int(m.group(1)), m.group(2))
        if key in emitted:
            continue
        emitted.add(key)
        experts = groups[key]
        if sorted(experts) != list(range(len(experts))):
            raise ConversionError(f"{header.name} lacks some experts of layer {key[0]} ({key[1]})")
        ordered = tuple(experts[i] for i in range(len(experts)))
        first = ordered[0]
        if any(e.ggml_type != first.ggml_type or e.shape != first.shape for e in ordered):
            raise ConversionError(
                f"{header.name}: the {key[1]} experts of layer {key[0]} differ in type or shape, so they "
                "cannot be merged"
            )
        out.append(
            _OutTensor(
                f"blk.{key[0]}.ffn_{key[1]}_exps.weight",
                first.ggml_type,
                (*first.shape, len(ordered)),
                ordered,
            )
        )
    return out


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


@dataclass(frozen=True)
class Segment:
    """A run of tensor bytes: ``source_start:source_end`` of the legacy file go to ``output_start``."""

    source_start: int
    source_end: int
    output_start: int


@dataclass(frozen=True)
class MergedLayout:
    """Where every tensor byte of a legacy file goes in the merged file.

    Known as soon as the legacy file's header is known, so a download can write each
    expert's bytes straight to their place (:mod:`mixdesk.core.gguf.merge_stream`).
    """

    header: bytes  # the merged file's header, padded to the alignment
    size: int  # of the merged file
    segments: tuple[Segment, ...]  # in source order, not overlapping
    tensors: tuple[_OutTensor, ...]


def merged_layout(header: GGUFHeader, metadata_bytes: bytes) -> MergedLayout:
    """The merged file for a legacy header.

    Args:
        header: the legacy file's header.
        metadata_bytes: the file's bytes ``header.kv_start:header.kv_end`` (copied verbatim).

    Raises:
        ConversionError: not a legacy file, or its experts cannot be merged.
    """
    if not needs_conversion(header):
        raise ConversionError(
            f"{header.name} already uses the merged expert layout; it needs no conversion."
        )
    tensors = _plan_tensors(header)
    align = header.alignment
    infos = bytearray()
    offset = 0
    offsets: list[int] = []
    for t in tensors:
        infos += _string(t.name) + struct.pack("<I", len(t.shape))
        infos += b"".join(struct.pack("<Q", d) for d in t.shape)
        infos += struct.pack("<IQ", t.ggml_type, offset)
        offsets.append(offset)
        offset += -(-t.nbytes // align) * align
    head = b"GGUF" + struct.pack("<IQQ", header.version, len(tensors), len(header.metadata))
    head += metadata_bytes + bytes(infos)
    head += b"\0" * (-len(head) % align)
    segments: list[Segment] = []
    for t, out in zip(tensors, offsets, strict=True):
        pos = len(head) + out
        for part in t.sources:
            start = header.data_offset + part.offset
            segments.append(Segment(start, start + part.nbytes, pos))
            pos += part.nbytes
    segments.sort(key=lambda s: s.source_start)
    for a, b in itertools.pairwise(segments):
        if b.source_start < a.source_end:
            raise ConversionError(
                f"{header.name} is damaged: two of its tensors share bytes, so it cannot be converted."
            )
    return MergedLayout(bytes(head), len(head) + offset, tuple(segments), tuple(tensors))


def _copy_range(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> None:
    """Copy ``length`` bytes at ``src_offset`` of fd ``src`` to ``dst_offset`` of fd ``dst``."""
    end = src_offset + length
    while src_offset < end:
        n = min(_CHUNK, end - src_offset)
        done = _copy_chunk(src, dst, n, src_offset, dst_offset)
        if done <= 0:
            raise ConversionError(
                "the source file ended early; it is incomplete: download it again"
            )
        src_offset += done
        dst_offset += done


def _copy_chunk(src: int, dst: int, n: int, src_offset: int, dst_offset: int) -> int:
    """Copy up to ``n`` bytes between positions of two files: in the kernel on Linux
    (``copy_file_range``), else through a buffer; returns the bytes copied (0 at the end)."""
    if sys.platform == "linux":
        try:
            return os.copy_file_range(src, dst, n, src_offset, dst_offset)
        except OSError:
            pass  # e.g. across file systems on older kernels: copy through a buffer
    return _copy_chunk_buffered(src, dst, n, src_offset, dst_offset)


def _copy_chunk_buffered(src: int, dst: int, n: int, src_offset: int, dst_offset: int) -> int:
    """:func:`_copy_chunk` through a buffer: ``pread``/``pwrite`` where they exist, a seek
    then ``read``/``write`` on Windows (which has neither)."""
    if sys.platform == "win32":
        os.lseek(src, src_offset, os.SEEK_SET)
        data = os.read(src, n)
        os.lseek(dst, dst_offset, os.SEEK_SET)
        return os.write(dst, data)
    else:
        return os.pwrite(dst, os.pread(src, n, src_offset), dst_offset)


def convert_legacy(
    source: Path, output: Path, *, on_progress: Callable[[int, int], None] | None = None
) -> ConvertResult:
    """Convert a legacy-layout Mixtral GGUF to the merged layout.

    Args:
        source: the legacy file.
        output: where the converted file goes (must not be ``source``).
        on_progress: called with (bytes written, total bytes) as tensors are copied.

    Raises:
        ConversionError: not a legacy file, damaged, or not enough disk space.
        GGUFHeaderError: the source is not a readable GGUF.
    """
    started = time.perf_counter()
    header = read_local_header(source)
    if output.resolve() == source.resolve():
        raise ConversionError("The converted file needs a different name from the original.")
    with source.open("rb") as src:
        src.seek(header.kv_start)
        layout = merged_layout(header, src.read(header.kv_end - header.kv_start))
    data_bytes = layout.size - len(layout.header)
    free = shutil.disk_usage(output.parent if output.parent.exists() else Path.cwd()).free
    if free < data_bytes + (64 << 20):
        raise ConversionError(
            f"Converting {source.name} needs {data_bytes / 2**30:.1f} GiB of free disk space but "
            f"{free / 2**30:.1f} GiB is free; free some space and try again."
        )
    tmp = output.with_name(output.name + ".converting")
    written = 0
    try:
        with source.open("rb") as src, tmp.open("wb") as dst:
            dst.write(layout.header)
            dst.truncate(layout.size)  # the padding between tensors stays zero
            dst.flush()
            for seg in sorted(layout.segments, key=lambda s: s.output_start):
                n = seg.source_end - seg.source_start
                _copy_range(src.fileno(), dst.fileno(), seg.source_start, seg.output_start, n)
                written += n
                if on_progress is not None:
                    on_progress(written, data_bytes)
        check_merged(tmp, layout)
        os.replace(tmp, output)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ConversionError(f"Converting {source.name} failed: {err.strerror or err}.") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    merged = sum(1 for t in layout.tensors if len(t.sources) > 1)
    log.info(
        "converted %s -> %s: %d merged tensors, %d bytes in %.1f s",
        source,
        output,
        merged,
        written,
        seconds,
    )
    return ConvertResult(source, output, merged, written, seconds)


def check_merged(path: Path, layout: MergedLayout) -> None:
    """Re-read a written merged file's header and make sure every tensor is there, whole.

    Raises:
        ConversionError: the file is not what ``layout`` describes.
    """
    expected = layout.tensors
    try:
        header = read_local_header(path)
    except GGUFHeaderError as err:
        raise ConversionError(
            f"The converted file failed its check ({err}); the original is kept."
        ) from err
    got = {(t.name, t.ggml_type, t.shape, t.nbytes) for t in header.tensors}
    want = {(t.name, t.ggml_type, t.shape, t.nbytes) for t in expected}
    if got != want or needs_conversion(header):
        raise ConversionError(
            "The converted file failed its check (tensor table differs); the original is kept."
        )
