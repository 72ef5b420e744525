"""A catalog file's profile without the network: its tensor table from what is known.

The catalog knows each model's architecture (:class:`~mixdesk.core.hub.catalog.KnownShape`)
and each file's quantisation; llama.cpp's quantiser picks every tensor's type from its name,
its layer and the quantisation alone, for an 8-expert model by the rules below (read from
``llama_tensor_get_type``, and checked against what the installed llama.cpp's quantiser
picks in ``tests/core/test_known_shapes.py``). From these the header is written out as the
file's own would read, so the planner judges a built-in file while the Hub is out of reach
(the first run offline) exactly as it would from the remote header, within the
approximation of the rules (the tests hold every built-in file within 1% of its listed size).
"""

from __future__ import annotations

from mixdesk.core.gguf.header import GGUFHeader, TensorInfo, tensor_nbytes
from mixdesk.core.gguf.header_values import MetaValue
from mixdesk.core.gguf.profile import ModelProfile, profile_from_headers
from mixdesk.core.hub.catalog import CatalogFile, CatalogModel, KnownShape

#: The type of the bulk of the weights of each quantisation.
MAIN_TYPE = {
    "Q2_K": "Q2_K",
    "Q3_K_S": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_L": "Q3_K",
    "Q4_0": "Q4_0",
    "Q4_K_S": "Q4_K",
    "Q4_K_M": "Q4_K",
    "Q5_0": "Q5_0",
    "Q5_K_S": "Q5_K",
    "Q5_K_M": "Q5_K",
    "Q6_K": "Q6_K",
    "Q8_0": "Q8_0",
    "F16": "F16",
}
#: Quantisations whose attention output an 8-expert model keeps in Q5_K.
_ATTN_OUTPUT_Q5 = frozenset({"Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M"})
_ALIGNMENT = 32
_GGML_TYPES = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q5_0": 6,
    "Q8_0": 8,
    "Q2_K": 10,
    "Q3_K": 11,
    "Q4_K": 12,
    "Q5_K": 13,
    "Q6_K": 14,
}


