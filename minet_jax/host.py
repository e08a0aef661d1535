"""Host settings that must be made before the process starts (stdlib only: imported before JAX).

`with_huge_pages`: XLA's CPU runtime takes its temporary buffers fresh from malloc at every
execution. With glibc's defaults the kernel faults each 4 KiB page in anew: a training step
(128x128, batch 4, T=8, 2-core x86-64) took ~270k minor page faults and 0.5-0.7 s of system time.
``glibc.malloc.hugetlb=1`` has malloc ask for transparent huge pages (madvise): ~1.5k faults, 8%
faster (3.71 / 3.54 s -> 3.38 / 3.32 s, alternated in one run). But the buffers still went back
to the kernel after each step and came back as fresh huge pages, whose faults (zeroing and
compaction) cost every other step ~1 s of system time: steps alternated 1.86 / 2.5 s
(2026-12-05, 2-core EPYC). Keeping freed memory in the process (one arena, no mmap'd chunks, no
trimming) leaves no faults after the first steps: 1.82-1.88 s, every step. Tunables are read once
at start-up, hence a re-exec.
"""

from __future__ import annotations

import os
import sys

# Huge pages; then memory kept once taken: one arena (a thread's own arena trims its heap back to
# the kernel on its own), no chunk served by mmap (freed at once), no trimming of the main heap.
TUNABLES = {
    "glibc.malloc.hugetlb": "1",
    "glibc.malloc.arena_max": "1",
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.trim_threshold": str(2**46),
}
TUNABLE = ":".join(f"{k}={v}" for k, v in TUNABLES.items())
OPT_OUT = "MINET_HUGE_PAGES"  # set to 0 to keep the process as started


def huge_pages_env(environ: dict[str, str]) -> dict[str, str] | None:
    """`environ` with the tunables added, or None where nothing is to change (not Linux, opted
    out, or GLIBC_TUNABLES already sets hugetlb: the user's malloc settings stand as given)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux") or environ.get(OPT_OUT) == "0" or "glibc.malloc.hugetlb" in tunables:
        return None
    mine = ":".join(f"{k}={v}" for k, v in TUNABLES.items() if f"{k}=" not in tunables)
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{mine}" if tunables else mine
    return env


def with_huge_pages() -> None:
    """Re-exec this Python process (same pid, argv and interpreter options) with malloc's huge
    pages and memory kept (module docstring), once; on a C library other than glibc the variable is inert. Call it first thing in a
    command-line entry point, before threads start."""
    env = huge_pages_env(dict(os.environ))
    if env is None:
        return
    env[OPT_OUT] = "0"  # never twice, even if the tunable is dropped
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
