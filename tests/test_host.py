"""host.with_huge_pages: the re-exec that gives malloc transparent huge pages, once."""

import os
import subprocess
import sys

import pytest

from minet_jax.host import OPT_OUT, TUNABLE, huge_pages_env

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")


@linux
def test_env_adds_the_tunable_and_keeps_others():
    assert huge_pages_env({})["GLIBC_TUNABLES"] == TUNABLE
    env = huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
    assert env == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLE}", "X": "1"}
    assert huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # the user's choice stands
    assert huge_pages_env({OPT_OUT: "0"}) is None


@linux
def test_process_reexecs_once_with_the_tunable_and_its_arguments():
    code = (
        "import os, sys; print('start', flush=True); from minet_jax.host import with_huge_pages; "
        "with_huge_pages(); print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", code, "a", "b c"], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[:2] == ["start", "start"] and len(lines) == 3  # ran twice up to the exec, finished once
    tunables, args = lines[2].split(" ", 1)
    assert tunables == TUNABLE and args == "['a', 'b c']"