def _more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers and every third
    between them get a bigger ffn_down."""
    eighth = n_layers // 8
    return layer < eighth or layer >= 7 * n_layers // 8 or (layer - eighth) % 3 == 2


def _ffn_down_type(quant: str, layer: int, n_layers: int) -> str:
    main = MAIN_TYPE[quant]
    if quant == "Q2_K":
        return "Q3_K"
    if quant == "Q3_K_M":
        return "Q5_K" if layer < n_layers // 16 else "Q4_K"
    if quant == "Q3_K_L":
        return "Q5_K"
    if quant in ("Q4_K_M", "Q5_K_M") and _more_bits(layer, n_layers):
        return "Q6_K"
    return main


def tensor_type(name: str, quant: str, *, layer: int, n_layers: int, legacy: bool) -> str:
    """The ggml type llama.cpp's quantiser gives tensor ``name`` of an 8-expert model.

    ``legacy``: TheBloke's December 2023 files (one tensor per expert); the quantiser of
    then matched the ffn_down bump against ``ffn_down.weight`` only, so their per-expert
    ffn_down tensors kept the main type.

    Raises:
        KeyError: a quantisation the rules do not cover.
    """
    main = MAIN_TYPE[quant]
    if name.endswith("norm.weight") or ".ffn_gate_inp." in name:
        return "F32"
    if name == "output.weight":
        return main if main in ("Q8_0", "F16") else "Q6_K"
    if ".attn_k." in name or ".attn_v." in name:
        return main if main == "F16" else "Q8_0"
    if ".attn_output." in name:
        return "Q5_K" if quant in _ATTN_OUTPUT_Q5 else main
    if ".ffn_down" in name and not legacy:
        return _ffn_down_type(quant, layer, n_layers)
    return main


def tensor_shapes(shape: KnownShape, *, legacy: bool) -> list[tuple[str, int, tuple[int, ...]]]:
    """Every tensor of a Mixtral-shaped model: name, layer (-1: none), ggml-order shape."""
    e, f, v, x = shape.n_embd, shape.n_ff, shape.n_vocab, shape.n_expert
    kv = e // shape.n_head * shape.n_head_kv
    out: list[tuple[str, int, tuple[int, ...]]] = [("token_embd.weight", -1, (e, v))]
    for i in range(shape.n_layers):
        b = f"blk.{i}"
        out += [
            (f"{b}.attn_norm.weight", i, (e,)),
            (f"{b}.attn_q.weight", i, (e, e)),
            (f"{b}.attn_k.weight", i, (e, kv)),
            (f"{b}.attn_v.weight", i, (e, kv)),
            (f"{b}.attn_output.weight", i, (e, e)),
            (f"{b}.ffn_norm.weight", i, (e,)),
            (f"{b}.ffn_gate_inp.weight", i, (e, x)),
        ]
        if legacy:
            for j in range(x):
                out += [
                    (f"{b}.ffn_gate.{j}.weight", i, (e, f)),
                    (f"{b}.ffn_down.{j}.weight", i, (f, e)),
                    (f"{b}.ffn_up.{j}.weight", i, (e, f)),
                ]
        else:
            out += [
                (f"{b}.ffn_gate_exps.weight", i, (e, f, x)),
                (f"{b}.ffn_down_exps.weight", i, (f, e, x)),
                (f"{b}.ffn_up_exps.weight", i, (e, f, x)),
            ]
    out += [("output_norm.weight", -1, (e,)), ("output.weight", -1, (e, v))]
    return out


def known_header(entry: CatalogModel, file: CatalogFile) -> GGUFHeader | None:
    """The header ``file`` of ``entry`` has, as far as the catalog knows (None: the catalog
    does not know the model's shape, or the file's quantisation)."""
    shape = entry.shape
    if shape is None or file.quant not in MAIN_TYPE:
        return None
    legacy = entry.layout == "legacy"
    tensors = []
    offset = 0
    for name, layer, dims in tensor_shapes(shape, legacy=legacy):
        kind = tensor_type(name, file.quant, layer=layer, n_layers=shape.n_layers, legacy=legacy)
        ggml_type = _GGML_TYPES[kind]
        nbytes = tensor_nbytes(ggml_type, dims, name=name)
        tensors.append(TensorInfo(name, ggml_type, dims, offset, nbytes))
        offset += -(-nbytes // _ALIGNMENT) * _ALIGNMENT
    arch = shape.architecture
    metadata: dict[str, MetaValue] = {
        "general.architecture": arch,
        "general.name": entry.title,
        f"{arch}.block_count": shape.n_layers,
        f"{arch}.embedding_length": shape.n_embd,
        f"{arch}.feed_forward_length": shape.n_ff,
        f"{arch}.attention.head_count": shape.n_head,
        f"{arch}.attention.head_count_kv": shape.n_head_kv,
        f"{arch}.expert_count": shape.n_expert,
        f"{arch}.expert_used_count": shape.n_expert_used,
        f"{arch}.context_length": shape.context_length,
        f"{arch}.vocab_size": shape.n_vocab,
    }
    return GGUFHeader(
        name=file.filename,
        version=3,
        metadata=metadata,
        tensors=tensors,
        alignment=_ALIGNMENT,
        data_offset=0,
        file_size=file.size,
    )


def known_profile(entry: CatalogModel, file: CatalogFile) -> ModelProfile | None:
    """``file``'s profile from what the catalog knows (None: it does not know enough)."""
    header = known_header(entry, file)
    return profile_from_headers([header]) if header is not None else None


def known_file_profile(
    catalog: list[CatalogModel], repo_id: str, filename: str
) -> ModelProfile | None:
    """The profile of a catalog file named by repository and file name (None: not a
    catalog file, or one whose shape is not known)."""
    for entry in catalog:
        if entry.repo_id != repo_id:
            continue
        for file in entry.files:
            if file.filename == filename:
                return known_profile(entry, file)
    return None
