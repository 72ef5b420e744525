"""``mixdesk chat MODEL --session FILE``: the conversation and its KV state live in FILE, and
the next run continues it without evaluating what the state holds. A real process, a real
engine, a real model."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

MIXDESK = [sys.executable, "-m", "mixdesk"]
GREEDY = ("--temperature", "0", "--max-tokens", "8", "--ctx", "512", "--threads", "2")


def chat(model: Path, session: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIXDESK, "chat", str(model), "--session", str(session), *GREEDY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )


def test_a_session_continues_where_it_stopped(models: dict[str, Path], tmp_path: Path) -> None:
    session = tmp_path / "talk.session"
    first = chat(models["f32"], session, "--prompt", "What is the capital of France?")
    assert first.returncode == 0, first.stderr
    assert f"mixdesk: a new session, kept in {session}." in first.stderr
    assert stat.S_IMODE(session.stat().st_mode) == 0o600

    second = chat(models["f32"], session, "--prompt", "And of Italy?", "--json")
    assert second.returncode == 0, second.stderr
    (line,) = [x for x in second.stderr.splitlines() if "continued the session" in x]
    skipped, of = line.split(": ")[2].split(" prompt tokens")[0].split(" of ")
    prompt_tokens = json.loads(second.stdout)["stats"]["prompt_tokens"]
    assert int(of) == prompt_tokens
    assert 10 < int(skipped) < prompt_tokens  # the first exchange came from the state
    assert "(2 messages)" in line

    # interactive, from the same file: four messages now
    third = subprocess.run(
        [*MIXDESK, "chat", str(models["f32"]), "--session", str(session), *GREEDY],
        input="Thanks.\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )
    assert third.returncode == 0, third.stderr
    assert "(4 messages)" in third.stderr
    assert "its state was not usable" not in third.stderr

    # another model: the conversation goes on, its state is not used
    other = chat(models["q4_k_m"], session, "--prompt", "Bye.")
    assert other.returncode == 0, other.stderr
    assert "0 of" in other.stderr and "its state was not usable" in other.stderr


def test_a_file_that_is_not_a_session_is_refused_in_one_sentence(
    models: dict[str, Path], tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    proc = chat(models["f32"], notes, "--prompt", "Hi")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert "is not a MixDesk chat session" in line
    assert notes.read_text() == "my notes"  # never overwritten


def test_the_session_line_follows_the_answer_on_a_line_of_its_own(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """In a terminal the answer (stdout) and the session's line (stderr) share the screen:
    the answer's line ends first."""
    proc = subprocess.run(
        [
            *MIXDESK,
            *("chat", str(models["q4_k_m"]), "--session", str(tmp_path / "s.session")),
            *(*GREEDY, "--prompt", "Hello"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    (line,) = [x for x in proc.stdout.splitlines() if "a new session" in x]
    assert line.startswith("mixdesk: a new session"), proc.stdout
