"""Model files made to hurt: chat templates that loop or do not parse, FIFOs given as models,
headers that ask for endless work; with the real engine and the real command."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mixdesk.core.chat.sandbox import TIME_BUDGET_S
from mixdesk.core.chat.template import MIXTRAL_TEMPLATE, ChatMessage
from mixdesk.core.engine import Engine, LoadConfig, SamplingParams
from mixdesk.core.gguf.header import read_local_header
from mixdesk.core.gguf.header_values import GGUFHeaderError
from mixdesk.errors import MixdeskError, NotAGgufError, user_message
from tests.helpers import model_factory as mf

#: Mixtral's template, except that a message saying "loop" sends it round 10^10 empty turns.
LOOPING_TEMPLATE = (
    "{% for message in messages %}{% if 'loop' in message['content'] %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% endif %}{% endfor %}" + MIXTRAL_TEMPLATE
)
HI = [ChatMessage("user", "Hi there")]


def _model(tmp_path: Path, template: str, name: str) -> Path:
    spec = mf.with_changes(mf.TINY, chat_template=template)
    return mf.make_model(tmp_path / "models", spec, name=name)


def _load(engine: Engine, path: Path) -> None:
    engine.load(LoadConfig(str(path), n_ctx=1024, n_threads=2))


@pytest.mark.timeout(60)
def test_a_template_that_loops_costs_one_sentence_and_no_reload(
    engine: Engine, tmp_path: Path
) -> None:
    _load(engine, _model(tmp_path, LOOPING_TEMPLATE, "looping"))
    pid = engine.pid
    start = time.monotonic()
    with pytest.raises(MixdeskError) as failure:
        engine.chat([ChatMessage("user", "please loop")]).wait()
    assert time.monotonic() - start < 10
    assert type(failure.value).__name__ == "TemplateBudgetError"
    assert user_message(failure.value) == (
        "MixDesk stopped the model's chat template because it took more than 2 s for this "
        "conversation (the template is broken or hostile; use another copy of the model)."
    )
    # the same engine, with the model still loaded, answers the next message
    done = engine.chat(HI, SamplingParams(max_tokens=4)).wait()
    assert done.stats.eval_tokens == 4
    assert engine.pid == pid


@pytest.mark.timeout(60)
def test_stop_ends_a_looping_template_before_its_own_budget(engine: Engine, tmp_path: Path) -> None:
    _load(engine, _model(tmp_path, LOOPING_TEMPLATE, "looping"))
    assert engine.pid is not None
    process = psutil.Process(engine.pid)
    busy = sum(process.cpu_times()[:2])
    stream = engine.chat([ChatMessage("user", "please loop")])
    # the engine is in the template's loops once it has spent CPU time on this answer
    deadline = time.monotonic() + 10
    while sum(process.cpu_times()[:2]) < busy + 0.1 and time.monotonic() < deadline:
        time.sleep(0.01)
    asked = time.monotonic()
    stream.cancel()
    done = stream.wait()
    # Stop ended the loop, not the template's own 2-second budget
    assert time.monotonic() - asked < TIME_BUDGET_S
    assert done.finish_reason == "cancelled"
    assert done.text == ""
    assert engine.chat(HI, SamplingParams(max_tokens=2)).wait().stats.eval_tokens == 2


def test_a_template_with_a_syntax_error_falls_back_and_says_so(
    engine: Engine, tmp_path: Path
) -> None:
    broken = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}"  # no endfor
    _load(engine, _model(tmp_path, broken, "broken-template"))
    assert engine.model is not None
    assert engine.model.chat_template_note == (
        "The model's chat template is broken (Unexpected end of template at line 1). "
        "MixDesk uses its built-in Mixtral [INST] template instead."
    )
    assert engine.model.chat_template_source.startswith("mixtral (built in)")
    done = engine.chat(HI, SamplingParams(max_tokens=4)).wait()
    assert done.stats.eval_tokens == 4
    assert done.stats.prompt_tokens > 5  # "[INST] Hi there [/INST]", not the bare text


# -- a FIFO or another file that is not a regular file ------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "command",
    [["plan"], ["import"], ["chat", "--prompt", "hi"]],
    ids=["plan", "import", "chat"],
)
def test_a_fifo_given_as_a_model_is_refused_at_once(fifo: Path, command: list[str]) -> None:
    args = [*command[:1], str(fifo), *command[1:]]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mixdesk", *args],
        capture_output=True,
        text=True,
        timeout=30,  # before the change: each of them waits for a writer, for ever
        env=os.environ.copy(),
    )
    assert time.monotonic() - start < 20
    assert proc.returncode == 1
    assert (
        proc.stderr
        == f"mixdesk: {fifo} is a named pipe (FIFO), not a model file; pick a .gguf file.\n"
    )


@pytest.mark.timeout(30)
def test_the_engine_refuses_a_fifo_and_a_folder(engine: Engine, fifo: Path) -> None:
    with pytest.raises(NotAGgufError, match="named pipe"):
        _load(engine, fifo)
    with pytest.raises(NotAGgufError, match="is a folder"):
        _load(engine, fifo.parent)
    with pytest.raises(NotAGgufError, match="character device"):
        read_local_header("/dev/zero")
    assert engine.pid is None


# -- headers that ask for endless work ------------------------------------------------------


def _array_header(count: int) -> bytes:
    """A GGUF header with one metadata entry: an array of ``count`` strings (then zeros)."""
    key = b"tokenizer.ggml.tokens"
    return (
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", len(key))
        + key
        + struct.pack("<IIQ", 9, 8, count)  # array of strings, count items
    )


@pytest.mark.timeout(120)
def test_thirty_million_empty_strings_fail_fast(tmp_path: Path) -> None:
    path = tmp_path / "strings.gguf"
    header = _array_header(30_000_000)
    with path.open("wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + 8 * 30_000_000)  # sparse: 30 million zero-length strings
    start = time.monotonic()
    with pytest.raises(GGUFHeaderError, match="more than 4194304 strings"):
        read_local_header(path)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_array_header(1_000_000) + bytes(1000), "tokenizer.ggml.tokens, byte 69: 1000000"),
        (b"GGUF" + struct.pack("<IQQ", 3, 60_000, 0) + bytes(100), "tensor table, byte 24"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 60_000) + bytes(100), "metadata, byte 24: 60000"),
    ],
    ids=["strings", "tensors", "metadata"],
)
def test_counts_are_checked_against_the_file_size(tmp_path: Path, data: bytes, words: str) -> None:
    path = tmp_path / "claims.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFHeaderError, match=f"ends inside its header .*{words}.*cannot fit"):
        read_local_header(path)
