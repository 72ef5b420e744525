"""Several machines, measured on one: two `mixdesk worker` processes on loopback against one device.

One run, same model (the generated mid-size Mixtral-architecture model, Q4_K_M: n_embd 1024,
8 layers, 8 experts of which 2 are used; its expert tensors are over llama.cpp's 10 MiB hash
threshold, as Mixtral's are), same prompt, seed and thread count:

1. one device: the model in this machine's RAM (``--ngl 0``), load time and tok/s;
2. two workers: `mixdesk worker` twice (llama.cpp's RPC server over the CPU, one thread each),
   every layer and the output on them (``--ngl all``) with the planner's split; the bytes each
   worker's front received while loading (what crossed the "network"), against the plan's
   bytes to send, llama.cpp's buffers against the plan, load time and tok/s, and the bytes
   per generated token;
3. the same load again: the workers' caches hold the large tensors, so far fewer bytes cross;
4. what TLS costs: two fresh workers without a cache (every load sends every byte), loaded and
   answering in interleaved rounds with the link plain (loopback skips TLS) and with TLS
   (``MIXDESK_WORKER_TLS=always``); both authenticate with the worker secret, both go through
   the engine's relay.

Goals (the run exits with status 1 when one is missed by more than its noise,
benchmarks/goals.py): each worker receives the plan's bytes within 5% (llama.cpp's commands
ride along); each worker's model and KV buffers equal the plan within 1%; the second load
sends at most half the bytes of the first; per-token traffic stays under 64 KiB; with TLS,
eval tok/s is at least 0.95 of plain and the load takes at most 1.3 times as long (medians of
the rounds).

On one machine the "network" is loopback and the workers share its CPU, so the tok/s ratio
says what RPC's round trips cost, not what a second GPU gains.

Usage: ``python benchmarks/rpc_workers.py [--tokens 64] [--size mid|tiny] [--rounds 3] [--json]
[--goal KEY=VALUE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.goals import Goal, add_goal_arguments, judge  # noqa: E402
from mixdesk.core.chat.template import ChatMessage  # noqa: E402
from mixdesk.core.engine import Engine, SamplingParams  # noqa: E402
from mixdesk.core.engine.protocol import BufferKind  # noqa: E402
from mixdesk.core.loading.choices import LoadChoices  # noqa: E402
from mixdesk.core.loading.load import LoadOutcome, load_model  # noqa: E402
from mixdesk.core.loading.model import resolve_file  # noqa: E402
from mixdesk.core.loading.service import LoadRequest  # noqa: E402
from mixdesk.core.machine import hardware, rpc_worker  # noqa: E402
from mixdesk.core.machine import worker_security as security  # noqa: E402
from tests.helpers import model_factory as mf  # noqa: E402
from tests.helpers.mixdesk_workers import WorkerProcess, start_worker  # noqa: E402

MESSAGES = [ChatMessage("user", "Explain in detail how a mixture of experts model routes tokens.")]
SEED = 1234
MIB = 1 << 20


@dataclass
class Run:
    """One load and one answer."""

    load_s: float
    eval_tps: float
    eval_tokens: int
    outcome: LoadOutcome


def answer(engine: Engine, request: LoadRequest, tokens: int) -> Run:
    outcome = load_model(engine, request)
    done = engine.chat(MESSAGES, SamplingParams(max_tokens=tokens, seed=SEED, temperature=0)).wait()
    return Run(outcome.info.load_s, done.stats.eval_tps, done.stats.eval_tokens, outcome)


def traffic(workers: list[WorkerProcess]) -> dict[str, int]:
    """Bytes each worker's front has received from llama.cpp so far."""
    return {w.endpoint: rpc_worker.stats(w.endpoint).received_bytes for w in workers}


