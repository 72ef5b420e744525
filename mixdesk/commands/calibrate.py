"""``mixdesk calibrate``: measure this machine so that every speed MixDesk shows is measured."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from mixdesk import paths
from mixdesk.commands.common import calibration_store, machine, print_json
from mixdesk.commands.terminal import write_control
from mixdesk.core.engine.client import Engine
from mixdesk.core.loading.calibrate import calibrate


def run_calibrate(args: argparse.Namespace) -> int:
    """Run the calibrate command; returns the exit status."""
    store = calibration_store()
    if args.reset:
        store.clear()
        sys.stderr.write("mixdesk: forgot every speed and overhead measured on this machine.\n")
        return 0
    hardware = machine(args)
    show = sys.stderr.isatty() and not args.json

    def progress(what: str, fraction: float) -> None:
        if show:
            write_control(sys.stderr, "\r\x1b[K")
            sys.stderr.write(f"Calibrating: {what} ({fraction * 100:.0f}%)")
            sys.stderr.flush()

    with Engine() as engine:
        result = calibrate(
            engine,
            hardware,
            paths.cache_dir() / "calibration-models",
            threads=args.threads,
            on_progress=progress,
        )
    if show:
        write_control(sys.stderr, "\r\x1b[K")
    store.record_speed_model(result.model)
    model = result.model
    if args.json:
        print_json(
            {
                "seconds": result.seconds,
                "models_seconds": result.models_seconds,
                "threads": model.cpu_threads,
                "error": model.error,
                "check_predicted_tps": result.check_predicted_tps,
                "check_measured_tps": result.check_measured_tps,
                "model": asdict(model),
            }
        )
        return 0
    out = sys.stdout
    made = (
        f" (after {result.models_seconds:.0f} s making its models)"
        if result.models_seconds >= 1
        else ""
    )
    out.write(f"Measured in {result.seconds:.0f} s with {model.cpu_threads} CPU threads{made}.\n")
    out.write("CPU, generating (GB/s of weights read) and reading prompts (G weights/s):\n")
    for kind in sorted(model.cpu.eval_bytes_per_s):
        out.write(
            f"  {kind:<5} {model.cpu.eval_bytes_per_s[kind] / 1e9:6.1f} GB/s   "
            f"{model.cpu.prompt_weights_per_s[kind] / 1e9:6.1f} G/s\n"
        )
    out.write(
        f"Fixed costs: {model.token_s * 1e3:.2f} ms per token, "
        f"{model.layer_s * 1e6:.0f} us per layer.\n"
    )
    for name, rates in model.devices.items():
        out.write(
            f"{name}: {rates.eval_rate('Q4_K') / 1e9:.1f} GB/s on Q4_K, "
            f"{rates.hop_s * 1e3:.2f} ms per hop.\n"
        )
    out.write(
        f"Check on another model: predicted {result.check_predicted_tps:.1f} tok/s, measured "
        f"{result.check_measured_tps:.1f}; speeds are now 'measured on this machine', within "
        f"about {model.error:.0%}.\n"
    )
    return 0
