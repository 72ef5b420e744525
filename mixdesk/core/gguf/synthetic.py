"""Write small, real Mixtral-architecture GGUF files with random weights.

llama.cpp loads and runs these exactly as it runs Mixtral 8x7B (same architecture: a
llama-style decoder whose feed-forward block is a mixture of experts), only smaller. The
doctor command uses one for its end-to-end engine check; the test-suite and benchmarks
build on :func:`write_model` for quantised, legacy-layout and broken variants.

Random weights produce gibberish text; what matters is that tokens, timings and errors are
real. The output layer is shaped so that sampling favours the word-piece tokens (readable
gibberish, from the words of :mod:`mixdesk.core.gguf.synthetic_words`) and almost never ends
the answer early.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mixdesk.core.gguf.synthetic_words import WORDS, Vocabulary
from mixdesk.core.gguf.templates import MIXTRAL_TEMPLATE

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


@dataclass(frozen=True)
class ModelSpec:
    """Shape and options of a generated model.

    K-quantisation needs rows that are multiples of 256 values, so ``n_embd`` and ``n_ff``
    are multiples of 256 for any model that will be quantised.
    """

    n_embd: int = 256
    n_ff: int = 512
    n_layers: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    n_expert: int = 4
    n_expert_used: int = 2
    n_ctx_train: int = 4096
    name: str = "Mixtral tiny test"
    chat_template: str | None = MIXTRAL_TEMPLATE
    #: One 2-D tensor per expert (``blk.N.ffn_gate.E.weight``) as in TheBloke's 2023 files.
    legacy_expert_layout: bool = False
    dtype: str = "f32"  # "f32" or "f16"
    seed: int = 0
    #: Extra word pieces to make a larger vocabulary (real Mixtral has 32000 tokens).
    extra_tokens: int = 0
    #: The llama.cpp architecture written (``general.architecture``): a llama-style decoder
    #: (Mixtral with experts, dense without), or a dense Gemma, Qwen2 or Phi-3 one (each with
    #: the tensors llama.cpp requires of it), to test the per-architecture chat templates.
    family: Literal["llama", "gemma", "qwen2", "phi3"] = "llama"
    #: The vocabulary's BOS and EOS strings (ids 1 and 2) and whether llama.cpp adds them
    #: when it tokenizes with ``add_special`` (``tokenizer.ggml.add_bos_token`` / ``_eos_``).
    bos_text: str = "<s>"
    eos_text: str = "</s>"
    add_bos: bool = True
    add_eos: bool = False
    #: Control tokens of a chat format (``<start_of_turn>``, ``<|im_start|>``...), at the end.
    control_tokens: tuple[str, ...] = ()
    #: ``tokenizer.ggml.pre`` when set (``llama-bpe`` marks a Llama 3 vocabulary).
    tokenizer_pre: str = ""
    #: Make end-of-text the most likely token everywhere: the model ends its answers at once
    #: (needs an output matrix of its own: not with ``family="gemma"``).
    eos_first: bool = False
    #: Make this token id the most likely everywhere instead (e.g. 13, the line-break byte
    #: ``<0x0A>``: every answer is blank lines until its token limit).
    only_token: int | None = None

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.n_embd // self.n_head


TINY = ModelSpec()
#: Mid-size for speed measurements: real work per token (about 335 MiB as Q4_K_M).
MID = ModelSpec(
    n_embd=1024,
    n_ff=2816,
    n_layers=8,
    n_head=8,
    n_head_kv=2,
    n_expert=8,
    n_expert_used=2,
    name="Mixtral mid-size test",
    dtype="f16",
)


def vocabulary(spec: ModelSpec) -> Vocabulary:
    """Return tokens, scores and token types of a llama (SentencePiece) vocabulary."""
    tokens = ["<unk>", spec.bos_text, spec.eos_text]
    types = [2, 3, 3]  # UNKNOWN, CONTROL, CONTROL
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256  # BYTE
    pieces = ["\u2581", *"abcdefghijklmnopqrstuvwxyz", *(f"\u2581{w}" for w in WORDS)]
    pieces += [f"\u2581w{i}" for i in range(spec.extra_tokens)]
    tokens += pieces
    types += [1] * len(pieces)  # NORMAL
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    tokens += spec.control_tokens
    types += [3] * len(spec.control_tokens)  # CONTROL
    scores += [0.0] * len(spec.control_tokens)
    return tokens, scores, types


def _weights(spec: ModelSpec, n_vocab: int) -> list[tuple[str, npt.NDArray[np.floating]]]:
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    dtype = np.float16 if spec.dtype == "f16" else np.float32

    def mat(rows: int, cols: int, *lead: int) -> npt.NDArray[np.floating]:
        scale = 1.0 / np.sqrt(cols)
        out: npt.NDArray[np.floating] = (
            rng.standard_normal((*lead, rows, cols), dtype=np.float32) * scale
        ).astype(dtype)
        return out

    def ones(n: int) -> npt.NDArray[np.floating]:
        return np.ones(n, dtype=np.float32)

    e, kv = spec.n_embd, spec.n_head_kv * spec.head_dim
    out = mat(n_vocab, e) * 3
    out[:259] = 0  # specials and bytes: logit 0, far below the word pieces
    out[n_vocab - len(spec.control_tokens) :] = 0  # a chat format's control tokens too
    embd = (mat(n_vocab, e) * float(np.sqrt(e))).astype(dtype)
    first = 2 if spec.eos_first else spec.only_token
    if first is not None:  # one direction dominates every hidden state, and only it reads it
        embd[:, 0] = 100.0
        out[first] = 0.0
        out[first, 0] = 50.0
    tensors: list[tuple[str, npt.NDArray[np.floating]]] = [
        ("token_embd.weight", embd),
        ("output_norm.weight", ones(e)),
    ]
    if spec.family != "gemma":  # Gemma's output is its token embedding (tied)
        tensors.append(("output.weight", out))
    for i in range(spec.n_layers):
        b = f"blk.{i}"
        tensors.append((f"{b}.attn_norm.weight", ones(e)))
        if spec.family == "phi3":  # one fused q|k|v matrix
            tensors.append((f"{b}.attn_qkv.weight", mat(e + 2 * kv, e)))
        else:
            tensors += [
                (f"{b}.attn_q.weight", mat(e, e)),
                (f"{b}.attn_k.weight", mat(kv, e)),
                (f"{b}.attn_v.weight", mat(kv, e)),
            ]
        if spec.family == "qwen2":  # Qwen2 has q/k/v biases
            tensors += [
                (f"{b}.attn_q.bias", np.zeros(e, dtype=np.float32)),
                (f"{b}.attn_k.bias", np.zeros(kv, dtype=np.float32)),
                (f"{b}.attn_v.bias", np.zeros(kv, dtype=np.float32)),
            ]
        tensors += [
            (f"{b}.attn_output.weight", mat(e, e)),
            (f"{b}.ffn_norm.weight", ones(e)),
        ]
        tensors += _ffn(spec, b, mat)
    return tensors


def _ffn(
    spec: ModelSpec, b: str, mat: Callable[..., npt.NDArray[np.floating]]
) -> list[tuple[str, npt.NDArray[np.floating]]]:
    """The feed-forward tensors of layer ``b``: experts (Mixtral), or one dense block."""
    import numpy as np

    e, f = spec.n_embd, spec.n_ff
    if not spec.n_expert:
        if spec.family == "phi3":  # gate and up fused in one matrix
            return [(f"{b}.ffn_up.weight", mat(2 * f, e)), (f"{b}.ffn_down.weight", mat(e, f))]
        return [
            (f"{b}.ffn_gate.weight", mat(f, e)),
            (f"{b}.ffn_up.weight", mat(f, e)),
            (f"{b}.ffn_down.weight", mat(e, f)),
        ]
    tensors = [(f"{b}.ffn_gate_inp.weight", mat(spec.n_expert, e).astype(np.float32))]
    gate, up, down = (
        mat(f, e, spec.n_expert),
        mat(f, e, spec.n_expert),
        mat(e, f, spec.n_expert),
    )
    if spec.legacy_expert_layout:
        for x in range(spec.n_expert):
            tensors += [
                (f"{b}.ffn_gate.{x}.weight", gate[x]),
                (f"{b}.ffn_down.{x}.weight", down[x]),
                (f"{b}.ffn_up.{x}.weight", up[x]),
            ]
    else:
        tensors += [
            (f"{b}.ffn_gate_exps.weight", gate),
            (f"{b}.ffn_down_exps.weight", down),
            (f"{b}.ffn_up_exps.weight", up),
        ]
    return tensors


def write_model(path: Path, spec: ModelSpec = TINY, *, split_parts: int = 1) -> Path:
    """Write a GGUF model described by ``spec`` to ``path`` and return ``path``.

    With ``split_parts`` > 1 it writes llama.cpp split files (``NAME-00001-of-0000N.gguf``)
    and returns the first.
    """
    return write_gguf(path, spec, vocab=vocabulary(spec), split_parts=split_parts)


def write_gguf(
    path: Path,
    spec: ModelSpec,
    *,
    vocab: Vocabulary,
    architecture: str | None = None,
    split_parts: int = 1,
) -> Path:
    """Write ``spec``'s weights with the given vocabulary and architecture name.

    :func:`write_model` with the parts spelled out; the test suite's model factory writes
    its deliberately broken files (a repeated token, an unknown architecture) with it.

    Args:
        path: The file to write (the first part's name is derived from it when split).
        spec: Shape and options of the model.
        vocab: Tokens, scores and token types (see :func:`vocabulary`).
        architecture: ``general.architecture``, which also prefixes the shape keys
            (``spec.family`` unless given).
        split_parts: Write llama.cpp split files when more than 1.

    Returns:
        The path of the file written (the first part for a split model).
    """
    import gguf

    tokens, scores, types = vocab
    weights = _weights(spec, len(tokens))
    per_part = -(-len(weights) // split_parts) if split_parts > 1 else 0
    writer = gguf.GGUFWriter(str(path), architecture or spec.family, split_max_tensors=per_part)
    writer.add_name(spec.name)
    writer.add_context_length(spec.n_ctx_train)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layers)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    if spec.n_expert:
        writer.add_expert_count(spec.n_expert)
        writer.add_expert_used_count(spec.n_expert_used)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_F16 if spec.dtype == "f16" else gguf.LlamaFileType.ALL_F32
    )
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(spec.add_bos)
    writer.add_add_eos_token(spec.add_eos)
    if spec.tokenizer_pre:
        writer.add_tokenizer_pre(spec.tokenizer_pre)
    if spec.chat_template is not None:
        writer.add_chat_template(spec.chat_template)
    for name, data in weights:
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if split_parts > 1:
        return path.with_name(f"{path.stem}-00001-of-{split_parts:05d}.gguf")
    return path


def with_changes(spec: ModelSpec, **changes: object) -> ModelSpec:
    """Return a copy of ``spec`` with some fields changed."""
    return replace(spec, **changes)  # type: ignore[arg-type]


#: A Gemma-architecture base model: no chat template (llama.cpp's built-in ``gemma`` one, which
#: writes no BOS), a vocabulary that asks for BOS as Gemma 3's does: the prompt needs llama.cpp's
#: BOS rule (the doctor's parity check, the tests).
GEMMA_BASE = ModelSpec(
    family="gemma",
    n_expert=0,
    chat_template=None,
    bos_text="<bos>",
    eos_text="<eos>",
    control_tokens=("<start_of_turn>", "<end_of_turn>"),
    name="Gemma tiny base",
)
