#!/usr/bin/env bash
# Set MixDesk up from source in ./.venv, then start it or run the whole test suite.
#
#   bash packaging/bootstrap.sh start [MIXDESK ARGS...]   set up, then run `mixdesk ARGS`
#   bash packaging/bootstrap.sh test  [PYTEST ARGS...]    set up, then ruff, mypy and pytest
#
# Works on a fresh Debian/Ubuntu machine with Python >= 3.10: as root it installs the Debian
# packages it needs (a C++ compiler, cmake, python3-venv); otherwise it names them. The first
# run compiles llama.cpp through pip (about 9 minutes on 2 cores); pip caches the wheel.
set -euo pipefail

cd "$(dirname "$0")/.."
mode="${1:-start}"
[ $# -gt 0 ] && shift
PYTHON="${PYTHON:-python3}"
VENV="${MIXDESK_VENV:-.venv}"

say() { printf 'bootstrap: %s\n' "$*" >&2; }

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
say "installing MixDesk$extras (the first time this compiles llama.cpp: about 9 minutes on 2 cores)"
"$PY" -m pip install --quiet --upgrade pip wheel
"$PY" -m pip install --quiet -e ".$extras"

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
