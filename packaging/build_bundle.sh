#!/usr/bin/env bash
# Build the one-folder MixDesk bundle: dist/MixDesk/mixdesk (window + terminal commands).
#
#   bash packaging/build_bundle.sh           # portable CPU build
#   bash packaging/build_bundle.sh --cuda    # with CUDA (a CUDA 12.x toolkit; sm 70;75;80;86;89)
#
# llama-cpp-python is compiled with GGML_NATIVE=OFF, so the bundle runs on other x86-64 CPUs
# than the build machine's (a native build can die with "illegal instruction" elsewhere).
# It uses its own virtual environment (.build-venv) and takes about 6-8 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${BUILD_VENV:-.build-venv}"
# RPC always (pooling GPUs over `mixdesk worker`); CUDA for the CUDA variant, for every GPU
# generation from Volta (V100, sm_70) to Ada (sm_89): that needs a CUDA 12.x toolkit, since
# CUDA 13 dropped Volta. Ship it as MixDesk-linux-x86_64-cuda.tar.gz.
CMAKE="-DGGML_NATIVE=OFF -DGGML_RPC=ON"
if [ "${1:-}" = "--cuda" ]; then
    CMAKE="$CMAKE -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=70;75;80;86;89"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip wheel "pyinstaller>=6.10"
version=$("$VENV/bin/python" - <<'PY'
import re, pathlib
text = pathlib.Path("pyproject.toml").read_text()
print(re.search(r'"llama-cpp-python\[server\]([^"]*)"', text).group(1))
PY
)
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null || [ -n "${REBUILD_LLAMA:-}" ]; then
    echo "build_bundle: compiling a portable llama-cpp-python ($CMAKE)" >&2
    CMAKE_ARGS="$CMAKE" "$VENV/bin/python" -m pip install --quiet --force-reinstall --no-cache-dir \
        --no-binary llama-cpp-python "llama-cpp-python[server]$version"
fi
"$VENV/bin/python" -m pip install --quiet .
"$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN --distpath dist --workpath build/pyinstaller \
    packaging/mixdesk.spec
echo "build_bundle: dist/MixDesk/mixdesk ($(du -sh dist/MixDesk | cut -f1))" >&2
