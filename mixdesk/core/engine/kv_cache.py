"""Conversations' KV states in the engine: kept after each answer, resumed on the next prompt.

After an answer the engine takes the state of its sequence (``llama_state_seq_get_data``,
through :class:`~mixdesk.core.engine.decoding.KvDecoder`), keeps it in memory (the last few
conversations, least recently used dropped past a byte budget) and hands it to a writer
thread that saves it as a state file (:mod:`.kv_store`) while the engine waits for the next
command: the app has its ``done`` before any of this starts. On a new prompt the longest
prefix wins among the live KV cache, the states in memory and the files on disk; a file is
checked whole before its bytes reach llama.cpp, and only the rest of the prompt is evaluated.

Imports llama_cpp (through decoding): only the engine process uses this module.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mixdesk.core.chat.template import ChatMessage, ChatTemplate
from mixdesk.core.engine.decoding import KvDecoder
from mixdesk.core.engine.kv_format import KvKey, StateHeader, digest, model_identity
from mixdesk.core.engine.kv_store import (
    MAX_FILE_BYTES,
    KvStore,
    common_prefix,
    default_directory,
)
from mixdesk.core.engine.protocol import KvCacheRequest, KvSource, LoadConfig

log = logging.getLogger(__name__)


def kv_key(
    config: LoadConfig,
    *,
    n_vocab: int,
    n_ctx: int,
    flash_attn: bool,
    template: ChatTemplate,
    llama_cpp_version: str,
) -> KvKey:
    """The key of every state a model loaded with ``config`` saves.

    Raises:
        OSError: the model file cannot be read.
    """
    compute = {
        "n_gpu_layers": config.n_gpu_layers,
        "n_batch": config.n_batch,
        "op_offload": config.op_offload,
        "tensor_split": list(config.tensor_split),
        "cpu_tensors": sorted(config.cpu_tensors),
        "rpc_servers": list(config.rpc_servers),
    }
    return KvKey(
        model=model_identity(Path(config.model_path)),
        n_vocab=n_vocab,
        n_ctx=n_ctx,
        type_k=config.type_k,
        type_v=config.type_v,
        flash_attn=flash_attn,
        template_sha256=digest(f"{template.source}\0{template.llama_builtin}\0{template.text}"),
        compute_sha256=digest(json.dumps(compute, sort_keys=True)),
        llama_cpp_version=llama_cpp_version,
    )


def session_payload(conversation: Sequence[ChatMessage | str]) -> str:
    """The conversation a session file keeps, as JSON: the messages, and the answer (a
    string) as the assistant's turn."""
    turns = [
        {"role": "assistant", "content": m}
        if isinstance(m, str)
        else {"role": m.role, "content": m.content}
        for m in conversation
    ]
    return json.dumps(turns)


@dataclass(frozen=True)
class Kept:
    """A conversation's state in memory."""

    tokens: tuple[int, ...]
    state: memoryview


@dataclass(frozen=True)
class Resumed:
    """What :meth:`ConversationCache.resume` found: ``reused`` prompt tokens from ``source``."""

    reused: int
    source: KvSource


