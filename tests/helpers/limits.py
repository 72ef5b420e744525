"""Real out-of-memory for tests: an address-space limit on a running process."""

from __future__ import annotations

import re
import resource
from pathlib import Path


def limit_address_space(pid: int, budget: int) -> None:
    """Let process ``pid`` map only ``budget`` bytes beyond what it maps now (RLIMIT_AS):
    its next big allocations fail for real, as on a full GPU."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmSize:\s+(\d+) kB", status)
    assert found is not None, status
    limit = int(found.group(1)) * 1024 + budget
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
