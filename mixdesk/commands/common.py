"""What the terminal commands share: JSON output, hardware overrides, the load options."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mixdesk.commands.terminal import json_safe
from mixdesk.core.engine.protocol import KV_CACHE_TYPES
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.machine import hardware
from mixdesk.core.machine.hardware import HardwareInfo, Overrides, apply_overrides
from mixdesk.core.planning.calibration import CalibrationStore
from mixdesk.core.planning.types import EXPERTS_ORDERS, STRATEGIES
from mixdesk.errors import InvalidArgumentError


def print_json(data: Any) -> None:
    """Print ``data`` as one JSON document on stdout."""
    # DEL and C1 controls stay raw with ensure_ascii=False: escape them, the data is the same.
    sys.stdout.write(json_safe(json.dumps(data, indent=2, ensure_ascii=False)) + "\n")
    sys.stdout.flush()


def non_negative_int(text: str) -> int:
    """argparse type: 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def positive_int(text: str) -> int:
    """argparse type: 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def gpu_layers(text: str) -> int:
    """argparse type: a layer count, or 'all' (-1)."""
    if text in ("all", "-1"):
        return -1
    return non_negative_int(text)


# argparse names the type in its messages ("invalid whole number value: 'abc'").
positive_int.__name__ = "positive whole number"
non_negative_int.__name__ = "whole number"
gpu_layers.__name__ = "layer count"


def add_hardware_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that override detected hardware (plan, hw, chat, serve, pull)."""
    group = parser.add_argument_group("hardware (instead of what is detected; also MIXDESK_HW)")
    group.add_argument(
        "--vram", metavar="SIZE", help="free GPU memory, or FREE/TOTAL (e.g. 15860MiB/16160MiB)"
    )
    group.add_argument("--ram", metavar="SIZE", help="available RAM (e.g. 64GiB)")
    group.add_argument("--gpu", metavar="none", help="'none': plan for the CPU only")


def add_load_arguments(parser: argparse.ArgumentParser, *, runs: bool = True) -> None:
    """How to load a model (chat, serve, plan): the same options with the same meaning.

    Args:
        parser: the command's parser.
        runs: whether the command really loads (threads, batch, mmap only matter then).
    """
    load = parser.add_argument_group("loading")
    load.add_argument(
        "--ngl",
        type=gpu_layers,
        metavar="N",
        help="llama.cpp's n_gpu_layers: the output layer plus N-1 repeating layers on the GPU; "
        "0 for none, 'all' (default: chosen for you)",
    )
    load.add_argument(
        "--ctx",
        type=non_negative_int,
        metavar="N",
        help="context length in tokens (0: the model's own; default 4096, or less if that fits more layers)",
    )
    load.add_argument("--flash-attn", action="store_true", help="use flash attention")
    load.add_argument(
        "--kv-type", choices=KV_CACHE_TYPES, default="f16", help="KV cache type (default f16)"
    )
    load.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="layers",
        help="layers: whole layers on the GPU, the rest in RAM (default); experts: every layer "
        "on the GPU with as few expert tensors in RAM as fit (--n-cpu-moe, tensor by tensor)",
    )
    load.add_argument(
        "--experts-in-ram",
        type=non_negative_int,
        metavar="K",
        help="with --strategy experts: keep the experts of K whole layers in RAM "
        "(default: as few expert tensors as fit)",
    )
    load.add_argument(
        "--experts-from",
        choices=EXPERTS_ORDERS,
        help="with --strategy experts: the first or the last layers' experts go to RAM "
        "(default: the faster, by the speed model)",
    )
    load.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="also use the GPU (or CPU) that `mixdesk worker` offers at HOST:PORT; repeatable",
    )
    load.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads (default: physical cores); the speed depends on it",
    )
    if not runs:
        return
    load.add_argument(
        "--batch",
        type=positive_int,
        default=512,
        metavar="N",
        help="prompt batch size (default 512)",
    )
    load.add_argument(
        "--no-mmap", action="store_true", help="read the whole file into RAM instead of mapping it"
    )


def calibration_store() -> CalibrationStore:
    """This machine's measurements (the terminal's composition root makes it here, once)."""
    return CalibrationStore.default()


def load_choices(args: argparse.Namespace) -> LoadChoices:
    """The load options of a command line as :class:`LoadChoices`."""
    return LoadChoices(
        n_gpu_layers=args.ngl,
        n_ctx=args.ctx,
        kv_type=args.kv_type,
        flash_attn=args.flash_attn,
        n_threads=getattr(args, "threads", None),
        n_batch=getattr(args, "batch", 512),
        use_mmap=not getattr(args, "no_mmap", False),
        strategy=args.strategy,
        experts_in_ram=args.experts_in_ram,
        experts_from=args.experts_from,
    )


def machine(args: argparse.Namespace) -> HardwareInfo:
    """Detected hardware with the environment's and the command line's overrides."""
    overrides = Overrides.from_env().merged_with(
        Overrides(
            vram=getattr(args, "vram", None),
            ram=getattr(args, "ram", None),
            gpu=getattr(args, "gpu", None),
        )
    )
    detected = apply_overrides(hardware.detect(), overrides)
    return with_workers(detected, getattr(args, "worker", None) or [])


def with_workers(hw: HardwareInfo, endpoints: list[str]) -> HardwareInfo:
    """``hw`` with the workers at ``endpoints`` as offload devices (each probed in a child
    process: device, free memory, link speed; an unreachable or mismatched one is named).

    Raises:
        InvalidArgumentError: an endpoint is not HOST:PORT, or given twice.
        WorkerError: a worker cannot be used.
    """
    from mixdesk.core.machine.rpc_worker import probe_in_child, with_devices

    if len(set(endpoints)) != len(endpoints):
        raise InvalidArgumentError("The same --worker is given twice; name each worker once.")
    return with_devices(hw, [probe_in_child(e).as_gpu() for e in endpoints])
