"""``mixdesk chat MODEL``: one answer (``--prompt``) or an interactive multi-turn chat."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict

from mixdesk.commands.chat_session import ChatSession, open_session
from mixdesk.commands.common import calibration_store, load_choices, machine, print_json
from mixdesk.commands.keys import endpoint_key_from
from mixdesk.commands.terminal import write_control
from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.chat.words import BASE_MODEL_WORDS, no_text_words
from mixdesk.core.engine import ChatDone, Engine, GenerationStats, SamplingParams
from mixdesk.core.engine.protocol import ModelInfo
from mixdesk.core.engine.stream import AnswerStream
from mixdesk.core.engine.validate import validate_sampling
from mixdesk.core.hub.library import Library
from mixdesk.core.loading.load import LoadOutcome, load_model, record_answer_speed
from mixdesk.core.loading.model import resolve_model
from mixdesk.core.loading.service import LoadRequest
from mixdesk.core.planning.calibration import CalibrationStore
from mixdesk.core.planning.types import placement_words
from mixdesk.core.workspace.endpoints import (
    Endpoint,
    normalize_url,
    remote_chat,
    remote_model_info,
)
from mixdesk.errors import InvalidArgumentError

_HELP = "Type a message and press Enter. /reset starts over, /exit or Ctrl-D quits, Ctrl-C stops an answer."


def speed_line(stats: GenerationStats, *, load_s: float | None = None) -> str:
    """Format the speed figures like llama.cpp's timings, on one line."""
    parts = []
    if load_s is not None:
        parts.append(f"load {load_s * 1000:.2f} ms")
    if stats.prompt_eval_tokens:
        parts.append(
            f"prompt eval {stats.prompt_eval_tokens} tokens, {stats.prompt_tps:.2f} tokens per second"
        )
    parts.append(f"eval {stats.eval_tokens} tokens, {stats.eval_tps:.2f} tokens per second")
    parts.append(f"first token {stats.ttft_s * 1000:.0f} ms")
    if stats.context_size:
        parts.append(f"context {stats.context_used}/{stats.context_size}")
    return "mixdesk: " + " | ".join(parts)


def _sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        max_tokens=args.max_tokens,
        seed=args.seed,
        stop=tuple(args.stop),
        ignore_eos=getattr(args, "ignore_eos", False),
    )


def _load(
    engine: Engine, request: LoadRequest, store: CalibrationStore, *, show_progress: bool
) -> LoadOutcome:
    """Plan (with a dry run in the engine) and load, with a progress line on a terminal."""
    name = request.model.path.name

    def progress(fraction: float) -> None:
        write_control(sys.stderr, "\r")
        sys.stderr.write(f"Loading {name}: {fraction * 100:5.1f}%")
        sys.stderr.flush()

    outcome = load_model(
        engine, request, on_progress=progress if show_progress else None, store=store
    )
    if show_progress:
        write_control(sys.stderr, "\r\x1b[K")
    return outcome


def _stream(stream: AnswerStream, *, echo: bool) -> ChatDone:
    """Print deltas as they come; Ctrl-C stops the answer but keeps what arrived.

    A second Ctrl-C (the answer did not stop) ends the command.
    """
    interrupted = False
    while True:
        try:
            for delta in stream:
                if echo:
                    sys.stdout.write(delta.text)
                    sys.stdout.flush()
            assert stream.result is not None
            return stream.result
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            stream.cancel()


class _RemoteBackend:
    """A remote endpoint with the engine's chat() interface."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def chat(self, messages: list[ChatMessage], sampling: SamplingParams) -> AnswerStream:
        return remote_chat(self.endpoint, messages, sampling)


def _run_remote(args: argparse.Namespace, sampling: SamplingParams) -> int:
    endpoint = Endpoint(
        url=normalize_url(args.endpoint),
        api_key=endpoint_key_from(args, normalize_url(args.endpoint)),
        model=args.model_name,
    )
    backend = _RemoteBackend(endpoint)
    info = remote_model_info(endpoint)
    history: list[ChatMessage] = [ChatMessage("system", args.system)] if args.system else []
    if args.prompt is None:
        return _interactive(backend, info, history, sampling)
    history.append(ChatMessage("user", args.prompt))
    done = _stream(backend.chat(history, sampling), echo=not args.json)
    if args.json:
        result = _json_result(done, info)
        result["model"] = endpoint.model or endpoint.url
        result["n_gpu_layers"] = None
        result["endpoint"] = endpoint.url
        print_json(result)
    else:
        sys.stdout.write("\n")
        sys.stderr.write(speed_line(done.stats) + f" (measured here, from {endpoint.url})\n")
    return 0


def load_request(args: argparse.Namespace, *, library: Library) -> LoadRequest:
    """What ``mixdesk chat`` will load: the model, this machine and the load options.

    Args:
        args: the command line.
        library: where a library name is looked up.

    Raises:
        InvalidArgumentError: a load option is out of range.
        ModelNotFoundError, NotAGgufError, ModelNotInLibraryError: no usable model.
    """
    choices = load_choices(args)
    choices.validate()
    return LoadRequest(
        resolve_model(args.model, library=library),
        machine(args),
        choices,
        calibration=calibration_store().read(),
    )


def _end_answer_line(*, echoed: bool) -> None:
    """End the streamed answer's line before anything else is said on the terminal."""
    if echoed:
        sys.stdout.write("\n")
        sys.stdout.flush()


