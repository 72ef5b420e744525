"""llama.cpp's own decode loop as a yardstick: ``llama-bench`` built from the installed
llama-cpp-python's sources, with the same CPU flags, once.

:func:`ensure_llama_bench` finds or builds it. The sources are llama-cpp-python's sdist (the
one ``benchmarks/gpu_truth.py pack`` caches in ``~/.cache/mixdesk/gpu-truth/``, else
downloaded with pip), the flags the bootstrap's (``packaging/bootstrap.sh llama-flags`` with
``MIXDESK_GPU=none``: ``-march=native`` without AMX on a CPU with AMX, as the installed wheel
was built) less RPC, which llama-bench does not need; shared libraries and a Release build as
in the wheel. Only the ``llama-bench`` target is built (``nice -n 10``, two jobs: several
minutes on two cores), into ``~/.cache/mixdesk/llama-bench/VERSION-KEY/bin``; the build tree
is removed, and a later run finds the binary there.

:func:`run_llama_bench` runs one fixed-length generation (``-p 0 -n N -d DEPTH -r 1``) and
reads its tok/s. llama-bench leaves llama.cpp's counters off (its contexts keep the default
``no_perf``: the log says ``eval time = 0.00 ms``), so its figure is its own clock around the
generation loop: each token's ``llama_decode`` and ``llama_synchronize``, which is what
llama.cpp's eval counter times in the engine (from the start of ``llama_decode`` to the
synchronisation when the sampler reads the logits).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = "llama-bench"
#: Besides the bootstrap's flags: llama-bench and the libraries it needs, nothing else.
CMAKE_DEFINES = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_OPENSSL=OFF",
    # the binary finds its libraries beside it, wherever the folder is moved
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
)


class LlamaBenchUnavailableError(RuntimeError):
    """llama-bench is not there and cannot be built here; the message is one sentence."""


@dataclass(frozen=True)
class BenchRun:
    """One llama-bench generation."""

    eval_tps: float  # llama-bench's avg_ts: generated tokens / time of its decode loop
    n_gen: int
    n_depth: int


def cache_root() -> Path:
    """``~/.cache/mixdesk/llama-bench`` (``XDG_CACHE_HOME`` honoured)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mixdesk" / "llama-bench"


def build_flags() -> tuple[str, list[str]]:
    """The bootstrap's CPU build key and CMake flags (without RPC) for this machine.

    Raises:
        LlamaBenchUnavailableError: bash cannot run the bootstrap.
    """
    bash = shutil.which("bash")
    if bash is None:
        raise LlamaBenchUnavailableError("bash is needed to read the bootstrap's llama.cpp flags")
    proc = subprocess.run(
        [bash, str(ROOT / "packaging" / "bootstrap.sh"), "llama-flags"],
        capture_output=True,
        text=True,
        env={**os.environ, "MIXDESK_GPU": "none"},
        check=False,
    )
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        raise LlamaBenchUnavailableError("packaging/bootstrap.sh llama-flags gave no build flags")
    key = lines[0].replace("-rpc", "")
    flags = [f for f in shlex.split(lines[1]) if f != "-DGGML_RPC=ON"]
    return key, flags


def installed_version() -> str:
    """The installed llama-cpp-python's version (its sources are the ones built)."""
    from importlib.metadata import version

    return version("llama-cpp-python")


