"""Plan against a real NVIDIA GPU: the check the test suite cannot make (it has no GPU).

Run on a machine with an NVIDIA GPU, nvcc and CMake (never part of the suite):

    python benchmarks/gpu_truth.py pack OUT_DIR      # here, with network: sources + build wheels
    python benchmarks/gpu_truth.py run OUT_DIR       # there, without network

``pack`` takes llama-cpp-python's source archive (76 MB) and keeps only what the build needs
(the vendored llama.cpp without its models, docs, examples and tests), plus the wheels its
build backend needs, so the bundle fits a 64 MiB transfer. ``run`` builds llama-cpp-python
with CUDA and RPC into a fresh virtual environment, generates a Mixtral-shaped model, fills
the card so that only ``--vram`` stays free (cudaMalloc of the rest), and for every
``n_gpu_layers`` and both strategies records: planned vs CUDA buffers per device, the CUDA
context overhead observed by NVML (free memory before loading, after loading, after the
first 512-token batch), whether the load failed, and tok/s. It writes
``docs/gpu-truth-DATE-CARD.md`` and exits 1 when a buffer is off by more than the
tolerances the suite uses on the RPC device (1% weights/KV, 3% compute).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_VERSION = "0.3.36"
#: Parts of the sdist the CUDA build does not need (models alone are tens of MB).
DROP = (
    "vendor/llama.cpp/models",
    "vendor/llama.cpp/docs",
    "vendor/llama.cpp/examples",
    "vendor/llama.cpp/tests",
    "vendor/llama.cpp/tools/server/public",
    "vendor/llama.cpp/media",
    "docs",
    "examples",
    "tests",
)


#: What building and importing llama-cpp-python needs, brought as wheels (no network there).
BUILD_DEPS = (
    "scikit-build-core[pyproject]",
    "cmake",
    "ninja",
    "numpy",
    "typing-extensions",
    "diskcache",
    "jinja2",
    "MarkupSafe",
)


def pack(out: Path) -> int:
    """Download the sdist and the build backend's wheels; keep what the build needs."""
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [
            *pip,
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(out),
            f"llama-cpp-python=={LLAMA_VERSION}",
        ],
        check=True,
    )
    subprocess.run(
        [
            *pip,
            "download",
            "-d",
            str(out / "wheels"),
            *BUILD_DEPS,
        ],
        check=True,
    )
    sdist = next(out.glob(f"llama_cpp_python-{LLAMA_VERSION}.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(out, filter="data")
    sdist.unlink()
    src = out / f"llama_cpp_python-{LLAMA_VERSION}"
    for part in DROP:
        shutil.rmtree(src / part, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"packed {out}: {size / 2**20:.1f} MiB")
    return 0 if size < 64 * 2**20 else 1


def _build(pack_dir: Path, venv: Path) -> Path:
    """A venv with llama-cpp-python built for this GPU (CUDA + RPC) and MixDesk installed."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    wheels = str(pack_dir / "wheels")
    pip = [str(py), "-m", "pip", "install", "--no-index", "--find-links", wheels]
    subprocess.run(
        [
            *pip,
            *BUILD_DEPS,
        ],
        check=True,
    )
    env = {
        **os.environ,
        "CMAKE_ARGS": "-DGGML_CUDA=on -DGGML_RPC=ON -DCMAKE_CUDA_ARCHITECTURES=native",
    }
    started = time.monotonic()
    subprocess.run(
        [
            *pip,
            "--no-build-isolation",
            "--no-deps",
            str(pack_dir / f"llama_cpp_python-{LLAMA_VERSION}"),
        ],
        check=True,
        env=env,
    )
    print(f"built llama-cpp-python with CUDA in {time.monotonic() - started:.0f} s")
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    return py


def _fill_card(keep_free: int) -> ctypes.c_void_p | None:
    """Allocate all but ``keep_free`` bytes of GPU 0 (held until this process ends)."""
    cudart = ctypes.CDLL("libcudart.so")
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    take = free.value - keep_free
    if take <= 0:
        return None
    ptr = ctypes.c_void_p()
    if cudart.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(take)) != 0:
        raise SystemExit(f"could not hold {take} bytes of the card")
    return ptr


def run(pack_dir: Path, vram: int) -> int:
    """Build, then measure in the new venv (this function re-runs itself there)."""
    venv = pack_dir / "venv"
    py = venv / "bin" / "python" if venv.exists() else _build(pack_dir, venv)
    return subprocess.run(
        [str(py), __file__, "measure", str(pack_dir), "--vram", str(vram)], check=False
    ).returncode


def measure(out_dir: Path, vram: int) -> int:
    """In the CUDA venv: every n_gpu_layers, both strategies, planned vs real."""
    import pynvml

    from mixdesk.core.chat.template import ChatMessage
    from mixdesk.core.engine import Engine, SamplingParams
    from mixdesk.core.loading.choices import LoadChoices
    from mixdesk.core.loading.service import plan_load
    from mixdesk.core.machine.hardware import detect
    from tests.helpers import model_factory as mf
    from tests.helpers.devices import mismatches

    held = _fill_card(vram)
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    card = pynvml.nvmlDeviceGetName(handle)
    model = mf.make_model(out_dir / "models", mf.MID, "Q4_K_M", name="mid")
    hardware = detect()
    rows: list[dict[str, object]] = []
    problems: list[str] = []
    for strategy in ("layers", "experts"):
        counts = range(mf.MID.n_layers + 2) if strategy == "layers" else [None]
        for ngl in counts:
            choices = LoadChoices(n_gpu_layers=ngl, n_ctx=4096, use_mmap=False, strategy=strategy)
            before = pynvml.nvmlDeviceGetMemoryInfo(handle).free
            row: dict[str, object] = {"strategy": strategy, "n_gpu_layers": ngl}
            try:
                with Engine(log_dir=out_dir / "logs") as engine:
                    setup = plan_load(model, hardware, choices, engine=engine)
                    info = engine.load(setup.config)
                    loaded = pynvml.nvmlDeviceGetMemoryInfo(handle).free
                    done = engine.chat(
                        [ChatMessage("user", "word " * 500)], SamplingParams(max_tokens=64, seed=1)
                    ).wait()
                    after = pynvml.nvmlDeviceGetMemoryInfo(handle).free
                found = mismatches(setup, info)
                problems += [f"{strategy} ngl={ngl}: {p}" for p in found]
                device = info.buffers.on("CUDA0")
                row.update(
                    ok=True,
                    placement=setup.plan.placement_words,
                    buffers=[asdict(b) for b in info.buffers.items],
                    overhead=(before - after) - device,
                    after_load=before - loaded,
                    eval_tps=done.stats.eval_tps,
                    prompt_tps=done.stats.prompt_tps,
                    mismatches=found,
                )
            except Exception as err:  # noqa: BLE001 - a failed load is a result here
                row.update(ok=False, error=str(err))
            rows.append(row)
    del held
    stamp = time.strftime("%Y-%m-%d")
    report = ROOT / "docs" / f"gpu-truth-{stamp}-{card.replace(' ', '-')}.md"
    overheads = [int(r["overhead"]) for r in rows if r.get("ok") and r["n_gpu_layers"] != 0]  # type: ignore[call-overload]
    report.write_text(
        f"# Plan vs {card}, {stamp}\n\nllama-cpp-python {LLAMA_VERSION} (CUDA), free VRAM held at "
        f"{vram / 2**20:.0f} MiB. CUDA overhead seen: "
        f"{min(overheads, default=0) / 2**20:.0f}-{max(overheads, default=0) / 2**20:.0f} MiB.\n\n"
        "```json\n" + json.dumps(rows, indent=1, default=str) + "\n```\n"
    )
    print(f"wrote {report}; {len(problems)} mismatches")
    for p in problems:
        print(" ", p)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("mode", choices=("pack", "run", "measure"))
    parser.add_argument("dir", type=Path)
    parser.add_argument("--vram", type=int, default=4 << 30, help="bytes of VRAM left free")
    args = parser.parse_args()
    if args.mode == "pack":
        return pack(args.dir)
    if args.mode == "run":
        return run(args.dir, args.vram)
    return measure(args.dir, args.vram)


if __name__ == "__main__":
    sys.exit(main())
