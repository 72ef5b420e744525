"""Plan against a real NVIDIA GPU: the check the test suite cannot make (it has no GPU).

Three steps, the first here (with network), the others on the GPU machine (without any):

    python benchmarks/gpu_truth.py pack DIR            # sources + wheels, at most 64 MiB
    python3 benchmarks/gpu_truth.py run DIR            # build with CUDA + RPC, then measure
    python3 benchmarks/gpu_truth.py run DIR --cpu      # the same path with an RPC device

``pack`` takes llama-cpp-python's sdist (76 MB; cached in ``~/.cache/mixdesk/gpu-truth/``,
fetched from PyPI with pip the first time) and keeps what a CUDA + RPC build reads
(:data:`KEEP_DIRS`): not the other ggml backends, models, docs, tools, examples or tests, as
the build passes ``-DLLAMA_BUILD_TESTS/TOOLS/EXAMPLES/SERVER=OFF -DLLAVA_BUILD=OFF``. The
sources travel as one ``tar.xz``, beside the wheels of what the build and the measurement
import, for the GPU machine's Python (3.12; ``--python`` for another); no CMake or ninja,
which that machine has. It prints the sizes and exits 1 over 64 MiB (what can be carried).

``run`` checks the bundle is for this Python, unpacks the sources, makes a fresh virtual
environment (without pip: this interpreter's pip installs into it with ``--python``),
installs the wheels offline (``--no-index --find-links``), and builds llama-cpp-python with
the bootstrap's own flags (``packaging/bootstrap.sh llama-flags``: CUDA for this machine's GPU
and RPC, AMX kernels off on a CPU with AMX). Then it measures in that environment: it
generates a Mixtral-shaped model, fills the card so that only ``--vram`` stays free
(cudaMalloc of the rest), and for every ``n_gpu_layers``, and for experts in RAM (filled to
the margin tensor by tensor, from the first and from the last layers), records planned
vs CUDA buffers per device, the CUDA context overhead observed by NVML (free memory before
loading, after loading, after the first 512-token batch), whether the load failed, and
tok/s. It writes ``docs/gpu-truth-DATE-CARD.md`` (or into ``--report-dir``) and exits 1 when
a buffer is off by more than the tolerances the suite uses on the RPC device (1% weights/KV,
3% compute). A second ``run`` on the same machine reuses the environment.

``run --cpu`` is the rehearsal on a machine without a GPU: the same unpacking, offline
install and build, with ``MIXDESK_GPU=none`` (RPC only), and the same measurement loop on a
loopback ``mixdesk worker`` (llama.cpp's RPC server over the CPU) in place of the card; no
cudaMalloc or NVML. ``--dry-run`` stops after unpacking and pip's offline resolution
(``pip install --dry-run``) and prints the CMake flags it would build with.

Rehearsed on 2026-12-03 on the 2-core development machine (``pack DIR --python 3.11``; the
3.12 bundle is 21.6 MiB): the offline build took 8 min 41 s, then 11 loads of the mid model on
a loopback RPC device 7 min 50 s, none failed, no buffer off the plan. docs/gpu-truth.md has
the sizes, the table and the device tool's call for the GPU day.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mixdesk.core.machine.hardware import HardwareInfo
    from mixdesk.core.planning.types import ExpertsOrder, Strategy

ROOT = Path(__file__).resolve().parent.parent
LLAMA_VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{LLAMA_VERSION}.tar.gz"
ARCHIVE = f"llama_cpp_python-{LLAMA_VERSION}-cuda-rpc.tar.xz"
BUNDLE_FILE = "bundle.json"
MIB = 1 << 20
#: What can be carried to the GPU machine in one command (its README), and what pack aims at
#: to leave room for the working tree.
LIMIT_BYTES = 64 * MIB
AIM_BYTES = 40 * MIB
#: The GPU machine's python3 (KINDS.md: Python 3.12.3); the wheels are for this version.
TARGET_PYTHON = "3.12"
#: numpy 2.x wheels are manylinux_2_27/2_28; psutil's, PyYAML's and MarkupSafe's 2_17 or older.
PLATFORMS = [
    f"manylinux{tag}_x86_64" for tag in ("_2_28", "_2_27", "_2_17", "2014", "_2_12", "2010", "1")
]

#: Which subfolders of a folder of the sdist the build reads: a folder not named here stays
#: behind; files directly inside a folder always travel. ggml/src/CMakeLists.txt adds each
#: backend's folder only when its GGML_<NAME> option is on; HIP and MUSA build from
#: ggml-cuda's sources, not the reverse (ggml-cuda includes ggml-musa/mudnn.cuh only under
#: GGML_USE_MUSA).
KEEP_DIRS: dict[str, frozenset[str]] = {
    "": frozenset({"llama_cpp", "vendor"}),
    "vendor": frozenset({"llama.cpp"}),
    "vendor/llama.cpp": frozenset(
        {"cmake", "common", "ggml", "include", "licenses", "src", "vendor"}
    ),
    "vendor/llama.cpp/ggml/src": frozenset({"ggml-cpu", "ggml-cuda", "ggml-rpc"}),
}

#: What `run` installs into its environment, all from the bundle's wheels: the build backend;
#: llama-cpp-python's own needs; what the measurement imports (MixDesk runs from the working
#: tree on PYTHONPATH: its engine, the planner, tests/helpers, which imports pytest).
#: Not cmake or ninja: the GPU machine has both, and scikit-build-core finds them on PATH.
REQUIREMENTS = (
    "scikit-build-core[pyproject]>=0.9.2",
    "typing-extensions>=4.5.0",
    "numpy>=1.24",
    "diskcache>=5.6.1",
    "jinja2>=3.1",
    "gguf>=0.10",
    "platformdirs>=4",
    "psutil>=6.0",
    "nvidia-ml-py>=12",
    "pytest>=8",
)
#: Added to the bootstrap's flags: nothing beyond the libraries (see the module docstring).
EXTRA_CMAKE_ARGS = ["-DLLAVA_BUILD=OFF"] + [
    f"-DLLAMA_BUILD_{part}=OFF" for part in ("TESTS", "TOOLS", "EXAMPLES", "SERVER")
]


class BundleError(Exception):
    """A step of pack or run cannot go on; the message says why and what to do."""


# ---------------------------------------------------------------------------- pack (here)


def kept(name: str, *, is_dir: bool) -> bool:
    """Whether ``name`` (a path inside the sdist, below its top folder) travels."""
    parts = [p for p in name.split("/") if p]
    for i, part in enumerate(parts):
        allowed = KEEP_DIRS.get("/".join(parts[:i]))
        if allowed is not None and (is_dir or i < len(parts) - 1) and part not in allowed:
            return False
    return True


def prune_sdist(sdist: Path, archive: Path) -> tuple[int, int]:
    """Write the parts of ``sdist`` the build reads to ``archive`` (tar.xz).

    Returns:
        The bytes of sources kept, and of those left behind.
    """
    kept_bytes = dropped_bytes = 0
    with tarfile.open(sdist, "r:gz") as src, tarfile.open(archive, "w:xz") as out:
        for member in src:
            if not (member.isfile() or member.isdir()):
                continue  # an sdist holds files and folders; anything else stays behind
            _, _, inner = member.name.partition("/")
            if not kept(inner, is_dir=member.isdir()):
                dropped_bytes += member.size
                continue
            kept_bytes += member.size
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
    return kept_bytes, dropped_bytes


def cache_dir() -> Path:
    """Where pack keeps the sdist between runs (the bootstrap's cache folder)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mixdesk" / "gpu-truth"


def fetch_sdist() -> Path:
    """llama-cpp-python's sdist from the cache, downloading it with pip the first time."""
    cached = cache_dir() / SDIST
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        spec = f"llama-cpp-python=={LLAMA_VERSION}"
        _pip("download", "--no-deps", "--no-binary=:all:", "-d", str(cached.parent), spec)
    return cached


def download_wheels(dest: Path, *, python: str, find_links: Path | None) -> None:
    """Wheels of :data:`REQUIREMENTS` and what they need, for ``python`` on x86-64 Linux."""
    index = ["--no-index", "--no-cache-dir", "--find-links", str(find_links)] if find_links else []
    target = ["--python-version", python, "--implementation", "cp"]
    target += [arg for p in PLATFORMS for arg in ("--platform", p)]
    args = ["download", "--quiet", "--only-binary=:all:", *target, *index, "-d", str(dest)]
    _pip(*args, *REQUIREMENTS, offline=find_links is not None)


def pack(out: Path, *, python: str, sdist: Path | None, find_links: Path | None) -> int:
    """Make the bundle in ``out``; 1 when it is over what can be carried."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in (BUNDLE_FILE, ARCHIVE, "wheels", "src", "venv-cpu", "venv-cuda", "home", "logs"):
        path = out / stale
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    kept_bytes, dropped_bytes = prune_sdist(sdist or fetch_sdist(), out / ARCHIVE)
    download_wheels(out / "wheels", python=python, find_links=find_links)
    (out / BUNDLE_FILE).write_text(
        json.dumps(
            {
                "llama_cpp_python": LLAMA_VERSION,
                "python": python,
                "archive": ARCHIVE,
                "requirements": REQUIREMENTS,
                "packed": time.strftime("%Y-%m-%d"),
            },
            indent=1,
        )
    )
    wheels = sorted((out / "wheels").glob("*.whl"), key=lambda w: -w.stat().st_size)
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"{ARCHIVE}: {_mib(out / ARCHIVE)} MiB ({kept_bytes / MIB:.1f} MiB of sources; "
        f"{dropped_bytes / MIB:.1f} MiB left behind)"
    )
    print(f"wheels/: {wheel_bytes / MIB:.1f} MiB in {len(wheels)} wheels, the largest:")
    for wheel in wheels[:3]:
        print(f"  {wheel.name}: {_mib(wheel)} MiB")
    print(f"packed {out}: {total / MIB:.1f} MiB in all (limit 64 MiB, aim 40 MiB)")
    if total > LIMIT_BYTES:
        print(f"the bundle is over the 64 MiB that can be carried: {total / MIB:.1f} MiB")
        return 1
    if total > AIM_BYTES:
        print("over the 40 MiB aim: less room is left for the working tree")
    return 0


# ----------------------------------------------------------------- run (there, offline)


def cmake_args(*, cpu: bool) -> str:
    """The bootstrap's llama.cpp flags for this machine (RPC only with ``cpu``), plus ours.

    Raises:
        BundleError: a CUDA build was asked for and the bootstrap finds no way to make one.
    """
    env = {**os.environ, "MIXDESK_GPU": "none"} if cpu else None
    bash = shutil.which("bash")
    if bash is None:
        raise BundleError("bash is needed to read the bootstrap's build flags")
    proc = subprocess.run(
        [bash, str(ROOT / "packaging" / "bootstrap.sh"), "llama-flags"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    flags = proc.stdout.splitlines()[1]
    if not cpu and "-DGGML_CUDA=on" not in flags:
        raise BundleError(
            "no CUDA build is possible here (the bootstrap found no nvidia-smi or nvcc, or a "
            f"toolkit that cannot build for this GPU; its flags: {flags}); "
            "rehearse without a GPU with --cpu"
        )
    return " ".join([flags, *EXTRA_CMAKE_ARGS])


def read_bundle(pack_dir: Path) -> dict[str, object]:
    """The bundle's description, checked against this Python.

    Raises:
        BundleError: no bundle there, or one packed for another Python version.
    """
    try:
        bundle: dict[str, object] = json.loads((pack_dir / BUNDLE_FILE).read_text())
    except FileNotFoundError:
        raise BundleError(f"no bundle in {pack_dir}: run `gpu_truth.py pack` first") from None
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if bundle["python"] != here:
        raise BundleError(
            f"the bundle's wheels are for Python {bundle['python']}, this is Python {here}: "
            f"pack again with --python {here}"
        )
    return bundle


def unpack(pack_dir: Path, bundle: dict[str, object]) -> Path:
    """Unpack the sources into ``pack_dir/src``; returns llama-cpp-python's folder."""
    src = pack_dir / "src"
    shutil.rmtree(src, ignore_errors=True)
    with tarfile.open(pack_dir / str(bundle["archive"])) as tar:
        tar.extractall(src, filter="data")
    return src / f"llama_cpp_python-{bundle['llama_cpp_python']}"


def make_venv(venv: Path) -> Path:
    """A fresh environment without pip (this interpreter's pip installs into it)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True
    )
    return venv / "bin" / "python"


def pip_install(
    py: Path, pack_dir: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None
) -> str:
    """This interpreter's pip installing into ``py``'s environment from the bundle only."""
    wheels = str(pack_dir / "wheels")
    options = ["--no-index", "--find-links", wheels, "--no-cache-dir"]
    return _pip("--python", str(py), "install", *options, *args, env=env, offline=True, log=log)


def build(pack_dir: Path, *, cpu: bool, dry_run: bool = False) -> Path | None:
    """The environment with llama-cpp-python built from the bundle (reused when it is there).

    Returns:
        Its python, or None after a dry run.
    """
    bundle = read_bundle(pack_dir)
    flags = cmake_args(cpu=cpu)
    venv = pack_dir / ("venv-cpu" if cpu else "venv-cuda")
    py, stamp = venv / "bin" / "python", venv / ".gpu-truth-build"
    if not dry_run and stamp.exists() and stamp.read_text() == flags:
        print(f"reusing {venv} (built with CMAKE_ARGS={flags})")
        return py
    started = time.monotonic()
    source = unpack(pack_dir, bundle)
    make_venv(venv)
    requirements = [str(r) for r in bundle["requirements"]]  # type: ignore[attr-defined]
    if dry_run:
        print(pip_install(py, pack_dir, "--dry-run", *requirements))
        print(f"unpacked {source}; would build with CMAKE_ARGS={flags}")
        return None
    pip_install(py, pack_dir, "--quiet", *requirements)
    env = {
        **os.environ,
        "CMAKE_ARGS": flags,
        "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1),
        # CMake and ninja may live beside this interpreter only (a venv's bin, not on PATH).
        "PATH": f"{os.environ.get('PATH', '')}{os.pathsep}{Path(sys.executable).parent}",
    }
    print(f"CMAKE_ARGS={flags}", flush=True)
    log = pack_dir / "logs" / ("build-cpu.log" if cpu else "build-cuda.log")
    print(f"building llama-cpp-python {LLAMA_VERSION} offline (log: {log})", flush=True)
    pip_install(
        py, pack_dir, "-v", "--no-build-isolation", "--no-deps", str(source), env=env, log=log
    )
    libs = sorted(p.name for p in venv.glob("lib/python*/site-packages/llama_cpp/lib/*.so"))
    want = "libggml-rpc" if cpu else "libggml-cuda"
    if not any(name.startswith(want) for name in libs):
        raise BundleError(f"the build has no {want}: {', '.join(libs)}")
    stamp.write_text(flags)
    print(f"built in {time.monotonic() - started:.0f} s: {', '.join(libs)}")
    return py


def run(
    pack_dir: Path,
    *,
    cpu: bool,
    vram: int,
    size: str,
    report_dir: Path | None,
    dry_run: bool,
) -> int:
    """Build, then measure in the new environment (this script runs again there)."""
    py = build(pack_dir, cpu=cpu, dry_run=dry_run)
    if py is None:
        return 0
    home = pack_dir / "home"  # the worker secret, settings and logs stay out of the real home
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **{var: str(home / sub) for var, sub in _USER_DIRS},
    }
    args = ["--vram", str(vram), "--size", size, *(["--cpu"] if cpu else [])]
    if report_dir is not None:
        args += ["--report-dir", str(report_dir)]
    command = [str(py), __file__, "measure", str(pack_dir), *args]
    return subprocess.run(command, env=env, check=False).returncode


_USER_DIRS = (
    ("XDG_DATA_HOME", "data"),
    ("XDG_CONFIG_HOME", "config"),
    ("XDG_CACHE_HOME", "cache"),
    ("XDG_STATE_HOME", "state"),
)


def _cudart() -> ctypes.CDLL:
    """The CUDA runtime: the toolkit's, by any of the names it goes by."""
    names = ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    names += sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*"))
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise BundleError("the CUDA runtime (libcudart.so) was not found")


def _hold_card(keep_free: int) -> tuple[str, Callable[[], int]]:
    """Allocate all but ``keep_free`` bytes of GPU 0, held until this process ends.

    Returns:
        The card's name and a function giving its free memory (NVML).
    """
    import pynvml

    cudart = _cudart()
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    if cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
        raise BundleError("cudaMemGetInfo failed: is the GPU visible?")
    take = free.value - keep_free
    ptr = ctypes.c_void_p()  # never freed: the process's end gives it back
    if take > 0 and cudart.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(take)) != 0:
        raise BundleError(f"could not hold {take} bytes of the card")
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(handle)

    def free_memory() -> int:
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)

    return name.decode() if isinstance(name, bytes) else str(name), free_memory


