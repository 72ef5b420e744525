"""A model profile: what the offload planner needs to know about a GGUF model, from its header(s).

Handles llama.cpp split models (``NAME-00001-of-00005.gguf``: every part's header is read
and their tensors combined) and TheBloke's legacy Mixtral layout (one 2-D tensor per expert,
``blk.N.ffn_gate.E.weight``), whose bytes are the same as the merged layout's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixdesk.core.gguf.header import GGUFHeader, TensorInfo, read_local_header
from mixdesk.core.gguf.header_values import ArrayInfo, GGUFHeaderError, MetaValue

SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
_EXPERT_RE = re.compile(r"\.ffn_(gate|up|down)(_exps|\.\d+)\.weight$")
_LEGACY_EXPERT_RE = re.compile(r"\.ffn_(gate|up|down)\.\d+\.weight$")
NON_REPEATING = ("token_embd.weight", "output.weight", "output_norm.weight")


@dataclass(frozen=True)
class ModelProfile:
    """A model as the planner sees it. Byte counts are of the tensor data in the file(s)."""

    name: str
    architecture: str
    files: tuple[str, ...]
    file_bytes: int
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_expert: int
    n_expert_used: int
    context_length: int
    vocab_size: int
    chat_template: str | None
    file_type: int | None
    legacy_expert_layout: bool
    #: Bytes of each repeating layer ``blk.N``.
    layer_bytes: tuple[int, ...]
    #: Of which expert tensors (only a share of them is read per token).
    layer_expert_bytes: tuple[int, ...]
    token_embd_bytes: int
    output_bytes: int  # output.weight (0 when tied to token_embd)
    output_norm_bytes: int
    tensors: tuple[TensorInfo, ...] = field(repr=False, default=())
    header_bytes_read: int = 0

    @property
    def weights_bytes(self) -> int:
        """All tensor bytes."""
        return (
            sum(self.layer_bytes)
            + self.token_embd_bytes
            + self.output_bytes
            + self.output_norm_bytes
        )

    @property
    def is_moe(self) -> bool:
        """Whether this is a mixture-of-experts model."""
        return self.n_expert > 0

    @property
    def expert_tensor_names(self) -> list[str]:
        """Names of the expert tensors."""
        return [t.name for t in self.tensors if _EXPERT_RE.search(t.name)]


def _int(value: MetaValue | None, default: int = 0) -> int:
    if isinstance(value, list):
        numbers = [int(v) for v in value if isinstance(v, (int, float))]
        return max(numbers) if numbers else default
    if isinstance(value, bool) or value is None or isinstance(value, (str, ArrayInfo)):
        return default
    return int(value)


def profile_from_headers(headers: Sequence[GGUFHeader], *, name: str | None = None) -> ModelProfile:
    """Combine one or more headers (split parts, in order) into a profile.

    Raises:
        GGUFHeaderError: the header lacks what a model needs (architecture, layer count).
    """
    first = headers[0]
    meta = first.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFHeaderError(
            f"{first.name} has no general.architecture: it is not a model llama.cpp can run"
        )
    n_layers = _int(meta.get(f"{arch}.block_count"))
    if n_layers <= 0 or n_layers > 4096:
        raise GGUFHeaderError(f"{first.name} has no usable {arch}.block_count")
    n_embd = _int(meta.get(f"{arch}.embedding_length"))
    n_head = _int(meta.get(f"{arch}.attention.head_count"), 1) or 1
    n_head_kv = _int(meta.get(f"{arch}.attention.head_count_kv"), n_head) or n_head
    head_k = _int(meta.get(f"{arch}.attention.key_length"), n_embd // n_head)
    head_v = _int(meta.get(f"{arch}.attention.value_length"), n_embd // n_head)
    vocab = _int(meta.get(f"{arch}.vocab_size"))
    if not vocab:
        vocab = first.array_lengths.get("tokenizer.ggml.tokens", 0)
    template = meta.get("tokenizer.chat_template")

    tensors: list[TensorInfo] = []
    for i, header in enumerate(headers):
        tensors += [
            TensorInfo(t.name, t.ggml_type, t.shape, t.offset, t.nbytes, i) for t in header.tensors
        ]
    layer_bytes = [0] * n_layers
    expert_bytes = [0] * n_layers
    other: dict[str, int] = {}
    for t in tensors:
        m = _LAYER_RE.match(t.name)
        if m:
            idx = int(m.group(1))
            if idx < n_layers:
                layer_bytes[idx] += t.nbytes
                if _EXPERT_RE.search(t.name):
                    expert_bytes[idx] += t.nbytes
        else:
            other[t.name] = other.get(t.name, 0) + t.nbytes
    file_type = meta.get("general.file_type")
    general_name = meta.get("general.name")
    return ModelProfile(
        name=name or (general_name if isinstance(general_name, str) else first.name),
        architecture=arch,
        files=tuple(h.name for h in headers),
        file_bytes=sum(h.file_size or 0 for h in headers),
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_k,
        head_dim_v=head_v,
        n_ff=_int(meta.get(f"{arch}.feed_forward_length")),
        n_expert=_int(meta.get(f"{arch}.expert_count")),
        n_expert_used=_int(meta.get(f"{arch}.expert_used_count")),
        context_length=_int(meta.get(f"{arch}.context_length")),
        vocab_size=vocab,
        chat_template=template if isinstance(template, str) else None,
        file_type=_int(file_type) if file_type is not None else None,
        legacy_expert_layout=any(_LEGACY_EXPERT_RE.search(t.name) for t in tensors),
        layer_bytes=tuple(layer_bytes),
        layer_expert_bytes=tuple(expert_bytes),
        token_embd_bytes=other.get("token_embd.weight", 0),
        output_bytes=other.get("output.weight", 0),
        output_norm_bytes=other.get("output_norm.weight", 0),
        tensors=tuple(tensors),
        header_bytes_read=sum(h.bytes_read for h in headers),
    )


def split_parts(path: Path) -> list[Path]:
    """All parts of a split model given any one part (or ``[path]`` for a single file).

    Raises:
        GGUFHeaderError: a part is missing.
    """
    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    count = int(m.group("count"))
    parts = [
        path.with_name(f"{m.group('stem')}-{i:05d}-of-{count:05d}.gguf")
        for i in range(1, count + 1)
    ]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise GGUFHeaderError(
            f"{path.name} is part of a {count}-file model but {', '.join(missing[:3])} "
            f"{'is' if len(missing) == 1 else 'are'} missing; download every part"
        )
    return parts


def profile_local(path: str | Path) -> ModelProfile:
    """Profile a local model file (any part of a split model).

    Raises:
        GGUFHeaderError: not a GGUF, damaged, or a split part missing.
        OSError: a file cannot be read.
    """
    parts = split_parts(Path(path))
    return profile_from_headers([read_local_header(p) for p in parts])
