"""Keep XLA CPU's per-step temporaries in memory between steps (launchers only).

XLA CPU allocates a step's whole temporary buffer on every execution (207 MiB at batch 512 for
the default IARN with the memory-optimised schedule of ``iarn_jax.training.compile_options``).
glibc serves a block that large by ``mmap`` and ``munmap``s it after the step, so every step
faults all of those pages in again, and the kernel zeroes them: tens of milliseconds of system
time per batch-512 step on a 2-core VM, more when the host is busy (BUILD_NOTES, "Issue 12").

The launchers set three things before any JAX work:

1. ``glibc.malloc.mmap_max=0`` and ``glibc.malloc.trim_threshold=1 GiB`` (glibc >= 2.26): large
   blocks come from the main heap, and a freed block under 1 GiB stays there for the next step.
2. ``glibc.malloc.hugetlb=1`` (glibc >= 2.35, transparent huge pages ``always`` / ``madvise``):
   that heap is backed by huge pages.
3. ``jax_cpu_enable_async_dispatch=False``: a CPU computation runs on the thread that calls it,
   so its temporaries are allocated by the main thread, from the main heap. With asynchronous
   dispatch a worker thread allocates them, and glibc's per-thread heaps (64 MiB at most) fall
   back to ``mmap`` for them whatever ``mmap_max`` says.

Only where memory comes from and which thread runs a step change, not any computation. glibc
reads tunables once, at process start, so a launcher re-executes itself once with them added
(``reexec_with_malloc_tunables``). ``IARN_HOST_MALLOC=default`` switches all three off.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional

OPT_OUT_VARIABLE = "IARN_HOST_MALLOC"  # "default": leave glibc's allocator and JAX's dispatch as they are
HUGE_PAGES = "glibc.malloc.hugetlb=1"
KEEP_FREED_BLOCKS = ("glibc.malloc.mmap_max=0", f"glibc.malloc.trim_threshold={1 << 30}")
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC_KEEP = (2, 26)  # the first glibc with tunables
MIN_GLIBC_HUGE_PAGES = (2, 35)  # the first glibc with malloc.hugetlb


def thp_mode(path: str = THP_MODE_FILE) -> Optional[str]:
    """The kernel's transparent-huge-page mode (``always`` / ``madvise`` / ``never``), or None."""
    try:
        with open(path) as file:
            text = file.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def opted_out(environ: Mapping[str, str]) -> bool:
    return environ.get(OPT_OUT_VARIABLE, "").strip().lower() == "default"


def malloc_environment(environ: Mapping[str, str], system: str, libc: tuple[str, str],
                       thp: Optional[str]) -> Optional[dict[str, str]]:
    """``environ`` with the tunables of this module appended to ``GLIBC_TUNABLES``, or None where
    none is to be added.

    A tunable is added where it applies (Linux, glibc >= 2.26; the huge pages also need glibc >=
    2.35 and THP ``always`` / ``madvise``) and ``GLIBC_TUNABLES`` does not already name it: the
    user's own value wins, and once all are named the re-exec stops. None also when the user
    opted out (``IARN_HOST_MALLOC=default``).
    """
    if opted_out(environ) or system != "Linux" or libc[0] != "glibc":
        return None
    version = _version(libc[1])
    wanted = list(KEEP_FREED_BLOCKS) if version >= MIN_GLIBC_KEEP else []
    if version >= MIN_GLIBC_HUGE_PAGES and thp in ("always", "madvise"):
        wanted.append(HUGE_PAGES)
    tunables = environ.get("GLIBC_TUNABLES", "")
    named = {item.split("=")[0] for item in tunables.split(":") if item}
    missing = [tunable for tunable in wanted if tunable.split("=")[0] not in named]
    if not missing:
        return None
    updated = dict(environ)
    updated["GLIBC_TUNABLES"] = ":".join(([tunables] if tunables else []) + missing)
    return updated


def reexec_with_malloc_tunables() -> None:
    """Re-execute this Python process with the tunables added, where any applies; else return.

    Call before any work (a launcher's ``__main__``). Returns normally where nothing applies or
    the exec fails; otherwise does not return.
    """
    environ = malloc_environment(os.environ, platform.system(), platform.libc_ver(), thp_mode())
    argv = list(getattr(sys, "orig_argv", []))
    if environ is None or not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable] + argv[1:], environ)
    except OSError:
        return


def run_cpu_steps_inline(environ: Mapping[str, str] = os.environ) -> bool:
    """Turn JAX's asynchronous CPU dispatch off unless opted out; True where it did.

    Call before the first JAX computation: JAX reads the setting when it creates the CPU client.
    Accelerators are not affected.
    """
    if opted_out(environ):
        return False
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
