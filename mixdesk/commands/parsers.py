"""The ``mixdesk`` command line: one function per command adds its parser and options.

:func:`mixdesk.cli.build_parser` calls each builder in :data:`BUILDERS` in turn, so a
command's options live in one short function that reads like its ``--help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from mixdesk.commands.common import (
    add_hardware_arguments,
    add_load_arguments,
    non_negative_int,
    positive_int,
)
from mixdesk.commands.keys import add_key_arguments

if TYPE_CHECKING:
    #: What ``add_subparsers`` returns (for any parser class); each builder adds to it.
    Commands: TypeAlias = argparse._SubParsersAction[Any]


def add_chat(commands: Commands) -> None:
    """``mixdesk chat``: a local model or a remote endpoint, one answer or interactive."""
    chat = commands.add_parser("chat", help="chat with a model in the terminal")
    chat.add_argument("model", metavar="MODEL", nargs="?", help="a .gguf file or a library name")
    remote = chat.add_argument_group(
        "remote endpoint (TGI, llama-server, vLLM, Inference Endpoints)"
    )
    remote.add_argument(
        "--endpoint", metavar="URL", help="chat with an OpenAI-compatible server instead"
    )
    add_key_arguments(remote, purpose="the endpoint's API key (default: the one saved in the app)")
    remote.add_argument(
        "--model", dest="model_name", metavar="NAME", help="the model to ask the endpoint for"
    )
    chat.add_argument("--prompt", help="answer this one message and exit (otherwise: interactive)")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument(
        "--session",
        metavar="FILE",
        help="keep the conversation and its KV state in FILE; the next run continues it "
        "without reading it again",
    )
    add_load_arguments(chat)
    _add_sampling_arguments(chat)
    chat.add_argument(
        "--json", action="store_true", help="print one JSON object with the answer and its speed"
    )
    add_hardware_arguments(chat)


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--max-tokens",
        type=int,
        default=512,
        metavar="N",
        help="tokens to generate at most (0: until the context is full; default 512)",
    )
    sampling.add_argument(
        "--ignore-eos",
        action="store_true",
        help="keep generating past end-of-text (for speed measurements, as llama-bench does)",
    )
    sampling.add_argument("--temperature", "--temp", type=float, default=0.7, metavar="T")
    sampling.add_argument("--top-p", type=float, default=0.95, metavar="P")
    sampling.add_argument("--top-k", type=non_negative_int, default=40, metavar="K")
    sampling.add_argument("--min-p", type=float, default=0.05, metavar="P")
    sampling.add_argument("--repeat-penalty", type=float, default=1.1, metavar="R")
    sampling.add_argument(
        "--seed", type=non_negative_int, metavar="N", help="random seed (default: random)"
    )
    sampling.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)"
    )


def add_plan(commands: Commands) -> None:
    """``mixdesk plan``: the offload plan, from a local file or a Hub header."""
    plan = commands.add_parser("plan", help="show how a model would be split between GPU and RAM")
    plan.add_argument(
        "model",
        metavar="MODEL",
        help="a .gguf file, or OWNER/REPO/FILE.gguf on the Hub (header only)",
    )
    add_load_arguments(plan, runs=False)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_hardware_arguments(plan)


def add_serve(commands: Commands) -> None:
    """``mixdesk serve``: a local model on an OpenAI-compatible API."""
    serve = commands.add_parser("serve", help="serve a model on an OpenAI-compatible API")
    serve.add_argument("model", metavar="MODEL", help="a .gguf file or a library name")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    serve.add_argument("--port", type=positive_int, default=8080, help="port (default 8080)")
    add_key_arguments(serve, purpose="require this key from clients on every route")
    serve.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. http://localhost:3000) call the API; repeatable "
        "(default: no web page can)",
    )
    add_load_arguments(serve)
    add_hardware_arguments(serve)


def add_hw(commands: Commands) -> None:
    """``mixdesk hw``: the hardware MixDesk sees."""
    hw = commands.add_parser("hw", help="show the GPUs, RAM and CPU MixDesk sees")
    hw.add_argument("--json", action="store_true", help="print as JSON")
    add_hardware_arguments(hw)


def add_pull(commands: Commands) -> None:
    """``mixdesk pull``: download a model from the Hub."""
    pull = commands.add_parser(
        "pull", help="download a model from the Hugging Face Hub (resumable)"
    )
    pull.add_argument(
        "repo",
        metavar="REPO",
        help="a Hub repository, e.g. TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF",
    )
    which = pull.add_mutually_exclusive_group()
    which.add_argument("--file", metavar="NAME", help="the file to get")
    which.add_argument("--quant", metavar="Q", help="the quantisation to get (default Q4_K_M)")
    pull.add_argument("--revision", metavar="REV", help="a branch, tag or commit")
    pull.add_argument("--json", action="store_true", help="print the result as JSON")
    add_hardware_arguments(pull)


def add_catalog_and_list(commands: Commands) -> None:
    """``mixdesk catalog`` and ``mixdesk list REPO``: what there is to download."""
    catalog = commands.add_parser("catalog", help="the Mixtral models MixDesk knows, with sizes")
    catalog.add_argument("--json", action="store_true", help="print as JSON")
    ls = commands.add_parser("list", help="list the GGUF models of a Hub repository")
    ls.add_argument("repo", metavar="REPO")
    ls.add_argument("--json", action="store_true", help="print as JSON")


def add_library(commands: Commands) -> None:
    """``mixdesk models``, ``rm``, ``import`` and ``convert``: the model library."""
    models = commands.add_parser("models", help="list the models in the library")
    models.add_argument("--json", action="store_true", help="print as JSON")
    rm = commands.add_parser("rm", help="remove a model from the library and delete its files")
    rm.add_argument("name", metavar="NAME")
    imp = commands.add_parser(
        "import", help="add a local .gguf to the library (converting legacy Mixtral files)"
    )
    imp.add_argument("path", metavar="PATH")
    conv = commands.add_parser(
        "convert", help="convert a legacy per-expert Mixtral GGUF to the merged layout"
    )
    conv.add_argument("input", metavar="IN")
    conv.add_argument("output", metavar="OUT")


def add_install_desktop(commands: Commands) -> None:
    """``mixdesk install-desktop``: the application-menu entry."""
    desktop = commands.add_parser(
        "install-desktop", help="add MixDesk to the application menu (Linux)"
    )
    desktop.add_argument("--uninstall", action="store_true", help="remove it again")


def add_calibrate(commands: Commands) -> None:
    """``mixdesk calibrate``: measure this machine's speed per quantisation type and device."""
    calibrate = commands.add_parser(
        "calibrate",
        help="measure this machine (under a minute) so that the speeds MixDesk shows are measured",
    )
    calibrate.add_argument("--json", action="store_true", help="print the coefficients as JSON")
    calibrate.add_argument(
        "--threads", type=positive_int, metavar="N", help="CPU threads (default: physical cores)"
    )
    calibrate.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="also measure the device `mixdesk worker` offers at HOST:PORT; repeatable",
    )
    calibrate.add_argument("--gpu", metavar="none", help="'none': measure the CPU only")
    calibrate.add_argument(
        "--reset", action="store_true", help="forget everything measured on this machine"
    )


