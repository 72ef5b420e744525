"""What the engine process does with llama.cpp: load a model, dry-run a load, answer a chat.

:class:`ModelHost` owns the ``llama_cpp.Llama`` and runs each command the engine process
(:mod:`mixdesk.core.engine.process`) reads from the app; it reports through the protocol's
events (:mod:`.protocol`): load progress, the loaded model's figures, deltas with live speed,
the end of an answer. A cancel added to :attr:`ModelHost.cancelled` (by the process's
reader thread) stops an answer between tokens, or a long prompt through llama.cpp's abort
callback.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mixdesk.core.chat.context_window import answer_room, fit_messages
from mixdesk.core.chat.template import (
    ChatMessage,
    ChatTemplate,
    looks_like_base_model,
    render_prompt,
    select_template,
)
from mixdesk.core.engine import devices, diagnose, llama_adapter, prompt_tokens, session
from mixdesk.core.engine.answer import Answer
from mixdesk.core.engine.decoding import DecodeError, KvDecoder, SamplerChain
from mixdesk.core.engine.kv_cache import ConversationCache, kv_key
from mixdesk.core.engine.protocol import (
    BufferReport,
    ChatDone,
    DeviceMemory,
    EngineInfo,
    GenerationStats,
    KvCacheRequest,
    LoadConfig,
    LoadProgress,
    ModelInfo,
    SamplingParams,
)
from mixdesk.core.engine.wire import encode, encode_delta
from mixdesk.errors import (
    ContextOverflowError,
    NoModelLoadedError,
    TemplateCancelledError,
)

log = logging.getLogger(__name__)


class ModelHost:
    """Runs load and chat commands against llama.cpp and reports events.

    Args:
        send: writes one encoded protocol event to the app (from any thread).
        log_text: the recent lines of llama.cpp's log (read to explain a failed load and
            to find the buffers it allocated).
    """

    def __init__(self, send: Callable[[bytes], None], log_text: Callable[[], str]) -> None:
        import llama_cpp

        llama_adapter.check_compatible()
        self._lc = llama_cpp
        self._send = send
        self._log_text = log_text
        #: Ids of answers the app asked to stop (added by the stdin reader thread).
        self.cancelled: set[int] = set()
        self.current_request = 0
        self._llm: Any = None
        self._config: LoadConfig | None = None
        self._template: ChatTemplate | None = None
        self._special: prompt_tokens.SpecialTokens | None = None
        self._pieces: dict[int, bytes] = {}
        self._opened: session.OpenedModel | None = None
        self._decoder: KvDecoder | None = None
        self._kv: ConversationCache | None = None
        self._calibrate = False  # report device memory after the first prompt batch
        # ctypes callbacks must stay referenced while llama.cpp may call them.
        self._abort_cb = llama_cpp.ggml_abort_callback(self._should_abort)

    # -- commands ---------------------------------------------------------------------

    def info(self) -> EngineInfo:
        """Describe this engine and the llama.cpp build it runs."""
        lc = self._lc
        return EngineInfo(
            pid=os.getpid(),
            llama_cpp_version=str(getattr(lc, "__version__", "unknown")),
            # With RPC compiled in, llama_supports_gpu_offload() is always true: ask for GPUs.
            supports_gpu_offload=bool(devices.local_gpus()),
            system_info=lc.llama_print_system_info().decode("utf-8", errors="replace").strip(),
        )

    def load(self, config: LoadConfig) -> None:
        """Load a model, reporting progress; send ``loaded`` or a failure."""
        path = Path(config.model_path)  # resolved and checked before it was sent (client)
        lc = self._lc
        last = [-1.0]

        def on_progress(fraction: float, _data: Any) -> bool:
            if fraction - last[0] >= 0.01 or fraction >= 1.0:
                last[0] = fraction
                self._send(encode(LoadProgress(round(fraction, 4))))
            return True

        progress_cb = lc.llama_progress_callback(on_progress)
        kwargs = session.llama_kwargs(config)
        n_threads, flash_attn = kwargs["n_threads"], kwargs["flash_attn"]
        session.register_devices(config)
        free_before = devices.offload_free_memory() if config.n_gpu_layers else {}
        start = time.perf_counter()
        self.close()
        try:
            self._opened = session.open_llama(config, progress=progress_cb)
            self._llm = self._opened.llm
        except ValueError:
            sys.stderr.flush()
            raise diagnose.load_failure(str(path), self._log_text()) from None
        load_s = time.perf_counter() - start
        llm = self._llm
        self._config = config
        self._pieces = {}
        self._decoder = KvDecoder(llama_adapter.context_pointer(llm), n_batch=llm.n_batch)
        metadata = dict(llm.metadata)
        self._template = select_template(metadata)
        model = llama_adapter.model_handle(llm)
        self._special = prompt_tokens.special_tokens(model.vocab)
        key = kv_key(
            config,
            n_vocab=model.n_vocab(),
            n_ctx=llm.n_ctx(),
            flash_attn=bool(flash_attn),
            template=self._template,
            llama_cpp_version=str(getattr(lc, "__version__", "")),
        )
        self._kv = ConversationCache(key, model_path=str(path))
        arch = metadata.get("general.architecture", "unknown")
        n_layers = int(metadata.get(f"{arch}.block_count", "0") or 0)
        log_text = self._log_text()
        free_after = devices.offload_free_memory() if free_before else {}
        self._calibrate = bool(free_before)  # once more after the first prompt batch
        info = ModelInfo(
            path=str(path),
            name=metadata.get("general.name", path.stem),
            architecture=arch,
            n_layers=n_layers,
            n_gpu_layers=diagnose.offloaded_layers(log_text),
            n_ctx=llm.n_ctx(),
            n_ctx_train=model.n_ctx_train(),
            n_vocab=model.n_vocab(),
            n_params=model.n_params(),
            size_bytes=model.size(),
            chat_template_source=self._template.source,
            chat_template_note=self._template.note,
            base_model=looks_like_base_model(metadata),
            system_prompt_folded=not self._template.has_system_role,
            load_s=round(load_s, 4),
            n_threads=n_threads,
            flash_attn=flash_attn,
            type_k=config.type_k,
            type_v=config.type_v,
            buffers=diagnose.buffer_sizes(log_text),
            device_free={k: [v, free_after.get(k, v)] for k, v in free_before.items()},
        )
        self._send(encode(info))

    def dry_run(self, config: LoadConfig) -> None:
        """Ask llama.cpp what a load would allocate, without allocating (``no_alloc``): the
        compute buffer of every backend comes out exact, on whatever devices are present;
        model and KV buffers log 0. Sends a :class:`BufferReport`."""
        session.register_devices(config)
        try:
            llm = session.open_llama(config, no_alloc=True).llm
        except ValueError:
            sys.stderr.flush()
            raise diagnose.load_failure(config.model_path, self._log_text()) from None
        report = BufferReport(diagnose.buffer_sizes(self._log_text()))
        llm.close()
        self._send(encode(report))

    def chat(
        self,
        request_id: int,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        *,
        stream_interval_s: float = 0.0,
        report_tokens: bool = False,
        cache: KvCacheRequest | None = None,
    ) -> None:
        """Generate an answer, streaming deltas with live speed; end with ``done``
        (with the prompt's and the answer's token ids when ``report_tokens``), then keep the
        conversation's KV state as ``cache`` asks (after ``done``: the app never waits for it).

        Deltas go out at most every ``stream_interval_s`` (text arriving faster is merged into
        the next one): nobody reads more than 60 updates a second, and every message the app
        wakes up for takes CPU time from llama.cpp on a small machine.
        """
        llm = self._llm
        if llm is None or self._template is None:
            raise NoModelLoadedError("No model is loaded; load a model before chatting.")
        n_ctx = llm.n_ctx()
        vocab = llama_adapter.model_handle(llm).vocab
        counted: dict[int, list[int]] = {}

        def count(some: list[ChatMessage]) -> int:
            counted[len(some)] = self._prompt_tokens(request_id, some)
            return len(counted[len(some)])

        try:
            # the overflow policy: older turns left out (or a refusal) before the context fills
            fitted = fit_messages(
                messages,
                count,
                n_ctx=n_ctx,
                reserve=answer_room(n_ctx, sampling.max_tokens),
                policy=sampling.overflow,
                message_tokens=lambda m: len(prompt_tokens.tokenize(vocab, m.content)),
            )
            tokens = counted[len(fitted.messages)]
        except TemplateCancelledError:
            self.cancelled.discard(request_id)
            done = ChatDone(request_id, "", "cancelled", GenerationStats())
            self._send(encode(done))
            return
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(
                f"The conversation ({len(tokens)} tokens) no longer fits the context of {n_ctx} "
                "tokens; start a new conversation or load the model with a larger context."
            )
        room = n_ctx - len(tokens)
        max_tokens = room if sampling.max_tokens <= 0 else min(sampling.max_tokens, room)

        self.current_request = request_id
        ctx = llama_adapter.context_pointer(llm)
        self._lc.llama_perf_context_reset(ctx)
        answer = Answer(
            request_id, len(tokens), tuple(s for s in sampling.stop if s), stream_interval_s
        )
        if report_tokens:
            answer.token_ids = []
        seed = (
            sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little")
        )
        self._generate(answer, tokens, sampling, max_tokens, seed, cache=cache)
        rest = answer.rest()
        if rest:
            self._send(encode_delta(request_id, rest, self._answer_stats(answer)))
        stats = self._answer_stats(answer)
        self.cancelled.discard(request_id)
        self.current_request = 0
        # llama.cpp's own timings go to the log before "done", so the log is complete when the
        # app hears the answer ended.
        self._lc.llama_perf_context_print(ctx)
        done = ChatDone(
            request_id,
            answer.text,
            answer.finish,
            stats,
            fitted.dropped,
            prompt_token_ids=tuple(tokens) if report_tokens else (),
            token_ids=tuple(answer.token_ids or ()),
        )
        self._send(encode(done))
        if self._kv is not None and self._decoder is not None:
            self._kv.keep(self._decoder, cache, conversation=(*messages, answer.text))

    def close(self) -> None:
        """Finish the KV state writes under way (before unloading or ending)."""
        if self._kv is not None:
            self._kv.close()

    def _prompt_tokens(self, request_id: int, messages: Sequence[ChatMessage]) -> list[int]:
        """Render the conversation with the model's template and tokenize it.

        Raises:
            TemplateCancelledError: the app stopped the answer while the template rendered.
            ChatTemplateError: the template broke its time or size budget.
        """
        assert self._template is not None
        assert self._special is not None
        special = self._special
        # The template comes from the model file: it renders within a time and size
        # budget (a ChatTemplateError past it), and a Stop ends the render at once.
        prompt = render_prompt(
            self._template,
            list(messages),
            bos_token=special.bos,
            eos_token=special.eos,
            cancelled=lambda: request_id in self.cancelled,
        )
        # llama.cpp's rule: one BOS whether the template writes it or not (prompt_tokens).
        vocab = llama_adapter.model_handle(self._llm).vocab
        return prompt_tokens.tokenize(vocab, prompt_tokens.for_tokenizer(prompt, special))

    def _generate(
        self,
        answer: Answer,
        tokens: list[int],
        sampling: SamplingParams,
        max_tokens: int,
        seed: int,
        *,
        cache: KvCacheRequest | None,
    ) -> None:
        """Run llama.cpp's decode loop into ``answer``, sending deltas as they are due.

        The loop is llama.cpp's C API (:mod:`.decoding`): per token one sample and one decode,
        and between them only what the answer needs.
        """
        lc = self._lc
        ctx = llama_adapter.context_pointer(self._llm)
        vocab = llama_adapter.model_handle(self._llm).vocab
        decoder = self._decoder
        assert decoder is not None
        cancelled = self.cancelled
        request_id = answer.request_id
        # While the prompt is evaluated, llama.cpp polls this callback between graph nodes, so
        # a cancel interrupts even a long prompt; it is removed for generation, where the
        # check between tokens is enough and a Python call per node would cost speed.
        assert self._kv is not None
        resumed = self._kv.resume(decoder, tokens, cache)
        answer.reused, answer.reused_from = resumed.reused, resumed.source
        lc.llama_set_abort_callback(ctx, self._abort_cb, None)
        try:
            decoder.feed_prompt(tokens)
        except DecodeError as err:
            if not (err.aborted and request_id in cancelled):
                raise
            answer.finish = "cancelled"
            return
        finally:
            lc.llama_set_abort_callback(ctx, lc.ggml_abort_callback(0), None)
        token_ids = answer.token_ids
        stop_at_eog = not sampling.ignore_eos
        is_eog = lc.llama_vocab_is_eog
        n_vocab = llama_adapter.model_handle(self._llm).n_vocab()
        with SamplerChain(sampling, n_vocab=n_vocab, seed=seed) as chain:
            sample, feed = chain.sample, decoder.feed
            while True:
                token = sample(ctx)
                if token_ids is not None:
                    token_ids.append(token)
                if answer.n_generated == 0:
                    answer.ttft = time.perf_counter() - answer.start
                    if self._calibrate:  # the runtime's lazy allocations happen by now
                        self._calibrate = False
                        self._send(encode(DeviceMemory(devices.offload_free_memory())))
                if request_id in cancelled:
                    answer.finish = "cancelled"
                    break
                if stop_at_eog and is_eog(vocab, token):
                    answer.finish = "stop"
                    break
                if answer.add(self._piece(token)):
                    break
                chunk = answer.due()
                if chunk:
                    self._send(encode_delta(request_id, chunk, self._answer_stats(answer)))
                if answer.n_generated >= max_tokens:
                    break
                feed(token)

    def _answer_stats(self, answer: Answer) -> GenerationStats:
        perf = self._lc.llama_perf_context(llama_adapter.context_pointer(self._llm))
        used = len(self._decoder.tokens) if self._decoder else 0
        return answer.stats(perf, context_used=used, context_size=int(self._llm.n_ctx()))

    # -- helpers ----------------------------------------------------------------------

    def _should_abort(self, _data: Any) -> bool:
        return self.current_request in self.cancelled

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = self._lc.llama_token_to_piece(
                llama_adapter.model_handle(self._llm).vocab, token, buf, 256, 0, False
            )
            piece = buf.raw[: max(n, 0)]
            self._pieces[token] = piece
        return piece
