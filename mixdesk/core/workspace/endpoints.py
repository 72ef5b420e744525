"""Chat with a remote OpenAI-compatible endpoint (TGI, llama-server, vLLM, Inference Endpoints).

A streamed ``POST …/v1/chat/completions`` over huggingface_hub's HTTP session, its chunks
read as huggingface_hub's ``ChatCompletionStreamOutput``. A remote answer looks to the rest
of MixDesk exactly like a local one: a :class:`RemoteChatStream` yields :class:`TextDelta`
events with live speed figures and ends with a :class:`ChatDone`. Speeds are measured here,
on the client (time to first token, tokens per second of generation); token counts come from
the server's usage figures when it sends them.

Who gets which secret: an endpoint gets the key the user gave for it, and nothing else. The
Hugging Face token goes only to the Hub and to Hugging Face's own inference hosts, and only
when the endpoint has no key of its own (:func:`auth_headers`). ``InferenceClient`` is not
used for this because, for any ``base_url``, it sends the saved token when no key is given,
and since huggingface_hub 1.0 it refuses ``token=False``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine.protocol import (
    ChatDone,
    FinishReason,
    GenerationStats,
    ModelInfo,
    SamplingParams,
    TextDelta,
)
from mixdesk.core.engine.stream import AnswerStream
from mixdesk.errors import MixdeskError

log = logging.getLogger(__name__)


class EndpointError(MixdeskError):
    """The endpoint could not answer (unreachable, refused, unknown model, timeout, cut)."""


@dataclass(frozen=True)
class Endpoint:
    """A remote model: where it is, how to authenticate, which model to ask for."""

    url: str
    api_key: str | None = field(default=None, repr=False)
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


#: Hosts (and their subdomains) that may receive the Hugging Face token, over https: the Hub,
#: its short domain, the Inference Providers router and Inference Endpoints.
HF_TOKEN_HOSTS = ("huggingface.co", "hf.co", "endpoints.huggingface.cloud")


def may_receive_hub_token(url: str) -> bool:
    """Whether the Hugging Face token may be sent to ``url``.

    True for https URLs on :data:`HF_TOKEN_HOSTS`, and for the Hub that ``HF_ENDPOINT`` names
    (a private Hub or mirror, which is where huggingface_hub itself sends the token).
    """
    from huggingface_hub import constants

    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and any(host == h or host.endswith("." + h) for h in HF_TOKEN_HOSTS):
        return True
    hub = urlsplit(constants.ENDPOINT)
    return (parts.scheme, parts.netloc.lower()) == (hub.scheme, hub.netloc.lower())


def auth_headers(endpoint: Endpoint) -> dict[str, str]:
    """The ``Authorization`` header for ``endpoint``, or none.

    The endpoint's own key; without one, the saved Hugging Face token if
    :func:`may_receive_hub_token` allows it; otherwise nothing.
    """
    key = endpoint.api_key
    if not key and may_receive_hub_token(endpoint.url):
        from huggingface_hub import get_token

        key = get_token()
    return {"Authorization": f"Bearer {key}"} if key else {}


def endpoint_error(
    err: BaseException, endpoint: Endpoint, *, started: bool = False
) -> EndpointError:
    """One sentence for what went wrong talking to ``endpoint``."""
    if isinstance(err, EndpointError):
        return err
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
    from huggingface_hub import get_session

    try:
        headers = auth_headers(Endpoint(url=base, api_key=api_key))
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
        self._finish: FinishReason | None = None

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
                self._close()
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

    def _end(self, reason: FinishReason) -> None:
        self.result = ChatDone(0, self.text, reason, self._stats())
        self._close()
        raise StopIteration

    def _close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if callable(close):
            close()

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
    sampling = sampling or SamplingParams()
    base = normalize_url(endpoint.url)
    kind = detect_kind(base, endpoint.api_key) if endpoint.kind == "auto" else endpoint.kind
    payload: dict[str, Any] = {
        "model": endpoint.model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens if sampling.max_tokens > 0 else None,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        "stop": list(sampling.stop) or None,
    }
    if kind == "llama.cpp":
        payload.update(
            top_k=sampling.top_k, min_p=sampling.min_p, repeat_penalty=sampling.repeat_penalty
        )
    payload = {k: v for k, v in payload.items() if v is not None}
    try:
        chunks = _ChunkStream.open(
            base + "/chat/completions", payload, headers=auth_headers(endpoint), timeout=timeout
        )
    except Exception as err:
        raise endpoint_error(err, endpoint) from err
    return RemoteChatStream(endpoint, chunks)


class _ChunkStream:
    """The chunks of one streamed answer (server-sent events); :meth:`close` ends the response."""

    def __init__(self, lines: Iterator[str], stack: ExitStack) -> None:
        self._lines = lines
        self._stack = stack

    @classmethod
    def open(
        cls, url: str, payload: dict[str, Any], *, headers: dict[str, str], timeout: float
    ) -> _ChunkStream:
        """Send the request and check its status; the answer's chunks follow as they arrive."""
        from huggingface_hub import get_session, hf_raise_for_status

        stack = ExitStack()
        try:
            response = stack.enter_context(
                get_session().stream("POST", url, json=payload, headers=headers, timeout=timeout)
            )
            hf_raise_for_status(response)
        except BaseException:
            stack.close()
            raise
        return cls(response.iter_lines(), stack)

    def __iter__(self) -> _ChunkStream:
        return self

    def __next__(self) -> Any:
        from huggingface_hub import ChatCompletionStreamOutput

        for raw in self._lines:
            line = raw.strip()
            if not line.startswith("data:"):
                continue  # blank separators, comments, pings
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if isinstance(chunk, dict) and chunk.get("error") is not None:
                error = chunk["error"]
                detail = error.get("message", error) if isinstance(error, dict) else error
                raise EndpointError(f"The server stopped the answer with an error: {detail}.")
            return ChatCompletionStreamOutput.parse_obj_as_instance(chunk)
        self.close()
        raise StopIteration

    def close(self) -> None:
        """End the HTTP response (the server stops generating when it notices)."""
        self._stack.close()
