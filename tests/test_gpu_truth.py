"""The GPU-day bundle (`benchmarks/gpu_truth.py`): what pack keeps, its size limit, and run's
offline path up to the build.

The suite has no network and no GPU, so pack works on a miniature of llama-cpp-python 0.3.36's
sdist (its real folder layout, one small file per folder, an 8 MiB model file) and on minimal
wheels named like the real ones, from a local folder (``--find-links``). The real build and
measurement (``run --cpu``, about 10 minutes on 2 cores) are recorded in the script's docstring.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from benchmarks import gpu_truth

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_truth.py"
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
TOP = f"llama_cpp_python-{gpu_truth.LLAMA_VERSION}"
LLAMA = "vendor/llama.cpp"

#: What a CUDA + RPC build reads, one file per folder of the real sdist.
KEPT = {
    "PKG-INFO",
    "pyproject.toml",
    "CMakeLists.txt",
    "README.md",
    "llama_cpp/__init__.py",
    "llama_cpp/llama_cpp.py",
    f"{LLAMA}/CMakeLists.txt",
    f"{LLAMA}/LICENSE",
    f"{LLAMA}/cmake/build-info.cmake",
    f"{LLAMA}/common/common.cpp",
    f"{LLAMA}/common/jinja/runtime.cpp",
    f"{LLAMA}/include/llama.h",
    f"{LLAMA}/licenses/LICENSE-jsonhpp",
    f"{LLAMA}/src/llama.cpp",
    f"{LLAMA}/src/models/llama.cpp",
    f"{LLAMA}/vendor/CMakeLists.txt",
    f"{LLAMA}/vendor/miniaudio/miniaudio.h",
    f"{LLAMA}/vendor/cpp-httplib/httplib.cpp",
    f"{LLAMA}/ggml/CMakeLists.txt",
    f"{LLAMA}/ggml/cmake/ggml-config.cmake.in",
    f"{LLAMA}/ggml/include/ggml-cuda.h",
    f"{LLAMA}/ggml/include/ggml-vulkan.h",  # headers are one folder: ggml-backend-reg.cpp
    f"{LLAMA}/ggml/src/CMakeLists.txt",
    f"{LLAMA}/ggml/src/ggml.c",
    f"{LLAMA}/ggml/src/ggml-cpu/ggml-cpu.c",
    f"{LLAMA}/ggml/src/ggml-cpu/amx/amx.cpp",
    f"{LLAMA}/ggml/src/ggml-cuda/ggml-cuda.cu",
    f"{LLAMA}/ggml/src/ggml-cuda/template-instances/fattn-vec-instance-f16-f16.cu",
    f"{LLAMA}/ggml/src/ggml-cuda/vendors/cuda.h",
    f"{LLAMA}/ggml/src/ggml-rpc/ggml-rpc.cpp",
}
OTHER_BACKENDS = [
    "blas",
    "cann",
    "et",
    "hexagon",
    "hip",
    "metal",
    "musa",
    "opencl",
    "openvino",
    "sycl",
    "virtgpu",
    "vulkan",
    "webgpu",
    "zdnn",
    "zendnn",
]
#: What stays behind: the other backends, models, docs, tools, examples, tests and the rest.
DROPPED = {
    *(f"{LLAMA}/ggml/src/ggml-{b}/CMakeLists.txt" for b in OTHER_BACKENDS),
    f"{LLAMA}/ggml/src/ggml-vulkan/vulkan-shaders/add.comp",
    f"{LLAMA}/models/ggml-vocab-llama-bpe.gguf",
    f"{LLAMA}/docs/build.md",
    f"{LLAMA}/tools/server/public/index.html.gz",
    f"{LLAMA}/tools/ui/package.json",
    f"{LLAMA}/tools/mtmd/mtmd.cpp",
    f"{LLAMA}/tools/rpc/rpc-server.cpp",
    f"{LLAMA}/examples/simple/simple.cpp",
    f"{LLAMA}/tests/test-backend-ops.cpp",
    f"{LLAMA}/benches/README.md",
    f"{LLAMA}/media/llama0-logo.png",
    f"{LLAMA}/gguf-py/gguf/__init__.py",
    f"{LLAMA}/.github/workflows/build.yml",
    "docs/index.md",
    "examples/high_level_api/high_level_api_inference.py",
    "tests/test_llama.py",
    "docker/simple/Dockerfile",
    "vendor/other/README.md",
}


def make_sdist(path: Path) -> Path:
    """A miniature of the real sdist: every path of KEPT and DROPPED, the model file 8 MiB."""
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(KEPT | DROPPED):
            data = os.urandom(8 << 20) if name.endswith(".gguf") else f"// {name}\n".encode()
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_wheel(folder: Path, name: str, version: str, *, padding: int = 0) -> Path:
    """A minimal wheel pip accepts as ``name`` ``version`` (``padding`` bytes of data in it)."""
    dist = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    wheel = folder / f"{dist}-py3-none-any.whl"
    files = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)
        if padding:
            zf.writestr(f"{dist}.data/padding.bin", os.urandom(padding), zipfile.ZIP_STORED)
        zf.writestr(f"{dist}.dist-info/RECORD", "".join(f"{m},,\n" for m in files))
    return wheel


def make_wheels(folder: Path, *, padding: int = 0) -> dict[str, str]:
    """One wheel per requirement of the bundle, at its lowest allowed version (numpy padded)."""
    folder.mkdir()
    versions = {}
    for line in gpu_truth.REQUIREMENTS:
        req = Requirement(line)
        version = next(iter(req.specifier)).version
        make_wheel(folder, req.name, version, padding=padding if req.name == "numpy" else 0)
        versions[req.name] = version
    return versions


def gpu_truth_cli(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A bundle packed from the miniature sdist and local wheels, and what pack printed."""
    d = tmp_path_factory.mktemp("gpu-truth")
    make_wheels(d / "wheels")
    out = d / "bundle"
    proc = gpu_truth_cli(
        "pack", out, "--python", HERE, "--sdist", make_sdist(d / f"{TOP}.tar.gz"),
        "--find-links", d / "wheels",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def test_pack_keeps_only_what_a_cuda_and_rpc_build_reads(bundle: tuple[Path, str]) -> None:
    out, _ = bundle
    archive = out / gpu_truth.ARCHIVE
    assert archive.name.endswith(".tar.xz")
    with tarfile.open(archive, "r:xz") as tar:
        names = {m.name.removeprefix(f"{TOP}/") for m in tar if m.isfile()}
    assert names == KEPT, (sorted(names - KEPT), sorted(KEPT - names))
    assert not [n for n in names if n.startswith((f"{LLAMA}/models/", f"{LLAMA}/tools/"))]
    assert not [n for n in names if "ggml-vulkan/" in n]
    assert f"{LLAMA}/ggml/src/ggml-cuda/ggml-cuda.cu" in names
    assert f"{LLAMA}/ggml/src/ggml-rpc/ggml-rpc.cpp" in names


def test_pack_brings_the_wheels_and_says_the_sizes(bundle: tuple[Path, str]) -> None:
    out, printed = bundle
    wheels = sorted(w.name.split("-")[0] for w in (out / "wheels").glob("*.whl"))
    assert wheels == sorted(
        canonicalize_name(Requirement(r).name).replace("-", "_") for r in gpu_truth.REQUIREMENTS
    )
    assert not {"cmake", "ninja"} & set(wheels)  # the GPU machine has both
    # everything in the bundle is the archive, the wheels and its description
    assert {p.name for p in out.iterdir()} == {gpu_truth.ARCHIVE, "wheels", "bundle.json"}
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert f"packed {out}: {total / 2**20:.1f} MiB in all (limit 64 MiB, aim 40 MiB)" in printed
    assert "8.0 MiB left behind" in printed  # the model file stays behind
    described = json.loads((out / "bundle.json").read_text())
    assert (described["python"], described["archive"]) == (HERE, gpu_truth.ARCHIVE)


def test_pack_fails_over_what_can_be_carried(tmp_path: Path) -> None:
    make_wheels(tmp_path / "wheels", padding=65 << 20)  # a numpy wheel of 65 MiB
    out = tmp_path / "bundle"
    proc = gpu_truth_cli(
        "pack", out, "--python", HERE, "--sdist", make_sdist(tmp_path / f"{TOP}.tar.gz"),
        "--find-links", tmp_path / "wheels",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "the bundle is over the 64 MiB that can be carried: 65." in proc.stdout


def test_rehearsal_unpacks_and_resolves_offline(bundle: tuple[Path, str], tmp_path: Path) -> None:
    """run --cpu --dry-run: the archive unpacks, the fresh environment's install resolves from
    the bundle's wheels alone, and the build would use the RPC backend and no CUDA."""
    out = shutil.copytree(bundle[0], tmp_path / "bundle")
    proc = gpu_truth_cli("run", out, "--cpu", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    source = out / "src" / TOP
    assert (source / LLAMA / "ggml/src/ggml-rpc/ggml-rpc.cpp").is_file()
    assert not (source / LLAMA / "models").exists()
    assert (out / "venv-cpu" / "bin" / "python").exists()
    assert f"Looking in links: {out / 'wheels'}\n" in proc.stdout  # and nowhere else
    (would,) = [line for line in proc.stdout.splitlines() if line.startswith("Would install")]
    for line in gpu_truth.REQUIREMENTS:
        assert canonicalize_name(Requirement(line).name) in canonicalize_name(would)
    (flags,) = [line for line in proc.stdout.splitlines() if "would build with" in line]
    assert "-DGGML_RPC=ON" in flags and "GGML_CUDA" not in flags
    assert "-DLLAVA_BUILD=OFF" in flags and "-DLLAMA_BUILD_TOOLS=OFF" in flags


def test_run_without_a_gpu_says_to_rehearse_with_cpu(bundle: tuple[Path, str]) -> None:
    out, _ = bundle
    proc = gpu_truth_cli("run", out, "--dry-run", MIXDESK_GPU="none")
    assert proc.returncode == 2
    assert "no CUDA build is possible here" in proc.stderr
    assert proc.stderr.rstrip().endswith("rehearse without a GPU with --cpu")


def test_run_refuses_a_bundle_for_another_python(tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text(json.dumps({"python": "3.99"}))
    proc = gpu_truth_cli("run", tmp_path, "--cpu")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"gpu_truth: the bundle's wheels are for Python 3.99, this is Python {HERE}: "
        f"pack again with --python {HERE}\n"
    )


def test_run_without_a_bundle_says_to_pack(tmp_path: Path) -> None:
    proc = gpu_truth_cli("run", tmp_path, "--cpu")
    assert proc.returncode == 2
    assert f"no bundle in {tmp_path}: run `gpu_truth.py pack` first" in proc.stderr


@pytest.mark.parametrize(
    ("name", "is_dir", "travels"),
    [
        ("vendor/llama.cpp/ggml/src/ggml-cuda", True, True),
        ("vendor/llama.cpp/ggml/src/ggml-hip", True, False),
        ("vendor/llama.cpp/ggml/src/ggml-hip.c", False, True),  # a file beside the backends
        ("vendor/llama.cpp/models", True, False),
        ("vendor/llama.cpp/tools/mtmd/mtmd.cpp", False, False),
        ("vendor/llama.cpp/CMakePresets.json", False, True),
        ("llama_cpp/lib", True, True),
        ("", True, True),
    ],
)
def test_kept(name: str, is_dir: bool, travels: bool) -> None:
    assert gpu_truth.kept(name, is_dir=is_dir) is travels
