"""How fast a placement generates and reads prompts: a speed model with structure.

Per generated token (llama.cpp's "eval" time, the decode alone), every device reads the
weights it holds that the token uses (all dense weights, ``n_expert_used / n_expert`` of the
expert weights, the output matrix; one row of the token embeddings, nothing), at that
device's throughput *for that ggml type*: a device is bandwidth-bound for some types and
dequantisation-bound for others (Q2_K on a few cores is compute, not memory). Beside the
bytes, every token pays a fixed cost, one per layer (graph nodes and thread barriers) and
one per hop between devices (a partial offload crosses from the CPU to the GPU and back;
each layer whose experts stay in RAM crosses twice; an RPC worker adds its network round
trip)::

    t_token = token_s + n_layers * layer_s + sum over devices, types (bytes / rate) + hops * hop_s

A prompt of N tokens is compute: each device does ``N x 2 x active weights`` of its types
at its measured rate, plus a fixed cost per prompt token and layer; with op offload, the CPU's
weights are copied to the GPU once per 512-token batch and computed there. Of an expert
tensor llama.cpp copies only the experts the batch uses, and tokens of one prompt pick alike,
the more so in later layers (:func:`batch_share`): why experts of the *last* layers in RAM
read prompts faster than the first layers' at equal VRAM. llama.cpp's RPC backend has no op
offload: there the CPU computes its own weights.

The coefficients are measured on this machine by ``mixdesk calibrate``
(:mod:`mixdesk.core.loading.calibrate`) and refined by every answer; until then they are
defaults (per-thread CPU rates per type for a desktop x86 core, the GPU's memory bandwidth),
and every speed says which it is.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from itertools import pairwise

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.planning.expert_names import layers_of, loaded_name

#: Tokens of the prompt the plan quotes a prompt speed for.
PROMPT_TOKENS = 512


class SpeedSource(str, Enum):
    """Where a speed comes from."""

    MEASURED = "measured on this machine"
    ESTIMATE = "estimate"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DeviceRates:
    """One device's throughput by ggml type name ("Q4_K", "F16"...)."""

    #: Bytes of weights of each type read per second while generating.
    eval_bytes_per_s: Mapping[str, float]
    #: Weights of each type (elements) computed per second for prompt tokens
    #: (a weight per token is 2 flops).
    prompt_weights_per_s: Mapping[str, float]
    #: What a token pays to cross to this device and back (0 for the CPU).
    hop_s: float = 0.0
    #: Seconds per byte that memory adds beyond the dequantisation when the weights do not
    #: stay in the caches (measured with a model larger than them; 0: none known).
    memory_s_per_byte: float = 0.0
    #: The same by ggml type where measured for several (large Q2_K, Q4_K_M and Q8_0 models:
    #: a dequantisation-bound type waits on memory more per byte than a bandwidth-bound one);
    #: other types between them by bits per weight.
    memory_by_type: Mapping[str, float] = field(default_factory=dict)
    #: Bytes of weights held on the device that the caches keep (the type models' size):
    #: a token misses the caches for the share of its bytes beyond them, in proportion to
    #: what the device holds (tokens pick other experts: the whole of them is the working set).
    memory_cached_bytes: float = 0.0
    #: What a token pays, per second of the shorter of this device's part and the CPU's, when
    #: it takes turns between them on shared cores: a worker on this very machine (a loopback
    #: worker) and the app's threads slow each other (its relays, the waiting threads' spin);
    #: measured with a model split between the two, about 0 for a worker elsewhere.
    contention: float = 0.0

    def eval_rate(self, type_name: str) -> float:
        """Bytes/s for ``type_name``; a type not measured takes its nearest measured one."""
        return _lookup(self.eval_bytes_per_s, type_name)

    def memory_cost(self, type_name: str) -> float:
        """Seconds per byte of ``type_name`` that memory adds (between the measured types by
        bits per weight, the nearest one beyond them)."""
        if not self.memory_by_type:
            return self.memory_s_per_byte
        if type_name in self.memory_by_type:
            return self.memory_by_type[type_name]
        bits = _BITS.get(type_name, 4.5)
        points = sorted((_BITS.get(t, 4.5), v) for t, v in self.memory_by_type.items())
        if bits <= points[0][0]:
            return points[0][1]
        for (b0, v0), (b1, v1) in pairwise(points):
            if bits <= b1:
                return v0 + (v1 - v0) * (bits - b0) / (b1 - b0) if b1 > b0 else v1
        return points[-1][1]

    def memory_time(self, eval_bytes: Mapping[str, float], held_bytes: float = 0.0) -> float:
        """Seconds memory adds to a token reading ``eval_bytes`` (bytes by type) of the
        ``held_bytes`` of weights the device holds (0: as many as it reads): the share of them
        beyond :attr:`memory_cached_bytes` misses the caches, at each type's cost."""
        return miss_share(self.memory_cached_bytes, eval_bytes, held_bytes) * sum(
            b * self.memory_cost(t) for t, b in eval_bytes.items()
        )

    def prompt_rate(self, type_name: str) -> float:
        """Weights/s for prompt tokens of ``type_name``."""
        return _lookup(self.prompt_weights_per_s, type_name)


