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


#: A model larger than the caches (about 600 MB as Q8_0): what memory adds per byte when the
#: weights come from RAM, beyond the small models' dequantisation (which stay in the caches).
MEMORY = replace(SHAPE, n_embd=1024, n_ff=2816, n_layers=8, name="MixDesk calibration memory")


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
    wanted.append(("memory", shapes.memory, "Q8_0"))
    found = {}
    for i, (label, spec, file_type) in enumerate(wanted):
        path = directory / f"calibration-{shapes.key()}{label}.gguf"
        if not path.exists():
            if on_progress is not None:
                on_progress(f"making the {label} model", i / len(wanted))
            if file_type in ("F32", "F16"):
                write_model(path.with_suffix(".tmp"), replace(spec, dtype=file_type.lower()))
            else:
                source = write_model(directory / f"calibration-{label}.source.gguf", spec)
                try:
                    quantize(source, path.with_suffix(".tmp"), file_type, threads=threads)
                finally:
                    source.unlink(missing_ok=True)
            path.with_suffix(".tmp").replace(path)
        found[label] = path
    return found
