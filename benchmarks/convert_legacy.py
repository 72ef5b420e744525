"""Converting a legacy Mixtral file: throughput against a plain file copy, and peak memory.

Generates (once, into benchmarks/.models) a real legacy-layout file of at least 2 GB (the
mid-size Mixtral-architecture model in F32 with one tensor per expert), then, interleaved:
a plain ``shutil.copyfile`` of it, and the converter in a child process that reports its
own peak RSS (``VmHWM`` from /proc, which starts afresh with the process image). Prints
MB/s for both, their ratio, and the converter's peak RSS, which must stay under 600 MB
whatever the file size: the run exits with status 1 when it does not (benchmarks/goals.py).

Usage: ``python benchmarks/convert_legacy.py [--rounds 3] [--json] [--goal peak_rss_mb=600]``
"""

from __future__ import annotations

import argparse
import json
import shutil
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

#: The converter streams: its memory does not grow with the file (31 MB measured).
GOAL_PEAK_RSS_MB = 600

_CHILD = """
import sys
from pathlib import Path
from mixdesk.core.gguf.convert import convert_legacy
convert_legacy(Path(sys.argv[1]), Path(sys.argv[2]))
status = Path("/proc/self/status").read_text()
print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
"""


def legacy_file(cache: Path, *, small: bool = False) -> Path:
    """A >= 2 GB legacy-layout model (or a tiny one to try the harness), made once."""
    path = cache / ("legacy-tiny-f32.gguf" if small else "legacy-mid-f32.gguf")
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # in a child process, so this one stays small
        code = (
            "import sys; from pathlib import Path; from tests.helpers import model_factory as mf; "
            "from mixdesk.core.gguf.synthetic import write_model; "
            f"spec = mf.with_changes(mf.{'TINY' if small else 'MID'}, legacy_expert_layout=True, dtype='f32'); "
            "write_model(Path(sys.argv[1]), spec)"
        )
        subprocess.run(
            [sys.executable, "-c", code, str(path.with_suffix(".tmp"))], check=True, cwd=ROOT
        )
        path.with_suffix(".tmp").replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the figures and the goal; 1 when the goal was missed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--small", action="store_true", help="a tiny file, to check the harness only"
    )
    add_goal_arguments(parser)
    args = parser.parse_args(argv)
    source = legacy_file(ROOT / "benchmarks" / ".models", small=args.small)
    size = source.stat().st_size
    copies, converts, peaks = [], [], []
    with tempfile.TemporaryDirectory(dir=source.parent) as tmp:
        out = Path(tmp) / "out.gguf"
        for _ in range(args.rounds):
            t = time.perf_counter()
            shutil.copyfile(source, out)
            copies.append(size / (time.perf_counter() - t) / 1e6)
            out.unlink()
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, str(source), str(out)],
                check=True,
                capture_output=True,
                text=True,
            )
            converts.append(size / (time.perf_counter() - t) / 1e6)
            peaks.append(int(proc.stdout.split()[-1]) / 1024)
            out.unlink()
    result: dict[str, Any] = {
        "file_mb": round(size / 1e6),
        "copy_mb_s_median": round(statistics.median(copies)),
        "convert_mb_s_median": round(statistics.median(converts)),
        "ratio": round(statistics.median(converts) / statistics.median(copies), 3),
        "convert_peak_rss_mb": round(max(peaks)),
    }
    goals = [
        Goal(
            "peak_rss_mb",
            "converter peak RSS",
            result["convert_peak_rss_mb"],
            GOAL_PEAK_RSS_MB,
            False,
            " MB",
        )
    ]
    if args.json:
        result["goals"], status = judge(goals, args.goal)
        print(json.dumps(result, indent=2))
        return status
    print(
        f"legacy file {result['file_mb']} MB: copy {result['copy_mb_s_median']} MB/s, convert "
        f"{result['convert_mb_s_median']} MB/s (ratio {result['ratio']}), converter peak RSS "
        f"{result['convert_peak_rss_mb']} MB"
    )
    return judge(goals, args.goal, out=sys.stdout)[1]


if __name__ == "__main__":
    sys.exit(main())
