"""``mixdesk pull``, ``models``, ``rm``, ``import`` and ``convert``: the model library from a terminal."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from mixdesk.commands.common import calibration_store, machine, print_json
from mixdesk.commands.terminal import write_control
from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.hub.download_http import DownloadCancelled, DownloadProgress
from mixdesk.core.hub.library import Library
from mixdesk.core.machine.hardware import HardwareInfo, format_bytes, format_rate
from mixdesk.core.planning.types import OffloadPlan
from mixdesk.core.planning.words import explain


class _ProgressPrinter:
    """A progress bar on stderr (one updating line on a terminal, a line every few seconds otherwise)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def download(self, p: DownloadProgress) -> None:
        if not self.enabled:
            return
        if p.phase == "waiting":
            self._write(
                f"{p.filename}: another MixDesk is downloading it; waiting for it to finish "
                "(Ctrl-C to stop waiting).",
                final=True,
            )
            return
        now = time.monotonic()
        final = p.phase != "downloading"
        if not final and now - self.last < (0.2 if self.tty else 2.0):
            return
        self.last = now
        frac = p.done_bytes / p.total_bytes if p.total_bytes else 1.0
        bar = "#" * int(frac * 30)
        eta = f"ETA {int(p.eta_s // 60)}m{int(p.eta_s % 60):02d}s" if p.eta_s else ""
        resumed = f" (resumed at {format_bytes(p.resumed_from)})" if p.resumed_from else ""
        line = (
            f"{p.filename}: [{bar:<30}] {frac * 100:5.1f}% {format_bytes(p.done_bytes)}/"
            f"{format_bytes(p.total_bytes)} {format_rate(p.speed_bps):>11} {eta}{resumed}"
        )
        if final:
            line += f" - {p.phase}"
        self._write(line, final=final)

    def convert(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self.last < (0.2 if self.tty else 2.0):
            return
        self.last = now
        self._write(
            f"converting to the merged expert layout: {done / max(total, 1) * 100:5.1f}%",
            final=done >= total,
        )

    def _write(self, line: str, *, final: bool) -> None:
        if self.tty:
            write_control(sys.stderr, "\r\x1b[K")
            sys.stderr.write(line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _print_plan(profile: ModelProfile, plan: OffloadPlan) -> None:
    from mixdesk.commands.plan import plan_table

    sys.stderr.write(
        f"{profile.name}: {format_bytes(profile.weights_bytes)} of weights. On this machine: "
        f"--ngl {plan.n_gpu_layers} ({plan.fit}), context {plan.n_ctx}.\n"
    )
    sys.stderr.write(plan_table(plan) + "\n")
    for line in explain(plan):
        sys.stderr.write(f"- {line}\n")


def _planner(hardware: HardwareInfo) -> Callable[[ModelProfile], OffloadPlan]:
    """How `pull` plans a model before downloading it: as `mixdesk plan` does."""
    from mixdesk.core.loading.choices import LoadChoices
    from mixdesk.core.loading.service import make_plan

    calibration = calibration_store().read()
    return lambda profile: make_plan(profile, hardware, LoadChoices(), calibration=calibration)


def run_pull(args: argparse.Namespace, *, library: Library) -> int:
    """Download a model into the library."""
    from mixdesk.core.hub.pull import pull

    printer = _ProgressPrinter(enabled=not args.json)
    cancel = threading.Event()
    try:
        result = pull(
            args.repo,
            filename=args.file,
            quant=args.quant,
            revision=args.revision,
            library=library,
            plan=_planner(machine(args)),
            on_plan=None if args.json else _print_plan,
            on_progress=printer.download,
            on_convert=printer.convert,
            cancel=cancel,
            wait=True,
        )
    except KeyboardInterrupt:
        raise DownloadCancelled(
            "Stopped; run the same command again to continue where it stopped."
        ) from None
    entry = result.entry
    if args.json:
        from mixdesk.commands.plan import plan_to_json

        data = {
            **asdict(entry),
            "already_had": result.already_had,
            "converted": result.converted,
            "plan": plan_to_json(result.plan, model=entry.path) if result.plan else None,
        }
        print_json(data)
    elif result.already_had:
        sys.stderr.write(f"Already in the library: {entry.name} ({entry.path}).\n")
    else:
        sys.stderr.write(
            f"Ready: {entry.name} ({format_bytes(entry.size)}); chat with `mixdesk chat {entry.name}`.\n"
        )
    return 0


def run_models(args: argparse.Namespace, *, library: Library) -> int:
    """List the library."""
    entries = library.entries()
    if args.json:
        print_json([{**asdict(e), "exists": e.exists} for e in entries])
        return 0
    if not entries:
        sys.stdout.write(
            "No models yet: `mixdesk pull TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF` gets one.\n"
        )
    for e in entries:
        source = f"{e.repo_id}" if e.repo_id else "imported"
        note = " (converted)" if e.converted_from else ""
        gone = "  [file missing]" if not e.exists else ""
        sys.stdout.write(f"{e.name:<48} {format_bytes(e.size):>11}  {source}{note}{gone}\n")
    return 0


def run_rm(args: argparse.Namespace, *, library: Library) -> int:
    """Remove a model from the library (and its files from the models folder)."""
    entry = library.remove(args.name)
    sys.stderr.write(f"Removed {entry.name}.\n")
    return 0


def run_import(args: argparse.Namespace, *, library: Library) -> int:
    """Register a local GGUF (converting a legacy Mixtral file)."""
    from mixdesk.core.hub.pull import import_model

    printer = _ProgressPrinter(enabled=True)
    entry = import_model(Path(args.path), library=library, on_convert=printer.convert)
    note = " (converted to the merged expert layout)" if entry.converted_from else ""
    sys.stderr.write(f"Imported {entry.name}{note}: {entry.path}\n")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Convert a legacy Mixtral file to the merged layout."""
    from mixdesk.core.gguf.convert import convert_legacy

    printer = _ProgressPrinter(enabled=True)
    result = convert_legacy(Path(args.input), Path(args.output), on_progress=printer.convert)
    sys.stderr.write(
        f"Converted {result.merged_tensors} expert groups in {result.seconds:.1f} s: {result.output}\n"
    )
    return 0


def run_catalog(args: argparse.Namespace) -> int:
    """Show the built-in catalog."""
    from mixdesk.core.hub.catalog import load_catalog

    catalog = load_catalog()
    if args.json:
        print_json([asdict(m) for m in catalog])
        return 0
    for m in catalog:
        note = " (converted after download)" if m.layout == "legacy" else ""
        sys.stdout.write(f"{m.title}\n  {m.repo_id}{note}\n")
        for f in m.files:
            star = "  <- recommended" if f.recommended else ""
            sys.stdout.write(f"    {f.quant:<8} {format_bytes(f.size):>10}  {f.filename}{star}\n")
        if not m.files:
            sys.stdout.write("    (files listed live: `mixdesk list " + m.repo_id + "`)\n")
    sys.stdout.write(
        "\nGet one with `mixdesk pull REPO --quant Q4_K_M`; `mixdesk plan REPO/FILE` first says how it will fit.\n"
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    """List a Hub repository's GGUF models."""
    from mixdesk.core.hub.api import list_models

    models = list_models(args.repo)
    if args.json:
        print_json(
            [
                {
                    "name": m.name,
                    "quant": m.quant,
                    "size": m.size,
                    "files": [f.filename for f in m.files],
                    "join": m.join,
                }
                for m in models
            ]
        )
        return 0
    for m in models:
        parts = f" ({len(m.files)} parts)" if len(m.files) > 1 else ""
        sys.stdout.write(f"{m.quant or '?':<8} {format_bytes(m.size):>11}  {m.filename}{parts}\n")
    return 0
