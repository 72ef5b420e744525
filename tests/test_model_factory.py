"""The generated models really are Mixtral-architecture GGUF files of the promised kinds."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from tests.helpers import model_factory as mf


def _reader(path: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(str(path))


def _field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_tiny_model_is_a_mixture_of_experts(models: dict[str, Path]) -> None:
    r = _reader(models["f32"])
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "llama.expert_count") == 4
    assert _field(r, "llama.expert_used_count") == 2
    assert "[INST]" in str(_field(r, "tokenizer.chat_template"))
    names = {t.name for t in r.tensors}
    assert "blk.0.ffn_gate_exps.weight" in names
    assert "blk.3.ffn_gate_inp.weight" in names
    exps = next(t for t in r.tensors if t.name == "blk.0.ffn_down_exps.weight")
    assert list(exps.shape) == [512, 256, 4]  # ggml order: n_ff, n_embd, n_expert


def test_quantised_files_use_k_quants(models: dict[str, Path]) -> None:
    q4 = {t.tensor_type for t in _reader(models["q4_k_m"]).tensors}
    q2 = {t.tensor_type for t in _reader(models["q2_k"]).tensors}
    assert gguf.GGMLQuantizationType.Q4_K in q4
    assert gguf.GGMLQuantizationType.Q2_K in q2
    sizes = [models[k].stat().st_size for k in ("f32", "q4_k_m", "q2_k")]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[1] < sizes[0] / 4


def test_legacy_layout_has_one_tensor_per_expert(models: dict[str, Path]) -> None:
    names = {t.name for t in _reader(models["legacy"]).tensors}
    assert {f"blk.0.ffn_up.{e}.weight" for e in range(4)} <= names
    assert not any("_exps" in n for n in names)


def test_broken_files_are_broken_in_the_promised_way(models: dict[str, Path]) -> None:
    assert models["bad_magic"].read_bytes()[:4] == b"GGUX"
    assert models["truncated"].stat().st_size < models["f32"].stat().st_size
    tokens = list(_reader(models["duplicate_vocab"]).fields["tokenizer.ggml.tokens"].contents())
    assert len(tokens) != len(set(tokens))


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = mf.make_model(tmp_path / "a", mf.with_changes(mf.TINY, n_layers=1))
    b = mf.make_model(tmp_path / "b", mf.with_changes(mf.TINY, n_layers=1))
    ta = {t.name: np.array(t.data) for t in _reader(a).tensors}
    tb = {t.name: np.array(t.data) for t in _reader(b).tensors}
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
