"""Does the window stay responsive while an answer streams at full speed, and does it cost speed?

On the tiny generated model (about 2000 tok/s here), a 10 ms QTimer heartbeat in the GUI
thread records the longest gap between beats while the answer streams (the GUI thread's
longest stall, which must stay under 50 ms). The eval tok/s the app shows at the end is
compared with ``mixdesk chat --json`` on the same model, settings and seed, interleaved in
the same run (must be >= 0.95). Also measured: cold start, from starting ``python -m mixdesk``
to the main window shown (must be under 2 s).

Usage: ``python benchmarks/ui_responsiveness.py [--rounds 3] [--tokens 2000] [--json]``
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from tests import model_factory as mf  # noqa: E402


def cli_eval_tps(model: Path, tokens: int) -> float:
    """eval tok/s of ``mixdesk chat --json`` on the same model and settings."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixdesk",
            "chat",
            str(model),
            "--prompt",
            "Tell me a long story.",
            "--max-tokens",
            str(tokens),
            "--seed",
            "1",
            "--ctx",
            "4096",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return float(json.loads(proc.stdout)["stats"]["eval_tps"])


def cold_start_s() -> float:
    """Seconds from starting ``python -m mixdesk`` to its main window shown (offscreen)."""
    env = dict(os.environ, MIXDESK_EXIT_AFTER_SHOW="1", QT_QPA_PLATFORM="offscreen")
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mixdesk"], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - t
    proc.wait(30)
    assert line.startswith("shown"), line
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from mixdesk.core.chat_store import ChatStore
    from mixdesk.core.engine import ChatDone, Engine
    from mixdesk.core.hardware import GIB, HardwareInfo
    from mixdesk.core.library import Library
    from mixdesk.ui.main_window import MainWindow

    model = mf.cached_model(ROOT / "benchmarks" / ".models", mf.TINY, "F32")
    _app = QApplication.instance() or QApplication([])  # kept alive while the window runs
    tmp = Path(tempfile.mkdtemp(prefix="mixdesk-ui-bench-"))
    hw = HardwareInfo(
        ram_total_bytes=16 * GIB, ram_available_bytes=12 * GIB, physical_cores=2, logical_cores=2
    )
    window = MainWindow(
        store=ChatStore(tmp / "chats.sqlite"),
        library=Library(tmp / "models"),
        engine=Engine(log_dir=tmp / "logs"),
        hardware=hw,
        quiet=True,
    )
    window.show()

    def wait_for(signal: object, action: object) -> list[object]:
        loop = QEventLoop()
        got: list[object] = []

        def done(*a: object) -> None:
            got.extend(a)
            loop.quit()

        signal.connect(done)  # type: ignore[attr-defined]
        action()  # type: ignore[operator]
        loop.exec()
        signal.disconnect(done)  # type: ignore[attr-defined]
        return got

    window.select_model_path(str(model))
    while window.offload.plan is None:  # a waiting event loop, not a busy processEvents() spin
        pause = QEventLoop()
        QTimer.singleShot(20, pause.quit)
        pause.exec()
    wait_for(window.modelLoaded, window.load_selected)
    window.set_sampling(max_tokens=args.tokens, seed=1)

    stalls, app_tps, cli_tps = [], [], []
    for _ in range(args.rounds):
        clock = QElapsedTimer()
        gaps: list[int] = []
        heartbeat = QTimer()
        heartbeat.setInterval(10)
        heartbeat.timeout.connect(lambda gaps=gaps, clock=clock: gaps.append(clock.restart()))
        clock.start()
        heartbeat.start()
        window.new_conversation()
        window.set_sampling(max_tokens=args.tokens, seed=1)
        (done,) = wait_for(window.answerFinished, lambda: window.send("Tell me a long story."))
        heartbeat.stop()
        assert isinstance(done, ChatDone)
        stalls.append(max(gaps[1:] or [0]) - 10)
        app_tps.append(done.stats.eval_tps)
        cli_tps.append(cli_eval_tps(model, args.tokens))
    window.close()
    starts = [cold_start_s() for _ in range(3)]
    ratios = [a / c for a, c in zip(app_tps, cli_tps, strict=True)]
    result = {
        "tokens": args.tokens,
        "longest_stall_ms": max(stalls),
        "app_eval_tps_median": round(statistics.median(app_tps), 1),
        "cli_eval_tps_median": round(statistics.median(cli_tps), 1),
        "ratio_median": round(statistics.median(ratios), 3),
        "cold_start_s_median": round(statistics.median(starts), 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"streaming {args.tokens} tokens: longest GUI stall {result['longest_stall_ms']} ms; eval tok/s in the "
            f"app {result['app_eval_tps_median']} vs mixdesk chat {result['cli_eval_tps_median']} (ratio "
            f"{result['ratio_median']}); cold start to window {result['cold_start_s_median']} s"
        )
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown of Qt objects: the figures are printed