def tls_cost(
    request: LoadRequest, tokens: int, *, rounds: int, work: Path
) -> tuple[dict[str, Any], list[Goal]]:
    """Load and answer with two cache-less workers, plain and TLS in turn; medians."""
    workers = [start_worker(work, "--no-cache") for _ in range(2)]
    runs: dict[str, list[Run]] = {"plain": [], "tls": []}
    try:
        devices = [rpc_worker.probe(w.endpoint).as_gpu() for w in workers]
        request = replace(request, hardware=rpc_worker.with_devices(request.hardware, devices))
        for _ in range(rounds):
            for mode in ("plain", "tls"):
                if mode == "tls":
                    os.environ[security.TLS_ENV] = "always"  # the engine child inherits it
                else:
                    os.environ.pop(security.TLS_ENV, None)
                with Engine(log_dir=work / "logs") as engine:
                    runs[mode].append(answer(engine, request, tokens))
    finally:
        os.environ.pop(security.TLS_ENV, None)
        for w in workers:
            w.kill()
    load = {mode: statistics.median(r.load_s for r in done) for mode, done in runs.items()}
    tps = {mode: statistics.median(r.eval_tps for r in done) for mode, done in runs.items()}
    eval_ratio = tps["tls"] / max(tps["plain"], 1e-9)
    load_ratio = load["tls"] / max(load["plain"], 1e-9)
    figures: dict[str, Any] = {
        mode: {
            "load_s": load[mode],
            "eval_tps": tps[mode],
            "rounds": [{"load_s": r.load_s, "eval_tps": r.eval_tps} for r in done],
        }
        for mode, done in runs.items()
    }
    figures["eval_tps_tls_vs_plain"] = round(eval_ratio, 3)
    figures["load_s_tls_vs_plain"] = round(load_ratio, 3)
    goals = [
        Goal(
            "tls_eval_ratio",
            "eval tok/s with TLS / plain (two loopback workers)",
            round(eval_ratio, 3),
            0.95,
            higher_is_better=True,
        ),
        Goal(
            "tls_load_ratio",
            "load time with TLS / plain (every byte sent)",
            round(load_ratio, 3),
            1.3,
            higher_is_better=False,
        ),
    ]
    return figures, goals


