"""The plan as data: what each device holds, the verdict, and the whole plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from mixdesk.core.planning.speed import Speed

#: What a device is to the plan: an offload device (a GPU or an RPC worker) or the CPU's RAM.
DeviceKind = Literal["gpu", "cpu"]
#: How layers are placed: whole layers on the GPU, or every layer on the GPU with some of the
#: expert tensors in RAM (as llama.cpp's ``--n-cpu-moe`` and its fit do).
Strategy = Literal["layers", "experts"]
STRATEGIES: tuple[Strategy, ...] = ("layers", "experts")
#: Which layers' expert tensors go to RAM first: the first layers' (llama.cpp's
#: ``--n-cpu-moe``) or the last layers'.
ExpertsOrder = Literal["first", "last"]
EXPERTS_ORDERS: tuple[ExpertsOrder, ...] = ("first", "last")


@dataclass(frozen=True)
class DevicePlan:
    """What one device will hold."""

    name: str
    kind: DeviceKind
    total_bytes: int
    free_bytes: int
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    overhead_bytes: int = 0
    margin_bytes: int = 0
    #: Repeating layers on this device, and whether the output layer is here.
    layers: int = 0
    output: bool = False
    #: The device's name in llama.cpp's buffer log lines ("CUDA0", "RPC0[host:port]", "CPU").
    buffer_name: str = ""
    #: Whether ``overhead_bytes`` was measured on this machine (else a default).
    overhead_measured: bool = False
    #: For a worker (RPC device): the bytes a load sends it over the network (its weights;
    #: KV cache and compute buffers are allocated there), and the time that takes at the
    #: measured link speed (None: not measured).
    send_bytes: int = 0
    send_seconds: float | None = None
    #: For a worker: its "host:port", the link speed measured when it was added (bytes/s, 0:
    #: not measured) and the most its cache of large tensors keeps (0: no cache).
    endpoint: str = ""
    link_bytes_per_s: float = 0.0
    cache_bytes: int = 0

    @property
    def used_bytes(self) -> int:
        """Everything planned on this device, margin included."""
        return (
            self.weights_bytes
            + self.kv_bytes
            + self.compute_bytes
            + self.overhead_bytes
            + self.margin_bytes
        )


class Fit(str, Enum):
    """The plan's verdict (a ``str``: it compares and serialises as its value)."""

    FULL = "full"  # every layer and the output on the GPU
    PARTIAL = "partial"  # some layers on the GPU, the rest in RAM
    EXPERTS = "experts"  # every layer on the GPU, some expert tensors in RAM
    CPU = "cpu"  # nothing on a GPU
    NONE = "none"  # does not fit this machine

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PlanFacts:
    """Why the plan is what it is, as numbers: what ``words.describe`` says in sentences."""

    #: The model's weights, one repeating layer's bytes, and the experts kept in RAM.
    model_bytes: int = 0
    layer_bytes: int = 0
    experts_ram_bytes: int = 0
    #: Whether the user fixed which layers' experts go to RAM first (else the speed model
    #: chose), and the speed of the order not chosen (None: not compared, or no speed).
    experts_order_fixed: bool = False
    other_order_speed: Speed | None = None
    #: A local GPU left unused because this llama.cpp build cannot offload ("" when none).
    unused_gpu: str = ""
    #: The offload device with the most free memory ("" when none) and that free memory.
    best_device: str = ""
    best_device_free_bytes: int = 0
    #: Whether the user fixed the layer count (else MixDesk chose it).
    layers_fixed: bool = False
    #: VRAM one more layer would need beyond what is free (0: not asked, or it would fit).
    one_more_layer_short_bytes: int = 0
    #: A smaller context that would have gained one layer, not taken (0: none).
    kept_ctx_over: int = 0


@dataclass(frozen=True)
class PartialLayer:
    """The one layer some (not all) of whose expert tensors stay in RAM."""

    layer: int
    #: Its expert tensors in RAM, of how many it has.
    in_ram: int
    of: int


