"""Real out-of-memory for tests: an address-space limit on a running process."""

from __future__ import annotations

import re
import resource
from pathlib import Path


def limit_address_space(pid: int, budget: int, *, headroom: int = 0) -> None:
    """Let process ``pid`` map only ``budget`` bytes beyond what it maps now (RLIMIT_AS):
    its next big allocations fail for real, as on a full GPU. The hard limit is ``headroom``
    bytes above that, so :func:`use_headroom` can give it more later (raising a hard limit
    needs a privilege tests do not have)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmSize:\s+(\d+) kB", status)
    assert found is not None, status
    limit = int(found.group(1)) * 1024 + budget
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit + headroom))


def use_headroom(pid: int) -> None:
    """Raise process ``pid``'s address-space limit to its hard limit."""
    _soft, hard = resource.prlimit(pid, resource.RLIMIT_AS)
    resource.prlimit(pid, resource.RLIMIT_AS, (hard, hard))
