"""What this machine measured, for the next plan: runtime overheads, the speed model's
coefficients, and the speeds real answers ran at.

- **Runtime overheads.** The planner adds a runtime overhead per GPU (the CUDA context,
  cuBLAS workspaces) that the free memory read before loading does not include; its default is
  a judgement (300 MiB for CUDA). After every load with layers on a device the engine reads
  that device's free memory before loading, after loading and after the first prompt batch;
  what went beyond llama.cpp's own buffers is the overhead.
- **Speed coefficients** (:class:`~mixdesk.core.planning.speed.SpeedModel`), fitted by
  ``mixdesk calibrate`` (:mod:`mixdesk.core.loading.calibrate`).
- **Speeds seen.** Every answer's eval and prompt speed (llama.cpp's counters) for its exact
  setting (model file, layers, strategy, threads, context): the plan then quotes what this
  machine did, "measured on this machine".

Everything is kept per llama-cpp-python version (another build may differ) in one JSON file.
The store is made once by a front end and passed in; a :class:`Calibration` is a value the
planner reads (the offload panel plans at every move of its slider, on the GUI thread: it
never reads a file).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mixdesk import paths
from mixdesk.core.engine.protocol import ModelInfo
from mixdesk.core.planning.speed import DeviceRates, SpeedModel, SpeedSource

log = logging.getLogger(__name__)

#: The file format; a flat file of overheads (format 1) is still read.
FORMAT = 2


@functools.cache
def installed_llama_version() -> str:
    """The installed llama-cpp-python's version (without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class SeenSpeed:
    """The speeds one setting ran at on this machine (the last answer's)."""

    eval_tps: float
    prompt_tps: float


@dataclass(frozen=True)
class Calibration:
    """What this machine measured (everything empty: nothing yet, the defaults apply)."""

    #: Runtime overhead per offload device (llama.cpp's device name: "CUDA0").
    overheads: Mapping[str, int] = field(default_factory=dict)
    #: The speed model's coefficients fitted here (None: the defaults).
    speed: SpeedModel | None = None
    #: Speeds answers ran at, by :func:`setting_key`.
    seen: Mapping[str, SeenSpeed] = field(default_factory=dict)


def setting_key(
    model_name: str,
    model_bytes: int,
    *,
    n_gpu_layers: int,
    experts: str,
    threads: int,
    n_ctx: int,
    devices: tuple[str, ...] = (),
) -> str:
    """What makes a speed the same: the model file, the placement (``experts``: the expert
    tensors in RAM, as a count and an order, "6last"; "0" for none), the threads, the context."""
    where = ",".join(devices)
    return (
        f"{model_name}:{model_bytes} ngl={n_gpu_layers} k={experts} "
        f"t={threads} ctx={n_ctx} on={where}"
    )


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


