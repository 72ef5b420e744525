"""Chat with a remote OpenAI-compatible endpoint (TGI, llama-server, vLLM, Inference Endpoints).

Built on ``huggingface_hub.InferenceClient.chat_completion(stream=True)``. A remote answer
looks to the rest of MixDesk exactly like a local one: a :class:`RemoteChatStream` yields
:class:`TextDelta` events with live speed figures and ends with a :class:`ChatDone`. Speeds
are measured here, on the client (time to first token, tokens per second of generation);
token counts come from the server's usage figures when it sends them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mixdesk.core.chat_template import ChatMessage
from mixdesk.core.engine.client import AnswerStream
from mixdesk.core.engine.protocol import (
    ChatDone,
    GenerationStats,
    ModelInfo,
    SamplingParams,
    TextDelta,
)
from mixdesk.errors import MixdeskError

log = logging.getLogger(__name__)


class EndpointError(MixdeskError):
    """The endpoint could not answer (unreachable, refused, unknown model, timeout, cut)."""


@dataclass(frozen=True)
class Endpoint:
    """A remote model: where it is, how to authenticate, which model to ask for."""

    url: str
    api_key: str | None = None
    model: str | None = None
    name: str = ""
    #: "llama.cpp" sends top_k, min_p and repeat_penalty too; "openai" only the standard fields;
    #: "auto" asks the server which it is (once per address), when the first answer starts.
    kind: str = "auto"

    @property
    def label(self) -> str:
        """How the endpoint is shown to the user."""
        return self.name or self.url


def normalize_url(url: str) -> str:
    """The API root (``…/v1``) for a server address, with or without ``/v1``."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(
            f"'{url}' is not an endpoint address; write it like http://127.0.0.1:8080/v1."
        )
    return url if url.endswith("/v1") else url + "/v1"


def endpoint_error(
    err: BaseException, endpoint: Endpoint, *, started: bool = False
) -> EndpointError:
    """One sentence for what went wrong talking to ``endpoint``."""
    url = endpoint.url
    name = type(err).__name__
    status = getattr(getattr(err, "response", None), "status_code", None)
    text = str(err)
    if started and name in (
        "RemoteProtocolError",
        "ReadError",
        "ChunkedEncodingError",
        "ProtocolError",
        "IncompleteRead",
        "StreamConsumed",
        "ConnectError",
    ):
        return EndpointError(
            f"The connection to {url} broke in the middle of the answer; what arrived is kept."
        )
    if status in (401, 403):
        return EndpointError(f"{url} refused the API key (HTTP {status}); check --api-key.")
    if status == 404 and endpoint.model and "model" in text.lower():
        return EndpointError(
            f"{url} has no model '{endpoint.model}'; check --model (or leave it out)."
        )
    if status == 404:
        return EndpointError(
            f"There is no OpenAI-compatible chat API at {url} (HTTP 404); check the address."
        )
    if status is not None and status >= 400:
        detail = text.splitlines()[0][:160] if text else ""
        return EndpointError(f"{url} failed with HTTP {status} ({detail}).")
    if "Timeout" in name:
        return EndpointError(
            f"{url} did not answer in time; the server may be overloaded, try again."
        )
    if name in ("ConnectError", "ConnectionError", "ConnectTimeout") or isinstance(
        err, ConnectionError
    ):
        return EndpointError(
            f"Cannot reach {url}: nothing answers there; check the address and that the server runs."
        )
    if started:
        return EndpointError(
            f"The connection to {url} broke in the middle of the answer; what arrived is kept."
        )
    return EndpointError(f"Talking to {url} failed ({name}: {text[:160]}).")


_KINDS: dict[str, str] = {}


def detect_kind(url: str, api_key: str | None = None, timeout: float = 5.0) -> str:
    """ "llama.cpp" if the server is llama.cpp's (it reports itself in /v1/models), else "openai".

    Asked once per address and remembered, not before every answer.
    """
    base = normalize_url(url)
    if base not in _KINDS:
        kind = _ask_kind(base, api_key, timeout)
        if kind is None:
            return "openai"  # no answer (down, wrong key): ask again next time
        _KINDS[base] = kind
    return _KINDS[base]


def _ask_kind(base: str, api_key: str | None, timeout: float) -> str | None:
    from huggingface_hub.utils._http import get_session

    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        response = get_session().get(base + "/models", headers=headers, timeout=timeout)
        if response.status_code != 200:
            return None
        owners = {str(m.get("owned_by", "")) for m in response.json().get("data", [])}
    except Exception:  # noqa: BLE001 - unreachable or not JSON: the standard fields only
        return None
    return "llama.cpp" if owners & {"llamacpp", "me", "llama.cpp"} else "openai"


