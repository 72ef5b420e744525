"""One answer as it grows, token by token: its text, stop strings, and what is due to send.

Pure Python (no llama.cpp): the engine process feeds it the bytes of each sampled token and
sends what :meth:`Answer.due` hands back; the unit tests drive it directly.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Any

from mixdesk.core.engine.protocol import FinishReason, GenerationStats, KvSource, PerfCounters


def stop_position(text: str, sent: int, stops: tuple[str, ...]) -> tuple[int, int]:
    """Find a stop string in the unsent text.

    Returns:
        (index where a stop string starts or -1, number of trailing characters to hold back
        because they could be the start of a stop string).
    """
    if not stops:
        return -1, 0
    search_from = max(0, sent - max(len(s) for s in stops))
    found = [i for s in stops if (i := text.find(s, search_from)) >= 0]
    if found:
        return min(found), 0
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text) - sent), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return -1, hold


@dataclass
class Answer:
    """One answer as it grows: its text, how much of it the app has been sent, and why it ended."""

    request_id: int
    n_prompt: int
    #: Stop strings; text that could be the start of one is held back until it is not.
    stops: tuple[str, ...]
    #: Send at most this often (seconds); text arriving faster joins the next delta.
    interval_s: float
    start: float = field(default_factory=time.perf_counter)
    text: str = ""  # everything generated (after stop-string trimming)
    sent: int = 0  # characters of ``text`` already sent
    hold: int = 0  # trailing characters that could begin a stop string
    n_generated: int = 0
    ttft: float = 0.0
    last_send: float = 0.0
    finish: FinishReason = "length"
    #: Every token sampled, when the command asked for them.
    token_ids: list[int] | None = None
    #: Prompt tokens found in the KV cache (not evaluated again), and where.
    reused: int = 0
    reused_from: KvSource = "none"
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def add(self, raw: bytes) -> bool:
        """Append one token's bytes; return True when a stop string ended the answer."""
        self.n_generated += 1
        piece = self.decoder.decode(raw)
        if not self.text:
            piece = piece.lstrip()
        self.text += piece
        stop_at, self.hold = stop_position(self.text, self.sent, self.stops)
        if stop_at >= 0:
            self.text = self.text[:stop_at]
            self.finish = "stop"
            return True
        return False

    def due(self) -> str:
        """The text to send now, marked as sent ("" when nothing is new or the last was recent)."""
        if len(self.text) - self.hold <= self.sent:
            return ""
        now = time.perf_counter()
        if now - self.last_send < self.interval_s:
            return ""
        self.last_send = now
        chunk = self.text[self.sent : len(self.text) - self.hold]
        self.sent += len(chunk)
        return chunk

    def rest(self) -> str:
        """Everything not sent yet, the decoder flushed unless a stop string cut the text."""
        if self.finish != "stop":
            self.text += self.decoder.decode(b"", final=True)
        chunk = self.text[self.sent :]
        self.sent = len(self.text)
        return chunk

    def stats(self, perf: Any, *, context_used: int, context_size: int) -> GenerationStats:
        """The answer's figures now, with llama.cpp's counters ``perf``
        (``llama_perf_context``'s prompt and eval times and counts)."""
        counters = PerfCounters(
            t_p_eval_ms=perf.t_p_eval_ms,
            n_p_eval=perf.n_p_eval,
            t_eval_ms=perf.t_eval_ms,
            n_eval=perf.n_eval,
        )
        return GenerationStats(
            prompt_tokens=self.n_prompt,
            prompt_eval_tokens=perf.n_p_eval,
            prompt_tps=_rate(perf.n_p_eval, perf.t_p_eval_ms),
            eval_tokens=self.n_generated,
            eval_tps=_rate(perf.n_eval, perf.t_eval_ms),
            ttft_s=round(self.ttft, 6),
            elapsed_s=round(time.perf_counter() - self.start, 6),
            context_used=context_used,
            context_size=context_size,
            perf=counters,
            prompt_reused=self.reused,
            reused_from=self.reused_from,
        )


def _rate(count: int, ms: float) -> float:
    """Tokens per second as llama_perf_context_print computes it."""
    return round(1e3 * count / ms, 3) if ms > 0 else 0.0
