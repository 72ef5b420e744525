#!/usr/bin/env bash
# Set MixDesk up from source in ./.venv, then start it or run the whole test suite.
#
#   bash packaging/bootstrap.sh start [MIXDESK ARGS...]   set up, then run `mixdesk ARGS`
#   bash packaging/bootstrap.sh test  [PYTEST ARGS...]    set up, then ruff, mypy and pytest
#   bash packaging/bootstrap.sh llama-flags               print the llama.cpp build key and flags
#   bash packaging/bootstrap.sh gpu                       rebuild llama.cpp for this machine's GPU
#
# Works on a fresh Debian/Ubuntu machine with Python >= 3.10: as root it installs the Debian
# packages it needs (a C++ compiler, cmake, python3-venv); otherwise it names them. The first
# run compiles llama.cpp (about 10 minutes on 2 cores); the wheel is kept per build key.
set -euo pipefail

cd "$(dirname "$0")/.."
mode="${1:-start}"
[ $# -gt 0 ] && shift
PYTHON="${PYTHON:-python3}"
VENV="${MIXDESK_VENV:-.venv}"

say() { printf 'bootstrap: %s\n' "$*" >&2; }

# llama-cpp-python: the version pyproject.toml pins (the one MixDesk's planner, crash-log
# patterns and engine adapter were checked against), always with llama.cpp's RPC backend
# (offload onto other machines, and the test suite's real offload device), plus CUDA when
# this machine has an NVIDIA GPU and the CUDA toolkit.
LLAMA_VERSION="$(sed -n 's/.*"llama-cpp-python\[server\]==\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)"

# What stops a CUDA build on this machine, in one sentence ("" when nothing does, or when
# there is no NVIDIA GPU at all).
cuda_problem() {
    local gpu cuda archs
    [ "${MIXDESK_GPU:-auto}" != none ] && command -v nvidia-smi >/dev/null 2>&1 || return 0
    gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
    gpu="${gpu:-the NVIDIA GPU}"
    archs="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | sort -u)"
    if ! command -v nvcc >/dev/null 2>&1; then
        if printf '%s\n' "$archs" | grep -qx 70; then
            echo "the CUDA toolkit (nvcc) is not installed; for a V100 ($gpu) install CUDA 12.x, as CUDA 13 no longer supports Volta."
        else
            echo "the CUDA toolkit (nvcc) is not installed; install it for $gpu (https://developer.nvidia.com/cuda-downloads), then try again."
        fi
        return 0
    fi
    cuda="$(nvcc --version | sed -n 's/.*release \([0-9][0-9]*\).*/\1/p' | head -n1)"
    if [ "${cuda:-0}" -ge 13 ] && printf '%s\n' "$archs" | grep -qx 70; then
        echo "CUDA $cuda no longer supports Volta ($gpu); install CUDA 12.x beside it and put its nvcc first on PATH."
    fi
}

# Prints two lines: the build key (backend, toolkit, GPU architectures) and the CMake flags.
llama_build_flags() {
    local flags="-DGGML_RPC=ON" key="cpu-rpc" cuda archs
    if [ "${MIXDESK_GPU:-auto}" != none ] && command -v nvidia-smi >/dev/null 2>&1 \
        && command -v nvcc >/dev/null 2>&1 && [ -z "$(cuda_problem)" ]; then
        cuda="$(nvcc --version | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' | head -n1)"
        archs="${MIXDESK_CUDA_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null \
            | tr -d ' .' | sort -u | paste -sd ';' -)}"
        archs="${archs:-native}"
        flags="$flags -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$archs"
        key="cuda${cuda:-unknown}-sm${archs//;/_}-rpc"
    fi
    # ggml's AMX kernels, which -march=native compiles in on a CPU with AMX, crash the process
    # on the first Q4_K model (a segfault while loading; seen on a Xeon with amx_int8): build
    # without them. The repacked AVX-512 kernels still run.
    if grep -qw amx_tile "${MIXDESK_CPUINFO:-/proc/cpuinfo}" 2>/dev/null; then
        local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        flags="$flags -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
        key="$key-noamx"
    fi
    printf '%s\n%s\n' "$key" "$flags"
}