def run_chat(args: argparse.Namespace, *, library: Library) -> int:
    """Run the chat command; returns the exit status."""
    if args.json and args.prompt is None:
        raise InvalidArgumentError(
            "--json needs --prompt (it prints one answer as one JSON object)."
        )
    sampling = _sampling(args)
    validate_sampling(sampling)
    if args.endpoint:
        return _run_remote(args, sampling)
    if not args.model:
        raise InvalidArgumentError(
            "Name a MODEL (a .gguf file or a library name) or an --endpoint URL."
        )
    session = _open_session(args)
    request = load_request(args, library=library)
    store = calibration_store()
    show_progress = sys.stderr.isatty() and not args.json
    with Engine() as engine:
        outcome = _load(engine, request, store, show_progress=show_progress)
        info = outcome.info
        if not args.json:
            sys.stderr.write(f"mixdesk: {outcome.setup.summary}\n")
            if outcome.note:
                sys.stderr.write(f"mixdesk: {outcome.note}\n")
        if info.chat_template_note:  # the model's own template is broken: say which one is used
            sys.stderr.write(f"mixdesk: {info.chat_template_note}\n")
        if info.base_model:
            sys.stderr.write(f"mixdesk: {info.name} {BASE_MODEL_WORDS}.\n")
        history: list[ChatMessage] = list(session.messages) if session else []
        if args.system and not history:
            history.append(ChatMessage("system", args.system))
        cache = session.cache if session else None
        if args.prompt is not None:
            history.append(ChatMessage("user", args.prompt))
            done = _stream(engine.chat(history, sampling, cache=cache), echo=not args.json)
            record_answer_speed(store, outcome, done.stats)
            _end_answer_line(echoed=not args.json)
            if session:
                sys.stderr.write(session.note(done) + "\n")
            if args.json:
                print_json({**_json_result(done, info), **_placement(outcome)})
            else:
                _say_if_no_text(done)
                sys.stderr.write(speed_line(done.stats, load_s=info.load_s) + "\n")
            return 0
        return _interactive(
            engine,
            info,
            history,
            sampling,
            on_done=lambda done: record_answer_speed(store, outcome, done.stats),
            session=session,
        )


def _open_session(args: argparse.Namespace) -> ChatSession | None:
    """``--session FILE``: the conversation it holds (checked before anything loads)."""
    if not args.session:
        return None
    if args.endpoint:
        raise InvalidArgumentError("--session keeps a local model's KV state; not with --endpoint.")
    from mixdesk.core.workspace.settings import Settings

    return open_session(args.session, Settings.load())


def _placement(outcome: LoadOutcome) -> dict[str, object]:
    """Where the plan put the model and what llama.cpp reported allocating, per device."""
    return {
        "devices": [
            {
                "name": d.name,
                "buffer_name": d.buffer_name,
                "layers": d.layers,
                "output": d.output,
                "weights_bytes": d.weights_bytes,
                "kv_bytes": d.kv_bytes,
                "send_bytes": d.send_bytes,
            }
            for d in outcome.setup.plan.devices
        ],
        "buffers": [asdict(b) for b in outcome.info.buffers.items],
    }


def _say_if_no_text(done: ChatDone) -> None:
    """An answer with no text says why instead of printing nothing (or only blank lines)."""
    why = no_text_words(done.finish_reason, done.stats.eval_tokens, done.text)
    if why:
        sys.stderr.write(f"mixdesk: {why}\n")


def _json_result(done: ChatDone, info: ModelInfo) -> dict[str, object]:
    stats = done.stats
    return {
        "text": done.text,
        "ended_at_once": done.ended_at_once,
        "model": info.path,
        "n_gpu_layers": info.n_gpu_layers,
        "finish_reason": done.finish_reason,
        "stats": {
            "prompt_tokens": stats.prompt_tokens,
            "prompt_tps": stats.prompt_tps,
            "eval_tokens": stats.eval_tokens,
            "eval_tps": stats.eval_tps,
            "ttft_s": stats.ttft_s,
            "load_s": info.load_s,
            "context_used": stats.context_used,
            "context_size": stats.context_size,
        },
    }


def _lines(prompt: str) -> Iterator[str]:
    """Yield the user's lines; Ctrl-C on an empty prompt just shows a new prompt."""
    interactive = sys.stdin.isatty()
    while True:
        try:
            if interactive:
                yield input(prompt)
            else:
                line = sys.stdin.readline()
                if not line:
                    return
                yield line.rstrip("\n")
        except EOFError:
            return
        except KeyboardInterrupt:
            sys.stderr.write("\n")


def _interactive(
    engine: Engine | _RemoteBackend,
    info: ModelInfo,
    history: list[ChatMessage],
    sampling: SamplingParams,
    *,
    on_done: Callable[[ChatDone], object] = lambda _done: None,
    session: ChatSession | None = None,
) -> int:
    system = [m for m in history if m.role == "system"]
    if sys.stdin.isatty():
        sys.stderr.write(
            f"{info.name}: {placement_words(info.n_gpu_layers, info.n_layers)}, "
            f"context {info.n_ctx}. {_HELP}\n"
        )
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing for input()
    first = True
    for line in _lines("> "):
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            break
        if text == "/reset":
            history[:] = system
            sys.stderr.write("mixdesk: conversation cleared.\n")
            continue
        history.append(ChatMessage("user", text))
        if isinstance(engine, Engine) and session:
            done = _stream(engine.chat(history, sampling, cache=session.cache), echo=True)
        else:
            done = _stream(engine.chat(history, sampling), echo=True)
        on_done(done)
        sys.stdout.write("\n")
        if session and first:
            sys.stderr.write(session.note(done) + "\n")
        _say_if_no_text(done)
        history.append(ChatMessage("assistant", done.text))
        note = " (stopped)" if done.finish_reason == "cancelled" else ""
        sys.stderr.write(
            speed_line(done.stats, load_s=info.load_s if first else None) + note + "\n"
        )
        first = False
    return 0
