"""What llama.cpp allocates for a model, per layer and per device, in bytes.

Weights per layer (the output layer counts first), the KV cache, the compute buffer of a
512-token batch, and the runtime overheads and margins a device needs beside them. The
formulas and their accuracy are described in :mod:`.planner`.
"""

from __future__ import annotations

from collections.abc import Mapping

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.machine.hardware import MIB
from mixdesk.core.planning.types import repeating_layers

UBATCH = 512


DEFAULT_CTX = 4096


MIN_AUTO_CTX = 2048


GPU_MARGIN = 256 * MIB


#: The runtime's own use of a device that its free-memory reading before loading misses. An RPC
#: server reads free memory after its runtime started, so that reading already includes it.
RUNTIME_OVERHEAD = {
    "cuda": 300 * MIB,
    "rocm": 300 * MIB,
    "metal": 64 * MIB,
    "vulkan": 256 * MIB,
    "rpc": 0,
}


CPU_RUNTIME_OVERHEAD = 160 * MIB  # Python, llama.cpp and the engine process itself


_CONST = 10 * 1024  # graph inputs (token ids, positions)


def type_size(name: str) -> float:
    """Bytes per value of a ggml type (``"f16"`` -> 2, ``"q8_0"`` -> 34/32)."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]]
    return size / block


def pad_ctx(n_ctx: int) -> int:
    """The context length llama.cpp allocates (at least 256, a multiple of 256)."""
    return max(256, -(-n_ctx // 256) * 256)


def kv_bytes_per_layer(
    profile: ModelProfile, n_ctx: int, type_k: str = "f16", type_v: str = "f16"
) -> int:
    """KV cache bytes of one layer at context ``n_ctx``."""
    per_token = profile.n_head_kv * (
        profile.head_dim_k * type_size(type_k) + profile.head_dim_v * type_size(type_v)
    )
    return int(pad_ctx(n_ctx) * per_token)


def compute_buffer_bytes(
    profile: ModelProfile,
    n_ctx: int,
    *,
    flash_attn: bool,
    type_k: str = "f16",
    type_v: str = "f16",
    ubatch: int = UBATCH,
) -> int:
    """Peak of llama.cpp's compute buffer for one device running the whole graph.

    The terms are the tensors alive at the two peaks of a layer: the attention scores
    (``n_ctx x T x n_head`` floats, unless flash attention avoids them) with their mask, and
    the feed-forward block (three ``n_ff x experts_used x T`` activations). The coefficients
    were fitted to llama.cpp's logged sizes and checked against them.
    """
    k = pad_ctx(n_ctx)
    t = min(ubatch, n_ctx)
    e = profile.n_embd
    used = max(profile.n_expert_used, 1)
    et = e * t * 4
    ffn = 3 * profile.n_ff * used * t * 4 + 2 * et + e * used * t * 4
    logits = profile.vocab_size * t * 4 + 2 * et
    kv_t = profile.n_head_kv * profile.head_dim_k * t * 4
    if not flash_attn:
        attn = k * t * profile.n_head * 4 + 5 * et + 2 * kv_t
        return max(attn, ffn, logits) + k * t * 4 + _CONST
    mask = k * t * 2
    if type_k == "f16" and type_v == "f16":
        return max(ffn, logits) + mask + _CONST
    return max(ffn, logits) + max(mask - et, 0) + _CONST


def output_layer_bytes(profile: ModelProfile) -> int:
    """The output layer's weights (a tied output reuses the token embeddings' bytes)."""
    return (profile.output_bytes or profile.token_embd_bytes) + profile.output_norm_bytes


def _gpu_share(profile: ModelProfile, n_gpu: int) -> tuple[int, int]:
    """(weights bytes on the GPU, repeating layers there) for ``n_gpu_layers = n_gpu``."""
    layers = repeating_layers(n_gpu, profile.n_layers)
    weights = sum(profile.layer_bytes[profile.n_layers - layers :]) if layers else 0
    if n_gpu > 0:
        weights += output_layer_bytes(profile)
    return weights, layers


def cpu_weights(
    profile: ModelProfile, n_gpu: int, experts_ram: Mapping[int, int] | None = None
) -> int:
    """Weights left in RAM: the CPU layers, the token embeddings, the output unless offloaded,
    and the expert tensors kept in RAM (``experts_ram``: their bytes by layer)."""
    layers = repeating_layers(n_gpu, profile.n_layers)
    first_gpu_layer = profile.n_layers - layers
    weights = sum(profile.layer_bytes[:first_gpu_layer]) + profile.token_embd_bytes
    weights += sum(b for i, b in (experts_ram or {}).items() if i >= first_gpu_layer)
    if n_gpu <= 0:
        weights += profile.output_bytes + profile.output_norm_bytes
    return weights