class RemoteChatStream(AnswerStream):
    """A remote answer, with the same interface as the local engine's ChatStream."""

    def __init__(self, endpoint: Endpoint, chunks: Iterator[Any]) -> None:
        super().__init__()
        self.endpoint = endpoint
        self._chunks = chunks
        self._cancelled = False
        self._start = time.perf_counter()
        self._first: float | None = None
        self._last = self._start
        self._n = 0
        self._usage: Any = None
        self._finish: str | None = None
        self.client: Any = None

    def _stats(self) -> GenerationStats:
        usage = self._usage
        tokens = int(getattr(usage, "completion_tokens", 0) or self._n)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        ttft = (self._first - self._start) if self._first is not None else 0.0
        gen_s = self._last - self._first if self._first is not None else 0.0
        return GenerationStats(
            prompt_tokens=prompt,
            prompt_eval_tokens=prompt,
            prompt_tps=round(prompt / ttft, 3) if prompt and ttft > 0 else 0.0,
            eval_tokens=tokens,
            eval_tps=round((tokens - 1) / gen_s, 3) if tokens > 1 and gen_s > 0 else 0.0,
            ttft_s=round(ttft, 6),
            elapsed_s=round(time.perf_counter() - self._start, 6),
        )

    def __next__(self) -> TextDelta:
        if self.result is not None:
            raise StopIteration
        while True:
            if self._cancelled:
                self._end("cancelled")
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._end(self._finish or "stop")
            except Exception as err:
                self.result = ChatDone(0, self.text, "error", self._stats())
                raise endpoint_error(err, self.endpoint, started=self._first is not None) from err
            if getattr(chunk, "usage", None):
                self._usage = chunk.usage
            for choice in getattr(chunk, "choices", None) or []:
                if choice.finish_reason:
                    self._finish = "length" if choice.finish_reason == "length" else "stop"
                piece = getattr(choice.delta, "content", None) or ""
                if self._first is None:
                    piece = piece.lstrip()  # as for local answers: no leading space
                if piece:
                    now = time.perf_counter()
                    if self._first is None:
                        self._first = now
                    self._last = now
                    self._n += 1
                    self._text.append(piece)
                    return TextDelta(0, piece, self._stats(), time.monotonic_ns())

    def _end(self, reason: str) -> None:
        self.result = ChatDone(0, self.text, reason, self._stats())
        close = getattr(self._chunks, "close", None)
        if callable(close):
            close()
        raise StopIteration

    def cancel(self) -> None:
        """Stop the answer (the connection is closed at the next chunk)."""
        self._cancelled = True


def remote_model_info(endpoint: Endpoint) -> ModelInfo:
    """What a remote model looks like where the app expects a loaded model's description."""
    return ModelInfo(
        path=endpoint.url,
        name=endpoint.name or endpoint.model or endpoint.url,
        architecture="remote",
        n_layers=0,
        n_gpu_layers=0,
        n_ctx=0,
        n_ctx_train=0,
        n_vocab=0,
        n_params=0,
        size_bytes=0,
        chat_template_source="server",
        system_prompt_folded=False,
        load_s=0.0,
        n_threads=0,
    )


def remote_chat(
    endpoint: Endpoint,
    messages: Sequence[ChatMessage],
    sampling: SamplingParams | None = None,
    *,
    timeout: float = 120.0,
) -> RemoteChatStream:
    """Start an answer from a remote endpoint.

    Raises:
        EndpointError: unreachable, refused, unknown model, timeout.
    """
    from huggingface_hub import InferenceClient
    from huggingface_hub.inference._generated.types.chat_completion import (
        ChatCompletionInputStreamOptions,
    )

    sampling = sampling or SamplingParams()
    base = normalize_url(endpoint.url)
    client = InferenceClient(base_url=base, api_key=endpoint.api_key, timeout=timeout)
    kind = detect_kind(base, endpoint.api_key) if endpoint.kind == "auto" else endpoint.kind
    extra: dict[str, Any] | None = None
    if kind == "llama.cpp":
        extra = {
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
            "repeat_penalty": sampling.repeat_penalty,
        }
    wire: list[dict[Any, Any]] = [{"role": m.role, "content": m.content} for m in messages]
    try:
        chunks = client.chat_completion(
            messages=wire,
            model=endpoint.model,
            stream=True,
            max_tokens=sampling.max_tokens if sampling.max_tokens > 0 else None,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            stream_options=ChatCompletionInputStreamOptions(include_usage=True),
            extra_body=extra,
        )
        stream = RemoteChatStream(endpoint, iter(chunks))
        stream.client = (
            client  # the client owns the HTTP connection the chunks come from: keep it alive
        )
    except Exception as err:
        raise endpoint_error(err, endpoint) from err
    return stream