#: Bits per weight of the ggml types, to find a type's nearest measured neighbour.
_BITS = {
    "Q2_K": 2.625,
    "IQ2_XXS": 2.06,
    "IQ2_XS": 2.31,
    "IQ3_XXS": 3.06,
    "Q3_K": 3.4375,
    "IQ4_XS": 4.25,
    "Q4_0": 4.5,
    "IQ4_NL": 4.5,
    "Q4_1": 5.0,
    "Q4_K": 4.5,
    "Q5_0": 5.5,
    "Q5_1": 6.0,
    "Q5_K": 5.5,
    "Q6_K": 6.5625,
    "Q8_0": 8.5,
    "BF16": 16.0,
    "F16": 16.0,
    "F32": 32.0,
}


def miss_share(cached: float, eval_bytes: Mapping[str, float], held_bytes: float = 0.0) -> float:
    """The share of a token's bytes that comes from memory: what the device holds beyond what
    the caches keep (``held_bytes`` 0: the token's own bytes are all it holds)."""
    held = held_bytes or sum(eval_bytes.values())
    return 1.0 - cached / held if held > cached else 0.0


def _lookup(rates: Mapping[str, float], type_name: str) -> float:
    if type_name in rates:
        return rates[type_name]
    bits = _BITS.get(type_name, 4.5)
    nearest = min(rates, key=lambda t: abs(_BITS.get(t, 4.5) - bits))
    return rates[nearest]


@dataclass(frozen=True)
class SpeedModel:
    """The coefficients of the speed model for one machine."""

    cpu: DeviceRates
    #: The CPU thread count the CPU's rates are for.
    cpu_threads: int
    #: Offload devices' rates, by llama.cpp's device name ("CUDA0", "RPC0[host:port]").
    devices: Mapping[str, DeviceRates] = field(default_factory=dict)
    token_s: float = 0.0
    layer_s: float = 0.0
    #: Fixed cost per prompt token and layer (the attention and the small ops).
    prompt_layer_s: float = 0.0
    #: Fixed cost per prompt token whatever the layers (embedding, norms, the batch's set-up):
    #: what makes a small model's prompt slower than its weights say.
    prompt_token_s: float = 0.0
    #: Measured on this machine (else defaults).
    source: SpeedSource = SpeedSource.ESTIMATE
    #: The expected relative error of a prediction (0.15: within 15%).
    error: float = 0.5


@dataclass(frozen=True)
class Speed:
    """What a plan should run at."""

    eval_tps: float
    #: Prompt tokens per second for a prompt of :data:`PROMPT_TOKENS` tokens.
    prompt_tps: float
    source: SpeedSource
    error: float

    def ttft_s(self, prompt_tokens: int) -> float:
        """Seconds to the first token of an answer to a prompt of ``prompt_tokens`` tokens."""
        return prompt_tokens / self.prompt_tps if self.prompt_tps > 0 else math.inf


