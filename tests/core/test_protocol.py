"""The engine protocol: typed commands both ways, and live deltas that carry every field."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import GenerationStats, LoadConfig, SamplingParams, TextDelta
from mixdesk.core.engine.protocol import (
    CancelCommand,
    ChatCommand,
    EngineCommand,
    LoadCommand,
    PerfCounters,
    ShutdownCommand,
)
from mixdesk.core.engine.wire import decode_command, encode_command, encode_delta, from_dict


def _distinct(cls: type[Any], start: int) -> Any:
    """An instance of dataclass ``cls`` whose every field holds a value unlike its default."""
    values: dict[str, Any] = {}
    for i, f in enumerate(dataclasses.fields(cls), start):
        kind = type(f.default) if f.default is not dataclasses.MISSING else None
        if f.name == "perf":
            values[f.name] = _distinct(PerfCounters, start + 100)
        elif kind is float:
            values[f.name] = i + 0.5
        else:
            values[f.name] = i
    return cls(**values)


def test_every_stats_field_round_trips_through_a_delta() -> None:
    stats = _distinct(GenerationStats, 1)
    body = json.loads(encode_delta(7, "text", stats))
    delta = from_dict(TextDelta, {k: v for k, v in body.items() if k != "type"})
    assert delta.stats == stats
    assert (delta.request_id, delta.text, body["type"]) == (7, "text", "delta")


def test_a_field_added_to_the_stats_is_sent() -> None:
    @dataclasses.dataclass(frozen=True)
    class MoreStats(GenerationStats):
        gpu_busy: float = 0.0

    body = json.loads(encode_delta(1, "x", MoreStats(eval_tokens=3, gpu_busy=0.75)))
    assert body["stats"]["gpu_busy"] == 0.75
    assert body["stats"]["eval_tokens"] == 3
    assert set(body["stats"]) == {f.name for f in dataclasses.fields(MoreStats)}


@pytest.mark.parametrize(
    "command",
    [
        LoadCommand(
            LoadConfig("m.gguf", n_gpu_layers=3, rpc_servers=("h:1",), tensor_split=(1.0,))
        ),
        ChatCommand(
            4,
            (ChatMessage("system", "Be brief."), ChatMessage("user", "hi")),
            SamplingParams(temperature=0.0, seed=1, stop=("</s>",)),
            0.05,
        ),
        CancelCommand(4),
        ShutdownCommand(),
    ],
    ids=["load", "chat", "cancel", "shutdown"],
)
def test_commands_round_trip(command: EngineCommand) -> None:
    line = encode_command(command)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_command(line) == command


@pytest.mark.parametrize("line", [b"not json", b'{"type": "reboot"}', b'{"type": "cancel"}'])
def test_a_line_that_is_no_command_is_refused(line: bytes) -> None:
    with pytest.raises((ValueError, KeyError)):
        decode_command(line)


def test_every_message_names_its_kind_once_and_decodes_generically() -> None:
    """One registry: each dataclass is sent as its kind, and a nested message (a chat's
    messages, an answer's stats and their counters) comes back equal, with no hand-written
    decoder per kind."""
    from mixdesk.core.engine.protocol import ChatDone, GenerationStats
    from mixdesk.core.engine.wire import MESSAGES, decode, encode

    assert len(set(MESSAGES.values())) == len(MESSAGES)
    done = ChatDone(
        3,
        "Paris.",
        "stop",
        GenerationStats(prompt_tokens=9, eval_tokens=2, perf=PerfCounters(1.0, 9, 2.0, 2)),
        prompt_token_ids=(1, 2, 3),
        token_ids=(4, 2),
    )
    line = encode(done)
    assert b'"type":"done"' in line
    assert decode(line) == done


def test_buffers_cross_the_pipe_typed() -> None:
    """llama.cpp's buffers are keyed by device and a typed kind, on both sides of the pipe;
    a kind the app does not know makes the line unreadable, never a wrong lookup."""
    from mixdesk.core.engine.protocol import Buffer, BufferKind, BufferReport, Buffers
    from mixdesk.core.engine.wire import decode, encode

    report = BufferReport(
        Buffers(
            (
                Buffer("RPC0[127.0.0.1:50052]", BufferKind.KV, 7),
                Buffer("CPU", BufferKind.COMPUTE, 11),
                Buffer("CPU", BufferKind.COMPUTE, 2),
            )
        )
    )
    back = decode(encode(report))
    assert back == report
    assert back.buffers.items[0].kind is BufferKind.KV
    assert back.buffers.get("CPU", BufferKind.COMPUTE) == 13
    assert back.buffers.get("CPU", BufferKind.MODEL) is None
    assert back.buffers.on("CPU") == 13
    bad = encode(report).replace(b'"KV"', b'"VRAM"')
    with pytest.raises(ValueError, match="VRAM"):
        decode(bad)


def test_buffer_sizes_from_the_log() -> None:
    from mixdesk.core.engine.diagnose import buffer_sizes
    from mixdesk.core.engine.protocol import BufferKind

    log = (
        "llama_model_load: loading\n"
        "load_tensors:   CPU_Mapped model buffer size =    10.00 MiB\n"
        "load_tensors:   CPU_Mapped model buffer size =     5.00 MiB\n"
        "llama_kv_cache:        CUDA0 KV buffer size =     2.50 MiB\n"
        "sched_reserve:      CUDA0 compute buffer size =     1.00 MiB\n"
    )
    found = buffer_sizes(log)
    assert found.get("CPU_Mapped", BufferKind.MODEL) == 15 << 20
    assert found.get("CUDA0", BufferKind.KV) == int(2.5 * 2**20)
    assert found.get("CUDA0", BufferKind.COMPUTE) == 1 << 20
    assert found.devices() == ["CPU_Mapped", "CUDA0"]
