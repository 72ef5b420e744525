"""``mixdesk plan``, ``mixdesk hw`` and the plan ``mixdesk chat`` uses, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import model_factory as mf

MIXDESK = [sys.executable, "-m", "mixdesk"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIXDESK, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or os.environ.copy(),
        check=False,
    )


@pytest.fixture(scope="module")
def mixtral_q4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mf.mixtral_header_file(tmp_path_factory.mktemp("plan-cli"), "Q4_K_M", legacy=True)


def test_plan_json_for_a_v100(mixtral_q4: Path) -> None:
    proc = run(
        "plan",
        str(mixtral_q4),
        "--vram",
        "15860MiB/16160MiB",
        "--ram",
        "64GiB",
        "--ctx",
        "2048",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["n_gpu_layers"] >= 19
    assert plan["fit"] == "partial"
    assert plan["speed_source"] == "estimate"
    assert plan["expected_tps"] > 0 and plan["expected_prompt_tps"] > 0
    gpu, cpu = plan["devices"]
    assert gpu["kind"] == "gpu" and cpu["kind"] == "cpu"
    assert gpu["used_bytes"] <= gpu["free_bytes"]
    assert set(gpu) >= {
        "weights_bytes",
        "kv_bytes",
        "compute_bytes",
        "overhead_bytes",
        "margin_bytes",
    }
    assert plan["profile"]["legacy_expert_layout"] is True


def test_plan_names_the_output_layers_place(mixtral_q4: Path) -> None:
    """llama.cpp's n_gpu_layers counts the output layer first: on a 16 GB V100 at context
    2048, 19 means the output layer and 18 of the 32 layers, and the text says so."""
    proc = run(
        "plan", str(mixtral_q4), "--vram", "15860MiB/16160MiB", "--ram", "64GiB", "--ctx", "2048"
    )
    assert proc.returncode == 0, proc.stderr
    assert "Plan: --ngl 19 (18 of 32 layers + output on GPU; partial offload)" in proc.stdout
    assert "the output layer and 18 of 32 layers" in proc.stdout
    assert "19/32" not in proc.stdout


def test_plan_table_and_cpu_only(mixtral_q4: Path) -> None:
    proc = run("plan", str(mixtral_q4), "--gpu", "none", "--ram", "16GiB")
    assert proc.returncode == 0, proc.stderr
    assert "Plan: --ngl 0 (all 32 layers in RAM; too big for this machine)" in proc.stdout
    assert "will not fit" in proc.stdout
    assert "CPU RAM" in proc.stdout


def test_environment_override(mixtral_q4: Path) -> None:
    env = dict(os.environ, MIXDESK_HW="vram=80GiB,ram=128GiB")
    plan = json.loads(run("plan", str(mixtral_q4), "--json", env=env).stdout)
    assert plan["fit"] == "full"
    assert plan["n_gpu_layers"] == 33


def test_hw_json() -> None:
    proc = run("hw", "--json")
    assert proc.returncode == 0, proc.stderr
    hw = json.loads(proc.stdout)
    assert hw["ram_total_bytes"] > 0
    assert hw["llama_cpp_gpu_backends"] == []
    text = run("hw", "--vram", "16GiB").stdout
    assert "16.00 GiB free of 16.00 GiB" in text


@pytest.mark.parametrize(
    ("args", "words"),
    [(("--vram", "lots"), "not a memory size"), (("--gpu", "all"), "only choice is 'none'")],
)
def test_bad_hardware_arguments(mixtral_q4: Path, args: tuple[str, ...], words: str) -> None:
    proc = run("plan", str(mixtral_q4), *args)
    assert proc.returncode == 1
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plan_of_a_damaged_file(models: dict[str, Path]) -> None:
    proc = run("plan", str(models["truncated"]))
    assert proc.returncode == 1
    assert "incomplete or damaged" in proc.stderr


def test_chat_says_what_the_plan_chose(models: dict[str, Path]) -> None:
    proc = run(
        "chat", str(models["q4_k_m"]), "--prompt", "hi", "--max-tokens", "4", "--vram", "4GiB"
    )
    assert proc.returncode == 0, proc.stderr
    assert "mixdesk: --ngl 5, context 4096: All 4 layers and the output layer fit" in proc.stderr
    cpu = run("chat", str(models["q4_k_m"]), "--prompt", "hi", "--max-tokens", "4", "--json")
    assert json.loads(cpu.stdout)["n_gpu_layers"] == 0


def test_plan_into_a_closed_pipe_ends_quietly(mixtral_q4: Path) -> None:
    """`mixdesk plan M | head -1`: no "Broken pipe" sentence, as with any Unix tool."""
    import shlex
    import shutil
    import subprocess

    bash = shutil.which("bash")
    assert bash is not None

    command = " ".join(
        shlex.quote(a) for a in [*MIXDESK, "plan", str(mixtral_q4), "--vram", "16GiB"]
    )
    proc = subprocess.run(
        [bash, "-c", f"set -o pipefail; {command} | head -1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stdout.startswith("Mixtral 8x7B")
    assert proc.stderr == ""


def test_plan_shows_both_strategies_for_a_mixture_of_experts(mixtral_q4: Path) -> None:
    proc = run(
        "plan", str(mixtral_q4), "--vram", "15860MiB/16160MiB", "--ram", "64GiB", "--ctx", "2048"
    )
    assert proc.returncode == 0, proc.stderr
    assert "layers   18 of 32 layers + output on GPU" in proc.stdout
    # tensor by tensor, the last layers' experts first (faster prompts on a GPU)
    assert (
        "experts  all 32 layers + output on GPU, experts of layers 18-31 and 1 of 3 expert "
        "tensors of layer 17 in RAM"
    ) in proc.stdout
    experts = run(
        "plan",
        str(mixtral_q4),
        "--vram",
        "15860MiB/16160MiB",
        "--ctx",
        "2048",
        "--strategy",
        "experts",
        "--json",
    )
    plan = json.loads(experts.stdout)
    assert plan["n_gpu_layers"] == 33 and plan["fit"] == "experts"


def test_plan_prints_no_strategies_that_offer_no_choice(tmp_path: Path) -> None:
    """With no GPU, or room for the whole model on it, both strategies place it alike: no
    "Strategies" heading over two identical rows."""
    model = mf.make_model(tmp_path, mf.TINY, "F32", name="tiny")
    for machine in (["--gpu", "none"], ["--vram", "16GiB"]):
        proc = run("plan", str(model), *machine, "--ram", "64GiB")
        assert proc.returncode == 0, proc.stderr
        assert "Plan: --ngl" in proc.stdout
        assert "Strategies" not in proc.stdout


def test_experts_from_the_first_or_the_last_layers(mixtral_q4: Path) -> None:
    """``--experts-from`` picks whose expert tensors stay in RAM; ``--experts-in-ram K`` still
    means K whole layers; the JSON names every tensor kept in RAM."""
    common = ["plan", str(mixtral_q4), "--vram", "15860MiB/16160MiB", "--ctx", "2048"]
    plans = {
        order: json.loads(
            run(*common, "--strategy", "experts", "--experts-from", order, "--json").stdout
        )
        for order in ("first", "last")
    }
    first, last = plans["first"], plans["last"]
    assert first["experts_order"] == "first" and last["experts_order"] == "last"
    assert first["cpu_tensors"][0] == "blk.0.ffn_down_exps.weight"
    assert last["cpu_tensors"][0] == "blk.31.ffn_down_exps.weight"
    assert first["partial_layer"] == {"layer": 14, "in_ram": 1, "of": 3}
    assert first["experts_in_ram"] == 14 and len(first["cpu_tensors"]) == 43
    whole = json.loads(
        run(
            *common,
            "--strategy",
            "experts",
            "--experts-in-ram",
            "3",
            "--experts-from",
            "last",
            "--json",
        ).stdout
    )
    assert whole["experts_in_ram"] == 3 and whole["partial_layer"] is None
    assert whole["placement"].endswith("experts of layers 29-31 in RAM")
    bad = run(*common, "--strategy", "experts", "--experts-from", "middle")
    assert bad.returncode == 2 and "invalid choice: 'middle'" in bad.stderr
