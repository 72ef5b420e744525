"""KV state files: written atomically and privately, read back only when everything matches.

Real files on disk; the state bytes here are arbitrary (the format does not read them, and
only a file that passes every check is handed on). What llama.cpp makes of real states is
tests/core/test_kv_resume.py.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from mixdesk.core.engine.kv_format import (
    MAGIC,
    KvKey,
    ModelIdentity,
    StateFileError,
    StateHeader,
    model_identity,
    read_header,
    read_state,
    write_state,
)
from mixdesk.core.engine.kv_store import KvStore

KEY = KvKey(
    model=ModelIdentity(size=1000, mtime_ns=5, sha256="ab" * 32),
    n_vocab=300,
    n_ctx=512,
    type_k="f16",
    type_v="f16",
    flash_attn=False,
    template_sha256="cd" * 32,
    compute_sha256="ef" * 32,
    llama_cpp_version="0.3.36",
)
STATE = bytes(range(256)) * 40


def header(tokens: tuple[int, ...] = (1, 5, 9, 13), conversation: str = "chat-1") -> StateHeader:
    return StateHeader(
        key=KEY,
        tokens=tokens,
        state_size=len(STATE),
        conversation=conversation,
        model_path="/models/m.gguf",
    )


@pytest.fixture
def store(tmp_path: Path) -> KvStore:
    return KvStore(tmp_path / "kv", budget_bytes=1 << 20)


def saved(store: KvStore, **kwargs: object) -> Path:
    path = store.save(header(**kwargs), STATE)  # type: ignore[arg-type]
    assert path is not None
    return path


def test_a_state_comes_back_as_written_from_a_private_file(store: KvStore) -> None:
    path = saved(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.directory / "secret").stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert path.read_bytes().startswith(MAGIC)
    loaded = store.load(path, KEY)
    assert loaded is not None
    assert loaded[0] == header()
    assert bytes(loaded[1]) == STATE
    assert path.stat().st_size == header().file_size


def damaged_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def damaged_in_state(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x10  # one bit of the state
    path.write_bytes(bytes(data))


def damaged_in_tokens(path: Path) -> None:
    data = bytearray(path.read_bytes())
    offset = header().data_offset - 4  # the last token: 13 -> 12, still a valid id
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def damaged_magic(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def damaged_version(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8] = 2
    path.write_bytes(bytes(data))


def grown(path: Path) -> None:
    with path.open("ab") as fh:
        fh.write(b"\0" * 10)


@pytest.mark.parametrize(
    "damage",
    [damaged_truncated, damaged_in_state, damaged_in_tokens, damaged_magic, damaged_version, grown],
)
def test_a_damaged_file_is_ignored_and_deleted(store: KvStore, damage: object) -> None:
    path = saved(store)
    damage(path)  # type: ignore[operator]
    assert store.load(path, KEY) is None
    assert not path.exists()


def test_a_header_that_lies_about_its_tokens_is_caught_before_the_checksum(
    store: KvStore,
) -> None:
    path = saved(store)
    data = path.read_bytes().replace(b'"n_tokens":4', b'"n_tokens":3')
    path.write_bytes(data)
    with pytest.raises(StateFileError, match="bytes where its header says"):
        read_header(path, max_bytes=1 << 20)
    assert store.best(KEY, [1, 5, 9]) is None
    assert not path.exists()


def test_a_token_outside_the_vocabulary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.mdkv"
    write_state(path, header(tokens=(1, 300)), STATE, secret=b"k" * 32)
    with pytest.raises(StateFileError, match="outside the vocabulary"):
        read_header(path, max_bytes=1 << 20)


def test_a_state_for_another_model_or_setting_is_not_used(store: KvStore) -> None:
    path = saved(store)
    for other in (
        dataclasses.replace(KEY, model=dataclasses.replace(KEY.model, sha256="00" * 32)),
        dataclasses.replace(KEY, n_ctx=1024),
        dataclasses.replace(KEY, type_k="q8_0"),
        dataclasses.replace(KEY, flash_attn=True),
        dataclasses.replace(KEY, template_sha256="11" * 32),
    ):
        with pytest.raises(StateFileError, match="another model or other settings"):
            read_state(path, key=other, secret=store.secret(), max_bytes=1 << 20)
    # a file moved into the folder of another key (a swapped model) is deleted on sight
    swapped = dataclasses.replace(KEY, model=dataclasses.replace(KEY.model, size=999))
    target = store.path_for(swapped, "chat-1")
    target.parent.mkdir(parents=True)
    os.replace(path, target)
    assert store.best(swapped, [1, 5, 9]) is None
    assert not target.exists()


def test_a_swapped_model_file_has_another_identity(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(5 << 20))
    before = model_identity(model)
    data = bytearray(model.read_bytes())
    data[-10] = 1  # same size, other content
    model.write_bytes(bytes(data))
    os.utime(model, ns=(before.mtime_ns, before.mtime_ns))
    after = model_identity(model)
    assert (after.size, after.mtime_ns) == (before.size, before.mtime_ns)
    assert after.sha256 != before.sha256


def test_a_file_made_elsewhere_is_refused_even_with_a_right_checksum(store: KvStore) -> None:
    """The checksum is keyed with this cache's secret: a crafted (or foreign) file fails."""
    path = store.path_for(KEY, "chat-1")
    path.parent.mkdir(parents=True)
    write_state(path, header(), STATE, secret=b"not this cache's secret".ljust(32))
    assert store.best(KEY, [1, 5, 9]) is not None  # its header reads
    assert store.load(path, KEY) is None
    assert not path.exists()


