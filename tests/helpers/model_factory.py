"""Real GGUF files for tests and benchmarks, generated in about a second.

Builds on :mod:`mixdesk.core.gguf.synthetic` (the writer the doctor also uses) and adds
llama.cpp's own quantiser (Q4_K_M, Q2_K), TheBloke's legacy per-expert layout, and broken
files: truncated, wrong magic, a duplicated vocabulary entry that makes llama.cpp abort,
an unknown architecture, a model with no chat template.

Benchmarks import this module too (``from tests.helpers.model_factory import ...``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from mixdesk.core.gguf.synthetic import (
    GEMMA_BASE,
    MID,
    TINY,
    ModelSpec,
    vocabulary,
    with_changes,
    write_gguf,
    write_model,
)

QUANTS = ("F32", "F16", "Q4_K_M", "Q2_K", "Q8_0", "Q4_0")

__all__ = [
    "BLANK_LINES",
    "CHATML_TEMPLATE_FOR_TESTS",
    "ENDS_AT_ONCE",
    "GEMMA_BASE",
    "LLAMA3_BASE",
    "MID",
    "MIXTRAL_NO_TEMPLATE",
    "PHI3_BASE",
    "QUANTS",
    "QWEN2_NO_BOS",
    "TINY",
    "WITH_EOS",
    "ModelSpec",
    "broken_magic",
    "cached_model",
    "duplicate_vocab",
    "make_model",
    "quantize",
    "text_file",
    "truncated",
    "unknown_architecture",
    "with_changes",
]


def quantize(src: Path, dst: Path, quant: str, *, threads: int | None = None) -> Path:
    """Quantise ``src`` to ``dst`` with llama.cpp's own quantiser (``llama_model_quantize``)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {quant}) returned {rc}")
    return dst


def make_model(
    directory: Path, spec: ModelSpec = TINY, quant: str = "F32", *, name: str | None = None
) -> Path:
    """Write a model of shape ``spec`` in ``quant`` (F32/F16 direct, others via the quantiser)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = name or f"model-{_spec_key(spec)}"
    if quant in ("F32", "F16"):
        return write_model(
            directory / f"{stem}.{quant}.gguf", with_changes(spec, dtype=quant.lower())
        )
    source = write_model(directory / f"{stem}.source.gguf", spec)
    try:
        return quantize(source, directory / f"{stem}.{quant}.gguf", quant)
    finally:
        source.unlink()


def cached_model(cache_dir: Path, spec: ModelSpec, quant: str) -> Path:
    """Return a generated model from ``cache_dir``, making it the first time (benchmarks)."""
    path = cache_dir / f"model-{_spec_key(spec)}.{quant}.gguf"
    if not path.exists():
        made = make_model(cache_dir / "tmp", spec, quant)
        made.replace(path)
        shutil.rmtree(cache_dir / "tmp", ignore_errors=True)
    return path


def truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of a model: an interrupted download."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def broken_magic(src: Path, dst: Path) -> Path:
    """Copy a model with its GGUF signature damaged."""
    data = bytearray(src.read_bytes())
    data[:4] = b"GGUX"
    dst.write_bytes(bytes(data))
    return dst


def duplicate_vocab(directory: Path) -> Path:
    """A model whose vocabulary lists one token twice: llama.cpp aborts the process loading it."""
    spec = with_changes(TINY, n_layers=1)
    tokens, scores, types = vocabulary(spec)
    tokens.append(tokens[-1])  # the same string twice
    scores.append(scores[-1] - 1.0)
    types.append(types[-1])
    return write_gguf(directory / "duplicate-vocab.gguf", spec, vocab=(tokens, scores, types))


def unknown_architecture(directory: Path) -> Path:
    """A well-formed GGUF with an architecture llama.cpp does not know."""
    spec = with_changes(TINY, n_layers=1)
    return write_gguf(
        directory / "unknown-arch.gguf", spec, vocab=vocabulary(spec), architecture="mixdeskunknown"
    )


def text_file(directory: Path) -> Path:
    """Not a model at all."""
    path = directory / "notes.gguf"
    path.write_text("# Not a model\nJust some text a user picked by mistake.\n")
    return path


def _spec_key(spec: ModelSpec) -> str:
    return hashlib.sha256(repr(sorted(asdict(spec).items())).encode()).hexdigest()[:10]


#: A template with a system role (ChatML), to test that system prompts are kept, not folded.
CHATML_TEMPLATE_FOR_TESTS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --- Header-only Mixtral files (sparse: real names, shapes and types; no tensor data) --------

MIXTRAL_8X7B = {
    "name": "Mixtral 8x7B Instruct v0.1",
    "n_layers": 32,
    "n_embd": 4096,
    "n_ff": 14336,
    "n_head": 32,
    "n_head_kv": 8,
    "n_expert": 8,
    "n_expert_used": 2,
    "n_vocab": 32000,
    "n_ctx_train": 32768,
}
MIXTRAL_8X22B = {
    "name": "Mixtral 8x22B Instruct v0.1",
    "n_layers": 56,
    "n_embd": 6144,
    "n_ff": 16384,
    "n_head": 48,
    "n_head_kv": 8,
    "n_expert": 8,
    "n_expert_used": 2,
    "n_vocab": 32768,
    "n_ctx_train": 65536,
}


def _mixtral_shapes(cfg: dict[str, object], *, legacy: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and ggml-order shapes of a Mixtral model."""
    e, f, v = int(cfg["n_embd"]), int(cfg["n_ff"]), int(cfg["n_vocab"])  # type: ignore[call-overload]
    kv = e // int(cfg["n_head"]) * int(cfg["n_head_kv"])  # type: ignore[call-overload]
    x = int(cfg["n_expert"])  # type: ignore[call-overload]
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (e, v))]
    for i in range(int(cfg["n_layers"])):  # type: ignore[call-overload]
        b = f"blk.{i}"
        out += [
            (f"{b}.attn_norm.weight", (e,)),
            (f"{b}.attn_q.weight", (e, e)),
            (f"{b}.attn_k.weight", (e, kv)),
            (f"{b}.attn_v.weight", (e, kv)),
            (f"{b}.attn_output.weight", (e, e)),
            (f"{b}.ffn_norm.weight", (e,)),
            (f"{b}.ffn_gate_inp.weight", (e, x)),
        ]
        if legacy:
            for j in range(x):
                out += [
                    (f"{b}.ffn_gate.{j}.weight", (e, f)),
                    (f"{b}.ffn_down.{j}.weight", (f, e)),
                    (f"{b}.ffn_up.{j}.weight", (e, f)),
                ]
        else:
            out += [
                (f"{b}.ffn_gate_exps.weight", (e, f, x)),
                (f"{b}.ffn_down_exps.weight", (f, e, x)),
                (f"{b}.ffn_up_exps.weight", (e, f, x)),
            ]
    out += [("output_norm.weight", (e,)), ("output.weight", (e, v))]
    return out


