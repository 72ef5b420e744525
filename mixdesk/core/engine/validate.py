"""Checks of a load configuration and of sampling settings before they reach the engine:
one sentence for a value that makes no sense."""

from __future__ import annotations

from pathlib import Path

from mixdesk import errors
from mixdesk.core.engine.protocol import (
    KV_CACHE_TYPES,
    LoadConfig,
    SamplingParams,
)
from mixdesk.errors import (
    InvalidArgumentError,
    ModelNotFoundError,
)


def validate_load_config(config: LoadConfig) -> None:
    """Reject settings that make no sense, and a missing model file, before starting anything.

    Raises:
        InvalidArgumentError: a setting is out of range.
        ModelNotFoundError: the file does not exist.
        NotAGgufError: not a GGUF file (NotARegularFileError: a FIFO, a device or a folder).
    """
    if config.n_ctx < 0 or config.n_ctx > 1 << 22:
        raise InvalidArgumentError(
            f"Context length {config.n_ctx} is out of range; use 0 to 4194304."
        )
    if config.n_batch < 1:
        raise InvalidArgumentError(f"Batch size {config.n_batch} must be at least 1.")
    if config.n_threads is not None and config.n_threads < 1:
        raise InvalidArgumentError(f"Thread count {config.n_threads} must be at least 1.")
    if config.n_gpu_layers < -1:
        raise InvalidArgumentError(
            f"GPU layers {config.n_gpu_layers} is out of range; use -1 (all), 0 (none) or a count."
        )
    for name, value in (("K", config.type_k), ("V", config.type_v)):
        if value not in KV_CACHE_TYPES:
            raise InvalidArgumentError(
                f"KV cache type {name}={value!r} is unknown; use one of {', '.join(KV_CACHE_TYPES)}."
            )
    path = Path(config.model_path)
    if not path.exists():
        raise ModelNotFoundError(str(path))
    from mixdesk.core.gguf.header import open_model_file

    with open_model_file(path) as fh:  # a FIFO or a device is refused here, never read
        magic = fh.read(4)
    if magic != b"GGUF":
        raise errors.NotAGgufError(str(path))


def validate_sampling(sampling: SamplingParams) -> None:
    """Reject sampling settings outside llama.cpp's meaningful ranges."""
    checks = [
        (sampling.temperature >= 0, f"Temperature {sampling.temperature} must be 0 or more."),
        (0 < sampling.top_p <= 1, f"top-p {sampling.top_p} must be above 0 and at most 1."),
        (sampling.top_k >= 0, f"top-k {sampling.top_k} must be 0 (off) or more."),
        (0 <= sampling.min_p <= 1, f"min-p {sampling.min_p} must be between 0 and 1."),
        (sampling.repeat_penalty > 0, f"Repeat penalty {sampling.repeat_penalty} must be above 0."),
        (sampling.seed is None or sampling.seed >= 0, f"Seed {sampling.seed} must be 0 or more."),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidArgumentError(message)
