"""Resuming a long conversation: time to first token cold, from memory and from disk.

A conversation of about 1,500 tokens on the generated mid-size Mixtral-architecture model
(Q4_K_M) is answered once with its KV state kept. Then, in interleaved rounds, the next turn
of that conversation is answered three ways, greedy, each time right after another
conversation moved the KV cache away from it:

- cold: no state kept (``cache=None``): the whole prompt is evaluated;
- memory: the engine switches back to it (its state kept in the engine's memory);
- disk: a fresh engine process (the app restarted): its state comes from the state file.

Time to first token is measured in the app's process, from ``Engine.chat`` to the first
text delta. Goals: memory and disk at most 10% of cold (medians of per-round ratios), every
resumed answer token for token the answer of the same request while its KV never left the
context (whether it also equals the cold answer is reported: on a quantised model llama.cpp's
batch-dependent rounding may change a near-tied pick), and saving the state never delays an answer's
end: the gap between an answer's last text and its ``done`` as the app sees it is at most
100 ms (the engine sends ``done`` first, then keeps the state). Exit status 1 on a miss.

Usage: ``python benchmarks/kv_resume.py [--rounds 3] [--threads 2] [--size mid|tiny]
[--json] [--goal memory_ratio=0.1]``. The model is generated once into ``benchmarks/.models``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.goals import Goal, add_goal_arguments, judge  # noqa: E402
from mixdesk.core.chat.template import ChatMessage  # noqa: E402
from mixdesk.core.engine import ChatDone, Engine, LoadConfig, SamplingParams  # noqa: E402
from mixdesk.core.engine.protocol import KvCacheRequest  # noqa: E402
from mixdesk.core.gguf.synthetic_words import WORDS  # noqa: E402
from tests.helpers import model_factory as mf  # noqa: E402

GOAL_RATIO = 0.10
GOAL_SAVE_MS = 100.0
GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=16, seed=0)
OTHER = [ChatMessage("user", "Something else entirely: list the planets, please.")]


@dataclass
class Turn:
    """One answer as the app saw it."""

    ttft_s: float
    #: From the answer's last text delta to its ``done``, in the app.
    end_gap_ms: float
    prompt_tokens: int
    reused: int
    reused_from: str
    tokens: list[int]


def conversation(n_turns: int, words_per_turn: int) -> list[ChatMessage]:
    """A conversation of ``n_turns`` exchanges, ending with the user's turn."""
    messages = []
    for i in range(n_turns):
        text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(words_per_turn))
        messages += [ChatMessage("user", f"Turn {i}: {text}?"), ChatMessage("assistant", text)]
    return [*messages, ChatMessage("user", "Please sum up everything so far.")]


