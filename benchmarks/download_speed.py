"""Download speed: MixDesk's resumable, verifying downloader against plain ``hf_hub_download``.

A 1 GB file (random bytes, made once in benchmarks/.models) is served by the local Hub
server (tests/helpers/hub_server.py) running in its own process. Interleaved rounds download it with
``hf_hub_download`` (no sha256 check) and with MixDesk's ``Downloader`` (which hashes as it
goes and verifies against the LFS sha256); the result is the median speed ratio, which
must be at least 0.9: the run exits with status 1 when it is not (benchmarks/goals.py).

Usage: ``python benchmarks/download_speed.py [--rounds 5] [--size-mb 1024] [--json]
[--goal ratio=0.9]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.goals import Goal, add_goal_arguments, judge  # noqa: E402

REPO = "bench/speed-GGUF"
GOAL_RATIO = 0.9
#: How far the median ratio moves between runs here (1.04 measured, 0.97-1.08 over runs).
RATIO_NOISE = 0.05
NAME = "big.gguf"

_SERVER = """
import sys, time
from pathlib import Path
from tests.helpers.hub_server import HubFile, HubRepo, HubState, serve_hub
state = HubState()
state.repos[sys.argv[2]] = HubRepo(files={sys.argv[3]: HubFile(path=Path(sys.argv[1]), sha256=sys.argv[4])})
with serve_hub(state) as url:
    print(url, flush=True)
    sys.stdin.read()
"""


def data_file(size_mb: int) -> tuple[Path, str]:
    """The file to serve and its sha256 (made once)."""
    import hashlib

    path = ROOT / "benchmarks" / ".models" / f"random-{size_mb}mb.bin"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            for _ in range(size_mb):
                fh.write(os.urandom(1 << 20))
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return path, digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the figures and the goal; 1 when the goal was missed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    add_goal_arguments(parser)
    args = parser.parse_args(argv)
    path, sha = data_file(args.size_mb)
    size = path.stat().st_size
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(path), REPO, NAME, sha],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    try:
        import huggingface_hub.constants as c

        c.ENDPOINT = url
        c.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
        from huggingface_hub import hf_hub_download

        from mixdesk.core.hub.api import HubFileInfo
        from mixdesk.core.hub.download import Downloader

        plain, ours = [], []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                t = time.perf_counter()
                hf_hub_download(REPO, NAME, cache_dir=tmp)
                plain.append(size / (time.perf_counter() - t) / 1e6)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                f = HubFileInfo(REPO, NAME, size, sha, "main")
                t = time.perf_counter()
                Downloader(Path(tmp)).download(f)
                ours.append(size / (time.perf_counter() - t) / 1e6)
    finally:
        server.communicate("")
    ratios = [o / p for o, p in zip(ours, plain, strict=True)]
    result: dict[str, Any] = {
        "file_mb": round(size / 1e6),
        "rounds": args.rounds,
        "hf_hub_download_mb_s_median": round(statistics.median(plain)),
        "mixdesk_mb_s_median": round(statistics.median(ours)),
        "ratio_median": round(statistics.median(ratios), 3),
        "mixdesk_verifies_sha256": True,
    }
    goals = [
        Goal(
            "ratio",
            "MixDesk MB/s / hf_hub_download MB/s",
            result["ratio_median"],
            GOAL_RATIO,
            True,
            noise=RATIO_NOISE,
        )
    ]
    if args.json:
        result["goals"], status = judge(goals, args.goal)
        print(json.dumps(result, indent=2))
        return status
    print(
        f"{result['file_mb']} MB from a local Hub server, {args.rounds} interleaved rounds: "
        f"hf_hub_download {result['hf_hub_download_mb_s_median']} MB/s, MixDesk "
        f"{result['mixdesk_mb_s_median']} MB/s with sha256 verification "
        f"(median ratio {result['ratio_median']})"
    )
    return judge(goals, args.goal, out=sys.stdout)[1]


if __name__ == "__main__":
    sys.exit(main())