def find_sdist(version: str) -> Path:
    """llama-cpp-python's sdist: gpu_truth's cached copy, else pip downloads it there.

    Raises:
        LlamaBenchUnavailableError: not cached, and pip could not download it.
    """
    folder = cache_root().parent / "gpu-truth"
    cached = folder / f"llama_cpp_python-{version}.tar.gz"
    if cached.exists():
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    spec = f"llama-cpp-python=={version}"
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:"]
    proc = subprocess.run(
        [*pip, "-d", str(folder), spec],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not cached.exists():
        raise LlamaBenchUnavailableError(f"pip could not download the sources of {spec}")
    return cached


def _extract_llama_cpp(sdist: Path, dest: Path) -> Path:
    """Unpack the sdist's ``vendor/llama.cpp`` into ``dest``; returns that folder."""
    with tarfile.open(sdist, "r:gz") as tar:
        top = tar.next()
        if top is None:
            raise LlamaBenchUnavailableError(f"{sdist.name} is empty")
        prefix = f"{top.name.split('/')[0]}/vendor/llama.cpp/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(dest, members=members, filter="data")
    return dest / prefix


def ensure_llama_bench(*, say: bool = True) -> Path:
    """llama-bench for the installed llama-cpp-python and this machine, built once.

    Raises:
        LlamaBenchUnavailableError: no compiler or CMake, no sources, or the build failed.
    """
    version = installed_version()
    key, flags = build_flags()
    target = cache_root() / f"{version}-{key}"
    binary, stamp = target / "bin" / BINARY, target / "flags"
    if binary.exists() and stamp.exists() and stamp.read_text() == " ".join(flags):
        return binary
    cmake = shutil.which("cmake")
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cmake is None or compiler is None:
        missing = "CMake" if cmake is None else "a C++ compiler"
        raise LlamaBenchUnavailableError(f"llama-bench cannot be built here: {missing} is missing")
    sdist = find_sdist(version)
    cache_root().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_root()))
    try:
        if say:
            print(f"building llama-bench from llama-cpp-python {version} ({key}), once", flush=True)
        source = _extract_llama_cpp(sdist, work / "src")
        build = work / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        log = work / "build.log"
        with log.open("w") as out:
            for cmd in (
                [cmake, "-S", str(source), "-B", str(build), *generator, *CMAKE_DEFINES, *flags],
                ["nice", "-n", "10", cmake, "--build", str(build), "--target", BINARY, "-j", "2"],
            ):
                if subprocess.run(
                    cmd, stdout=out, stderr=subprocess.STDOUT, check=False
                ).returncode:
                    tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                    raise LlamaBenchUnavailableError(
                        f"llama-bench did not build ({' '.join(tail) or 'no output'})"
                    )
        shutil.rmtree(target, ignore_errors=True)
        (target / "bin").mkdir(parents=True)
        for made in (build / "bin").iterdir():
            if made.name == BINARY or ".so" in made.name:
                shutil.copy2(made, target / "bin" / made.name, follow_symlinks=False)
        stamp.write_text(" ".join(flags))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


def llama_bench_command(
    binary: Path, model: Path, *, threads: int, n_gen: int, depth: int, flash_attn: bool
) -> list[str]:
    """``llama-bench -m MODEL -t T -n N -p 0 -d DEPTH -r 1``, on the CPU, with the engine's
    flash attention setting, JSON out."""
    return [
        str(binary),
        *("-m", str(model), "-t", str(threads), "-n", str(n_gen), "-p", "0"),
        *("-d", str(depth), "-r", "1", "-ngl", "0", "-fa", "on" if flash_attn else "off"),
        *("-o", "json"),
    ]


def parse_output(stdout: str) -> BenchRun:
    """The generation's figures from llama-bench's JSON (its last test).

    Raises:
        ValueError: not llama-bench's JSON.
    """
    rows = json.loads(stdout)
    if not rows or "avg_ts" not in rows[-1]:
        raise ValueError("llama-bench printed no test result")
    row = rows[-1]
    return BenchRun(
        eval_tps=float(row["avg_ts"]), n_gen=int(row["n_gen"]), n_depth=int(row["n_depth"])
    )


def run_llama_bench(
    binary: Path, model: Path, *, threads: int, n_gen: int, depth: int, flash_attn: bool
) -> BenchRun:
    """One llama-bench generation of ``n_gen`` tokens after ``depth`` tokens of context.

    Raises:
        RuntimeError: llama-bench failed (the end of its log says why).
    """
    cmd = llama_bench_command(
        binary, model, threads=threads, n_gen=n_gen, depth=depth, flash_attn=flash_attn
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench failed: {proc.stderr.strip()[-500:]}")
    return parse_output(proc.stdout)
