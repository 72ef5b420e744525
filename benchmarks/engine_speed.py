"""Does the engine process cost speed? MixDesk's engine against plain in-process llama-cpp-python.

Both sides run the same generated mid-size Mixtral-architecture model (Q4_K_M: n_embd 1024,
8 layers, 8 experts), the same prompt, sampler and seed, the same thread count, generating
the same number of tokens. Runs are interleaved (reference, engine, reference, engine, ...)
in one invocation so that machine noise hits both alike; the result is the median of the
per-round ratios.

Figures:
- eval tok/s as llama.cpp reports it (``llama_perf_context``: generation phase only);
- delivered tok/s: tokens received by the consumer per second of generation, measured at
  the consumer (for MixDesk: in the app process, after the pipe);
- the per-token IPC cost: time from the engine writing a delta to the app reading it.

Goal: the engine process costs no speed that matters: both ratios at least 0.95; the run
exits with status 1 when one is lower by more than the noise (benchmarks/goals.py).

Usage: ``python benchmarks/engine_speed.py [--rounds 5] [--tokens 128] [--threads 2]
[--size mid|tiny] [--json] [--goal eval_ratio=0.95]``. The model is generated once into
``benchmarks/.models``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.goals import Goal, add_goal_arguments, judge  # noqa: E402
from mixdesk.core.chat.template import ChatMessage, render_prompt, select_template  # noqa: E402
from mixdesk.core.engine import (  # noqa: E402
    Engine,
    LoadConfig,
    SamplingParams,
    llama_adapter,
)
from mixdesk.core.engine import prompt_tokens as prompt_tokens_rule  # noqa: E402
from mixdesk.core.engine.client import DEFAULT_STREAM_INTERVAL_S  # noqa: E402
from tests.helpers import model_factory as mf  # noqa: E402

GOAL_RATIO = 0.95
#: How far a median ratio moves between runs here.
RATIO_NOISE = 0.03
MESSAGES = [ChatMessage("user", "Explain in detail how a mixture of experts model routes tokens.")]
SEED = 1234


@dataclass
class Run:
    """One generation's figures."""

    eval_tps: float
    delivered_tps: float
    tokens: int
    ipc_us_median: float = 0.0
    messages: int = 0


def reference_run(llm: Any, prompt_tokens: list[int], sampling: SamplingParams) -> Run:
    """Plain llama-cpp-python in this process: Llama.generate, detokenising each token."""
    import llama_cpp

    llm.set_seed(SEED)
    ctx = llm._ctx.ctx
    llama_cpp.llama_perf_context_reset(ctx)
    n = 0
    first = last = 0.0
    for token in llm.generate(
        prompt_tokens,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=sampling.min_p,
        temp=sampling.temperature,
        repeat_penalty=sampling.repeat_penalty,
    ):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        llm.detokenize([token])
        n += 1
        last = time.perf_counter()
        if n == 1:
            first = last
        if n >= sampling.max_tokens:
            break
    perf = llama_cpp.llama_perf_context(ctx)
    return Run(
        eval_tps=1e3 * perf.n_eval / perf.t_eval_ms,
        delivered_tps=(n - 1) / (last - first) if n > 1 else 0.0,
        tokens=n,
    )


def engine_run(engine: Engine, sampling: SamplingParams, interval: float) -> Run:
    """The same generation through MixDesk's engine process, timed in this (the app) process."""
    stream = engine.chat(MESSAGES, sampling, stream_interval_s=interval)
    first = last = 0.0
    ipc_ns: list[int] = []
    count = 0
    for delta in stream:
        now_ns = time.monotonic_ns()
        ipc_ns.append(now_ns - delta.sent_ns)
        last = time.perf_counter()
        count += 1
        if count == 1:
            first = last
    done = stream.result
    assert done is not None
    tokens = done.stats.eval_tokens
    return Run(
        eval_tps=done.stats.eval_tps,
        # deltas can merge tokens (UTF-8, stop strings): count generated tokens after the first
        delivered_tps=(tokens - 1) / (last - first) if count > 1 and last > first else 0.0,
        tokens=tokens,
        ipc_us_median=statistics.median(ipc_ns) / 1e3 if ipc_ns else 0.0,
        messages=count,
    )