# --- constants of llama.cpp's behaviour ---------------------------------------------

#: PCIe: op offload copies the CPU's weights to the GPU at this rate for big batches.
_PCIE_BYTES_PER_S = 12e9
#: How alike a prompt's tokens pick experts in the last layer: it routes a batch as if only
#: one token in 1 + this many chose freely (the first layer: every token). Fitted to the one
#: published measurement (ik_llama.cpp PR 2262: experts of the last K layers in RAM read
#: prompts at 2234 tok/s, of the first K at 1811, a 35B MoE with 256 experts on an RTX 3090,
#: traced there to later layers activating fewer experts per batch); Measure checks it here.
_ROUTING_CONCENTRATION = 80.0


# --- what each device does per token -----------------------------------------------------


@dataclass(frozen=True)
class Work:
    """What one device does per generated token, by ggml type."""

    #: Bytes of weights read per generated token.
    eval_bytes: dict[str, float] = field(default_factory=dict)
    #: Weights (elements) computed per prompt token.
    prompt_weights: dict[str, float] = field(default_factory=dict)
    #: All the weight bytes it holds.
    held_bytes: int = 0
    #: What op offload copies of them to the GPU per prompt batch (the experts it uses).
    batch_bytes: float = 0.0

    def add(self, type_name: str, nbytes: float, weights: float, held: int, batch: float) -> Work:
        """This work plus one tensor's."""
        eval_bytes = dict(self.eval_bytes)
        prompt = dict(self.prompt_weights)
        eval_bytes[type_name] = eval_bytes.get(type_name, 0.0) + nbytes
        prompt[type_name] = prompt.get(type_name, 0.0) + weights
        return Work(eval_bytes, prompt, self.held_bytes + held, self.batch_bytes + batch)


def batch_share(profile: ModelProfile, layer: int, tokens: int = PROMPT_TOKENS) -> float:
    """The share of layer ``layer``'s experts that a batch of ``tokens`` prompt tokens uses:
    what op offload copies of its expert tensors (llama.cpp copies only the experts used).

    At depth ``d`` (0: the first layer, 1: the last) the batch routes as if only
    ``tokens / (1 + C d)`` tokens chose freely (:data:`_ROUTING_CONCENTRATION`), each picking
    ``n_expert_used`` of ``n_expert``; an expert none of them picks is not copied.
    """
    if not profile.n_expert:
        return 1.0
    depth = layer / max(profile.n_layers - 1, 1)
    draws = tokens / (1 + _ROUTING_CONCENTRATION * depth)
    unpicked = 1 - min(profile.n_expert_used, profile.n_expert) / profile.n_expert
    return 1 - math.pow(unpicked, draws)


def device_work(
    profile: ModelProfile,
    layer_device: Mapping[int, str],
    output_device: str,
    cpu_tensors: Collection[str] = (),
) -> dict[str, Work]:
    """Per device ("CPU" or an offload device's name): what a token costs it.

    Args:
        profile: the model (its tensor table).
        layer_device: the device of each repeating layer (missing: the CPU).
        output_device: where the output layer is.
        cpu_tensors: expert tensors kept in RAM, by the name llama.cpp loads them under.
    """
    share = profile.n_expert_used / profile.n_expert if profile.n_expert else 1.0
    work: dict[str, Work] = {}
    for t in profile.tensors:
        n = math.prod(t.shape)
        if t.name == "token_embd.weight":
            continue  # one row per token: nothing to speak of
        batch = 1.0
        if t.name.startswith("blk."):
            layer = int(t.name.split(".")[1])
            expert = loaded_name(t.name)
            device = "CPU" if expert in cpu_tensors else layer_device.get(layer, "CPU")
            used = share if expert else 1.0
            batch = batch_share(profile, layer) if expert else 1.0
        else:
            device, used = output_device, 1.0
        work[device] = work.get(device, Work()).add(
            t.type_name, t.nbytes * used, n * used, t.nbytes, t.nbytes * batch
        )
    return work


