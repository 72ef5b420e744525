"""What the user decided about a load (``None`` leaves a choice to MixDesk), checked once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from mixdesk.core.engine.protocol import KV_CACHE_TYPES
from mixdesk.core.planning.types import EXPERTS_ORDERS, STRATEGIES, ExpertsOrder, Strategy
from mixdesk.errors import InvalidArgumentError

if TYPE_CHECKING:
    from mixdesk.core.workspace.settings import Settings


@dataclass(frozen=True)
class LoadChoices:
    """What the user decided about a load; ``None`` leaves the choice to MixDesk.

    Attributes:
        n_gpu_layers: llama.cpp's ``n_gpu_layers`` (output layer + repeating layers); -1: all.
        n_ctx: the context length; 0: the model's own; None: the planner's choice.
        kv_type: the KV cache type (K and V), one of :data:`KV_CACHE_TYPES`.
        flash_attn: flash attention (always on for a quantised V cache).
        n_threads: CPU threads; None: the physical cores.
        n_batch: the logical batch size.
        use_mmap: map the model file instead of reading it.
        op_offload: llama.cpp's op offload; None: as the planner decides.
        strategy: "layers" (whole layers on the GPU) or "experts" (all layers on the GPU,
            expert tensors in RAM until the rest fits).
        experts_in_ram: K for the "experts" strategy: the expert tensors of K whole layers
            in RAM; None: the planner's choice (as few tensors as fit).
        expert_tensors_in_ram: exactly this many expert tensors in RAM (a plan pinned by its
            dry run or by Measure); it wins over ``experts_in_ram``.
        experts_from: whose experts go to RAM first, the "first" or the "last" layers';
            None: the faster by the speed model.
    """

    n_gpu_layers: int | None = None
    n_ctx: int | None = None
    kv_type: str = "f16"
    flash_attn: bool = False
    n_threads: int | None = None
    n_batch: int = 512
    use_mmap: bool = True
    op_offload: bool | None = None
    strategy: Strategy = "layers"
    experts_in_ram: int | None = None
    expert_tensors_in_ram: int | None = None
    experts_from: ExpertsOrder | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> LoadChoices:
        """The saved settings' choices (threads, context, KV type, flash attention), then ``overrides``."""
        base = cls(
            n_ctx=settings.n_ctx,
            kv_type=settings.kv_type,
            flash_attn=settings.flash_attn,
            n_threads=settings.threads,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def validate(self) -> None:
        """Reject settings that make no sense, with one sentence.

        Raises:
            InvalidArgumentError: a value is out of range.
        """
        if self.n_gpu_layers is not None and self.n_gpu_layers < -1:
            raise InvalidArgumentError(
                f"GPU layers {self.n_gpu_layers} is out of range; use -1 (all), 0 (none) or a count."
            )
        if self.n_ctx is not None and not 0 <= self.n_ctx <= 1 << 22:
            raise InvalidArgumentError(
                f"Context length {self.n_ctx} is out of range; use 0 (the model's own) to 4194304."
            )
        if self.kv_type not in KV_CACHE_TYPES:
            raise InvalidArgumentError(
                f"KV cache type {self.kv_type!r} is unknown; use one of {', '.join(KV_CACHE_TYPES)}."
            )
        if self.n_threads is not None and self.n_threads < 1:
            raise InvalidArgumentError(f"Thread count {self.n_threads} must be at least 1.")
        if self.n_batch < 1:
            raise InvalidArgumentError(f"Batch size {self.n_batch} must be at least 1.")
        if self.strategy not in STRATEGIES:
            raise InvalidArgumentError(
                f"Offload strategy {self.strategy!r} is unknown; use {' or '.join(STRATEGIES)}."
            )
        if self.experts_in_ram is not None and self.experts_in_ram < 0:
            raise InvalidArgumentError(
                f"Experts in RAM {self.experts_in_ram} must be 0 or more layers."
            )
        if self.expert_tensors_in_ram is not None and self.expert_tensors_in_ram < 0:
            raise InvalidArgumentError(
                f"Expert tensors in RAM {self.expert_tensors_in_ram} must be 0 or more."
            )
        if self.experts_from is not None and self.experts_from not in EXPERTS_ORDERS:
            raise InvalidArgumentError(
                f"Experts from {self.experts_from!r} is unknown; use {' or '.join(EXPERTS_ORDERS)}."
            )
