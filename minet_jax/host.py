"""Host settings that must be made before the process starts (stdlib only: imported before JAX).

`with_huge_pages`: XLA's CPU runtime takes its temporary buffers fresh from malloc at every
execution, and the kernel faults each 4 KiB page in anew: a training step (128x128, batch 4,
T=8, 2-core x86-64) took ~270k minor page faults and 0.7 s of system time. glibc's
``glibc.malloc.hugetlb=1`` tunable has malloc ask for transparent huge pages (madvise), which
leaves ~1.5k faults and made the step 8% faster (3.71 / 3.54 s -> 3.38 / 3.32 s, alternated in
one run). The exact tiled executor (streaming.py) runs hundreds of small programs, each with
fresh output and temporary buffers: 1080p over 512-px tiles took 37.4 s without and 30.8 s with
it (whole image 20.2 s either way; each in its own process, one run, 2026-12-07). train.py,
evaluate.py, the dehaze tool and the benchmarks call it. Tunables are read once at start-up,
hence a re-exec.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "MINET_HUGE_PAGES"  # set to 0 to keep the process as started


def huge_pages_env(environ: dict[str, str]) -> dict[str, str] | None:
    """`environ` with the tunable added, or None where nothing is to change (not Linux, opted out,
    or GLIBC_TUNABLES already sets hugetlb)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux") or environ.get(OPT_OUT) == "0" or "glibc.malloc.hugetlb" in tunables:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    return env


def with_huge_pages() -> None:
    """Re-exec this Python process (same pid, argv and interpreter options) with huge pages for
    malloc, once; on a C library other than glibc the variable is inert. Call it first thing in a
    command-line entry point, before threads start."""
    env = huge_pages_env(dict(os.environ))
    if env is None:
        return
    env[OPT_OUT] = "0"  # never twice, even if the tunable is dropped
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