def hops(
    layer_device: Mapping[int, str],
    output_device: str,
    n_layers: int,
    ram_layers: Collection[int] = (),
) -> dict[str, int]:
    """Crossings per token to each offload device and back: the graph's splits
    (``ram_layers``: layers with expert tensors in RAM)."""
    found: dict[str, int] = {}
    previous = "CPU"
    for i in range(n_layers):
        device = layer_device.get(i, "CPU")
        if device != "CPU" and i in ram_layers:
            found[device] = found.get(device, 0) + 1  # its experts run on the CPU
        if device not in (previous, "CPU"):
            found[device] = found.get(device, 0) + 1
        previous = device
    if output_device not in (previous, "CPU"):
        found[output_device] = found.get(output_device, 0) + 1
    return found


def offloads_ops(device: str) -> bool:
    """Whether llama.cpp runs big batches' ops on the CPU's weights on ``device`` (op
    offload): a GPU does, an RPC device does not (its backend has no ``offload_op``)."""
    return device != "CPU" and not device.startswith("RPC")


def predict(
    model: SpeedModel,
    profile: ModelProfile,
    *,
    layer_device: Mapping[int, str],
    output_device: str,
    cpu_tensors: Collection[str] = (),
    threads: int,
    op_offload: bool = False,
) -> Speed:
    """The speed of one placement with ``threads`` CPU threads (``cpu_tensors``: the expert
    tensors kept in RAM, by name)."""
    cpu_scale = min(1.0, threads / model.cpu_threads) if model.cpu_threads else 1.0
    work = device_work(profile, layer_device, output_device, cpu_tensors)
    n = profile.n_layers
    eval_s = model.token_s + n * model.layer_s
    prompt_s = model.prompt_token_s + n * model.prompt_layer_s
    crossings = hops(layer_device, output_device, n, layers_of(cpu_tensors))
    fastest = None
    parts = {}  # each device's seconds of a token's work
    for device, w in work.items():
        rates = model.cpu if device == "CPU" else model.devices.get(device, model.cpu)
        scale = cpu_scale if device == "CPU" or device not in model.devices else 1.0
        part = sum(b / (rates.eval_rate(t) * scale) for t, b in w.eval_bytes.items())
        part += rates.memory_time(w.eval_bytes, w.held_bytes) / scale
        parts[device] = part
        eval_s += part
        if device != "CPU":
            eval_s += crossings.get(device, 0) * rates.hop_s
            faster = fastest is None or rates.prompt_rate("F16") > fastest[1].prompt_rate("F16")
            if offloads_ops(device) and faster:
                fastest = (device, rates)
    for device, part in parts.items():
        if device != "CPU" and device in model.devices:
            eval_s += model.devices[device].contention * min(part, parts.get("CPU", 0.0))
    for device, w in work.items():
        if device == "CPU" and op_offload and fastest is not None:
            # big batches: the CPU's weights go to the GPU once per batch and are computed there
            prompt_s += w.batch_bytes / _PCIE_BYTES_PER_S / PROMPT_TOKENS
            prompt_s += sum(v / fastest[1].prompt_rate(t) for t, v in w.prompt_weights.items())
            continue
        rates = model.cpu if device == "CPU" else model.devices.get(device, model.cpu)
        scale = cpu_scale if device == "CPU" or device not in model.devices else 1.0
        prompt_s += sum(v / (rates.prompt_rate(t) * scale) for t, v in w.prompt_weights.items())
    return Speed(
        eval_tps=round(1.0 / eval_s, 2),
        prompt_tps=round(1.0 / prompt_s, 1) if prompt_s > 0 else 0.0,
        source=model.source,
        error=model.error,
    )