def ask(engine: Engine, messages: list[ChatMessage], cache: KvCacheRequest | None) -> Turn:
    """A greedy answer, timed in this process."""
    start = time.perf_counter()
    first = last = 0.0
    stream = engine.chat(messages, GREEDY, stream_interval_s=0.0, report_tokens=True, cache=cache)
    for _ in stream:
        last = time.perf_counter()
        first = first or last
    ended = time.perf_counter()
    done: ChatDone | None = stream.result
    assert done is not None
    return Turn(
        ttft_s=(first or ended) - start,
        end_gap_ms=1e3 * (ended - (last or ended)),
        prompt_tokens=done.stats.prompt_tokens,
        reused=done.stats.prompt_reused,
        reused_from=done.stats.reused_from,
        tokens=list(done.token_ids),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the figures and the goals; 1 when a goal was missed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", choices=("mid", "tiny"), default="mid")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_goal_arguments(parser)
    args = parser.parse_args(argv)

    mid = args.size == "mid"
    model = mf.cached_model(ROOT / "benchmarks" / ".models", mf.MID if mid else mf.TINY, "Q4_K_M")
    config = LoadConfig(str(model), n_ctx=2048 if mid else 512, n_threads=args.threads)
    history = conversation(10, 40) if mid else conversation(3, 20)
    rounds: list[dict[str, Turn]] = []
    with tempfile.TemporaryDirectory() as tmp, Engine(log_dir=Path(tmp) / "logs") as engine:
        kept = KvCacheRequest("long", directory=str(Path(tmp) / "kv"))
        away = KvCacheRequest("other", directory=str(Path(tmp) / "kv"))
        engine.load(config)
        first = ask(engine, history, kept)
        answer = engine.chat(history, GREEDY).wait().text  # the same greedy answer
        messages = [*history, ChatMessage("assistant", answer), ChatMessage("user", "Go on.")]
        # continued once while its KV is in the context: from now on its kept state holds this
        # whole prompt, so every resume below reads the same tail as the request repeated in place
        saves = [first, ask(engine, messages, kept)]
        for _ in range(args.rounds):
            turn: dict[str, Turn] = {}
            ask(engine, OTHER, None)
            turn["cold"] = ask(engine, messages, None)
            saves.append(ask(engine, OTHER, away))
            turn["memory"] = ask(engine, messages, kept)
            # the same request again while its KV never left the context: what resuming
            # must give, token for token
            turn["stayed"] = ask(engine, messages, kept)
            engine.load(config)  # a new engine process: the state is on disk only
            turn["disk"] = ask(engine, messages, kept)
            saves += [turn["memory"], turn["disk"]]
            rounds.append(turn)

    def ratios(source: str) -> list[float]:
        return [r[source].ttft_s / r["cold"].ttft_s for r in rounds]

    same = all(r[s].tokens == r["stayed"].tokens for r in rounds for s in ("memory", "disk"))
    # llama.cpp's CPU kernels round a token's values a little differently with the batch it is
    # computed in, so on a quantised model a reused prefix can change a near-tied greedy pick
    # against a cold run (llama-server documents the same of its cache_prompt); on F32
    # models every template path equals the cold run (tests/core/test_kv_resume.py)
    same_as_cold = all(r[s].tokens == r["cold"].tokens for r in rounds for s in ("memory", "disk"))
    resumed = [r[s].reused_from == s for r in rounds for s in ("memory", "disk")]
    result: dict[str, Any] = {
        "model": model.name,
        "threads": args.threads,
        "rounds": args.rounds,
        "prompt_tokens": rounds[0]["cold"].prompt_tokens,
        "cold_ttft_s_median": round(statistics.median(r["cold"].ttft_s for r in rounds), 4),
        "memory_ttft_s_median": round(statistics.median(r["memory"].ttft_s for r in rounds), 4),
        "disk_ttft_s_median": round(statistics.median(r["disk"].ttft_s for r in rounds), 4),
        "memory_ratio_median": round(statistics.median(ratios("memory")), 4),
        "disk_ratio_median": round(statistics.median(ratios("disk")), 4),
        "same_answer": same and all(resumed),
        "same_as_cold": same_as_cold,
        "save_gap_ms_max": round(max(t.end_gap_ms for t in saves), 2),
        "rounds_detail": [{k: asdict(v) for k, v in r.items()} for r in rounds],
    }
    goals = [
        Goal(
            "memory_ratio",
            "TTFT after switching back / cold",
            result["memory_ratio_median"],
            GOAL_RATIO,
            False,
        ),
        Goal(
            "disk_ratio",
            "TTFT in a fresh engine / cold",
            result["disk_ratio_median"],
            GOAL_RATIO,
            False,
        ),
        Goal(
            "same_answer",
            "resumed answers equal the answer of a KV that never left",
            float(result["same_answer"]),
            1.0,
            True,
        ),
        Goal(
            "save_ms",
            "longest end-of-answer delay while saving",
            result["save_gap_ms_max"],
            GOAL_SAVE_MS,
            False,
            " ms",
        ),
    ]
    if args.json:
        result["goals"], status = judge(goals, args.goal)
        print(json.dumps(result, indent=2))
        return status
    print(
        f"model {result['model']}, {args.threads} threads, a {result['prompt_tokens']}-token "
        f"prompt, {args.rounds} interleaved rounds"
    )
    print(
        f"time to first token: cold {result['cold_ttft_s_median']} s, from memory "
        f"{result['memory_ttft_s_median']} s, from disk {result['disk_ttft_s_median']} s"
    )
    return judge(goals, args.goal, out=sys.stdout)[1]


if __name__ == "__main__":
    sys.exit(main())