def legacy_quant_type(name: str, quant: str) -> str:
    """The type llama.cpp's quantiser gave a tensor of TheBloke's December 2023 Mixtral files.

    Then the 8-expert rule put attn_k and attn_v in Q8_0 and attn_output in Q5_K, output was
    Q6_K, and the ffn_down bump never matched the per-expert names ("ffn_down.0.weight").
    """
    if name.endswith("norm.weight") or "ffn_gate_inp" in name:
        return "F32"
    if name == "output.weight":
        return "Q6_K"
    if ".attn_k." in name or ".attn_v." in name:
        return "Q8_0"
    if ".attn_output." in name:
        return "Q5_K"
    return {"Q4_K_M": "Q4_K", "Q2_K": "Q2_K"}[quant]


def modern_quant_types(directory: Path, quant: str, *, n_layers: int = 32) -> dict[str, str]:
    """Per-tensor types today's llama.cpp quantiser picks for a 32-layer, 8-expert Mixtral.

    The rules depend on tensor names, layer indices, expert and head counts, not on sizes,
    so llama.cpp quantises a narrow model of Mixtral's depth and we read what it chose.
    """
    import gguf

    spec = with_changes(
        TINY,
        n_layers=n_layers,
        n_expert=8,
        n_expert_used=2,
        n_embd=256,
        n_ff=256,
        n_head=8,
        n_head_kv=2,
        dtype="f16",
        name="Mixtral rules probe",
    )
    path = make_model(directory, spec, quant, name=f"rules-{quant}-{n_layers}")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    path.unlink()
    return types