def ipc_cpu_cost_us(n: int = 20_000) -> float:
    """CPU time of one delta's trip: encode, pipe write, read, decode, queue (both sides)."""
    import os
    import queue
    import threading

    from mixdesk.core.engine.protocol import GenerationStats, TextDelta
    from mixdesk.core.engine.wire import encode_delta, from_dict

    read_fd, write_fd = os.pipe()
    events: queue.Queue[TextDelta] = queue.Queue()

    def reader() -> None:
        with os.fdopen(read_fd, "rb") as fh:
            for line in fh:
                body = json.loads(line)
                body.pop("type")
                events.put(from_dict(TextDelta, body))

    threading.Thread(target=reader, daemon=True).start()
    stats = GenerationStats(prompt_tokens=40, eval_tokens=100, eval_tps=12.5, context_size=4096)
    start = time.process_time()
    with os.fdopen(write_fd, "wb", buffering=0) as out:
        for i in range(n):
            out.write(encode_delta(1, " token", stats))
            if i % 64 == 63:
                for _ in range(64):
                    events.get()
    return 1e6 * (time.process_time() - start) / n


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the figures and the goals; 1 when a goal was missed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", choices=("mid", "tiny"), default="mid")
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_STREAM_INTERVAL_S,
        help="engine delta interval in seconds (0: one message per token)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_goal_arguments(parser)
    args = parser.parse_args(argv)

    from llama_cpp import Llama

    spec = mf.MID if args.size == "mid" else mf.TINY
    model = mf.cached_model(ROOT / "benchmarks" / ".models", spec, "Q4_K_M")
    n_ctx = 1024
    sampling = SamplingParams(max_tokens=args.tokens, seed=SEED, temperature=0.7)

    llm = Llama(
        str(model), n_ctx=n_ctx, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
    )
    template = select_template(dict(llm.metadata))
    vocab = llama_adapter.model_handle(llm).vocab
    special = prompt_tokens_rule.special_tokens(vocab)
    prompt = render_prompt(template, MESSAGES, bos_token=special.bos, eos_token=special.eos)
    prompt_tokens = prompt_tokens_rule.tokenize(
        vocab, prompt_tokens_rule.for_tokenizer(prompt, special)
    )

    refs: list[Run] = []
    engs: list[Run] = []
    with Engine() as engine:
        engine.load(LoadConfig(str(model), n_ctx=n_ctx, n_threads=args.threads))
        # warm-up both (page cache, first-graph allocation)
        reference_run(llm, prompt_tokens, sampling)
        engine_run(engine, sampling, args.interval)
        for _ in range(args.rounds):
            refs.append(reference_run(llm, prompt_tokens, sampling))
            engs.append(engine_run(engine, sampling, args.interval))

    eval_ratios = [e.eval_tps / r.eval_tps for r, e in zip(refs, engs, strict=True)]
    delivered_ratios = [e.delivered_tps / r.delivered_tps for r, e in zip(refs, engs, strict=True)]
    result: dict[str, Any] = {
        "model": model.name,
        "model_mib": round(model.stat().st_size / 2**20, 1),
        "threads": args.threads,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "reference_eval_tps_median": round(statistics.median(r.eval_tps for r in refs), 2),
        "engine_eval_tps_median": round(statistics.median(e.eval_tps for e in engs), 2),
        "eval_ratio_median": round(statistics.median(eval_ratios), 4),
        "reference_delivered_tps_median": round(
            statistics.median(r.delivered_tps for r in refs), 2
        ),
        "engine_delivered_tps_median": round(statistics.median(e.delivered_tps for e in engs), 2),
        "delivered_ratio_median": round(statistics.median(delivered_ratios), 4),
        "interval_s": round(args.interval, 4),
        "ipc_latency_us_median": round(statistics.median(e.ipc_us_median for e in engs), 1),
        "messages_per_answer_median": statistics.median(e.messages for e in engs),
        "ipc_cpu_us_per_message": round(ipc_cpu_cost_us(), 1),
        "rounds_detail": [
            {"reference": asdict(r), "engine": asdict(e)} for r, e in zip(refs, engs, strict=True)
        ],
    }
    goals = [
        Goal(
            "eval_ratio",
            "engine eval tok/s / in-process",
            result["eval_ratio_median"],
            GOAL_RATIO,
            True,
            noise=RATIO_NOISE,
        ),
        Goal(
            "delivered_ratio",
            "engine delivered tok/s / in-process",
            result["delivered_ratio_median"],
            GOAL_RATIO,
            True,
            noise=RATIO_NOISE,
        ),
    ]
    if args.json:
        result["goals"], status = judge(goals, args.goal)
        print(json.dumps(result, indent=2))
        return status
    print(
        f"model {result['model']} ({result['model_mib']} MiB), {args.threads} threads, "
        f"{args.tokens} tokens, {args.rounds} interleaved rounds"
    )
    print(
        f"eval tok/s (llama.cpp counters): reference {result['reference_eval_tps_median']}, "
        f"engine {result['engine_eval_tps_median']}, ratio {result['eval_ratio_median']}"
    )
    print(
        f"delivered tok/s (at the consumer): reference {result['reference_delivered_tps_median']}, "
        f"engine {result['engine_delivered_tps_median']}, ratio {result['delivered_ratio_median']}"
    )
    print(
        f"IPC: {result['messages_per_answer_median']} messages per answer (interval "
        f"{result['interval_s']} s), latency engine write -> app read "
        f"{result['ipc_latency_us_median']} us, CPU {result['ipc_cpu_us_per_message']} us per message"
    )
    return judge(goals, args.goal, out=sys.stdout)[1]


if __name__ == "__main__":
    sys.exit(main())
