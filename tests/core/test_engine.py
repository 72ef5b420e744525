"""The engine process with real llama.cpp on generated Mixtral-architecture models."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import Engine, LoadConfig, SamplingParams
from mixdesk.core.engine.protocol import GenerationStats
from mixdesk.errors import (
    ContextOverflowError,
    CorruptModelError,
    EngineBusyError,
    EngineCrashedError,
    HostOutOfMemoryError,
    InvalidArgumentError,
    LegacyLayoutError,
    ModelNotFoundError,
    NoModelLoadedError,
    NotAGgufError,
    UnsupportedArchitectureError,
)

HELLO = [ChatMessage("user", "Hello, who are you?")]


def _load(engine: Engine, path: Path, **kw: object) -> None:
    engine.load(LoadConfig(str(path), n_ctx=1024, n_threads=2, **kw))  # type: ignore[arg-type]


def _perf_lines(log_path: Path) -> tuple[tuple[float, int], tuple[float, int]]:
    """The last prompt eval / eval lines llama.cpp printed: (ms, tokens) each."""
    text = log_path.read_text(errors="replace")
    prompt = re.findall(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", text)[-1]
    gen = re.findall(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs", text)[-1]
    return (float(prompt[0]), int(prompt[1])), (float(gen[0]), int(gen[1]))


@pytest.mark.parametrize("kind", ["f32", "q4_k_m", "q2_k"])
def test_streams_text_with_live_stats(engine: Engine, models: dict[str, Path], kind: str) -> None:
    _load(engine, models[kind])
    assert engine.model is not None
    assert engine.model.architecture == "llama"
    assert engine.model.n_layers == 4
    stream = engine.chat(HELLO, SamplingParams(max_tokens=48, seed=7), stream_interval_s=0)
    deltas = list(stream)
    done = stream.result
    assert done is not None
    assert len(deltas) >= 10
    assert "".join(d.text for d in deltas) == done.text
    assert done.text.strip()
    assert done.finish_reason == "length"
    assert done.stats.eval_tokens == 48
    # live figures: generated count grows token by token, eval speed appears once decoding runs
    counts = [d.stats.eval_tokens for d in deltas]
    assert counts == sorted(counts)
    assert deltas[-1].stats.eval_tps > 0
    assert deltas[0].stats.prompt_tps > 0
    assert done.stats.ttft_s > 0
    assert done.stats.prompt_tokens == done.stats.prompt_eval_tokens > 5
    assert done.stats.context_used >= done.stats.prompt_tokens + 47
    assert done.stats.context_size == 1024


def test_final_stats_agree_with_llama_cpp_timings(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["q4_k_m"])
    stream = engine.chat(HELLO, SamplingParams(max_tokens=64, seed=1))
    last_live: GenerationStats | None = None
    for delta in stream:
        last_live = delta.stats
    done = stream.result
    assert done is not None
    assert last_live is not None
    engine.close()  # the engine prints llama_perf_context_print after each answer; flush by ending
    assert engine.log_path is not None
    (p_ms, p_tokens), (e_ms, e_runs) = _perf_lines(engine.log_path)
    llama_prompt_tps = 1000 * p_tokens / p_ms
    llama_eval_tps = 1000 * e_runs / e_ms
    assert p_tokens == done.stats.prompt_eval_tokens
    assert e_runs == done.stats.perf.n_eval
    assert done.stats.eval_tps == pytest.approx(llama_eval_tps, rel=0.03)
    assert done.stats.prompt_tps == pytest.approx(llama_prompt_tps, rel=0.03)
    # the last live figure shown while streaming is the final one
    assert last_live.eval_tps == pytest.approx(done.stats.eval_tps, rel=0.03)


def test_cancel_stops_at_once_and_engine_stays_ready(
    engine: Engine, models: dict[str, Path]
) -> None:
    """Stop ends the answer within a few tokens of the request (counted in tokens, not
    milliseconds: a busy machine slows both alike), and the engine answers again."""
    _load(engine, models["q4_k_m"])
    stream = engine.chat(HELLO, SamplingParams(max_tokens=0, seed=3))  # until the context is full
    seen = 0
    for i, delta in enumerate(stream):
        seen = delta.stats.eval_tokens
        if i == 5:
            break
    stream.cancel()
    done = stream.wait()
    assert done.finish_reason == "cancelled"
    assert seen <= done.stats.eval_tokens <= seen + 64  # checked between tokens
    again = engine.chat(HELLO, SamplingParams(max_tokens=8, seed=3))
    assert again.wait().finish_reason == "length"


def test_cancel_before_first_token(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["f32"])
    stream = engine.chat(HELLO, SamplingParams(max_tokens=0))
    stream.cancel()
    done = stream.wait()
    assert done.finish_reason == "cancelled"
    assert done.stats.eval_tokens < 900
    assert engine.chat(HELLO, SamplingParams(max_tokens=4)).wait().stats.eval_tokens == 4


def test_multi_turn_reuses_the_cached_prefix(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["q4_k_m"])
    history = list(HELLO)
    first = engine.chat(history, SamplingParams(max_tokens=16, seed=2)).wait()
    history += [ChatMessage("assistant", first.text), ChatMessage("user", "Tell me more.")]
    second = engine.chat(history, SamplingParams(max_tokens=16, seed=2)).wait()
    assert second.stats.prompt_tokens > first.stats.prompt_tokens + 16
    # llama-cpp-python keeps the KV cache of the shared prefix: only the new turn is evaluated
    assert second.stats.prompt_eval_tokens < second.stats.prompt_tokens
    assert second.stats.eval_tokens == 16


def test_system_prompt_is_folded_for_mixtral_template(
    engine: Engine, models: dict[str, Path]
) -> None:
    _load(engine, models["q4_k_m"])
    assert engine.model is not None
    assert engine.model.chat_template_source == "gguf"
    assert engine.model.system_prompt_folded
    plain = engine.chat(HELLO, SamplingParams(max_tokens=2)).wait()
    system = [ChatMessage("system", "You are a pirate. Answer in one line."), *HELLO]
    with_system = engine.chat(system, SamplingParams(max_tokens=2)).wait()
    assert with_system.stats.prompt_tokens > plain.stats.prompt_tokens + 10


def test_template_with_system_role_keeps_it(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["chatml"])
    assert engine.model is not None
    assert not engine.model.system_prompt_folded
    done = engine.chat(
        [ChatMessage("system", "Be brief."), *HELLO], SamplingParams(max_tokens=4)
    ).wait()
    assert done.stats.eval_tokens == 4


def test_file_without_template_gets_mixtral_format(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["no_template"])
    assert engine.model is not None
    assert engine.model.chat_template_source == "mixtral (built in)"
    assert engine.chat(HELLO, SamplingParams(max_tokens=4)).wait().stats.eval_tokens == 4


def test_stop_strings_end_the_answer(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["f32"])
    free = engine.chat(HELLO, SamplingParams(max_tokens=60, seed=11)).wait().text
    words = free.split()
    assert len(words) > 4
    stop = " " + words[3]
    stopped = engine.chat(HELLO, SamplingParams(max_tokens=60, seed=11, stop=(stop,))).wait()
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text
    assert free.startswith(stopped.text)


def test_seed_makes_answers_repeatable(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["q4_k_m"])
    a = engine.chat(HELLO, SamplingParams(max_tokens=20, seed=5)).wait().text
    b = engine.chat(HELLO, SamplingParams(max_tokens=20, seed=5)).wait().text
    assert a == b


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        ("truncated", CorruptModelError, "incomplete or damaged"),
        ("bad_magic", NotAGgufError, "not a GGUF model"),
        ("text", NotAGgufError, "not a GGUF model"),
        ("unknown_arch", UnsupportedArchitectureError, "'mixdeskunknown'"),
        ("legacy", LegacyLayoutError, "mixdesk convert"),
        ("duplicate_vocab", EngineCrashedError, "llama.cpp aborted"),
    ],
)
def test_broken_files_give_clear_errors_and_next_load_works(
    engine: Engine, models: dict[str, Path], kind: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as info:
        _load(engine, models[kind])
    message = str(info.value)
    assert words in message
    assert "\n" not in message
    assert models[kind].name in message
    _load(engine, models["q2_k"])
    assert engine.chat(HELLO, SamplingParams(max_tokens=4)).wait().stats.eval_tokens == 4


def test_aborting_model_logs_llama_cpp_lines(engine: Engine, models: dict[str, Path]) -> None:
    with pytest.raises(EngineCrashedError) as info:
        _load(engine, models["duplicate_vocab"])
    assert info.value.returncode == -signal.SIGABRT
    assert "GGML_ASSERT" in info.value.log_tail


def test_missing_file_and_bad_settings(
    engine: Engine, models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        _load(engine, tmp_path / "missing.gguf")
    with pytest.raises(NotAGgufError):
        _load(engine, tmp_path)
    with pytest.raises(InvalidArgumentError, match="KV cache type"):
        _load(engine, models["f32"], type_k="q3")
    assert engine.pid is None  # nothing was started for settings that make no sense


def test_engine_killed_mid_answer_then_restarts(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["q4_k_m"])
    stream = engine.chat(HELLO, SamplingParams(max_tokens=0))
    next(stream)
    assert engine.pid is not None
    os.kill(engine.pid, signal.SIGKILL)
    with pytest.raises(EngineCrashedError, match="SIGKILL") as info:
        stream.wait()
    assert "while answering" in str(info.value)
    assert stream.text  # what arrived before the crash is still there
    with pytest.raises(EngineCrashedError):
        engine.chat(HELLO)
    _load(engine, models["q4_k_m"])
    assert engine.chat(HELLO, SamplingParams(max_tokens=4)).wait().stats.eval_tokens == 4


def test_unload_leaves_no_process(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["q4_k_m"])
    pid = engine.pid
    assert pid is not None
    assert psutil.pid_exists(pid)
    engine.unload()
    assert not psutil.pid_exists(pid)
    with pytest.raises(NoModelLoadedError):
        engine.chat(HELLO)


def test_reload_replaces_the_process(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["q4_k_m"])
    first = engine.pid
    _load(engine, models["q2_k"])
    assert engine.pid != first
    assert first is not None
    assert not psutil.pid_exists(first)


def test_engine_exits_when_the_app_dies(models: dict[str, Path], tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from mixdesk.core.engine import Engine, LoadConfig
        e = Engine(log_dir=Path({str(tmp_path)!r}))
        e.load(LoadConfig({str(models["q4_k_m"])!r}, n_ctx=256))
        print(e.pid, flush=True)
        os._exit(0)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    child = int(out.stdout.strip())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    alive = psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE
    assert not alive


def test_one_answer_at_a_time(engine: Engine, models: dict[str, Path]) -> None:
    _load(engine, models["f32"])
    stream = engine.chat(HELLO, SamplingParams(max_tokens=0))
    with pytest.raises(EngineBusyError):
        engine.chat(HELLO)
    stream.close()
    assert stream.result is not None
    assert stream.result.finish_reason == "cancelled"
    assert engine.chat(HELLO, SamplingParams(max_tokens=3)).wait().stats.eval_tokens == 3


def test_context_overflow_is_explained(engine: Engine, models: dict[str, Path]) -> None:
    engine.load(LoadConfig(str(models["f32"]), n_ctx=64))
    long = [ChatMessage("user", "word " * 200)]
    assert engine.model is not None
    with pytest.raises(
        # one message longer than the context: no overflow policy can leave anything out
        ContextOverflowError,
        match=f"too long for the context of {engine.model.n_ctx} tokens",
    ):
        engine.chat(long).wait()
    assert engine.chat(HELLO, SamplingParams(max_tokens=3)).wait().stats.eval_tokens == 3


def test_max_tokens_is_capped_by_the_context(engine: Engine, models: dict[str, Path]) -> None:
    engine.load(LoadConfig(str(models["f32"]), n_ctx=128))
    done = engine.chat(HELLO, SamplingParams(max_tokens=0)).wait()
    assert done.finish_reason == "length"
    assert done.stats.prompt_tokens + done.stats.eval_tokens == done.stats.context_size >= 128


def test_load_progress_reaches_one(engine: Engine, models: dict[str, Path]) -> None:
    seen: list[float] = []
    engine.load(LoadConfig(str(models["f32"]), n_ctx=256), on_progress=seen.append)
    assert seen
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(1.0)


def test_kv_cache_types_and_flash_attention_load(engine: Engine, models: dict[str, Path]) -> None:
    engine.load(
        LoadConfig(str(models["q4_k_m"]), n_ctx=256, type_k="q8_0", type_v="q8_0", flash_attn=True)
    )
    assert engine.chat(HELLO, SamplingParams(max_tokens=3)).wait().stats.eval_tokens == 3
    assert engine.log_path is not None
    assert "q8_0" in engine.log_path.read_text(errors="replace")


def test_too_little_memory_says_so(models: dict[str, Path], tmp_path: Path) -> None:
    # A real allocation failure: the engine runs under a 3 GiB address-space limit and the
    # context asked for needs about 10 GiB of buffers.
    limited = [
        sys.executable,
        "-c",
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
        "from mixdesk.core.engine.process import main; raise SystemExit(main())",
    ]
    with Engine(log_dir=tmp_path, command=limited) as small:
        with pytest.raises(
            HostOutOfMemoryError, match=r"not enough RAM .* could not allocate \d+\.\d+ GiB on CPU"
        ):
            small.load(LoadConfig(str(models["f32"]), n_ctx=1 << 20))
        small.load(
            LoadConfig(str(models["f32"]), n_ctx=512)
        )  # the same engine loads a smaller setting
        assert small.chat(HELLO, SamplingParams(max_tokens=3)).wait().stats.eval_tokens == 3
