"""The GGUF header reader: real files, damaged ones, and a fuzz of thousands of mutations."""

from __future__ import annotations

import io
import struct
import tracemalloc
from pathlib import Path

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixdesk.core.gguf.header import read_header, read_local_header, tensor_nbytes
from mixdesk.core.gguf.header_values import KEEP_TOTAL_ITEMS, ArrayInfo, GGUFHeaderError
from mixdesk.core.gguf.profile import profile_local, split_parts
from tests.helpers import model_factory as mf


def test_reads_what_gguf_reads(models: dict[str, Path]) -> None:
    for kind in ("f32", "q4_k_m", "q2_k", "legacy"):
        path = models[kind]
        ours = read_local_header(path)
        theirs = gguf.GGUFReader(str(path))
        assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
        assert [t.nbytes for t in ours.tensors] == [int(t.n_bytes) for t in theirs.tensors]
        assert [t.ggml_type for t in ours.tensors] == [int(t.tensor_type) for t in theirs.tensors]
        assert ours.data_offset == theirs.data_offset
        assert ours.metadata["general.architecture"] == "llama"
        assert ours.array_lengths["tokenizer.ggml.tokens"] == 388


def test_profile_of_tiny_model(models: dict[str, Path]) -> None:
    p = profile_local(models["q4_k_m"])
    assert (p.n_layers, p.n_embd, p.n_head, p.n_head_kv, p.head_dim_k, p.n_ff) == (
        4,
        256,
        4,
        2,
        64,
        512,
    )
    assert (p.n_expert, p.n_expert_used, p.vocab_size, p.context_length) == (4, 2, 388, 4096)
    assert p.chat_template is not None and "[INST]" in p.chat_template
    assert (
        sum(p.layer_bytes) + p.token_embd_bytes + p.output_bytes + p.output_norm_bytes
        == p.weights_bytes
    )
    assert p.weights_bytes < p.file_bytes
    assert len(p.expert_tensor_names) == 4 * 3
    assert not p.legacy_expert_layout
    assert profile_local(models["legacy"]).legacy_expert_layout


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("truncated", "ends past the end of the file"),
        ("bad_magic", "not a GGUF model file"),
        ("text", "not a GGUF model file"),
    ],
)
def test_damaged_files(models: dict[str, Path], kind: str, words: str) -> None:
    with pytest.raises(GGUFHeaderError, match=words):
        read_local_header(models[kind])


def test_header_cut_short(models: dict[str, Path], tmp_path: Path) -> None:
    cut = mf.truncated(models["f32"], tmp_path / "cut.gguf", fraction=0.0003)
    with pytest.raises(GGUFHeaderError, match="ends inside its header"):
        read_local_header(cut)


def _header(version: int = 3, n_tensors: int = 0, n_kv: int = 0, rest: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + rest


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_header(version=1), "version 1"),
        (_header(version=7), "unknown GGUF version"),
        (_header(n_tensors=1 << 40), "damaged header"),
        (_header(n_tensors=(1 << 16) + 1), "damaged header"),  # more than any model has
        (_header(n_kv=1, rest=struct.pack("<Q", 1 << 50)), "damaged header"),
        (
            _header(n_kv=1, rest=struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99)),
            "unknown value type",
        ),
        (
            _header(n_kv=1, rest=struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 1 << 40)),
            "array of",
        ),
        (b"GG", "too short"),
    ],
)
def test_absurd_headers(data: bytes, words: str) -> None:
    with pytest.raises(GGUFHeaderError, match=words):
        read_header(io.BytesIO(data), name="x.gguf", file_size=len(data))


def test_header_size_cap(models: dict[str, Path]) -> None:
    with models["f32"].open("rb") as fh, pytest.raises(GGUFHeaderError, match="larger than"):
        read_header(fh, name="x", max_bytes=1 << 10)


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _array_entry(key: str, item_type: int, fmt: str, values: list[int] | list[float]) -> bytes:
    """A metadata entry: an array of ``values`` packed with ``fmt`` (GGUF type ``item_type``)."""
    return (
        _gguf_string(key)
        + struct.pack("<IIQ", 9, item_type, len(values))
        + struct.pack(f"<{len(values)}{fmt}", *values)
    )


