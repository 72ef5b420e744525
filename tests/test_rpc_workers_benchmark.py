"""benchmarks/rpc_workers.py runs two real `mixdesk worker` processes, prints its figures and
judges its goals: the exit status follows the verdicts, and an impossible goal fails the run.

It runs small here: the tiny model, whose tensors are all below llama.cpp's 10 MiB cache
threshold and so small that llama.cpp's commands weigh as much as its weights, and 8 tokens,
so the byte goals are relaxed (and the TLS goals, over one round of 8 tokens, are only checked
for being measured); the README's figures come from the mid-size model.
"""

from __future__ import annotations

from tests.helpers.benchmarks import run_benchmark


def test_rpc_workers_benchmark_measures_bytes_per_worker_and_judges_its_goals() -> None:
    relaxed = [
        "second_load_share=2",
        "sent_vs_plan_0=2",
        "sent_vs_plan_1=2",
        "tls_eval_ratio=0",
        "tls_load_ratio=100",
    ]
    proc, result = run_benchmark(
        "rpc_workers.py",
        "--size",
        "tiny",
        "--tokens",
        "8",
        "--rounds",
        "1",
        *[arg for goal in [*relaxed, "bytes_per_token_kib=1000"] for arg in ("--goal", goal)],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = result["two_workers"]
    assert len(two["devices"]) == 2 and sum(two["tensor_split"]) == 5
    for device in two["devices"]:
        assert device["received_bytes_first_load"] >= device["planned_send_bytes"] > 0
    assert result["one_device"]["eval_tps"] > 0 and two["eval_tps"] > 0
    tls = result["tls"]  # the same load with the link plain and with TLS, both authenticated
    assert tls["plain"]["eval_tps"] > 0 and tls["tls"]["eval_tps"] > 0
    assert tls["eval_tps_tls_vs_plain"] > 0 and tls["load_s_tls_vs_plain"] > 0
    assert "eval tok/s with TLS / plain" in proc.stderr

    missed, _ = run_benchmark(
        "rpc_workers.py",
        "--size",
        "tiny",
        "--tokens",
        "8",
        "--rounds",
        "1",
        *[
            arg
            for goal in [*relaxed, "bytes_per_token_kib=0", "tls_eval_ratio=1000"]
            for arg in ("--goal", goal)
        ],
    )
    assert missed.returncode == 1
    assert "[MISSED] traffic per generated token" in missed.stderr
    assert "[MISSED] eval tok/s with TLS / plain" in missed.stderr
