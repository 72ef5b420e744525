"""Which expert tensors stay in RAM: the "experts" strategy at tensor granularity.

Every layer and the output layer go on the offload device; expert tensors then leave it one
at a time, in a fixed order, until the rest fits the device to its margin. That is what
llama.cpp's own fit does (``common/fit.cpp``): its one partial layer keeps attention and the
router on the device with its up experts, or its up and gate experts, and sends the rest to
RAM (its "layer fractions" ATTN, UP, GATE, MOE); so here a layer's ``down`` experts leave
first, then ``gate``, then ``up``. Every other layer has either all or none of its expert
tensors in RAM.

Which layers' experts leave first is a choice (:data:`~.types.ExpertsOrder`): the first
layers' (llama.cpp's ``--n-cpu-moe K``) or the last layers'. The planner asks the speed model
which is faster (:mod:`.speed`), and Measure checks it on the machine.

A legacy Mixtral file (one tensor per expert, ``blk.N.ffn_up.E.weight``) is planned with the
names llama.cpp loads after conversion (``blk.N.ffn_up_exps.weight``): its experts of one
kind in one layer are one tensor then, of the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.planning.expert_names import EXPERT_TENSOR, loaded_name
from mixdesk.core.planning.types import ExpertsOrder, PartialLayer

#: The order a layer's expert tensors leave the device (fit's partial layer keeps up, then gate).
_LEAVING = {"down": 0, "gate_up": 1, "gate": 2, "up": 3}


@dataclass(frozen=True)
class ExpertTensor:
    """One expert tensor as llama.cpp loads it."""

    name: str
    layer: int
    kind: str
    nbytes: int


def expert_tensors(profile: ModelProfile) -> list[ExpertTensor]:
    """The model's expert tensors by the names llama.cpp loads, in the file's order."""
    found: dict[str, ExpertTensor] = {}
    for t in profile.tensors:
        name = loaded_name(t.name)
        if name is None:
            continue
        m = EXPERT_TENSOR.match(t.name)
        assert m is not None
        layer, kind = int(m.group(1)), m.group(2)
        before = found.get(name)
        found[name] = ExpertTensor(name, layer, kind, t.nbytes + (before.nbytes if before else 0))
    return list(found.values())


def leaving_order(profile: ModelProfile, order: ExpertsOrder) -> list[ExpertTensor]:
    """Every expert tensor in the order they leave the device: layer by layer from the first
    or the last layer, within a layer down, gate, up."""
    direction = 1 if order == "first" else -1
    return sorted(
        expert_tensors(profile), key=lambda t: (direction * t.layer, _LEAVING.get(t.kind, 0))
    )


@dataclass(frozen=True)
class ExpertsInRam:
    """The expert tensors that stay in RAM, and what follows from them."""

    tensors: tuple[ExpertTensor, ...] = ()
    #: Expert tensors per layer (to tell whole layers from the partial one).
    per_layer: dict[int, int] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """Their names, for llama.cpp's tensor buffer overrides."""
        return tuple(t.name for t in self.tensors)

    @property
    def nbytes(self) -> int:
        """Their bytes."""
        return sum(t.nbytes for t in self.tensors)

    def bytes_by_layer(self) -> dict[int, int]:
        """Bytes in RAM of each layer with any."""
        found: dict[int, int] = {}
        for t in self.tensors:
            found[t.layer] = found.get(t.layer, 0) + t.nbytes
        return found

    def _counts(self) -> dict[int, int]:
        found: dict[int, int] = {}
        for t in self.tensors:
            found[t.layer] = found.get(t.layer, 0) + 1
        return found

    @property
    def whole_layers(self) -> int:
        """K: the layers all of whose expert tensors are in RAM."""
        return sum(1 for layer, c in self._counts().items() if c == self.per_layer[layer])

    @property
    def partial(self) -> PartialLayer | None:
        """The layer with some, not all, of its expert tensors in RAM."""
        for layer, c in self._counts().items():
            if c < self.per_layer[layer]:
                return PartialLayer(layer, c, self.per_layer[layer])
        return None

    @property
    def largest(self) -> int:
        """The biggest of them: op offload copies it to the GPU for a batch of 32+ tokens, so
        the GPU's compute buffer must hold it."""
        return max((t.nbytes for t in self.tensors), default=0)


def in_ram(profile: ModelProfile, order: ExpertsOrder, count: int) -> ExpertsInRam:
    """The first ``count`` expert tensors to leave the device in ``order``."""
    every = leaving_order(profile, order)
    per_layer: dict[int, int] = {}
    for t in every:
        per_layer[t.layer] = per_layer.get(t.layer, 0) + 1
    return ExpertsInRam(tuple(every[: max(0, count)]), per_layer)


def count_for_layers(profile: ModelProfile, order: ExpertsOrder, layers: int) -> int:
    """How many expert tensors the first ``layers`` layers in ``order`` have."""
    every = leaving_order(profile, order)
    chosen = {t.layer for t in every}
    ranked = sorted(chosen) if order == "first" else sorted(chosen, reverse=True)
    wanted = set(ranked[: max(0, layers)])
    return sum(1 for t in every if t.layer in wanted)


def fewest_that_fit(total: int, fits: Callable[[int], bool]) -> tuple[int, bool]:
    """The fewest expert tensors in RAM (0 to ``total``) with which the rest fits, and whether
    any count fits. Each tensor moved to RAM frees more device memory than op offload's copy
    of the largest one adds, so fitting is monotonic and a bisection finds it."""
    if fits(0):
        return 0, True
    if not fits(total):
        return total, False
    low, high = 0, total  # fits(high), not fits(low)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return high, True
