"""llama.cpp's RPC framing, checked before a byte reaches its parser; the worker's tensor cache.

A client's message to llama.cpp's RPC server is one command byte, a little-endian u64 body size
and the body (``ggml/src/ggml-rpc/ggml-rpc.cpp``, protocol v7 in llama-cpp-python 0.3.36). The
server allocates the body's size before a byte of it arrives: a size of 2^63 ends it with an
uncaught ``std::length_error``, 1 GiB makes it zero-fill 1 GiB. :class:`FrameGuard` reads the
headers as they pass and refuses, before relaying it, any message that is not HELLO first, has
an unknown command, or is larger than its command can need: a tensor's data no larger than the
largest buffer this session allocated, a graph no larger than :data:`MAX_GRAPH_BYTES`, anything
else :data:`MAX_SMALL_BYTES`.

llama.cpp keeps tensors over 10 MiB in its cache folder, named by their hash, and never deletes
one; :class:`TensorCache` keeps the folder under a size cap, least recently used first (a
``SET_TENSOR_HASH`` that names a file counts as a use).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from mixdesk.core.machine.tunnel import Refused

log = logging.getLogger(__name__)

# rpc_cmd in ggml-rpc.cpp.
CMD_ALLOC_BUFFER = 0
CMD_SET_TENSOR = 6
CMD_SET_TENSOR_HASH = 7
CMD_GRAPH_COMPUTE = 10
CMD_HELLO = 14
CMD_NONE = 18  # internal to llama.cpp's client, never sent
CMD_COUNT = 19
HEADER_BYTES = 9  # command byte + u64 size
HELLO_BYTES = 24  # rpc_msg_hello_req: transport capabilities (RDMA), zero for plain TCP
RPC_TENSOR_BYTES = 296  # sizeof(rpc_tensor), packed
#: SET_TENSOR: an rpc_tensor and an offset before the data.
SET_TENSOR_HEADER = RPC_TENSOR_BYTES + 8
#: SET_TENSOR_HASH: an rpc_tensor, an offset and the hash.
SET_TENSOR_HASH_BYTES = RPC_TENSOR_BYTES + 16
ALLOC_BUFFER_BYTES = 12  # u32 device, u64 size
#: A graph: about 300 bytes per node; Mixtral 8x22B's largest is a few MiB.
MAX_GRAPH_BYTES = 256 << 20
#: Every other command's body (GET_ALLOC_SIZE, the largest, is 3260 bytes).
MAX_SMALL_BYTES = 64 << 10
#: The largest buffer any device can hold, when the device's size is not known.
MAX_BUFFER_BYTES = 1 << 40
#: llama.cpp sends tensors larger than this as a hash first (and caches them).
CACHE_THRESHOLD = 10 << 20

_HASH_NAME = re.compile(r"[0-9a-f]{16}")


class FrameGuard:
    """Checks a client's stream of llama.cpp RPC messages (see the module docstring).

    Args:
        on_hash: told each tensor hash a ``SET_TENSOR_HASH`` names (the cache's LRU).
        on_large_tensor: told when a tensor over the cache threshold has been sent (the cache
            may have grown).
    """

    def __init__(
        self,
        *,
        on_hash: Callable[[int], None] | None = None,
        on_large_tensor: Callable[[], None] | None = None,
        max_buffer: int = MAX_BUFFER_BYTES,
    ) -> None:
        #: No buffer is larger than the device (an ALLOC_BUFFER of 2^63 fails in llama.cpp,
        #: but a SET_TENSOR of that size would make it throw an uncaught length_error).
        self._max_buffer = max_buffer
        self._header = bytearray()
        self._left = 0  # body bytes still to pass
        self._cmd = -1
        self._keep = bytearray()  # the start of a body that is read here
        self._keep_wanted = 0
        self._frames = 0
        self._largest_buffer = 0
        self._size = 0
        self._on_hash = on_hash
        self._on_large = on_large_tensor

    @property
    def mid_frame(self) -> bool:
        """Whether the client stopped inside a message."""
        return bool(self._header) or self._left > 0

    def feed(self, data: bytes) -> bytes:
        """The bytes to relay for ``data``; raises :class:`Refused` on a message to refuse."""
        zero: list[tuple[int, int]] = []  # a HELLO's body: no transport upgrade (RDMA) here
        pos, end = 0, len(data)
        while pos < end:
            if self._left == 0:
                take = min(HEADER_BYTES - len(self._header), end - pos)
                self._header += data[pos : pos + take]
                pos += take
                if len(self._header) == HEADER_BYTES:
                    self._start(bytes(self._header))
                    self._header.clear()
                    if self._left == 0:
                        self._end()
                continue
            take = min(self._left, end - pos)
            if self._cmd == CMD_HELLO:
                zero.append((pos, pos + take))
            if len(self._keep) < self._keep_wanted:
                self._keep += data[pos : pos + min(take, self._keep_wanted - len(self._keep))]
            pos += take
            self._left -= take
            if self._left == 0:
                self._end()
        if not zero:
            return data  # passed on as it came: no copy
        out = bytearray(data)
        for first, last in zero:
            out[first:last] = bytes(last - first)
        return bytes(out)

    def _start(self, header: bytes) -> None:
        cmd, size = header[0], struct.unpack_from("<Q", header, 1)[0]
        if self._frames == 0 and (cmd != CMD_HELLO or size != HELLO_BYTES):
            raise Refused(f"its first message is not llama.cpp's HELLO (command {cmd})")
        if cmd >= CMD_COUNT or cmd == CMD_NONE:
            raise Refused(f"unknown command {cmd}")
        if cmd == CMD_SET_TENSOR:
            limit = SET_TENSOR_HEADER + self._largest_buffer
        elif cmd == CMD_GRAPH_COMPUTE:
            limit = MAX_GRAPH_BYTES
        else:
            limit = MAX_SMALL_BYTES
        if size > limit:
            raise Refused(f"a message of {size} bytes (command {cmd}; at most {limit} here)")
        self._cmd, self._left, self._size = cmd, size, size
        self._keep.clear()
        self._keep_wanted = {
            CMD_ALLOC_BUFFER: ALLOC_BUFFER_BYTES,
            CMD_SET_TENSOR_HASH: SET_TENSOR_HASH_BYTES,
        }.get(cmd, 0)
        self._frames += 1

    def _end(self) -> None:
        body = bytes(self._keep)
        if self._cmd == CMD_ALLOC_BUFFER and len(body) == ALLOC_BUFFER_BYTES:
            asked = min(struct.unpack_from("<Q", body, 4)[0], self._max_buffer)
            self._largest_buffer = max(self._largest_buffer, asked)
        elif self._cmd == CMD_SET_TENSOR_HASH and len(body) == SET_TENSOR_HASH_BYTES:
            if self._on_hash is not None:
                self._on_hash(struct.unpack_from("<Q", body, SET_TENSOR_HEADER)[0])
        elif self._cmd == CMD_SET_TENSOR and self._size > CACHE_THRESHOLD and self._on_large:
            self._on_large()
        self._cmd = -1


class TensorCache:
    """llama.cpp's tensor cache folder, kept under ``max_bytes`` (least recently used first)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def touch(self, tensor_hash: int) -> None:
        """Mark the cached tensor ``tensor_hash`` as used now (if it is cached)."""
        with contextlib.suppress(OSError):
            os.utime(self.folder / f"{tensor_hash:016x}")

    def size(self) -> int:
        """Bytes the cached tensors take."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        for name in names:
            if not _HASH_NAME.fullmatch(name):
                continue  # only llama.cpp's files are ever deleted
            path = self.folder / name
            with contextlib.suppress(OSError):
                info = path.lstat()
                found.append((info.st_mtime, info.st_size, path))
        return sorted(found)

    def prune(self) -> int:
        """Delete the least recently used tensors until the folder is under the cap; returns
        the bytes freed."""
        with self._lock:
            entries = self._entries()
            total = sum(size for _, size, _ in entries)
            freed = 0
            for _, size, path in entries:
                if total - freed <= self.max_bytes:
                    break
                with contextlib.suppress(OSError):
                    path.unlink()
                    freed += size
            if freed:
                log.info("tensor cache: removed %d bytes (cap %d)", freed, self.max_bytes)
            return freed

    def prune_soon(self) -> None:
        """:meth:`prune` in a thread of its own (the relay goes on meanwhile)."""
        threading.Thread(target=self.prune, daemon=True, name="tensor cache").start()
