"""The bytes of a GGUF header, read within limits: the bounded reader and metadata values.

A header's bytes may come from the internet, so :class:`HeaderReader` checks every length and
count against the limits below before anything is allocated, caps the total bytes read, and
turns any problem into a :class:`GGUFHeaderError` that says what is wrong. :func:`read_value`
decodes one metadata value: a scalar, a string, an array of numbers kept in full, or an
:class:`ArrayInfo` for an array read past (the vocabulary). The header's layout (preamble,
metadata, tensor table) is :mod:`mixdesk.core.gguf.header`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from mixdesk.errors import MixdeskError

MAX_STRING_BYTES = 16 << 20
MAX_ARRAY_ITEMS = 64 << 20
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


class HeaderReader:
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


def read_value(r: HeaderReader, vtype: int, key: str, lengths: dict[str, int]) -> MetaValue:
    """The metadata value of type ``vtype`` at ``key``; an array's length goes in ``lengths``."""
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
