"""The models calibration measures: their shapes (one Mixtral-shaped model per quantisation
type, thin F32 ones for the fixed costs, one larger than the caches, a check of another
shape), made on this machine once and kept."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from mixdesk.core.engine.quantize import FILE_TYPES, quantize
from mixdesk.core.gguf.synthetic import ModelSpec, write_model

#: The Mixtral-shaped model every type is measured on (8 experts, 2 used).
SHAPE = ModelSpec(
    n_embd=512,
    n_ff=1536,
    n_layers=6,
    n_head=8,
    n_head_kv=2,
    n_expert=8,
    n_expert_used=2,
    name="MixDesk calibration",
    chat_template=None,
)


#: F32 models with few weights: the fixed costs per token and per layer (two thin ones of 2
#: and 24 layers, and a wider one that separates the F32 weights' own cost).
THIN = replace(SHAPE, n_embd=64, n_ff=128, n_head=2, n_head_kv=1, name="MixDesk calibration thin")


THIN_SHAPES = {
    "thin-2": replace(THIN, n_layers=2),
    "thin-24": replace(THIN, n_layers=24),
    "thin-wide": replace(THIN, n_embd=256, n_ff=512, n_head=4, n_layers=6),
}


#: A model larger than the caches (about 640 MB as Q8_0): what memory adds per byte when the
#: weights come from RAM, beyond the small models' dequantisation (which stay in the caches).
#: Of a shape of its own (not the test models'), measured as Q2_K, Q4_K_M and Q8_0.
MEMORY = replace(
    SHAPE,
    n_embd=1536,
    n_ff=4096,
    n_layers=4,
    n_head=12,
    n_head_kv=4,
    name="MixDesk calibration memory",
)
#: The large models' labels and file types: what memory adds differs by type.
MEMORY_TYPES = {"memory-Q2_K": "Q2_K", "memory-Q4_K_M": "Q4_K_M", "memory": "Q8_0"}


#: Another shape, predicted before it is measured (the expected error).
VALIDATION = replace(SHAPE, n_embd=768, n_ff=2048, n_layers=4, name="MixDesk calibration check")


@dataclass(frozen=True)
class Shapes:
    """The measuring models' shapes: one per quantisation type, the thin F32 ones, the check."""

    main: ModelSpec = SHAPE
    thin: Mapping[str, ModelSpec] = field(default_factory=lambda: dict(THIN_SHAPES))
    check: ModelSpec = VALIDATION
    memory: ModelSpec = MEMORY

    def key(self) -> str:
        """Names the models of these shapes apart from others' in one folder."""
        return "" if self == Shapes() else f"{self.main.n_embd}x{self.main.n_layers}-"


Progress = Callable[[str, float], None]


def _shape_tag(label: str, spec: ModelSpec) -> str:
    """The large models' names carry their shape (a file of an earlier shape is not reused)."""
    return f"-{spec.n_embd}x{spec.n_ff}x{spec.n_layers}" if label in MEMORY_TYPES else ""


def calibration_models(
    directory: Path,
    *,
    threads: int,
    shapes: Shapes | None = None,
    on_progress: Progress | None = None,
) -> dict[str, Path]:
    """The measuring models, generated into ``directory`` the first time (kept for the next)."""
    shapes = shapes or Shapes()
    directory.mkdir(parents=True, exist_ok=True)
    wanted: list[tuple[str, ModelSpec, str]] = [
        (label, spec, "F32") for label, spec in shapes.thin.items()
    ]
    wanted += [(file_type, shapes.main, file_type) for file_type in FILE_TYPES]
    wanted.append(("check", shapes.check, "Q4_K_M"))
    wanted += [(label, shapes.memory, file_type) for label, file_type in MEMORY_TYPES.items()]
    found = {}
    sources: dict[ModelSpec, Path] = {}  # one F32 source per shape, for all its types
    try:
        for i, (label, spec, file_type) in enumerate(wanted):
            path = directory / f"calibration-{shapes.key()}{label}{_shape_tag(label, spec)}.gguf"
            if not path.exists():
                if on_progress is not None:
                    on_progress(f"making the {label} model", i / len(wanted))
                if file_type in ("F32", "F16"):
                    write_model(path.with_suffix(".tmp"), replace(spec, dtype=file_type.lower()))
                else:
                    if spec not in sources:
                        source = directory / f"calibration-{label}.source.gguf"
                        sources[spec] = write_model(source, spec)
                    quantize(sources[spec], path.with_suffix(".tmp"), file_type, threads=threads)
                path.with_suffix(".tmp").replace(path)
            found[label] = path
    finally:
        for source in sources.values():
            source.unlink(missing_ok=True)
    return found