class CalibrationStore:
    """The file where a machine's measurements are kept, for one llama-cpp-python version."""

    def __init__(self, path: Path, version: str) -> None:
        self.path = path
        self.version = version

    @classmethod
    def default(cls) -> CalibrationStore:
        """The user's store (in MixDesk's data folder) for the installed llama-cpp-python."""
        return cls(paths.data_dir() / "calibration.json", installed_llama_version())

    # -- reading ------------------------------------------------------------------------

    def _data(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"format": FORMAT}
        if not isinstance(data, dict):
            return {"format": FORMAT}
        if data.get("format") != FORMAT:  # format 1: {"VERSION DEVICE": bytes}
            flat = {k: v for k, v in data.items() if isinstance(v, int) and v >= 0}
            return {"format": FORMAT, "overheads": flat}
        return data

    def read(self) -> Calibration:
        """What is kept for this version (a damaged file reads as nothing measured)."""
        data = self._data()
        prefix = f"{self.version} "
        overheads = {
            k[len(prefix) :]: v
            for k, v in _dict(data.get("overheads")).items()
            if k.startswith(prefix) and isinstance(v, int) and v >= 0
        }
        speed = _speed_model(_dict(data.get("speed")).get(self.version))
        seen = {}
        for key, value in _dict(_dict(data.get("seen")).get(self.version)).items():
            figures = _dict(value)
            eval_tps, prompt_tps = figures.get("eval_tps"), figures.get("prompt_tps")
            if _positive(eval_tps) and isinstance(prompt_tps, float | int):
                seen[key] = SeenSpeed(float(eval_tps), float(prompt_tps))  # type: ignore[arg-type]
        return Calibration(overheads=overheads, speed=speed, seen=seen)

    # -- writing ------------------------------------------------------------------------

    def _write(self, data: dict[str, Any]) -> None:
        paths.ensure_dir(self.path.parent)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)

    def record_overheads(self, info: ModelInfo, after_batch: Mapping[str, int]) -> dict[str, int]:
        """Keep the overheads this load showed (the newest reading wins); returns them."""
        seen = overheads_seen(info, after_batch)
        if not seen:
            return seen
        data = self._data()
        overheads = _dict(data.get("overheads"))
        overheads.update({f"{self.version} {device}": v for device, v in seen.items()})
        data["overheads"] = overheads
        self._write(data)
        log.info("runtime overhead measured: %s", seen)
        return seen

    def record_speed_model(self, model: SpeedModel) -> None:
        """Keep the coefficients ``mixdesk calibrate`` fitted (replacing the last ones)."""
        data = self._data()
        speed = _dict(data.get("speed"))
        speed[self.version] = asdict(model)
        data["speed"] = speed
        self._write(data)

    def record_answer(self, key: str, eval_tps: float, prompt_tps: float) -> None:
        """Keep the speeds an answer ran at for its setting (see :func:`setting_key`)."""
        data = self._data()
        seen = _dict(data.get("seen"))
        mine = _dict(seen.get(self.version))
        mine[key] = {"eval_tps": round(eval_tps, 3), "prompt_tps": round(prompt_tps, 3)}
        seen[self.version] = mine
        data["seen"] = seen
        self._write(data)

    def clear(self) -> None:
        """Forget everything measured (all versions)."""
        self.path.unlink(missing_ok=True)


def _dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _rates(value: object) -> DeviceRates | None:
    data = _dict(value)
    eval_rates = {
        k: float(v) for k, v in _dict(data.get("eval_bytes_per_s")).items() if _positive(v)
    }
    prompt_rates = {
        k: float(v) for k, v in _dict(data.get("prompt_weights_per_s")).items() if _positive(v)
    }
    hop = data.get("hop_s", 0.0)
    memory = data.get("memory_s_per_byte", 0.0)
    contention = data.get("contention", 0.0)  # not kept before: none known
    by_type = _dict(data.get("memory_by_type"))
    numbers = (hop, memory, contention, *by_type.values())
    numbers_ok = all(
        isinstance(n, float | int) and not isinstance(n, bool) and n >= 0 for n in numbers
    )
    if not eval_rates or not prompt_rates or not numbers_ok:
        return None
    # what the caches keep, by the weights held (a file from before kept a token's bytes
    # under another name: read as nothing kept, every byte from memory)
    free = data.get("memory_cached_bytes", 0.0)
    if not (isinstance(free, float | int) and not isinstance(free, bool) and free >= 0):
        return None
    memory_by_type = {k: float(v) for k, v in by_type.items()}
    return DeviceRates(
        eval_rates,
        prompt_rates,
        float(hop),
        float(memory),
        memory_by_type,
        memory_cached_bytes=float(free),
        contention=float(contention),
    )


def _positive(value: object) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and value > 0


def _speed_model(value: object) -> SpeedModel | None:
    """A stored speed model, or None when it is missing or damaged."""
    data = _dict(value)
    cpu = _rates(data.get("cpu"))
    devices = {name: _rates(rates) for name, rates in _dict(data.get("devices")).items()}
    numbers = [data.get(k) for k in ("token_s", "layer_s", "prompt_layer_s", "error")]
    threads = data.get("cpu_threads")
    if (
        cpu is None
        or any(r is None for r in devices.values())
        or not all(isinstance(n, float | int) and n >= 0 for n in numbers)
        or not isinstance(threads, int)
        or threads < 1
    ):
        return None
    token_s, layer_s, prompt_layer_s, error = (float(n) for n in numbers)  # type: ignore[arg-type]
    prompt_token_s = data.get("prompt_token_s", 0.0)  # a file from before: no such cost known
    if not isinstance(prompt_token_s, float | int) or prompt_token_s < 0:
        return None
    return SpeedModel(
        cpu=cpu,
        cpu_threads=threads,
        devices={k: v for k, v in devices.items() if v is not None},
        token_s=token_s,
        layer_s=layer_s,
        prompt_layer_s=prompt_layer_s,
        prompt_token_s=float(prompt_token_s),
        source=SpeedSource.MEASURED,
        error=error,
    )