def mixtral_header_file(
    directory: Path,
    quant: str,
    *,
    cfg: dict[str, object] | None = None,
    legacy: bool = False,
    types: dict[str, str] | None = None,
    split_count: int = 1,
    name: str | None = None,
) -> Path:
    """Write a Mixtral GGUF with the real tensor table whose data is a hole (a sparse file).

    Returns the file (or the first part of a split model) with its full size on paper and
    almost nothing on disk.
    """
    import gguf
    import numpy as np

    from mixdesk.core.gguf.header import tensor_nbytes

    cfg = cfg or MIXTRAL_8X7B
    directory.mkdir(parents=True, exist_ok=True)
    stem = name or f"mixtral-{'legacy' if legacy else 'merged'}-{quant}"
    path = directory / f"{stem}.gguf"
    writer = gguf.GGUFWriter(
        str(path),
        "llama",
        split_max_tensors=0
        if split_count == 1
        else -(-len(_mixtral_shapes(cfg, legacy=legacy)) // split_count),
    )
    writer.add_name(str(cfg["name"]))
    writer.add_context_length(int(cfg["n_ctx_train"]))  # type: ignore[call-overload]
    writer.add_embedding_length(int(cfg["n_embd"]))  # type: ignore[call-overload]
    writer.add_block_count(int(cfg["n_layers"]))  # type: ignore[call-overload]
    writer.add_feed_forward_length(int(cfg["n_ff"]))  # type: ignore[call-overload]
    writer.add_head_count(int(cfg["n_head"]))  # type: ignore[call-overload]
    writer.add_head_count_kv(int(cfg["n_head_kv"]))  # type: ignore[call-overload]
    writer.add_rope_dimension_count(int(cfg["n_embd"]) // int(cfg["n_head"]))  # type: ignore[call-overload]
    writer.add_expert_count(int(cfg["n_expert"]))  # type: ignore[call-overload]
    writer.add_expert_used_count(int(cfg["n_expert_used"]))  # type: ignore[call-overload]
    writer.add_vocab_size(int(cfg["n_vocab"]))  # type: ignore[call-overload]
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"t{i}" for i in range(int(cfg["n_vocab"]))])  # type: ignore[call-overload]
    writer.add_chat_template(MIXTRAL_TEMPLATE)
    for tname, shape in _mixtral_shapes(cfg, legacy=legacy):
        if legacy:
            tname_type = legacy_quant_type(tname, quant)
        else:
            assert types is not None, "modern layouts need the quantiser's types"
            tname_type = types.get(tname, "F32")
        qtype = gguf.GGMLQuantizationType[tname_type]
        nbytes = tensor_nbytes(int(qtype), shape, name=tname)
        writer.add_tensor_info(
            tname, tuple(reversed(shape)), np.dtype(np.float32), nbytes, raw_dtype=qtype
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    ends = []
    for fout, tensors in zip(writer.fout, writer.tensors, strict=True):
        fout.flush()
        end = -(-fout.tell() // writer.data_alignment) * writer.data_alignment
        ends.append(
            (
                fout.name,
                end
                + sum(
                    -(-ti.nbytes // writer.data_alignment) * writer.data_alignment
                    for ti in tensors.values()
                ),
            )
        )
    writer.close()
    for fname, size in ends:
        os.truncate(fname, size)  # a hole: the file system stores no data for it
    return Path(ends[0][0])


from mixdesk.core.chat.template import MIXTRAL_TEMPLATE  # noqa: E402

# --- Models of each chat-template path (parity with llama.cpp's own path) ----------------------

#: A Qwen2-architecture model without a template (built-in ``chatml``) whose vocabulary
#: wants no BOS (``add_bos_token = false``), as Qwen's does.
QWEN2_NO_BOS = ModelSpec(
    family="qwen2",
    n_expert=0,
    chat_template=None,
    add_bos=False,
    bos_text="<|endoftext|>",
    eos_text="<|im_end|>",
    control_tokens=("<|im_start|>",),
    name="Qwen2 tiny base",
)
#: A Phi-3-architecture model without a template (built-in ``phi3``).
PHI3_BASE = ModelSpec(
    family="phi3",
    n_expert=0,
    chat_template=None,
    control_tokens=("<|user|>", "<|assistant|>", "<|end|>", "<|system|>", "<|endoftext|>"),
    name="Phi3 tiny base",
)
#: A dense llama-architecture model with a Llama 3 vocabulary (``tokenizer.ggml.pre =
#: llama-bpe``) and no template (built-in ``llama3``).
LLAMA3_BASE = ModelSpec(
    n_expert=0,
    chat_template=None,
    tokenizer_pre="llama-bpe",
    bos_text="<|begin_of_text|>",
    eos_text="<|end_of_text|>",
    control_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    name="Llama3 tiny base",
)
#: A 2023 Mixtral file without a template (MixDesk's Mixtral ``[INST]`` fallback).
MIXTRAL_NO_TEMPLATE = with_changes(TINY, chat_template=None, name="Mixtral tiny 2023")
#: A vocabulary that also asks for EOS at the end of every tokenized text.
WITH_EOS = with_changes(TINY, add_eos=True, name="Mixtral tiny add-eos")
#: A dense base model (no template: llama.cpp's built-in ``llama2``) whose first answer token
#: is always end-of-text.
ENDS_AT_ONCE = with_changes(
    TINY, n_expert=0, chat_template=None, eos_first=True, name="Llama tiny base ends at once"
)
#: A Mixtral whose every answer token is a line break (the byte token ``<0x0A>``): answers
#: with tokens but no text.
BLANK_LINES = with_changes(TINY, only_token=3 + 0x0A, name="Mixtral tiny blank lines")