class ConversationCache:
    """The states of one loaded model's conversations, in memory and on disk.

    Args:
        key: the loaded model's :class:`KvKey`.
        model_path: the model file (written in each state file, to delete them with it).
    """

    def __init__(self, key: KvKey, *, model_path: str) -> None:
        self.key = key
        self.model_path = model_path
        self._memory: OrderedDict[str, Kept] = OrderedDict()
        self._writes: queue.Queue[tuple[KvStore, StateHeader, memoryview] | None] = queue.Queue()
        self._writer: threading.Thread | None = None

    @staticmethod
    def store(request: KvCacheRequest) -> KvStore | None:
        """The disk store ``request`` names (None: memory only)."""
        if not request.directory:
            return None
        return KvStore(Path(request.directory), budget_bytes=request.disk_budget_bytes)

    def resume(
        self, decoder: KvDecoder, prompt: Sequence[int], request: KvCacheRequest | None
    ) -> Resumed:
        """Put the longest saved prefix of ``prompt`` in ``decoder``'s cache (unless the live
        cache already holds as much); the caller evaluates the rest."""
        usable = len(prompt) - 1  # the last token is always decoded again (fresh logits)
        live = min(common_prefix(decoder.tokens, prompt), usable)
        best: tuple[int, KvSource] = (live, "live")
        if request is None or usable <= live:
            return Resumed(*best) if live else Resumed(0, "none")
        kept_name, kept_shared = "", 0
        for name, kept in self._memory.items():
            shared = min(common_prefix(kept.tokens, prompt), usable)
            if shared > kept_shared:
                kept_name, kept_shared = name, shared
        if kept_shared > live:
            kept = self._memory[kept_name]
            self._memory.move_to_end(kept_name)
            if decoder.restore(kept.tokens, kept.state):
                best = (kept_shared, "memory")
            else:
                log.warning("llama.cpp refused a KV state kept in memory; dropped")
                del self._memory[kept_name]
        for store in self._stores(request):
            if best[0] >= usable:
                break
            match = store.best(self.key, prompt)
            if match is not None and min(match.shared, usable) > best[0]:
                best = self._from_disk(store, match.path, decoder, prompt) or best
        # what the cache holds now (a refused state left it empty)
        reused = min(common_prefix(decoder.tokens, prompt), usable)
        return Resumed(reused, best[1] if reused else "none")

    def _from_disk(
        self, store: KvStore, path: Path, decoder: KvDecoder, prompt: Sequence[int]
    ) -> tuple[int, KvSource] | None:
        loaded = store.load(path, self.key)
        if loaded is None:
            return None
        header, state = loaded
        if not decoder.restore(header.tokens, state):
            store.reject(path, "llama.cpp refused it")
            return None
        return min(common_prefix(header.tokens, prompt), len(prompt) - 1), "disk"

    def keep(
        self,
        decoder: KvDecoder,
        request: KvCacheRequest | None,
        *,
        conversation: tuple[ChatMessage | str, ...] = (),
    ) -> None:
        """Keep the state ``decoder`` holds as ``request``'s conversation: in memory now, on
        disk (and in its session file, with ``conversation``: the messages and the answer) by
        the writer thread."""
        if request is None or not decoder.tokens:
            return
        tokens = tuple(decoder.tokens)
        try:
            state = decoder.snapshot()
        except RuntimeError:
            log.warning("could not take the KV state", exc_info=True)
            return
        self._memory.pop(request.conversation, None)
        self._memory[request.conversation] = Kept(tokens, state)
        used = sum(k.state.nbytes for k in self._memory.values())
        while used > request.memory_budget_bytes and self._memory:
            _, dropped = self._memory.popitem(last=False)
            used -= dropped.state.nbytes
        header = StateHeader(
            key=self.key,
            tokens=tokens,
            state_size=state.nbytes,
            conversation=request.conversation,
            model_path=self.model_path,
            payload=session_payload(conversation) if request.session_file else "",
        )
        for store in self._stores(request):
            self._write(store, header, state)

    def _stores(self, request: KvCacheRequest) -> list[KvStore]:
        """The disk stores of ``request``: the cache folder, and the session file."""
        store = self.store(request)
        found = [] if store is None else [store]
        if request.session_file:
            found.append(
                SessionStore(
                    Path(request.session_file),
                    directory=store,
                    budget_bytes=request.disk_budget_bytes,
                )
            )
        return found

    def forget(self, conversation: str) -> None:
        """Drop a conversation's state from memory."""
        self._memory.pop(conversation, None)

    def close(self) -> None:
        """Finish the writes under way (the engine is unloading or ending)."""
        if self._writer is not None:
            self._writes.put(None)
            self._writer.join()
            self._writer = None

    def _write(self, store: KvStore, header: StateHeader, state: memoryview) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, daemon=True)
            self._writer.start()
        self._writes.put((store, header, state))

    def _write_loop(self) -> None:
        while True:
            item = self._writes.get()
            try:
                if item is None:
                    return
                store, header, state = item
                store.save(header, state)
            except Exception:  # a cache write must never end the engine
                log.exception("could not save a KV state")
            finally:
                self._writes.task_done()


class SessionStore(KvStore):
    """``mixdesk chat --session FILE``: one state file at a path of the user's choosing,
    checked with the cache's secret. The file also holds the conversation, so one that
    fails a check is ignored (its state never used) but not deleted.

    Args:
        path: the session file.
        directory: the cache whose secret it uses (default: the default cache's).
        budget_bytes: the largest state it keeps (a larger one: the conversation only).
    """

    def __init__(
        self, path: Path, *, directory: KvStore | None = None, budget_bytes: int = MAX_FILE_BYTES
    ) -> None:
        cache = directory.directory if directory is not None else default_directory()
        super().__init__(cache, budget_bytes=MAX_FILE_BYTES)
        self.file = path
        self.state_budget = budget_bytes

    def save(self, header: StateHeader, state: bytes | memoryview) -> Path | None:
        """Write the session file: the conversation, with its state when it fits the budget."""
        if header.file_size > self.state_budget:
            header, state = replace(header, tokens=(), state_size=0), b""
        return super().save(header, state)

    def path_for(self, key: KvKey, conversation: str) -> Path:
        """The session file, whatever the key."""
        return self.file

    def candidates(self, key: KvKey) -> list[Path]:
        """The session file."""
        return [self.file] if self.file.exists() else []

    def evict(self, *, keep: Path | None = None) -> int:
        """Nothing: the session file is the user's."""
        return 0

    def reject(self, path: Path, reason: str) -> None:
        """Log why its state is not used; the file stays (it holds the conversation)."""
        log.warning("the session file %s's KV state is not used: %s", path, reason)
