"""Model files made to hurt: chat templates that loop or do not parse, with the real engine."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mixdesk.core.chat_template import MIXTRAL_TEMPLATE, ChatMessage
from mixdesk.core.engine import Engine, LoadConfig, SamplingParams
from mixdesk.errors import MixdeskError, user_message
from tests import model_factory as mf

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
def test_stop_answers_within_a_second_while_a_template_loops(
    engine: Engine, tmp_path: Path
) -> None:
    _load(engine, _model(tmp_path, LOOPING_TEMPLATE, "looping"))
    stream = engine.chat([ChatMessage("user", "please loop")])
    time.sleep(0.3)  # let the engine get into the template's loops: this is what Stop meets
    asked = time.monotonic()
    stream.cancel()
    done = stream.wait()
    assert time.monotonic() - asked < 1.0
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