def add_doctor(commands: Commands) -> None:
    """``mixdesk doctor``: the health checks."""
    doctor = commands.add_parser("doctor", help="check that MixDesk can run here, and how")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")


def add_worker(commands: Commands) -> None:
    """``mixdesk worker``: lend this machine's GPU (or CPU) to MixDesk on another machine."""
    worker = commands.add_parser(
        "worker",
        help="lend this machine's GPU (or CPU) to MixDesk on another machine (llama.cpp RPC)",
        description="Serve this machine's GPU (or CPU) through llama.cpp's RPC server until "
        "Ctrl-C; the machine that runs the model adds it with --worker HOST:PORT. Only clients "
        "that hold this worker's secret (made once, printed at start) get in; off loopback the "
        "link is TLS with this worker's own certificate.",
    )
    worker.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    worker.add_argument("--port", type=positive_int, default=50052, help="port (default 50052)")
    worker.add_argument(
        "--device",
        metavar="NAME",
        help="llama.cpp's device to offer (CUDA0, CPU; default: the first GPU)",
    )
    worker.add_argument(
        "--threads", type=positive_int, metavar="N", help="CPU threads (default: physical cores)"
    )
    worker.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep received tensors over 10 MiB here so a second load sends only their hashes "
        "(default: MixDesk's cache folder, rpc/)",
    )
    worker.add_argument(
        "--cache-max",
        metavar="SIZE",
        default="20GiB",
        help="the most the tensor cache keeps; the least recently used tensors go first "
        "(default 20GiB)",
    )
    worker.add_argument("--no-cache", action="store_true", help="keep no tensor cache")
    worker.add_argument(
        "--secret-file",
        metavar="FILE",
        help="the worker secret (made there, 0600, if missing; default: worker-secret in "
        "MixDesk's config folder)",
    )
    worker.add_argument(
        "--client-timeout",
        type=positive_int,
        default=30,
        metavar="S",
        help="cut off a client silent this long while proving itself or inside a message "
        "(default 30)",
    )
    worker.add_argument(
        "--idle-timeout",
        type=non_negative_int,
        default=3600,
        metavar="S",
        help="end a llama.cpp session with nothing sent either way this long; 0: never "
        "(default 3600)",
    )


#: The builders in ``--help`` order.
BUILDERS: tuple[Callable[[Commands], None], ...] = (
    add_chat,
    add_plan,
    add_serve,
    add_hw,
    add_pull,
    add_catalog_and_list,
    add_library,
    add_install_desktop,
    add_calibrate,
    add_doctor,
    add_worker,
)