def test_a_header_of_thousands_of_arrays_keeps_only_what_fits_the_cap() -> None:
    """1,000 arrays of 4,096 numbers (16 MB) once became 4 million Python floats (130 MB)."""
    per_layer = _array_entry("llama.attention.head_count_kv", 4, "I", list(range(32)))
    floats = [i + 0.5 for i in range(4096)]
    hostile = b"".join(_array_entry(f"llama.setting_{i:04d}", 6, "f", floats) for i in range(1000))
    data = _header(n_kv=1001, rest=per_layer + hostile)
    tracemalloc.start()
    try:
        header = read_header(io.BytesIO(data), name="x.gguf", file_size=len(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert header.metadata["llama.attention.head_count_kv"] == list(range(32))  # still read
    assert len(header.array_lengths) == 1001
    assert header.array_lengths["llama.setting_0999"] == 4096
    kept = [v for v in header.metadata.values() if isinstance(v, list)]
    assert sum(len(v) for v in kept) <= KEEP_TOTAL_ITEMS
    assert header.metadata["llama.setting_0999"] == ArrayInfo(6, 4096)
    assert peak < 8 << 20, f"reading the header peaked at {peak >> 20} MiB"


def test_the_tokenizer_arrays_and_string_arrays_are_not_kept() -> None:
    strings = _gguf_string("general.tags") + struct.pack("<IIQ", 9, 8, 2)
    strings += _gguf_string("a") + _gguf_string("bc")
    tokens = _array_entry("tokenizer.ggml.token_type", 5, "i", [1, 2, 3])
    data = _header(n_kv=2, rest=tokens + strings)
    header = read_header(io.BytesIO(data), name="x.gguf", file_size=len(data))
    assert header.metadata["tokenizer.ggml.token_type"] == ArrayInfo(5, 3)
    assert header.metadata["general.tags"] == ArrayInfo(8, 2)
    assert header.array_lengths == {"tokenizer.ggml.token_type": 3, "general.tags": 2}


def test_tensor_sizes_come_from_gguf_table() -> None:
    q4k = int(gguf.GGMLQuantizationType.Q4_K)
    assert tensor_nbytes(q4k, (4096, 14336)) == 4096 * 14336 // 256 * 144
    with pytest.raises(GGUFHeaderError, match="not a multiple"):
        tensor_nbytes(q4k, (100, 3), name="odd")
    with pytest.raises(GGUFHeaderError, match="unknown ggml type"):
        tensor_nbytes(999, (32,), name="weird")


def test_split_parts_must_all_be_there(tmp_path: Path) -> None:
    first = tmp_path / "m-00001-of-00003.gguf"
    first.write_bytes(b"GGUF")
    (tmp_path / "m-00002-of-00003.gguf").write_bytes(b"GGUF")
    with pytest.raises(GGUFHeaderError, match=r"m-00003-of-00003\.gguf is missing"):
        split_parts(first)


@pytest.fixture(scope="module")
def sample_header(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = mf.make_model(
        tmp_path_factory.mktemp("fuzz"), mf.with_changes(mf.TINY, n_layers=1), "Q4_K_M"
    )
    header = read_local_header(path)
    return path.read_bytes()[: header.data_offset]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_and_truncated_headers(sample_header: bytes, data: st.DataObject) -> None:
    raw = bytearray(sample_header)
    for _ in range(data.draw(st.integers(0, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    blob = bytes(raw)
    try:
        header = read_header(
            io.BytesIO(blob), name="fuzz.gguf", file_size=len(blob) + (1 << 30), max_bytes=4 << 20
        )
    except GGUFHeaderError as err:
        message = str(err)  # the app's own error, with a sentence for the user
        assert message
        return
    assert header.bytes_read <= len(blob)
