"""How much memory this process may use, and sizes said in words.

For refusing a request bigger than the machine before allocating it, with a message that says
what it needs: a new model's training (state.py) and a checkpoint's arrays (checkpoint.py).
Estimating what a request needs is left to them.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

from charrnn.errors import TooLargeError

UNKNOWN = 1 << 62  # no limit found: refuse nothing


def memory_limit() -> int:
    """Bytes this process may allocate, at most: the machine's physical memory, lowered by a
    cgroup (container) limit and by an address-space rlimit less what is mapped already."""
    limits = [_physical(), *_cgroup_limits()]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(1, soft - _mapped()))  # 1: nothing is left
    known = [n for n in limits if n > 0]
    return min(known) if known else UNKNOWN


def show_bytes(n: int) -> str:
    """1234567 -> '1.2 MB'; a size beyond any machine in plain scientific notation."""
    if n >= 10**15:  # computed on the integer: an estimate may be past any float
        e = int(math.log10(n))
        m = round(n / 10**e, 1)
        m, e = (m / 10, e + 1) if m >= 10 else (m, e)
        return f"{m:.1f}e+{e} bytes"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _physical() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _cgroup_limits() -> list[int]:
    """memory.max (cgroup v2) or memory.limit_in_bytes (v1) of this process's cgroups, where
    readable; "max" and the v1 'no limit' value (about 2**63) are no limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            files += [f"/sys/fs/cgroup{path}/memory.max", "/sys/fs/cgroup/memory.max"]
        elif "memory" in controllers.split(","):  # v1
            files += [f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"]
            files += ["/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    limits = []
    for name in files:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            limits.append(int(text))
    return limits


def _mapped() -> int:
    """Bytes of address space this process has mapped (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def check_fits(need: int, what: str, lower: str) -> None:
    """TooLargeError before allocating, when `what` needs more than memory_limit(): it says
    how much it needs, how much there is, and what to `lower`."""
    limit = memory_limit()
    if need > limit:
        raise TooLargeError(
            f"{what} needs about {show_bytes(need)} of memory, more than the "
            f"{show_bytes(limit)} this process can use; lower {lower}"
        )