def test_an_oversized_file_is_not_read(store: KvStore, tmp_path: Path) -> None:
    path = saved(store)
    small = KvStore(store.directory, budget_bytes=path.stat().st_size - 1)
    assert small.load(path, KEY) is None
    assert not path.exists()
    # a header that claims a state over the cap
    path = saved(store)
    data = path.read_bytes().replace(b'"state_size":10240', b'"state_size":99999')
    path.write_bytes(data)
    with pytest.raises(StateFileError, match="a state of 99999 bytes"):
        read_header(path, max_bytes=20000)


def test_a_symbolic_link_is_not_followed(store: KvStore, tmp_path: Path) -> None:
    real = saved(store)
    link = real.with_name("link.mdkv")
    link.symlink_to(real)
    with pytest.raises(StateFileError, match="cannot open"):
        read_header(link, max_bytes=1 << 20)


def test_the_longest_shared_prefix_wins(store: KvStore) -> None:
    saved(store, tokens=(1, 5, 9, 13), conversation="a")
    saved(store, tokens=(1, 5, 7), conversation="b")
    best = store.best(KEY, [1, 5, 9, 20])
    assert best is not None
    assert (best.header.conversation, best.shared) == ("a", 3)
    best = store.best(KEY, [1, 5, 7, 8])
    assert best is not None
    assert (best.header.conversation, best.shared) == ("b", 3)
    assert store.best(KEY, [2, 5]) is None


def test_the_budget_evicts_the_least_recently_used(tmp_path: Path) -> None:
    size = header(conversation="a").file_size
    store = KvStore(tmp_path / "kv", budget_bytes=2 * size + 10)
    a = saved(store, conversation="a")
    b = saved(store, conversation="b")
    os.utime(a, (1, 1))
    os.utime(b, (2, 2))
    assert store.load(a, KEY) is not None  # used: now the most recent
    c = saved(store, conversation="c")
    assert (a.exists(), b.exists(), c.exists()) == (True, False, True)
    assert store.used_bytes() == 2 * size
    # a state larger than the whole budget is not kept
    assert KvStore(store.directory, budget_bytes=size - 1).save(header(), STATE) is None


def test_delete_a_conversation_a_model_or_everything(store: KvStore) -> None:
    a = saved(store, conversation="a")
    other_key = dataclasses.replace(KEY, n_ctx=1024)
    a2 = store.save(dataclasses.replace(header(conversation="a"), key=other_key), STATE)
    b = saved(store, conversation="b")
    assert a2 is not None
    sizes = a.stat().st_size + a2.stat().st_size
    assert store.delete_conversation("a") == sizes
    assert (a.exists(), a2.exists(), b.exists()) == (False, False, True)
    c = store.save(dataclasses.replace(header(conversation="c"), model_path="/other.gguf"), STATE)
    assert c is not None
    assert store.delete_model("/models/m.gguf") == header(conversation="b").file_size
    assert (b.exists(), c.exists()) == (False, True)
    assert store.clear() > 0
    assert store.used_bytes() == 0
    assert (store.directory / "secret").exists()


def test_deleting_a_conversation_or_a_model_deletes_its_states(tmp_path: Path) -> None:
    from mixdesk.core.hub.library import Library, LibraryEntry
    from mixdesk.core.workspace.chat_store import ChatStore, kv_conversation

    states = KvStore(tmp_path / "kv")
    chats = ChatStore(tmp_path / "chats.sqlite", kv_states=states)
    kept, gone = chats.create(), chats.create()
    for conv in (kept, gone):
        saved(states, conversation=kv_conversation(conv.id))
    chats.delete(gone.id)
    (left,) = states.directory.glob("*/*.mdkv")
    assert read_header(left, max_bytes=1 << 20).conversation == kv_conversation(kept.id)

    library = Library(tmp_path / "models", kv_states=states)
    model = tmp_path / "models" / "m.gguf"
    model.write_bytes(b"GGUF")
    library.add(LibraryEntry(name="m", path=str(model)))
    states.save(dataclasses.replace(header(conversation="x"), model_path=str(model)), STATE)
    assert len(list(states.directory.glob("*/*.mdkv"))) == 2
    library.remove("m")
    assert list(states.directory.glob("*/*.mdkv")) == [left]


def test_the_settings_budget_reaches_the_engine_request_and_the_store() -> None:
    from mixdesk.core.workspace.settings import Settings

    request = Settings(kv_cache_gib=0.5).kv_cache("chat-3")
    assert (request.conversation, request.disk_budget_bytes) == ("chat-3", 1 << 29)
    assert request.directory
    assert Settings(kv_cache_gib=0.0).kv_cache("chat-3").directory == ""  # memory only
    assert Settings().kv_store().budget_bytes == 4 << 30


def test_a_damaged_secret_is_replaced_and_voids_the_files(store: KvStore) -> None:
    path = saved(store)
    (store.directory / "secret").write_bytes(b"short")
    fresh = KvStore(store.directory, budget_bytes=store.budget_bytes)
    assert fresh.load(path, KEY) is None
    assert len((store.directory / "secret").read_bytes()) == 32
    assert fresh.load(saved(fresh), KEY) is not None


def test_deleting_a_model_keeps_another_models_states_larger_than_the_deleters_budget(
    tmp_path: Path,
) -> None:
    """The library's store has the default budget; a state saved under a larger one (the
    user's setting) is another model's, not an unreadable file to delete."""
    large = KvStore(tmp_path / "kv", budget_bytes=1 << 20)
    other = saved(large)  # saved for /models/m.gguf
    small = KvStore(tmp_path / "kv", budget_bytes=len(STATE) // 2)
    assert small.delete_model(tmp_path / "another.gguf") == 0
    assert other.exists()
    size = other.stat().st_size
    assert small.delete_model("/models/m.gguf") == size
    assert not other.exists()