@dataclass(frozen=True)
class OffloadPlan:
    """The planner's answer."""

    n_gpu_layers: int
    n_layers: int
    n_ctx: int
    ctx_reduced_from: int | None
    fit: Fit
    shortfall_bytes: int
    devices: list[DevicePlan]
    flash_attn: bool
    type_k: str
    type_v: str
    op_offload: bool
    #: What it should run at (None: a setting that does not fit has no speed).
    speed: Speed | None
    #: Slots (layers, the output layer counting as one) per offload device, in llama.cpp's
    #: device order: its ``tensor_split``. Empty with one device.
    tensor_split: tuple[int, ...] = ()
    #: Whether the compute buffers come from a dry run of llama.cpp (else from the formula).
    compute_measured: bool = False
    strategy: Strategy = "layers"
    #: K: layers whose expert tensors ALL stay in RAM (the "experts" strategy).
    experts_in_ram: int = 0
    #: Every expert tensor kept in RAM, by the name llama.cpp loads it under
    #: ("blk.3.ffn_down_exps.weight"): the K layers' and some of the boundary layer's.
    cpu_tensors: tuple[str, ...] = ()
    #: Whose experts go to RAM: the first layers' or the last layers'.
    experts_order: ExpertsOrder = "first"
    #: The boundary layer that keeps some of its expert tensors on the GPU (None: none).
    partial_layer: PartialLayer | None = None
    #: What the words about the plan need beyond the placement (see ``words.describe``).
    facts: PlanFacts = field(default_factory=PlanFacts)

    @property
    def gpu(self) -> DevicePlan | None:
        """The (first) GPU's share, if a GPU is used."""
        return next((d for d in self.devices if d.kind == "gpu"), None)

    @property
    def gpus(self) -> list[DevicePlan]:
        """Every offload device's share, in llama.cpp's device order."""
        return [d for d in self.devices if d.kind == "gpu"]

    @property
    def cpu(self) -> DevicePlan:
        """The CPU RAM share."""
        return next(d for d in self.devices if d.kind == "cpu")

    @property
    def repeating_layers_on_gpu(self) -> int:
        """Repeating layers on the GPU (``n_gpu_layers`` without the output layer)."""
        return repeating_layers(self.n_gpu_layers, self.n_layers)

    @property
    def output_on_gpu(self) -> bool:
        """Whether the output layer is on the GPU (whenever any layer is)."""
        return self.n_gpu_layers > 0

    @property
    def placement_words(self) -> str:
        """Where the layers go, in the words every front end uses ("18 of 32 layers + output on GPU")."""
        words = placement_words(self.n_gpu_layers, self.n_layers)
        if self.cpu_tensors:
            words += f", {experts_phrase(self)} in RAM"
        return words

    @property
    def experts_layers(self) -> range:
        """The layers whose expert tensors all stay in RAM."""
        k = self.experts_in_ram
        return (
            range(k) if self.experts_order == "first" else range(self.n_layers - k, self.n_layers)
        )


def repeating_layers(n_gpu_layers: int, n_layers: int) -> int:
    """Repeating layers llama.cpp puts on the GPU for ``n_gpu_layers`` (the output layer comes first)."""
    return max(0, min(n_gpu_layers - 1, n_layers))


def placement_words(n_gpu_layers: int, n_layers: int) -> str:
    """``n_gpu_layers`` in words that name the output layer's place."""
    if n_gpu_layers <= 0:
        return f"all {n_layers} layers in RAM"
    if n_gpu_layers > n_layers:
        return f"all {n_layers} layers + output on GPU"
    return f"{repeating_layers(n_gpu_layers, n_layers)} of {n_layers} layers + output on GPU"


def experts_phrase(plan: OffloadPlan) -> str:
    """Which expert tensors stay in RAM, in the words every front end uses ("experts of
    layers 0-4 and 2 of 3 expert tensors of layer 5"); empty when none does."""
    layers = plan.experts_layers
    parts = []
    if len(layers) == 1:
        parts.append(f"experts of layer {layers[0]}")
    elif layers:
        parts.append(f"experts of layers {layers[0]}-{layers[-1]}")
    partial = plan.partial_layer
    if partial is not None:
        parts.append(f"{partial.in_ram} of {partial.of} expert tensors of layer {partial.layer}")
    return " and ".join(parts)
