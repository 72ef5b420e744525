"""The package's shape: no import cycles, a Qt-free core, commands that stand on their own.

The import graph is read from the source (every ``import`` statement, at module level or
inside a function), not from what happens to be imported at run time, so a cycle hidden in
a function-level import is found before it bites.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mixdesk.core.gguf.synthetic import ModelSpec

PACKAGE = Path(__file__).resolve().parent.parent / "mixdesk"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its ``__init__``)."""
    modules: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path, modules: frozenset[str] = frozenset()) -> set[str]:
    """Dotted names ``module`` imports anywhere in its source, relative imports resolved.

    ``from pkg import mod`` names ``pkg.mod``, and ``pkg`` itself only when some imported
    name is not one of ``modules`` (an attribute of ``pkg/__init__``): reaching a submodule
    runs its package first in Python's own order, which is not a cycle.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names}
            names.update(submodules & modules)
            if not submodules <= modules:
                names.add(target)
    return names


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports.

    A package's ``__init__`` running before its submodules is Python's own order, not an
    edge; ``from mixdesk.core.engine import Engine`` is an edge to ``mixdesk.core.engine``.
    """
    modules = module_files(package)
    names = frozenset(modules)
    return {
        module: {name for name in imported_names(module, path, names) if name in modules} - {module}
        for module, path in modules.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph is a few hundred nodes
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth-first back to start, inside the group
        node = frontier.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                frontier.append(nxt)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - a group has one


def test_the_walker_finds_function_level_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("from pkg.sub import helpers\n")
    (pkg / "sub" / "helpers.py").write_text("def f():\n    from ..cli import main\n")
    (pkg / "leaf.py").write_text("import pkg.sub.helpers\n")
    (pkg / "sub" / "other.py").write_text("from pkg.sub import helpers\nfrom pkg import sub\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.helpers"] == {"pkg.cli"}
    assert graph["pkg.leaf"] == {"pkg.sub.helpers"}
    assert graph["pkg.sub.other"] == {"pkg.sub.helpers", "pkg.sub"}
    assert find_cycles(graph) == [["pkg.cli", "pkg.sub.helpers", "pkg.cli"]]


def test_no_import_cycles_among_mixdesk_modules() -> None:
    graph = import_graph()
    assert len(graph) > 50, "the walker did not find the package"
    assert find_cycles(graph) == []


def test_commands_do_not_import_the_cli() -> None:
    graph = import_graph()
    offenders = sorted(
        m for m, deps in graph.items() if m.startswith("mixdesk.commands") and "mixdesk.cli" in deps
    )
    assert offenders == []


#: mixdesk.core's packages from the bottom up: a package imports only its own modules and
#: those of the packages before it (never one after it).
CORE_LAYERS = (
    "gguf",  # GGUF files: header, profile, split names, legacy conversion, test models
    "machine",  # this machine and others: hardware, GPU build, RPC workers, their security
    "chat",  # conversations as text: templates and their sandbox, words, the context window
    "engine",  # the child process that owns llama.cpp, its client and protocol
    "planning",  # where the layers go, how fast, in what words; calibration
    "workspace",  # the user's settings, conversations and remote endpoints
    "hub",  # the Hugging Face Hub: listing, remote headers, downloads, pull, the library
    "loading",  # the one load path: model + machine + choices -> plan -> LoadConfig -> loaded
    "serving",  # mixdesk serve: the OpenAI-compatible server and its security
    "onboarding",  # the first-run page's ranking and the doctor
)


def _core_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["mixdesk", "core"] else None


def test_the_core_is_cut_into_layers_and_no_package_imports_a_higher_one() -> None:
    graph = import_graph()
    modules = [m for m in graph if m.startswith("mixdesk.core.")]
    packages = {_core_package(m) for m in modules}
    assert packages == set(CORE_LAYERS), "every core module lives in one of the layers"
    rank = {name: i for i, name in enumerate(CORE_LAYERS)}
    upward = sorted(
        f"{module} -> {dep}"
        for module in modules
        for dep in graph[module]
        if (target := _core_package(dep)) is not None
        and rank[target] > rank[str(_core_package(module))]
    )
    assert upward == []


def test_the_engine_never_imports_planning() -> None:
    """The engine reports device memory; the load service records what it means."""
    graph = import_graph()
    engine = [m for m in graph if _core_package(m) == "engine"]
    assert not [
        (m, d) for m in engine for d in graph[m] if _core_package(d) in ("planning", "loading")
    ]


#: The most lines a core module may have.
MAX_CORE_MODULE_LINES = 400


def test_core_modules_stay_readable() -> None:
    """A newcomer reads a module in one sitting: none in the core over 400 lines. The nine
    that were over it are split along their seams (download and its HTTP half, the worker's
    questions and its handshake, the engine's process handle and its requests...)."""
    long = {
        name: n
        for name, path in module_files().items()
        if name.startswith("mixdesk.core.")
        and (n := len(path.read_text().splitlines())) > MAX_CORE_MODULE_LINES
    }
    assert long == {}


def test_the_parity_reference_shares_no_code_with_the_engine() -> None:
    """llama.cpp's own path (the yardstick of the parity tests and the doctor) is written on
    llama.cpp's C API alone: a bug in MixDesk's prompt code cannot hide in both."""
    path = module_files()["mixdesk.core.engine.reference"]
    imported = imported_names("mixdesk.core.engine.reference", path)
    assert not {name for name in imported if name.split(".")[0] == "mixdesk"}


@pytest.mark.parametrize("package", ["mixdesk.core", "mixdesk.commands"])
def test_the_core_and_the_commands_import_no_qt(package: str) -> None:
    """Qt stays in mixdesk.ui: the core runs in a terminal and in tests without a display."""
    qt_users = sorted(
        module
        for module, path in module_files().items()
        if module.startswith(package)
        and any(name.split(".")[0] == "PySide6" for name in imported_names(module, path))
    )
    assert qt_users == []


def test_the_shipped_model_writer_has_no_broken_model_switches() -> None:
    """Broken files (a repeated token, an unknown architecture) are made in tests/model_factory."""
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    assert not fields & {"duplicate_token", "architecture"}


def test_functions_keep_within_the_branch_and_statement_limits() -> None:
    """ruff's PLR0912/PLR0915 hold everywhere; the few exceptions say why in a noqa."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--select",
            "PLR0912,PLR0915",
            "--output-format",
            "concise",
            "--no-cache",
            ".",
        ],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = PACKAGE.parent
    noqa = [
        f"{path.relative_to(root)}: {line.strip()}"
        for folder in ("mixdesk", "tests", "benchmarks", "docs", "packaging")
        for path in sorted((root / folder).rglob("*.py"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if re.search(r"noqa: [^#]*PLR091[25]", line)
    ]
    unexplained = [line for line in noqa if not re.search(r"PLR091[25] - \w", line)]
    assert unexplained == [], "say why beside the noqa"


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/helpers/ (and conftest.py): a test module is never
    imported by another one, nor by a benchmark or the screenshot script."""
    root = PACKAGE.parent
    importers = []
    for folder in ("tests", "benchmarks", "docs"):
        for path in sorted((root / folder).rglob("*.py")):
            for name in imported_names("x", path):
                if any(part.startswith("test_") for part in name.split(".")):
                    importers.append(f"{path.relative_to(root)} imports {name}")
    assert importers == []


#: What reaching into llama-cpp-python's private parts looks like: a Llama's underscored
#: attributes (``llm._ctx``, ``llm._model``) or its private modules (``llama_cpp._internals``).
_PRIVATE_LLAMA = re.compile(r"\b(?:llm|llama|_llm)\._[a-z]\w*|\bllama_cpp\._\w+")


def test_only_the_adapter_reaches_into_llama_cpp_python() -> None:
    """Every use of llama-cpp-python's private API is in ``engine/llama_adapter.py``, where
    tests/core/test_llama_adapter.py fails loudly when the pinned library changes."""
    found = [
        f"{name}: {m.group(0)}"
        for name, path in module_files().items()
        if name != "mixdesk.core.engine.llama_adapter"
        for m in _PRIVATE_LLAMA.finditer(path.read_text())
    ]
    assert found == []


def test_the_core_reads_no_settings_and_opens_no_library_of_its_own() -> None:
    """Compose once: the settings are read and the library opened where the app starts
    (mixdesk/cli.py, mixdesk/ui/app.py) and passed in; nothing in the core calls
    ``Settings.load()`` or ``Library(...)`` behind its caller's back."""
    hidden = []
    for name, path in module_files().items():
        if not name.startswith("mixdesk.core."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id == "Library":
                hidden.append(f"{name}:{node.lineno} Library(...)")
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "load"
                and isinstance(func.value, ast.Name)
                and func.value.id == "Settings"
            ):
                hidden.append(f"{name}:{node.lineno} Settings.load()")
    assert hidden == []


def test_worker_means_an_rpc_machine_only() -> None:
    """ "Worker" names a machine that lends its GPU over llama.cpp's RPC backend, nothing else:
    the engine's child process and the window's threads have names of their own."""
    found = []
    for name, path in module_files().items():
        about_workers = "worker" in name or "rpc" in name or name == "mixdesk.errors"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and "Worker" in node.name and not about_workers:
                found.append(f"{name}.{node.name}")
        if "worker" in name.rsplit(".", 1)[-1] and ".engine." in name:
            found.append(name)
    assert found == []
