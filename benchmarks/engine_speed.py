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

And against llama.cpp's own decode loop: ``llama-bench`` built from the installed
llama-cpp-python's sources with the same CPU flags (:mod:`benchmarks.llama_bench`; built once,
cached in ``~/.cache/mixdesk/llama-bench``), generating the same number of tokens at the same
context depth as MixDesk's prompt (``-p 0 -n TOKENS -d PROMPT_TOKENS -r 1``), in the same
interleaved rounds (llama-bench, engine, reference, llama-bench, ...). The engine's eval tok/s
is llama.cpp's counter; llama-bench keeps that counter off, and times the same span itself
(each token's decode up to the synchronisation). End-of-text is ignored on every side, so every run generates exactly
``--tokens`` tokens.

Goals: the engine process costs no speed that matters: both ratios against in-process
llama-cpp-python at least 0.95; and MixDesk's eval tok/s at least 0.98 of llama-bench's. The
run exits with status 1 when one is lower by more than the noise (benchmarks/goals.py). When
llama-bench cannot be built here (no compiler, no sources) the run says so and skips that goal.

Usage: ``python benchmarks/engine_speed.py [--rounds 5] [--tokens 128] [--threads 2]
[--size mid|tiny] [--llama-bench auto|off|PATH] [--json] [--goal bench_ratio=0.98]``. The
model is generated once into ``benchmarks/.models``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import llama_bench  # noqa: E402
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
#: MixDesk's eval tok/s over llama-bench's.
GOAL_BENCH_RATIO = 0.98
#: How far the median of 5 bench ratios moves between quiet runs here (NOISE_PLACEHOLDER).
BENCH_RATIO_NOISE = 0.02
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
    """Plain llama-cpp-python in this process: Llama.generate, detokenising each token
    (end-of-text ignored, as the engine's run ignores it)."""
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


def find_llama_bench(choice: str) -> tuple[Path | None, str]:
    """The llama-bench to compare with, or None and the sentence that says why there is none.

    ``choice``: ``auto`` (the cached build, built now the first time), ``off``, or a path.
    """
    if choice == "off":
        return None, "The comparison with llama-bench is off (--llama-bench off)."
    if choice != "auto":
        path = Path(choice)
        if path.is_file() and os.access(path, os.X_OK):
            return path, ""
        return None, f"There is no llama-bench at {path}, so the comparison with it is skipped."
    try:
        return llama_bench.ensure_llama_bench(say=True), ""
    except llama_bench.LlamaBenchUnavailableError as err:
        return None, f"{err}, so the comparison with llama-bench is skipped."


@dataclass
class Rounds:
    """Every run of one invocation, round by round."""

    model: Path
    prompt_tokens: int
    refs: list[Run]
    engs: list[Run]
    benches: list[llama_bench.BenchRun]


def measure(args: argparse.Namespace, bench_binary: Path | None) -> Rounds:
    """The warm-up, then ``args.rounds`` interleaved rounds: llama-bench, engine, reference.

    Every round loads the model again on each side, as every llama-bench run does (the engine
    in a new process, as every load in the app): where the weights land in memory moves a
    load's decode speed by up to 10% here (the same file and settings loaded twice in one
    process decode at 130 and 143 tok/s, each steadily), so one load per run would decide a
    whole run's ratio; a load per round makes it part of the spread the median looks through.
    """
    from llama_cpp import Llama

    spec = mf.MID if args.size == "mid" else mf.TINY
    model = mf.cached_model(ROOT / "benchmarks" / ".models", spec, "Q4_K_M")
    n_ctx = 1024
    sampling = SamplingParams(max_tokens=args.tokens, seed=SEED, temperature=0.7, ignore_eos=True)

    def reference_llama() -> Any:
        return Llama(
            str(model),
            n_ctx=n_ctx,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            verbose=False,
        )

    llm = reference_llama()
    template = select_template(dict(llm.metadata))
    vocab = llama_adapter.model_handle(llm).vocab
    special = prompt_tokens_rule.special_tokens(vocab)
    prompt = render_prompt(template, MESSAGES, bos_token=special.bos, eos_token=special.eos)
    prompt_tokens = prompt_tokens_rule.tokenize(
        vocab, prompt_tokens_rule.for_tokenizer(prompt, special)
    )
    config = LoadConfig(str(model), n_ctx=n_ctx, n_threads=args.threads)
    rounds = Rounds(model, len(prompt_tokens), [], [], [])

    def bench_run() -> llama_bench.BenchRun | None:
        if bench_binary is None:
            return None
        return llama_bench.run_llama_bench(
            bench_binary,
            model,
            threads=args.threads,
            n_gen=args.tokens,
            depth=len(prompt_tokens),
            flash_attn=config.flash_attn,
        )

    with Engine() as engine:
        engine.load(config)
        # warm-up all (page cache, first-graph allocation)
        bench_run()
        reference_run(llm, prompt_tokens, sampling)
        engine_run(engine, sampling, args.interval)
        for _ in range(args.rounds):
            if (bench := bench_run()) is not None:
                rounds.benches.append(bench)
            engine.load(config)  # in a new engine process, as every load in the app
            rounds.engs.append(engine_run(engine, sampling, args.interval))
            llm.close()
            llm = reference_llama()
            rounds.refs.append(reference_run(llm, prompt_tokens, sampling))
    return rounds


def summarise(args: argparse.Namespace, rounds: Rounds) -> dict[str, Any]:
    """The medians, ratios and every round's figures, as the JSON prints them."""
    refs, engs, benches = rounds.refs, rounds.engs, rounds.benches
    eval_ratios = [e.eval_tps / r.eval_tps for r, e in zip(refs, engs, strict=True)]
    delivered_ratios = [e.delivered_tps / r.delivered_tps for r, e in zip(refs, engs, strict=True)]
    result: dict[str, Any] = {
        "model": rounds.model.name,
        "model_mib": round(rounds.model.stat().st_size / 2**20, 1),
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
    if benches:
        bench_ratios = [e.eval_tps / b.eval_tps for b, e in zip(benches, engs, strict=True)]
        result.update(
            bench_depth=rounds.prompt_tokens,
            bench_eval_tps_median=round(statistics.median(b.eval_tps for b in benches), 2),
            bench_ratio_median=round(statistics.median(bench_ratios), 4),
            bench_ratios=[round(r, 4) for r in bench_ratios],
            bench_rounds_detail=[asdict(b) for b in benches],
        )
    return result


def goals_of(result: dict[str, Any]) -> list[Goal]:
    """The goals this run judges (the llama-bench one only when llama-bench ran)."""
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
    if "bench_ratio_median" in result:
        goals.append(
            Goal(
                "bench_ratio",
                "engine eval tok/s / llama-bench",
                result["bench_ratio_median"],
                GOAL_BENCH_RATIO,
                True,
                noise=BENCH_RATIO_NOISE,
            )
        )
    return goals


def print_text(result: dict[str, Any]) -> None:
    """The figures for a person."""
    print(
        f"model {result['model']} ({result['model_mib']} MiB), {result['threads']} threads, "
        f"{result['tokens']} tokens, {result['rounds']} interleaved rounds"
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
    if "bench_ratio_median" in result:
        print(
            f"eval tok/s against llama-bench (-d {result['bench_depth']}): llama-bench "
            f"{result['bench_eval_tps_median']} (its own clock), "
            f"engine {result['engine_eval_tps_median']}, ratio {result['bench_ratio_median']} "
            f"(rounds {', '.join(f'{r:.3f}' for r in result['bench_ratios'])})"
        )


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
    parser.add_argument(
        "--llama-bench",
        default="auto",
        metavar="auto|off|PATH",
        help="llama-bench to compare with (auto: build it once from llama-cpp-python's sources)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_goal_arguments(parser)
    args = parser.parse_args(argv)

    bench_binary, skipped = find_llama_bench(args.llama_bench)
    result = summarise(args, measure(args, bench_binary))
    result["llama_bench"] = str(bench_binary) if bench_binary else None
    result["llama_bench_skipped"] = skipped or None
    overrides = list(args.goal)
    if skipped:  # that goal is not judged, and neither is another value asked for it
        print(skipped, file=sys.stderr if args.json else sys.stdout)
        overrides = [o for o in overrides if not o.startswith("bench_ratio=")]
    goals = goals_of(result)
    if args.json:
        result["goals"], status = judge(goals, overrides)
        print(json.dumps(result, indent=2))
        return status
    print_text(result)
    return judge(goals, overrides, out=sys.stdout)[1]


if __name__ == "__main__":
    sys.exit(main())