def measure(out_dir: Path, *, cpu: bool, vram: int, size: str, report_dir: Path | None) -> int:
    """In the built environment: every n_gpu_layers, both strategies, planned vs real."""
    sys.path.insert(0, str(ROOT))
    from mixdesk.core.machine.hardware import detect
    from tests.helpers import model_factory as mf
    from tests.helpers.devices import rpc_hardware
    from tests.helpers.mixdesk_workers import start_worker

    spec = mf.MID if size == "mid" else mf.TINY
    model = mf.cached_model(ROOT / "benchmarks" / ".models", spec, "Q4_K_M")
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if cpu:
            worker = start_worker(logs, "--threads", str(os.cpu_count() or 1))
            stack.callback(_interrupt, worker.proc)
            card, prefix = "RPC device", "RPC0"
            hardware = rpc_hardware(worker, free=vram)
            free_memory: Callable[[], int] | None = None
        else:
            card, free_memory = _hold_card(vram)
            prefix, hardware = "CUDA0", detect()
        rows: list[dict[str, object]] = []
        problems: list[str] = []
        # every layer count, then experts in RAM filled to the margin from either end
        runs: list[tuple[Strategy, int | None, ExpertsOrder | None]] = [
            ("layers", ngl, None) for ngl in range(spec.n_layers + 2)
        ]
        runs += [("experts", None, "first"), ("experts", None, "last")]
        for strategy, ngl, order in runs:
            row = _load_once(
                model, hardware, (strategy, ngl, order), logs=logs, prefix=prefix, free=free_memory
            )
            print(json.dumps(row, default=str), flush=True)
            rows.append(row)
            found: list[str] = row.get("mismatches", [])  # type: ignore[assignment]
            problems += [f"{strategy} ngl={ngl} from={order}: {p}" for p in found]
    failed = sum(1 for r in rows if not r["ok"])
    stamp = time.strftime("%Y-%m-%d")
    if cpu:
        name, heading = f"rpc-rehearsal-{stamp}.md", f"Plan vs an RPC device (rehearsal), {stamp}"
        summary = "a loopback `mixdesk worker` as the device (no CUDA overhead to measure)."
        report_dir = report_dir or out_dir
    else:
        name, heading = f"gpu-truth-{stamp}-{card.replace(' ', '-')}.md", f"Plan vs {card}, {stamp}"
        overheads = [
            int(str(r["overhead"])) for r in rows if "overhead" in r and r["n_gpu_layers"] != 0
        ]
        summary = (
            f"free VRAM held at {vram / MIB:.0f} MiB; CUDA overhead seen: "
            f"{min(overheads, default=0) / MIB:.0f}-{max(overheads, default=0) / MIB:.0f} MiB."
        )
        report_dir = report_dir or ROOT / "docs"
    report = report_dir / name
    report.write_text(
        f"# {heading}\n\nllama-cpp-python {LLAMA_VERSION}, model {model.name} ({size}, Q4_K_M), "
        f"{summary} {len(rows)} loads in {time.monotonic() - started:.0f} s, {failed} failed, "
        f"{len(problems)} mismatches.\n\n```json\n{json.dumps(rows, indent=1, default=str)}\n```\n"
    )
    print(f"wrote {report}: {len(rows)} loads, {failed} failed, {len(problems)} mismatches")
    for p in problems:
        print(" ", p)
    return 1 if problems or failed else 0


