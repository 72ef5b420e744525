"""The engine's log keeps which relay is which worker for the life of the process: the buffer
sizes of every load name the worker, not the relay's loopback port, however many loads and
dry runs came before (a plan with experts in RAM takes several dry runs to fill a device)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_buffers_name_the_worker_after_many_loads() -> None:
    code = textwrap.dedent(
        """
        import io
        from mixdesk.core.engine import diagnose
        from mixdesk.core.engine.process import _LogTee
        from mixdesk.core.engine.rpc_relay import RELAY_LINE

        tee = _LogTee(io.StringIO(), keep=100)
        tee.write(f"{RELAY_LINE} 10.0.0.2:50052 through 127.0.0.1:40001\\n")
        for i in range(500):
            tee.write(f"llama_model_load: line {i} of an earlier load\\n")
        tee.write("load_tensors: RPC0[127.0.0.1:40001] model buffer size = 1.00 MiB\\n")
        print(diagnose.buffer_sizes(tee.text()).devices())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "['RPC0[10.0.0.2:50052]']"