# pip's wheel cache does not key on CMAKE_ARGS (a CPU wheel would come back for a CUDA
# build), so MixDesk keeps its own wheels, one folder per version and build key, builds with
# --no-cache-dir and installs with --force-reinstall when the key changes.
install_llama_cpp() {
    local key flags wheels stamp want tmp
    { read -r key; read -r flags; } < <(llama_build_flags)
    want="llama-cpp-python $LLAMA_VERSION $key"
    stamp="$VENV/.mixdesk-llama-build"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && "$PY" -c 'import llama_cpp' >/dev/null 2>&1; then
        return
    fi
    wheels="${XDG_CACHE_HOME:-$HOME/.cache}/mixdesk/wheels/llama-cpp-python-$LLAMA_VERSION-$key"
    if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        say "building llama-cpp-python $LLAMA_VERSION ($key; CMAKE_ARGS=$flags): about 10 minutes on 2 cores, once"
        tmp="$wheels.tmp.$$"
        rm -rf "$tmp"
        CMAKE_ARGS="$flags" "$PY" -m pip wheel --quiet --no-deps --no-cache-dir -w "$tmp" \
            "llama-cpp-python==$LLAMA_VERSION"
        mkdir -p "$(dirname "$wheels")"
        rm -rf "$wheels"
        mv "$tmp" "$wheels"
    fi
    say "installing llama-cpp-python $LLAMA_VERSION ($key)"
    "$PY" -m pip install --quiet --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
    printf '%s\n' "$want" > "$stamp"
}

if [ "$mode" = llama-flags ]; then  # what a build here would use (tests read this)
    llama_build_flags
    exit 0
fi
if [ "$mode" = gpu ]; then  # the app's "Install GPU support": rebuild for this machine's GPU
    problem="$(cuda_problem)"
    if [ -n "$problem" ]; then
        say "$problem"
        exit 3
    fi
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        say "no NVIDIA GPU was found (nvidia-smi is missing); MixDesk builds GPU support for NVIDIA GPUs here."
        exit 3
    fi
    PY="$VENV/bin/python"
    [ -x "$PY" ] || { say "no MixDesk environment in $VENV; run bash packaging/bootstrap.sh start first."; exit 3; }
    install_llama_cpp
    say "GPU support installed; the engine uses it from its next start."
    exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "$PYTHON not found: install Python 3.10 or newer (Debian: apt-get install python3)."
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    say "MixDesk needs Python 3.10 or newer; $PYTHON is $("$PYTHON" -V 2>&1)."
    exit 1
fi

# Debian packages: a compiler and cmake to build llama.cpp, venv to make the environment.
missing=()
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ "$mode" = test ]; then
    # the desktop-file and AppStream validators the packaging tests run
    command -v desktop-file-validate >/dev/null 2>&1 || missing+=(desktop-file-utils)
    command -v appstreamcli >/dev/null 2>&1 || missing+=(appstream)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        say "please install: sudo apt-get install ${missing[*]}"
        exit 1
    fi
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "creating the virtual environment in $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
case "$mode" in
    start) extras="" ;;
    test) extras="[test]" ;;
    *) say "unknown mode '$mode': use start or test"; exit 2 ;;
esac
"$PY" -m pip install --quiet --upgrade pip wheel
install_llama_cpp
say "installing MixDesk$extras"
# setuptools warns about every editable install of a package with a package-dir mapping
# (resources/ -> mixdesk.resources); show pip's output only when it fails.
if ! out="$("$PY" -m pip install --quiet -e ".$extras" 2>&1)"; then
    printf '%s\n' "$out" >&2
    exit 1
fi

if [ "$mode" = start ]; then
    exec "$VENV/bin/mixdesk" "$@"
fi

say "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
say "mypy (strict)"
"$VENV/bin/mypy"
say "pytest"
export QT_QPA_PLATFORM=offscreen
exec "$PY" -m pytest "$@"
