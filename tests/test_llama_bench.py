"""llama-bench as engine_speed.py's yardstick: the build's flags, reading its output, and the
one sentence when it cannot be built.

Building it takes minutes on two cores, so the suite does not: these tests cover what
decides the comparison (the flags are the installed wheel's, the command generates at the
prompt's depth, the figure read is llama-bench's), a machine where it cannot be built, and
the benchmark judging the goal with a stand-in that answers as llama-bench does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from benchmarks import engine_speed, llama_bench
from tests.helpers.benchmarks import run_benchmark

#: What llama-bench 0.3.36's ``-o json`` printed here (fields the benchmark does not read cut).
REAL_OUTPUT = """[
  {
    "build_commit": "unknown",
    "backends": "CPU",
    "model_filename": "benchmarks/.models/model-fe792743cc.Q4_K_M.gguf",
    "n_threads": 2,
    "type_k": "f16",
    "n_gpu_layers": 0,
    "flash_attn": 0,
    "n_prompt": 0,
    "n_gen": 16,
    "n_depth": 20,
    "avg_ns": 64410206,
    "avg_ts": 248.407838,
    "samples_ns": [ 64410206 ],
    "samples_ts": [ 248.408 ]
  }
]
"""


def test_the_figure_is_llama_benchs_own_clock() -> None:
    run = llama_bench.parse_output(REAL_OUTPUT)
    assert run == llama_bench.BenchRun(eval_tps=248.407838, n_gen=16, n_depth=20)
    with pytest.raises(ValueError, match="no test result"):
        llama_bench.parse_output("[]")


def test_the_command_generates_at_the_prompts_depth_on_the_cpu(tmp_path: Path) -> None:
    cmd = llama_bench.llama_bench_command(
        tmp_path / "llama-bench",
        tmp_path / "m.gguf",
        threads=2,
        n_gen=128,
        depth=37,
        flash_attn=False,
    )
    pairs = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert pairs == {
        "-m": str(tmp_path / "m.gguf"),
        "-t": "2",
        "-n": "128",
        "-p": "0",
        "-d": "37",
        "-r": "1",
        "-ngl": "0",
        "-fa": "off",
        "-o": "json",
    }


@pytest.mark.parametrize(
    ("cpuinfo", "amx"), [("flags : avx512f amx_tile amx_int8", True), ("flags : avx2", False)]
)
def test_the_flags_are_the_wheels_without_rpc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpuinfo: str, amx: bool
) -> None:
    """The bootstrap's flags for this machine (AMX kernels off where the CPU has AMX, as the
    installed wheel was built), without the RPC backend llama-bench does not need."""
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo + "\n")
    monkeypatch.setenv("MIXDESK_CPUINFO", str(fake))
    monkeypatch.setenv("MIXDESK_GPU", "auto")  # build_flags asks for the CPU build itself
    key, flags = llama_bench.build_flags()
    assert "-DGGML_RPC=ON" not in flags
    assert not any("CUDA" in f for f in flags)
    no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    assert flags == ([f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"] if amx else [])
    assert key == ("cpu-noamx" if amx else "cpu")


def _path_without(tmp_path: Path, missing: str) -> str:
    """A PATH with every program of this one but ``missing``."""
    farm = tmp_path / "bin"
    farm.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not Path(folder).is_dir():
            continue
        for program in Path(folder).iterdir():
            target = farm / program.name
            if program.name != missing and not target.exists() and os.access(program, os.X_OK):
                target.symlink_to(program)
    return str(farm)


def test_without_cmake_the_comparison_is_skipped_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", _path_without(tmp_path, "cmake"))
    with pytest.raises(llama_bench.LlamaBenchUnavailableError) as caught:
        llama_bench.ensure_llama_bench(say=False)
    assert str(caught.value) == "llama-bench cannot be built here: CMake is missing"
    binary, sentence = engine_speed.find_llama_bench("auto")
    assert binary is None
    assert sentence == (
        "llama-bench cannot be built here: CMake is missing, so the comparison with "
        "llama-bench is skipped."
    )
    assert engine_speed.find_llama_bench(str(tmp_path / "nowhere")) == (
        None,
        f"There is no llama-bench at {tmp_path / 'nowhere'}, so the comparison with it is skipped.",
    )


def test_a_built_llama_bench_is_found_again(tmp_path: Path) -> None:
    """A second run finds the cached build (built with the same flags) and builds nothing."""
    key, flags = llama_bench.build_flags()
    target = llama_bench.cache_root() / f"{llama_bench.installed_version()}-{key}"
    (target / "bin").mkdir(parents=True)
    (target / "bin" / "llama-bench").write_text("")
    (target / "flags").write_text(" ".join(flags))
    assert llama_bench.ensure_llama_bench(say=False) == target / "bin" / "llama-bench"


def _stand_in(tmp_path: Path, tps: float) -> Path:
    """An executable that answers as llama-bench does and keeps its arguments."""
    script = tmp_path / "llama-bench"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        "a = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
        f"print(json.dumps([{{'avg_ts': {tps}, 'n_gen': int(a['-n']), "
        "'n_depth': int(a['-d'])}]))\n"
    )
    script.chmod(0o755)
    return script


def test_the_benchmark_judges_the_engine_against_llama_bench(tmp_path: Path) -> None:
    """An impossible yardstick (a billion tok/s) fails the goal, with the figure on stderr."""
    stand_in = _stand_in(tmp_path, 1e9)
    args = ["--size", "tiny", "--rounds", "2", "--tokens", "16", "--llama-bench"]
    proc, result = run_benchmark("engine_speed.py", *args, str(stand_in))
    assert proc.returncode == 1
    goals = {g["key"]: g for g in result["goals"]}
    assert goals["bench_ratio"]["verdict"] == "MISSED"
    assert goals["bench_ratio"]["goal"] == engine_speed.GOAL_BENCH_RATIO
    assert goals["bench_ratio"]["value"] == result["bench_ratio_median"] < 1e-3
    assert len(result["bench_ratios"]) == 2
    # llama-bench ran with the engine's threads, tokens and prompt depth
    argv = json.loads((tmp_path / "argv.json").read_text())
    asked = dict(zip(argv[::2], argv[1::2], strict=False))
    assert (asked["-t"], asked["-n"], asked["-p"]) == ("2", "16", "0")
    assert int(asked["-d"]) == result["bench_depth"] > 10
    assert result["llama_bench_skipped"] is None
