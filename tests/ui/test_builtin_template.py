"""A model with no chat template gets llama.cpp's built-in template for its architecture, and
a base model is named as one (a generated Gemma-architecture model, real engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from mixdesk.core.chat_template import (
    CHATML_TEMPLATE,
    ChatMessage,
    looks_like_base_model,
    render_prompt,
    select_template,
)
from mixdesk.core.synthetic_model import TINY, vocabulary
from mixdesk.ui.models import BASE_MODEL_WORDS
from tests.ui.test_main_window import ask, load, make_window


def write_dense(path: Path, *, architecture: str, name: str) -> Path:
    """A small dense model of ``architecture`` (Gemma's tensor set: tied output) with no chat
    template, written with the gguf package."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    tokens, scores, types = vocabulary(TINY)
    e, f, heads, kv_heads = 256, 512, 4, 2
    kv = kv_heads * (e // heads)

    def mat(rows: int, cols: int) -> Any:
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(
            np.float32
        )

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(name)
    writer.add_context_length(2048)
    writer.add_embedding_length(e)
    writer.add_block_count(2)
    writer.add_feed_forward_length(f)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(e // heads)
    writer.add_value_length(e // heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_tensor("token_embd.weight", mat(len(tokens), e))
    writer.add_tensor("output_norm.weight", np.ones(e, dtype=np.float32))
    for i in range(2):
        b = f"blk.{i}"
        for tname, data in (
            ("attn_norm", np.ones(e, dtype=np.float32)),
            ("attn_q", mat(e, e)),
            ("attn_k", mat(kv, e)),
            ("attn_v", mat(kv, e)),
            ("attn_output", mat(e, e)),
            ("ffn_norm", np.ones(e, dtype=np.float32)),
            ("ffn_gate", mat(f, e)),
            ("ffn_up", mat(f, e)),
            ("ffn_down", mat(e, f)),
        ):
            writer.add_tensor(f"{b}.{tname}.weight", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def gemma_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gemma")
    return write_dense(directory / "gemma-tiny-base.gguf", architecture="gemma", name="Gemma tiny")


def test_a_gemma_model_without_a_template_chats_in_gemmas_format(
    qtbot: QtBot, tmp_path: Path, gemma_base: Path
) -> None:
    window = make_window(qtbot, tmp_path)
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000) as loaded:
        load(qtbot, window, gemma_base)
    info = loaded.args[0]
    assert info.architecture == "gemma"
    assert info.chat_template_source.startswith("llama.cpp gemma")  # not Mixtral's [INST]
    assert info.base_model
    line = window.model_bar.info.text()
    assert "chat template: llama.cpp gemma" in line and BASE_MODEL_WORDS in line
    window.set_sampling(max_tokens=8, seed=1)
    done = ask(qtbot, window, "Hello there")
    assert done.stats.prompt_tokens > 0 and done.stats.eval_tokens > 0
    window.close()


def test_the_choice_by_architecture() -> None:
    gemma = select_template({"general.architecture": "gemma3", "general.name": "Gemma 3 270m"})
    assert gemma.llama_builtin == "gemma" and gemma.text == ""
    prompt = render_prompt(
        gemma,
        [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")],
        bos_token="<bos>",
        eos_token="<eos>",
    )
    assert prompt == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert select_template({"general.architecture": "qwen2"}).llama_builtin == "chatml"
    mixtral = select_template({"general.architecture": "llama", "llama.expert_count": "8"})
    assert mixtral.source == "mixtral (built in)"  # Mixtral files still get [INST]
    unknown = select_template({"general.architecture": "somethingnew"})
    assert unknown.text is CHATML_TEMPLATE and not unknown.llama_builtin


def test_base_models_are_told_apart_from_instruct_ones() -> None:
    assert looks_like_base_model({"general.name": "gemma-3-270m"})
    assert not looks_like_base_model({"general.name": "gemma-3-270m-it"})
    assert not looks_like_base_model({"general.name": "Mixtral 8x7B Instruct v0.1"})
    assert not looks_like_base_model({"general.name": "x", "tokenizer.chat_template": "{{x}}"})
