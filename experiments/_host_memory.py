"""Back XLA CPU's per-step temporaries with transparent huge pages (glibc's ``hugetlb`` tunable).

XLA CPU allocates a step's whole temporary buffer on every execution (268 MB at batch 512 for
the default IARN when this was measured, 207 MiB with the memory-optimised schedule of
``iarn_jax.training.compile_options``); glibc serves it by ``mmap`` from a worker thread's arena and ``munmap``s it
after the step, so every step faults all of those pages in again: about 65,000 minor faults and
0.2 s of system time per batch-512 step on a 2-core VM (BUILD_NOTES, "Issue 12"). With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35) malloc asks for transparent huge pages
on those mappings, and the faults drop about a hundredfold. Only how memory is backed changes,
not any computation.

glibc reads tunables once, at process start, so a launcher re-executes itself once with the
tunable added (``reexec_with_huge_pages``). ``IARN_HOST_MALLOC=default`` switches that off.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional

TUNABLE_NAME = "glibc.malloc.hugetlb"
TUNABLE = f"{TUNABLE_NAME}=1"
OPT_OUT_VARIABLE = "IARN_HOST_MALLOC"  # "default": leave glibc's allocator as it is
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with malloc.hugetlb


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


def huge_page_environment(environ: Mapping[str, str], system: str, libc: tuple[str, str],
                          thp: Optional[str]) -> Optional[dict[str, str]]:
    """``environ`` with the hugetlb tunable added, or None where it would not apply or is set.

    None when: the user opted out (``IARN_HOST_MALLOC=default``), the system is not Linux, the C
    library is not glibc >= 2.35, the kernel has no THP (or mode ``never``), or ``GLIBC_TUNABLES``
    already names ``glibc.malloc.hugetlb`` (which also ends the re-exec after one round).
    """
    if environ.get(OPT_OUT_VARIABLE, "").strip().lower() == "default":
        return None
    if system != "Linux" or libc[0] != "glibc" or _version(libc[1]) < MIN_GLIBC:
        return None
    if thp not in ("always", "madvise"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if any(item.split("=")[0] == TUNABLE_NAME for item in tunables.split(":")):
        return None
    updated = dict(environ)
    updated["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    return updated


def reexec_with_huge_pages() -> None:
    """Re-execute this Python process with the hugetlb tunable, where it applies; else return.

    Call before any work (a launcher's ``__main__``). Returns normally where nothing applies or
    the exec fails; otherwise does not return.
    """
    environ = huge_page_environment(os.environ, platform.system(), platform.libc_ver(), thp_mode())
    argv = list(getattr(sys, "orig_argv", []))
    if environ is None or not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable] + argv[1:], environ)
    except OSError:
        return
