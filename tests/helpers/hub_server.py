"""A real HTTP server on 127.0.0.1 speaking the part of the Hub protocol huggingface_hub uses.

See shared/reference/hub-protocol.md: repo info with LFS metadata, tree, paths-info, and
HEAD/GET on ``resolve`` URLs with ``Range`` support, ``X-Repo-Commit`` and ETags; gated and
missing repos and files answered with the ``X-Error-Code`` the client maps to its
exceptions; a file can announce a smaller size than it serves (a lying Hub). It counts the
body bytes it sends per file and records Range requests, so tests can check what a client
fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    """A file served by the fake Hub: from memory or from disk (sparse files work)."""

    data: bytes | None = None
    path: Path | None = None
    sha256: str | None = None  # computed from the data when None
    #: The size the Hub's metadata announces, when it lies (the body is the whole file).
    listed_size: int | None = None

    @property
    def announced_size(self) -> int:
        """The size the metadata and the size headers announce."""
        return self.size if self.listed_size is None else self.listed_size

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        assert self.path is not None
        with self.path.open("rb") as fh:
            fh.seek(start)
            return fh.read(end - start)

    def digest(self) -> str:
        if self.sha256 is None:
            h = hashlib.sha256()
            pos = 0
            while pos < self.size:
                chunk = self.read(pos, min(self.size, pos + (8 << 20)))
                h.update(chunk)
                pos += len(chunk)
            self.sha256 = h.hexdigest()
        return self.sha256


@dataclass
class HubRepo:
    """A model repository."""

    files: dict[str, HubFile] = field(default_factory=dict)
    gated: bool = False
    token: str = "hf_good_token"  # noqa: S105 - the fake Hub's test token


@dataclass
class HubState:
    """What the server serves and what it saw."""

    repos: dict[str, HubRepo] = field(default_factory=dict)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    ranges: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Send file bodies at about this many bytes a second (0: as fast as possible).
    throttle_bps: int = 0
    #: Cut the connection once after this many body bytes of a response (0: never).
    drop_after: int = 0
    #: Serve these bytes instead of a file's own (a corrupted transfer).
    corrupt: dict[str, bytes] = field(default_factory=dict)

    def sent(self, repo_file: str) -> int:
        """Body bytes sent for ``REPO/FILE``."""
        return self.bytes_sent.get(repo_file, 0)


_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_PATHS = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _make_handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        # -- helpers ----------------------------------------------------------------------
        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: Any) -> None:
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _repo(self, repo_id: str) -> HubRepo | None:
            repo = state.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
                return None
            if repo.gated and self.headers.get("Authorization") != f"Bearer {repo.token}":
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
                return None
            return repo

        @staticmethod
        def _entry(name: str, f: HubFile, *, siblings: bool) -> dict[str, Any]:
            lfs = {"size": f.announced_size, "pointerSize": 134}
            if siblings:
                return {
                    "rfilename": name,
                    "size": f.announced_size,
                    "blobId": f.digest()[:40],
                    "lfs": {**lfs, "sha256": f.digest()},
                }
            return {
                "type": "file",
                "oid": f.digest()[:40],
                "size": f.announced_size,
                "path": name,
                "lfs": {**lfs, "oid": f.digest()},
            }

        # -- verbs ------------------------------------------------------------------------
        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length).decode() if length else ""
            m = _PATHS.match(urlparse(self.path).path)
            if not m:
                self._error(404, "EntryNotFound", "unknown endpoint")
                return
            repo = self._repo(unquote(m["repo"]))
            if repo is None:
                return
            form = parse_qs(raw)
            wanted = form.get("paths", [])
            if not wanted and raw.startswith("{"):
                wanted = json.loads(raw).get("paths", [])
            self._json(
                [self._entry(p, repo.files[p], siblings=False) for p in wanted if p in repo.files]
            )

        def _serve(self, *, body: bool) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            if m := _RESOLVE.match(path):
                self._resolve(m["repo"], m["path"], body=body)
                return
            if m := _TREE.match(path):
                repo = self._repo(m["repo"])
                if repo is not None:
                    prefix = m["path"] or ""
                    self._json(
                        [
                            self._entry(n, f, siblings=False)
                            for n, f in sorted(repo.files.items())
                            if n.startswith(prefix)
                        ]
                    )
                return
            if m := _INFO.match(path):
                repo = self._repo(m["repo"])
                if repo is not None:
                    self._json(
                        {
                            "id": m["repo"],
                            "modelId": m["repo"],
                            "sha": COMMIT,
                            "private": False,
                            "gated": "auto" if repo.gated else False,
                            "siblings": [
                                self._entry(n, f, siblings=True)
                                for n, f in sorted(repo.files.items())
                            ],
                        }
                    )
                return
            self._error(404, "EntryNotFound", f"unknown endpoint {path}")

        def _resolve(self, repo_id: str, name: str, *, body: bool) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            f = repo.files.get(name)
            if f is None:
                self._error(404, "EntryNotFound", f"{name} does not exist in {repo_id}")
                return
            size = f.size
            start, end = 0, size
            header = self.headers.get("Range")
            if header:
                m = re.match(r"bytes=(\d+)-(\d*)", header)
                if m:
                    start = int(m.group(1))
                    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                with state.lock:
                    state.ranges.append((f"{repo_id}/{name}", header))
            if start >= size and size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._file_headers(f, start, end, ranged=bool(header))
            if body:
                self._file_body(f"{repo_id}/{name}", f, start, end)

        def _file_headers(self, f: HubFile, start: int, end: int, *, ranged: bool) -> None:
            size = f.size
            self.send_response(206 if ranged else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{f.digest()}"')
            self.send_header("X-Linked-Etag", f'"{f.digest()}"')
            self.send_header("X-Linked-Size", str(f.announced_size))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.send_header("Content-Length", str(end - start))
            self.end_headers()

        def _file_body(self, key: str, f: HubFile, start: int, end: int) -> None:
            plain = not (state.throttle_bps or state.drop_after or key in state.corrupt)
            if plain and f.path is not None and hasattr(os, "sendfile"):
                # zero-copy, like a real file server: the benchmark then measures the client
                self.wfile.flush()
                # counted before they go: a client that has the bytes finds them counted
                with state.lock:
                    state.bytes_sent[key] = state.bytes_sent.get(key, 0) + (end - start)
                with f.path.open("rb") as src:
                    pos = start
                    while pos < end:
                        pos += os.sendfile(
                            self.connection.fileno(), src.fileno(), pos, min(end - pos, 8 << 20)
                        )
                return
            step = 1 << 20 if not state.throttle_bps else max(4096, state.throttle_bps // 20)
            pos = start
            sent = 0
            while pos < end:
                chunk = f.read(pos, min(end, pos + step))
                if key in state.corrupt:
                    chunk = state.corrupt[key][pos : pos + len(chunk)]
                if state.drop_after and sent + len(chunk) > state.drop_after:
                    cut = state.drop_after - sent
                    with state.lock:
                        state.drop_after = 0
                        state.bytes_sent[key] = state.bytes_sent.get(key, 0) + cut
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                with state.lock:  # counted before they go (see above)
                    state.bytes_sent[key] = state.bytes_sent.get(key, 0) + len(chunk)
                self.wfile.write(chunk)
                pos += len(chunk)
                sent += len(chunk)
                if state.throttle_bps:
                    time.sleep(len(chunk) / state.throttle_bps)

    return Handler


@contextmanager
def serve_hub(state: HubState, *, port: int = 0) -> Iterator[str]:
    """Run the fake Hub on ``port`` (0: a free one); yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