def _load_once(
    model: Path,
    hardware: HardwareInfo,
    setting: tuple[Strategy, int | None, ExpertsOrder | None],
    *,
    logs: Path,
    prefix: str,
    free: Callable[[], int] | None,
) -> dict[str, object]:
    """Plan, load and answer once; what was planned, what llama.cpp allocated, the speed."""
    from mixdesk.core.chat.template import ChatMessage
    from mixdesk.core.engine import Engine, SamplingParams
    from mixdesk.core.loading.choices import LoadChoices
    from mixdesk.core.loading.model import resolve_file
    from mixdesk.core.loading.service import plan_load
    from mixdesk.core.planning.calibration import Calibration
    from tests.helpers.devices import mismatches

    strategy, ngl, order = setting
    choices = LoadChoices(
        n_gpu_layers=ngl, n_ctx=4096, use_mmap=False, strategy=strategy, experts_from=order
    )
    row: dict[str, object] = {"strategy": strategy, "n_gpu_layers": ngl, "experts_from": order}
    before = free() if free else 0
    try:
        with Engine(log_dir=logs) as engine:
            setup = plan_load(
                resolve_file(model), hardware, choices, calibration=Calibration(), engine=engine
            )
            info = engine.load(setup.config)
            loaded = free() if free else 0
            prompt = [ChatMessage("user", "word " * 500)]
            done = engine.chat(prompt, SamplingParams(max_tokens=64, seed=1)).wait()
            after = free() if free else 0
    except Exception as err:  # noqa: BLE001 - a failed load is a result here
        row.update(ok=False, error=str(err))
        return row
    device = sum(b.bytes for b in info.buffers.items if b.device.startswith(prefix))
    row.update(
        ok=True,
        placement=setup.plan.placement_words,
        cpu_tensors=len(setup.plan.cpu_tensors),
        buffers={f"{b.device} {b.kind}": b.bytes for b in info.buffers.items},
        device_bytes=device,
        eval_tps=done.stats.eval_tps,
        prompt_tps=done.stats.prompt_tps,
        mismatches=mismatches(setup, info),
    )
    if free:  # what the card lost beyond llama.cpp's own buffers: the CUDA context and more
        row.update(overhead=(before - after) - device, after_load=before - loaded)
    return row


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """End a worker as Ctrl-C does, or at once if it does not go within 10 s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------ helpers


def _pip(
    *args: str, env: dict[str, str] | None = None, offline: bool = False, log: Path | None = None
) -> str:
    """Run this interpreter's pip; its output, or BundleError with the end of what it said.

    ``offline``: no pip configuration counts (no config files, no PIP_* variables), so only
    the folders named on the command line are looked in, here as on the GPU machine.
    ``log``: a file that keeps all pip said.
    """
    if offline:
        env = {k: v for k, v in (env or os.environ).items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).strip()[-3000:]
        raise BundleError(f"pip {args[0]} failed:\n{said}")
    return proc.stdout


def _mib(path: Path) -> str:
    return f"{path.stat().st_size / MIB:.1f}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (pack, run; measure is run's second half, in the built environment)."""
    doc = __doc__.splitlines()[0] if __doc__ else ""
    parser = argparse.ArgumentParser(description=doc)
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("pack", help="make the bundle (here, with network)")
    p.add_argument("dir", type=Path)
    p.add_argument("--python", default=TARGET_PYTHON, help="the Python version run will use")
    p.add_argument("--sdist", type=Path, help="llama-cpp-python's sdist (default: cached)")
    p.add_argument("--find-links", type=Path, help="take wheels from here only, offline")
    for mode in ("run", "measure"):
        r = modes.add_parser(mode, help="build and measure (there, offline)")
        r.add_argument("dir", type=Path)
        r.add_argument("--cpu", action="store_true", help="RPC device instead of the GPU")
        r.add_argument("--vram", type=int, default=4 << 30, help="bytes of VRAM left free")
        r.add_argument("--size", choices=("mid", "tiny"), default="mid", help="the model")
        r.add_argument("--report-dir", type=Path, help="default: docs/ (GPU), DIR (--cpu)")
        if mode == "run":
            r.add_argument("--dry-run", action="store_true", help="unpack and resolve only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.mode == "pack":
            return pack(args.dir, python=args.python, sdist=args.sdist, find_links=args.find_links)
        if args.mode == "run":
            return run(
                args.dir,
                cpu=args.cpu,
                vram=args.vram,
                size=args.size,
                report_dir=args.report_dir,
                dry_run=args.dry_run,
            )
        return measure(
            args.dir, cpu=args.cpu, vram=args.vram, size=args.size, report_dir=args.report_dir
        )
    except BundleError as err:
        print(f"gpu_truth: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
