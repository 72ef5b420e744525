"""The names of expert tensors, as a GGUF file has them and as llama.cpp loads them."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: An expert tensor: merged (``_exps``, or ``_chexps``) or one expert of the legacy layout.
EXPERT_TENSOR = re.compile(r"^blk\.(\d+)\.ffn_(gate_up|gate|up|down)(_exps|_chexps|\.\d+)\.weight$")


def loaded_name(tensor_name: str) -> str | None:
    """The name llama.cpp loads an expert tensor under (a legacy per-expert tensor: the merged
    one it becomes), or None when ``tensor_name`` is not an expert tensor."""
    m = EXPERT_TENSOR.match(tensor_name)
    if m is None:
        return None
    suffix = m.group(3) if m.group(3) in ("_exps", "_chexps") else "_exps"
    return f"blk.{m.group(1)}.ffn_{m.group(2)}{suffix}.weight"


def layers_of(names: Iterable[str]) -> set[int]:
    """The layers of some expert tensors' names."""
    found = set()
    for name in names:
        m = EXPERT_TENSOR.match(name)
        if m is not None:
            found.add(int(m.group(1)))
    return found
