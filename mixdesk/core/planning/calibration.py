"""What the GPU runtime really uses on this machine, measured after loads, used by the next plan.

The planner adds a runtime overhead per GPU (the CUDA context, cuBLAS workspaces) that the
free memory read before loading does not include; its default is a judgement (300 MiB for
CUDA). After every load with layers on a device the engine reads that device's free memory
before loading, after loading and after the first prompt batch (when the runtime's lazy
allocations have happened); what went beyond llama.cpp's own buffers is the overhead. It is
kept per device and llama-cpp-python version (another build may differ), and the next plan
uses it and says that it is measured.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from mixdesk import paths
from mixdesk.core.engine.protocol import ModelInfo

log = logging.getLogger(__name__)


@functools.cache
def installed_llama_version() -> str:
    """The installed llama-cpp-python's version (without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return "unknown"


def store_path() -> Path:
    """Where measured overheads are kept."""
    return paths.data_dir() / "calibration.json"


#: What the store holds, by its path: read once per process (every plan asks, and the
#: offload panel plans at each move of its slider, on the GUI thread), kept by :func:`record`.
_cache: dict[Path, dict[str, int]] = {}


def _read() -> dict[str, int]:
    path = store_path()
    if path not in _cache:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        _cache[path] = {str(k): int(v) for k, v in data.items() if isinstance(v, int) and v >= 0}
    return dict(_cache[path])


def _key(device: str, version: str) -> str:
    return f"{version} {device}"


def measured_overheads(version: str) -> dict[str, int]:
    """Overheads measured with llama-cpp-python ``version``, by device buffer name."""
    prefix = f"{version} "
    return {k[len(prefix) :]: v for k, v in _read().items() if k.startswith(prefix)}


def overheads_seen(info: ModelInfo, after_batch: Mapping[str, int]) -> dict[str, int]:
    """Per device: memory that left between before loading and after the first batch, less
    llama.cpp's own buffers there (never below 0)."""
    found = {}
    for device, (before, _after_load) in info.device_free.items():
        if device not in after_batch:
            continue
        buffers = info.buffers.on(device)
        found[device] = max(0, before - after_batch[device] - buffers)
    return found


def record(info: ModelInfo, after_batch: Mapping[str, int], version: str) -> dict[str, int]:
    """Keep the overheads this load showed (the newest reading wins); returns them."""
    seen = overheads_seen(info, after_batch)
    if not seen:
        return seen
    data = _read()
    data.update({_key(device, version): overhead for device, overhead in seen.items()})
    path = store_path()
    paths.ensure_dir(path.parent)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    _cache[path] = data
    log.info("runtime overhead measured: %s", seen)
    return seen
