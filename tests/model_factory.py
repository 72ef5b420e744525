"""Real GGUF files for tests and benchmarks, generated in about a second.

Builds on :mod:`mixdesk.core.synthetic_model` (the writer the doctor also uses) and adds
llama.cpp's own quantiser (Q4_K_M, Q2_K), TheBloke's legacy per-expert layout, and broken
files: truncated, wrong magic, a duplicated vocabulary entry that makes llama.cpp abort,
an unknown architecture, a model with no chat template.

Benchmarks import this module too (``from tests.model_factory import ...``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from mixdesk.core.synthetic_model import MID, TINY, ModelSpec, with_changes, write_model

QUANTS = ("F32", "F16", "Q4_K_M", "Q2_K", "Q8_0", "Q4_0")

__all__ = [
    "CHATML_TEMPLATE_FOR_TESTS",
    "MID",
    "QUANTS",
    "TINY",
    "ModelSpec",
    "broken_magic",
    "cached_model",
    "duplicate_vocab",
    "make_model",
    "quantize",
    "text_file",
    "truncated",
    "unknown_architecture",
    "with_changes",
]


def quantize(src: Path, dst: Path, quant: str, *, threads: int | None = None) -> Path:
    """Quantise ``src`` to ``dst`` with llama.cpp's own quantiser (``llama_model_quantize``)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {quant}) returned {rc}")
    return dst


def make_model(
    directory: Path, spec: ModelSpec = TINY, quant: str = "F32", *, name: str | None = None
) -> Path:
    """Write a model of shape ``spec`` in ``quant`` (F32/F16 direct, others via the quantiser)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = name or f"model-{_spec_key(spec)}"
    if quant in ("F32", "F16"):
        return write_model(
            directory / f"{stem}.{quant}.gguf", with_changes(spec, dtype=quant.lower())
        )
    source = write_model(directory / f"{stem}.source.gguf", spec)
    try:
        return quantize(source, directory / f"{stem}.{quant}.gguf", quant)
    finally:
        source.unlink()


def cached_model(cache_dir: Path, spec: ModelSpec, quant: str) -> Path:
    """Return a generated model from ``cache_dir``, making it the first time (benchmarks)."""
    path = cache_dir / f"model-{_spec_key(spec)}.{quant}.gguf"
    if not path.exists():
        made = make_model(cache_dir / "tmp", spec, quant)
        made.replace(path)
        shutil.rmtree(cache_dir / "tmp", ignore_errors=True)
    return path


def truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of a model: an interrupted download."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def broken_magic(src: Path, dst: Path) -> Path:
    """Copy a model with its GGUF signature damaged."""
    data = bytearray(src.read_bytes())
    data[:4] = b"GGUX"
    dst.write_bytes(bytes(data))
    return dst


def duplicate_vocab(directory: Path) -> Path:
    """A model whose vocabulary lists one token twice: llama.cpp aborts the process loading it."""
    return write_model(
        directory / "duplicate-vocab.gguf", with_changes(TINY, duplicate_token=True, n_layers=1)
    )


def unknown_architecture(directory: Path) -> Path:
    """A well-formed GGUF with an architecture llama.cpp does not know."""
    return write_model(
        directory / "unknown-arch.gguf",
        with_changes(TINY, architecture="mixdeskunknown", n_layers=1),
    )


def text_file(directory: Path) -> Path:
    """Not a model at all."""
    path = directory / "notes.gguf"
    path.write_text("# Not a model\nJust some text a user picked by mistake.\n")
    return path


def _spec_key(spec: ModelSpec) -> str:
    return hashlib.sha256(repr(sorted(asdict(spec).items())).encode()).hexdigest()[:10]


#: A template with a system role (ChatML), to test that system prompts are kept, not folded.
CHATML_TEMPLATE_FOR_TESTS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
