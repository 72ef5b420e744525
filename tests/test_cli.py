"""The ``mixdesk`` command as a user runs it: a real process, real engine, real models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MIXDESK = [sys.executable, "-m", "mixdesk"]


def run(
    *args: str, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIXDESK, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        env=os.environ.copy(),
    )


def assert_one_sentence_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0]


def test_chat_json_prints_answer_and_stats(models: dict[str, Path]) -> None:
    proc = run(
        "chat",
        str(models["q4_k_m"]),
        "--prompt",
        "Hello",
        "--system",
        "Be brief.",
        "--max-tokens",
        "24",
        "--seed",
        "4",
        "--ctx",
        "512",
        "--threads",
        "2",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["text"].strip()
    assert data["model"] == str(models["q4_k_m"])
    assert data["n_gpu_layers"] == 0
    stats = data["stats"]
    assert set(stats) >= {
        "prompt_tokens",
        "prompt_tps",
        "eval_tokens",
        "eval_tps",
        "ttft_s",
        "load_s",
    }
    assert stats["eval_tokens"] == 24
    assert stats["eval_tps"] > 0
    assert stats["prompt_tps"] > 0
    assert stats["load_s"] > 0


def test_chat_streams_text_to_stdout_and_speed_to_stderr(models: dict[str, Path]) -> None:
    proc = run(
        "chat",
        str(models["q2_k"]),
        "--prompt",
        "Hello",
        "--max-tokens",
        "16",
        "--ngl",
        "0",
        "--temperature",
        "0.2",
        "--top-k",
        "10",
        "--top-p",
        "0.9",
        "--min-p",
        "0.1",
        "--repeat-penalty",
        "1.2",
        "--kv-type",
        "q8_0",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "eval 16 tokens" in proc.stderr
    assert "tokens per second" in proc.stderr


def test_interactive_chat_is_multi_turn(models: dict[str, Path]) -> None:
    proc = run(
        "chat",
        str(models["q4_k_m"]),
        "--max-tokens",
        "8",
        "--ctx",
        "512",
        stdin="Hello\nAnd then?\n/reset\nAgain\n",
    )
    assert proc.returncode == 0, proc.stderr
    speed = [line for line in proc.stderr.splitlines() if "eval 8 tokens" in line]
    assert len(speed) == 3
    contexts = [int(line.split("context ")[1].split("/")[0]) for line in speed]
    assert contexts[1] > contexts[0]  # the second turn carries the first
    assert contexts[2] < contexts[1]  # /reset started over
    assert "conversation cleared" in proc.stderr


def test_ctrl_c_stops_an_answer_not_the_chat(models: dict[str, Path]) -> None:
    proc = subprocess.Popen(
        [*MIXDESK, "chat", str(models["f32"]), "--max-tokens", "0", "--ctx", "4096"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write("Hello\n")
    proc.stdin.flush()
    proc.stdout.read(1)  # the answer has started streaming
    proc.send_signal(signal.SIGINT)
    proc.stdin.write("/exit\n")  # read once the stopped answer is done: no wait needed
    proc.stdin.flush()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "(stopped)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("text", ("not a GGUF model",)),
        ("truncated", ("incomplete or damaged",)),
        ("duplicate_vocab", ("llama.cpp aborted", "GGML_ASSERT")),
        ("legacy", ("mixdesk convert",)),
    ],
)
def test_bad_models_exit_with_one_sentence(
    models: dict[str, Path], kind: str, words: tuple[str, ...]
) -> None:
    started = time.monotonic()
    proc = run("chat", str(models[kind]), "--prompt", "hi", timeout=30)
    assert time.monotonic() - started < 30
    assert_one_sentence_error(proc, *words)


def test_missing_model_and_readme(tmp_path: Path) -> None:
    assert_one_sentence_error(
        run("chat", str(tmp_path / "missing.gguf"), "--prompt", "hi"), "not found"
    )
    readme = Path(__file__).resolve().parent.parent / "README.md"
    assert_one_sentence_error(run("chat", str(readme), "--prompt", "hi"), "not a GGUF model")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("chat", "m.gguf", "--ctx", "lots"), ("--ctx", "whole number")),
        (("chat", "m.gguf", "--ngl", "-3"), ("--ngl",)),
        (("chat", "m.gguf", "--kv-type", "q3"), ("--kv-type",)),
        (("frobnicate",), ("invalid choice",)),
    ],
)
def test_nonsense_arguments(args: tuple[str, ...], words: tuple[str, ...]) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert_one_sentence_error(proc, *words)


def test_chat_needs_a_model_or_an_endpoint() -> None:
    assert_one_sentence_error(run("chat", "--prompt", "hi"), "Name a MODEL", "--endpoint")


def test_out_of_range_sampling_is_refused(models: dict[str, Path]) -> None:
    assert_one_sentence_error(
        run("chat", str(models["f32"]), "--prompt", "hi", "--top-p", "3"), "top-p"
    )
    assert_one_sentence_error(run("chat", str(models["f32"]), "--json"), "--json needs --prompt")


def test_help_lists_the_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("chat", "plan", "pull", "models", "doctor"):
        assert command in proc.stdout


def test_no_command_opens_the_window_without_llama_cpp() -> None:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MIXDESK_EXIT_AFTER_SHOW="1")
    code = (
        "import sys; from mixdesk.cli import main; rc = main([]); "
        "print('llama_cpp loaded' if 'llama_cpp' in sys.modules else 'llama_cpp not loaded'); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "shown " in proc.stdout
    assert "llama_cpp not loaded" in proc.stdout


def test_doctor_json_runs_the_engine_end_to_end() -> None:
    proc = run("doctor", "--json", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["engine"]["status"] == "ok"
    assert "streamed 16 tokens" in checks["engine"]["detail"]
    assert checks["answers"]["status"] == "ok", checks["answers"]
    assert "equal llama.cpp's own path" in checks["answers"]["detail"]
    assert checks["qt"]["status"] == "ok"
    assert checks["gpu-offload"]["status"] in ("ok", "warn")
    assert checks["dir-data"]["status"] == "ok"


def test_doctor_reports_unwritable_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MIXDESK_DATA_DIR", str(blocker / "data"))
    proc = run("doctor", timeout=120)
    assert proc.returncode == 1
    assert "[FAIL] dir-data" in proc.stdout
    assert "MixDesk cannot run here yet" in proc.stdout


def test_engine_crash_puts_llama_cpp_lines_in_the_app_log(
    models: dict[str, Path], isolated_user_dirs: Path
) -> None:
    proc = run("chat", str(models["duplicate_vocab"]), "--prompt", "hi")
    assert proc.returncode == 1
    app_log = isolated_user_dirs / "state" / "MixDesk" / "log" / "mixdesk.log"
    text = app_log.read_text()
    assert "last lines of the engine log" in text
    assert "GGML_ASSERT(id_to_token.size() == token_to_id.size()) failed" in text


def test_chat_names_a_base_model_and_an_answer_that_ends_at_once(tmp_path: Path) -> None:
    """A base model is named as one (as the window does), and an answer with no text says
    why: the model ended it at once."""
    from mixdesk.core.chat.words import BASE_MODEL_WORDS, ENDED_AT_ONCE_WORDS
    from tests.helpers.model_factory import ENDS_AT_ONCE, make_model

    model = make_model(tmp_path, ENDS_AT_ONCE, name="ends-at-once")
    proc = run("chat", str(model), "--prompt", "The capital of France is", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert BASE_MODEL_WORDS in proc.stderr
    assert ENDED_AT_ONCE_WORDS in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("chat", str(model), "--prompt", "Hi", "--temperature", "0", "--json")
    assert json.loads(proc.stdout)["ended_at_once"] is True


def test_chat_says_why_an_answer_of_blank_lines_shows_nothing(tmp_path: Path) -> None:
    """Tokens that are only line breaks print nothing to read: the chat says so."""
    from tests.helpers.model_factory import BLANK_LINES, make_model

    model = make_model(tmp_path, BLANK_LINES, name="blank-lines")
    proc = run("chat", str(model), "--prompt", "Hi", "--max-tokens", "5", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
    assert (
        "mixdesk: The model's 5 tokens were only spaces, line breaks or control tokens: "
        "nothing to show." in proc.stderr
    )


def test_chat_answers_as_llama_cpp_does_on_a_base_model(tmp_path: Path) -> None:
    """``mixdesk chat MODEL --prompt ... --temperature 0 --json`` on a Gemma base model without
    a template: llama.cpp's own greedy answer (its prompt has its BOS; before the rule the
    prompt had none and the answer differed)."""
    from mixdesk.core.engine import reference
    from tests.helpers.model_factory import GEMMA_BASE, make_model

    model = make_model(tmp_path, GEMMA_BASE, name="gemma-base")
    proc = run(
        "chat",
        str(model),
        "--prompt",
        "The capital of France is",
        "--temperature",
        "0",
        "--repeat-penalty",
        "1",
        "--max-tokens",
        "20",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    ref = reference.answer(
        str(model), [("user", "The capital of France is")], builtin="gemma", n_predict=20
    )
    assert result["stats"]["prompt_tokens"] == len(ref.prompt_tokens)
    assert result["text"] == ref.text.lstrip()
    assert result["stats"]["eval_tokens"] == 20