def measure(
    model: Path, tokens: int, threads: int, work: Path, rounds: int = 3
) -> tuple[dict[str, Any], list[Goal]]:
    machine = hardware.detect()
    base = replace(machine, gpus=[], gpu_offload=False)
    choices = LoadChoices(n_ctx=2048, n_threads=threads, use_mmap=False)
    with Engine(log_dir=work / "logs") as engine:
        one = answer(
            engine, LoadRequest(resolve_file(model), base, replace(choices, n_gpu_layers=0)), tokens
        )
    # Fresh cache folders: the first load finds nothing cached, the second everything large.
    workers = [start_worker(work, "--cache-dir", str(work / f"cache-{i}")) for i in range(2)]
    try:
        devices = [rpc_worker.probe(w.endpoint).as_gpu() for w in workers]
        pooled_hw = rpc_worker.with_devices(base, devices)
        request = LoadRequest(resolve_file(model), pooled_hw, replace(choices, n_gpu_layers=-1))
        before = traffic(workers)
        with Engine(log_dir=work / "logs") as engine:
            first = answer(engine, request, tokens)
            after_load = traffic(workers)
        # Per-token traffic: a second answer's bytes (its prompt included, the load not) over
        # the tokens it generated.
        with Engine(log_dir=work / "logs") as engine:
            load_model(engine, request)
            start = traffic(workers)
            done = engine.chat(MESSAGES, SamplingParams(max_tokens=tokens, seed=SEED)).wait()
            end = traffic(workers)
        per_token = sum(end[e] - start[e] for e in end) / max(done.stats.eval_tokens, 1)
        with Engine(log_dir=work / "logs") as engine:
            mark = traffic(workers)
            again = answer(engine, request, tokens)
            cached = traffic(workers)
    finally:
        for w in workers:
            w.kill()
    base_request = LoadRequest(resolve_file(model), base, replace(choices, n_gpu_layers=-1))
    tls_figures, tls_goals = tls_cost(base_request, tokens, rounds=rounds, work=work)
    plan = first.outcome.setup.plan
    buffers = first.outcome.info.buffers
    rows = []
    goals: list[Goal] = []
    first_bytes = sum(after_load[e] - before[e] for e in before)
    again_bytes = sum(cached[e] - mark[e] for e in mark)
    for i, d in enumerate(plan.gpus):
        endpoint = devices[i].endpoint
        sent = after_load[endpoint] - before[endpoint]
        model_buf = buffers.size(d.buffer_name, BufferKind.MODEL)
        kv_buf = buffers.size(d.buffer_name, BufferKind.KV)
        rows.append(
            {
                "worker": endpoint,
                "layers": d.layers,
                "output": d.output,
                "planned_send_bytes": d.send_bytes,
                "planned_send_s": d.send_seconds,
                "received_bytes_first_load": sent,
                "received_bytes_second_load": cached[endpoint] - mark[endpoint],
                "llama_model_buffer": model_buf,
                "llama_kv_buffer": kv_buf,
                "planned_kv": d.kv_bytes,
            }
        )
        goals.append(
            Goal(
                f"sent_vs_plan_{i}",
                f"worker {i}: bytes received / planned bytes to send",
                round(sent / d.send_bytes, 4),
                1.05,
                higher_is_better=False,
            )
        )
        worst = max(
            abs(model_buf - d.weights_bytes) / max(model_buf, 1),
            abs(kv_buf - d.kv_bytes) / max(kv_buf, 1),
        )
        goals.append(
            Goal(
                f"buffers_vs_plan_{i}",
                f"worker {i}: largest model/KV buffer difference from the plan",
                round(worst * 100, 3),
                1.0,
                higher_is_better=False,
                unit="%",
            )
        )
    goals.append(
        Goal(
            "second_load_share",
            "second load's bytes / first load's (workers' caches)",
            round(again_bytes / max(first_bytes, 1), 4),
            0.5,
            higher_is_better=False,
        )
    )
    goals.append(
        Goal(
            "bytes_per_token_kib",
            "traffic per generated token",
            round(per_token / 1024, 2),
            64,
            higher_is_better=False,
            unit=" KiB",
        )
    )
    goals += tls_goals
    figures = {
        "model": str(model),
        "model_bytes": first.outcome.setup.profile.weights_bytes,
        "threads": threads,
        "one_device": {"load_s": one.load_s, "eval_tps": one.eval_tps},
        "two_workers": {
            "load_s": first.load_s,
            "eval_tps": first.eval_tps,
            "second_load_s": again.load_s,
            "bytes_first_load": first_bytes,
            "bytes_second_load": again_bytes,
            "bytes_per_token": round(per_token),
            "tensor_split": list(plan.tensor_split),
            "devices": rows,
        },
        "tps_ratio_two_workers_vs_one_device": round(first.eval_tps / max(one.eval_tps, 1e-9), 3),
        "tls": tls_figures,
    }
    return figures, goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--size",
        choices=("mid", "tiny"),
        default="mid",
        help="tiny: the test suite's model (its tensors are below the cache threshold)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="TLS on/off rounds (interleaved)")
    parser.add_argument("--json", action="store_true")
    add_goal_arguments(parser)
    args = parser.parse_args(argv)
    spec = mf.MID if args.size == "mid" else mf.TINY
    model = mf.cached_model(ROOT / "benchmarks" / ".models", spec, "Q4_K_M")
    with tempfile.TemporaryDirectory() as tmp:
        # The workers' secret, certificates and pins live here, not in the user's config.
        os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")
        figures, goals = measure(model, args.tokens, args.threads, Path(tmp), args.rounds)
    two, one = figures["two_workers"], figures["one_device"]
    out = sys.stderr
    out.write(
        f"model {figures['model_bytes'] / MIB:.1f} MiB; one device (RAM): load "
        f"{one['load_s']:.2f} s, {one['eval_tps']:.1f} tok/s; two loopback workers: load "
        f"{two['load_s']:.2f} s ({two['bytes_first_load'] / MIB:.1f} MiB sent), "
        f"{two['eval_tps']:.1f} tok/s; again with their caches: load {two['second_load_s']:.2f} s "
        f"({two['bytes_second_load'] / MIB:.1f} MiB sent); {two['bytes_per_token'] / 1024:.1f} "
        "KiB per token\n"
    )
    for d in two["devices"]:
        out.write(
            f"  {d['worker']}: {d['layers']} layers{' + output' if d['output'] else ''}, plan "
            f"sends {d['planned_send_bytes'] / MIB:.2f} MiB, received "
            f"{d['received_bytes_first_load'] / MIB:.2f} MiB (again: "
            f"{d['received_bytes_second_load'] / MIB:.2f} MiB); llama.cpp model buffer "
            f"{d['llama_model_buffer'] / MIB:.2f} MiB, KV {d['llama_kv_buffer'] / MIB:.2f} MiB "
            f"(planned {d['planned_kv'] / MIB:.2f})\n"
        )
    tls = figures["tls"]
    out.write(
        f"TLS (two cache-less loopback workers, median of {args.rounds}): plain load "
        f"{tls['plain']['load_s']:.2f} s, {tls['plain']['eval_tps']:.1f} tok/s; TLS load "
        f"{tls['tls']['load_s']:.2f} s, {tls['tls']['eval_tps']:.1f} tok/s\n"
    )
    rows, status = judge(goals, args.goal)
    if args.json:
        sys.stdout.write(json.dumps({**figures, "goals": rows}, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
